"""Training recipes registered by name. A preset fixes the recipe and default dataset and backbone;
command-line flags override single fields."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from bench.device import amp_dtype
from bench.errors import BenchError
from bench.registry import PRESETS

SCHEDULES = ("cosine", "step")


@dataclass(frozen=True)
class Recipe:
    """Everything that decides how a model is trained (part of a run's config hash)."""

    dataset: str = "digits-clutter"
    backbone: str = "resnet8"
    epochs: int = 8
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    schedule: str = "cosine"  # cosine | step
    milestones: tuple[int, ...] = ()  # epochs at which a step schedule multiplies lr by gamma
    gamma: float = 0.1
    warmup_epochs: int = 0
    cutmix: float = 0.0  # probability of a CutMix batch (beta(1, 1) area), for every method
    seeds: int = 1
    eval_batch_size: int = 512
    # Execution settings that change numerics or speed (recorded with the run, part of its hash):
    amp: str = "none"  # none | bf16 | fp16 autocast in training (fp16 with a gradient scaler)
    channels_last: bool = False
    compile: bool = False  # torch.compile the backbone (in place; state-dict keys unchanged)

    def replace(self, **changes: Any) -> "Recipe":
        """A copy with ``changes`` applied (``None`` values ignored), validated; an unknown field
        is a BenchError naming the valid ones."""
        fields = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - fields)
        if unknown:
            raise BenchError(f"{unknown[0]} is not a recipe setting; valid: "
                             f"{', '.join(sorted(fields))}", unknown[0])
        recipe = dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})
        recipe.validate()
        return recipe

    def validate(self) -> None:
        """Every field in range; a BenchError naming the field otherwise."""
        for name in ("epochs", "batch_size", "seeds", "eval_batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise BenchError(f"{name} must be a positive integer, got {value!r}", name)
        for name, low in (("lr", 0.0), ("weight_decay", 0.0), ("momentum", 0.0), ("gamma", 0.0)):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value)):
                raise BenchError(f"{name} must be a finite number, got {value!r}", name)
            if value < low or (name == "lr" and value == 0):
                bound = "positive" if name == "lr" else f">= {low:g}"
                raise BenchError(f"{name} must be {bound}, got {value!r}", name)
        if self.schedule not in SCHEDULES:
            raise BenchError(f"schedule must be one of {', '.join(SCHEDULES)}, got "
                             f"{self.schedule!r}", "schedule")
        if not (isinstance(self.cutmix, (int, float)) and 0.0 <= self.cutmix <= 1.0):
            raise BenchError(f"cutmix is a probability in [0, 1], got {self.cutmix!r}", "cutmix")
        amp_dtype(self.amp)
        if not isinstance(self.warmup_epochs, int) or not 0 <= self.warmup_epochs < self.epochs:
            raise BenchError(f"warmup_epochs must be in [0, epochs), got {self.warmup_epochs!r}",
                             "warmup_epochs")


PRESETS.add("smoke", Recipe(epochs=3, batch_size=64, lr=0.05),
            "seconds per method: 3 epochs of ResNet-8 on digits-clutter; for tests and CI")
PRESETS.add("quick", Recipe(),
            "the default: 8 epochs of ResNet-8 on digits-clutter, all methods in minutes on a CPU")
# The CIFAR recipe of the ResNet-110 comparisons in SAOL (Tables 1-2) and ABN: SGD 0.9, batch 128,
# lr 0.1 divided by 10 at epochs 150 and 225 of 300, weight decay 1e-4.
PRESETS.add("paper-cifar", Recipe(dataset="cifar10", backbone="resnet110", epochs=300, batch_size=128,
                                  lr=0.1, weight_decay=1e-4, schedule="step", milestones=(150, 225),
                                  eval_batch_size=1000),
            "CIFAR recipe of SAOL/ABN: 300 epochs, batch 128, lr 0.1 /10 at 150 and 225, wd 1e-4")
# The ImageNet recipe of CutMix, which SAOL (Sec. 4.1.2) keeps: 300 epochs, batch 256, lr 0.1
# divided by 10 at epochs 75, 150 and 225, weight decay 1e-4.
PRESETS.add("paper-imagenet", Recipe(dataset="imagenet", backbone="resnet50", epochs=300,
                                     batch_size=256, lr=0.1, weight_decay=1e-4, schedule="step",
                                     milestones=(75, 150, 225), eval_batch_size=256),
            "ImageNet recipe of CutMix/SAOL: 300 epochs, batch 256, lr 0.1 /10 at 75/150/225, wd 1e-4")
