"""Benchmark: channels_last and bf16 autocast against fp32 for the default model's training step.

    python benchmarks/cpu_formats.py [--methods gap-fc se[r=4] cbam[r=4]] [--reps 7] [--steps 20]

One thread. For each method and each setting (fp32, channels_last, bf16 autocast, both), a freshly
seeded model trains ``--steps`` steps of the preset's batch size on the preset's data (forward,
the method's training loss, backward, SGD step), as the suite's trainer does them; the settings
alternate within each repetition. Time is CPU time of this process (``time.process_time``), which
another process on the machine disturbs less than wall time. Prints the median seconds per step
and each setting's speed-up over fp32 (> 1: faster), and the final loss of each setting (bf16
changes the numbers).
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch

from bench.api import build_from_specs
from bench.device import autocast
from bench.methods.base import Batch
from bench.plugins import load_all
from bench.presets import PRESETS
from bench.registry import BACKBONES, DATASETS, METHODS, parse_spec
from bench.suite import load_dataset

SETTINGS = {"fp32": (False, "none"), "channels_last": (True, "none"), "bf16": (False, "bf16"),
            "both": (True, "bf16")}


def steps(method: str, data: Any, preset: Any, channels_last: bool, amp: str,
          count: int) -> tuple[float, float]:
    """CPU seconds per training step, and the last loss."""
    torch.manual_seed(0)
    model = build_from_specs(parse_spec(METHODS, method), parse_spec(BACKBONES, preset.backbone),
                             data.num_classes, data.in_channels, data.input_size)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=preset.lr, momentum=0.9)
    model.train()
    generator = torch.Generator().manual_seed(0)
    batches = data.train.batches(preset.batch_size, train=True, generator=generator,
                                 device=torch.device("cpu"))
    loss = float("nan")
    start = None
    for i, (x, y) in enumerate(batches):
        if i == 2:  # two warm-up steps
            start = time.process_time()
        if i == count + 2:
            break
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(torch.device("cpu"), amp):
            out = model.training_loss(Batch(x, y))
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()
        loss = float(out.loss.detach())
    return (time.process_time() - start) / count, loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="quick")
    parser.add_argument("--methods", nargs="+", default=["gap-fc", "se[r=4]", "cbam[r=4]"])
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    load_all()
    torch.set_num_threads(1)
    preset = PRESETS.get(args.preset).obj
    data = load_dataset(parse_spec(DATASETS, preset.dataset), None, False)
    print(f"batch {preset.batch_size}, {args.steps} steps x {args.reps} repetitions, 1 thread, "
          f"torch {torch.__version__}")
    for method in args.methods:
        times: dict[str, list[float]] = {s: [] for s in SETTINGS}
        losses: dict[str, float] = {}
        for _ in range(args.reps):
            for name, (channels_last, amp) in SETTINGS.items():
                seconds, losses[name] = steps(method, data, preset, channels_last, amp, args.steps)
                times[name].append(seconds)
        base = statistics.median(times["fp32"])
        medians = {name: statistics.median(t) for name, t in times.items()}
        print(method + ": " + "; ".join(
            f"{name} {1000 * m:.1f} ms/step ({base / m:.2f}x, loss {losses[name]:.3f})"
            for name, m in medians.items()))


if __name__ == "__main__":
    main()
