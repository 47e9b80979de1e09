"""Benchmark: the suite's trainer against a minimal hand-written PyTorch loop, same model and data.

    python benchmarks/trainer_speed.py [--dataset digits-clutter] [--backbone resnet20] [--reps 5]

Both loops train the same freshly seeded GAP-FC model for one epoch per repetition, alternating,
in one process; the minimal loop indexes pre-normalised tensors and does forward, cross-entropy,
backward and SGD step, nothing else (no augmentation, no schedule, no bookkeeping). The trainer's
time excludes its per-epoch evaluation. Prints images/second for each and the ratio of medians.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from bench.build import build_from_specs
from bench.device import synchronize
from bench.plugins import load_all
from bench.presets import PRESETS
from bench.registry import BACKBONES, DATASETS, METHODS, parse_spec
from bench.suite import load_dataset
from bench.train import train


def minimal_epoch(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
                  batch_size: int, lr: float, generator: torch.Generator) -> float:
    """One epoch of the shortest reasonable loop; returns the seconds it took (on CUDA, until its
    queued kernels finish). The order lives on the images' device: indexing CUDA tensors with CPU
    indices would copy them from pageable memory, a stream synchronisation every step."""
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    model.train()
    start = time.perf_counter()
    order = torch.randperm(len(labels), generator=generator).to(images.device)
    for i in range(0, len(labels), batch_size):
        idx = order[i:i + batch_size]
        if len(idx) < 2:
            continue
        loss = torch.nn.functional.cross_entropy(model(images[idx]), labels[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    synchronize(images.device)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="digits-clutter")
    parser.add_argument("--backbone", default="resnet20")
    parser.add_argument("--preset", default="quick")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    load_all()
    torch.set_num_threads(args.threads)
    data = load_dataset(parse_spec(DATASETS, args.dataset), None, False)
    recipe = PRESETS.get(args.preset).obj.replace(epochs=1)
    method, backbone = parse_spec(METHODS, "gap-fc"), parse_spec(BACKBONES, args.backbone)
    images = torch.cat([x for x, _ in data.train.batches(4096, train=False)])
    labels = data.train.labels
    n = len(labels)
    minimal, ours = [], []
    for rep in range(args.reps + 1):  # the first repetition warms up and is discarded
        torch.manual_seed(rep)
        model = build_from_specs(method, backbone, data.num_classes, data.in_channels)
        seconds = minimal_epoch(model, images, labels, recipe.batch_size, recipe.lr,
                                torch.Generator().manual_seed(rep))
        torch.manual_seed(rep)
        model = build_from_specs(method, backbone, data.num_classes, data.in_channels)
        history = train(model, data, recipe, rep, torch.device("cpu"), progress=False)
        if rep:
            minimal.append(n / seconds)
            ours.append(history.images / history.seconds)
    result = {"dataset": args.dataset, "backbone": args.backbone, "batch_size": recipe.batch_size,
              "threads": args.threads, "reps": args.reps,
              "minimal_images_per_s": statistics.median(minimal),
              "trainer_images_per_s": statistics.median(ours),
              "ratio": statistics.median(ours) / statistics.median(minimal)}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"minimal loop: {result['minimal_images_per_s']:.0f} images/s")
        print(f"bench trainer: {result['trainer_images_per_s']:.0f} images/s")
        print(f"trainer / minimal: {result['ratio']:.3f} (median of {args.reps} interleaved epochs, "
              f"{args.threads} threads)")


if __name__ == "__main__":
    main()
