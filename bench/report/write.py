"""Write the report of a results store: ``report.md``, one self-contained ``report.html`` and the
figures (PNG and SVG) under ``figures/``."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import matplotlib as mpl
import seaborn as sns

from bench.report.collect import Group, ReportData, load, resolve_artifact
from bench.report.document import Block, Document, Figure, Image, Paragraph, Section, Table
from bench.report.environment import environment_blocks
from bench.report.figures import STYLE, Plotter, forest, group_figures
from bench.report.headline import headline_section
from bench.report.html import MIME, render_html
from bench.report.maps import maps_blocks
from bench.report.markdown import render_markdown
from bench.report.results import summary_frame
from bench.report.stats import DEFAULT_INTERVAL, POWER
from bench.report.tables import group_tables, verdict_table
from bench.report.tuning import tuning_section

__all__ = ["ReportFiles", "write_report", "build_document"]


@dataclass
class ReportFiles:
    markdown: Path
    html: Path
    figures: list[Path]


def recipe_paragraph(group: Group) -> Paragraph:
    runs = group.runs
    recipe = ", ".join(f"{k}={v}" for k, v in group.recipe.items())
    seeds = ", ".join(str(s) for s in sorted(set(runs["seed"])))
    presets = ", ".join(dict.fromkeys(runs["preset"]))
    return Paragraph(f"Preset {presets}; recipe: {recipe or 'not recorded'}; seeds {seeds}; "
                     f"{len(runs)} runs ({int((runs['status'] == 'complete').sum())} complete).")


def artifact_images(group: Group, out_dir: Path) -> list[Block]:
    """Image files the tasks wrote (e.g. the WSOL gallery): per method, those of its first seed."""
    seeds = dict(zip(group.runs["id"], zip(group.runs["method"], group.runs["seed"])))
    found: dict[tuple[str, str, str], tuple[int, Path | None, str]] = {}
    for task in group.task_runs:
        method, seed = seeds[task["run_id"]]
        for name, path in (task["artifacts"] or {}).items():
            if Path(str(path)).suffix.lower() not in MIME:
                continue
            key = (task["task"], name, method)
            if key not in found or seed < found[key][0]:
                found[key] = (seed, resolve_artifact(out_dir, str(path)), str(path))
    order = {m: i for i, m in enumerate(group.methods)}
    blocks: list[Block] = []
    for task, name, method in sorted(found, key=lambda k: (k[0], k[1], order[k[2]])):
        seed, path, stored = found[(task, name, method)]
        title = f"{name.replace('_', ' ').capitalize()} ({task}): {method}, seed {seed}"
        if path is None:
            blocks.append(Paragraph(f"{title}: file {stored} not found."))
        else:
            blocks.append(Image(title, f"Written by the {task} task for {method} (seed {seed}).", path))
    return blocks


def seeds_text(group: Group) -> str:
    counts = sorted(set(group.records[group.records["metric"] == "top1"]
                        .groupby("method")["seed"].nunique()))
    if not counts:
        return "no accuracy results"
    return f"{'-'.join(map(str, (counts[0], counts[-1]))) if len(counts) > 1 else counts[0]} seeds"


def summary_section(data: ReportData, plot: Plotter) -> Section:
    """The conclusions first: per group, the verdict table (each method against the baseline on
    the headline metrics, paired by seed, Holm-corrected, with the minimum detectable difference)
    and the forest plot, from the same statistics as the tables."""
    blocks: list[Block] = []
    for group in data.groups:
        table = verdict_table(group, plot.interval, plot.power)
        if table is None:
            blocks.append(Paragraph(f"{group.label} ({seeds_text(group)}): no method compared "
                                    "with the baseline yet."))
            continue
        table.title = f"{group.label} ({seeds_text(group)}): verdicts against the baseline"
        blocks.append(table)
        with sns.axes_style("whitegrid"), mpl.rc_context(STYLE):
            figure = forest(group, plot)
        if figure is not None:
            blocks.append(figure)
    if not blocks:
        blocks.append(Paragraph("No results stored yet."))
    return Section("Summary", "summary", blocks)


def time_spent_table(group: Group) -> Table | None:
    """Where the time went: per method, training and each task, summed over its runs."""
    seconds: dict[str, dict[str, float]] = {}
    runs = {r.id: r for r in group.runs.itertuples()}
    for run in runs.values():
        train = getattr(run, "train_seconds", None)
        if train is not None and train == train:
            seconds.setdefault(run.method, {})["training"] = (
                seconds.get(run.method, {}).get("training", 0.0) + train)
    for task in group.task_runs:
        run = runs.get(task["run_id"])
        if run is not None and task.get("seconds") is not None:
            phase = seconds.setdefault(run.method, {})
            phase[task["task"]] = phase.get(task["task"], 0.0) + task["seconds"]
    if not seconds:
        return None
    phases = list(dict.fromkeys(p for m in seconds.values() for p in m))
    methods = [m for m in group.methods if m in seconds]
    rows = [[m] + [f"{seconds[m].get(p, 0.0):,.1f}" for p in phases]
            + [f"{sum(seconds[m].values()):,.1f}"] for m in methods]
    totals = {p: sum(seconds[m].get(p, 0.0) for m in methods) for p in phases}
    grand = sum(totals.values())
    rows.append(["all methods"] + [f"{totals[p]:,.1f} ({100 * totals[p] / grand:.0f}%)"
                                   for p in phases] + [f"{grand:,.1f}"])
    return Table("Where the time went", ["method"] + [f"{p} (s)" for p in phases] + ["total (s)"],
                 rows, methods + [None],
                 ["wall time of each phase, summed over the method's runs (seeds), as stored; "
                  "training time is absent for runs whose weights were loaded from a checkpoint."])


def group_section(group: Group, data: ReportData, plot: Plotter) -> Section:
    blocks: list[Block] = [recipe_paragraph(group)]
    blocks += group_tables(group, plot.interval, plot.power)
    timing = time_spent_table(group)
    if timing is not None:
        blocks.append(timing)
    blocks += group_figures(group, summary_frame([group], plot.interval, plot.power), plot)
    blocks += maps_blocks(group, plot)
    blocks += artifact_images(group, data.out_dir)
    return Section(group.label, group.slug, blocks, group.methods)


def build_document(data: ReportData, interval: str = DEFAULT_INTERVAL,
                   power: float = POWER) -> Document:
    """The whole report for the store's contents; every table and figure that the data allow."""
    plot = Plotter(data.out_dir / "figures", data.palette, interval, power)
    headline = headline_section(data.groups, interval)
    sections = [headline] if headline else []
    sections.append(summary_section(data, plot))
    sections += [group_section(g, data, plot) for g in data.groups]
    with sns.axes_style("whitegrid"), mpl.rc_context(STYLE):
        tuning = tuning_section(data.trials, plot)
    if tuning is not None:
        sections.append(tuning)
    sections.append(Section("Environment", "environment", environment_blocks(data.runs)))
    subtitle = (f"{len(data.runs)} runs in {data.out_dir / 'results.sqlite'}, "
                f"{len(data.groups)} dataset/backbone/recipe group(s).")
    return Document("bench report", subtitle, sections, data.palette)


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_report(out_dir: Path, interval: str = DEFAULT_INTERVAL,
                 power: float = POWER) -> ReportFiles:
    """Read the store under ``out_dir`` and write report.md, report.html and figures/ there;
    ``interval``: how confidence intervals are computed (t or bootstrap); ``power``: of the
    minimum detectable differences."""
    from bench.report.stats import check_interval, check_power

    out_dir = Path(out_dir)
    check_interval(interval)
    check_power(power)
    doc = build_document(load(out_dir), interval, power)
    markdown, html = out_dir / "report.md", out_dir / "report.html"
    _write(markdown, render_markdown(doc, out_dir))
    _write(html, render_html(doc))
    figures = [p for s in doc.sections for b in s.blocks if isinstance(b, Figure)
               for p in (b.png, b.svg)]
    return ReportFiles(markdown, html, figures)
