"""The metric catalogue: every number the suite stores, described once.

Each entry says what a metric is (name, task, unit, label), which way is better, where the report
shows it, how many decimals it gets, how the regression gate treats it (``exact``, within a
``tolerance`` of the baseline, or not at all) and, for cost figures, the tool and network that
measure it. Tables, figures, the CLI, the profiler and the gate read this table; adding a metric is
one ``METRICS.add(...)`` line.

Metric names may carry a source after ``@`` (``maxboxacc_v2@gradcam``: the same metric computed on
another map); ``METRICS.get`` resolves them to their base entry. ``Metric`` and ``TaskResult`` are
the values themselves, as a task returns them and the store records them.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

HIGHER, LOWER = "higher", "lower"  # which direction is better
EXACT, TOLERANCE, NOT_GATED = "exact", "tolerance", "none"  # how the regression gate compares


@dataclass
class Metric:
    """One stored number: name, value and unit; ``extra`` records how it was obtained."""

    name: str
    value: float
    unit: str
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class TaskResult:
    """What a task returns and the store records: metrics, per-epoch curves, files written."""

    metrics: list[Metric] = field(default_factory=list)
    curves: dict[str, list[float]] = field(default_factory=dict)  # name -> value per epoch
    artifacts: dict[str, str] = field(default_factory=dict)  # name -> path of a file written


@dataclass(frozen=True)
class MetricInfo:
    """One metric: what it is, how it reads and how it is gated."""

    name: str
    task: str
    unit: str
    label: str
    direction: Optional[str] = None  # HIGHER, LOWER or None (no better side: a measurement)
    table: str = "other"  # the report table that shows it: accuracy, wsol, compute, time, ...
    gate: str = NOT_GATED  # EXACT, TOLERANCE or NOT_GATED
    # default tolerance (in ``unit``) when gate is TOLERANCE; None: gated only where the baseline
    # file gives one
    tolerance: Optional[float] = None
    digits: Optional[int] = None  # decimals; None: by unit and magnitude (``decimals``)
    headline: int = 0  # position among the summary table's columns (0: not shown there)
    tool: str = ""  # how the value is obtained (stored with each value for cost figures)
    network: str = ""  # which network, in which mode, the tool measures

    def header(self, setting: str = "") -> str:
        """The column header: label, optional setting, unit."""
        where = f" [{setting}]" if setting else ""
        named = re.search(rf"(?<!\w){re.escape(self.unit)}(?!\w)", self.label)  # "GMACs, ..."
        unit = f" ({self.unit})" if self.unit and not named else ""
        return f"{self.label}{where}{unit}"

    def better(self, a: float, b: float) -> bool:
        """Whether ``a`` is strictly better than ``b`` (False for metrics without a direction)."""
        return (a > b) if self.direction == HIGHER else (a < b) if self.direction == LOWER else False


class Catalogue:
    """Metric entries by name, in the order they were added."""

    def __init__(self) -> None:
        self._entries: dict[str, MetricInfo] = {}

    def add(self, name: str, task: str, unit: str, label: str, **fields: object) -> MetricInfo:
        if name in self._entries:
            raise ValueError(f"metric {name!r} is catalogued twice")
        info = MetricInfo(name, task, unit, label, **fields)  # type: ignore[arg-type]
        if info.gate == TOLERANCE and info.direction is None:
            raise ValueError(f"metric {name!r}: a tolerance gate needs a better direction")
        self._entries[name] = info
        return info

    def get(self, name: str) -> Optional[MetricInfo]:
        """The entry of ``name`` (``metric@source`` -> ``metric``), or None if not catalogued."""
        return self._entries.get(name.split("@", 1)[0])

    def __iter__(self) -> Iterator[MetricInfo]:
        return iter(self._entries.values())

    def in_table(self, table: str) -> list[MetricInfo]:
        return [m for m in self if m.table == table]

    def headline(self) -> list[MetricInfo]:
        """The summary table's metrics, in column order."""
        return sorted((m for m in self if m.headline), key=lambda m: m.headline)


def decimals(value: float, unit: str) -> int:
    """Digits after the point: 2 for percentages, 0 for counts, else about 4 significant digits."""
    if unit in ("%", "pp"):
        return 2
    if unit == "count":
        return 0
    magnitude = abs(value)
    if magnitude >= 1000:
        return 0
    if magnitude == 0 or not math.isfinite(magnitude):
        return 2
    return max(1, 3 - int(math.floor(math.log10(magnitude))))


METRICS = Catalogue()
_add = METRICS.add

# accuracy task
_add("top1", "accuracy", "%", "top-1", direction=HIGHER, table="accuracy", gate=TOLERANCE,
     tolerance=2.0, headline=1)
_add("top5", "accuracy", "%", "top-5", direction=HIGHER, table="accuracy", gate=TOLERANCE,
     tolerance=2.0, headline=2)
_add("test_loss", "accuracy", "nats", "test loss", direction=LOWER, table="accuracy",
     gate=TOLERANCE)

# accuracy task, learning speed: derived by the report from each run's holdout top-1 curve
# (bench/report/learning.py); epochs_to_90 is paired with GAP-FC's run of the same seed
_add("learning_auc", "accuracy", "%", "learning AUC", direction=HIGHER,
     table="learning")
_add("epochs_to_90", "accuracy", "epochs", "epochs to 90% of GAP-FC", direction=LOWER,
     table="learning", digits=2)

