"""Command line: ``python -m bench run | list | results | report | check``. Thin: parse, call the
library, print.

Bad input (a BenchError, or an argparse error) prints one line ``error: ...`` and exits with 2.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Callable, Optional

from bench.errors import BenchError
from bench.registry import (BACKBONES, DATASETS, METHODS, PRESETS, TASKS, load_all, parse_spec,
                            split_specs)


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
    p.add_argument("--tasks", nargs="+", default=None, help="tasks to run (default: all)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--out", type=Path, default=Path("reports"), help="store and reports directory")
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
                                cutmix=args.cutmix, seeds=args.seeds)
    methods = resolve_names(METHODS, args.methods) or [parse_spec(METHODS, n) for n in METHODS.names()]
    tasks = [TASKS.get(t).name for item in (args.tasks or []) for t in split_specs(item)] or TASKS.names()
    dataset = parse_spec(DATASETS, args.dataset or recipe.dataset)
    backbone = parse_spec(BACKBONES, args.backbone or recipe.backbone)
    out = writable_dir(args.out)
    cfg = SuiteConfig(methods=methods, backbone=backbone, dataset=dataset, recipe=recipe,
                      preset=preset.name, tasks=tasks, out_dir=out, device=resolve_device(args.device),
                      data_root=args.data_root, download=args.download,
                      retry_failed=args.retry_failed, progress=not args.no_progress)
    Store(out / STORE_NAME).close()  # refuse a non-SQLite store before any work
    outcomes = run_suite(cfg)
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
            options = ", ".join(f"{k}={v}" for k, v in entry.defaults.items())
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


