"""The task interface: a task reads a run's context (its trained model, data and settings) and
returns metrics, each with a unit, which the suite stores."""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from bench.data.base import DataBundle
from bench.methods.base import MethodNet
from bench.presets import Recipe
from bench.registry import Spec


@dataclass
class Metric:
    """One stored number: name, value and unit; ``extra`` records how it was obtained."""

    name: str
    value: float
    unit: str
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class TaskResult:
    metrics: list[Metric] = field(default_factory=list)
    curves: dict[str, list[float]] = field(default_factory=dict)  # name -> value per epoch
    artifacts: dict[str, str] = field(default_factory=dict)  # name -> path of a file written (figures)


@dataclass
class RunContext:
    """What a task sees. ``model`` is the trained training network (for tasks that need training)."""

    method: Spec
    backbone: Spec
    data: DataBundle
    recipe: Recipe
    seed: int
    device: torch.device
    out_dir: Path
    run_id: int
    model: Optional[MethodNet] = None
    options: dict[str, Any] = field(default_factory=dict)  # task options from the command line


class Task(abc.ABC):
    """A named measurement. ``needs_training``: whether ``run`` needs the trained model."""

    name: str = ""
    needs_training: bool = True

    @abc.abstractmethod
    def run(self, ctx: RunContext) -> TaskResult:
        """Measure and return the metrics of one run."""
