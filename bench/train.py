"""The training loop shared by every method: SGD, warm-up + cosine/step schedule, optional CutMix,
per-epoch curves, and failure on a NaN or diverging loss.

The loop is deliberately as lean as a hand-written one (benchmarks/trainer_speed.py measures it
against one): batches come from in-memory tensors, the loss is read back only every
``check_every`` steps.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch import nn
from tqdm.auto import tqdm

from bench import distributed
from bench.data.base import DataBundle, Split
from bench.device import autocast
from bench.errors import BenchError, RunFailed
from bench.methods.base import Batch, MethodNet
from bench.presets import Recipe


@dataclass
class History:
    """Per-epoch curves of one training run, and its throughput."""

    train_loss: list[float] = field(default_factory=list)
    train_top1: list[float] = field(default_factory=list)
    test_top1: list[float] = field(default_factory=list)
    # holdout top-1 after 0, 1, ..., E epochs (index = epochs trained; 0: before training)
    holdout_top1: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    seconds: float = 0.0  # time in training steps only (per-epoch evaluation excluded)
    images: int = 0
    epochs: int = 0  # epochs trained (fewer than the recipe's when ``on_epoch`` stopped it)


def lr_factor(recipe: Recipe, epoch: float) -> float:
    """Multiplier of the base learning rate at a (fractional) epoch: linear warm-up, then schedule."""
    if epoch < recipe.warmup_epochs:
        return (epoch + 1e-8) / recipe.warmup_epochs
    if recipe.schedule == "cosine":
        span = max(recipe.epochs - recipe.warmup_epochs, 1e-8)
        return 0.5 * (1.0 + math.cos(math.pi * (epoch - recipe.warmup_epochs) / span))
    return recipe.gamma ** sum(epoch >= m for m in recipe.milestones)


def make_batch(x: torch.Tensor, y: torch.Tensor, prob: float,
               generator: torch.Generator, label_smoothing: float = 0.0) -> Batch:
    """A training batch; with probability ``prob`` a CutMix batch: a box of area fraction
    ~ U(0, 1) (beta(1, 1)) from a shuffled copy of the batch pasted into it."""
    if prob <= 0 or torch.rand(1, generator=generator).item() >= prob:
        return Batch(x, y, label_smoothing=label_smoothing)
    _, _, h, w = x.shape
    perm = torch.randperm(len(y), generator=generator).to(x.device)
    cut = math.sqrt(torch.rand(1, generator=generator).item())  # side ratio; area ~ U(0, 1)
    ch, cw = int(h * cut), int(w * cut)
    cy = int(torch.randint(h, (1,), generator=generator))
    cx = int(torch.randint(w, (1,), generator=generator))
    box = (max(cy - ch // 2, 0), min(cy + ch // 2, h), max(cx - cw // 2, 0), min(cx + cw // 2, w))
    return Batch.cutmix(x, y, x[perm], y[perm], box, label_smoothing)


def prepare_model(model: nn.Module, recipe: Recipe, device: torch.device) -> nn.Module:
    """Move to ``device`` and apply the recipe's channels_last and torch.compile settings."""
    model.to(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if recipe.channels_last:
        model.to(memory_format=torch.channels_last)
    if recipe.compile:
        model.backbone.compile()
    return model


def make_optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.SGD:
    return torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                           nesterov=recipe.nesterov and recipe.momentum > 0,
                           weight_decay=recipe.weight_decay)


@torch.no_grad()
def evaluate(model: nn.Module, split: Split, batch_size: int,
             device: torch.device) -> dict[str, float]:
    """Top-1 and top-5 accuracy (%) and mean cross-entropy of ``model``'s scores on ``split``."""
    model.eval()
    correct1 = correct5 = 0
    loss_sum, n = 0.0, 0
    for x, y in split.batches(batch_size, train=False, device=device):
        scores = model(x)
        loss_sum += torch.nn.functional.cross_entropy(scores, y, reduction="sum").item()
        top = scores.topk(min(5, scores.shape[1]), dim=1).indices
        hit = top == y[:, None]
        correct1 += hit[:, 0].sum().item()
        correct5 += hit.any(dim=1).sum().item()
        n += len(y)
    return {"top1": 100.0 * correct1 / n, "top5": 100.0 * correct5 / n, "loss": loss_sum / n}


