"""The report's tables for one (dataset, backbone, recipe) group: accuracy with deltas to GAP-FC and
Welch tests, WSOL, compute and memory, time, any other stored metric, and failures. Every method of
the group has a row in every table, in the group's method order; headers carry units; notes say
how each number was obtained (the metric's stored ``extra`` settings)."""
from __future__ import annotations

import json
from typing import Any

import pandas as pd

from bench.metrics import METRICS, MetricInfo, decimals
from bench.report.collect import BASELINE, Group
from bench.report.document import Table
from bench.report.stats import ALPHA, mean_std, p_cell, signed

MISSING = "—"
ACCURACY_METRICS = ("top1", "top5")  # with deltas and tests; the other accuracy metrics follow


def seed_values(records: pd.DataFrame, method: str, metric: str, setting: str = "") -> list[float]:
    """The per-run values of one metric for one method (one value per seed)."""
    rows = records[(records["method"] == method) & (records["metric"] == metric)
                   & (records["setting"] == setting)]
    return [float(v) for v in rows["value"] if v is not None and not pd.isna(v)]


def _settings(records: pd.DataFrame, metric: str) -> list[str]:
    rows = records[records["metric"] == metric]
    return list(dict.fromkeys(rows["setting"]))


def _unit(records: pd.DataFrame, metric: str) -> str:
    rows = records[records["metric"] == metric]
    return str(rows["unit"].iloc[0]) if len(rows) else ""


def column_digits(records: pd.DataFrame, metric: str, setting: str = "") -> int:
    """One number of decimals per column: the catalogue's, else from its largest magnitude (so
    that digits align)."""
    info = METRICS.get(metric)
    if info is not None and info.digits is not None:
        return info.digits
    rows = records[(records["metric"] == metric) & (records["setting"] == setting)]
    means = rows.groupby("method")["value"].mean().abs().dropna()
    return decimals(float(means.max()) if len(means) else 0.0, _unit(records, metric))


def cell(records: pd.DataFrame, method: str, metric: str, setting: str = "") -> str:
    """The ``mean ± std`` cell of one method and metric, or a dash when it was not measured."""
    values = seed_values(records, method, metric, setting)
    if not values:
        return MISSING
    return mean_std(values, _unit(records, metric), column_digits(records, metric, setting))


def _expand(records: pd.DataFrame, columns: list[MetricInfo]) -> list[tuple[MetricInfo, str]]:
    """The (metric, setting) pairs with data, a column once per distinct setting."""
    return [(c, s) for c in columns for s in _settings(records, c.name)]


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str)


def describe_extras(extras: list[tuple[str, dict[str, Any]]], skip: set[str]) -> str:
    """``k=v, ...`` for settings shared by every (method, extra); a setting that differs names
    its methods when it takes a few values (``tool=a (m1); b (m2)``), else says how many."""
    parts = []
    for key in sorted({k for _, e in extras for k in e} - skip):
        by_value: dict[str, list[str]] = {}
        for method, extra in extras:
            methods = by_value.setdefault(_text(extra.get(key, "(none)")), [])
            if method not in methods:
                methods.append(method)
        if len(by_value) == 1:
            parts.append(f"{key}={next(iter(by_value))}")
        elif len(by_value) <= 3:
            parts.append(f"{key}=" + "; ".join(f"{v} ({', '.join(m)})" for v, m in by_value.items()))
        else:
            parts.append(f"{key} varies ({len(by_value)} values)")
    return ", ".join(parts)


def settings_notes(records: pd.DataFrame, methods: list[str],
                   columns: list[tuple[MetricInfo, str]]) -> list[str]:
    """How each column's numbers were obtained (the metrics' stored ``extra``); columns with the
    same settings are merged into one note."""
    by_text: dict[str, list[str]] = {}
    order = {m: i for i, m in enumerate(methods)}
    for column, setting in columns:
        rows = records[(records["metric"] == column.name) & (records["setting"] == setting)]
        extras = sorted(zip(rows["method"], rows["extra"]), key=lambda me: order.get(me[0], len(order)))
        skip = {part.split("=", 1)[0] for part in setting.split(", ") if part}
        text = describe_extras(extras, skip)
        if text:
            name = column.name + (f" [{setting}]" if setting else "")
            by_text.setdefault(text, []).append(name)
    return [f"{', '.join(names)}: {text}" for text, names in by_text.items()]


def metric_table(group: Group, title: str, columns: list[MetricInfo],
                 notes: list[str]) -> Table | None:
    """A method x metric table of mean ± std over seeds; None when no column has data."""
    expanded = _expand(group.records, columns)
    if not expanded:
        return None
    headers = ["method"] + [c.header(s) for c, s in expanded]
    rows = []
    for method in group.methods:
        rows.append([method] + [cell(group.records, method, c.name, s) for c, s in expanded])
    notes = notes + settings_notes(group.records, group.methods, expanded)
    return Table(title, headers, rows, list(group.methods), notes)


