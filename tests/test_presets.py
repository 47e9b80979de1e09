"""The paper presets run each paper's recipe (values from the papers' sections they name)."""
import pytest

from bench.errors import BenchError
from bench.presets import PRESETS
from bench.registry import BACKBONES, DATASETS


def recipe(name: str):
    return PRESETS.get(name).obj


@pytest.mark.parametrize("name", [n for n in PRESETS.names() if n.startswith("paper-")])
def test_paper_presets_are_valid_and_name_their_section(name):
    entry = PRESETS.get(name)
    entry.obj.validate()
    assert "Sec." in entry.description
    assert entry.obj.backbone in BACKBONES and entry.obj.dataset in DATASETS


def test_saol_presets_use_cutmix_and_the_papers_batch():
    cifar, imagenet = recipe("paper-saol-cifar"), recipe("paper-saol-imagenet")
    assert cifar.cutmix == 0.5 and cifar.seeds == 5  # CutMix's CIFAR probability; five runs
    assert (cifar.backbone, cifar.epochs, cifar.milestones, cifar.weight_decay) == \
        ("resnet110-abn", 300, (150, 225), 1e-4)
    assert imagenet.cutmix == 1.0 and imagenet.batch_size == 4096 and imagenet.warmup_epochs == 5
    assert imagenet.lr == pytest.approx(0.1 * 4096 / 256)  # linearly scaled (Goyal et al.)
    assert (imagenet.epochs, imagenet.milestones, imagenet.nesterov) == (300, (75, 150, 225), True)


def test_baseline_presets_are_the_same_recipes_without_cutmix():
    assert recipe("paper-cifar").cutmix == 0 and recipe("paper-imagenet").cutmix == 0
    assert recipe("paper-cifar").backbone == "resnet110-abn"  # the ABN code's ResNet-110
    assert recipe("paper-saol-cifar").replace(cutmix=0.0, seeds=1) == recipe("paper-cifar")
    saol_imagenet = recipe("paper-saol-imagenet")
    assert saol_imagenet.replace(cutmix=0.0, batch_size=256, lr=0.1, warmup_epochs=0) == \
        recipe("paper-imagenet")


def test_siou_and_ssia_presets():
    siou = recipe("paper-siou-cifar")
    assert (siou.dataset, siou.backbone, siou.epochs, siou.milestones, siou.weight_decay,
            siou.batch_size, siou.lr, siou.schedule) == \
        ("cifar100", "resnet110", 160, (81, 122), 5e-4, 128, 0.1, "step")
    ssia = recipe("paper-ssia-cifar")
    assert (ssia.backbone, ssia.epochs, ssia.batch_size, ssia.lr, ssia.weight_decay,
            ssia.schedule, ssia.cutmix) == ("resnet50", 100, 32, 0.1, 4e-5, "cosine", 0.0)
    assert recipe("paper-ssia-imagenet").batch_size == 64


def test_shortening_epochs_below_the_warm_up_shortens_the_warm_up():
    quick = PRESETS.get("quick").obj
    assert quick.warmup_epochs == 1
    assert quick.replace(epochs=1).warmup_epochs == 0  # --epochs 1 trains without warm-up
    assert quick.replace(epochs=2).warmup_epochs == 1
    assert quick.replace(epochs=18).warmup_epochs == 1
    with pytest.raises(BenchError, match="warmup_epochs must be in"):
        quick.replace(epochs=1, warmup_epochs=1)  # given explicitly: refused, not changed


def test_label_smoothing_is_validated():
    quick = PRESETS.get("quick").obj
    assert quick.replace(label_smoothing=0.1).label_smoothing == 0.1
    for bad in (-0.1, 1.0, float("nan")):
        with pytest.raises(BenchError, match="label_smoothing"):
            quick.replace(label_smoothing=bad)
