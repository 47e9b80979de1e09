"""Learning speed, derived from each run's holdout top-1 curve (measured before training and after
each of its E epochs, bench/train.py), so that a method that starts slower is reported as such
instead of leaking into the accuracy verdict:

- ``learning_auc``: the area under the curve over epochs 0..E (trapezoids between the measured
  points) divided by E, so 0-100 (%); 100 would be a perfect model from the first step.
- ``epochs_to_90``: epochs until the curve, linearly interpolated between measured epochs, first
  reaches 90% of the final holdout top-1 of GAP-FC's run with the same seed in the same
  configuration group (same recipe, dataset, backbone). A run that never reaches it has no value
  (``reached`` false in its stored details) and the learning table says "not reached" for that
  method instead of averaging only the seeds that reached it.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import pandas as pd

CURVE = "holdout_top1"
FRACTION = 0.9  # of the baseline's final holdout top-1


def area(values: Sequence[float]) -> float:
    """Normalised area under a curve measured after 0, 1, ..., E epochs: trapezoids / E."""
    v = np.asarray(values, dtype=float)
    if len(v) < 2:
        raise ValueError("a learning curve needs the value before training and after >= 1 epoch")
    return float(((v[1:] + v[:-1]) / 2).sum() / (len(v) - 1))


def crossing(values: Sequence[float], threshold: float) -> Optional[float]:
    """The first (fractional) epoch at which the piecewise-linear curve through (e, values[e])
    reaches ``threshold``; None when it never does."""
    v = np.asarray(values, dtype=float)
    if v[0] >= threshold:
        return 0.0
    for e in range(1, len(v)):
        if v[e] >= threshold:  # v[e - 1] < threshold <= v[e]
            return e - 1 + (threshold - v[e - 1]) / (v[e] - v[e - 1])
    return None


def learning_records(records: pd.DataFrame, curves: pd.DataFrame, baseline: str) -> pd.DataFrame:
    """Rows for ``learning_auc`` and ``epochs_to_90`` (same columns as ``records``) for every run
    of one configuration group that has a holdout curve and a stored record to describe it;
    ``epochs_to_90`` only where the ``baseline``'s run of the same seed has a curve too."""
    holdout = curves[curves["name"] == CURVE].dropna(subset=["value"])
    if holdout.empty or records.empty:
        return records.iloc[0:0]
    by_run = {run: list(g.sort_values("epoch")["value"]) for run, g in holdout.groupby("run_id")}
    templates = records.drop_duplicates("run_id").set_index("run_id")
    finals = {}
    for run, values in by_run.items():
        if run in templates.index and templates.loc[run, "method"] == baseline:
            finals[int(templates.loc[run, "seed"])] = values[-1]
    rows = []
    for run, values in by_run.items():
        if run not in templates.index or len(values) < 2:
            continue
        base = dict(templates.loc[run], run_id=run, task="accuracy")
        epochs = len(values) - 1
        rows.append(dict(base, metric="learning_auc", value=area(values), unit="%",
                         extra={"split": "holdout", "epochs": epochs}))
        seed = int(base["seed"])
        if seed in finals:
            reached = crossing(values, FRACTION * finals[seed])
            rows.append(dict(base, metric="epochs_to_90", unit="epochs",
                             value=float("nan") if reached is None else reached,
                             extra={"split": "holdout", "reached": reached is not None}))
    return pd.DataFrame(rows, columns=records.columns)


def not_reached(records: pd.DataFrame, method: str) -> Optional[str]:
    """"not reached in k of n seeds" when some of ``method``'s runs never reached the
    ``epochs_to_90`` threshold (their mean would hide it); None otherwise."""
    rows = records[(records["method"] == method) & (records["metric"] == "epochs_to_90")]
    missed = sum(1 for e in rows["extra"] if not e.get("reached", True))
    return f"not reached in {missed} of {len(rows)} seeds" if missed else None
