"""The regression gate: stored results against a committed JSON baseline.

Baseline file::

    {"default_tolerance": {"accuracy": 2.0, "wsol": 5.0},
     "records": [{"method": "gap-fc", "dataset": "digits-clutter", "backbone": "resnet8",
                  "task": "accuracy", "metric": "top1", "value": 91.2, "seeds": 3,
                  "std": 1.1}, ...]}

Rules (current value = mean over the stored seeds; how each metric is gated, and which way is
better, come from the metric catalogue, ``bench.metrics``):
- metrics gated ``exact`` (parameters and GMACs) must equal the baseline exactly (all seeds must
  agree);
- every metric gated with a tolerance may move by at most that tolerance in the bad direction; a
  move in the good direction beyond it passes and is reported as an improvement to adopt with
  ``--update``. The tolerance is the record's own ``tolerance`` if it has one; else the fixed
  tolerance, ``default_tolerance[metric]``, else, for percentage metrics only,
  ``default_tolerance[task]``, else the catalogue's default, widened by the seed noise where the
  baseline holds ``MIN_NOISE_SEEDS`` seeds or more (``seeds`` and their ``std``, written by
  ``--update``): the half-width of the 95% prediction interval of the current mean,
  t(0.975, m - 1) * std * sqrt(1/n + 1/m) for m baseline and n current seeds, bounded to
  [fixed, ``MAX_WIDENING`` x fixed]: the noise margin never narrows the fixed tolerance (a metric
  at 100% on every seed keeps it) and never widens it more than that factor. Tolerances are in
  the metric's own unit (percentage points for accuracy and localization), so a task's default
  never applies to e.g. its loss in nats;
- ``--methods`` limits the gate to some methods (default: the methods in the store), so a store
  of a subset is checked against the records of that subset;
- metrics not gated (timings: too noisy) are never compared; a baseline listing one is refused;
- a baseline record with no stored value is a failure; stored values without a record are ignored.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from bench.errors import BenchError
from bench.metrics import EXACT, LOWER, METRICS, NOT_GATED, TOLERANCE
from bench.report.collect import annotate_recipes, method_order
from bench.store import Store
from bench.tasks.base import task_name

DEFAULT_TOLERANCE = {"accuracy": 2.0, "wsol": 5.0}
KEY_FIELDS = ("method", "dataset", "backbone", "task", "metric")
OPTIONAL_FIELDS = ("tolerance", "seeds", "std")
EPS = 1e-9  # float slack on tolerance comparisons (not used for exact metrics)
MIN_NOISE_SEEDS = 3  # baseline seeds from which the seed noise may widen the fixed tolerance
MAX_WIDENING = 2.0  # the noise-aware tolerance is at most this many times the fixed one

Key = tuple[str, str, str, str, str]


@dataclass
class Record:
    key: Key
    value: float
    tolerance: Optional[float]
    where: str  # "file:line: record i" for messages
    seeds: Optional[int] = None  # how many seeds ``value`` averages
    std: Optional[float] = None  # their sample standard deviation (with 2 seeds or more)

    def noise_margin(self, current_seeds: int) -> Optional[float]:
        """How far the mean of ``current_seeds`` new seeds may fall below the baseline's mean by
        seed noise alone: the half-width of the 95% prediction interval, t(0.975, m - 1) * std *
        sqrt(1/n + 1/m), for a baseline of m >= ``MIN_NOISE_SEEDS`` seeds; None otherwise."""
        if (self.std is None or not self.seeds or self.seeds < MIN_NOISE_SEEDS
                or current_seeds < 1):
            return None
        from scipy import stats

        quantile = float(stats.t.ppf(0.975, self.seeds - 1))
        return quantile * self.std * math.sqrt(1 / current_seeds + 1 / self.seeds)

    def describe(self) -> str:
        method, dataset, backbone, task, metric = self.key
        return f"{method} {dataset}/{backbone} {task}/{metric}"


@dataclass
class Baseline:
    default_tolerance: dict[str, float]
    records: list[Record]

    def tolerance(self, record: Record, unit: str) -> Optional[float]:
        """The record's own tolerance, else the file's default for its metric, else (for %) for
        its task, else the catalogue's default for the metric."""
        task, metric = record.key[3], record.key[4]
        if record.tolerance is not None:
            return record.tolerance
        if metric in self.default_tolerance:
            return self.default_tolerance[metric]
        if unit == "%" and task_name(task) in self.default_tolerance:
            return self.default_tolerance[task_name(task)]
        info = METRICS.get(metric)
        return info.tolerance if info is not None else None


