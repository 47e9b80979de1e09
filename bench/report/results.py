"""Stored results as tables for the terminal, CSV and JSON: the summary rows (every metric of every
method in each configuration group, with its confidence interval and, against the baseline, the
paired difference, Holm-corrected p-value, verdict and power), aggregates across groups, the per-seed
records, and the compact table printed after a run (the catalogue's headline metrics)."""
from __future__ import annotations

import json
import math
from typing import Any, Optional

import pandas as pd
from tabulate import tabulate

from bench.metrics import HIGHER, LOWER, METRICS
from bench.report.collect import BASELINE, Group
from bench.report.conclusions import analyse, difference_text, power_text, seed_values
from bench.report.learning import not_reached
from bench.report.stats import (DEFAULT_INTERVAL, POWER, Estimate, aggregate,
                                check_aggregate, check_interval, fmt, interval_text, p_text,
                                probability_of_improvement, signed)
from bench.tasks.base import task_name

RECORD_FIELDS = ["method", "dataset", "backbone", "seed", "task", "metric", "value", "unit"]
SUMMARY_FIELDS = ["group", "dataset", "backbone", "method", "task", "metric", "setting", "unit",
                  "n", "mean", "interval", "ci_low", "ci_high", "diff", "diff_low", "diff_high",
                  "p", "p_holm", "verdict", "detectable_diff", "power_alpha", "seeds_needed"]


def _number(value: Optional[float]) -> Optional[float]:
    return None if value is None or not math.isfinite(value) else float(value)


def _finite(value: Any, path: str, found: dict[str, str]) -> Any:
    """``value`` with every non-finite float replaced by None, noted in ``found`` by path."""
    if isinstance(value, float) and not math.isfinite(value):
        found[path] = str(value)
        return None
    if isinstance(value, dict):
        return {k: _finite(v, f"{path}.{k}" if path else str(k), found) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v, f"{path}[{i}]", found) for i, v in enumerate(value)]
    return value


def strict_json(value: Any) -> str:
    """Strict JSON text (no NaN or Infinity, which JSON lacks): each non-finite number becomes
    null, and the record (dict) holding it gains ``non_finite``, naming the field and its
    value (``{"value": "inf"}``)."""
    def clean(item: Any) -> Any:
        if isinstance(item, dict):
            found: dict[str, str] = {}
            out = {k: clean(v) if isinstance(v, (list, tuple)) and v and isinstance(v[0], dict)
                   else _finite(v, str(k), found) for k, v in item.items()}
            return out | ({"non_finite": found} if found else {})
        if isinstance(item, (list, tuple)):
            return [clean(v) for v in item]
        return _finite(item, "", {})
    return json.dumps(clean(value), indent=2, default=str, allow_nan=False)


def summary_rows(groups: list[Group], interval: str = DEFAULT_INTERVAL,
                 power: float = POWER) -> list[dict[str, Any]]:
    """One row per (group, method, metric, setting) with its statistics (raw numbers); the
    detectable difference at ``power``."""
    check_interval(interval)
    rows = []
    for group in groups:
        records = group.records
        options = (dict(zip(records["method"], records["method_options"]))
                   if "method_options" in records else {})  # as resolved for the runs
        keys = list(dict.fromkeys(zip(records["task"], records["metric"], records["setting"])))
        for task, metric, setting in keys:
            result = analyse(records, group.methods, metric, setting, interval, power)
            for method in group.methods:
                est, c = result.estimates.get(method), result.comparisons.get(method)
                d = c.difference if c is not None else None
                missed = not_reached(records, method) if metric == "epochs_to_90" else None
                if missed:  # a mean over the seeds that reached it would hide the others
                    est, c, d = Estimate(float("nan"), est.n if est else 0), None, None
                elif est is None:
                    continue
                pw = c.power if c is not None else None
                rows.append({
                    "group": group.label, "dataset": group.dataset, "backbone": group.backbone,
                    "method": method, "method_options": options.get(method, {}), "task": task,
                    "metric": metric, "setting": setting, "unit": result.info.unit, "n": est.n, "mean": _number(est.mean),
                    "interval": (interval if est.n > 1 else None),
                    "ci_low": _number(est.low), "ci_high": _number(est.high),
                    "diff": _number(d.mean) if d and d.n else None,
                    "diff_low": _number(d.low) if d else None,
                    "diff_high": _number(d.high) if d else None,
                    "p": c.p if c else None, "p_holm": c.p_holm if c else None,
                    "verdict": missed or (c.verdict if c else (
                        "reference" if method == BASELINE and result.comparisons else None)),
                    "detectable_diff": pw.detectable if pw else None,
                    "power_alpha": pw.alpha if pw else None,
                    "seeds_needed": pw.seeds_needed if pw else None})
    return rows


