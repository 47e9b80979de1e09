"""sIoU-guided attention: deploys the exact baseline, attention differentiated end to end, Eqs. 4-8
on hand-made inputs."""
import math

import pytest
import torch
from torch import nn

from bench.api import build_model
from bench.errors import BenchError
from bench.methods import Batch
from bench.methods.base import BaselineDeploy
from bench.methods.siou import (consistency_loss, gradient_attention, normalize_max, soft_iou,
                                soft_mask)

ATTENTION_TERMS = ("siou_inner", "siou_last", "ac")


def make(spec: str = "siou", in_channels: int = 1):
    torch.manual_seed(0)
    return build_model(spec, "resnet8", 10, in_channels=in_channels)


@pytest.fixture
def batch():
    gen = torch.Generator().manual_seed(1)
    return Batch(torch.randn(4, 1, 32, 32, generator=gen), torch.tensor([0, 1, 2, 3]))


def attention_only(net, batch) -> dict:
    """The attention terms of one training step, not detached."""
    features = net.backbone(batch.x)
    return net.attention_losses(features, net.head(features[-1]), batch.y)


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_deploy_is_the_baseline():
    net, base = make("siou[attention=ch]", 3), build_model("gap-fc", "resnet8", 10)
    deployed = net.deploy()
    assert isinstance(deployed, BaselineDeploy)
    # resnet8 (option-A shortcuts): stem 3*16*9 + BN; stages of one basic block each; fc 64*10+10.
    convs = 3 * 16 * 9 + 2 * 16 * 16 * 9 + (16 * 32 + 32 * 32) * 9 + (32 * 64 + 64 * 64) * 9
    bns = 2 * (16 + 2 * 16 + 2 * 32 + 2 * 64)
    assert count(deployed) == count(base) == count(net) == convs + bns + 64 * 10 + 10
    assert [(n, type(m)) for n, m in deployed.named_modules()][1:] == \
        [(n, type(m)) for n, m in base.named_modules()][1:]  # [0] is the root itself
    assert deployed.state_dict().keys() == base.state_dict().keys()
    x, classes = torch.randn(2, 3, 32, 32), torch.tensor([1, 4])
    net.eval()
    assert torch.equal(deployed(x), net(x))
    assert torch.equal(deployed.localization_maps(x, classes),
                       net.head.cam(net.backbone(x)[-1], classes))


@pytest.mark.parametrize("attention", ["px", "ch"])
def test_attention_losses_train_every_conv(batch, attention):
    net = make(f"siou[attention={attention}]")
    sum(attention_only(net, batch).values()).backward()
    convs = [m for m in net.backbone.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 7
    assert all(m.weight.grad is not None and m.weight.grad.abs().sum() > 0 for m in convs)


@pytest.mark.parametrize("attention", ["px", "ch"])
def test_attention_is_differentiated_not_detached(batch, attention):
    # sIoU_last reaches the FC weights only through dY/dX_L: a second-order path.
    net = make(f"siou[attention={attention},inner=false,ac=false]")
    attention_only(net, batch)["siou_last"].backward()
    assert net.head.fc.weight.grad is not None and net.head.fc.weight.grad.abs().sum() > 0
    # With a constant mask, sIoU_inner depends on the last stage only through dY/dX_{L-1}.
    net = make(f"siou[attention={attention},last=false,ac=false,detach_mask=true]")
    attention_only(net, batch)["siou_inner"].backward()
    layer3 = [p for n, p in net.backbone.layer3.named_parameters() if "conv" in n]
    assert layer3 and all(p.grad is not None and p.grad.abs().sum() > 0 for p in layer3)


def test_last_layer_pixel_attention_is_the_relu_cam(batch):
    # For GAP-FC, dY^c/dX_L = w_c / (h*w), so A_px(X_L) is ReLU(CAM) / (K*h*w).
    net = make()
    features = net.backbone(batch.x)
    score = net.head(features[-1]).gather(1, batch.y[:, None]).sum()
    (a_last,) = gradient_attention(score, [features[-1]], "px")
    cam = net.head.cam(features[-1], batch.y)
    assert torch.allclose(a_last, cam.clamp(min=0) / (64 * 8 * 8), atol=1e-7)


def test_gradient_attention_by_hand():
    feature = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[2.0, 0.0], [1.0, -1.0]]]], requires_grad=True)
    w = torch.tensor([[[[1.0, -1.0], [0.5, 0.0]], [[-2.0, -2.0], [-2.0, -2.0]]]])
    score = (w * feature).sum()  # dY/dF = w
    (px,) = gradient_attention(score, [feature], "px")
    # mean over channels of w * F: [[(1 - 4)/2, (-2 + 0)/2], [(1.5 - 2)/2, (0 + 2)/2]], then ReLU.
    assert torch.allclose(px, torch.tensor([[[0.0, 0.0], [0.0, 1.0]]]))
    (ch,) = gradient_attention(score, [feature], "ch")
    # w_k = mean ReLU(w): channel 0 -> (1 + 0.5) / 4 = 0.375, channel 1 -> 0; A = ReLU(0.375 * F^0).
    assert torch.allclose(ch, 0.375 * torch.tensor([[[1.0, 2.0], [3.0, 4.0]]]))


