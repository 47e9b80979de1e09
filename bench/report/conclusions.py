"""From stored numbers to conclusions, for one configuration group: each method's mean with its
confidence interval, and each method against the baseline, paired by seed, with a Holm-corrected
verdict and the test's power (bench/report/stats.py). Tables, figures, the report's verdict table
and forest plot, ``bench results`` and the summary after a run all read these, so they never
disagree."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import pandas as pd

from bench.metrics import HIGHER, LOWER, METRICS, MetricInfo
from bench.report.collect import BASELINE, Group
from bench.report.stats import (BETTER, DEFAULT_INTERVAL, POWER, SAME, WORSE, Comparison, Estimate,
                                compare, estimate, interval_text, signed)

# The headline comparisons: the metrics of the report's verdict table and forest plot, in this
# order (those a group has; a metric is one entry).
HEADLINE_COMPARISONS = ("top1", "maxboxacc_v2", "pxap", "learning_auc")


def seed_values(records: pd.DataFrame, method: str, metric: str,
                setting: str = "") -> dict[int, float]:
    """seed -> value of one metric for one method (the rows of one setting)."""
    rows = records[(records["method"] == method) & (records["metric"] == metric)
                   & (records["setting"] == setting)]
    return {int(seed): float(v) for seed, v in zip(rows["seed"], rows["value"])
            if v is not None and not pd.isna(v)}


def catalogued(metric: str, unit: str) -> MetricInfo:
    """The catalogue's entry, or a plain description of an uncatalogued metric."""
    return METRICS.get(metric) or MetricInfo(metric, "", unit, metric)


@dataclass
class MetricResult:
    """One metric (in one setting) across the methods of a group."""

    info: MetricInfo
    setting: str
    estimates: dict[str, Estimate]
    comparisons: dict[str, Comparison]  # vs the baseline; empty without a direction or baseline

    @property
    def delta_unit(self) -> str:
        """The unit of a difference: percentage points for a percentage."""
        return "pp" if self.info.unit == "%" else self.info.unit


def analyse(records: pd.DataFrame, methods: list[str], metric: str, setting: str = "",
            interval: str = DEFAULT_INTERVAL, power: float = POWER) -> MetricResult:
    """Means with intervals for every method; comparisons with the baseline (Holm over the
    methods) when the metric has a better direction and the group has the baseline."""
    rows = records[records["metric"] == metric]
    info = catalogued(metric, str(rows["unit"].iloc[0]) if len(rows) else "")
    by_method = {m: seed_values(records, m, metric, setting) for m in methods}
    by_method = {m: v for m, v in by_method.items() if v}
    estimates = {m: estimate(list(v.values()), interval) for m, v in by_method.items()}
    comparisons = {}
    if info.direction in (HIGHER, LOWER) and BASELINE in by_method:
        comparisons = compare(by_method, BASELINE, info.direction, interval, target_power=power)
    return MetricResult(info, setting, estimates, comparisons)


def headline_results(group: Group, interval: str = DEFAULT_INTERVAL,
                     power: float = POWER) -> list[MetricResult]:
    """The headline comparisons (``HEADLINE_COMPARISONS``) the group has, each against the
    baseline."""
    present = set(group.records["metric"])
    results = [analyse(group.records, group.methods, name, "", interval, power)
               for name in HEADLINE_COMPARISONS if name in present]
    return [r for r in results if r.comparisons]


def verdict_counts(result: MetricResult) -> dict[str, int]:
    """How many methods are better / worse / not detectably different from the baseline."""
    verdicts = [c.verdict for c in result.comparisons.values()]
    return {v: verdicts.count(v) for v in (BETTER, WORSE, SAME)}


def difference_text(comparison: Optional[Comparison], unit: str, digits: int) -> str:
    """``+1.23 [+0.45, +2.01]`` (the paired difference and its interval), or why there is none."""
    if comparison is None:
        return "—"
    d = comparison.difference
    if d.n == 0:
        return comparison.verdict
    return f"{signed(d.mean, unit, digits)} {interval_text(d.low, d.high, unit, digits, sign=True)}"


def verdict_text(comparison: Optional[Comparison]) -> str:
    """``better (n=3)``, or why there is no verdict (``2 seeds: too few for a verdict``)."""
    if comparison is None:
        return "—"
    return (f"{comparison.verdict} (n={comparison.n})" if comparison.verdict in (BETTER, WORSE, SAME)
            else comparison.verdict)


def power_text(comparison: Optional[Comparison], unit: str, digits: int) -> str:
    """``detectable from 2.90 pp; about 14 seeds for the observed difference``, or ``—``."""
    if comparison is None or comparison.power is None:
        return "—"
    return comparison.power.text(unit, digits)
