"""Stored results gathered for reporting: records grouped by (dataset, backbone, recipe), methods
in one fixed order (gap-fc first, then registry order, variants after their base method) and one
colour per method, the same in every table and figure."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import pandas as pd
from matplotlib import colors as mcolors

from bench.registry import METHODS
from bench.report.learning import learning_records
from bench.store import Store

BASELINE = "gap-fc"
BASELINE_COLOUR = "#3a3a3a"
# Base colours in registry order: tab10 without its grey, then the light tab20 shades.
BASE_COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
                "#bcbd22", "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5",
                "#c49c94", "#f7b6d2", "#dbdb8d", "#9edae5"]
# Variants of a method: its colour mixed with white (>0) or black (<0) by these fractions, in turn.
VARIANT_SHADES = [0.4, -0.35, 0.65, -0.55, 0.8]


def base_name(spec: str) -> str:
    """``se[r=8]`` -> ``se`` (stored specs are canonical, so the name precedes any bracket)."""
    return spec.split("[", 1)[0]


def method_order(specs: list[str]) -> list[str]:
    """Distinct specs sorted: gap-fc first, then by registry order, each variant after its base;
    methods no longer registered come last, alphabetically."""
    names = METHODS.names()

    def key(spec: str) -> tuple:
        name = base_name(spec)
        rank = -1 if name == BASELINE else names.index(name) if name in names else len(names)
        return (rank, name, spec != name, spec)

    return sorted(set(specs), key=key)


def _shade(colour: str, amount: float) -> str:
    rgb = mcolors.to_rgb(colour)
    target = 1.0 if amount > 0 else 0.0
    return mcolors.to_hex([c + (target - c) * abs(amount) for c in rgb])


def method_palette(specs: list[str]) -> dict[str, str]:
    """Colour per spec: a base colour fixed by the method's registry position (so a method keeps it
    whatever else is reported), variants as lighter/darker shades of their base's colour."""
    names = [n for n in METHODS.names() if n != BASELINE]
    palette: dict[str, str] = {}
    variants: dict[str, int] = {}
    unknown = sorted({base_name(s) for s in specs} - set(names) - {BASELINE})
    for spec in method_order(specs):
        name = base_name(spec)
        if name == BASELINE:
            base = BASELINE_COLOUR
        else:
            index = names.index(name) if name in names else len(names) + unknown.index(name)
            base = BASE_COLOURS[index % len(BASE_COLOURS)]
        if spec == name:
            palette[spec] = base
        else:
            k = variants.get(name, 0)
            variants[name] = k + 1
            palette[spec] = _shade(base, VARIANT_SHADES[k % len(VARIANT_SHADES)])
    return palette


@dataclass
class Group:
    """The results of one (dataset, backbone, recipe): comparable runs only."""

    dataset: str
    backbone: str
    recipe: dict[str, Any]
    label: str
    records: pd.DataFrame
    curves: pd.DataFrame
    runs: pd.DataFrame
    task_runs: list[dict[str, Any]]
    methods: list[str] = field(default_factory=list)

    @property
    def slug(self) -> str:
        """The label as a file-name part: ``cifar10 / resnet20`` -> ``cifar10-resnet20``."""
        return re.sub(r"[^a-z0-9.]+", "-", self.label.lower()).strip("-")


@dataclass
class ReportData:
    out_dir: Path
    groups: list[Group]
    runs: pd.DataFrame
    palette: dict[str, str]
    trials: list[dict[str, Any]] = field(default_factory=list)  # of bench tune


def recipe_of(config_text: str) -> dict[str, Any]:
    """What makes runs comparable besides dataset and backbone: the training recipe without the
    seed count (seeds of one recipe are pooled) and the preset's default dataset and backbone
    (the run's own are stored beside it), and how it runs (device, CPU threads). A tuned run's is
    its base recipe and the tuning protocol: every method tuned under one protocol is compared
    in one group, each with the recipe its search chose."""
    config = json.loads(config_text or "{}")
    tuning = config.get("tuning")
    recipe = dict((tuning or {}).get("base_recipe") or config.get("recipe") or {})
    for key in ("seeds", "dataset", "backbone"):
        recipe.pop(key, None)
    if tuning:
        recipe["tuned"] = (f"{tuning['trials']} trials, {tuning['sampler']} seed "
                           f"{tuning['sampler_seed']}, select {tuning['select']}"
                           + (", pruned" if tuning.get("prune") else ""))
    recipe.update({f"execution.{k}": v for k, v in (config.get("execution") or {}).items()})
    return recipe


def _frame(rows: list[dict[str, Any]], columns: list[str]) -> pd.DataFrame:
    return pd.DataFrame(rows) if rows else pd.DataFrame(columns=columns)


def annotate_recipes(records: list[dict[str, Any]], runs: list[dict[str, Any]]) -> pd.DataFrame:
    """Records as a frame with the run's recipe key (JSON text) added."""
    recipe_keys = {r["id"]: json.dumps(recipe_of(r["config"]), sort_keys=True) for r in runs}
    frame = _frame(records, ["run_id", "method", "method_name", "dataset", "backbone", "seed",
                             "preset", "run_status", "task", "metric", "value", "unit", "extra"])
    frame["recipe"] = [recipe_keys.get(i, "{}") for i in frame["run_id"]]
    return frame


