"""Equal-budget tuning (``bench tune``): the protocol of Choe et al. (CVPR 2020, Sec. 5.2) that makes
"equal terms" fair: every method gets the same number of trials from its search space, each trial
a full training run scored on the holdout split (never the test split), with the same sampler and
seed; then each method's best configuration is retrained for ``seeds`` seeds and evaluated once
on the test split, as ordinary runs of the store, marked as tuned.

- Search: Optuna's ask-and-tell (``optuna.samplers.RandomSampler`` or ``TPESampler``, in an
  in-memory study rebuilt from the store), so trials run on the suite's executors (this process,
  ``--jobs`` processes, a Ray cluster). Trial ``j`` of every method is asked with the sampler seeded
  by (sampler seed, j): a sequential study (``--jobs 1``, local) is reproducible, and an interrupted
  study resumes with the same suggestions; a parallel one is not (the CLI says so after it), as
  below. TPE starts with ``max(2, min(10, trials // 3))`` random trials and uses the
  constant liar for trials running in parallel.
- Pruning (``prune``): Optuna's ``MedianPruner`` (2 startup trials, 1 warm-up epoch) on the
  per-epoch holdout curve. It runs where the trial trains, on a snapshot of the study's finished
  trials taken when the trial was asked (in parallel runs the snapshot depends on timing).
- Scores (``select``): ``accuracy``: top-1 on the holdout after the last epoch; ``wsol``:
  MaxBoxAccV2 on the holdout's boxes (the reference's protocol). A trial that diverges is stored
  as failed with its reason and counts against the budget, as in the reference protocol; a pruned
  trial counts too. The best trial is the complete one with the highest score (ties: the earliest).
- Stored: table ``studies`` (a study's full definition) and ``trials`` (parameters, state, score,
  holdout curve, epochs and seconds spent), so a rerun continues where it stopped and reaches
  exactly ``trials`` per method; the retrained runs carry ``tuning`` in their configuration.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import torch

from bench.errors import BenchError, RunFailed
from bench.registry import METHODS, Spec, parse_spec
from bench.search import Param, describe, method_space, override, split

SAMPLERS = ("tpe", "random")
SELECT = {"accuracy": "holdout top-1 (%)", "wsol": "holdout MaxBoxAccV2 (%)"}
TRIAL_SEED = 0  # the training seed of every trial (same initialisation and data order for all)


@dataclass
class TuneConfig:
    """A tuning protocol over a suite's methods (``suite.recipe`` is the base recipe and
    ``suite.recipe.seeds`` the seeds of the final runs)."""

    suite: Any  # SuiteConfig
    trials: int
    sampler: str = "tpe"
    sampler_seed: int = 0
    prune: bool = False
    select: str = "accuracy"
    space: tuple[str, ...] = ()

    def validate(self) -> None:
        if isinstance(self.trials, bool) or not isinstance(self.trials, int) or self.trials < 1:
            raise BenchError(f"trials must be a positive integer, got {self.trials!r}", "trials")
        if self.sampler not in SAMPLERS:
            raise BenchError(f"sampler {self.sampler!r} is not a sampler; valid: "
                             f"{', '.join(SAMPLERS)}", "sampler")
        if self.select not in SELECT:
            raise BenchError(f"select {self.select!r} is not a selection criterion; valid: "
                             f"{', '.join(SELECT)}", "select")
        for method in self.suite.methods:
            self.space_of(method)

    def space_of(self, method: Spec) -> dict[str, Param]:
        """The method's search space with the user's range overrides (for overrides naming
        another method's parameter, only the methods that have it take them)."""
        space = method_space(METHODS.get(method.name))
        own = [t for t in self.space if t.split("=", 1)[0].strip().replace("-", "_") in space]
        foreign = [t for t in self.space if t not in own]
        known = {n for m in self.suite.methods for n in method_space(METHODS.get(m.name))}
        for text in foreign:  # a name no tuned method has is an error
            override({n: Param("float", 0.0, 1.0) for n in known}, [text], "the tuned methods")
        return override(space, own, f"method {method.name!r}")


def study_config(tcfg: TuneConfig, method: Spec) -> dict[str, Any]:
    """What identifies a study (its hash keys the store): everything but the trial budget, so
    that a larger ``trials`` extends a study instead of starting another."""
    from bench.suite import run_config

    base = run_config(tcfg.suite, method, TRIAL_SEED)
    base.pop("seed")
    return {**base, "space": describe(tcfg.space_of(method)), "sampler": tcfg.sampler,
            "sampler_seed": tcfg.sampler_seed, "select": tcfg.select, "prune": tcfg.prune,
            "trial_seed": TRIAL_SEED}


def protocol(tcfg: TuneConfig) -> dict[str, Any]:
    """The tuning protocol as stored with each retrained run (and shown in the report)."""
    return {"trials": tcfg.trials, "sampler": tcfg.sampler, "sampler_seed": tcfg.sampler_seed,
            "select": tcfg.select, "prune": tcfg.prune, "space": list(tcfg.space)}


@dataclass
class TrialPlan:
    """One trial as a worker executes it."""

    study_id: int
    number: int
    method: Spec  # with the sampled options
    recipe: Any  # the base recipe with the sampled recipe values
    select: str
    prune: bool
    params: dict[str, Any]
    distributions: dict[str, Any]
    finished: list[dict[str, Any]] = field(default_factory=list)  # snapshot for the pruner


@dataclass
class TrialResult:
    state: str  # complete | pruned | failed
    value: Optional[float]
    curve: list[float]
    epochs: int
    seconds: float
    reason: Optional[str] = None


def _score(select: str, model: Any, data: Any, cfg: Any) -> float:
    from bench.tasks.wsol import split_maxboxacc_v2
    from bench.train import evaluate

    model.eval()
    if select == "wsol":
        return split_maxboxacc_v2(model, data.holdout, cfg.recipe.eval_batch_size, cfg.device)
    return evaluate(model, data.holdout, cfg.recipe.eval_batch_size, cfg.device)["top1"]


def _pruner_trial(plan: TrialPlan) -> Any:
    """An Optuna trial in a study holding the snapshot of finished trials, for MedianPruner."""
    import optuna

    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.MedianPruner(
        n_startup_trials=2, n_warmup_steps=1))
    states = {"complete": optuna.trial.TrialState.COMPLETE,
              "pruned": optuna.trial.TrialState.PRUNED}
    for t in plan.finished:
        if t["state"] in states:
            study.add_trial(optuna.trial.create_trial(
                params=t["params"], distributions=plan.distributions,
                value=t["value"] if t["state"] == "complete" else None,
                state=states[t["state"]], intermediate_values=dict(enumerate(t["curve"]))))
    study.enqueue_trial(plan.params)
    return study.ask(plan.distributions)


