"""Choose the default (``quick``) preset's recipe by the suite's own protocol, reproducibly.

    python benchmarks/choose_default_recipe.py [--minutes M] [--workers 2] [--trials N]
        [--space NAME=LOW:HIGH ...] [--study PATH] [--dataset SPEC]

An Optuna study (TPE, constant liar for the parallel workers) over the shared recipe: learning rate,
batch size, weight decay, warm-up epochs and label smoothing. Every candidate recipe trains every
method of the preset (``PRESET_METHODS['quick']``) with the same recipe, the preset's epochs, data
and backbone, training seed 0, and is scored on the HOLDOUT split only (never the test split),
as ``bench tune`` scores its trials. ``--dataset SPEC`` searches for other data instead (a candidate
workload); the data is part of the study's definition, so use another ``--study`` for it.

Objective: the worst method's holdout top-1 (the mean is stored and printed beside it). The default
must not handicap any method: a recipe that suits most methods but leaves one far from where it
would converge makes that method's verdict a verdict on the recipe. Maximising the minimum chooses
the recipe under which the slowest-learning method does best. Because the objective is a minimum,
a candidate is pruned, exactly, as soon as one method's holdout top-1 falls below the best complete
candidate's objective: it can no longer win. The methods that learn slowest under short schedules
(CBAM, sIoU, SE, ECA) train first, so a bad candidate stops after one or two runs.

The batch sizes searched are those whose training time per epoch is no more than the former
default's (batch 32): see docs/default-workload.md for the measurement.

The study is stored as an Optuna journal (a text file, ``--study``, committed with the suite). With
no ``--minutes``, an existing study is only read: its table of candidates and the chosen recipe
are printed without training. ``--minutes M`` adds trials for about M minutes of wall time (trials
running at the deadline finish). The chosen recipe is stored in the study (user attribute
``chosen``) only when at least one candidate completed. Bad input (an unknown field in
``--space``, an empty range, a non-finite bound) is one ``error:`` line and exit code 2.
"""
from __future__ import annotations

import argparse
import math
import multiprocessing
import sys
import time
from pathlib import Path
from typing import Any, Optional

import optuna
import torch
from tabulate import tabulate

from bench.errors import BenchError, RunFailed
from bench.search import Param, choice, describe, floats, ints, override

# The searched space. Batch sizes: those whose training steps cost about what batch 32's do per
# epoch (CPU time, measured on 32 x 32 digits-clutter: batch 16 +5%, 24 +1%, 64 -5%, batch 8 about
# 2x; docs/default-workload.md); warm-up is whole epochs, 0 or 1 of the preset's 7.
SPACE: dict[str, Param] = {
    "lr": floats(0.02, 0.4, log=True),
    "batch_size": choice(16, 24, 32, 64),
    "weight_decay": floats(1e-5, 2e-3, log=True),
    "warmup_epochs": ints(0, 1),
    "label_smoothing": floats(0.0, 0.2),
}
# The methods that learn slowest under short schedules first (the sweep): a bad
# candidate is pruned after one or two runs.
FIRST = ("cbam[r=4]", "siou", "se[r=4]", "eca")
PRESET = "quick"
SEED = 0  # the training seed of every candidate's runs (the suite's first seed)
STUDY = Path(__file__).with_name("default-recipe-study.jsonl")
STUDY_NAME = "quick-default-recipe"
# A known-good starting point, the best recipe of the same search on 32 x 32 digits-clutter at 3
# epochs (docs/default-workload.md): it sets the pruning bar early. It is an ordinary candidate, scored like every other.
ENQUEUED = {"lr": 0.0402, "batch_size": 16, "weight_decay": 2.63e-5, "warmup_epochs": 1,
            "label_smoothing": 0.0139}


def method_order() -> list[str]:
    """The preset's methods, the slow learners first."""
    from bench.presets import PRESET_METHODS

    methods = list(PRESET_METHODS[PRESET])
    return [m for m in FIRST if m in methods] + [m for m in methods if m not in FIRST]


def storage(path: Path) -> Any:
    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))


def definition(space: dict[str, Param], dataset: Optional[str] = None) -> dict[str, Any]:
    """What identifies the study: base recipe (with its data), methods, seed, space (a rerun must
    match)."""
    import dataclasses

    from bench.presets import PRESETS

    base = dataclasses.asdict(PRESETS.get(PRESET).obj.replace(dataset=dataset))
    base = {k: v for k, v in base.items() if k not in space and k != "seeds"}
    return {"preset": PRESET, "base_recipe": {k: (list(v) if isinstance(v, tuple) else v)
                                              for k, v in base.items()},
            "methods": method_order(), "seed": SEED, "space": describe(space),
            "score": "holdout top-1 (%), worst method"}


