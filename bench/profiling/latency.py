"""Wall-clock time of inference and of training steps, with torch.utils.benchmark.

Timers (``torch.utils.benchmark.Timer``) run with an explicit thread count (its default is 1)
after warm-up calls; its default timer synchronises the accelerator before reading the clock, so
CUDA times include the queued kernels. A block times several calls and reports their mean; times
are the median and inter-quartile range (IQR) over blocks, in ms.

A training step is forward (``training_loss``), backward and an SGD update (momentum 0.9, weight
decay 1e-4, lr 0.01: the recipe's optimizer family, a small rate so that repeated steps on random
data stay finite). Method and baseline steps are timed interleaved, alternating which goes first,
and compared by the median of the per-pair ratios: both members of a pair share the machine's load
at that moment, and the median discards pairs a load spike hit on one side only.
"""
from __future__ import annotations

import logging
import math
import statistics
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from bench.device import autocast
from bench.methods.base import Batch, MethodNet


@dataclass
class Timing:
    """Median and inter-quartile range in ms, over ``samples`` measured blocks."""

    median_ms: float
    iqr_ms: float
    samples: int


@dataclass
class PairedTiming:
    """Interleaved method and baseline timings, and the median of per-pair ratios."""

    method: Timing
    baseline: Timing
    ratio: float
    pairs: int


def inference_call(model: nn.Module, x: torch.Tensor, amp: str = "none") -> Callable[[], Any]:
    """One forward pass of ``model`` (in eval mode) without autograd, under ``amp``."""
    def run() -> Any:
        with torch.no_grad(), autocast(x.device, amp):
            return model(x)
    return run


def train_step_call(model: MethodNet, batch: Batch, amp: str = "none") -> Callable[[], None]:
    """One training step of ``model``: ``training_loss``, backward, SGD update (gradient scaling
    with fp16 autocast)."""
    device = batch.x.device
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, amp):
            loss = model.training_loss(batch).loss
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    return step


def _not_cuda_home_notice(record: logging.LogRecord) -> bool:
    """False for torch.utils.cpp_extension's import-time "No CUDA runtime is found" warning, noise
    on a CPU-only machine with a CUDA toolkit (nothing here compiles an extension)."""
    return not record.getMessage().startswith("No CUDA runtime is found")


def _timer(fn: Callable[[], Any], threads: int) -> Any:
    # torch.utils.benchmark imports torch.utils.cpp_extension, which logs that warning at import:
    # exactly that message is dropped (the filter is added once), every other one passes.
    extension_log = logging.getLogger("torch.utils.cpp_extension")
    if _not_cuda_home_notice not in extension_log.filters:
        extension_log.addFilter(_not_cuda_home_notice)
    from torch.utils import benchmark

    return benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=threads)


def time_call(fn: Callable[[], Any], threads: int, min_run_time: float = 1.0, warmup: int = 3,
              min_blocks: int = 5, min_block_time: float = 0.05) -> Timing:
    """Time ``fn`` after ``warmup`` calls: blocks of enough calls to last ``min_block_time``, at
    least ``min_blocks`` of them and ``min_run_time`` seconds in all (so that an IQR exists even
    for calls lasting seconds, where ``blocked_autorange`` would time a single block)."""
    timer = _timer(fn, threads)
    timer.timeit(warmup)
    single = timer.timeit(1).median
    number = max(1, math.ceil(min_block_time / max(single, 1e-9)))
    blocks = max(min_blocks, math.ceil(min_run_time / (number * single)))
    return _summary([timer.timeit(number).median for _ in range(blocks)])


def _summary(times: list[float]) -> Timing:
    """Median and IQR (ms) of per-block times in seconds."""
    q1, _, q3 = statistics.quantiles(times, n=4, method="inclusive")
    return Timing(statistics.median(times) * 1e3, (q3 - q1) * 1e3, len(times))


def time_interleaved(method_fn: Callable[[], Any], baseline_fn: Callable[[], Any], threads: int,
                     pairs: int = 5, warmup: int = 2,
                     min_repetition_time: float = 0.2) -> PairedTiming:
    """Alternate repetitions of ``baseline_fn`` and ``method_fn`` (swapping which goes first each
    pair; ``pairs`` >= 2); each repetition runs the same number of calls, enough for the faster
    one to last ``min_repetition_time`` seconds."""
    method_timer, baseline_timer = _timer(method_fn, threads), _timer(baseline_fn, threads)
    single = []
    for timer in (method_timer, baseline_timer):
        timer.timeit(warmup)
        single.append(timer.timeit(1).median)
    number = max(1, math.ceil(min_repetition_time / max(min(single), 1e-9)))
    method_times, baseline_times = [], []
    for i in range(pairs):
        order = [(baseline_timer, baseline_times), (method_timer, method_times)]
        for timer, times in (order if i % 2 == 0 else order[::-1]):
            times.append(timer.timeit(number).median)
    ratio = statistics.median(m / b for m, b in zip(method_times, baseline_times))
    return PairedTiming(_summary(method_times), _summary(baseline_times), ratio, pairs)
