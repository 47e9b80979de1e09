"""Command line: ``python -m bench run | list | results | profile | report | check | evaluate-wsol``.
library, print.

Bad input (a BenchError, or an argparse error) prints one line ``error: ...`` and exits with 2.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Callable, Optional

from bench.errors import BenchError
from bench.registry import (BACKBONES, DATASETS, METHODS, PRESETS, TASKS, format_value, load_all,
                            parse_spec, split_specs)


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


def writable_dir(path: Path) -> Path:
    """``path`` created if needed and proven writable, else a BenchError."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as e:
        raise BenchError(f"--out {path} is not a writable directory ({e.strerror or e})") from None
    return path


def add_run_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="train and measure methods; results go to the store under --out")
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
    p.add_argument("--amp", default=None, help="mixed precision in training: none, bf16 or fp16")
    p.add_argument("--channels-last", action="store_true", default=None)
    p.add_argument("--compile", action="store_true", default=None, help="torch.compile the backbone")
    p.add_argument("--tasks", nargs="+", default=None, help="tasks to run (default: all)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--out", type=Path, default=Path("reports"), help="store and reports directory")
    p.add_argument("--save-scoremaps", type=Path, default=None, metavar="DIR",
                   help="wsol: also write each run's test score maps and metadata under DIR")
    p.add_argument("--cam-curve-interval", type=float, default=None,
                   help="wsol: threshold step of the tau sweep (default 0.01)")
    p.add_argument("--jobs", type=positive_int, default=1,
                   help="parallel processes for independent (method, seed) runs")
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads")
    p.add_argument("--retry-failed", action="store_true", help="rerun runs that failed before")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_run)


def resolve_names(registry, items: Optional[list[str]]) -> list:
    texts = [s for item in (items or []) for s in split_specs(item)]
    return [parse_spec(registry, t) for t in texts]


def cmd_run(args: argparse.Namespace) -> int:
    from bench.report import write_report
    from bench.results import summary_table
    from bench.store import Store
    from bench.suite import STORE_NAME, SuiteConfig, resolve_device, run_suite

    preset = PRESETS.get(args.preset)
    recipe = preset.obj.replace(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                                weight_decay=args.weight_decay, schedule=args.schedule,
                                warmup_epochs=args.warmup_epochs, nesterov=args.nesterov,
                                cutmix=args.cutmix, seeds=args.seeds, amp=args.amp,
                                channels_last=args.channels_last, compile=args.compile)
    methods = resolve_names(METHODS, args.methods) or [parse_spec(METHODS, n) for n in METHODS.names()]
    tasks = [TASKS.get(t).name for item in (args.tasks or []) for t in split_specs(item)] or TASKS.names()
    dataset = parse_spec(DATASETS, args.dataset or recipe.dataset)
    backbone = parse_spec(BACKBONES, args.backbone or recipe.backbone)
    out = writable_dir(args.out)
    wsol_options = {k: v for k, v in (("save_scoremaps", args.save_scoremaps),
                                      ("cam_curve_interval", args.cam_curve_interval)) if v is not None}
    cfg = SuiteConfig(methods=methods, backbone=backbone, dataset=dataset, recipe=recipe,
                      preset=preset.name, tasks=tasks, out_dir=out, device=resolve_device(args.device),
                      data_root=args.data_root, download=args.download,
                      retry_failed=args.retry_failed, progress=not args.no_progress,
                      jobs=args.jobs, threads=args.threads, task_options={"wsol": wsol_options})
    Store(out / STORE_NAME).close()  # refuse a non-SQLite store before any work
    outcomes = run_suite(cfg)
    if int(os.environ.get("RANK", "0")) > 0:  # torchrun: rank 0 reports
        return 0
    for o in outcomes:
        if o.status == "failed":
            print(f"FAILED {o.method} seed {o.seed}: {o.reason}", file=sys.stderr)
    store = Store(out / STORE_NAME, create=False)
    records = [r for r in store.records() if r["dataset"] == str(dataset)
               and r["backbone"] == str(backbone)]
    store.close()
    print(summary_table(records, [str(m) for m in methods]))
    print(f"\nstore: {out / STORE_NAME}")
    print(f"report: {write_report(out).html}")
    return 1 if any(o.status == "failed" for o in outcomes) else 0


def cmd_list(args: argparse.Namespace) -> int:
    for title, registry in (("methods", METHODS), ("backbones", BACKBONES), ("datasets", DATASETS),
                            ("presets", PRESETS), ("tasks", TASKS)):
        print(f"{title}:")
        for entry in registry:
            # written as a user types them: true/false, lists as a+b, an empty default as none
            options = ", ".join(f"{k}={format_value(v) or 'none'}" for k, v in entry.defaults.items())
            aliases = f" (aliases: {', '.join(entry.aliases)})" if entry.aliases else ""
            print(f"  {entry.name:<16} {entry.description}{aliases}")
            if options and registry is not PRESETS:
                print(f"  {'':<16} options: {options}")
        print()
    return 0


