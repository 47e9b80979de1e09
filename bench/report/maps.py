"""The report's map-quality part (the ``maps`` task): two method x map-source tables, localization
and faithfulness (mean ± half-width of the Student t 95% confidence interval over seeds; "n/a" where a method has no such map, "—" where
nothing was measured), and per method a gallery of the same test images under every map source,
drawn from the maps the task saved (``figures/maps-run<id>.npz``, its first seed's)."""
from __future__ import annotations

import math
import re
from typing import Any, Optional

import matplotlib as mpl
import numpy as np
import pandas as pd
import seaborn as sns

from bench.metrics import HIGHER, LOWER, METRICS, MetricInfo, decimals
from bench.report.collect import Group, resolve_artifact
from bench.report.document import Block, Figure, Paragraph, Table
from bench.report.figures import STYLE, Plotter
from bench.report.stats import estimate
from bench.tasks.base import task_name

MISSING, NOT_AVAILABLE = "—", "n/a"
ARROWS = {HIGHER: " ↑", LOWER: " ↓"}


def _maps_records(group: Group) -> pd.DataFrame:
    """The group's maps-task records with the base metric and the source split out."""
    records = group.records[group.records["task"].map(lambda t: task_name(t) == "maps")
                            .astype(bool)]
    parts = records["metric"].str.split("@", n=1, expand=True)
    if records.empty or parts.shape[1] < 2:
        return records.assign(base=[], source=[])
    return records.assign(base=parts[0], source=parts[1]).dropna(subset=["source"])


def _cell(values: pd.Series, info: MetricInfo, digits: int) -> str:
    if values.empty:
        return MISSING
    numbers = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return estimate(numbers).text(info.unit, digits) if numbers else NOT_AVAILABLE


def _digits(rows: pd.DataFrame, info: MetricInfo) -> int:
    """One number of decimals per column: the catalogue's, else from its largest magnitude."""
    if info.digits is not None:
        return info.digits
    values = pd.to_numeric(rows["value"], errors="coerce").abs().dropna()
    return decimals(float(values.max()) if len(values) else 0.0, info.unit)


def _table(title: str, records: pd.DataFrame, columns: list[MetricInfo], group: Group,
           notes: list[str]) -> Optional[Table]:
    """Rows method x source (in the group's method order and the task's source order)."""
    columns = [c for c in columns if (records["base"] == c.name).any()]
    if not columns:
        return None
    sources = list(dict.fromkeys(records["source"]))
    digits = {c.name: _digits(records[records["base"] == c.name], c) for c in columns}
    rows, methods = [], []
    for method in group.methods:
        mine = records[records["method"] == method]
        if mine.empty:
            continue
        for source in sources:
            cells = [_cell(mine[(mine["source"] == source) & (mine["base"] == c.name)]["value"], c,
                           digits[c.name]) for c in columns]
            rows.append([method, source] + cells)
            methods.append(method)
    headers = ["method", "map source"] + [c.header() + ARROWS.get(c.direction, "") for c in columns]
    return Table(title, headers, rows, methods, notes)


def _values(records: pd.DataFrame, key: str, missing: str = "not recorded") -> str:
    """The distinct values of one ``extra`` field, joined (``missing`` when no record has it,
    e.g. a store written before the field existed)."""
    seen = dict.fromkeys(str(e[key]) for e in records["extra"] if isinstance(e, dict) and key in e)
    return ", ".join(seen) or missing


def _source_notes(records: pd.DataFrame) -> str:
    parts = []
    for source, rows in records.groupby("source", sort=False):
        if source == "own":
            parts.append("own = each method's localization_maps")
            continue
        layer = _values(rows, "layer")
        parts.append(f"{source} = {_values(rows, 'map')}"
                     + (f" at {layer}" if layer not in ("", "not recorded") else ""))
    return "Map sources: " + "; ".join(parts) + "."


