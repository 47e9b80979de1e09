"""Benchmark: does the default schedule reach the conclusions a converged one reaches?

    python benchmarks/preset_agreement.py [--preset quick] [--factor 6] [--seeds N] [--out DIR]
        [--dataset SPEC] [--from-store] [--interval bootstrap|t]

Trains every method of the preset (accuracy task only) at the preset's recipe and at a reference
schedule ``--factor`` times longer (epochs x factor; the same data, seeds and recipe otherwise),
then prints, per method, its difference to GAP-FC in test top-1 under both schedules (paired by
seed, with 95% intervals), the two verdicts (the report's own analysis, bench/report/stats.py),
how far apart the two differences are, and whether the reference has converged (its test top-1
change over the last third of its epochs); overall, the Kendall tau between the two rankings of
the methods' means. Targets: every method's difference within 3 pp of its reference difference,
identical verdicts, tau >= 0.8; each is printed as met or missed. The targets need a reference of
at least 6x the default's epochs. Then every headline verdict other than "no detectable
difference" (top-1, MaxBoxAccV2, PxAP, learning AUC) under either schedule, and whether each of the
default's is also the reference's; learning-speed metrics are listed but not checked, since they
are defined over a schedule's own epochs. ``--dataset`` tries the preset's recipe on other data (a
candidate workload), and ``--recipe NAME=VALUE ...`` changes recipe fields of both schedules (the
recipe a search chose for that data, say).

Runs are stored under ``--out`` (``default/`` and ``x{factor}/``, one store each), so a rerun
reuses finished runs; ``--from-store`` prints the table from the stored runs without training
(an error if a schedule has no stored runs). The table is also written there as JSON.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any, Optional

import pandas as pd
from scipy.stats import kendalltau
from tabulate import tabulate

import bench
from bench.errors import BenchError
from bench.metrics import METRICS
from bench.plugins import load_all
from bench.presets import PRESETS, Recipe
from bench.registry import coerce_option
from bench.report.collect import BASELINE, Group, load
from bench.report.conclusions import HEADLINE_COMPARISONS, MetricResult, analyse, difference_text
from bench.report.stats import BETTER, WORSE

TARGET_DIFFERENCE = 3.0  # pp: default's difference to GAP-FC vs the reference's
TARGET_TAU = 0.8
MIN_FACTOR = 6  # the reference schedule the targets are stated for
METRIC = "top1"
SCHEDULE_BOUND = ("learning",)  # catalogue tables of metrics defined over a schedule's own epochs


def find_group(out: Path, recipe: dict[str, Any]) -> Group:
    """The one configuration group under ``out`` trained with ``recipe`` (every field equal)."""
    groups = [g for g in load(out).groups
              if all(g.recipe.get(k) == v for k, v in recipe.items())] if out.exists() else []
    if not groups:
        raise BenchError(f"no stored runs of the {recipe['epochs']}-epoch schedule under {out}; "
                         f"run without --from-store first")
    if len(groups) > 1:
        raise BenchError(f"{len(groups)} configuration groups under {out} match the "
                         f"{recipe['epochs']}-epoch schedule's recipe {recipe}")
    return groups[0]


def schedule(out: Path, epochs: int, args: argparse.Namespace) -> tuple[Group, Optional[float]]:
    """Run (or reuse) one schedule; its group and the wall time this call took (None when only
    read from the store)."""
    seconds = None
    if not args.from_store:
        start = time.perf_counter()
        bench.run(args.methods, preset=args.preset, dataset=args.dataset, epochs=epochs,
                  seeds=args.seeds, tasks=args.tasks, out=out, jobs=args.jobs,
                  threads=args.threads, report=False, progress=not args.no_progress,
                  **args.recipe)
        seconds = time.perf_counter() - start
    recipe = dataclasses.asdict(PRESETS.get(args.preset).obj.replace(epochs=epochs,
                                                                      **args.recipe))
    wanted = {k: (list(v) if isinstance(v, tuple) else v) for k, v in recipe.items()
              if k not in ("seeds", "dataset", "backbone")}
    return find_group(out, wanted), seconds


def recipe_changes(preset: Recipe, texts: list[str]) -> dict[str, Any]:
    """``NAME=VALUE`` texts as recipe changes, each typed like its field (``coerce_option``); a bad
    one is a BenchError naming the problem or the valid fields."""
    changes: dict[str, Any] = {}
    for text in texts:
        name, sep, value = text.partition("=")
        if not sep or not value:
            raise BenchError(f"--recipe {text}: write NAME=VALUE")
        default = getattr(preset, name, None)
        changes[name] = value if default is None else \
            coerce_option("recipe", "--recipe", name, value, default)
    preset.replace(**changes)  # an unknown field or a value out of range: its BenchError
    return changes


def late_gain(group: Group, method: str) -> Optional[float]:
    """Mean over seeds of the test top-1 gained over the last third of the schedule (pp): how far
    from converged the run still was."""
    c = group.curves
    c = c[(c["method"] == method) & (c["name"] == "test_top1")].dropna(subset=["value"])
    if c.empty:
        return None
    last = int(c["epoch"].max())
    third = max(last - (last + 1) // 3, 0)
    by_seed = c.pivot_table(index="seed", columns="epoch", values="value")
    if third not in by_seed or last not in by_seed:
        return None
    return float((by_seed[last] - by_seed[third]).mean())


def rows_and_targets(short: MetricResult, long: MetricResult, methods: list[str],
                     epochs: tuple[int, int], long_group: Group) -> tuple[list[dict], dict]:
    """The per-method table and the three targets (value, met)."""
    e0, e1 = epochs
    rows, gaps, same = [], {}, 0
    compared = [m for m in methods if m != BASELINE]
    for m in methods:
        a, b = short.comparisons.get(m), long.comparisons.get(m)
        verdicts = ("reference" if m == BASELINE else (a.verdict if a else "—"),
                    "reference" if m == BASELINE else (b.verdict if b else "—"))
        row = {"method": m,
               f"top-1, {e0} ep (%)": short.estimates[m].text("%", 2) if m in short.estimates
               else "—",
               f"top-1, {e1} ep (%)": long.estimates[m].text("%", 2) if m in long.estimates
               else "—",
               f"Δ GAP-FC, {e0} ep (pp)": difference_text(a, "pp", 2) if a else "—",
               f"Δ GAP-FC, {e1} ep (pp)": difference_text(b, "pp", 2) if b else "—"}
        if m != BASELINE and a and b and a.difference.n and b.difference.n:
            gaps[m] = a.difference.mean - b.difference.mean
            row["Δ apart (pp)"] = f"{gaps[m]:+.2f}"
        else:
            row["Δ apart (pp)"] = ""
        row[f"verdict, {e0} ep"], row[f"verdict, {e1} ep"] = verdicts
        if m != BASELINE:
            same += verdicts[0] == verdicts[1]
        gain = late_gain(long_group, m)
        row[f"gain over last third, {e1} ep (pp)"] = "" if gain is None else f"{gain:+.2f}"
        rows.append(row)
    means = [m for m in methods if m in short.estimates and m in long.estimates]
    tau = kendalltau([short.estimates[m].mean for m in means],
                     [long.estimates[m].mean for m in means]).statistic
    worst = max(gaps, key=lambda m: abs(gaps[m])) if gaps else None
    targets = {
        "difference": {"met": bool(gaps) and len(gaps) == len(compared)
                       and all(abs(g) <= TARGET_DIFFERENCE for g in gaps.values()),
                       "largest_pp": abs(gaps[worst]) if worst else None, "method": worst,
                       "missed_by": sorted(m for m, g in gaps.items()
                                           if abs(g) > TARGET_DIFFERENCE)},
        "verdicts": {"met": same == len(compared), "identical": same, "of": len(compared)},
        "tau": {"met": bool(tau >= TARGET_TAU), "value": float(tau)},
    }
    return rows, targets


def verdict_rows(short: Group, long: Group, methods: list[str],
                 interval: str) -> tuple[list[dict], list[str]]:
    """Every headline comparison with a verdict other than "no detectable difference" under
    either schedule, and the default's verdicts the reference does not give (schedule-bound
    metrics excepted)."""
    rows, unconfirmed = [], []
    present = set(short.records["metric"]) & set(long.records["metric"])
    for name in (n for n in HEADLINE_COMPARISONS if n in present):
        a = analyse(short.records, methods, name, interval=interval)
        b = analyse(long.records, methods, name, interval=interval)
        bound = a.info.table in SCHEDULE_BOUND
        for m in (m for m in methods if m in a.comparisons and m in b.comparisons):
            va, vb = a.comparisons[m].verdict, b.comparisons[m].verdict
            if va not in (BETTER, WORSE) and vb not in (BETTER, WORSE):
                continue
            confirmed = "schedule-bound" if bound else "yes" if va == vb else \
                "no" if va in (BETTER, WORSE) else "reference only"
            if confirmed == "no":
                unconfirmed.append(f"{m} {name}")
            rows.append({"metric": a.info.label, "method": m,
                         "Δ GAP-FC, default": difference_text(a.comparisons[m], a.delta_unit, 2),
                         "Δ GAP-FC, reference": difference_text(b.comparisons[m], b.delta_unit, 2),
                         "verdict, default": va, "verdict, reference": vb,
                         "default's verdict confirmed": confirmed})
    return rows, unconfirmed


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="quick")
    parser.add_argument("--factor", type=int, default=MIN_FACTOR)
    parser.add_argument("--seeds", type=int, default=None, help="default: the preset's")
    parser.add_argument("--methods", nargs="*", default=None)
    parser.add_argument("--dataset", default=None, help="dataset spec (default: the preset's)")
    parser.add_argument("--recipe", nargs="*", default=[], metavar="NAME=VALUE",
                        help="recipe fields of both schedules (default: the preset's)")
    parser.add_argument("--tasks", nargs="+", default=["accuracy", "wsol"],
                        help="tasks of both schedules (default: accuracy wsol)")
    parser.add_argument("--jobs", type=int, default=None,
                        help="parallel runs (default: bench's: one per core on the CPU)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--interval", default="t", help="t (the report's default) or bootstrap")
    parser.add_argument("--out", type=Path, default=Path("reports/preset-agreement"))
    parser.add_argument("--from-store", action="store_true",
                        help="print the table from the stored runs; train nothing")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    load_all()
    try:
        preset = PRESETS.get(args.preset).obj
        if args.factor < 2:
            raise BenchError(f"--factor must be >= 2, got {args.factor}")
        args.seeds = args.seeds or preset.seeds
        args.recipe = recipe_changes(preset, args.recipe)
        fixed = sorted(set(args.recipe) & {"epochs", "seeds", "dataset", "backbone"})
        if fixed:
            raise BenchError(f"--recipe cannot set {fixed[0]}: the preset's epochs and --factor "
                             f"set the schedules, --seeds the seeds, --dataset the data")
        epochs = (preset.epochs, preset.epochs * args.factor)
        short, short_s = schedule(args.out / "default", epochs[0], args)
        long, long_s = schedule(args.out / f"x{args.factor}", epochs[1], args)
        methods = [m for m in short.methods if m in long.methods]
        a = analyse(short.records, methods, METRIC, interval=args.interval)
        b = analyse(long.records, methods, METRIC, interval=args.interval)
    except BenchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for name, group in (("default", short), ("reference", long)):
        done = int((group.runs["status"] == "complete").sum())
        if done < len(group.runs):
            print(f"note: the {name} schedule has {done} of {len(group.runs)} runs complete; "
                  f"this table is partial")
    rows, targets = rows_and_targets(a, b, methods, epochs, long)
    verdicts, unconfirmed = verdict_rows(short, long, methods, args.interval)
    seeds = sorted(set(pd.concat([short.records["seed"], long.records["seed"]])))
    print(tabulate(rows, headers="keys", tablefmt="github", disable_numparse=True))
    met = {True: "met", False: "MISSED"}
    d, v, t = targets["difference"], targets["verdicts"], targets["tau"]
    print(f"\nreference: {epochs[1]} epochs = {args.factor}x the default's {epochs[0]}"
          + ("" if args.factor >= MIN_FACTOR else f" (below the {MIN_FACTOR}x the targets "
                                                   "are stated for)")
          + f"; seeds {seeds}; intervals: {args.interval}"
          + "".join(f"; {k}={v}" for k, v in args.recipe.items()))
    largest = "none compared" if d["method"] is None else f"{d['largest_pp']:.2f} pp"
    print(f"- differences to GAP-FC within {TARGET_DIFFERENCE:g} pp of the reference's: "
          f"{met[d['met']]} (largest {largest}, {d['method']}"
          + (f"; beyond: {', '.join(d['missed_by'])}" if d["missed_by"] else "") + ")")
    print(f"- identical verdicts: {met[v['met']]} ({v['identical']} of {v['of']})")
    print(f"- Kendall tau of the rankings >= {TARGET_TAU}: {met[t['met']]} ({t['value']:.3f})")
    print("\nHeadline verdicts other than 'no detectable difference', under either schedule:\n")
    print(tabulate(verdicts, headers="keys", tablefmt="github", disable_numparse=True)
          if verdicts else "none")
    checked = [n for n in HEADLINE_COMPARISONS if METRICS.get(n).table not in SCHEDULE_BOUND]
    print(f"- every better/worse verdict of the default on {', '.join(checked)} also the "
          f"reference's: {met[not unconfirmed]}"
          + (f" (not: {', '.join(unconfirmed)})" if unconfirmed else ""))
    if short_s is not None:
        print(f"wall time this call: {short_s:.0f} s + {long_s:.0f} s")
    targets["verdicts_confirmed"] = {"met": not unconfirmed, "unconfirmed": unconfirmed}
    summary = {"preset": args.preset, "dataset": args.dataset, "recipe_changes": args.recipe,
               "epochs": epochs, "factor": args.factor, "seeds": seeds,
               "interval": args.interval, "rows": rows, "targets": targets,
               "headline_verdicts": verdicts}
    (args.out / "agreement.json").write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
