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
    label_smoothing: float = 0.0  # of every method's classification loss (its cross-entropies)
    seeds: int = 1
    eval_batch_size: int = 512
    # Execution settings that change numerics or speed (recorded with the run, part of its hash):
    amp: str = "none"  # none | bf16 | fp16 autocast in training (fp16 with a gradient scaler)
    channels_last: bool = False
    compile: bool = False  # torch.compile the backbone (in place; state-dict keys unchanged)

    def replace(self, **changes: Any) -> "Recipe":
        """A copy with ``changes`` applied (``None`` values ignored), validated; an unknown field
        is a BenchError naming the valid ones. Setting ``epochs`` alone at or below the warm-up
        shortens the warm-up to ``epochs - 1`` (``epochs=1`` trains without one)."""
        fields = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - fields)
        if unknown:
            raise BenchError(f"{unknown[0]} is not a recipe setting; valid: "
                             f"{', '.join(sorted(fields))}", unknown[0])
        changes = {k: v for k, v in changes.items() if v is not None}
        epochs = changes.get("epochs")
        if ("warmup_epochs" not in changes and isinstance(epochs, int)
                and not isinstance(epochs, bool) and 1 <= epochs <= self.warmup_epochs):
            changes["warmup_epochs"] = epochs - 1
        recipe = dataclasses.replace(self, **changes)
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
        if not (isinstance(self.label_smoothing, (int, float))
                and 0.0 <= self.label_smoothing < 1.0):
            raise BenchError(f"label_smoothing must be in [0, 1), got {self.label_smoothing!r}",
                             "label_smoothing")
        amp_dtype(self.amp)
        if not isinstance(self.warmup_epochs, int) or not 0 <= self.warmup_epochs < self.epochs:
            raise BenchError(f"warmup_epochs must be in [0, epochs), got {self.warmup_epochs!r}",
                             "warmup_epochs")


PRESETS.add("smoke", Recipe(epochs=3, batch_size=64, lr=0.05),
            "seconds per method: 3 epochs of ResNet-8 on digits-clutter; for tests and CI")
# The default workload (docs/default-workload.md): 3 seeds of every method and all tasks within
# 10 minutes on 2 CPU cores. 7 epochs of the width-1 ResNet-8 on a small, light digits-clutter (a
# 20 x 20 canvas with digits of 8-14 px, 4 clutter fragments at contrast 0.5, 2 copies of each
# training digit, 1 of each evaluation digit): smaller images make a step cheaper, so the gated
# methods get the steps they need to come close to where they converge.
# The recipe (lr, batch size, weight decay, warm-up, label smoothing) was chosen by
# benchmarks/choose_default_recipe.py (its stored study, trial 22: the best worst-method holdout
# top-1), to 3 significant digits; benchmarks/preset_agreement.py measures how far its
# conclusions are from a 6x longer schedule's.
QUICK = Recipe(dataset="digits-clutter[canvas=20,min_size=8,max_size=14,clutter=4,"
                       "clutter_contrast=0.5,copies=2,eval_copies=1]",
               backbone="resnet8", epochs=7, batch_size=16, lr=0.0648, weight_decay=4.15e-5,
               warmup_epochs=1, label_smoothing=0.0262, seeds=3)
PRESETS.add("quick", QUICK,
            "the default: 3 seeds x 7 epochs of ResNet-8 on 20 x 20 digits-clutter, every method "
            "(SE, CBAM, BAM at r=4) within 10 minutes on 2 CPU cores")

# The methods a preset runs when none are named (else every method with its own defaults). On
# the width-1 ResNet-8 (16/32/64 channels) the papers' r=16 leaves SE and CBAM gates 1 unit
# wide in the first stage; r=4, within the range the SE paper ablates (Table 5: 2 to 32), makes
# every SE/CBAM/BAM hidden layer at least 4 units wide at a sixteenth of the cost of widening
# the network 4x. The labels (se[r=4]) say so in every table.
PRESET_METHODS: dict[str, tuple[str, ...]] = {
    "quick": ("gap-fc", "saol", "abn", "se[r=4]", "cbam[r=4]", "simam", "ssia", "siou", "eca",
              "bam[r=4]"),
}

# The papers' recipes. A preset fixes one recipe for every method of a suite (equal terms), so
# each paper's recipe is its own preset; each description names the section it follows.

# ABN's CIFAR recipe (the ABN code's README: bearpaw's cifar.py with --epochs 300 --schedule 150
# 225 --gamma 0.1 --wd 1e-4, batch 128, lr 0.1, momentum 0.9) on the ABN code's ResNet-110, which
# SAOL (Sec. 4.1.1) keeps for its ResNet-110 rows of Tables 1-2 and their ABN comparison.
ABN_CIFAR = Recipe(dataset="cifar10", backbone="resnet110-abn", epochs=300, batch_size=128, lr=0.1,
                   weight_decay=1e-4, schedule="step", milestones=(150, 225), eval_batch_size=1000)
PRESETS.add("paper-cifar", ABN_CIFAR,
            "ABN's CIFAR recipe, SAOL Sec. 4.1.1 (Tables 1-2, ResNet-110 rows without CutMix): "
            "ResNet-110 (ABN code), 300 epochs, batch 128, lr 0.1 /10 at 150 and 225, wd 1e-4")
