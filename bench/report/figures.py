"""The report's figures (seaborn on matplotlib's object API, no pyplot state), each written as PNG
and SVG under ``figures/``: the forest plot of the headline comparisons, accuracy against cost
(GMACs and training-step cost), training-step cost, latency, WSOL metrics and the per-epoch
training curves. Means and error bars are read from
the group's summary frame (``bench.report.results.summary_frame``, what ``bench.results`` and
``bench results --format csv`` give), so figures, tables and notebooks show one set of numbers;
curve bands are seaborn's seeded bootstrap intervals. Every method keeps its palette colour and its
place in the order."""
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
from bench.report.conclusions import headline_results
from bench.report.document import Figure
from bench.report.stats import (CONFIDENCE, DEFAULT_INTERVAL, MIN_VERDICT_SEEDS, POWER, SEED,
                                Estimate)

STYLE = {"svg.hashsalt": "bench-report", "svg.fonttype": "path", "font.size": 9,
         "axes.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 8}
CURVES = [("train_loss", "training loss"), ("train_top1", "training top-1 (%)"),
          ("test_top1", "test top-1 (%)"), ("holdout_top1", "holdout top-1 (%)"),
          ("lr", "learning rate")]
# Curves are stored by epoch from 1 (after epoch 1; the learning rate during epoch 1); the holdout
# curve starts before training, so its x is the stored epoch - 1: epochs trained.
FROM_EPOCH_0 = ("holdout_top1",)


class Plotter:
    """Makes figures in the report style and saves them, as PNG and SVG, under ``directory``;
    intervals as the tables compute them (``interval``, ``power``)."""

    def __init__(self, directory: Path, palette: dict[str, str], interval: str = DEFAULT_INTERVAL,
                 power: float = POWER) -> None:
        self.directory = directory
        self.palette = palette
        self.interval = interval
        self.power = power

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


def estimates(summary: pd.DataFrame, metric: str, setting: str = "") -> dict[str, Estimate]:
    """Per method, the mean over seeds and its interval of one metric (and setting), read from a
    summary frame."""
    rows = summary[(summary["metric"] == metric) & (summary["setting"] == setting)]
    return {r.method: Estimate(float(r.mean), int(r.n),
                               None if pd.isna(r.ci_low) else float(r.ci_low),
                               None if pd.isna(r.ci_high) else float(r.ci_high))
            for r in rows.itertuples() if not pd.isna(r.mean)}


def _bars(ax: Axes, group: Group, summary: pd.DataFrame, metric: str, palette: dict[str, str],
          ylabel: str, setting: str = "") -> None:
    """One bar per method: the mean over seeds, with its 95% interval when there are several."""
    found = estimates(summary, metric, setting)
    order = [m for m in group.methods if m in found]
    means = [found[m] for m in order]
    ax.bar(order, [e.mean for e in means], color=[palette[m] for m in order])
    ax.errorbar(order, [e.mean for e in means], yerr=_yerr(means), fmt="none",
                ecolor="#222222", capsize=3, linewidth=1)
    ax.set_xlabel("")
    ax.set_ylabel(ylabel)
    ax.tick_params(axis="x", labelrotation=30)
    for label in ax.get_xticklabels():
        label.set_horizontalalignment("right")


def _metric(group: Group, metric: str) -> pd.DataFrame:
    rows = group.records[group.records["metric"] == metric]
    return rows.dropna(subset=["value"])


def accuracy_vs_cost(group: Group, summary: pd.DataFrame, plot: Plotter) -> Optional[Figure]:
    """Top-1 (mean with its 95% interval) against deployed GMACs and against the training-step
    cost: one labelled point per method and panel."""
    top1 = estimates(summary, "top1")
    gmacs = "gmacs_all" if len(_metric(group, "gmacs_all")) else "gmacs"
    panels = [(metric, label) for metric, label in (
        (gmacs, "GMACs of the deployed network (" + ("incl. element-wise ops)" if gmacs == "gmacs_all"
                                                     else "fvcore default ops)")),
        ("train_step_ratio", f"training-step time (x {BASELINE})")) if len(_metric(group, metric))]
    if not top1 or not panels:
        return None
    fig, axes = plot.new(ncols=len(panels), width=5.2 * len(panels) + 1.6)
    for ax, (metric, xlabel) in zip(np.atleast_1d(axes), panels):
        cost = estimates(summary, metric)
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


def training_step(group: Group, summary: pd.DataFrame, plot: Plotter) -> Optional[Figure]:
    """Training-step cost per method: the ratio to GAP-FC when stored, else milliseconds."""
    data = _metric(group, "train_step_ratio")
    ylabel = f"training step ({data['unit'].iloc[0]})" if len(data) else ""
    if not len(data):
        data = _metric(group, "train_step_ms")
        ylabel = "training step (ms)"
    if not len(data):
        return None
    fig, ax = plot.new()
    _bars(ax, group, summary, data["metric"].iloc[0], plot.palette, ylabel)
    if data["metric"].iloc[0] == "train_step_ratio":
        ax.axhline(1.0, color=plot.palette.get(BASELINE, "#3a3a3a"), linewidth=0.8, linestyle="--")
    return plot.save(fig, f"{group.slug}-training-step", "Training-step cost",
                "Time of one training step (forward, backward, update) of the training network; "
                "training-only methods cost here, not at inference.")


def latency(group: Group, summary: pd.DataFrame, plot: Plotter) -> Optional[Figure]:
    """Inference latency of the deployed network, one panel per measured setting."""
    data = _metric(group, "latency_ms")
    if not len(data):
        return None
    settings = list(dict.fromkeys(data["setting"]))
    fig, axes = plot.new(ncols=len(settings))
    for ax, setting in zip(np.atleast_1d(axes), settings):
        _bars(ax, group, summary, "latency_ms", plot.palette,
              f"latency ({data['unit'].iloc[0]})", setting)
        ax.set_title(setting)
    return plot.save(fig, f"{group.slug}-latency", "Inference latency",
                "Latency of the deployed network (noisy on shared machines; compare within one run).")


def wsol_bars(group: Group, summary: pd.DataFrame, plot: Plotter) -> Optional[Figure]:
    """Every WSOL metric side by side, one bar per method (95% intervals over seeds)."""
    columns = [c for c in METRICS.in_table("wsol") if len(_metric(group, c.name))]
    if not columns:
        return None
    results = {c.name: estimates(summary, c.name) for c in columns}
    methods = [m for m in group.methods if any(m in r for r in results.values())]
    fig, ax = plot.new(width=max(6.0, 0.25 * len(columns) * len(methods) + 2))
    width = 0.8 / max(len(methods), 1)
    for k, method in enumerate(methods):
        xs = [i - 0.4 + width * (k + 0.5) for i, c in enumerate(columns)
              if method in results[c.name]]
        means = [results[c.name][method] for c in columns if method in results[c.name]]
        ax.bar(xs, [e.mean for e in means], width=width, color=plot.palette[method])
        ax.errorbar(xs, [e.mean for e in means], yerr=_yerr(means), fmt="none",
                    ecolor="#222222", capsize=1.5, linewidth=0.8)
    ax.set_xticks(range(len(columns)), [c.label for c in columns], rotation=20)
    ax.set_xlabel("")
    ax.set_ylabel("%")
    _legend(fig, methods, plot.palette)
    return plot.save(fig, f"{group.slug}-wsol", "Localization metrics",
                     "WSOL metrics (%) per method, mean over seeds with 95% confidence intervals.")


def training_curves(group: Group, summary: pd.DataFrame, plot: Plotter) -> Optional[Figure]:
    """Per-epoch training loss, training, test and holdout top-1 (the learning-speed curve, from
    before training), learning rate (mean and 95% interval over seeds, seaborn's seeded
    bootstrap, from the stored curves rather than ``summary``)."""
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


def forest(group: Group, plot: Plotter) -> Optional[Figure]:
    """The difference to the baseline with its 95% interval, per method (rows) and headline
    metric (panels): the standard figure for comparisons against a reference. A difference
    without an interval (one paired seed) is a hollow marker."""
    results = headline_results(group, plot.interval, plot.power)
    if not results:
        return None
    methods = [m for m in group.methods if any(m in r.comparisons for r in results)]
    fig, axes = plot.new(ncols=len(results), width=max(6.0, 3.2 * len(results) + 1.6),
                         height=0.9 + 0.32 * len(methods))
    for ax, result in zip(np.atleast_1d(axes), results):
        for row, method in enumerate(methods):
            c = result.comparisons.get(method)
            if c is None or c.difference.n == 0:
                continue
            d = c.difference
            colour = plot.palette[method]
            if d.low is not None:
                ax.errorbar(d.mean, row, xerr=[[d.mean - d.low], [d.high - d.mean]], fmt="o",
                            color=colour, ecolor=colour, capsize=3, markersize=6)
            else:
                ax.plot(d.mean, row, "o", markerfacecolor="white", color=colour, markersize=6)
        ax.axvline(0.0, color=plot.palette.get(BASELINE, "#3a3a3a"), linewidth=0.8, linestyle="--")
        ax.xaxis.set_major_locator(MaxNLocator(nbins=5))
        ax.set_yticks(range(len(methods)), methods if ax is np.atleast_1d(axes)[0] else [])
        ax.set_ylim(len(methods) - 0.5, -0.5)
        ax.set_xlabel(f"Δ {result.info.label} ({result.delta_unit})".replace(" ()", ""))
        ax.set_title(result.info.label)
    return plot.save(fig, f"{group.slug}-forest", f"Differences to {BASELINE}",
                     f"Each method's mean difference to {BASELINE}, paired by seed, with its "
                     f"{CONFIDENCE:.0%} confidence interval ({plot.interval}), one panel per "
                     f"headline metric; dashed line: no difference. Verdicts (Holm-corrected, "
                     f"from {MIN_VERDICT_SEEDS} paired seeds) are in the verdict table.")


FIGURES = [accuracy_vs_cost, training_step, latency, wsol_bars, training_curves]


def group_figures(group: Group, summary: pd.DataFrame, plot: Plotter) -> list[Figure]:
    """Every figure that the group's stored metrics allow; ``summary``: the group's summary frame
    (``bench.report.results.summary_frame``)."""
    figures = []
    with sns.axes_style("whitegrid"), mpl.rc_context(STYLE):
        for build in FIGURES:
            figure = build(group, summary, plot)
            if figure is not None:
                figures.append(figure)
    return figures