def remote_trial(cfg: Any, plan: TrialPlan) -> TrialResult:
    """Train one trial on the train split and score it on the holdout split after each epoch
    (pruning) or at the end. The test split is never read."""
    from bench.build import build_from_specs
    from bench.plugins import load_all
    from bench.suite import cached_data, seed_everything
    from bench.train import train

    load_all(cfg.plugins)
    torch.set_num_threads(cfg.threads)
    data = cached_data(cfg)
    if data.holdout is None:
        raise BenchError(f"tuning needs a holdout split; {data.name} has none", "dataset")
    start = time.perf_counter()
    seed_everything(TRIAL_SEED)
    model = build_from_specs(plan.method, cfg.backbone, data.num_classes, data.in_channels,
                             data.input_size, cfg.dataset.name)
    tuned = dataclasses.replace(cfg, recipe=plan.recipe)
    curve: list[float] = []
    trial = _pruner_trial(plan) if plan.prune else None

    def on_epoch(epoch: int, net: Any) -> bool:
        if trial is None:
            return False
        curve.append(_score(plan.select, net, data, tuned))
        trial.report(curve[-1], epoch)
        return trial.should_prune()

    try:
        history = train(model, data, plan.recipe, TRIAL_SEED, cfg.device, progress=False,
                        desc=f"{plan.method} trial {plan.number}", test_curve=False,
                        on_epoch=on_epoch, epoch_lines=cfg.executor == "ray")
    except RunFailed as failure:
        return TrialResult("failed", None, curve, len(curve), time.perf_counter() - start,
                           str(failure))
    if history.epochs < plan.recipe.epochs:
        return TrialResult("pruned", curve[-1], curve, history.epochs,
                           time.perf_counter() - start, f"pruned after epoch {history.epochs}")
    value = curve[-1] if curve else _score(plan.select, model, data, tuned)
    return TrialResult("complete", value, curve, history.epochs, time.perf_counter() - start)