def open_study(path: Path, space: dict[str, Param], create: bool,
               dataset: Optional[str] = None) -> optuna.Study:
    """The stored study, created when ``create``; a study stored with another definition is a
    BenchError (its trials would mix two configurations)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if not create and not path.exists():
        raise BenchError(f"no study in {path}; run with --minutes to search")
    store = storage(path)
    names = [s.study_name for s in optuna.get_all_study_summaries(store)]
    if STUDY_NAME not in names:
        if not create:
            raise BenchError(f"no study {STUDY_NAME!r} in {path}; run with --minutes to search")
        study = optuna.create_study(study_name=STUDY_NAME, storage=store, direction="maximize")
        for key, value in definition(space, dataset).items():
            study.set_user_attr(key, value)
        study.enqueue_trial(ENQUEUED)
        return study
    study = optuna.load_study(study_name=STUDY_NAME, storage=store)
    wanted = definition(space, dataset)
    stored = {k: study.user_attrs.get(k) for k in wanted}
    if stored != wanted:
        changed = sorted(k for k in stored if stored[k] != wanted[k])
        raise BenchError(f"the study in {path} was stored with another {', '.join(changed)}; "
                         f"use another --study")
    return study


def best_value(study: optuna.Study) -> Optional[float]:
    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    return max((t.value for t in done), default=None)


class Trainer:
    """Trains one method under a candidate recipe and scores it on the holdout split."""

    def __init__(self, dataset: Optional[str]) -> None:
        from bench.plugins import load_all
        from bench.presets import PRESETS
        from bench.registry import BACKBONES, DATASETS, METHODS, parse_spec
        from bench.suite import load_dataset

        load_all()
        torch.set_num_threads(1)
        self.base = PRESETS.get(PRESET).obj.replace(dataset=dataset)
        self.backbone = parse_spec(BACKBONES, self.base.backbone)
        dataset = parse_spec(DATASETS, self.base.dataset)
        self.dataset_name = dataset.name
        self.data = load_dataset(dataset, None, False)
        self.specs = {m: parse_spec(METHODS, m) for m in method_order()}

    def holdout_top1(self, method: str, recipe: Any) -> float:
        from bench.api import build_from_specs
        from bench.suite import seed_everything
        from bench.train import evaluate, train

        seed_everything(SEED)
        data = self.data
        model = build_from_specs(self.specs[method], self.backbone, data.num_classes,
                                 data.in_channels, data.input_size, self.dataset_name)
        device = torch.device("cpu")
        train(model, data, recipe, SEED, device, progress=False, test_curve=False)
        return evaluate(model.deploy(), data.holdout, recipe.eval_batch_size, device)["top1"]


def objective(trial: optuna.Trial, trainer: Trainer, space: dict[str, Param]) -> float:
    """Worst holdout top-1 over the methods; pruned as soon as it falls below the best so far."""
    params = {}
    for name, p in space.items():
        if p.kind == "float":
            params[name] = trial.suggest_float(name, p.low, p.high, log=p.log)
        elif p.kind == "int":
            params[name] = trial.suggest_int(name, p.low, p.high, log=p.log)
        else:
            params[name] = trial.suggest_categorical(name, list(p.choices))
    recipe = trainer.base.replace(**params)
    scores: dict[str, float] = {}
    seconds: dict[str, float] = {}
    for step, method in enumerate(method_order()):
        start = time.perf_counter()
        try:
            scores[method] = trainer.holdout_top1(method, recipe)
        except RunFailed as failure:
            trial.set_user_attr("failed", f"{method}: {failure}")
            raise
        seconds[method] = time.perf_counter() - start
        trial.set_user_attr("holdout_top1", scores)
        trial.set_user_attr("seconds", seconds)
        worst = min(scores.values())
        trial.report(worst, step)
        bar = best_value(trial.study)
        if bar is not None and worst < bar:
            trial.set_user_attr("pruned_by", f"{method} {scores[method]:.2f} < best {bar:.2f}")
            raise optuna.TrialPruned()
    trial.set_user_attr("mean", sum(scores.values()) / len(scores))
    return min(scores.values())


def worker(path: str, space: dict[str, Param], dataset: Optional[str], index: int,
           deadline: float, trials: Optional[int]) -> None:
    """One single-thread search process: trials until the deadline (or the trial budget)."""
    study = open_study(Path(path), space, create=False, dataset=dataset)
    study.sampler = optuna.samplers.TPESampler(seed=1000 + index, n_startup_trials=6,
                                               constant_liar=True)
    trainer = Trainer(dataset)
    callbacks = [optuna.study.MaxTrialsCallback(trials, states=None)] if trials else []
    while time.time() < deadline:
        if trials and len(study.trials) >= trials:
            return
        study.optimize(lambda t: objective(t, trainer, space), n_trials=1,
                       catch=(RunFailed,), callbacks=callbacks)


def table(study: optuna.Study) -> list[dict[str, Any]]:
    """One row per candidate, in trial order."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        if t.state == optuna.trial.TrialState.RUNNING:
            continue
        scores = t.user_attrs.get("holdout_top1", {})
        row = {"trial": t.number, "state": t.state.name.lower()}
        for name, value in t.params.items():
            row[name] = f"{value:.3g}" if isinstance(value, float) else value
        for m in method_order():
            row[m] = f"{scores[m]:.1f}" if m in scores else ""
        row["worst"] = f"{t.value:.2f}" if t.value is not None else ""
        row["mean"] = f"{t.user_attrs['mean']:.2f}" if "mean" in t.user_attrs else ""
        row["wall s"] = f"{sum(t.user_attrs.get('seconds', {}).values()):.0f}"
        row["note"] = t.user_attrs.get("pruned_by") or t.user_attrs.get("failed") or ""
        rows.append(row)
    return rows


