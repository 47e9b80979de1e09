"""Stored results as tables: long records, and the per-method summary printed after a run."""
from __future__ import annotations

import json
from typing import Any, Iterable

import pandas as pd
from tabulate import tabulate

from bench.report.stats import mean_std

RECORD_FIELDS = ["method", "dataset", "backbone", "seed", "task", "metric", "value", "unit"]

# The columns of the summary table, in order: (task, metric) and the header shown.
SUMMARY_COLUMNS = [
    ("accuracy", "top1", "top-1"), ("accuracy", "top5", "top-5"),
    ("wsol", "maxboxacc_v2", "MaxBoxAccV2"), ("wsol", "gt_known_loc", "GT-known Loc"),
    ("wsol", "top1_loc", "Top-1 Loc"), ("wsol", "pxap", "PxAP"),
    ("cost", "params", "params"), ("cost", "gmacs", "GMACs"), ("cost", "gmacs_all", "GMACs (all ops)"),
    ("cost", "latency_ms", "latency"), ("cost", "train_step_ratio", "train step"),
    ("accuracy", "train_time", "train time"),
]


def records_frame(records: Iterable[dict[str, Any]]) -> pd.DataFrame:
    frame = pd.DataFrame(list(records))
    if frame.empty:
        return pd.DataFrame(columns=RECORD_FIELDS)
    return frame


def to_json(records: list[dict[str, Any]]) -> str:
    keep = RECORD_FIELDS + ["preset", "run_id", "run_status", "extra"]
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
        for task, metric, header in SUMMARY_COLUMNS:
            values = group[(group["task"] == task) & (group["metric"] == metric)]
            if len(values):
                unit = values["unit"].iloc[0]
                label = header if unit in header else f"{header} ({unit})"
                row[label] = mean_std(values["value"].tolist(), unit)
        rows.append(row)
    return tabulate(pd.DataFrame(rows).fillna(""), headers="keys", tablefmt="github", showindex=False,
                    disable_numparse=True)
