"""Statistics over seeds, computed with scipy and statsmodels, never by hand.

- ``estimate``: the mean over seeds with a 95% confidence interval. By default Student's t
  (``scipy.stats.t``), which holds its level from 2 seeds on for normal seed noise
  (docs/statistics.md, ``benchmarks/interval_coverage.py``) and is symmetric by construction
  (shown ``mean ± half-width``); ``interval="bootstrap"`` gives ``scipy.stats.bootstrap`` (BCa;
  percentile where BCa is undefined), seeded, recommended from ``BOOTSTRAP_FROM`` seeds (below,
  it is close to the range of the values and covers far less than 95%), asymmetric (shown
  ``mean [low, high]``). One value: the mean alone, "n=1, no interval".
- ``compare``: each method against the baseline, paired by seed (same seed, same data order):
  the mean difference with its interval, a two-sided paired t-test (``scipy.stats.ttest_1samp``
  of the differences), p-values corrected for the number of methods compared by Holm's method
  (``statsmodels.stats.multitest.multipletests``), and a verdict: better / worse at the corrected
  5% level, else no detectable difference, from ``MIN_VERDICT_SEEDS`` paired seeds on; and its
  power (``Power``): the smallest difference the test detects with 80% power at the current seed
  count, and the seeds that would detect the observed difference (``TTestPower``).
- ``aggregate``: across several tasks (datasets or backbones), the interquartile mean and the
  probability of improvement over the baseline (Agarwal et al., NeurIPS 2021) with
  stratified-bootstrap intervals: ``scipy.stats.bootstrap`` given each task's seeds as a
  separate sample resamples within tasks (stratified), with ``scipy.stats.trim_mean`` (IQM) and
  ``scipy.stats.mannwhitneyu`` (P(X > Y) = U / mn per task, averaged); no interval when a task
  has fewer than 2 runs. rliable computes the same estimators, but its release pins ``arch<8``
  whose 7.x fails to import with pandas 3.

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
POWER = 0.8  # of the minimum detectable difference
RESAMPLES = 9999
SEED = 0  # of every bootstrap: the same store gives the same intervals
INTERVALS = ("t", "bootstrap")
DEFAULT_INTERVAL = "t"
BOOTSTRAP_FROM = 20  # seeds from which the bootstrap covers about 95% (interval_coverage.py)
MIN_VERDICT_SEEDS = 3  # paired seeds a verdict needs (1 degree of freedom is no evidence)
AGGREGATES = ("iqm", "mean", "median")
BETTER, WORSE, SAME = "better", "worse", "no detectable difference"
NO_INTERVAL = "n=1, no interval"


@dataclass(frozen=True)
class Estimate:
    """A mean over ``n`` values with its confidence interval (None for n = 1); ``symmetric``
    when the interval is symmetric by construction (Student's t)."""

    mean: float
    n: int
    low: Optional[float] = None
    high: Optional[float] = None
    symmetric: bool = False

    @property
    def half_width(self) -> Optional[float]:
        """Half the interval's width."""
        return None if self.low is None else (self.high - self.low) / 2

    def text(self, unit: str, digits: Optional[int] = None) -> str:
        """``86.20 ± 1.23`` (symmetric), ``86.20 [85.10, 88.00]`` (asymmetric), or
        ``86.20 (n=1, no interval)``."""
        if not math.isfinite(self.mean):
            return "n/a"
        d = decimals(self.mean, unit) if digits is None else digits
        if self.low is None:
            return f"{fmt(self.mean, unit, d)} ({NO_INTERVAL})"
        if self.symmetric:
            return f"{fmt(self.mean, unit, d)} ± {fmt(self.half_width, unit, d)}"
        return f"{fmt(self.mean, unit, d)} {interval_text(self.low, self.high, unit, d)}"


def interval_text(low: Optional[float], high: Optional[float], unit: str,
                  digits: Optional[int] = None, sign: bool = False) -> str:
    """``[low, high]`` (``+``-signed with ``sign``), or the reason there is no interval."""
    if low is None or high is None:
        return f"({NO_INTERVAL})"
    show = signed if sign else fmt
    return f"[{show(low, unit, digits)}, {show(high, unit, digits)}]"


def check_interval(interval: str) -> str:
    if interval not in INTERVALS:
        raise BenchError(f"interval {interval!r} is not a confidence-interval method; valid: "
                         f"{', '.join(INTERVALS)}", "interval")
    return interval


def check_power(power: float) -> float:
    """A power target strictly between 0 and 1 (a BenchError otherwise)."""
    if not (isinstance(power, (int, float)) and 0 < power < 1):
        raise BenchError(f"power must be strictly between 0 and 1, got {power!r}", "power")
    return float(power)


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


def t_interval(values: np.ndarray) -> tuple[float, float]:
    """Student's t 95% interval of the mean of ``values`` (2 or more)."""
    from scipy import stats

    low, high = stats.t.interval(CONFIDENCE, len(values) - 1, loc=float(values.mean()),
                                 scale=float(stats.sem(values)))
    return float(low), float(high)


def estimate(values: Sequence[float], interval: str = DEFAULT_INTERVAL) -> Estimate:
    """The mean of the finite ``values`` and its 95% interval (see the module docstring)."""
    check_interval(interval)
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=float)
    if len(v) == 0:
        return Estimate(float("nan"), 0)
    mean = float(v.mean())
    if len(v) == 1:
        return Estimate(mean, 1)
    if np.all(v == v[0]):  # no spread: the interval is the value itself
        return Estimate(mean, len(v), mean, mean, symmetric=True)
    if interval == "t":
        return Estimate(mean, len(v), *t_interval(v), symmetric=True)
    return Estimate(mean, len(v), *_bootstrap((v,), np.mean))


