"""The task interface: a task reads a run's context (its trained model, data and settings) and
returns metrics, each with a unit, which the suite stores.

A task is chosen like a method, by a spec with typed options (``wsol[classic_box_rule=all]``); the
options are declared where the task registers itself, parsed once by the registry, checked by
``Task.check`` before anything is written, and handed to ``Task.run`` as ``ctx.options``. Options
that change a task's numbers are part of its identity: ``task_key`` (stored with every result)
tells ``wsol`` and ``wsol[cam_curve_interval=0.05]`` apart, so a rerun with a new value computes
and stores the new task beside the old one. ``output_options`` (where files are written) are not.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from bench.data.base import DataBundle
from bench.methods.base import MethodNet
from bench.metrics import Metric, TaskResult  # noqa: F401 (the task interface's result types)
from bench.presets import Recipe
from bench.registry import TASKS, Spec


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
    history: Optional[dict[str, Any]] = None  # the training run's curves and throughput
    options: dict[str, Any] = field(default_factory=dict)  # the task spec's typed options


class Task(abc.ABC):
    """A named measurement. ``needs_training``: whether ``run`` needs the trained model;
    ``per_seed``: False when the result cannot depend on the seed (measured with the first seed
    only); ``default``: False for an opt-in task, left out of the default task list;
    ``output_options``: options that only say where files go (not part of the identity)."""

    name: str = ""
    needs_training: bool = True
    per_seed: bool = True
    default: bool = True
    output_options: tuple[str, ...] = ()

    def check(self, options: dict[str, Any]) -> None:
        """Refuse option values the task cannot run with (a BenchError naming the option)."""

    @abc.abstractmethod
    def run(self, ctx: RunContext) -> TaskResult:
        """Measure and return the metrics of one run."""


def task_key(spec: Spec) -> str:
    """The stored identity of a task spec: its name and the non-default options that change its
    numbers (``wsol``, ``wsol[cam_curve_interval=0.05]``)."""
    task = TASKS.get(spec.name).obj
    overrides = tuple((k, v) for k, v in spec.overrides if k not in task.output_options)
    return str(Spec(spec.kind, spec.name, spec.options, overrides))


def task_name(key: str) -> str:
    """``wsol[cam_curve_interval=0.05]`` -> ``wsol``."""
    return key.split("[", 1)[0]
