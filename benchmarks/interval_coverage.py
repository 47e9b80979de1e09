"""Benchmark: do the 95% intervals cover 95%, and how often does a verdict fire with no true
difference?

    python benchmarks/interval_coverage.py [--reps 2000] [--fwer-reps 20000] [--seed 0] [--json FILE]

Monte Carlo over seed distributions (normal, and lognormal with sigma 1: a strong right skew) at
n = 2, 3, 5, 10, 20 seeds. For each of ``--reps`` simulated sets of n seeds it computes the 95%
interval of the mean as ``bench.report.stats`` does (same ``CONFIDENCE``, ``RESAMPLES`` and BCa
fallback to the percentile interval where BCa is undefined), all sets at once with
``scipy.stats.bootstrap(vectorized=True, batch=...)``:
- Student's t (``stats.t.interval``, the default),
- the percentile bootstrap,
- BCa (the ``--interval bootstrap`` method),
and prints how often each covers the distribution's true mean (Monte Carlo standard error about
0.5 points at 2,000 repetitions). Then, with no true difference (a baseline and 9 methods, each
seed's values independent draws from the same distribution, paired by seed), it prints the
family-wise rate of false verdicts: the fraction of ``--fwer-reps`` simulated studies in which
the paired t-test, Holm-corrected over the 9 methods at 5% (``compare``'s test), calls at least
one method better or worse. At n = 2 no verdict is given (``MIN_VERDICT_SEEDS``); the rate shown
there is the test's, had it been allowed. A benchmark, not a test: the table is in
docs/statistics.md.
"""
from __future__ import annotations

import argparse
import json
import math
import time
import warnings

import numpy as np
from scipy import stats
from statsmodels.stats.multitest import multipletests
from tabulate import tabulate

from bench.report.stats import ALPHA, CONFIDENCE, MIN_VERDICT_SEEDS, RESAMPLES

SEEDS = (2, 3, 5, 10, 20)
METHODS = 9  # compared with the baseline (the suite's ten methods less GAP-FC)
BATCH = 500  # bootstrap resamples held in memory at a time
CHECKED = 5  # studies per cell whose Holm decision is also taken from statsmodels
LOGNORMAL_SIGMA = 1.0
DISTRIBUTIONS = {
    "normal": (lambda rng, shape: rng.normal(0.0, 1.0, shape), 0.0),
    "lognormal": (lambda rng, shape: rng.lognormal(0.0, LOGNORMAL_SIGMA, shape),
                  math.exp(LOGNORMAL_SIGMA ** 2 / 2)),
}


def t_intervals(data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Student's t 95% interval of each row's mean."""
    n = data.shape[-1]
    return stats.t.interval(CONFIDENCE, n - 1, loc=data.mean(axis=-1),
                            scale=stats.sem(data, axis=-1))


def bootstrap_intervals(data: np.ndarray, method: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``scipy.stats.bootstrap`` intervals of each row's mean, all rows at once; BCa falls back
    to the percentile interval where it is undefined, as ``bench.report.stats`` does."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = stats.bootstrap((data,), np.mean, n_resamples=RESAMPLES, batch=BATCH, axis=-1,
                                 vectorized=True, confidence_level=CONFIDENCE, method=method,
                                 rng=np.random.default_rng(seed))
    low, high = (np.asarray(a, dtype=float) for a in result.confidence_interval)
    if method == "BCa":
        bad = ~(np.isfinite(low) & np.isfinite(high))
        if bad.any():
            fallback_low, fallback_high = bootstrap_intervals(data[bad], "percentile", seed)
            low[bad], high[bad] = fallback_low, fallback_high
    return low, high


def coverage(draw, truth: float, n: int, reps: int, rng: np.random.Generator,
             seed: int) -> dict[str, float]:
    """The share of ``reps`` intervals of each method that contain ``truth``."""
    data = draw(rng, (reps, n))
    result = {}
    for name, (low, high) in (("t", t_intervals(data)),
                              ("percentile", bootstrap_intervals(data, "percentile", seed)),
                              ("BCa", bootstrap_intervals(data, "BCa", seed))):
        result[name] = float(np.mean((low <= truth) & (truth <= high)))
    return result


def false_verdicts(draw, n: int, reps: int, rng: np.random.Generator) -> float:
    """Family-wise rate of at least one verdict among 9 methods with no true difference. Holm's
    step-down rejects anything exactly when its first step does, min p <= alpha / m, so the
    studies are decided at once (``multipletests`` agrees on the first ``CHECKED`` of them)."""
    baseline = draw(rng, (reps, 1, n))
    methods = draw(rng, (reps, METHODS, n))
    p = stats.ttest_1samp(methods - baseline, 0.0, axis=-1).pvalue  # (reps, METHODS)
    rejected = p.min(axis=1) <= ALPHA / METHODS
    for row, any_rejected in zip(p[:CHECKED], rejected[:CHECKED]):
        assert multipletests(row, alpha=ALPHA, method="holm")[0].any() == any_rejected
    return float(np.mean(rejected))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=2000, help="simulated seed sets per cell")
    parser.add_argument("--fwer-reps", type=int, default=20000,
                        help="simulated studies per cell for the false-verdict rate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="also write the table here")
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    start = time.perf_counter()
    rows = []
    for name, (draw, truth) in DISTRIBUTIONS.items():
        for n in SEEDS:
            cover = coverage(draw, truth, n, args.reps, rng, args.seed)
            fwer = false_verdicts(draw, n, args.fwer_reps, rng)
            rows.append({"distribution": name, "n": n, **cover, "false_verdicts": fwer,
                         "verdict_given": n >= MIN_VERDICT_SEEDS})
    seconds = time.perf_counter() - start
    table = [[r["distribution"], r["n"], f"{100 * r['t']:.1f}", f"{100 * r['percentile']:.1f}",
              f"{100 * r['BCa']:.1f}",
              f"{100 * r['false_verdicts']:.1f}" + ("" if r["verdict_given"] else " (no verdict)")]
             for r in rows]
    print(tabulate(table, headers=["seed distribution", "seeds", "t (%)", "percentile (%)",
                                   "BCa (%)", f"false verdicts, Holm over {METHODS} (%)"],
                   tablefmt="github", disable_numparse=True))
    print(f"\ncoverage of the true mean by the {CONFIDENCE:.0%} interval over {args.reps} seed sets "
          f"({RESAMPLES} bootstrap resamples each); false verdicts over {args.fwer_reps} studies "
          f"with no true difference; {seconds:.0f} s")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"rows": rows, "reps": args.reps, "fwer_reps": args.fwer_reps,
                       "seconds": seconds}, f, indent=2)


if __name__ == "__main__":
    main()