@dataclass(frozen=True)
class Power:
    """What the paired test can detect: ``detectable``, the smallest |difference| found with
    ``power`` at the current ``n`` and level ``alpha``; ``seeds_needed``, the paired seeds at
    which the observed difference would be (None where undefined)."""

    n: int
    alpha: float
    power: float
    detectable: Optional[float]
    seeds_needed: Optional[int]

    def text(self, unit: str, digits: Optional[int] = None) -> str:
        """``detectable from 2.90 pp; about 14 seeds for the observed difference``."""
        if self.detectable is None:
            return "—"
        text = f"detectable from {fmt(self.detectable, unit, digits)} {unit}".rstrip()
        if self.seeds_needed is not None:
            text += f"; about {self.seeds_needed} seeds for the observed difference"
        return text


SEEDS_LIMIT = 100_000  # beyond this, "seeds needed" is not reported


def paired_power(effect: float, n: int, alpha: float) -> float:
    """Power of the two-sided one-sample (paired) t-test at level ``alpha`` for a standardised
    ``effect`` > 0 with ``n`` pairs: ``TTestPower().power`` of the one-sided test at alpha / 2,
    i.e. the two-sided power less its opposite tail (below alpha / 2 and negligible at the powers
    reported). statsmodels' two-sided form adds that tail through scipy's noncentral t CDF, which
    returns NaN for some arguments (e.g. effect 3.42, n = 4, alpha = 0.05 / 9), and its
    ``solve_power`` then stops at a wrong root."""
    from statsmodels.stats.power import TTestPower

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(TTestPower().power(effect_size=effect, nobs=n, alpha=alpha / 2,
                                        alternative="larger"))


def _seeds_needed(effect: float, alpha: float, target: float) -> Optional[int]:
    """The fewest paired seeds (2 or more) whose test reaches ``target`` power for ``effect``
    (power grows with the seed count: doubling, then bisection over the integers)."""
    if not (effect > 0 and math.isfinite(effect)):
        return None
    low, high = 1, 2  # one seed has no test
    while not paired_power(effect, high, alpha) >= target:
        low, high = high, 2 * high
        if high > SEEDS_LIMIT:
            return None
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if paired_power(effect, middle, alpha) >= target else (middle, high)
    return high


def _detectable_effect(n: int, alpha: float, target: float) -> Optional[float]:
    """The standardised effect the test detects with ``target`` power (``scipy.optimize.brentq``
    on ``test_power``, bracketed by doubling)."""
    from scipy.optimize import brentq

    high = 1.0
    while not paired_power(high, n, alpha) >= target:
        high *= 2
        if high > 1e6:
            return None
    return float(brentq(lambda e: paired_power(e, n, alpha) - target, 0.0, high, xtol=1e-10))


def power(diffs: Sequence[float], alpha: float, target: float = POWER) -> Power:
    """The paired test's power on the differences ``diffs`` at level ``alpha`` (effect sizes in
    units of the differences' sample std): the minimum detectable difference at their count and
    the seeds that would detect their mean."""
    check_power(target)
    d = np.asarray(diffs, dtype=float)
    n = len(d)
    sd = float(d.std(ddof=1)) if n >= 2 else 0.0
    if n < 2 or sd == 0:
        return Power(n, alpha, target, None, None)
    effect = _detectable_effect(n, alpha, target)
    return Power(n, alpha, target, None if effect is None else effect * sd,
                 _seeds_needed(abs(float(d.mean())) / sd, alpha, target))