def maps_tables(group: Group) -> list[Table]:
    """Localization and faithfulness tables, one pair per maps task spec in the group."""
    records = _maps_records(group)
    tables = []
    for task, rows in records.groupby("task", sort=False):
        where = "" if task == "maps" else f" ({task})"
        shared = (f"{_values(rows, 'images')} test images, the same for every source "
                  f"(evenly spaced); mean ± half-width of its 95% confidence interval over seeds "
                  f"(Student's t; one seed: the value, no interval); n/a: the method has no such "
                  f"map; ↑/↓: higher/lower is better.")
        box = rows[rows["base"] == "gt_known_loc"]
        localization = _table(
            f"Map quality: localization{where}", rows, METRICS.in_table("wsol"), group,
            [f"The wsol task's protocol and code on every map (bicubic resize, min-max; "
             f"MaxBoxAccV2 = mean of MaxBoxAcc at δ = 30/50/70%); tau of GT-known/Top-1/Top-5 "
             f"Loc chosen on {_values(box, 'holdout_images')} holdout images "
             f"({_values(box, 'tau_source')}). " + shared, _source_notes(rows)])
        deletion = rows[rows["base"] == "deletion_auc"]
        insertion = rows[rows["base"] == "insertion_auc"]
        road = rows[rows["base"] == "road_combined"]
        faithful = _table(
            f"Map quality: faithfulness{where}", rows, METRICS.in_table("maps"), group,
            [f"p = the deployed network's probability of the explained class "
             f"({_values(deletion, 'class', 'ground-truth class')}). Deletion / insertion AUC: p "
             f"as pixels leave / enter in map order, {_values(deletion, 'steps')} steps, deletion "
             f"towards {_values(deletion, 'substrate', _values(deletion, 'baseline'))}, insertion "
             f"from {_values(insertion, 'substrate', _values(insertion, 'baseline'))} "
             "(bench.tasks.faithfulness.deletion_insertion). ROAD: change of p after noisy linear "
             f"imputation of the most (MoRF) / least (LeRF) relevant pixels, percentiles "
             f"{_values(road, 'percentiles')}, combined = (LeRF − MoRF) / 2 "
             "(pytorch_grad_cam.metrics.road). Average Drop / Increase in Confidence: p on the "
             "image multiplied by the map (pytorch_grad_cam.metrics.cam_mult_image). " + shared])
        tables += [t for t in (localization, faithful) if t is not None]
    return tables


def _first_seed_galleries(group: Group) -> list[tuple[str, int, str]]:
    """(method, seed, stored path) of each method's maps gallery, from its first seed."""
    seeds = dict(zip(group.runs["id"], zip(group.runs["method"], group.runs["seed"])))
    found: dict[str, tuple[int, str]] = {}
    for task in group.task_runs:
        path = (task["artifacts"] or {}).get("gallery")
        if task_name(task["task"]) != "maps" or not path or task["run_id"] not in seeds:
            continue
        method, seed = seeds[task["run_id"]]
        if method not in found or seed < found[method][0]:
            found[method] = (seed, str(path))
    return [(m, *found[m]) for m in group.methods if m in found]


def _draw_gallery(arrays: Any, plot: Plotter, stem: str, title: str, caption: str) -> Figure:
    images, maps = arrays["images"].astype(np.float32), arrays["maps"]
    sources, available = [str(s) for s in arrays["sources"]], arrays["available"]
    names = [str(c) for c in arrays["class_names"]]
    count = len(images)
    fig, axes = plot.new(ncols=count, nrows=1 + len(sources), width=1.05 * count + 1.2,
                         height=1.05 * (1 + len(sources)) + 0.4)
    axes = np.asarray(axes).reshape(1 + len(sources), count)
    cmap = "gray" if images.ndim == 3 else None
    for col in range(count):
        label, guess = int(arrays["labels"][col]), int(arrays["predicted"][col])
        axes[0, col].set_title(f"{names[label]}\npred: {names[guess]}", fontsize=7)
        for row in range(1 + len(sources)):
            ax = axes[row, col]
            ax.imshow(images[col], cmap=cmap)
            if row and available[row - 1]:
                ax.imshow(maps[row - 1, col] / 255.0, cmap="jet", alpha=0.5, vmin=0, vmax=1)
            elif row:
                ax.text(0.5, 0.5, NOT_AVAILABLE, transform=ax.transAxes, ha="center", va="center",
                        color="white", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
    for row, name in enumerate(["input"] + sources):
        axes[row, 0].set_ylabel(name, fontsize=8)
    return plot.save(fig, stem, title, caption)


def maps_galleries(group: Group, plot: Plotter) -> list[Block]:
    """One gallery per method: the same test images, a row per map source."""
    blocks: list[Block] = []
    out_dir = plot.directory.parent
    with sns.axes_style("white"), mpl.rc_context(STYLE):
        for method, seed, stored in _first_seed_galleries(group):
            title = f"Map gallery: {method}, seed {seed}"
            path = resolve_artifact(out_dir, stored)
            if path is None:
                blocks.append(Paragraph(f"{title}: file {stored} not found."))
                continue
            with np.load(path, allow_pickle=False) as arrays:
                stem = f"{group.slug}-maps-{re.sub(r'[^a-z0-9.]+', '-', method.lower()).strip('-')}"
                blocks.append(_draw_gallery(
                    arrays, plot, stem, title,
                    f"The same test images under every map source of {method} (seed {seed}): "
                    "the input, then each source's map (bicubic-resized, min-max normalised, "
                    "jet, alpha 0.5) over it; titles: ground truth and prediction."))
    return blocks


def maps_blocks(group: Group, plot: Plotter) -> list[Block]:
    """The map-quality tables and galleries of a group (nothing when it has no maps task)."""
    return [*maps_tables(group), *maps_galleries(group, plot)]