def conclude(study: optuna.Study) -> Optional[dict[str, Any]]:
    """The best complete candidate (ties: the earliest), stored as the study's ``chosen``; None
    (and nothing stored) when no candidate completed."""
    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not done:
        return None
    best = max(done, key=lambda t: (t.value, -t.number))
    chosen = {"trial": best.number, "params": best.params, "worst": best.value,
              "mean": best.user_attrs["mean"], "holdout_top1": best.user_attrs["holdout_top1"]}
    if study.user_attrs.get("chosen") != chosen:
        study.set_user_attr("chosen", chosen)
    return chosen


def preset_values(params: dict[str, Any]) -> dict[str, Any]:
    """The chosen values as the preset states them: floats to 3 significant digits."""
    return {k: float(f"{v:.3g}") if isinstance(v, float) else v for k, v in params.items()}


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", type=Path, default=STUDY)
    parser.add_argument("--minutes", type=float, default=None,
                        help="search for about this long (default: 25 for a new study, 0 for a "
                             "stored one: print it without training)")
    parser.add_argument("--workers", type=int, default=2, help="single-thread search processes")
    parser.add_argument("--trials", type=int, default=None, help="stop at this many trials")
    parser.add_argument("--space", nargs="*", default=[], metavar="NAME=LOW:HIGH",
                        help=f"narrow or widen a range ({describe(SPACE)})")
    parser.add_argument("--dataset", default=None, metavar="SPEC",
                        help="search for this data instead of the preset's (use another --study)")
    args = parser.parse_args(argv)
    try:
        space = override(SPACE, args.space, "the default recipe's search")
        for name, value in (("minutes", args.minutes), ("workers", args.workers),
                            ("trials", args.trials)):
            if value is not None and not (math.isfinite(value) and value >= (name != "minutes")):
                raise BenchError(f"--{name} must be {'>= 0' if name == 'minutes' else '>= 1'}, "
                                 f"got {value}")
        exists = args.study.exists()
        minutes = args.minutes if args.minutes is not None else (0.0 if exists else 25.0)
        if args.dataset is not None:
            from bench.plugins import load_all
            from bench.registry import DATASETS, parse_spec

            load_all()
            args.dataset = str(parse_spec(DATASETS, args.dataset))
        study = open_study(args.study, space, create=minutes > 0, dataset=args.dataset)
    except BenchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if minutes > 0:
        deadline = time.time() + 60 * minutes
        ctx = multiprocessing.get_context("spawn")
        procs = [ctx.Process(target=worker, args=(str(args.study), space, args.dataset, i,
                                                  deadline, args.trials))
                 for i in range(args.workers)]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        study = open_study(args.study, space, create=False, dataset=args.dataset)
    print(tabulate(table(study), headers="keys", tablefmt="github", disable_numparse=True))
    chosen = conclude(study)
    if chosen is None:
        states = [t.state.name.lower() for t in study.trials]
        counts = ", ".join(f"{states.count(s)} {s}" for s in sorted(set(states)))
        print(f"error: no candidate completed ({len(states)} tried: {counts}); nothing is stored "
              f"as chosen", file=sys.stderr)
        return 1
    values = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                       for k, v in chosen["params"].items())
    print(f"\nchosen (trial {chosen['trial']}): {values}; worst holdout top-1 "
          f"{chosen['worst']:.2f} %, mean {chosen['mean']:.2f} % over {len(method_order())} "
          f"methods (seed {SEED}, {study.user_attrs['base_recipe']['epochs']} epochs)")
    print("the quick preset's values (3 significant digits): "
          + ", ".join(f"{k}={v}" for k, v in preset_values(chosen["params"]).items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