# SAOL Sec. 4.1.1, Tables 1-2 "+ CutMix" rows: the same with CutMix, which SAOL's SS1/SS2 losses
# need; SAOL modifies the official CutMix code, whose CIFAR command uses beta 1, probability 0.5.
# "Every experiment was performed five times": 5 seeds.
PRESETS.add("paper-saol-cifar", dataclasses.replace(ABN_CIFAR, cutmix=0.5, seeds=5),
            "SAOL Sec. 4.1.1 (Tables 1-2, ResNet-110 + CutMix): paper-cifar with CutMix "
            "(probability 0.5, beta 1), 5 seeds")
# CutMix's ImageNet recipe (its README command and train.py: 300 epochs, batch 256, lr 0.1 divided
# by 10 every 75 epochs, weight decay 1e-4, Nesterov momentum 0.9), whose baselines SAOL quotes in
# Table 3 (rows marked *). Its colour jitter and PCA lighting are not applied here.
CUTMIX_IMAGENET = Recipe(dataset="imagenet", backbone="resnet50", epochs=300, batch_size=256,
                         lr=0.1, nesterov=True, weight_decay=1e-4, schedule="step",
                         milestones=(75, 150, 225), eval_batch_size=256)
PRESETS.add("paper-imagenet", CUTMIX_IMAGENET,
            "CutMix's ImageNet recipe without CutMix, SAOL Sec. 4.1.2 (Table 3 baselines): "
            "300 epochs, batch 256, lr 0.1 /10 at 75/150/225, Nesterov, wd 1e-4")
# SAOL Sec. 4.1.2: CutMix's recipe with CutMix (its ImageNet command: probability 1, beta 1) and,
# "for faster training", batch 4096 with the learning rate scaled linearly (0.1 * 4096 / 256) and
# a gradual warm-up (Goyal et al.: 5 epochs). The batch is global: torchrun shards it.
PRESETS.add("paper-saol-imagenet", dataclasses.replace(CUTMIX_IMAGENET, cutmix=1.0,
                                                       batch_size=4096, lr=1.6, warmup_epochs=5),
            "SAOL Sec. 4.1.2 (Table 3, + CutMix): CutMix probability 1, batch 4096, lr 1.6 "
            "(linearly scaled) with 5 warm-up epochs, 300 epochs, /10 at 75/150/225, Nesterov, "
            "wd 1e-4")
# Sharpen Focus Sec. 4.1, CIFAR-100: ResNet-110 (He et al.'s, 1.7M parameters in its Table 2),
# SGD batch 128, momentum 0.9, weight decay 5e-4, lr 0.1 divided by 10 at epochs 81 and 122 of 160.
PRESETS.add("paper-siou-cifar", Recipe(dataset="cifar100", backbone="resnet110", epochs=160,
                                       batch_size=128, lr=0.1, weight_decay=5e-4,
                                       schedule="step", milestones=(81, 122),
                                       eval_batch_size=1000),
            "Sharpen Focus Sec. 4.1 (CIFAR-100, Tables 1-2): ResNet-110, 160 epochs, batch 128, "
            "lr 0.1 /10 at 81 and 122, wd 5e-4")
# Sharpen Focus Sec. 4.1, ImageNet: ResNet-18, batch 256, lr 0.1 divided by 10 at 30 and 60 of
# 90 epochs, weight decay 1e-4, momentum 0.9.
PRESETS.add("paper-siou-imagenet", Recipe(dataset="imagenet", backbone="resnet18", epochs=90,
                                          batch_size=256, lr=0.1, weight_decay=1e-4,
                                          schedule="step", milestones=(30, 60),
                                          eval_batch_size=256),
            "Sharpen Focus Sec. 4.1 (ImageNet, Table 4): ResNet-18, 90 epochs, batch 256, lr 0.1 "
            "/10 at 30 and 60, wd 1e-4")
# SSIA Sec. 3.1 ("the standard training pipeline", used for its CIFAR columns of Table 3):
# ResNet-50, SGD momentum 0.9, weight decay 4e-5, lr 0.1 with cosine decay, batch 32, 100 epochs.
# The paper gives no CIFAR input size or stem: the ImageNet ResNet-50 runs on the 32x32 images.
SSIA_RECIPE = Recipe(dataset="cifar100", backbone="resnet50", epochs=100, batch_size=32, lr=0.1,
                     weight_decay=4e-5, schedule="cosine", eval_batch_size=1000)
PRESETS.add("paper-ssia-cifar", SSIA_RECIPE,
            "SSIA Sec. 3.1 (Table 3, CIFAR columns): ResNet-50, 100 epochs, batch 32, lr 0.1 "
            "cosine, wd 4e-5")
# SSIA Sec. 3.3: the same recipe on ImageNet at batch 64 ("we report the results with a batch
# size of 64"; Table 4 shows SSIA's gain shrinking at larger batches).
PRESETS.add("paper-ssia-imagenet", dataclasses.replace(SSIA_RECIPE, dataset="imagenet",
                                                       batch_size=64, eval_batch_size=256),
            "SSIA Sec. 3.3 (Table 3, ImageNet column): ResNet-50, 100 epochs, batch 64, lr 0.1 "
            "cosine, wd 4e-5")