@dataclass(frozen=True)
class Comparison:
    """A method against the baseline, paired by seed."""

    difference: Estimate  # of method - baseline, over the paired seeds
    p: Optional[float]  # two-sided paired t-test; None when there is no test
    p_holm: Optional[float]  # Holm-corrected over the methods compared
    verdict: str  # BETTER, WORSE, SAME, or why there is no verdict
    power: Optional[Power] = None  # at the Holm family's strictest level, alpha / methods

    @property
    def n(self) -> int:
        return self.difference.n


def _paired_p(diffs: np.ndarray) -> Optional[float]:
    """Two-sided paired t-test of mean difference 0 (None below ``MIN_VERDICT_SEEDS`` pairs or
    with no spread)."""
    if len(diffs) < MIN_VERDICT_SEEDS or np.all(diffs == diffs[0]):
        return None
    from scipy import stats

    return float(stats.ttest_1samp(diffs, 0.0).pvalue)


def _no_verdict(diffs: np.ndarray, baseline: str) -> str:
    if len(diffs) == 0:
        return f"no paired {baseline} seed"
    if len(diffs) < MIN_VERDICT_SEEDS:
        return (f"{len(diffs)} seed{'s' if len(diffs) != 1 else ''}: too few for a verdict"
                if len(diffs) > 1 else "n=1: no test")
    return "no spread: no test"


def compare(values: Mapping[str, Mapping[int, float]], baseline: str,
            direction: Optional[str] = HIGHER, interval: str = DEFAULT_INTERVAL,
            alpha: float = ALPHA, target_power: float = POWER) -> dict[str, Comparison]:
    """Every method of ``values`` (method -> seed -> value) but ``baseline`` against it, paired
    by seed; p-values Holm-corrected over the methods that have a test; power at the strictest
    Holm level, ``alpha`` / the number of methods compared, so that the detectable difference
    is never understated."""
    from statsmodels.stats.multitest import multipletests

    check_power(target_power)
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
    level = alpha / max(1, len(diffs))
    result = {}
    for method, d in diffs.items():
        diff = estimate(d, interval)
        p, p_holm = raw[method], adjusted.get(method)
        if p_holm is None:
            verdict = _no_verdict(d, baseline)
        elif p_holm < alpha and direction in (HIGHER, LOWER):
            verdict = BETTER if (diff.mean > 0) == (direction == HIGHER) else WORSE
        else:
            verdict = SAME
        result[method] = Comparison(diff, p, None if p_holm is None else float(p_holm), verdict,
                                    power(d, level, target_power) if len(d) >= 2 else None)
    return result


@dataclass(frozen=True)
class Aggregate:
    """An aggregate over tasks with its stratified-bootstrap interval (None with fewer than 2
    runs in a task)."""

    name: str
    value: float
    low: Optional[float]
    high: Optional[float]
    tasks: int
    runs: int  # per task (the fewest)


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


def _stratified(name: str, samples: tuple, statistic) -> Aggregate:
    """The statistic of ``samples`` with its stratified-bootstrap interval, none with < 2 runs."""
    point = float(statistic(*samples))
    runs = min(len(a) for a in samples)
    tasks = len(samples) if name != "probability_of_improvement" else len(samples) // 2
    if runs < 2:
        return Aggregate(name, point, None, None, tasks, runs)
    return Aggregate(name, point, *_bootstrap(samples, statistic, "percentile"), tasks, runs)


def aggregate(scores: Sequence[Sequence[float]], name: str = "iqm") -> Aggregate:
    """``name`` (iqm, mean, median) of the scores of all runs of all tasks (``scores[task]`` =
    the task's per-seed values), with a stratified-bootstrap 95% interval."""
    check_aggregate(name)
    return _stratified(name, tuple(np.asarray(t, dtype=float) for t in scores), _pooled(name))


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

    def statistic(*arrays: np.ndarray, axis: int = -1) -> np.ndarray:
        per_task = []
        for x, y in zip(arrays[0::2], arrays[1::2]):
            u = stats.mannwhitneyu(x, y, axis=axis, method="asymptotic").statistic
            per_task.append(u / (x.shape[axis] * y.shape[axis]))
        return np.mean(per_task, axis=0)

    return _stratified("probability_of_improvement", tuple(a for pair in pairs for a in pair),
                       statistic)


def fmt(value: Optional[float], unit: str, digits: Optional[int] = None) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    d = decimals(value, unit) if digits is None else digits
    return f"{value:,.{d}f}"


def signed(value: float, unit: str, digits: Optional[int] = None) -> str:
    text = fmt(value, unit, digits)
    return text if text.startswith("-") or text == "n/a" else f"+{text}"


def p_text(p: Optional[float]) -> str:
    return "—" if p is None else f"{p:.3g}"
