"""Statistics over seeds, computed with scipy and statsmodels, never by hand.

- ``estimate``: the mean over seeds with a 95% confidence interval. By default
  ``scipy.stats.bootstrap`` (BCa; percentile where BCa is undefined, e.g. identical values),
  seeded, so the same values always give the same interval; ``interval="t"`` gives Student's t
  interval instead (``scipy.stats.t``), which is better calibrated for 2-3 seeds, where a
  bootstrap interval is close to the range of the values. One value: the mean alone, "n=1, no
  interval" (never a zero-width interval).
- ``compare``: each method against the baseline, paired by seed (same seed, same data order):
  the mean difference with its interval, a two-sided paired t-test (``scipy.stats.ttest_rel``),
  p-values corrected for the number of methods compared by Holm's method
  (``statsmodels.stats.multitest.multipletests``), and a verdict: better / worse at the corrected
  5% level, else no detectable difference; each with the number of paired seeds it rests on.
- ``aggregate``: across several tasks (datasets or backbones), the interquartile mean and the
  probability of improvement over the baseline (Agarwal et al., NeurIPS 2021) with
  stratified-bootstrap intervals: ``scipy.stats.bootstrap`` given each task's seeds as a
  separate sample resamples within tasks (stratified), with ``scipy.stats.trim_mean`` (IQM) and
  ``scipy.stats.mannwhitneyu`` (P(X > Y) = U / mn per task, averaged). rliable computes the same
  estimators, but its release pins ``arch<8`` whose 7.x fails to import with pandas 3 (README).

Number formatting shared by all tables lives here too.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

import numpy as np

from bench.errors import BenchError
from bench.metrics import HIGHER, LOWER, decimals

ALPHA = 0.05  # family-wise level of the verdicts (Holm-corrected)
CONFIDENCE = 0.95
RESAMPLES = 9999
SEED = 0  # of every bootstrap: the same store gives the same intervals
INTERVALS = ("bootstrap", "t")
AGGREGATES = ("iqm", "mean", "median")
BETTER, WORSE, SAME = "better", "worse", "no detectable difference"


@dataclass(frozen=True)
class Estimate:
    """A mean over ``n`` values with its confidence interval (None for n = 1)."""

    mean: float
    n: int
    low: Optional[float] = None
    high: Optional[float] = None

    @property
    def half_width(self) -> Optional[float]:
        """Half the interval's width (the ``±`` shown in tables)."""
        return None if self.low is None else (self.high - self.low) / 2

    def text(self, unit: str, digits: Optional[int] = None) -> str:
        """``86.20 ± 1.23`` (mean ± CI half-width), or ``86.20 (n=1, no interval)``."""
        if not math.isfinite(self.mean):
            return "n/a"
        d = decimals(self.mean, unit) if digits is None else digits
        if self.low is None:
            return f"{fmt(self.mean, unit, d)} (n=1, no interval)"
        return f"{fmt(self.mean, unit, d)} ± {fmt(self.half_width, unit, d)}"


def check_interval(interval: str) -> str:
    if interval not in INTERVALS:
        raise BenchError(f"interval {interval!r} is not a confidence-interval method; valid: "
                         f"{', '.join(INTERVALS)}", "interval")
    return interval


def _bootstrap(samples: tuple, statistic, method: str = "BCa") -> tuple[float, float]:
    from scipy import stats

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # BCa on degenerate data: handled below
        result = stats.bootstrap(samples, statistic, n_resamples=RESAMPLES,
                                 confidence_level=CONFIDENCE, method=method,
                                 rng=np.random.default_rng(SEED))
    low, high = result.confidence_interval
    if method == "BCa" and not (math.isfinite(low) and math.isfinite(high)):
        return _bootstrap(samples, statistic, "percentile")
    return float(low), float(high)