class Study:
    """One method's search: the stored trials, an in-memory Optuna study rebuilt from them, and
    the asking of trial numbers not finished yet."""

    def __init__(self, tcfg: TuneConfig, method: Spec, store: Any) -> None:
        import optuna

        self.tcfg, self.method, self.store = tcfg, method, store
        self.space = tcfg.space_of(method)
        self.distributions = {n: p.distribution() for n, p in self.space.items()}
        self.study_id = store.start_study(study_config(tcfg, method), str(method))
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.optuna = optuna.create_study(direction="maximize", sampler=self._sampler(0))
        self.finished: list[dict[str, Any]] = []
        self.asked: dict[int, Any] = {}
        self.interrupted: list[str] = []  # trials whose worker died here: to run again
        for t in store.trials(self.study_id):
            if t["state"] not in ("running", "interrupted") and t["number"] < tcfg.trials:
                self._add(t)

    def _sampler(self, number: int) -> Any:
        import optuna

        # well-mixed per-trial seeds (consecutive small seeds give correlated first draws)
        seed = int(np.random.SeedSequence([self.tcfg.sampler_seed, number]).generate_state(1)[0])
        if self.tcfg.sampler == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        startup = max(2, min(10, self.tcfg.trials // 3))
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup,
                                          constant_liar=True)

    def _add(self, t: dict[str, Any]) -> None:
        import optuna

        states = {"complete": optuna.trial.TrialState.COMPLETE,
                  "pruned": optuna.trial.TrialState.PRUNED, "failed": optuna.trial.TrialState.FAIL}
        self.optuna.add_trial(optuna.trial.create_trial(
            params=t["params"], distributions=self.distributions,
            value=t["value"] if t["state"] == "complete" else None, state=states[t["state"]],
            intermediate_values=dict(enumerate(t["curve"]))))
        self.finished.append(t)

    def todo(self) -> list[int]:
        """Trial numbers below the budget that are neither finished nor asked here."""
        done = {t["number"] for t in self.finished} | set(self.asked)
        return [n for n in range(self.tcfg.trials) if n not in done]

    def ask(self, number: int, owner: str) -> Optional[TrialPlan]:
        """Trial ``number``'s plan (claimed in the store), or None if another live process has
        claimed it."""
        import optuna

        self.optuna.sampler = self._sampler(number)
        trial = self.optuna.ask(self.distributions)
        cfg = self.tcfg.suite
        if not self.store.claim_trial(self.study_id, number, trial.params, owner, str(cfg.device),
                                      cfg.threads):
            self.optuna.tell(trial, state=optuna.trial.TrialState.FAIL)  # another process runs it
            return None
        self.asked[number] = trial
        recipe_values, options = split(trial.params, {f.name for f in dataclasses.fields(cfg.recipe)})
        method = parse_spec(METHODS, _with(str(self.method), options)) if options else self.method
        return TrialPlan(self.study_id, number, method, cfg.recipe.replace(**recipe_values),
                         self.tcfg.select, self.tcfg.prune, dict(trial.params),
                         self.distributions, [dict(t) for t in self.finished])

    def tell(self, plan: TrialPlan, result: TrialResult) -> None:
        import optuna

        states = {"complete": optuna.trial.TrialState.COMPLETE,
                  "pruned": optuna.trial.TrialState.PRUNED, "failed": optuna.trial.TrialState.FAIL}
        trial = self.asked.pop(plan.number)
        for step, value in enumerate(result.curve):
            trial.report(value, step)
        self.optuna.tell(trial, result.value if result.state == "complete" else None,
                         state=states[result.state])
        self.store.finish_trial(self.study_id, plan.number, result.state, result.value,
                                result.curve, result.epochs, result.seconds, result.reason)
        self.finished.append({"number": plan.number, "params": plan.params,
                              "state": result.state, "value": result.value,
                              "curve": result.curve})

    def interrupt(self, plan: TrialPlan, reason: str) -> None:
        """A trial whose worker died (after the executor's retries): stored ``interrupted``, not
        told to the sampler, so it spends no budget; the next ``bench tune`` runs it again."""
        self.asked.pop(plan.number)
        self.store.interrupt_trial(self.study_id, plan.number, reason)
        self.interrupted.append(f"{plan.method} trial {plan.number}: {reason}")

    def best(self) -> Optional[dict[str, Any]]:
        """The complete trial with the highest score (ties: the earliest), within the budget."""
        complete = [t for t in self.finished if t["state"] == "complete"
                    and t["number"] < self.tcfg.trials and t["value"] is not None
                    and math.isfinite(t["value"])]
        return max(complete, key=lambda t: (t["value"], -t["number"])) if complete else None


def _with(text: str, options: dict[str, Any]) -> str:
    from bench.build import with_options

    return with_options(text, options)


@dataclass
class TuneOutcome:
    """One method's tuning: its best trial, the tuned configuration, and the budget spent."""

    method: str
    study_id: int
    best: Optional[dict[str, Any]]
    tuned_method: Optional[str]
    tuned_recipe: dict[str, Any]
    trials: list[dict[str, Any]]
    interrupted: list[str] = field(default_factory=list)  # trials to run again (worker died)


def search(tcfg: TuneConfig, store: Any, executor: Any, owner: str) -> list[Study]:
    """Run every method's trials until each has ``trials`` finished ones, keeping the executor's
    slots busy across methods (ask-and-tell)."""
    from tqdm.auto import tqdm

    studies = [Study(tcfg, m, store) for m in tcfg.suite.methods]
    queue = [(s, n) for n in range(tcfg.trials) for s in studies if n in s.todo()]
    total = len(queue)
    running: dict[Any, tuple[Study, TrialPlan]] = {}
    shared = executor.share(dataclasses.replace(tcfg.suite, ray=None))
    with tqdm(total=total, desc="tune", unit="trial", disable=not tcfg.suite.progress,
              dynamic_ncols=True) as bar:
        try:
            while queue or running:
                while queue and len(running) < executor.slots:
                    study, number = queue.pop(0)
                    plan = study.ask(number, owner)
                    if plan is None:  # another process is running it
                        bar.update(1)
                        continue
                    running[executor.submit(remote_trial, shared, plan)] = (study, plan)
                handle, result, error = executor.next_done()
                study, plan = running.pop(handle)
                bar.update(1)
                if error is not None:  # the infrastructure's failure: spends no budget
                    study.interrupt(plan, error)
                    continue
                study.tell(plan, result)
                bar.set_postfix_str(f"{plan.method} trial {plan.number}: {result.state}"
                                    + (f" {result.value:.2f}" if result.value is not None else ""))
        except KeyboardInterrupt:
            executor.cancel()
            store.release_claims(owner, "interrupted (Ctrl-C) before it finished")
            raise
        finally:
            executor.close()
    return studies


def tune(tcfg: TuneConfig) -> tuple[list[TuneOutcome], list[Any], float]:
    """The whole protocol: search, then retrain each method's best configuration for the
    suite's seeds and evaluate it once on the test split (ordinary runs, marked tuned). Returns
    the studies, the retrained runs' outcomes and the search's wall time."""
    from bench.store import Store
    from bench.suite import OWNER, load_dataset, make_executor, resolve_methods, run_suite

    tcfg.validate()
    suite = tcfg.suite  # methods' auto options resolved for the data: they identify the studies
    tcfg = dataclasses.replace(tcfg, suite=resolve_methods(
        suite, load_dataset(suite.dataset, suite.data_root, suite.download)))
    store = Store(tcfg.suite.store_path)
    start = time.perf_counter()
    try:
        studies = search(tcfg, store, make_executor(tcfg.suite), OWNER)
        searched = time.perf_counter() - start
        outcomes = []
        for study in studies:
            best = study.best()
            tuned_recipe, tuned_method = {}, None
            if best is not None:
                fields = {f.name for f in dataclasses.fields(tcfg.suite.recipe)}
                tuned_recipe, options = split(best["params"], fields)
                tuned_method = _with(str(study.method), options) if options else str(study.method)
            outcomes.append(TuneOutcome(str(study.method), study.study_id, best, tuned_method,
                                        tuned_recipe, [t for t in store.trials(study.study_id)
                                                       if t["number"] < tcfg.trials
                                                       and t["state"] != "interrupted"],
                                        study.interrupted))
    finally:
        store.close()
    runs = []
    for outcome in outcomes:
        if outcome.tuned_method is None:
            continue
        suite = dataclasses.replace(
            tcfg.suite, methods=[parse_spec(METHODS, outcome.tuned_method)],
            recipe=tcfg.suite.recipe.replace(**outcome.tuned_recipe),
            tuning={**protocol(tcfg), "study": outcome.study_id,
                    "trial": outcome.best["number"],
                    "base_recipe": dataclasses.asdict(tcfg.suite.recipe) | {"seeds": None}})
        runs += run_suite(suite)
    return outcomes, runs, searched