def gate(metric: str) -> str:
    """How the gate compares ``metric``: exact, with a tolerance, or not at all (uncatalogued
    metrics with a tolerance where one is given)."""
    info = METRICS.get(metric)
    return info.gate if info is not None else TOLERANCE


def lower_is_better(metric: str) -> bool:
    info = METRICS.get(metric)
    return info is not None and info.direction == LOWER


@dataclass
class CheckResult:
    failures: list[str] = field(default_factory=list)
    improvements: list[str] = field(default_factory=list)
    passed: int = 0
    not_gated: int = 0  # baseline records of methods outside the checked set

    def lines(self) -> list[str]:
        summary = (f"check failed: {len(self.failures)} of {len(self.failures) + self.passed} "
                   "baseline records regressed or missing" if self.failures else
                   f"check passed: {self.passed} baseline records within tolerance")
        if self.not_gated:
            summary += f" ({self.not_gated} records of other methods not checked)"
        return self.failures + self.improvements + [summary]


def number(value: float) -> str:
    """Exact enough to show any difference: integers plainly, other values with 12 digits."""
    return str(int(value)) if float(value).is_integer() else f"{value:.12g}"


def _record_lines(text: str) -> list[int]:
    """The line on which each element of the top-level ``records`` array starts."""
    match = re.search(r'"records"\s*:\s*\[', text)
    if not match:
        return []
    decoder, pos, lines = json.JSONDecoder(), match.end(), []
    while True:
        while pos < len(text) and text[pos] in " \t\r\n,":
            pos += 1
        if pos >= len(text) or text[pos] == "]":
            return lines
        lines.append(text.count("\n", 0, pos) + 1)
        try:
            _, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:  # "records" matched inside a string: no line numbers
            return []


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def load_baseline(path: Path) -> Baseline:
    """Parse and validate a baseline file; any problem is one BenchError naming file and line."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise BenchError(f"cannot read baseline {path} ({e.strerror or e}); "
                         "write one with `bench check --update`") from None
    except UnicodeDecodeError as e:
        raise BenchError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason}); a baseline is "
                         "UTF-8 JSON, as `bench check --update` writes it") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise BenchError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(data, dict) or not isinstance(data.get("records"), list):
        raise BenchError(f'{path}: expected an object with a "records" list '
                         '(and "default_tolerance": {task or metric: number})')
    unknown = set(data) - {"default_tolerance", "records"}
    if unknown:
        raise BenchError(f"{path}: unknown key(s) {', '.join(sorted(unknown))}; "
                         "valid: default_tolerance, records")
    defaults = data.get("default_tolerance", {})
    if not isinstance(defaults, dict) or not all(_is_number(v) and v >= 0 for v in defaults.values()):
        raise BenchError(f"{path}: default_tolerance must map task or metric names to numbers >= 0")
    lines = _record_lines(text)
    baseline = Baseline({str(k): float(v) for k, v in defaults.items()}, [])
    for i, item in enumerate(data["records"]):
        where = f"{path}:{lines[i]}: record {i}" if i < len(lines) else f"{path}: record {i}"
        baseline.records.append(_parse_record(item, where))
    return baseline


def _parse_record(item: Any, where: str) -> Record:
    if not isinstance(item, dict):
        raise BenchError(f"{where}: expected an object with {', '.join(KEY_FIELDS)}, value")
    missing = [k for k in KEY_FIELDS + ("value",) if k not in item]
    if missing:
        raise BenchError(f"{where}: missing {', '.join(missing)}")
    unknown = set(item) - set(KEY_FIELDS) - {"value"} - set(OPTIONAL_FIELDS)
    if unknown:
        raise BenchError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}; valid: "
                         f"{', '.join(KEY_FIELDS + ('value',) + OPTIONAL_FIELDS)}")
    if not all(isinstance(item[k], str) and item[k] for k in KEY_FIELDS):
        raise BenchError(f"{where}: {', '.join(KEY_FIELDS)} must be non-empty strings")
    if not _is_number(item["value"]):
        raise BenchError(f"{where}: value must be a finite number, got {item['value']!r}")
    metric = item["metric"]
    tolerance = item.get("tolerance")
    if gate(metric) == NOT_GATED:
        raise BenchError(f"{where}: {metric} is not gated (a timing: too noisy); "
                         f"remove the record")
    if tolerance is not None and gate(metric) == EXACT:
        raise BenchError(f"{where}: {metric} is compared exactly; remove its tolerance")
    if tolerance is not None and not (_is_number(tolerance) and tolerance >= 0):
        raise BenchError(f"{where}: tolerance must be a number >= 0, got {tolerance!r}")
    for name in ("seeds", "std"):
        value = item.get(name)
        if value is not None and not (_is_number(value) and value >= 0):
            raise BenchError(f"{where}: {name} must be a number >= 0, got {value!r}")
    key = tuple(item[k] for k in KEY_FIELDS)
    return Record(key, float(item["value"]), None if tolerance is None else float(tolerance), where,
                  None if item.get("seeds") is None else int(item["seeds"]),
                  None if item.get("std") is None else float(item["std"]))


def stored_values(out_dir: Path) -> dict[Key, tuple[str, list[float]]]:
    """Unit and per-run values of every stored metric, by (method, dataset, backbone, task, metric).
    A store holding several recipes for one dataset and backbone cannot be gated (its seeds
    would be pooled across recipes): that is a BenchError."""
    store = Store(Path(out_dir) / "results.sqlite", create=False)
    try:
        frame = annotate_recipes(store.records(), store.runs())
    finally:
        store.close()
    recipes = frame.groupby(["dataset", "backbone"])["recipe"].nunique()
    mixed = [f"{d}/{b}" for (d, b), n in recipes.items() if n > 1]
    if mixed:
        raise BenchError(f"the store under {out_dir} holds runs of several training recipes for "
                         f"{', '.join(mixed)}; gate a store with one recipe per dataset and backbone")
    values: dict[Key, tuple[str, list[float]]] = {}
    for row in frame.itertuples():
        if row.value is not None and math.isfinite(row.value):
            key = (row.method, row.dataset, row.backbone, row.task, row.metric)
            values.setdefault(key, (row.unit, []))[1].append(float(row.value))
    return values


def bounded_tolerance(fixed: float, margin: Optional[float]) -> float:
    """The fixed tolerance widened by the noise ``margin``, within [fixed, MAX_WIDENING x fixed]
    (the fixed tolerance alone without a margin)."""
    if margin is None:
        return fixed
    return min(max(margin, fixed), MAX_WIDENING * fixed)


def compare(record: Record, tolerance: Optional[float], values: list[float]) -> tuple[str, str]:
    """("fail" | "improved" | "ok", message) for one baseline record and its stored values. A
    record of ``MIN_NOISE_SEEDS`` seeds or more (with their std) and no tolerance of its own has
    the fixed tolerance widened by its seed noise (``bounded_tolerance``)."""
    metric = record.key[4]
    if not values:
        return "fail", f"MISSING {record.describe()}: baseline {number(record.value)}, not in the store"
    if gate(metric) == EXACT:
        distinct = sorted(set(values))
        if len(distinct) > 1:
            return "fail", (f"REGRESSION {record.describe()}: baseline {number(record.value)}, current "
                            f"differs between seeds ({', '.join(number(v) for v in distinct)}), "
                            "tolerance exact")
        if distinct[0] != record.value:
            return "fail", (f"REGRESSION {record.describe()}: baseline {number(record.value)}, current "
                            f"{number(distinct[0])}, tolerance exact")
        return "ok", ""
    current = float(np.mean(values))
    change = current - record.value
    worse = change if lower_is_better(metric) else -change
    margin = record.noise_margin(len(values)) if record.tolerance is None else None
    if margin is not None:
        fixed, tolerance = tolerance, bounded_tolerance(tolerance, margin)
        how = (f"tolerance {tolerance:.4g} (fixed {fixed:g}, 95% prediction margin {margin:.4g} "
               f"of the baseline's {record.seeds} seeds with std {record.std:.4g}, bounded to "
               f"[{fixed:g}, {MAX_WIDENING:g} x {fixed:g}])")
    else:
        how = f"tolerance {tolerance:g}"
    text = (f"{record.describe()}: baseline {record.value:.4f}, current {current:.4f} "
            f"(mean of {len(values)} seed{'s' if len(values) != 1 else ''}), {how}")
    if worse > tolerance + EPS:
        return "fail", f"REGRESSION {text}"
    if -worse > tolerance + EPS:
        return "improved", f"IMPROVED {text} (adopt with --update)"
    return "ok", ""


def refuse_empty(baseline: Baseline, path: Path, in_store: set[str],
                 methods: Optional[list[str]]) -> None:
    """A BenchError when the check would compare nothing (a gate that checks nothing must not
    pass): a baseline without records, a method asked for that neither the store nor the
    baseline has, or no baseline record of the methods checked. (A method the baseline has but
    the store lacks is checked: its records are MISSING, a failure.)"""
    if not baseline.records:
        raise BenchError(f"baseline {path} has no records: nothing to check; write one with "
                         f"`bench check --update`")
    stored = ", ".join(method_order(list(in_store))) or "none"
    have = ", ".join(method_order([r.key[0] for r in baseline.records]))
    unknown = [m for m in methods or [] if m not in in_store
               and all(r.key[0] != m for r in baseline.records)]
    if unknown:
        raise BenchError(f"methods {', '.join(unknown)}: in neither the store (methods: "
                         f"{stored}) nor the baseline ({have}); nothing to check for them",
                         "methods")
    chosen = set(methods) if methods is not None else in_store
    if not any(r.key[0] in chosen for r in baseline.records):
        raise BenchError(f"no record of baseline {path} is of a method checked (the store's: "
                         f"{stored}; the baseline has {have}): nothing to check")


def check(out_dir: Path, baseline_path: Path,
          methods: Optional[list[str]] = None) -> CheckResult:
    """Compare the store under ``out_dir`` with the baseline file, for ``methods`` (default: the
    methods in the store); every regression is named."""
    baseline = load_baseline(baseline_path)
    stored = stored_values(out_dir)
    chosen = set(methods) if methods is not None else {k[0] for k in stored}
    refuse_empty(baseline, baseline_path, {k[0] for k in stored}, methods)
    result = CheckResult()
    for record in baseline.records:
        if record.key[0] not in chosen:
            result.not_gated += 1
            continue
        unit, values = stored.get(record.key, ("", []))
        tolerance = baseline.tolerance(record, unit)
        if values and tolerance is None and gate(record.key[4]) != EXACT:
            raise BenchError(f"{record.where} ({record.describe()}, unit {unit!r}): no tolerance "
                             f'applies; give the record a "tolerance" or set default_tolerance'
                             f'["{record.key[4]}"] (task defaults cover % metrics only)')
        status, message = compare(record, tolerance, values)
        if status == "fail":
            result.failures.append(message)
        else:
            result.passed += 1
            if status == "improved":
                result.improvements.append(message)
    return result


def update_baseline(out_dir: Path, baseline_path: Path) -> tuple[int, list[str]]:
    """Write the stored results (mean over seeds) as the new baseline, keeping the old file's
    tolerances. Returns the number of records and the stored metrics left out (timing, or no
    tolerance to apply)."""
    path = Path(baseline_path)
    old = load_baseline(path) if path.exists() else Baseline(dict(DEFAULT_TOLERANCE), [])
    kept = {r.key: r.tolerance for r in old.records if r.tolerance is not None}
    stored = stored_values(out_dir)
    order = {m: i for i, m in enumerate(method_order([k[0] for k in stored]))}
    records, left_out = [], set()
    for key in sorted(stored, key=lambda k: (k[1], k[2], order[k[0]], k[3], k[4])):
        task, metric = key[3], key[4]
        unit, values = stored[key]
        probe = Record(key, 0.0, kept.get(key), "")
        if gate(metric) == NOT_GATED or (gate(metric) != EXACT
                                         and old.tolerance(probe, unit) is None):
            left_out.add(f"{task}/{metric}")
            continue
        distinct = sorted(set(values))
        value = distinct[0] if gate(metric) == EXACT and len(distinct) == 1 else float(np.mean(values))
        record = dict(zip(KEY_FIELDS, key), value=value, seeds=len(values))
        if gate(metric) != EXACT and len(values) > 1:
            record["std"] = float(np.std(values, ddof=1))
        if key in kept:
            record["tolerance"] = kept[key]
        records.append(record)
    body = ",\n".join("    " + json.dumps(r) for r in records)
    text = (f'{{\n  "default_tolerance": {json.dumps(old.default_tolerance)},\n'
            f'  "records": [\n{body}\n  ]\n}}\n')
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as e:
        raise BenchError(f"cannot write baseline {path} ({e.strerror or e}: "
                         f"{e.filename or path})") from None
    return len(records), sorted(left_out)
