"""The report's tuning section (``bench tune``): per study protocol, the budget each method spent
(trials by state, epochs, seconds and CPU/GPU seconds), its best holdout score and the chosen
configuration, and a figure of the best holdout score against the number of trials, from which a
reader sees whether the budget was enough."""
from __future__ import annotations

import json
from typing import Any, Optional

from matplotlib.ticker import MaxNLocator

from bench.report.collect import method_order
from bench.report.document import Block, Figure, Paragraph, Section, Table
from bench.report.figures import Plotter, _legend
from bench.search import best

STATES = ("complete", "pruned", "failed", "interrupted")  # interrupted: spent no budget


def _protocol(config: dict[str, Any]) -> str:
    return (f"{config['dataset']} / {config['backbone']}: sampler {config['sampler']} seed "
            f"{config['sampler_seed']}, select {config['select']}"
            + (", median pruning" if config.get("prune") else ""))


def _budget(trials: list[dict[str, Any]]) -> list[str]:
    states = [t["state"] for t in trials]
    counts = ", ".join(f"{states.count(s)} {s}" for s in STATES if states.count(s))
    epochs = sum(t["epochs"] or 0 for t in trials)
    seconds = sum(t["seconds"] or 0.0 for t in trials)
    device = trials[0]["device"] or "cpu"
    units = sum((t["seconds"] or 0.0) * (1 if device.startswith("cuda") else t["threads"] or 1)
                for t in trials)
    unit = "GPU" if device.startswith("cuda") else "CPU"
    spent = sum(s != "interrupted" for s in states)
    return [f"{spent} ({counts})", f"{epochs}", f"{seconds:,.1f}", f"{units:,.1f} {unit}"]


def _chosen(trial: Optional[dict[str, Any]]) -> str:
    if trial is None:
        return "no complete trial"
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in sorted(trial["params"].items()))


def tuning_section(trials: list[dict[str, Any]], plot: Plotter) -> Optional[Section]:
    """One table and one figure per tuning protocol found in the store; None without trials."""
    if not trials:
        return None
    by_protocol: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for t in trials:
        config = t["study_config"]
        key = json.dumps({k: v for k, v in config.items()
                          if k not in ("method", "method_options", "space")}, sort_keys=True)
        by_protocol.setdefault(key, {}).setdefault(t["method"], []).append(t)
    blocks: list[Block] = []
    for index, (key, studies) in enumerate(by_protocol.items()):
        config = json.loads(key)
        methods = method_order(list(studies))
        budget = max(len(v) for v in studies.values())
        blocks.append(Paragraph(f"{_protocol(config)}; {budget} trials per method, each trained "
                                "with the training seed 0 and scored on the holdout split; the "
                                "best configuration of each method was retrained and tested as "
                                "the tuned runs above."))
        rows = []
        for method in methods:
            ts = studies[method]
            complete = [t for t in ts if t["state"] == "complete" and t["value"] is not None]
            top = max(complete, key=lambda t: (t["value"], -t["number"])) if complete else None
            rows.append([method, *_budget(ts),
                         "—" if top is None else f"{top['value']:.2f} (trial {top['number']})",
                         _chosen(top)])
        blocks.append(Table(f"Tuning budget and choice ({config['dataset']} / "
                            f"{config['backbone']})",
                            ["method", "trials", "epochs", "seconds", "compute seconds",
                             f"best holdout {config['select']}", "chosen configuration"],
                            rows, methods, [f"search space of each method: "
                                            f"{studies[m][0]['study_config']['space']}"
                                            for m in methods]))
        figure = _best_figure(studies, methods, plot, f"tuning-{index}")
        if figure is not None:
            blocks.append(figure)
    return Section("Tuning", "tuning", blocks)


def _best_figure(studies: dict[str, list[dict[str, Any]]], methods: list[str], plot: Plotter,
                 stem: str) -> Optional[Figure]:
    """Best holdout score so far against the number of trials, one line per method."""
    fig, ax = plot.new()
    drawn = []
    for method in methods:
        ts = sorted(studies[method], key=lambda t: t["number"])
        values = [t["value"] if t["state"] == "complete" else None for t in ts]
        running = best(values)
        xs = [i + 1 for i, v in enumerate(running) if v is not None]
        if xs:
            ax.plot(xs, [v for v in running if v is not None], marker="o", markersize=3,
                    color=plot.palette[method])
            drawn.append(method)
    if not drawn:
        return None
    ax.set_xlabel("trials")
    ax.set_ylabel("best holdout score so far")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    _legend(fig, drawn, plot.palette, "o")
    return plot.save(fig, stem, "Best holdout score against the number of trials",
                     "For each method, the best holdout score among its first n trials: a curve "
                     "still rising at the last trial means the budget was not enough.")

