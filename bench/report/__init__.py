"""Reports from the results store: ``report.md``, one self-contained ``report.html`` and the figures
(PNG and SVG) under ``figures/``; and the regression gate (``bench.report.check``)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from bench.report.collect import Group, ReportData, load, resolve_artifact
from bench.report.document import Block, Document, Figure, Image, Paragraph, Section
from bench.report.environment import environment_blocks
from bench.report.figures import Plotter, group_figures
from bench.report.headline import headline_section
from bench.report.html import MIME, render_html
from bench.report.markdown import render_markdown
from bench.report.tables import group_tables

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


def group_section(group: Group, data: ReportData, plot: Plotter) -> Section:
    blocks: list[Block] = [recipe_paragraph(group)]
    blocks += group_tables(group)
    blocks += group_figures(group, plot)
    blocks += artifact_images(group, data.out_dir)
    return Section(group.label, group.slug, blocks, group.methods)


def build_document(data: ReportData) -> Document:
    """The whole report for the store's contents; every table and figure that the data allow."""
    plot = Plotter(data.out_dir / "figures", data.palette)
    headline = headline_section(data.groups)
    sections = [headline] if headline else []
    sections += [group_section(g, data, plot) for g in data.groups]
    if not data.groups:
        sections.append(Section("Results", "results", [Paragraph("No results stored yet.")]))
    sections.append(Section("Environment", "environment", environment_blocks(data.runs)))
    subtitle = (f"{len(data.runs)} runs in {data.out_dir / 'results.sqlite'}, "
                f"{len(data.groups)} dataset/backbone/recipe group(s).")
    return Document("bench report", subtitle, sections, data.palette)


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_report(out_dir: Path) -> ReportFiles:
    """Read the store under ``out_dir`` and write report.md, report.html and figures/ there."""
    out_dir = Path(out_dir)
    doc = build_document(load(out_dir))
    markdown, html = out_dir / "report.md", out_dir / "report.html"
    _write(markdown, render_markdown(doc, out_dir))
    _write(html, render_html(doc))
    figures = [p for s in doc.sections for b in s.blocks if isinstance(b, Figure)
               for p in (b.png, b.svg)]
    return ReportFiles(markdown, html, figures)
