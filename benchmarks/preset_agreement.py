"""Benchmark: does the default schedule reach the conclusions a longer one reaches?

    python benchmarks/preset_agreement.py [--preset quick] [--factor 3] [--seeds 3] [--out DIR]

Trains every method (accuracy task only) at the preset's recipe and at a ``--factor`` times longer
schedule (epochs x factor, everything else equal, the same seeds), then prints per method the two
mean top-1 values with their 95% intervals, the gap, the verdict against GAP-FC under each
schedule (paired t-test over seeds, Holm-corrected: the report's own analysis), and overall the
Kendall tau between the two rankings of the methods' means and the number of identical verdicts.
Targets (issue 12): every gap within 1.5 pp, tau >= 0.8, identical verdicts. Results are stored
under ``--out`` (default ``reports/preset-agreement``), so a rerun reuses finished runs; the table
is also written there as JSON.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from scipy.stats import kendalltau
from tabulate import tabulate

import bench
from bench.plugins import load_all
from bench.presets import PRESETS
from bench.report.collect import BASELINE, Group, load
from bench.report.conclusions import analyse

TARGET_GAP = 1.5  # pp
TARGET_TAU = 0.8


def top1(group: Group) -> dict[str, tuple[str, float, str]]:
    """method -> (mean ± half-width text, mean, verdict against the baseline)."""
    result = analyse(group.records, group.methods, "top1")
    out = {}
    for method, est in result.estimates.items():
        c = result.comparisons.get(method)
        verdict = "reference" if method == BASELINE else (c.verdict if c else "")
        out[method] = (est.text("%", 2), est.mean, verdict)
    return out


def schedule(out: Path, epochs: int, args: argparse.Namespace) -> tuple[Group, float]:
    """Run (or reuse) one schedule; its configuration group and the wall time this call took."""
    start = time.perf_counter()
    bench.run(args.methods, preset=args.preset, epochs=epochs, seeds=args.seeds,
              tasks=["accuracy"], out=out, jobs=args.jobs, threads=args.threads, report=False,
              progress=not args.no_progress)
    seconds = time.perf_counter() - start
    groups = [g for g in load(out).groups if g.recipe.get("epochs") == epochs]
    if len(groups) != 1:
        raise SystemExit(f"expected one configuration group with {epochs} epochs under {out}, "
                         f"found {len(groups)}")
    return groups[0], seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="quick")
    parser.add_argument("--factor", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--methods", nargs="*", default=None)
    parser.add_argument("--jobs", type=int, default=None,
                        help="parallel runs (default: bench's: one per core on the CPU)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=Path("reports/preset-agreement"))
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args()
    load_all()
    epochs = PRESETS.get(args.preset).obj.epochs
    short, short_s = schedule(args.out / "default", epochs, args)
    long, long_s = schedule(args.out / f"x{args.factor}", epochs * args.factor, args)
    a, b = top1(short), top1(long)
    methods = [m for m in short.methods if m in a and m in b]
    rows, same = [], 0
    for m in methods:
        gap = a[m][1] - b[m][1]
        same += a[m][2] == b[m][2]
        rows.append({"method": m, f"top-1, {epochs} ep (%)": a[m][0],
                     f"top-1, {epochs * args.factor} ep (%)": b[m][0], "gap (pp)": f"{gap:+.2f}",
                     f"verdict, {epochs} ep": a[m][2], f"verdict, {epochs * args.factor} ep": b[m][2]})
    tau = kendalltau([a[m][1] for m in methods], [b[m][1] for m in methods]).statistic
    worst = max(abs(a[m][1] - b[m][1]) for m in methods)
    print(tabulate(rows, headers="keys", tablefmt="github", disable_numparse=True))
    print(f"\nKendall tau of the two rankings: {tau:.3f} (target >= {TARGET_TAU}); identical "
          f"verdicts: {same} of {len(methods)}; largest gap {worst:.2f} pp (target <= "
          f"{TARGET_GAP}); seeds {args.seeds}; wall time {short_s:.0f} s + {long_s:.0f} s")
    summary = {"preset": args.preset, "epochs": epochs, "factor": args.factor, "seeds": args.seeds,
               "rows": rows, "kendall_tau": tau, "identical_verdicts": same,
               "methods": len(methods), "largest_gap_pp": worst,
               "wall_seconds": {"default": short_s, "long": long_s}}
    (args.out / "agreement.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