def test_soft_iou_mask_and_consistency_by_hand():
    a = torch.tensor([[[1.0, 0.0], [0.5, 0.5]]])
    b = torch.tensor([[[0.5, 0.5], [0.0, 1.0]]])
    mask = torch.tensor([[[1.0, 1.0], [1.0, 0.0]]])
    # min(a, b) * mask = [[0.5, 0], [0, 0]] -> 2 * 0.5 / (2 + 2).
    assert soft_iou(a, b, mask).item() == pytest.approx(0.25)
    assert soft_iou(a, a, torch.ones_like(a)).item() == pytest.approx(1.0)
    a_in = torch.tensor([[[1.0, 1.0], [2.0, 0.0]]])
    mask = torch.tensor([[[1.0, 0.0], [1.0, 1.0]]])
    assert consistency_loss(a_in, mask, alpha=1.0).item() == pytest.approx(1 - 3 / 4)
    assert consistency_loss(a_in, mask, alpha=2.0).item() == pytest.approx(2 - 3 / 4)
    # Mask thresholds at sigma * max of the map it is given (here max 2, threshold 1.1).
    last = torch.tensor([[[2.0, 1.0], [1.2, 0.0]]])
    expected = [1 / (1 + math.exp(-100 * (v - 1.1))) for v in (2.0, 1.0, 1.2, 0.0)]
    assert torch.allclose(soft_mask(last, 0.55, 100.0).flatten(), torch.tensor(expected))


def test_normalisation_is_per_sample_and_scale_free():
    maps = torch.rand(3, 4, 4)
    scaled = maps * torch.tensor([1.0, 1e-4, 1e3])[:, None, None]
    assert torch.allclose(normalize_max(scaled), normalize_max(maps), atol=1e-5)
    assert torch.allclose(normalize_max(maps).amax(dim=(1, 2)), torch.ones(3))
    assert torch.allclose(soft_mask(normalize_max(scaled), 0.55, 100.0),
                          soft_mask(normalize_max(maps), 0.55, 100.0), atol=1e-4)


@pytest.mark.parametrize("off", ATTENTION_TERMS)
def test_each_term_is_finite_and_switchable(batch, off):
    full = make().training_loss(batch)
    assert set(full.terms) == {"ce", *ATTENTION_TERMS}
    assert all(torch.isfinite(v) for v in full.terms.values())
    assert 0 <= full.terms["siou_last"] <= 1 and 0 <= full.terms["siou_inner"] <= 1
    assert 0 <= full.terms["ac"] <= 1
    assert torch.allclose(full.loss, sum(full.terms.values()))
    option = {"siou_inner": "inner", "siou_last": "last", "ac": "ac"}[off]
    out = make(f"siou[{option}=false]").training_loss(batch)
    assert set(out.terms) == {"ce", *ATTENTION_TERMS} - {off}
    assert all(torch.allclose(out.terms[k], full.terms[k]) for k in out.terms)
    assert torch.allclose(out.loss, full.loss - full.terms[off])


def test_all_terms_off_is_plain_cross_entropy(batch):
    out = make("siou[inner=false,last=false,ac=false]").training_loss(batch)
    assert set(out.terms) == {"ce"} and torch.equal(out.loss, out.terms["ce"])


def test_cutmix_uses_batch_y_as_target(batch):
    plain = make().training_loss(batch)
    mask = torch.zeros(4, 1, 32, 32)
    mask[..., :8, :8] = 1
    mixed = Batch(batch.x, batch.y, y_a=torch.tensor([5, 6, 7, 8]), lam=1 / 16, mask=mask,
                  x_a=batch.x.flip(0))
    out = make().training_loss(mixed)
    assert all(torch.allclose(out.terms[k], plain.terms[k]) for k in ATTENTION_TERMS)
    assert not torch.allclose(out.terms["ce"], plain.terms["ce"])  # the mixed cross-entropy


def test_bad_attention_option():
    with pytest.raises(BenchError, match="valid: px, ch"):
        make("siou[attention=grad-cam]")


def test_joint_normalisation_keeps_the_confusing_maps_strength():
    """norm=joint divides a layer's target and confusing maps by the larger maximum: a confusing
    map half as strong as the target then overlaps half as much; norm=own ignores the scale."""
    target = torch.tensor([[[2.0, 2.0], [0.0, 0.0]]])
    confusing = {"last": target / 2}
    own, joint = make(), make("siou[norm=joint]")
    own_t, own_c = own.normalized({"last": target, "inner": 3 * target}, confusing)
    joint_t, joint_c = joint.normalized({"last": target, "inner": 3 * target}, confusing)
    assert torch.equal(own_t["last"], own_c["last"]) and own_t["last"].max() == 1
    assert joint_t["last"].max() == 1 and joint_c["last"].max() == pytest.approx(0.5)
    assert joint_t["inner"].max() == 1  # no confusing inner map: its own maximum
    ones = torch.ones_like(target)
    assert soft_iou(own_t["last"], own_c["last"], ones).item() == pytest.approx(1.0)
    assert soft_iou(joint_t["last"], joint_c["last"], ones).item() == pytest.approx(2 / 3)


def test_joint_normalisation_in_the_losses(batch):
    own, joint = make().training_loss(batch), make("siou[norm=joint]").training_loss(batch)
    assert all(torch.isfinite(v) for v in joint.terms.values())
    assert 0 <= joint.terms["siou_last"] <= 1
    assert not torch.allclose(joint.terms["siou_last"], own.terms["siou_last"])
    assert torch.allclose(joint.terms["ce"], own.terms["ce"])
    with pytest.raises(BenchError, match="valid: own, joint"):
        make("siou[norm=global]")
