"""Statistics over seeds on hand-made inputs with known answers: intervals (t by hand, the default;
bootstrap reproducible, consistent and shown asymmetric), paired comparisons (a difference known to
be significant, one known not to be), Holm's correction on a hand-computed example, one- and
two-seed behaviour, power against the noncentral t solved here, the aggregates (IQM, probability
of improvement) by hand, and bad statistic names."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hand_stats import holm, paired_p

from bench.errors import BenchError
from bench.metrics import HIGHER, LOWER
from bench.report.stats import (BETTER, SAME, WORSE, Estimate, aggregate, check_power, compare,
                                estimate, interval_text, power, probability_of_improvement)

T_975 = {1: 12.7062047, 2: 4.30265273, 4: 2.77644511}  # Student's t quantiles (tables)


def test_one_value_has_no_interval():
    e = estimate([71.5])
    assert (e.mean, e.n, e.low, e.high) == (71.5, 1, None, None)
    assert e.text("%") == "71.50 (n=1, no interval)"
    assert estimate([]).n == 0 and estimate([float("nan"), 3.0]).n == 1


def test_t_interval_matches_hand_computation():
    e = estimate([1.0, 2.0, 3.0])  # Student's t is the default
    half = T_975[2] * 1.0 / math.sqrt(3)  # sample sd 1
    assert e.low == pytest.approx(2 - half, rel=1e-6) and e.high == pytest.approx(2 + half, rel=1e-6)
    assert e.symmetric and e.text("%") == f"2.00 ± {half:.2f}"
    # the example: [80, 82, 81] -> 81 ± 4.303 * 1 / sqrt(3) = [78.52, 83.48]
    e = estimate([80.0, 82.0, 81.0])
    assert (round(e.low, 2), round(e.high, 2)) == (78.52, 83.48)


def test_asymmetric_intervals_are_shown_as_intervals():
    """A bootstrap interval is shown as [low, high], never as ± (which would imply another
    interval); Student's t, symmetric by construction, keeps ±."""
    hand = Estimate(65.33, 3, 60.33, 75.0)
    assert hand.text("%") == "65.33 [60.33, 75.00]"
    assert Estimate(65.33, 3, 58.0, 72.66, symmetric=True).text("%") == "65.33 ± 7.33"
    boot = estimate([60.0, 61.0, 75.0], "bootstrap")
    assert not boot.symmetric and "±" not in boot.text("%")
    assert boot.text("%") == f"65.33 [{boot.low:.2f}, {boot.high:.2f}]"
    assert boot.high - boot.mean > boot.mean - boot.low  # skewed towards the outlying 75
    assert interval_text(-1.5, 0.25, "pp", 2, sign=True) == "[-1.50, +0.25]"
    assert interval_text(None, None, "pp") == "(n=1, no interval)"


def test_bootstrap_interval_is_seeded_and_sensible():
    values = [84.9, 86.3, 85.1, 85.8, 86.0]
    first, second = estimate(values, "bootstrap"), estimate(values, "bootstrap")
    assert (first.low, first.high) == (second.low, second.high)  # same store, same interval
    assert min(values) <= first.low < np.mean(values) < first.high <= max(values)
    rng = np.random.default_rng(3)
    large = rng.normal(10.0, 2.0, 60)
    boot, t = estimate(large, "bootstrap"), estimate(large, "t")
    assert boot.half_width == pytest.approx(t.half_width, rel=0.2)  # both ~ 1.96 sd / sqrt(n)
    assert estimate([5.0, 5.0, 5.0], "bootstrap").half_width == 0.0  # no spread: the value itself


