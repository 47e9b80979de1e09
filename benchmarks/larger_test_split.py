"""Benchmark: is the agreement's ranking a matter of test-set size?

    python benchmarks/larger_test_split.py [--out reports/preset-agreement] [--factor 6]
        [--eval-copies 8]

Re-evaluates the trained models of both schedules of ``benchmarks/preset_agreement.py`` (the
checkpoints under ``OUT/default`` and ``OUT/x{factor}``) on a digits-clutter test split with
``--eval-copies`` renders of each test digit instead of the stored runs' count. The training split
does not depend on ``eval_copies``, so these are the models that were trained; each is first
evaluated on its own test split and must reproduce its stored top-1. Prints each method's mean
test top-1 and difference to GAP-FC under both schedules and the Kendall tau of the two rankings.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from scipy.stats import kendalltau
from tabulate import tabulate

import bench
from bench.checkpoints import checkpoint_path
from bench.data.base import DataBundle
from bench.data.digits_clutter import load
from bench.errors import BenchError
from bench.report.collect import BASELINE
from bench.store import Store
from bench.train import evaluate


def top1_by_run(out: Path, eval_copies: int) -> dict[str, dict[int, float]]:
    """method -> seed -> test top-1 (%) on the larger split, after checking the stored one."""
    store = Store(out / "results.sqlite", create=False)
    stored = {(r["run_id"], r["task"], r["metric"]): r["value"] for r in store.records()}
    runs = [r for r in store.runs() if r["status"] == "complete"]
    store.close()
    bundles: dict[str, DataBundle] = {}  # by dataset options, eval_copies included

    def bundle(options: dict) -> DataBundle:
        key = json.dumps(options, sort_keys=True)
        if key not in bundles:
            bundles[key] = load(None, False, **options)
        return bundles[key]

    result: dict[str, dict[int, float]] = {}
    for run in runs:
        config = json.loads(run["config"])
        if config["dataset"] != "digits-clutter":
            raise SystemExit(f"error: {out}: run {run['id']} is on {config['dataset']}, not "
                             "digits-clutter")
        own = bundle(config["dataset_options"])
        model = bench.build_model(run["method"], run["backbone"], own.num_classes,
                                  in_channels=own.in_channels, input_size=own.input_size,
                                  dataset="digits-clutter")
        state = torch.load(checkpoint_path(out, run["config_hash"]), map_location="cpu",
                           weights_only=True)
        model.load_state_dict(state["model"])
        net = model.eval().deploy()
        top1 = evaluate(net, own.test, 512, torch.device("cpu"))["top1"]
        if top1 != stored[(run["id"], "accuracy", "top1")]:
            raise SystemExit(f"error: {run['method']} seed {run['seed']}: re-evaluated top-1 "
                             f"{top1} differs from the stored one")
        larger = bundle(dict(config["dataset_options"], eval_copies=eval_copies))
        top1 = evaluate(net, larger.test, 512, torch.device("cpu"))["top1"]
        result.setdefault(run["method"], {})[run["seed"]] = top1
    return result


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("reports/preset-agreement"))
    parser.add_argument("--factor", type=int, default=6)
    parser.add_argument("--eval-copies", type=int, default=8)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    try:
        short = top1_by_run(args.out / "default", args.eval_copies)
        long = top1_by_run(args.out / f"x{args.factor}", args.eval_copies)
    except BenchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    methods = [m for m in short if m in long]

    def difference(values: dict[str, dict[int, float]], m: str) -> float:
        return float(np.mean([values[m][s] - values[BASELINE][s] for s in values[m]]))

    rows = [{"method": m, "top-1, default (%)": f"{np.mean(list(short[m].values())):.2f}",
             "top-1, reference (%)": f"{np.mean(list(long[m].values())):.2f}",
             "Δ GAP-FC, default (pp)": f"{difference(short, m):+.2f}",
             "Δ GAP-FC, reference (pp)": f"{difference(long, m):+.2f}",
             "Δ apart (pp)": f"{difference(short, m) - difference(long, m):+.2f}"}
            for m in methods]
    print(tabulate(rows, headers="keys", tablefmt="github", disable_numparse=True))
    tau = kendalltau([np.mean(list(short[m].values())) for m in methods],
                     [np.mean(list(long[m].values())) for m in methods]).statistic
    print(f"\ntest split: {args.eval_copies} renders of each test digit; Kendall tau {tau:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