def _recipe_label(recipe: dict[str, Any], others: list[dict[str, Any]]) -> str:
    """The recipe fields in which ``recipe`` differs from the others of its dataset and backbone."""
    keys = sorted({k for o in others for k in set(o) | set(recipe) if o.get(k) != recipe.get(k)})
    return ", ".join(f"{k}={recipe.get(k)}" for k in keys)


def add_settings(records: pd.DataFrame) -> pd.DataFrame:
    """Add a ``setting`` column telling apart several records of one metric in one run (latency at
    several batch sizes, a task run with other options): the ``extra`` fields whose values differ
    among them, as ``k=v, ...``; the task's identity where those do not tell them apart."""
    records = records.copy()
    records["setting"] = ""
    for _, metric in records.groupby("metric", sort=False):
        keys: set[str] = set()
        tasks = False
        for _, same_run in metric.groupby("run_id"):
            if len(same_run) > 1:
                extras = list(same_run["extra"])
                keys |= {k for e in extras for k in e if any(o.get(k) != e.get(k) for o in extras)}
                tasks |= same_run["task"].nunique() > 1
        if not keys and not tasks:
            continue
        settings = [", ".join(f"{k}={e.get(k)}" for k in sorted(keys)) for e in metric["extra"]]
        if tasks and len(set(zip(metric["run_id"], settings))) < len(metric):
            settings = [f"task={t}" + (f", {s}" if s else "") for t, s in zip(metric["task"],
                                                                             settings)]
        records.loc[metric.index, "setting"] = settings
    return records


def configuration_groups(records: list[dict[str, Any]], runs: list[dict[str, Any]],
                         curves: Optional[list[dict[str, Any]]] = None,
                         task_runs: Optional[list[dict[str, Any]]] = None) -> list[Group]:
    """The one grouping of stored results used everywhere (report, ``bench results``, the
    summary after a run, the gate): runs are comparable when dataset, backbone and the whole
    training recipe agree (only the seed and the method may differ). A group's label names what
    sets it apart from the other groups of its dataset and backbone (``epochs=3``), so that two
    recipes are never presented as one."""
    frame = annotate_recipes(records, runs)
    curve_frame = _frame(curves or [], ["run_id", "method", "dataset", "backbone", "seed", "task",
                                        "name", "epoch", "value"])
    run_frame = _frame(runs, ["id", "method", "method_name", "backbone", "dataset", "seed",
                              "preset", "config", "status", "reason", "started", "ended",
                              "torch_version", "device", "git_commit"])
    run_frame["recipe"] = [json.dumps(recipe_of(c), sort_keys=True) for c in run_frame["config"]]
    groups = []
    keys = list(dict.fromkeys(zip(run_frame["dataset"], run_frame["backbone"], run_frame["recipe"])))
    for dataset, backbone, recipe in keys:
        siblings = [json.loads(r) for d, b, r in keys if (d, b) == (dataset, backbone) and r != recipe]
        label = f"{dataset} / {backbone}"
        differs = _recipe_label(json.loads(recipe), siblings) if siblings else ""
        if differs:
            label += f" ({differs})"
        in_group = run_frame[(run_frame["dataset"] == dataset) & (run_frame["backbone"] == backbone)
                             & (run_frame["recipe"] == recipe)]
        ids = set(in_group["id"])
        group_curves = curve_frame[curve_frame["run_id"].isin(ids)].reset_index(drop=True)
        group_records = frame[frame["run_id"].isin(ids)]
        derived = learning_records(group_records, group_curves, BASELINE)
        if len(derived):
            group_records = pd.concat([group_records, derived])
        groups.append(Group(
            dataset, backbone, json.loads(recipe), label,
            add_settings(group_records.reset_index(drop=True)), group_curves,
            in_group.reset_index(drop=True),
            [t for t in task_runs or [] if t["run_id"] in ids],
            method_order(list(in_group["method"]))))
    return groups


def read_store(out_dir: Path, store_name: str = "results.sqlite") -> tuple[list, list, list, list]:
    """Records, runs, curves and task runs of the store under ``out_dir`` (read-only)."""
    store = Store(Path(out_dir) / store_name, create=False)
    try:
        return store.records(), store.runs(), store.curves(), store.task_runs()
    finally:
        store.close()


def load(out_dir: Path, store_name: str = "results.sqlite") -> ReportData:
    """Everything in the store under ``out_dir``, grouped for the report."""
    records, runs, curves, task_runs = read_store(out_dir, store_name)
    store = Store(Path(out_dir) / store_name, create=False)
    try:
        trials = store.trials()
    finally:
        store.close()
    groups = configuration_groups(records, runs, curves, task_runs)
    palette = method_palette([r["method"] for r in runs] + [t["method"] for t in trials])
    run_frame = pd.concat([g.runs for g in groups]) if groups else _frame([], ["id", "method"])
    return ReportData(Path(out_dir), groups, run_frame, palette, trials)


def resolve_artifact(out_dir: Path, path: str) -> Optional[Path]:
    """A task's artifact file: stored paths are absolute, or relative to the directory the suite
    ran from (which may not be the current one); the file may also have moved with ``out_dir``."""
    p = Path(path)
    candidates = [p] if p.is_absolute() else [p, out_dir / p]
    candidates += [out_dir / "figures" / p.name, out_dir / p.name]
    return next((c for c in candidates if c.is_file()), None)