def test_a_consistent_improvement_is_significant_and_noise_is_not():
    base = {0: 70.0, 1: 72.5, 2: 71.0, 3: 73.0, 4: 69.5}
    better = {s: v + 3.0 + d for (s, v), d in zip(base.items(), (0.1, -0.2, 0.15, 0.0, -0.05))}
    noise = {s: v + d for (s, v), d in zip(base.items(), (1.0, -1.2, 0.4, -0.6, 0.3))}
    result = compare({"gap-fc": base, "good": better, "noise": noise}, "gap-fc")
    good, other = result["good"], result["noise"]
    diffs_good = [better[s] - base[s] for s in base]
    diffs_noise = [noise[s] - base[s] for s in base]
    assert good.p == pytest.approx(paired_p(diffs_good), rel=1e-4)
    assert other.p == pytest.approx(paired_p(diffs_noise), rel=1e-4)
    assert good.p_holm == pytest.approx(holm([good.p, other.p])[0])
    assert good.verdict == BETTER and other.verdict == SAME
    assert good.n == other.n == 5
    assert good.difference.mean == pytest.approx(np.mean(diffs_good))
    assert good.difference.low > 0  # the interval excludes zero
    # the interval is the t-test's own: it excludes 0 exactly when the raw p is below 5%
    for c in (good, other):
        assert (c.difference.low > 0 or c.difference.high < 0) == (c.p < 0.05)
    lower = compare({"gap-fc": base, "good": better}, "gap-fc", direction=LOWER)["good"]
    assert lower.verdict == WORSE  # a higher value of a lower-is-better metric
    assert compare({"gap-fc": base, "good": better}, "gap-fc", direction=None)["good"].verdict == SAME


def test_holm_correction_on_a_hand_computed_example():
    """Raw p-values 0.01, 0.04, 0.03 -> Holm 0.03, 0.06, 0.06."""
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    rng = np.random.default_rng(0)
    base = {s: 70.0 + rng.normal() for s in range(4)}
    methods = {"gap-fc": base}
    for name, shift in (("a", 2.0), ("b", 0.5), ("c", 1.0)):
        methods[name] = {s: v + shift + rng.normal(0, 0.7) for s, v in base.items()}
    result = compare(methods, "gap-fc")
    raw = [result[m].p for m in ("a", "b", "c")]
    assert [result[m].p_holm for m in ("a", "b", "c")] == pytest.approx(holm(raw))


def test_one_paired_seed_gives_no_test():
    result = compare({"gap-fc": {0: 70.0, 1: 71.0}, "x": {0: 73.0}, "y": {5: 80.0}}, "gap-fc")
    assert result["x"].p is None and result["x"].verdict == "n=1: no test"
    assert result["x"].difference.text("pp") == "3.00 (n=1, no interval)"
    assert result["x"].power is None
    assert result["y"].n == 0 and result["y"].verdict == "no paired gap-fc seed"


def test_two_paired_seeds_give_a_difference_and_interval_but_no_verdict():
    """Differences 2.00 and 2.01: a paired t-test would give p = 0.0016 with 1 degree of
    freedom; two seeds are too few for a verdict, the interval is t(0.975, 1) wide."""
    base = {0: 70.0, 1: 71.0}
    result = compare({"gap-fc": base, "x": {0: 72.0, 1: 73.01}, "y": {0: 69.0, 1: 70.5},
                      "z": {0: 70.0, 1: 71.0, 2: 72.0}}, "gap-fc")
    x = result["x"]
    assert x.verdict == "2 seeds: too few for a verdict" and x.p is None and x.p_holm is None
    assert x.difference.mean == pytest.approx(2.005)
    half = T_975[1] * (0.01 / math.sqrt(2)) / math.sqrt(2)  # sd of [2.00, 2.01] = 0.01 / sqrt 2
    assert x.difference.low == pytest.approx(2.005 - half, rel=1e-5)
    assert x.difference.high == pytest.approx(2.005 + half, rel=1e-5)
    assert x.power is not None and x.power.n == 2  # what 2 seeds can detect is still shown
    assert result["z"].n == 2  # seed 2 has no gap-fc pair


def power_by_hand(effect: float, n: int, alpha: float) -> float:
    """Two-sided one-sample t-test power from the noncentral t (scipy.stats.nct)."""
    from scipy import stats

    crit = stats.t.ppf(1 - alpha / 2, n - 1)
    nc = effect * math.sqrt(n)
    lower = float(stats.nct.cdf(-crit, n - 1, nc))  # ~0 for a positive effect; NaN far out
    return float(stats.nct.sf(crit, n - 1, nc)) + (lower if math.isfinite(lower) else 0.0)