# wsol task (WSOL.md); the gate's 5 pp default covers their larger seed spread
_WSOL = dict(direction=HIGHER, table="wsol", gate=TOLERANCE, tolerance=5.0)
_add("gt_known_loc", "wsol", "%", "GT-known Loc", headline=4, **_WSOL)
_add("top1_loc", "wsol", "%", "Top-1 Loc", headline=5, **_WSOL)
_add("top5_loc", "wsol", "%", "Top-5 Loc", **_WSOL)
_add("maxboxacc_v2", "wsol", "%", "MaxBoxAccV2", headline=3, **_WSOL)
for _delta in (30, 50, 70):
    _add(f"maxboxacc_{_delta}", "wsol", "%", f"MaxBoxAcc δ={_delta}%", **_WSOL)
_add("maxboxacc_v1", "wsol", "%", "MaxBoxAcc V1", **_WSOL)
_add("pxap", "wsol", "%", "PxAP", headline=6, **_WSOL)

# maps task: faithfulness of a map (bench/tasks/faithfulness.py), stored as ``name@source`` beside
# the wsol metrics of each source; p = probability of the ground-truth class
_MAPS = dict(table="maps", digits=3)
_add("deletion_auc", "maps", "p", "Deletion AUC", direction=LOWER, **_MAPS)
_add("insertion_auc", "maps", "p", "Insertion AUC", direction=HIGHER, **_MAPS)
_add("road_morf", "maps", "Δp", "ROAD MoRF", direction=LOWER, **_MAPS)
_add("road_lerf", "maps", "Δp", "ROAD LeRF", direction=HIGHER, **_MAPS)
_add("road_combined", "maps", "Δp", "ROAD combined", direction=HIGHER, **_MAPS)
_add("avg_drop", "maps", "%", "Average Drop", direction=LOWER, table="maps")
_add("increase_in_confidence", "maps", "%", "Increase in Confidence", direction=HIGHER,
     table="maps")

# cost task (COST.md): counts are exact; memory figures are gated where a baseline gives a
# tolerance; timings never (too noisy)
_DEPLOYED, _EVAL = "deployed network", "deployed network, eval"
_TRAINING = "training network, train mode, one training_loss call"
_STEP = "one training step (fwd+bwd+SGD)"
_add("params", "cost", "count", "params", table="compute", gate=EXACT, headline=7,
     tool="exact parameter count", network=_DEPLOYED)
_add("params_added", "cost", "count", "added params", table="compute", gate=EXACT,
     tool="params minus gap-fc's on the same backbone", network=_DEPLOYED)
_add("params_train", "cost", "count", "training-network params", table="compute", gate=EXACT,
     tool="exact parameter count", network="training network")
_add("gmacs", "cost", "GMACs", "GMACs, fvcore default ops", table="compute", gate=EXACT,
     headline=8, tool="fvcore FlopCountAnalysis, default op set (jit trace)", network=_EVAL)
_add("gmacs_all", "cost", "GMACs", "GMACs, incl. element-wise ops", table="compute", gate=EXACT,
     headline=9, tool="fvcore FlopCountAnalysis + bench element-wise/reduction rules",
     network=_EVAL)
_add("gmacs_reference", "cost", "GMACs", "GMACs as the authors' code runs it", table="compute",
     gate=EXACT, tool="fvcore FlopCountAnalysis, default op set (jit trace)",
     network="the authors' inference path (MethodNet.reference_network), eval; only methods "
             "whose reference code computes more than the deployed network")
_add("gmacs_train", "cost", "GMACs", "training GMACs", table="compute", gate=EXACT,
     tool="torch FlopCounterMode / 2 + bench element-wise/reduction rules",
     network="training network, train mode, one training_loss call (forward only)")
_add("memory_access_mb", "cost", "MB", "memory traffic", direction=LOWER, table="compute",
     gate=TOLERANCE,
     tool="TorchDispatchMode: bytes read and written by every operator",
     network="deployed network, eval, no_grad")
_add("saved_activations_mb", "cost", "MB", "saved activations", direction=LOWER, table="compute",
     gate=TOLERANCE,
     tool="saved_tensors_hooks, one per storage, parameters excluded", network=_TRAINING)
_add("peak_memory_mb", "cost", "MB", "peak CUDA memory", direction=LOWER, table="compute",
     tool="torch.cuda.max_memory_allocated", network=_STEP)
_add("latency_ms", "cost", "ms", "latency", direction=LOWER, table="time", headline=10,
     tool="torch.utils.benchmark Timer, median over blocks", network="deployed network, eval, no_grad")
_add("latency_batch_ms", "cost", "ms", "latency (batch)", direction=LOWER, table="time",
     tool="torch.utils.benchmark Timer, median over blocks", network="deployed network, eval, no_grad")
_add("train_step_ms", "cost", "ms", "training step", direction=LOWER, table="time",
     tool="torch.utils.benchmark, interleaved with gap-fc, median", network=_STEP)
_add("train_step_ratio", "cost", "x gap-fc", "training step ratio", direction=LOWER, table="time",
     headline=11, tool="median of per-pair ratios, interleaved with gap-fc", network=_STEP)

# accuracy task, shown with the timings (catalogue order is column order)
_add("train_time", "accuracy", "s", "training time", table="time", headline=12)
_add("train_throughput", "accuracy", "images/s", "training throughput", direction=HIGHER,
     table="time")
