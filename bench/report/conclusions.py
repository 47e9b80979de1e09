"""From stored numbers to conclusions, for one configuration group: each method's mean with its
confidence interval, and each method against the baseline, paired by seed, with a Holm-corrected
verdict (bench/report/stats.py). Tables, figures, the report's summary, ``bench results`` and the
summary after a run all read these, so they never disagree."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import pandas as pd

from bench.metrics import HIGHER, LOWER, METRICS, MetricInfo
from bench.report.collect import BASELINE, Group
from bench.report.stats import (BETTER, SAME, WORSE, Comparison, Estimate, compare, estimate,
                                signed)

# The metrics whose verdicts the report's summary states, in this order.
VERDICT_METRICS = ("top1", "maxboxacc_v2", "gt_known_loc", "pxap")


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

    def sentence(self, method: str) -> Optional[str]:
        """``se: +1.23 pp [0.45, 2.01], better (3 seeds)`` for a compared method."""
        c = self.comparisons.get(method)
        if c is None or c.difference.n == 0:
            return None
        unit = "pp" if self.info.unit == "%" else self.info.unit
        d = c.difference
        interval = (f" [{signed(d.low, unit)}, {signed(d.high, unit)}]" if d.low is not None
                    else "")
        return (f"{method}: {signed(d.mean, unit)} {unit}{interval}, {c.verdict} "
                f"({d.n} seed{'s' if d.n != 1 else ''})")


def analyse(records: pd.DataFrame, methods: list[str], metric: str, setting: str = "",
            interval: str = "bootstrap") -> MetricResult:
    """Means with intervals for every method; comparisons with the baseline (Holm over the
    methods) when the metric has a better direction and the group has the baseline."""
    rows = records[records["metric"] == metric]
    info = catalogued(metric, str(rows["unit"].iloc[0]) if len(rows) else "")
    by_method = {m: seed_values(records, m, metric, setting) for m in methods}
    by_method = {m: v for m, v in by_method.items() if v}
    estimates = {m: estimate(list(v.values()), interval) for m, v in by_method.items()}
    comparisons = {}
    if info.direction in (HIGHER, LOWER) and BASELINE in by_method:
        comparisons = compare(by_method, BASELINE, info.direction, interval)
    return MetricResult(info, setting, estimates, comparisons)


def verdict_summary(group: Group, interval: str = "bootstrap") -> list[str]:
    """One line per verdict metric present: each method against the baseline."""
    lines = []
    for metric in VERDICT_METRICS:
        if metric not in set(group.records["metric"]):
            continue
        result = analyse(group.records, group.methods, metric, "", interval)
        sentences = [s for m in group.methods if (s := result.sentence(m))]
        if sentences:
            lines.append(f"{result.info.label}: " + "; ".join(sentences) + ".")
    return lines


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
    if d.low is None:
        return f"{signed(d.mean, unit, digits)} (n=1)"
    return (f"{signed(d.mean, unit, digits)} [{signed(d.low, unit, digits)}, "
            f"{signed(d.high, unit, digits)}]")