def test_power_against_the_noncentral_t():
    """MDD = the effect with 80% power (solved here with brentq) x the differences' sd; seeds
    needed = the smallest n whose power reaches 80% for the observed effect."""
    from scipy.optimize import brentq

    diffs = [1.0, -0.5, 0.8, 0.2]  # mean 0.375, sd 0.6652
    sd = float(np.std(diffs, ddof=1))
    alpha = 0.05 / 9  # Holm's strictest step over 9 methods
    got = power(diffs, alpha)
    effect = brentq(lambda d: power_by_hand(d, 4, alpha) - 0.8, 0.01, 20)
    assert got.detectable == pytest.approx(effect * sd, rel=1e-4)
    observed = 0.375 / sd
    needed = next(n for n in range(2, 10_000) if power_by_hand(observed, n, alpha) >= 0.8)
    assert got.seeds_needed == needed
    assert power(diffs, alpha, 0.5).detectable < got.detectable  # less power, smaller MDD
    assert power([1.0, 1.0, 1.0], alpha).detectable is None  # no spread: undefined
    large = power([3.1, 2.8, 3.15, 3.0, 2.95], 0.05)  # effect ~ 23 sd: 2 seeds would do
    assert large.seeds_needed == next(n for n in range(2, 100)
                                      if power_by_hand(3.0 / np.std([3.1, 2.8, 3.15, 3.0, 2.95],
                                                                    ddof=1), n, 0.05) >= 0.8)


def test_comparisons_carry_power_at_holms_strictest_level():
    base = {s: 70.0 + s for s in range(4)}
    values = {"gap-fc": base, "a": {s: v + d for (s, v), d in zip(base.items(), (1.0, -0.5, 0.8, 0.2))},
              "b": {s: v + 0.3 for s, v in base.items()}}
    result = compare(values, "gap-fc")
    a = result["a"]
    assert a.power.alpha == pytest.approx(0.05 / 2)
    assert a.power.detectable == pytest.approx(power([1.0, -0.5, 0.8, 0.2], 0.05 / 2).detectable)
    assert a.power.text("pp", 2).startswith(f"detectable from {a.power.detectable:.2f} pp; about ")


@pytest.mark.parametrize("target", [0.0, 1.0, 1.5, -0.2])
def test_power_target_outside_0_1_is_refused(target):
    with pytest.raises(BenchError, match="strictly between 0 and 1") as error:
        check_power(target)
    assert error.value.param == "power"


def test_interquartile_mean_and_probability_of_improvement_by_hand():
    iqm = aggregate([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]], "iqm")
    assert iqm.value == pytest.approx(4.5)  # pooled 1..8, middle half 3..6
    assert iqm.low <= 4.5 <= iqm.high and (iqm.tasks, iqm.runs) == (2, 4)
    assert aggregate([[1.0, 9.0], [2.0, 4.0]], "median").value == pytest.approx(3.0)
    # task 1: every method run beats every baseline run (1); task 2: identical runs (1/2).
    poi = probability_of_improvement([[3.0, 4.0], [1.0, 2.0]], [[1.0, 2.0], [1.0, 2.0]], HIGHER)
    assert poi.value == pytest.approx(0.75)
    assert probability_of_improvement([[3.0, 4.0]], [[1.0, 2.0]], LOWER).value == pytest.approx(0.0)


def test_aggregates_of_one_run_per_group_have_no_interval():
    """A group with one run: the aggregate alone, never a zero-width interval."""
    iqm = aggregate([[1.0], [2.0, 3.0]], "mean")
    assert iqm.value == pytest.approx(2.0) and (iqm.low, iqm.high, iqm.runs) == (None, None, 1)
    poi = probability_of_improvement([[3.0], [1.0]], [[1.0], [2.0]], HIGHER)
    assert poi.value == pytest.approx(0.5) and (poi.low, poi.high) == (None, None)
    assert poi.tasks == 2


@pytest.mark.parametrize("call, param", [(lambda: estimate([1.0, 2.0], "jackknife"), "interval"),
                                         (lambda: aggregate([[1.0]], "trimmed"), "aggregate")])
def test_unknown_statistic_names_are_user_errors(call, param):
    with pytest.raises(BenchError, match="valid: ") as error:
        call()
    assert error.value.param == param