def estimate(values: Sequence[float], interval: str = "bootstrap") -> Estimate:
    """The mean of the finite ``values`` and its 95% interval (see the module docstring)."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=float)
    if len(v) == 0:
        return Estimate(float("nan"), 0)
    mean = float(v.mean())
    if len(v) == 1:
        return Estimate(mean, 1)
    if np.all(v == v[0]):  # no spread: the interval is the value itself
        return Estimate(mean, len(v), mean, mean)
    if check_interval(interval) == "t":
        from scipy import stats

        low, high = stats.t.interval(CONFIDENCE, len(v) - 1, loc=mean, scale=stats.sem(v))
        return Estimate(mean, len(v), float(low), float(high))
    low, high = _bootstrap((v,), np.mean)
    return Estimate(mean, len(v), low, high)


@dataclass(frozen=True)
class Comparison:
    """A method against the baseline, paired by seed."""

    difference: Estimate  # of method - baseline, over the paired seeds
    p: Optional[float]  # two-sided paired t-test; None when undefined
    p_holm: Optional[float]  # Holm-corrected over the methods compared
    verdict: str  # BETTER, WORSE, SAME, or why there is no verdict

    @property
    def n(self) -> int:
        return self.difference.n


def _paired_p(diffs: np.ndarray) -> Optional[float]:
    """Two-sided paired t-test of mean difference 0 (None with < 2 pairs or no spread)."""
    if len(diffs) < 2 or np.all(diffs == diffs[0]):
        return None
    from scipy import stats

    return float(stats.ttest_1samp(diffs, 0.0).pvalue)


def compare(values: Mapping[str, Mapping[int, float]], baseline: str,
            direction: Optional[str] = HIGHER, interval: str = "bootstrap",
            alpha: float = ALPHA) -> dict[str, Comparison]:
    """Every method of ``values`` (method -> seed -> value) but ``baseline`` against it, paired
    by seed; p-values Holm-corrected over the methods that have a test."""
    from scipy import stats  # noqa: F401  (fail early if scipy is missing)
    from statsmodels.stats.multitest import multipletests

    base = values.get(baseline, {})
    diffs: dict[str, np.ndarray] = {}
    for method, by_seed in values.items():
        if method == baseline:
            continue
        seeds = sorted(set(by_seed) & set(base))
        diffs[method] = np.array([by_seed[s] - base[s] for s in seeds], dtype=float)
    raw = {m: _paired_p(d) for m, d in diffs.items()}
    tested = [m for m, p in raw.items() if p is not None]
    adjusted = dict(zip(tested, multipletests([raw[m] for m in tested], alpha=alpha,
                                              method="holm")[1])) if tested else {}
    result = {}
    for method, d in diffs.items():
        diff = estimate(d, interval)
        p, p_holm = raw[method], adjusted.get(method)
        if len(d) == 0:
            verdict = f"no paired {baseline} seed"
        elif p_holm is None:
            verdict = "n=1: no test" if len(d) == 1 else "no spread: no test"
        elif p_holm < alpha and direction in (HIGHER, LOWER):
            verdict = BETTER if (diff.mean > 0) == (direction == HIGHER) else WORSE
        else:
            verdict = SAME
        result[method] = Comparison(diff, p, None if p_holm is None else float(p_holm), verdict)
    return result


@dataclass(frozen=True)
class Aggregate:
    """An aggregate over tasks with its stratified-bootstrap interval."""

    name: str
    value: float
    low: float
    high: float
    tasks: int
    runs: int  # per task


def check_aggregate(name: str) -> str:
    if name not in AGGREGATES:
        raise BenchError(f"aggregate {name!r} is not an aggregate; valid: {', '.join(AGGREGATES)}",
                         "aggregate")
    return name


def _pooled(name: str):
    from scipy import stats

    def statistic(*tasks: np.ndarray, axis: int = -1) -> np.ndarray:
        pooled = np.concatenate(tasks, axis=axis)
        if name == "iqm":
            return stats.trim_mean(pooled, 0.25, axis=axis)
        return np.median(pooled, axis=axis) if name == "median" else np.mean(pooled, axis=axis)
    return statistic


def aggregate(scores: Sequence[Sequence[float]], name: str = "iqm") -> Aggregate:
    """``name`` (iqm, mean, median) of the scores of all runs of all tasks (``scores[task]`` =
    the task's per-seed values), with a stratified-bootstrap 95% interval."""
    check_aggregate(name)
    tasks = tuple(np.asarray(t, dtype=float) for t in scores)
    point = float(_pooled(name)(*tasks))
    runs = min(len(t) for t in tasks)
    if runs < 2:
        return Aggregate(name, point, point, point, len(tasks), runs)
    low, high = _bootstrap(tasks, _pooled(name), "percentile")
    return Aggregate(name, point, low, high, len(tasks), runs)


def probability_of_improvement(method: Sequence[Sequence[float]],
                               baseline: Sequence[Sequence[float]],
                               direction: Optional[str] = HIGHER) -> Aggregate:
    """P(a run of ``method`` beats a run of ``baseline`` on the same task), averaged over tasks
    (Mann-Whitney U / mn, ties counting one half), with a stratified-bootstrap 95% interval."""
    from scipy import stats

    pairs = [(np.asarray(x, dtype=float), np.asarray(y, dtype=float))
             for x, y in zip(method, baseline)]
    if direction == LOWER:
        pairs = [(-x, -y) for x, y in pairs]
    samples = tuple(a for pair in pairs for a in pair)

    def statistic(*arrays: np.ndarray, axis: int = -1) -> np.ndarray:
        per_task = []
        for x, y in zip(arrays[0::2], arrays[1::2]):
            u = stats.mannwhitneyu(x, y, axis=axis, method="asymptotic").statistic
            per_task.append(u / (x.shape[axis] * y.shape[axis]))
        return np.mean(per_task, axis=0)

    point = float(statistic(*samples))
    runs = min(len(a) for a in samples)
    if runs < 2:
        return Aggregate("probability_of_improvement", point, point, point, len(pairs), runs)
    low, high = _bootstrap(samples, statistic, "percentile")
    return Aggregate("probability_of_improvement", point, low, high, len(pairs), runs)


def fmt(value: Optional[float], unit: str, digits: Optional[int] = None) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    d = decimals(value, unit) if digits is None else digits
    return f"{value:,.{d}f}"


def mean_std(values: Sequence[float], unit: str, digits: Optional[int] = None) -> str:
    """``mean ± sample std`` over seeds (just the value for one seed); ``digits`` after the point
    (default: by the mean's magnitude; tables pass one count per column)."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=float)
    if len(v) == 0:
        return "n/a"
    d = decimals(float(v.mean()), unit) if digits is None else digits
    if len(v) == 1:
        return fmt(float(v[0]), unit, d)
    return f"{fmt(float(v.mean()), unit, d)} ± {fmt(float(v.std(ddof=1)), unit, d)}"


def signed(value: float, unit: str, digits: Optional[int] = None) -> str:
    text = fmt(value, unit, digits)
    return text if text.startswith("-") or text == "n/a" else f"+{text}"


def p_text(p: Optional[float]) -> str:
    return "—" if p is None else f"{p:.3g}"
