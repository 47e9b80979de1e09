"""The report's figures (seaborn on matplotlib's object API, no pyplot state), each written as PNG
and SVG under ``figures/``: accuracy vs GMACs, training-step cost, latency, WSOL metrics and the
per-epoch training curves. Every method keeps its palette colour and its place in the order."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import matplotlib as mpl
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure as MplFigure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from bench.report.collect import BASELINE, Group
from bench.report.document import Figure
from bench.metrics import METRICS
from bench.report.tables import seed_values

STYLE = {"svg.hashsalt": "bench-report", "svg.fonttype": "path", "font.size": 9,
         "axes.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 8}
CURVES = [("train_loss", "training loss"), ("train_top1", "training top-1 (%)"),
          ("test_top1", "test top-1 (%)"), ("lr", "learning rate")]


class Plotter:
    """Makes figures in the report style and saves them, as PNG and SVG, under ``directory``."""

    def __init__(self, directory: Path, palette: dict[str, str]) -> None:
        self.directory = directory
        self.palette = palette

    def new(self, ncols: int = 1, nrows: int = 1, width: float = 0.0,
            height: float = 3.6) -> tuple[MplFigure, Any]:
        fig = MplFigure(figsize=(width or max(6.0, 3.6 * ncols), height), layout="constrained")
        return fig, fig.subplots(nrows, ncols, squeeze=True)

    def save(self, fig: MplFigure, stem: str, title: str, caption: str) -> Figure:
        """Write ``fig`` as PNG and SVG (SVG without a date, so reruns give identical files)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        png, svg = self.directory / f"{stem}.png", self.directory / f"{stem}.svg"
        fig.savefig(png, dpi=130)
        fig.savefig(svg, metadata={"Date": None})
        return Figure(title, caption, png, svg)


def _legend(fig: MplFigure, methods: list[str], palette: dict[str, str], marker: str = "s") -> None:
    handles = [Line2D([], [], color=palette[m], marker=marker, linestyle="", markersize=7)
               for m in methods]
    fig.legend(handles, methods, loc="outside right upper", frameon=False)


def _bars(ax: Axes, data: pd.DataFrame, methods: list[str], palette: dict[str, str], ylabel: str) -> None:
    """One bar per method (mean over seeds, sd error bars when there are several)."""
    order = [m for m in methods if m in set(data["method"])]
    sns.barplot(data=data, x="method", y="value", hue="method", order=order, hue_order=order,
                palette=palette, errorbar="sd", legend=False, ax=ax)
    ax.set_xlabel("")
    ax.set_ylabel(ylabel)
    ax.tick_params(axis="x", labelrotation=30)
    for label in ax.get_xticklabels():
        label.set_horizontalalignment("right")


def _metric(group: Group, metric: str) -> pd.DataFrame:
    rows = group.records[group.records["metric"] == metric]
    return rows.dropna(subset=["value"])


def accuracy_vs_gmacs(group: Group, plot: Plotter) -> Optional[Figure]:
    """Top-1 (mean, sd error bars) against deployed GMACs: one point per method."""
    x_metric = "gmacs_all" if len(_metric(group, "gmacs_all")) else "gmacs"
    points = []
    for method in group.methods:
        top1 = seed_values(group.records, method, "top1")
        cost = seed_values(group.records, method, x_metric)
        if top1 and cost:
            points.append((method, float(np.mean(cost)), float(np.mean(top1)),
                           float(np.std(top1, ddof=1)) if len(top1) > 1 else 0.0))
    if not points:
        return None
    fig, ax = plot.new()
    for method, x, y, err in points:
        ax.errorbar(x, y, yerr=err, fmt="o", color=plot.palette[method], ecolor=plot.palette[method],
                    capsize=3, markersize=7, label=method)
        ax.annotate(method, (x, y), xytext=(6, 3), textcoords="offset points", fontsize=8,
                    color="#333333")
    conv = "incl. element-wise ops" if x_metric == "gmacs_all" else "fvcore default ops"
    ax.set_xlabel(f"GMACs of the deployed network ({conv})")
    ax.set_ylabel("test top-1 (%)")
    _legend(fig, [p[0] for p in points], plot.palette, "o")
    return plot.save(fig, f"{group.slug}-accuracy-vs-gmacs", "Accuracy vs compute",
                f"Test top-1 accuracy (mean over seeds, error bars: sample std) against GMACs "
                f"({conv}), one labelled point per method.")