def summary_frame(groups: list[Group], interval: str = DEFAULT_INTERVAL,
                  power: float = POWER) -> pd.DataFrame:
    """``summary_rows`` as a tidy frame with the columns of ``bench results --format csv``."""
    return frame_of(summary_rows(groups, interval, power))


def frame_of(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Summary rows as a frame of the ``SUMMARY_FIELDS`` columns."""
    return pd.DataFrame(rows, columns=SUMMARY_FIELDS)


def per_seed_frame(records: list[dict[str, Any]]) -> pd.DataFrame:
    """The stored records, one row per metric and seed, with the columns of ``bench results
    --per-seed --format csv``."""
    frame = pd.DataFrame(records) if records else pd.DataFrame(columns=RECORD_FIELDS)
    return frame[[c for c in RECORD_FIELDS + ["preset", "run_id"] if c in frame]]


def aggregate_rows(groups: list[Group], name: str = "iqm") -> list[dict[str, Any]]:
    """Across the groups (datasets, backbones, recipes) that share methods: per directional
    headline metric and method, the aggregate over groups and the probability of improvement
    over the baseline, each with a stratified-bootstrap interval. Empty with fewer than two
    groups."""
    check_aggregate(name)
    if len(groups) < 2:
        return []
    rows = []
    for info in METRICS.headline():
        if info.direction not in (HIGHER, LOWER):
            continue
        per_group = [{m: list(seed_values(g.records, m, info.name).values()) for m in g.methods}
                     for g in groups]
        methods = [m for m in groups[0].methods
                   if all(len(pg.get(m, [])) for pg in per_group)]
        for method in methods:
            scores = [pg[method] for pg in per_group]
            agg = aggregate(scores, name)
            row = {"kind": "aggregate", "metric": info.name, "unit": info.unit, "method": method,
                   "aggregate": name, "value": agg.value, "ci_low": agg.low, "ci_high": agg.high,
                   "groups": agg.tasks, "runs_per_group": agg.runs}
            if method != BASELINE and BASELINE in methods:
                poi = probability_of_improvement(scores, [pg[BASELINE] for pg in per_group],
                                                 info.direction)
                row.update(p_improvement=poi.value, p_improvement_low=poi.low,
                           p_improvement_high=poi.high)
            rows.append(row)
    return rows


def render(groups: list[Group], fmt_name: str, interval: str = DEFAULT_INTERVAL,
           aggregate_name: str = "iqm", per_seed: bool = False,
           records: Optional[list[dict[str, Any]]] = None, power: float = POWER) -> str:
    """The text ``bench results`` prints in format table, csv or json."""
    if per_seed:
        return _per_seed(records or [], fmt_name)
    rows = summary_rows(groups, interval, power)
    aggregates = aggregate_rows(groups, aggregate_name)
    if fmt_name == "json":
        return strict_json({"summary": rows, "aggregates": aggregates,
                            "failed_runs": failed_runs(groups)})
    if fmt_name == "csv":
        text = frame_of(rows).to_csv(index=False)
        if aggregates:
            text += "\n" + pd.DataFrame(aggregates).to_csv(index=False)
        return text
    if not rows:
        return ("no metrics stored" if failed_runs(groups) else "no results stored yet") + \
            _failed_text(groups)
    table = []
    for r in rows:
        unit = "pp" if r["unit"] == "%" else r["unit"]
        value = "n/a" if r["mean"] is None else Estimate(
            r["mean"], r["n"], r["ci_low"], r["ci_high"], r["interval"] == "t"
            or r["ci_low"] == r["ci_high"]).text(r["unit"])
        delta = "" if r["diff"] is None else (
            f"{signed(r['diff'], unit)} {unit} "
            + interval_text(r["diff_low"], r["diff_high"], unit, sign=True))
        detectable = "" if r["detectable_diff"] is None else (
            f"{fmt(r['detectable_diff'], unit)} {unit}"
            + ("" if r["seeds_needed"] is None else f"; {r['seeds_needed']} seeds for Δ"))
        table.append([r["group"], r["method"], r["metric"] + (f" [{r['setting']}]" if r["setting"]
                                                            else ""),
                      value, r["unit"], r["n"], delta, p_text(r["p_holm"]), r["verdict"] or "",
                      detectable])
    shown = "mean ± 95% CI" if interval == "t" else "mean [95% CI]"
    headers = ["group", "method", "metric", shown, "unit", "n",
               f"Δ vs {BASELINE} [95% CI]", "p (Holm)", "verdict", f"detectable ({power:.0%} power)"]
    text = tabulate(table, headers=headers, tablefmt="github", disable_numparse=True)
    if aggregates:
        agg = [[a["metric"], a["method"],
                f"{fmt(a['value'], a['unit'])} {interval_text(a['ci_low'], a['ci_high'], a['unit'])}",
                "" if "p_improvement" not in a else
                f"{a['p_improvement']:.2f} "
                + interval_text(a["p_improvement_low"], a["p_improvement_high"], "", 2),
                a["groups"], a["runs_per_group"]]
               for a in aggregates]
        text += (f"\n\nAcross {aggregates[0]['groups']} groups ({aggregate_name}, stratified "
                 "bootstrap 95% CI):\n")
        text += tabulate(agg, headers=["metric", "method", aggregate_name,
                                       f"P(better than {BASELINE})", "groups", "runs per group"],
                         tablefmt="github", disable_numparse=True)
    return text + _failed_text(groups)


def failed_runs(groups: list[Group]) -> list[dict[str, Any]]:
    """Every failed run of the groups: group, method, seed, reason and kind of failure."""
    return [{"group": g.label, "method": r["method"], "seed": int(r["seed"]),
             "reason": r.get("reason"), "failure": r.get("failure") or "run"}
            for g in groups for r in g.runs.to_dict("records") if r["status"] == "failed"]


def _failed_text(groups: list[Group]) -> str:
    failed = failed_runs(groups)
    lines = [f"FAILED {f['group']}: {f['method']} seed {f['seed']}: {f['reason']} "
             f"({f['failure']} failure)" for f in failed]
    return "\n\n" + "\n".join(lines) if lines else ""


def _per_seed(records: list[dict[str, Any]], fmt_name: str) -> str:
    keep = RECORD_FIELDS + ["preset", "run_id", "run_status", "method_options", "extra"]
    if fmt_name == "json":
        return strict_json([{k: r[k] for k in keep if k in r} for r in records])
    frame = per_seed_frame(records)
    if fmt_name == "csv":
        return frame.to_csv(index=False)
    if frame.empty:
        return "no results stored yet"
    return tabulate(frame, headers="keys", tablefmt="github", showindex=False,
                    disable_numparse=True)


def summary_table(groups: list[Group], methods: Optional[list[str]] = None,
                  interval: str = DEFAULT_INTERVAL) -> str:
    """After a run: per configuration group, one row per method with the headline metrics
    (mean with its 95% interval) and the top-1 difference to the baseline with its verdict and
    the smallest difference the test detects."""
    blocks = []
    for group in groups:
        shown = [m for m in group.methods if methods is None or m in methods]
        if not shown:
            continue
        rows = {m: {"method": m} for m in shown}
        seeds = group.records[group.records["metric"] == "top1"].groupby("method")["seed"].nunique()
        failed = group.runs[group.runs["status"] == "failed"].groupby("method")["seed"].nunique()
        for m in shown:
            rows[m]["seeds"] = (str(int(seeds[m])) if m in seeds else "0") + (
                f" ({int(failed[m])} failed)" if m in failed else "")
        for info in METRICS.headline():
            if info.name not in set(group.records["metric"]):
                continue
            result = analyse(group.records, group.methods, info.name, "", interval)
            for m in shown:
                est = result.estimates.get(m)
                rows[m][info.header()] = "" if est is None else (
                    fmt(est.mean, info.unit, info.digits) if task_name(info.task) == "cost"
                    else est.text(info.unit, info.digits))
                if info.name == "top1" and result.comparisons:
                    c = result.comparisons.get(m)
                    rows[m][f"Δ top-1 vs {BASELINE} (pp)"] = (
                        "reference" if m == BASELINE else difference_text(c, "pp", 2))
                    rows[m]["verdict (top-1)"] = (
                        "" if m == BASELINE or c is None else c.verdict)
                    rows[m]["detectable (top-1, 80% power)"] = (
                        "" if m == BASELINE else power_text(c, "pp", 2))
        table = tabulate(pd.DataFrame(list(rows.values())).fillna(""), headers="keys",
                         tablefmt="github", showindex=False, disable_numparse=True)
        blocks.append(f"{group.label}:\n{table}")
    return "\n\n".join(blocks) if blocks else "no results stored yet"
