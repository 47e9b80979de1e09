"""The report's figures (seaborn on matplotlib's object API, no pyplot state), each written as PNG
and SVG under ``figures/``: accuracy against cost (GMACs and training-step cost), training-step
cost, latency, WSOL metrics and the per-epoch training curves. Error bars are the 95% confidence
intervals of bench/report/stats.py (the same as in the tables); curve bands are seaborn's seeded
bootstrap intervals. Every method keeps its palette colour and its place in the order."""
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

from bench.metrics import METRICS
from bench.report.collect import BASELINE, Group
from bench.report.conclusions import analyse
from bench.report.document import Figure
from bench.report.stats import SEED, Estimate

STYLE = {"svg.hashsalt": "bench-report", "svg.fonttype": "path", "font.size": 9,
         "axes.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 8}
CURVES = [("train_loss", "training loss"), ("train_top1", "training top-1 (%)"),
          ("test_top1", "test top-1 (%)"), ("holdout_top1", "holdout top-1 (%)"),
          ("lr", "learning rate")]
# Curves are stored by epoch from 1 (after epoch 1; the learning rate during epoch 1); the holdout
# curve starts before training, so its x is the stored epoch - 1: epochs trained.
FROM_EPOCH_0 = ("holdout_top1",)


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


def _yerr(estimates: list[Estimate]) -> np.ndarray:
    """Asymmetric error bars (2, N) from intervals (0 where there is none)."""
    return np.array([[e.mean - e.low if e.low is not None else 0.0 for e in estimates],
                     [e.high - e.mean if e.high is not None else 0.0 for e in estimates]])


def _bars(ax: Axes, group: Group, metric: str, palette: dict[str, str], ylabel: str,
          setting: str = "") -> None:
    """One bar per method: the mean over seeds, with its 95% interval when there are several."""
    result = analyse(group.records, group.methods, metric, setting)
    order = [m for m in group.methods if m in result.estimates]
    estimates = [result.estimates[m] for m in order]
    ax.bar(order, [e.mean for e in estimates], color=[palette[m] for m in order])
    ax.errorbar(order, [e.mean for e in estimates], yerr=_yerr(estimates), fmt="none",
                ecolor="#222222", capsize=3, linewidth=1)
    ax.set_xlabel("")
    ax.set_ylabel(ylabel)
    ax.tick_params(axis="x", labelrotation=30)
    for label in ax.get_xticklabels():
        label.set_horizontalalignment("right")


def _metric(group: Group, metric: str) -> pd.DataFrame:
    rows = group.records[group.records["metric"] == metric]
    return rows.dropna(subset=["value"])


def accuracy_vs_cost(group: Group, plot: Plotter) -> Optional[Figure]:
    """Top-1 (mean with its 95% interval) against deployed GMACs and against the training-step
    cost: one labelled point per method and panel."""
    top1 = analyse(group.records, group.methods, "top1").estimates
    gmacs = "gmacs_all" if len(_metric(group, "gmacs_all")) else "gmacs"
    panels = [(metric, label) for metric, label in (
        (gmacs, "GMACs of the deployed network (" + ("incl. element-wise ops)" if gmacs == "gmacs_all"
                                                     else "fvcore default ops)")),
        ("train_step_ratio", f"training-step time (x {BASELINE})")) if len(_metric(group, metric))]
    if not top1 or not panels:
        return None
    fig, axes = plot.new(ncols=len(panels), width=5.2 * len(panels) + 1.6)
    for ax, (metric, xlabel) in zip(np.atleast_1d(axes), panels):
        cost = analyse(group.records, group.methods, metric).estimates
        methods = [m for m in group.methods if m in top1 and m in cost]
        for method in methods:
            x, y = cost[method].mean, top1[method]
            ax.errorbar(x, y.mean, yerr=_yerr([y]), fmt="o", color=plot.palette[method],
                        ecolor=plot.palette[method], capsize=3, markersize=7)
            ax.annotate(method, (x, y.mean), xytext=(5, 4), textcoords="offset points",
                        fontsize=7.5, color="#333333")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("test top-1 (%)")
    _legend(fig, [m for m in group.methods if m in top1], plot.palette, "o")
    return plot.save(fig, f"{group.slug}-accuracy-vs-cost", "Accuracy vs cost",
                     "Test top-1 accuracy (mean over seeds; error bars: 95% confidence interval) "
                     "against the deployed network's GMACs and against the training-step cost, "
                     "one labelled point per method.")


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
    _bars(ax, group, data["metric"].iloc[0], plot.palette, ylabel)
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
        _bars(ax, group, "latency_ms", plot.palette, f"latency ({data['unit'].iloc[0]})", setting)
        ax.set_title(setting)
    return plot.save(fig, f"{group.slug}-latency", "Inference latency",
                "Latency of the deployed network (noisy on shared machines; compare within one run).")


def wsol_bars(group: Group, plot: Plotter) -> Optional[Figure]:
    """Every WSOL metric side by side, one bar per method (95% intervals over seeds)."""
    columns = [c for c in METRICS.in_table("wsol") if len(_metric(group, c.name))]
    if not columns:
        return None
    results = {c.name: analyse(group.records, group.methods, c.name) for c in columns}
    methods = [m for m in group.methods if any(m in r.estimates for r in results.values())]
    fig, ax = plot.new(width=max(6.0, 0.25 * len(columns) * len(methods) + 2))
    width = 0.8 / max(len(methods), 1)
    for k, method in enumerate(methods):
        xs = [i - 0.4 + width * (k + 0.5) for i, c in enumerate(columns)
              if method in results[c.name].estimates]
        estimates = [results[c.name].estimates[method] for c in columns
                     if method in results[c.name].estimates]
        ax.bar(xs, [e.mean for e in estimates], width=width, color=plot.palette[method])
        ax.errorbar(xs, [e.mean for e in estimates], yerr=_yerr(estimates), fmt="none",
                    ecolor="#222222", capsize=1.5, linewidth=0.8)
    ax.set_xticks(range(len(columns)), [c.label for c in columns], rotation=20)
    ax.set_xlabel("")
    ax.set_ylabel("%")
    _legend(fig, methods, plot.palette)
    return plot.save(fig, f"{group.slug}-wsol", "Localization metrics",
                     "WSOL metrics (%) per method, mean over seeds with 95% confidence intervals.")


def training_curves(group: Group, plot: Plotter) -> Optional[Figure]:
    """Per-epoch training loss, training, test and holdout top-1 (the learning-speed curve, from
    before training), learning rate (mean and 95% interval over seeds, seaborn's seeded
    bootstrap)."""
    curves = group.curves.dropna(subset=["value"]).copy()
    curves.loc[curves["name"].isin(FROM_EPOCH_0), "epoch"] -= 1  # x: epochs trained
    panels = [(n, label) for n, label in CURVES if n in set(curves["name"])]
    if not panels:
        return None
    methods = [m for m in group.methods if m in set(curves["method"])]
    fig, axes = plot.new(ncols=2, nrows=(len(panels) + 1) // 2, width=9, height=3.0 * ((len(panels) + 1) // 2))
    flat = np.atleast_1d(axes).ravel()
    for ax, (name, label) in zip(flat, panels):
        sns.lineplot(data=curves[curves["name"] == name], x="epoch", y="value", hue="method",
                     hue_order=methods, palette=plot.palette, errorbar=("ci", 95), seed=SEED,
                     marker="o", markersize=3,
                     legend=False, ax=ax)
        ax.set_ylabel(label)
        ax.set_xlabel("epoch" if name == "lr" else "epochs trained")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in flat[len(panels):]:
        ax.set_visible(False)
    _legend(fig, methods, plot.palette, "_")
    return plot.save(fig, f"{group.slug}-curves", "Training curves",
                     "Per-epoch curves, mean over seeds (band: 95% bootstrap interval).")


FIGURES = [accuracy_vs_cost, training_step, latency, wsol_bars, training_curves]


def group_figures(group: Group, plot: Plotter) -> list[Figure]:
    """Every figure that the group's stored metrics allow."""
    figures = []
    with sns.axes_style("whitegrid"), mpl.rc_context(STYLE):
        for build in FIGURES:
            figure = build(group, plot)
            if figure is not None:
                figures.append(figure)
    return figures
