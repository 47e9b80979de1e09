"""The report's tables for one configuration group (dataset, backbone, recipe): accuracy and
localization with 95% confidence intervals over seeds, each method's paired difference to GAP-FC
its Holm-corrected verdict and the smallest difference the test detects; compute and memory; time; any other stored metric; failures.
Every method of the group has a row in every table, in the group's method order; headers carry
units; notes say how each number was obtained (the metric's stored ``extra`` settings) and how the
statistics were computed."""
from __future__ import annotations

import json
from typing import Any

import pandas as pd

from bench.metrics import METRICS, MetricInfo, decimals
from bench.registry import TASKS
from bench.report.collect import BASELINE, Group
from bench.report.conclusions import (MetricResult, analyse, difference_text, headline_results,
                                      power_text, verdict_text)
from bench.report.document import Table
from bench.report.learning import not_reached
from bench.report.stats import (ALPHA, BOOTSTRAP_FROM, CONFIDENCE, DEFAULT_INTERVAL,
                                MIN_VERDICT_SEEDS, POWER, fmt, interval_text, p_text, signed)

MISSING = "—"
# Metrics whose tables add the paired difference to the baseline and the verdict (WSOL's in a
# table of their own, so that each fits the page; `bench results` compares every metric).
COMPARED = {"accuracy": ("top1", "top5"), "wsol": ("maxboxacc_v2", "gt_known_loc", "pxap"),
            "learning": ("learning_auc", "epochs_to_90")}


def statistics_note(interval: str) -> str:
    how = (f"mean [{CONFIDENCE:.0%} confidence interval] over seeds, scipy.stats.bootstrap (BCa, "
           f"seeded; it covers {CONFIDENCE:.0%} only from about {BOOTSTRAP_FROM} seeds)"
           if interval == "bootstrap" else
           f"mean ± half-width of its {CONFIDENCE:.0%} confidence interval over seeds, Student's t")
    return (f"{how}; Δ = mean difference to {BASELINE}, paired by seed, [{CONFIDENCE:.0%} "
            f"interval]; p = two-sided paired t-test, Holm-corrected over the methods compared; "
            f"verdict at the corrected {ALPHA:.0%} level, with the number of paired seeds (n), "
            f"from {MIN_VERDICT_SEEDS} paired seeds on; power: the smallest |Δ| the test detects "
            f"with the chosen power (--power, default {POWER:.0%}) at this seed count and level "
            f"{ALPHA:g} / methods compared, and the seeds that would detect the observed Δ. One "
            f"seed: the value, no interval.")


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


def _cells(result: MetricResult, methods: list[str], digits: int, compared: bool) -> list[list[str]]:
    """Per method: the value cell, and with ``compared`` the Δ, p and verdict cells."""
    unit = result.info.unit
    rows = []
    for method in methods:
        est = result.estimates.get(method)
        value = MISSING if est is None else est.text(unit, digits)
        if not compared:
            rows.append([value])
        elif method == BASELINE:
            rows.append([value, "reference", MISSING, "reference", MISSING])
        else:
            c = result.comparisons.get(method)
            rows.append([value, difference_text(c, result.delta_unit, digits),
                         MISSING if c is None else p_text(c.p_holm), verdict_text(c),
                         power_text(c, result.delta_unit, digits)])
    return rows


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


def measured_once(info: MetricInfo) -> bool:
    """Whether a metric comes from a task measured once per method (cost: no seed variance,
    shown as a plain value)."""
    return info.task in TASKS and not TASKS.get(info.task).obj.per_seed


def metric_table(group: Group, title: str, columns: list[MetricInfo], notes: list[str],
                 compared: tuple[str, ...] = (), interval: str = DEFAULT_INTERVAL,
                 power: float = POWER) -> Table | None:
    """A method x metric table (mean with its interval over seeds; for ``compared`` metrics also
    the paired difference to the baseline, the Holm-corrected p, the verdict and the power; metrics
    measured once per method as plain values); None when no column has data."""
    expanded = _expand(group.records, columns)
    if not expanded:
        return None
    headers, blocks = ["method"], []
    for info, setting in expanded:
        result = analyse(group.records, group.methods, info.name, setting, interval, power)
        digits = column_digits(group.records, info.name, setting)
        is_compared = info.name in compared and not setting and BASELINE in group.methods
        headers.append(info.header(setting))
        if is_compared:
            unit = "pp" if info.unit == "%" else info.unit
            headers += [f"Δ {info.label} ({unit}) [{CONFIDENCE:.0%} CI]", f"p (Holm, {info.label})",
                        f"verdict ({info.label})", f"power ({info.label})"]
        if measured_once(info):
            cells = [[MISSING if m not in result.estimates
                      else fmt(result.estimates[m].mean, info.unit, digits)] for m in group.methods]
        else:
            cells = _cells(result, group.methods, digits, is_compared)
        blocks.append(cells)
    rows = [[m] + [c for block in blocks for c in block[i]] for i, m in enumerate(group.methods)]
    notes = notes + settings_notes(group.records, group.methods, expanded)
    return Table(title, headers, rows, list(group.methods), notes)