def training_step(group: Group, plot: Plotter) -> Optional[Figure]:
    """Training-step cost per method: the ratio to GAP-FC when stored, else milliseconds."""
    data = _metric(group, "train_step_ratio")
    ylabel = f"training step ({data['unit'].iloc[0]})" if len(data) else ""
    if not len(data):
        data = _metric(group, "train_step_ms")
        ylabel = "training step (ms)"
    if not len(data):
        return None
    fig, ax = plot.new()
    _bars(ax, data, group.methods, plot.palette, ylabel)
    if data["metric"].iloc[0] == "train_step_ratio":
        ax.axhline(1.0, color=plot.palette.get(BASELINE, "#3a3a3a"), linewidth=0.8, linestyle="--")
    return plot.save(fig, f"{group.slug}-training-step", "Training-step cost",
                "Time of one training step (forward, backward, update) of the training network; "
                "training-only methods cost here, not at inference.")


def latency(group: Group, plot: Plotter) -> Optional[Figure]:
    """Inference latency of the deployed network, one panel per measured setting."""
    data = _metric(group, "latency_ms")
    if not len(data):
        return None
    settings = list(dict.fromkeys(data["setting"]))
    fig, axes = plot.new(ncols=len(settings))
    for ax, setting in zip(np.atleast_1d(axes), settings):
        _bars(ax, data[data["setting"] == setting], group.methods, plot.palette,
              f"latency ({data['unit'].iloc[0]})")
        ax.set_title(setting)
    return plot.save(fig, f"{group.slug}-latency", "Inference latency",
                "Latency of the deployed network (noisy on shared machines; compare within one run).")


def wsol_bars(group: Group, plot: Plotter) -> Optional[Figure]:
    """Every WSOL metric side by side, one bar per method (sd error bars over seeds)."""
    columns = METRICS.in_table("wsol")
    labels = {c.name: c.label for c in columns}
    data = group.records[group.records["metric"].isin(labels)]
    data = data.dropna(subset=["value"]).assign(label=lambda d: d["metric"].map(labels))
    if not len(data):
        return None
    order = [c.label for c in columns if c.name in set(data["metric"])]
    methods = [m for m in group.methods if m in set(data["method"])]
    fig, ax = plot.new(width=max(6.0, 0.25 * len(order) * len(methods) + 2))
    sns.barplot(data=data, x="label", y="value", hue="method", order=order, hue_order=methods,
                palette=plot.palette, errorbar="sd", legend=False, ax=ax)
    ax.set_xlabel("")
    ax.set_ylabel("%")
    ax.tick_params(axis="x", labelrotation=20)
    _legend(fig, methods, plot.palette)
    return plot.save(fig, f"{group.slug}-wsol", "Localization metrics",
                "WSOL metrics (%) per method, mean over seeds with sample-std error bars.")


def training_curves(group: Group, plot: Plotter) -> Optional[Figure]:
    """Per-epoch training loss, training and test top-1, learning rate (mean and sd over seeds)."""
    curves = group.curves.dropna(subset=["value"])
    panels = [(n, label) for n, label in CURVES if n in set(curves["name"])]
    if not panels:
        return None
    methods = [m for m in group.methods if m in set(curves["method"])]
    fig, axes = plot.new(ncols=2, nrows=(len(panels) + 1) // 2, width=9, height=3.0 * ((len(panels) + 1) // 2))
    flat = np.atleast_1d(axes).ravel()
    for ax, (name, label) in zip(flat, panels):
        sns.lineplot(data=curves[curves["name"] == name], x="epoch", y="value", hue="method",
                     hue_order=methods, palette=plot.palette, errorbar="sd", marker="o", markersize=3,
                     legend=False, ax=ax)
        ax.set_ylabel(label)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in flat[len(panels):]:
        ax.set_visible(False)
    _legend(fig, methods, plot.palette, "_")
    return plot.save(fig, f"{group.slug}-curves", "Training curves",
                "Per-epoch curves, mean over seeds (band: sample std).")


FIGURES = [accuracy_vs_gmacs, training_step, latency, wsol_bars, training_curves]


def group_figures(group: Group, plot: Plotter) -> list[Figure]:
    """Every figure that the group's stored metrics allow."""
    figures = []
    with sns.axes_style("whitegrid"), mpl.rc_context(STYLE):
        for build in FIGURES:
            figure = build(group, plot)
            if figure is not None:
                figures.append(figure)
    return figures
