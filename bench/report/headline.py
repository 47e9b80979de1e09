"""The report's first section: the metric catalogue's headline metrics (accuracy, localization and
cost, ``METRICS.headline()``) of every method, one table per (dataset, backbone, recipe) group, as
the README's summary shows them."""
from __future__ import annotations

import dataclasses
from typing import Optional

from bench.metrics import METRICS
from bench.report.collect import Group
from bench.report.document import Section
from bench.report.stats import DEFAULT_INTERVAL
from bench.report.tables import metric_table

NOTE = ("{how} over seeds (cost: measured once per method); each group's section below has every "
        "metric with its settings, the paired differences to gap-fc and their verdicts")
HOW = {"t": "mean ± half-width of its 95% confidence interval (Student's t)",
       "bootstrap": "mean [95% confidence interval] (bootstrap, BCa)"}


def headline_section(groups: list[Group], interval: str = DEFAULT_INTERVAL) -> Optional[Section]:
    """One headline table per group, titled by the group; None when no group has a headline
    metric stored."""
    tables = []
    for group in groups:
        table = metric_table(group, group.label, METRICS.headline(), [], interval=interval)
        if table is not None:
            tables.append(dataclasses.replace(table, notes=[NOTE.format(how=HOW[interval])]))
    return Section("Headline results", "headline", list(tables)) if tables else None