def seeds_column(group: Group) -> list[str]:
    """How many seeds each method has (of its first accuracy metric)."""
    counts = group.records[group.records["metric"] == "top1"].groupby("method")["seed"].nunique()
    return [str(int(counts[m])) if m in counts else MISSING for m in group.methods]


def accuracy_table(group: Group, interval: str = DEFAULT_INTERVAL,
                   power: float = POWER) -> Table | None:
    """Top-1/top-5 with intervals, paired differences and verdicts, then the other accuracy
    metrics (test loss)."""
    table = metric_table(group, "Accuracy", METRICS.in_table("accuracy"),
                         [statistics_note(interval)], COMPARED["accuracy"], interval, power)
    if table is None:
        return None
    table.columns.insert(1, "seeds")
    for row, seeds in zip(table.rows, seeds_column(group)):
        row.insert(1, seeds)
    return table


def learning_table(group: Group, interval: str = DEFAULT_INTERVAL,
                   power: float = POWER) -> Table | None:
    """Learning speed (bench/report/learning.py) with intervals, paired differences and verdicts;
    a method with a seed that never reached the threshold reads "not reached" instead."""
    table = metric_table(group, "Learning speed", METRICS.in_table("learning"),
                         ["Learning AUC: area under the holdout top-1 curve over epochs 0 to E "
                          "(measured before training and after each epoch), divided by E "
                          "(0-100). Epochs to 90%: first epoch, interpolated linearly between "
                          "epochs, at which the holdout top-1 reaches 90% of the final holdout "
                          f"top-1 of {BASELINE}'s run with the same seed. "
                          + statistics_note(interval)], COMPARED["learning"], interval, power)
    if table is None:
        return None
    info = METRICS.get("epochs_to_90")
    if info.header() in table.columns:
        at = table.columns.index(info.header())
        for row, method in zip(table.rows, group.methods):
            text = not_reached(group.records, method)
            if text:
                row[at] = text
                if method != BASELINE:
                    row[at + 1], row[at + 2], row[at + 3], row[at + 4] = (MISSING, MISSING,
                                                                          text, MISSING)
    return table


def wsol_table(group: Group, interval: str = DEFAULT_INTERVAL) -> Table | None:
    return metric_table(group, "Weakly-supervised object localization", METRICS.in_table("wsol"),
                        ["GT-known/Top-1/Top-5 Loc: classic protocol (IoU ≥ 0.5, tau from the "
                         "holdout split); MaxBoxAccV2 = mean of MaxBoxAcc at δ = 30/50/70%; PxAP: "
                         "pixel average precision (WSOL.md). " + statistics_note(interval)],
                        interval=interval)


def wsol_comparison_table(group: Group, interval: str = DEFAULT_INTERVAL,
                          power: float = POWER) -> Table | None:
    """The main WSOL metrics against the baseline: paired difference, Holm p, verdict, power."""
    columns = [info for info in METRICS.in_table("wsol") if info.name in COMPARED["wsol"]]
    return metric_table(group, f"Localization against {BASELINE}", columns,
                        [statistics_note(interval)], COMPARED["wsol"], interval, power)


def compute_table(group: Group) -> Table | None:
    return metric_table(group, "Size, compute and memory", METRICS.in_table("compute"),
                        [f"GMAC = 10^9 multiply-adds; added params relative to {BASELINE} on the "
                         "same backbone; cost depends on the architecture only and is measured "
                         "once per method (with the first seed)."])


def time_table(group: Group, interval: str = DEFAULT_INTERVAL) -> Table | None:
    return metric_table(group, "Time", METRICS.in_table("time"),
                        ["Timings on a shared machine are noisy: compare methods by ratios measured "
                         "in one run, not absolute times across runs (COST.md). Training time and "
                         "throughput: " + statistics_note(interval)], interval=interval)


def other_table(group: Group, interval: str = DEFAULT_INTERVAL) -> Table | None:
    """Every stored metric that no other table shows, so that nothing is silently dropped."""
    records = group.records
    # maps: bench/report/maps.py
    shown = {"accuracy", "learning", "wsol", "compute", "time", "maps"}
    pairs = list(dict.fromkeys(zip(records["task"], records["metric"], records["unit"])))
    columns = [METRICS.get(m) or MetricInfo(m, t, u, f"{t}: {m}") for t, m, u in pairs
               if (METRICS.get(m) is None or METRICS.get(m).table not in shown)]
    return metric_table(group, "Other metrics", columns, [statistics_note(interval)],
                        interval=interval)


