"""Statistics over seeds on hand-made inputs with known answers: intervals (t by hand, bootstrap
reproducible and consistent), paired comparisons (a difference known to be significant, one known
not to be), Holm's correction on a hand-computed example, one-seed behaviour, the aggregates
(IQM, probability of improvement) by hand, and bad statistic names."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hand_stats import holm, paired_p

from bench.errors import BenchError
from bench.metrics import HIGHER, LOWER
from bench.report.stats import (BETTER, SAME, WORSE, aggregate, compare, estimate, probability_of_improvement)

T_975 = {1: 12.7062047, 2: 4.30265273, 4: 2.77644511}  # Student's t quantiles (tables)


def test_one_value_has_no_interval():
    e = estimate([71.5])
    assert (e.mean, e.n, e.low, e.high) == (71.5, 1, None, None)
    assert e.text("%") == "71.50 (n=1, no interval)"
    assert estimate([]).n == 0 and estimate([float("nan"), 3.0]).n == 1


def test_t_interval_matches_hand_computation():
    e = estimate([1.0, 2.0, 3.0], "t")
    half = T_975[2] * 1.0 / math.sqrt(3)  # sample sd 1
    assert e.low == pytest.approx(2 - half, rel=1e-6) and e.high == pytest.approx(2 + half, rel=1e-6)
    assert e.text("%") == f"2.00 ± {half:.2f}"


def test_bootstrap_interval_is_seeded_and_sensible():
    values = [84.9, 86.3, 85.1, 85.8, 86.0]
    first, second = estimate(values), estimate(values)
    assert (first.low, first.high) == (second.low, second.high)  # same store, same interval
    assert min(values) <= first.low < np.mean(values) < first.high <= max(values)
    rng = np.random.default_rng(3)
    large = rng.normal(10.0, 2.0, 60)
    boot, t = estimate(large), estimate(large, "t")
    assert boot.half_width == pytest.approx(t.half_width, rel=0.2)  # both ~ 1.96 sd / sqrt(n)
    assert estimate([5.0, 5.0, 5.0]).half_width == 0.0  # no spread: the value itself


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
    assert result["y"].n == 0 and result["y"].verdict == "no paired gap-fc seed"


def test_interquartile_mean_and_probability_of_improvement_by_hand():
    iqm = aggregate([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]], "iqm")
    assert iqm.value == pytest.approx(4.5)  # pooled 1..8, middle half 3..6
    assert iqm.low <= 4.5 <= iqm.high and (iqm.tasks, iqm.runs) == (2, 4)
    assert aggregate([[1.0, 9.0], [2.0, 4.0]], "median").value == pytest.approx(3.0)
    # task 1: every method run beats every baseline run (1); task 2: identical runs (1/2).
    poi = probability_of_improvement([[3.0, 4.0], [1.0, 2.0]], [[1.0, 2.0], [1.0, 2.0]], HIGHER)
    assert poi.value == pytest.approx(0.75)
    assert probability_of_improvement([[3.0, 4.0]], [[1.0, 2.0]], LOWER).value == pytest.approx(0.0)


@pytest.mark.parametrize("call, param", [(lambda: estimate([1.0, 2.0], "jackknife"), "interval"),
                                         (lambda: aggregate([[1.0]], "trimmed"), "aggregate")])
def test_unknown_statistic_names_are_user_errors(call, param):
    with pytest.raises(BenchError, match="valid: ") as error:
        call()
    assert error.value.param == param