def train(model: MethodNet, data: DataBundle, recipe: Recipe, seed: int, device: torch.device,
          progress: bool = True, desc: str = "", check_every: int = 20,
          divergence: float = 50.0, dist: Optional[distributed.Dist] = None,
          epoch_lines: bool = False, test_curve: bool = True,
          on_epoch: Optional[Callable[[int, MethodNet], bool]] = None) -> History:
    """Train ``model`` in place with ``recipe``; raise RunFailed on a NaN or diverging loss.
    Under torchrun (``dist``), each rank trains on its shard and gradients are averaged.
    ``epoch_lines`` prints one line per epoch (for workers whose output a driver relays);
    ``test_curve`` records the test top-1 after each epoch and the holdout top-1 (where the data
    has a holdout split) before training and after each epoch, the learning curve the
    learning-speed metrics read; ``test_curve=False`` records neither and never reads the test
    split (hyper-parameter search); ``on_epoch(epoch,
    model)`` runs after each epoch and stops training by returning True (pruning)."""
    rank, world = dist.shard if dist else (0, 1)
    if recipe.batch_size % world:
        raise BenchError(f"--batch-size {recipe.batch_size} must be divisible by the {world} processes")
    generator = torch.Generator().manual_seed(seed)
    prepare_model(model, recipe, device)
    optimizer = make_optimizer(model, recipe)
    scaler = torch.amp.GradScaler(device.type, enabled=recipe.amp == "fp16")
    steps_per_epoch = math.ceil(len(data.train) / recipe.batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(recipe, step / steps_per_epoch))
    history = History()
    bar = tqdm(total=steps_per_epoch * recipe.epochs, desc=desc, disable=not progress or rank > 0,
               leave=False, unit="step", dynamic_ncols=True)
    first_loss: Optional[float] = None
    holdout = data.holdout if test_curve else None
    if holdout is not None:
        history.holdout_top1.append(evaluate(model, holdout, recipe.eval_batch_size,
                                             device)["top1"])

    def check(loss_sum: torch.Tensor, seen: int, epoch: int) -> float:
        nonlocal first_loss
        mean_loss = loss_sum.item() / seen
        first_loss = mean_loss if first_loss is None else first_loss
        if not math.isfinite(mean_loss):
            raise RunFailed(f"loss became {mean_loss} in epoch {epoch + 1}")
        if mean_loss > divergence * max(first_loss, 1.0):
            raise RunFailed(f"loss diverged to {mean_loss:.3g} in epoch {epoch + 1} "
                            f"(first {first_loss:.3g})")
        return mean_loss

    try:
        for epoch in range(recipe.epochs):
            model.train()
            history.lr.append(optimizer.param_groups[0]["lr"])
            start = time.perf_counter()
            loss_sum = torch.zeros((), device=device)
            correct = torch.zeros((), device=device, dtype=torch.long)
            seen = pending = 0
            for x, y in data.train.batches(recipe.batch_size, train=True, generator=generator,
                                           device=device, shard=(rank, world)):
                if recipe.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                with autocast(device, recipe.amp):
                    out = model.training_loss(make_batch(x, y, recipe.cutmix, generator,
                                                          recipe.label_smoothing))
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(out.loss).backward()
                if dist:
                    distributed.average_gradients(model, world)
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                loss_sum += out.loss.detach() * len(y)
                correct += (out.logits.detach().argmax(1) == y).sum()
                seen += len(y)
                pending += 1
                if pending == check_every:
                    mean_loss = check(loss_sum, seen, epoch)
                    bar.update(pending)
                    bar.set_postfix(epoch=f"{epoch + 1}/{recipe.epochs}", loss=f"{mean_loss:.3f}",
                                    acc=f"{100.0 * correct.item() / seen:.1f}", refresh=False)
                    pending = 0
            if dist:
                loss_sum, correct = distributed.all_sum(loss_sum), distributed.all_sum(correct)
                seen *= world
            check(loss_sum, seen, epoch)
            bar.update(pending)
            history.seconds += time.perf_counter() - start
            history.images += seen
            history.train_loss.append(loss_sum.item() / seen)
            history.train_top1.append(100.0 * correct.item() / seen)
            history.epochs = epoch + 1
            if test_curve:
                history.test_top1.append(evaluate(model, data.test, recipe.eval_batch_size,
                                                  device)["top1"])
            if holdout is not None:
                history.holdout_top1.append(evaluate(model, holdout, recipe.eval_batch_size,
                                                     device)["top1"])
            if epoch_lines and rank == 0:
                test = f", test top-1 {history.test_top1[-1]:.1f} %" if test_curve else ""
                print(f"{desc}: epoch {epoch + 1}/{recipe.epochs}, loss {history.train_loss[-1]:.3f}, "
                      f"train top-1 {history.train_top1[-1]:.1f} %{test}", flush=True)
            if on_epoch is not None and on_epoch(epoch, model):
                break
    finally:
        bar.close()
    return history