FAILURE_KINDS = {"run": "the run's own (final; --retry-failed reruns it)",
                 "infrastructure": "infrastructure (a plain rerun retries it)"}


def _kind(row: dict) -> str:
    """What a failed run's or task's failure means for a rerun; a running run's claim."""
    if row.get("status") == "failed":
        return FAILURE_KINDS.get(row.get("failure") or "run", str(row.get("failure")))
    if row.get("status") == "running" and row.get("owner"):
        return f"claimed by {row['owner']} (heartbeat {row.get('heartbeat') or 'none'})"
    return ""


def verdict_table(group: Group, interval: str = DEFAULT_INTERVAL,
                  power: float = POWER) -> Table | None:
    """The summary: per headline metric and method, the difference to the baseline with its
    interval, the verdict, and the minimum detectable difference (MDD) with the seeds that would
    detect the observed difference (one row per metric and method, so that it fits the page)."""
    results = headline_results(group, interval, power)
    if not results:
        return None
    rows, methods = [], []
    for result in results:
        unit = result.delta_unit
        digits = column_digits(group.records, result.info.name)
        for method in group.methods:
            c = result.comparisons.get(method)
            if c is None:
                continue
            p = c.power
            mdd = MISSING if p is None or p.detectable is None else (
                f"{fmt(p.detectable, unit, digits)} {unit}".rstrip()
                + ("" if p.seeds_needed is None else f" ({p.seeds_needed})"))
            d = c.difference
            diff = c.verdict if d.n == 0 else " ".join(filter(None, (
                signed(d.mean, unit, digits), unit,
                interval_text(d.low, d.high, unit, digits, sign=True))))
            rows.append([result.info.label, method, diff, verdict_text(c), mdd])
            methods.append(method)
    note = (f"Δ = mean difference to {BASELINE}, paired by seed, with its {CONFIDENCE:.0%} "
            f"interval ({'Student t' if interval == 't' else 'bootstrap'}); verdict: two-sided "
            f"paired t-test, Holm-corrected over the methods, at the {ALPHA:.0%} level, from "
            f"{MIN_VERDICT_SEEDS} paired seeds (n); MDD = minimum detectable difference, the "
            f"smallest |Δ| the test finds with {power:.0%} power at this seed count (level "
            f"{ALPHA:g} / methods compared, std of the paired differences); in brackets, the "
            f"paired seeds that would find the observed Δ.")
    return Table(f"Verdicts against {BASELINE}",
                 ["metric", "method", f"Δ [{CONFIDENCE:.0%} CI]", "verdict",
                  "MDD (seeds for Δ)"], rows, methods, [note])


def failures_table(group: Group) -> Table | None:
    """Runs and tasks that did not complete, with the recorded reason and what kind of failure
    it was (the run's own, final; or the infrastructure's, retried by a rerun)."""
    seeds = dict(zip(group.runs["id"], zip(group.runs["method"], group.runs["seed"])))
    rows, methods = [], []
    for run in group.runs.to_dict("records"):
        if run["status"] != "complete":
            rows.append([run["method"], str(run["seed"]), "(run)", run["status"],
                         run["reason"] or "", _kind(run)])
            methods.append(run["method"])
    for task in group.task_runs:
        if task["status"] != "complete" and task["run_id"] in seeds:
            method, seed = seeds[task["run_id"]]
            rows.append([method, str(seed), task["task"], task["status"], task["reason"] or "",
                         _kind(task)])
            methods.append(method)
    if not rows:
        return None
    order = {m: i for i, m in enumerate(group.methods)}
    ranked = sorted(zip(rows, methods), key=lambda rm: (order.get(rm[1], len(order)), int(rm[0][1])))
    rows, methods = [r for r, _ in ranked], [m for _, m in ranked]
    return Table("Failed runs", ["method", "seed", "task", "status", "reason", "kind"], rows,
                 methods, ["Runs and tasks that did not complete, with the reason stored."])


def group_tables(group: Group, interval: str = DEFAULT_INTERVAL,
                 power: float = POWER) -> list[Table]:
    tables = [accuracy_table(group, interval, power), learning_table(group, interval, power),
              wsol_table(group, interval),
              wsol_comparison_table(group, interval, power),
              compute_table(group), time_table(group, interval),
              other_table(group, interval), failures_table(group)]
    return [t for t in tables if t is not None]
