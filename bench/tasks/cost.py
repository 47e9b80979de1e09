"""The cost task: parameters, MACs, memory and time of a run's method at its dataset's input size.

It needs no training: the figures depend only on the architecture, so they are measured on a freshly
built network (``bench.profiling.profile.profile_methods``), once per (method, recipe): with the
first seed. Each metric carries its unit and, in ``extra``, the tool, network/mode, input size,
batch size, dtype and device it was measured with. Training batches are CutMix batches when the
run's recipe uses CutMix (the methods that train differently on them then pay for it).

Options (``cost[batch_size=16,train_step=false]``): ``batch_size`` (the batch of the memory
figures, of the second latency and of the training step), ``train_step`` (time training steps
interleaved with the baseline), ``threads`` (0: torch's current thread count), ``pairs``
(method/baseline repetition pairs), ``min_run_time`` (seconds per latency) and, on CUDA only,
``channels_last``, ``amp`` (none, bf16, fp16) and ``compile`` (none, or a torch.compile mode;
``default`` for the default).
"""
from __future__ import annotations

from typing import Any

from bench.device import amp_dtype
from bench.errors import BenchError
from bench.metrics import METRICS
from bench.profiling.profile import FIGURES, figure_settings, profile_methods
from bench.registry import TASKS
from bench.tasks.base import Metric, RunContext, Task, TaskResult


class CostTask(Task):
    name = "cost"
    needs_training = False
    per_seed = False

    def check(self, options: dict[str, Any]) -> None:
        for key in ("batch_size", "pairs"):
            if options[key] < (2 if key == "pairs" else 1):
                raise BenchError(f"task 'cost': option {key} must be at least "
                                 f"{2 if key == 'pairs' else 1}, got {options[key]}")
        if options["threads"] < 0 or not options["min_run_time"] > 0:
            raise BenchError("task 'cost': option threads must be >= 0 (0: torch's own count) and "
                             f"min_run_time > 0, got {options['threads']}, "
                             f"{options['min_run_time']}")
        amp_dtype(options["amp"], "task 'cost': option amp")

    def run(self, ctx: RunContext) -> TaskResult:
        opts = ctx.options
        compile_mode = None if opts["compile"] in ("", "none") else opts["compile"]
        row = profile_methods([ctx.method], ctx.backbone, ctx.data.input_size,
                              ctx.data.num_classes, ctx.data.in_channels,
                              batch_size=opts["batch_size"], device=ctx.device,
                              train_step=opts["train_step"], threads=opts["threads"] or None,
                              channels_last=opts["channels_last"], amp=opts["amp"],
                              compile_mode=compile_mode, cutmix=ctx.recipe.cutmix > 0,
                              min_run_time=opts["min_run_time"], train_pairs=opts["pairs"],
                              seed=ctx.seed)[0]
        return TaskResult([Metric(name, float(row[name]), METRICS.get(name).unit,
                                  figure_settings(name, row)) for name in FIGURES if name in row])


TASKS.add("cost", CostTask(), "parameters, GMACs, memory traffic, activation memory, latency and "
          "training-step time (vs the baseline), each with its unit and settings", order=20,
          batch_size=8, train_step=True, threads=0, pairs=3, min_run_time=0.25,
          channels_last=False, amp="none", compile="none")
