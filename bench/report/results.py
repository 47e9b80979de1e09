"""Stored results as tables: long records, and the per-method summary printed after a run (its
columns are the metric catalogue's headline metrics)."""
from __future__ import annotations

import json
from typing import Any, Iterable

import pandas as pd
from tabulate import tabulate

from bench.metrics import METRICS
from bench.report.stats import mean_std

RECORD_FIELDS = ["method", "dataset", "backbone", "seed", "task", "metric", "value", "unit"]



def records_frame(records: Iterable[dict[str, Any]]) -> pd.DataFrame:
    frame = pd.DataFrame(list(records))
    if frame.empty:
        return pd.DataFrame(columns=RECORD_FIELDS)
    return frame


def to_json(records: list[dict[str, Any]]) -> str:
    keep = RECORD_FIELDS + ["method_options", "preset", "run_id", "run_status", "extra"]
    return json.dumps([{k: r[k] for k in keep if k in r} for r in records], indent=2, default=str)


def to_csv(records: list[dict[str, Any]]) -> str:
    frame = records_frame(records)
    return frame[[c for c in RECORD_FIELDS + ["preset", "run_id"] if c in frame]].to_csv(index=False)


def long_table(records: list[dict[str, Any]]) -> str:
    """Every metric, averaged over seeds: mean +- std, seeds, unit."""
    frame = records_frame(records)
    if frame.empty:
        return "no results stored yet"
    keys = ["dataset", "backbone", "method", "task", "metric", "unit"]
    grouped = frame.groupby(keys, sort=False)["value"].agg(list).reset_index()
    grouped["seeds"] = grouped["value"].map(len)
    grouped["value"] = [mean_std(v, u) for v, u in zip(grouped["value"], grouped["unit"])]
    return tabulate(grouped[keys[:5] + ["value", "unit", "seeds"]], headers="keys",
                    tablefmt="github", showindex=False,
                    disable_numparse=True)


def summary_table(records: list[dict[str, Any]], methods: list[str] | None = None) -> str:
    """One row per (dataset, backbone, method): the headline metrics, with units in the headers."""
    frame = records_frame(records)
    if frame.empty:
        return "no results stored yet"
    if methods is not None:
        frame = frame[frame["method"].isin(methods)]
    rows = []
    for (dataset, backbone, method), group in frame.groupby(["dataset", "backbone", "method"], sort=False):
        row = {"dataset": dataset, "backbone": backbone, "method": method}
        for info in METRICS.headline():
            values = group[group["metric"] == info.name]
            if len(values):
                row[info.header()] = mean_std(values["value"].tolist(), info.unit, info.digits)
        rows.append(row)
    return tabulate(pd.DataFrame(rows).fillna(""), headers="keys", tablefmt="github", showindex=False,
                    disable_numparse=True)
