"""The cost task: parameters, MACs, memory and time of a run's method at its dataset's input size.

It needs no training: the figures depend only on the architecture, so they are measured on a freshly
built network (``bench.profiling.profile_methods``). Each metric carries its unit and, in ``extra``,
the tool, network/mode, input size, batch size, dtype and device it was measured with. Training
batches are CutMix batches when the run's recipe uses CutMix (the methods that train differently
on them then pay for it).

Task options (``ctx.options``, strings or values): ``batch_size`` (8: the batch of the memory
figures, of the second latency and of the training step), ``train_step`` (true: time training
steps interleaved with the baseline), ``threads`` (0: torch's current thread count), ``pairs`` (5
method/baseline repetition pairs), ``min_run_time`` (1.0 s per latency) and, on CUDA,
``channels_last`` (false), ``amp`` ("": none; float16 or bfloat16) and ``compile`` ("": none; a
torch.compile mode or "default").
"""
from __future__ import annotations

from typing import Any

from bench.errors import BenchError
from bench.profiling import FIGURES, figure_settings, profile_methods
from bench.registry import TASKS, coerce_option
from bench.tasks.base import Metric, RunContext, Task, TaskResult

OPTIONS: dict[str, Any] = {"batch_size": 8, "train_step": True, "threads": 0, "pairs": 5,
                           "min_run_time": 1.0, "channels_last": False, "amp": "", "compile": ""}


def task_options(given: dict[str, Any]) -> dict[str, Any]:
    """The task's options: defaults overridden by ``given`` (text parsed to the default's type)."""
    options = dict(OPTIONS)
    for key, value in given.items():
        key = key.replace("-", "_")
        if key not in OPTIONS:
            raise BenchError(f"unknown option {key!r} for task 'cost'; valid: {', '.join(OPTIONS)}")
        if isinstance(value, str):
            value = coerce_option("task", "cost", key, value, OPTIONS[key])
        options[key] = value
    return options


class CostTask(Task):
    name = "cost"
    needs_training = False

    def run(self, ctx: RunContext) -> TaskResult:
        opts = task_options(ctx.options)
        row = profile_methods([str(ctx.method)], str(ctx.backbone), ctx.data.input_size,
                              ctx.data.num_classes, ctx.data.in_channels,
                              batch_size=opts["batch_size"], device=str(ctx.device),
                              train_step=opts["train_step"], threads=opts["threads"] or None,
                              channels_last=opts["channels_last"], amp_dtype=opts["amp"] or None,
                              compile_mode=opts["compile"] or None, cutmix=ctx.recipe.cutmix > 0,
                              min_run_time=opts["min_run_time"], train_pairs=opts["pairs"],
                              seed=ctx.seed)[0]
        metrics = [Metric(name, float(row[name]), unit, figure_settings(name, row))
                   for name, (unit, _, _) in FIGURES.items() if name in row]
        return TaskResult(metrics)


TASKS.add("cost", CostTask(), "parameters, GMACs, memory traffic, activation memory, latency and "
          "training-step time (vs the baseline), each with its unit and settings", order=20)
