"""Command line: ``python -m bench run | list | results | profile | report | check | evaluate-wsol``.
Each command parses its flags, calls the Python API and prints.

Bad input (a BenchError, or an argparse error) prints one line ``error: ...`` and exits with 2; a
library error that names a parameter is shown with the flag that sets it.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Optional

from bench.errors import BenchError
from bench.plugins import PLUGINS_ENV, load_all, origin
from bench.registry import BACKBONES, DATASETS, METHODS, PRESETS, TASKS, format_value, split_specs


class Parser(argparse.ArgumentParser):
    """argparse that reports errors as one line and exit code 2 (no usage dump)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise BenchError(f"{self.prog}: {message}")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def directory(text: str) -> Path:
    """A directory path; an empty one is refused (it would mean the current directory)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path; name a directory (e.g. reports)")
    return Path(text)


# Recipe fields that `run` sets from flags of the same name (None: the preset's value).
RECIPE_FLAGS = ("epochs", "batch_size", "lr", "weight_decay", "schedule", "warmup_epochs",
                "nesterov", "cutmix", "label_smoothing", "seeds", "amp", "channels_last", "compile")


def add_suite_arguments(p: argparse.ArgumentParser) -> None:
    """The flags `run` and `tune` share: what to train, how, where, and on which executor."""
    p.add_argument("--methods", nargs="+", default=None, metavar="SPEC",
                   help="methods to run, e.g. gap-fc se[r=8] saol[head=gapfc] (default: all)")
    p.add_argument("--preset", default="quick", help="training recipe (see `bench list`)")
    p.add_argument("--dataset", default=None, help="dataset spec (default: the preset's)")
    p.add_argument("--data-root", type=Path, default=None, help="where the dataset lives or is cached")
    p.add_argument("--download", action="store_true", help="download the dataset if missing")
    p.add_argument("--backbone", default=None, help="backbone spec (default: the preset's)")
    p.add_argument("--seeds", type=positive_int, default=None, help="number of seeds (0..N-1)")
    p.add_argument("--epochs", type=positive_int, default=None)
    p.add_argument("--batch-size", type=positive_int, default=None)
    p.add_argument("--lr", type=float, default=None, help="base learning rate")
    p.add_argument("--weight-decay", type=float, default=None)
    p.add_argument("--schedule", default=None, help="cosine or step")
    p.add_argument("--warmup-epochs", type=int, default=None)
    p.add_argument("--nesterov", action="store_true", default=None)
    p.add_argument("--cutmix", type=float, default=None, metavar="PROB",
                   help="probability of a CutMix batch, for every method (beta 1.0)")
    p.add_argument("--label-smoothing", type=float, default=None, metavar="EPS",
                   help="label smoothing of every method's classification loss (0 to <1)")
    p.add_argument("--amp", default=None, help="mixed precision in training: none, bf16 or fp16")
    p.add_argument("--channels-last", action="store_true", default=None)
    p.add_argument("--compile", action="store_true", default=None, help="torch.compile the backbone")
    p.add_argument("--tasks", nargs="+", default=None, metavar="SPEC",
                   help="tasks to run, with options, e.g. accuracy wsol[classic_box_rule=all] "
                        "(default: all but the opt-in ones, such as maps)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--out", type=directory, default=Path("reports"), help="store and reports directory")
    p.add_argument("--save-scoremaps", type=Path, default=None, metavar="DIR",
                   help="shorthand for wsol[save_scoremaps=DIR]: also write each run's test "
                        "score maps and metadata under DIR")
    p.add_argument("--cam-curve-interval", type=float, default=None,
                   help="shorthand for wsol[cam_curve_interval=X]: the tau sweep's step (0.01)")
    p.add_argument("--maps-images", type=int, default=None, metavar="N",
                   help="shorthand for maps[images=N]: test images the maps task scores "
                        "(0: all; default 32)")
    p.add_argument("--jobs", type=positive_int, default=None,
                   help="local executor: parallel processes for independent (method, seed) runs "
                   "(default: on the CPU without --threads, one single-thread process per core, "
                   "at most one per run; else 1)")
    p.add_argument("--executor", default="local",
                   help="local (this machine) or ray (each run a task on a Ray cluster)")
    p.add_argument("--ray-address", default="auto",
                   help="ray: the cluster (HEAD:6379); auto: a running one, else start one here")
    p.add_argument("--max-retries", type=int, default=2,
                   help="--jobs and ray: retries of a run whose worker process died (default 2); "
                        "then it is stored as an infrastructure failure, which a rerun retries")
    p.add_argument("--ray-cpus", type=float, default=None,
                   help="ray: CPUs each run asks for (default: its --threads)")
    p.add_argument("--ray-gpus", type=float, default=None,
                   help="ray: GPUs each CUDA run asks for (default 1)")
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads")
    p.add_argument("--retry-failed", action="store_true", help="rerun runs that failed before")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def add_run_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="train and measure methods; results go to the store under --out")
    add_suite_arguments(p)
    p.set_defaults(func=cmd_run)


def add_tune_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tune", help="equal-budget tuning: N trials per method on the holdout "
                       "split, then the best configurations retrained and tested")
    add_suite_arguments(p)
    p.add_argument("--trials", type=int, required=True, help="trials per method (the budget)")
    p.add_argument("--sampler", default="tpe", help="tpe or random (Optuna), seeded")
    p.add_argument("--sampler-seed", type=int, default=0, help="the same for every method")
    p.add_argument("--prune", action="store_true",
                   help="median pruning on each trial's per-epoch holdout curve")
    p.add_argument("--select", default="accuracy",
                   help="accuracy (holdout top-1) or wsol (holdout MaxBoxAccV2)")
    p.add_argument("--space", nargs="+", default=(), metavar="NAME=LOW:HIGH",
                   help="narrow or widen declared ranges, e.g. lr=0.01:0.2 r=4|8")
    p.set_defaults(func=cmd_tune)


def suite_settings(args: argparse.Namespace) -> dict:
    """The keyword arguments of bench.run / bench.tune from the shared flags."""
    return dict(preset=args.preset, dataset=args.dataset, backbone=args.backbone,
                tasks=args.tasks, out=args.out, device=args.device, data_root=args.data_root,
                download=args.download, jobs=args.jobs, threads=args.threads,
                retry_failed=args.retry_failed, progress=not args.no_progress,
                save_scoremaps=args.save_scoremaps, cam_curve_interval=args.cam_curve_interval,
                maps_images=args.maps_images,
                executor=args.executor, ray_address=args.ray_address,
                max_retries=args.max_retries, ray_cpus=args.ray_cpus, ray_gpus=args.ray_gpus,
                plugins=args.plugin, **{name: getattr(args, name) for name in RECIPE_FLAGS})


def cmd_run(args: argparse.Namespace) -> int:
    import bench

    result = bench.run(args.methods, **suite_settings(args))
    if result.report is None:  # torchrun: rank 0 reports
        return 0
    return print_suite(result)


def print_suite(result) -> int:
    """The summary table, where the time went, where the store and report are, and last one
    ``FAILED`` line per failed run. Exit code 0 when every failure is a run's own (stored, and
    final); 1 when a failure of the infrastructure (a worker that died) is left for a rerun."""
    from bench.report.results import summary_table
    from bench.store import INFRASTRUCTURE

    for o in result.outcomes:
        if o.notice:
            print(f"notice: {o.notice}", file=sys.stderr)
    if result.outcomes and all(o.status == "skipped" for o in result.outcomes):
        print(f"nothing to do: all {len(result.outcomes)} runs are already in the store")
    claimed = [o for o in result.outcomes if o.reason.startswith("claimed by")]
    if claimed:
        print(f"{len(claimed)} run(s) left to the other process working on them "
              f"({claimed[0].reason}); rerun later to include their results", file=sys.stderr)
    methods = list(dict.fromkeys(o.method for o in result.outcomes))
    print(summary_table(result.groups, methods))
    print(f"\n{time_line(result.times)}")
    print(f"store: {result.store}")
    print(f"report: {result.report.html}")
    for o in result.failed:
        kind = ("infrastructure: a plain rerun retries it" if o.failure == INFRASTRUCTURE
                else "the run's own failure: --retry-failed reruns it")
        earlier = " (stored earlier)" if o.status == "skipped" else ""
        print(f"FAILED {o.method} seed {o.seed}{earlier}: "
              f"{o.reason.removeprefix('failed earlier: ')} ({kind})")
    return 1 if any(o.failure == INFRASTRUCTURE for o in result.failed) else 0


def cmd_tune(args: argparse.Namespace) -> int:
    import bench

    result = bench.tune(args.methods, trials=args.trials, sampler=args.sampler,
                        sampler_seed=args.sampler_seed, prune=args.prune, select=args.select,
                        space=args.space, **suite_settings(args))
    for study in result.studies:
        states = [t["state"] for t in study.trials]
        counts = ", ".join(f"{states.count(s)} {s}" for s in ("complete", "pruned", "failed")
                           if states.count(s))
        epochs = sum(t["epochs"] or 0 for t in study.trials)
        seconds = sum(t["seconds"] or 0.0 for t in study.trials)
        best = (f"best trial {study.best['number']} ({study.best['value']:.2f} on the holdout): "
                f"{study.tuned_method}" + "".join(f", {k}={v:.4g}" if isinstance(v, float)
                                                  else f", {k}={v}"
                                                  for k, v in study.tuned_recipe.items())
                if study.best else "no complete trial: nothing to retrain")
        print(f"{study.method}: {len(study.trials)} trials ({counts}), {epochs} epochs, "
              f"{seconds:.0f} s; {best}")
        for line in study.interrupted:
            print(f"notice: {line}; not counted against the budget, a rerun runs it again",
                  file=sys.stderr)
    if not result.sequential:
        print("note: trials ran in parallel, so this study is not reproducible: TPE's constant "
              "liar and the pruner depend on the order in which trials finish; --jobs 1 (local "
              "executor) runs them one at a time and makes the study reproducible")
    print()
    return print_suite(result.suite)


def time_line(times: dict[str, float]) -> str:
    """``time: training 412 s (78%), wsol 40 s (8%), ...; total 530 s`` for this invocation; with
    runs in parallel the phases are summed over them and the shares are of that sum."""
    total = times.get("total", 0.0)
    phases = {k: v for k, v in times.items() if k != "total"}
    work = sum(phases.values())
    if work <= total:
        phases["other (data, store, planning)"] = total - work
    whole = max(work, total)
    parts = [f"{name} {seconds:.0f} s ({100 * seconds / whole:.0f}%)" if whole else
             f"{name} {seconds:.0f} s" for name, seconds in phases.items() if seconds >= 0.5]
    summed = f" (phases summed over parallel runs: {work:.0f} s)" if work > total else ""
    return f"time: {', '.join(parts) or 'nothing to do'}; total {total:.0f} s wall{summed}"


def cmd_list(args: argparse.Namespace) -> int:
    from bench.search import describe, method_space

    for title, registry in (("methods", METHODS), ("backbones", BACKBONES), ("datasets", DATASETS),
                            ("presets", PRESETS), ("tasks", TASKS)):
        print(f"{title}:")
        for entry in registry:
            # written as a user types them: true/false, lists as a+b, an empty default as none
            options = ", ".join(f"{k}={format_value(v) or 'none'}" for k, v in entry.defaults.items())
            aliases = f" (aliases: {', '.join(entry.aliases)})" if entry.aliases else ""
            plugin = origin(registry.kind, entry.name)
            source = f" [plugin: {plugin.label}]" if plugin else ""
            print(f"  {entry.name:<16} {entry.description}{aliases}{source}")
            if options and registry is not PRESETS:
                print(f"  {'':<16} options: {options}")
            if registry is METHODS:
                print(f"  {'':<16} tuned over: {describe(method_space(entry))}")
        print()
    return 0


def cmd_results(args: argparse.Namespace) -> int:
    from bench.report.collect import configuration_groups, read_store
    from bench.report.results import render
    from bench.report.stats import check_aggregate, check_interval, check_power

    check_interval(args.interval)
    check_aggregate(args.aggregate)
    check_power(args.power)
    records, runs, curves, _ = read_store(args.out)
    groups = configuration_groups(records, runs, curves)  # curves: the learning-speed metrics
    print(render(groups, args.format, args.interval, args.aggregate, args.per_seed, records,
                 args.power))
    return 0


def cmd_evaluate_wsol(args: argparse.Namespace) -> int:
    from bench.report.results import strict_json

    from bench.tasks.wsol import evaluate_wsol

    result = evaluate_wsol(args.metadata, args.scoremaps, args.cam_curve_interval,
                           multi_contour=not args.largest_contour,
                           iou_thresholds=tuple(args.iou_thresholds), mask_root=args.mask_root)
    if args.json:
        print(strict_json(result))
        return 0
    rule = "largest contour" if args.largest_contour else "all contours"
    for t in args.iou_thresholds:
        print(f"MaxBoxAcc@{t} ({rule}): {result['maxboxacc'][str(t)]:.2f} %  "
              f"(best tau {result['best_tau'][str(t)]:.3f})")
    if "maxboxacc_v2" in result:
        print(f"MaxBoxAccV2: {result['maxboxacc_v2']:.2f} %")
    if "maxboxacc_v1" in result:
        print(f"MaxBoxAcc (V1, largest contour, IoU 50): {result['maxboxacc_v1']:.2f} %")
    if "pxap" in result:
        print(f"PxAP: {result['pxap']:.2f} %")
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    from bench.report.results import strict_json

    from tabulate import tabulate

    import bench
    from bench.metrics import METRICS

    rows = bench.profile(args.methods, backbone=args.backbone, input_size=args.input_size,
                         num_classes=args.num_classes, in_channels=args.in_channels,
                         batch_size=args.batch_size, device=args.device,
                         train_step=args.train_step, threads=args.threads,
                         channels_last=args.channels_last, amp=args.amp or "none",
                         compile=args.compile, dataset=args.dataset)
    if args.json:
        print(strict_json(rows))
        return 0
    shown = [m for m in METRICS if m.task == "cost" and any(m.name in row for row in rows)]
    headers = ["method"] + [m.header() for m in shown]
    table = [[row["method"]] + [row.get(m.name, "") for m in shown] for row in rows]
    print(tabulate(table, headers=headers, tablefmt="github", floatfmt=".4g", intfmt=","))
    first = rows[0]
    print(f"\n{first['backbone']}, {args.input_size}x{args.input_size}, {args.num_classes} classes; "
          f"device {first.get('device')}, threads {first.get('threads')}, batch {args.batch_size} "
          f"(latency also at batch 1), dtype {first.get('dtype', 'float32')}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from bench.report.write import write_report

    files = write_report(args.out, args.interval, args.power)
    print(f"report: {files.markdown}\n        {files.html}\nfigures: {len(files.figures)} files "
          f"under {args.out / 'figures'}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from bench.report.check import check, update_baseline

    if args.update:
        count, left_out = update_baseline(args.out, args.baseline)
        print(f"baseline written: {args.baseline} ({count} records)")
        if left_out:
            print(f"not gated (timing, or no tolerance set): {', '.join(left_out)}")
        return 0
    methods = [m for item in args.methods for m in split_specs(item)] if args.methods else None
    result = check(args.out, args.baseline, methods)
    print("\n".join(result.lines()))
    return 1 if result.failures else 0


def probability(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {text!r}") from None


def add_statistics_arguments(p: argparse.ArgumentParser) -> None:
    from bench.report.stats import BOOTSTRAP_FROM, DEFAULT_INTERVAL, POWER

    p.add_argument("--interval", default=DEFAULT_INTERVAL,
                   help=f"confidence interval: t (Student's t, default) or bootstrap (BCa; "
                        f"recommended from {BOOTSTRAP_FROM} seeds)")
    p.add_argument("--power", type=probability, default=POWER,
                   help=f"power of the detectable difference shown for each comparison, in "
                        f"(0, 1) (default {POWER})")


def build_parser() -> Parser:
    parser = Parser(prog="bench", description="Compare attention mechanisms for CNN classifiers.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    add_run_parser(sub)
    add_tune_parser(sub)
    sub.add_parser("list", help="methods, backbones, datasets, presets and tasks").set_defaults(func=cmd_list)
    p = sub.add_parser("results", help="print stored results: means with 95%% intervals, paired "
                       "differences to gap-fc, Holm-corrected verdicts, aggregates")
    p.add_argument("--out", type=directory, default=Path("reports"))
    p.add_argument("--format", choices=["table", "csv", "json"], default="table")
    add_statistics_arguments(p)
    p.add_argument("--aggregate", default="iqm",
                   help="across datasets/backbones: iqm, mean or median")
    p.add_argument("--per-seed", action="store_true",
                   help="the stored records, one per metric and seed, instead of the summary")
    p.set_defaults(func=cmd_results)
    p = sub.add_parser("profile", help="parameters, GMACs, memory traffic, latency of methods")
    p.add_argument("--methods", nargs="+", default=None, metavar="SPEC", help="default: all")
    p.add_argument("--backbone", default="resnet50")
    p.add_argument("--input-size", type=positive_int, default=224)
    p.add_argument("--num-classes", type=positive_int, default=1000)
    p.add_argument("--in-channels", type=positive_int, default=3)
    p.add_argument("--dataset", default=None,
                   help="resolve the methods' auto options as for a run on this dataset "
                        "(e.g. imagenet: SimAM lambda 0.1, ECA's released kernel sizes)")
    p.add_argument("--batch-size", type=positive_int, default=8,
                   help="batch of the memory figures and the second latency (the first is batch 1)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument("--threads", type=positive_int, default=None)
    p.add_argument("--train-step", action="store_true",
                   help="also time the training step, interleaved with gap-fc")
    p.add_argument("--channels-last", action="store_true", help="CUDA only")
    p.add_argument("--amp", default=None, help="CUDA only: bf16 or fp16")
    p.add_argument("--compile", action="store_true", help="CUDA only: torch.compile")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_profile)
    p = sub.add_parser("evaluate-wsol", help="evaluate any tool's score maps (MaxBoxAccV2, PxAP)")
    p.add_argument("--metadata", type=Path, required=True,
                   help="folder with image_ids.txt, class_labels.txt, localization.txt and, for "
                        "boxes, image_sizes.txt")
    p.add_argument("--scoremaps", type=Path, required=True, help="folder of <image_id>.npy maps in [0, 1]")
    p.add_argument("--mask-root", type=Path, default=None,
                   help="folder the mask paths of localization.txt are relative to (default: the "
                        "metadata folder; the reference's --mask_root for its OpenImages metadata)")
    p.add_argument("--cam-curve-interval", type=float, default=0.01)
    p.add_argument("--largest-contour", action="store_true", help="V1 box rule: largest contour only")
    p.add_argument("--iou-thresholds", type=int, nargs="+", default=[30, 50, 70])
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_evaluate_wsol)
    p = sub.add_parser("report", help="write report.md, report.html and figures/ from the store")
    p.add_argument("--out", type=directory, default=Path("reports"), help="store and reports directory")
    add_statistics_arguments(p)
    p.set_defaults(func=cmd_report)
    p = sub.add_parser("check", help="compare stored results with a baseline; exit 1 on regressions")
    p.add_argument("--out", type=directory, default=Path("reports"), help="store directory")
    p.add_argument("--baseline", type=Path, required=True, help="baseline JSON file")
    p.add_argument("--update", action="store_true",
                   help="write the stored results (mean and std over seeds) as the new baseline")
    p.add_argument("--methods", nargs="+", default=None, metavar="SPEC",
                   help="gate only these methods' records (default: the methods in the store)")
    p.set_defaults(func=cmd_check)
    for command in sub.choices.values():
        command.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                             help="import MODULE as a plugin (repeatable; also the "
                                  f"comma-separated {PLUGINS_ENV}), here and in every worker")
    return parser


def flag_message(error: BenchError, argv: list[str]) -> str:
    """The error's text with a leading parameter name shown as the command's flag for it
    (``epochs must be ...`` -> ``--epochs must be ...``) when the command has that flag."""
    text = str(error)
    param = error.param
    if param and text.startswith(param):
        flag = "--" + param.replace("_", "-")
        if _has_flag(argv, flag):
            return flag + text[len(param):]
    return text


def _has_flag(argv: list[str], flag: str) -> bool:
    """Whether the command named in ``argv`` defines ``flag``."""
    command = next((a for a in argv if not a.startswith("-")), None)
    sub = build_parser()._subparsers._group_actions[0].choices.get(command)  # type: ignore[union-attr]
    return sub is not None and flag in sub._option_string_actions


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        load_all()
        args = build_parser().parse_args(argv)
        load_all(args.plugin)
        func: Callable[[argparse.Namespace], int] = args.func
        return func(args)
    except BenchError as e:
        print(f"error: {flag_message(e, argv)}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into a reader that closed early (| head)
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("interrupted: completed runs are stored; rerun the same command to resume",
              file=sys.stderr)
        return 130