def cmd_results(args: argparse.Namespace) -> int:
    from bench.results import long_table, to_csv, to_json
    from bench.store import Store
    from bench.suite import STORE_NAME

    store = Store(args.out / STORE_NAME, create=False)
    records = store.records()
    store.close()
    print({"table": long_table, "csv": to_csv, "json": to_json}[args.format](records))
    return 0


def cmd_evaluate_wsol(args: argparse.Namespace) -> int:
    import json

    from bench.tasks.wsol import evaluate_wsol

    if not 0 < args.cam_curve_interval < 1:
        raise BenchError(f"--cam-curve-interval must lie in (0, 1), got {args.cam_curve_interval}")
    if any(not 0 < t <= 100 for t in args.iou_thresholds):
        raise BenchError(f"--iou-thresholds are percentages in (0, 100], got {args.iou_thresholds}")
    result = evaluate_wsol(args.metadata, args.scoremaps, args.cam_curve_interval,
                           multi_contour=not args.largest_contour,
                           iou_thresholds=tuple(args.iou_thresholds))
    if args.json:
        print(json.dumps(result, indent=2, default=str))
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
    import json

    from tabulate import tabulate

    from bench.profiling import profile_methods
    from bench.suite import resolve_device

    methods = [str(m) for m in resolve_names(METHODS, args.methods)] or METHODS.names()
    backbone = str(parse_spec(BACKBONES, args.backbone))
    device = resolve_device(args.device)
    amp = {"bf16": "bfloat16", "fp16": "float16", None: None}.get(args.amp, args.amp)
    rows = profile_methods(methods, backbone, args.input_size, args.num_classes, args.in_channels,
                           args.batch_size, str(device), args.train_step, args.threads,
                           channels_last=args.channels_last, amp_dtype=amp,
                           compile_mode="default" if args.compile else None)
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return 0
    columns = [("method", "method"), ("params", "params"), ("params_added", "params added"),
               ("gmacs", "GMACs (fvcore)"), ("gmacs_all", "GMACs (all ops)"),
               ("gmacs_train", "GMACs (train)"), ("memory_access_mb", "memory access (MB)"),
               ("saved_activations_mb", "saved activations (MB)"),
               ("latency_ms", "latency b=1 (ms)"), ("train_step_ratio", "train step (x gap-fc)")]
    table = [[row.get(key, "") for key, _ in columns] for row in rows]
    print(tabulate(table, headers=[h for _, h in columns], tablefmt="github", floatfmt=".4g",
                   intfmt=","))
    first = rows[0]
    print(f"\n{backbone}, {args.input_size}x{args.input_size}, {args.num_classes} classes; "
          f"device {first.get('device')}, threads {first.get('threads')}, batch {args.batch_size}, "
          f"dtype {first.get('dtype', 'float32')}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from bench.report import write_report

    files = write_report(args.out)
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
    result = check(args.out, args.baseline)
    print("\n".join(result.lines()))
    return 1 if result.failures else 0


def build_parser() -> Parser:
    parser = Parser(prog="bench", description="Compare attention mechanisms for CNN classifiers.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    add_run_parser(sub)
    sub.add_parser("list", help="methods, backbones, datasets, presets and tasks").set_defaults(func=cmd_list)
    p = sub.add_parser("results", help="print stored results")
    p.add_argument("--out", type=Path, default=Path("reports"))
    p.add_argument("--format", choices=["table", "csv", "json"], default="table")
    p.set_defaults(func=cmd_results)
    p = sub.add_parser("profile", help="parameters, GMACs, memory traffic, latency of methods")
    p.add_argument("--methods", nargs="+", default=None, metavar="SPEC", help="default: all")
    p.add_argument("--backbone", default="resnet50")
    p.add_argument("--input-size", type=positive_int, default=224)
    p.add_argument("--num-classes", type=positive_int, default=1000)
    p.add_argument("--in-channels", type=positive_int, default=3)
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
                   help="folder with image_ids.txt, class_labels.txt, image_sizes.txt, localization.txt")
    p.add_argument("--scoremaps", type=Path, required=True, help="folder of <image_id>.npy maps in [0, 1]")
    p.add_argument("--cam-curve-interval", type=float, default=0.01)
    p.add_argument("--largest-contour", action="store_true", help="V1 box rule: largest contour only")
    p.add_argument("--iou-thresholds", type=int, nargs="+", default=[30, 50, 70])
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_evaluate_wsol)
    p = sub.add_parser("report", help="write report.md, report.html and figures/ from the store")
    p.add_argument("--out", type=Path, default=Path("reports"), help="store and reports directory")
    p.set_defaults(func=cmd_report)
    p = sub.add_parser("check", help="compare stored results with a baseline; exit 1 on regressions")
    p.add_argument("--out", type=Path, default=Path("reports"), help="store directory")
    p.add_argument("--baseline", type=Path, required=True, help="baseline JSON file")
    p.add_argument("--update", action="store_true",
                   help="write the stored results (mean over seeds) as the new baseline")
    p.set_defaults(func=cmd_check)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    try:
        load_all()
        args = build_parser().parse_args(argv)
        func: Callable[[argparse.Namespace], int] = args.func
        return func(args)
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into a reader that closed early (| head)
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("interrupted: completed runs are stored; rerun the same command to resume",
              file=sys.stderr)
        return 130