def accuracy_table(group: Group) -> Table | None:
    """Top-1/top-5 (mean ± std over seeds), the difference to GAP-FC and its Welch test, then the
    other accuracy metrics."""
    records = group.records
    present = [METRICS.get(m) for m in ACCURACY_METRICS if _settings(records, m)]
    extra = _expand(records, [m for m in METRICS.in_table("accuracy") if m.name not in ACCURACY_METRICS])
    if not present and not extra:
        return None
    headers = ["method", "seeds"]
    for info in present:
        headers += [info.header(), f"Δ {info.label} vs {BASELINE} (pp)", f"p (Welch, {info.label})"]
    headers += [c.header(s) for c, s in extra]
    rows = []
    for method in group.methods:
        seeds = len(seed_values(records, method, present[0].name)) if present else 0
        row = [method, str(seeds) if seeds else MISSING]
        for info in present:
            values = seed_values(records, method, info.name)
            base = seed_values(records, BASELINE, info.name)
            text = cell(records, method, info.name)
            if not values:
                row += [MISSING, MISSING, MISSING]
            elif method == BASELINE:
                row += [text, "reference", "reference"]
            elif not base:
                row += [text, f"no {BASELINE} run", MISSING]
            else:
                delta = sum(values) / len(values) - sum(base) / len(base)
                row += [text, signed(delta, "pp"), p_cell(values, base)]
        rows.append(row + [cell(records, method, c.name, s) for c, s in extra])
    notes = [f"mean ± sample std over seeds; Δ = difference of means to {BASELINE} in percentage "
             f"points; p = two-sided Welch t-test over seeds, * p < {ALPHA} (no correction for "
             f"multiple comparisons)."]
    columns = [(info, "") for info in present] + extra
    return Table("Accuracy", headers, rows, list(group.methods),
                 notes + settings_notes(records, group.methods, columns))


def wsol_table(group: Group) -> Table | None:
    return metric_table(group, "Weakly-supervised object localization", METRICS.in_table("wsol"),
                        ["mean ± sample std over seeds. GT-known/Top-1/Top-5 Loc: classic protocol "
                         "(IoU ≥ 0.5); MaxBoxAccV2 = mean of MaxBoxAcc at δ = 30/50/70%; PxAP: pixel "
                         "average precision (WSOL.md)."])


def compute_table(group: Group) -> Table | None:
    return metric_table(group, "Size, compute and memory", METRICS.in_table("compute"),
                        [f"GMAC = 10^9 multiply-adds; added params relative to {BASELINE} on the "
                         "same backbone; cost is measured once per method (first seed)."])


def time_table(group: Group) -> Table | None:
    return metric_table(group, "Time", METRICS.in_table("time"),
                        ["Timings on a shared machine are noisy: compare methods by ratios measured "
                         "in one run, not absolute times across runs (COST.md)."])


def other_table(group: Group) -> Table | None:
    """Every stored metric that no other table shows, so that nothing is silently dropped."""
    records = group.records
    shown = {"accuracy", "wsol", "compute", "time", "maps"}  # maps: bench/report/maps.py
    pairs = list(dict.fromkeys(zip(records["task"], records["metric"], records["unit"])))
    columns = [METRICS.get(m) or MetricInfo(m, t, u, f"{t}: {m}") for t, m, u in pairs
               if (METRICS.get(m) is None or METRICS.get(m).table not in shown)]
    return metric_table(group, "Other metrics", columns, ["mean ± sample std over seeds."])


def failures_table(group: Group) -> Table | None:
    """Runs and tasks that did not complete, with the recorded reason."""
    seeds = dict(zip(group.runs["id"], zip(group.runs["method"], group.runs["seed"])))
    rows, methods = [], []
    for run in group.runs.itertuples():
        if run.status != "complete":
            rows.append([run.method, str(run.seed), "(run)", run.status, run.reason or ""])
            methods.append(run.method)
    for task in group.task_runs:
        if task["status"] != "complete" and task["run_id"] in seeds:
            method, seed = seeds[task["run_id"]]
            rows.append([method, str(seed), task["task"], task["status"], task["reason"] or ""])
            methods.append(method)
    if not rows:
        return None
    order = {m: i for i, m in enumerate(group.methods)}
    ranked = sorted(zip(rows, methods), key=lambda rm: (order.get(rm[1], len(order)), int(rm[0][1])))
    rows, methods = [r for r, _ in ranked], [m for _, m in ranked]
    return Table("Failed or incomplete", ["method", "seed", "task", "status", "reason"], rows, methods)


def group_tables(group: Group) -> list[Table]:
    tables = [accuracy_table(group), wsol_table(group), compute_table(group), time_table(group),
              other_table(group), failures_table(group)]
    return [t for t in tables if t is not None]
