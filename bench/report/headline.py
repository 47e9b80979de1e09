"""The report's first section: the metric catalogue's headline metrics (accuracy, localization and
cost, ``METRICS.headline()``) of every method, one table per (dataset, backbone, recipe) group, as
the README's summary shows them."""
from __future__ import annotations

import dataclasses
from typing import Optional

from bench.metrics import METRICS
from bench.report.collect import Group
from bench.report.document import Section
from bench.report.tables import metric_table

NOTE = ("mean ± half-width of its 95% confidence interval over seeds (cost: measured once per "
        "method); each group's section below has every metric with its settings, the paired "
        "differences to gap-fc and their verdicts")


def headline_section(groups: list[Group]) -> Optional[Section]:
    """One headline table per group, titled by the group; None when no group has a headline
    metric stored."""
    tables = []
    for group in groups:
        table = metric_table(group, group.label, METRICS.headline(), [])
        if table is not None:
            tables.append(dataclasses.replace(table, notes=[NOTE]))
    return Section("Headline results", "headline", list(tables)) if tables else None
