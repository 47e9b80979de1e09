"""SSIA: deploys the exact baseline, stop-gradient on the signal side, Eq. 7 on hand-made inputs."""
import pytest
import torch
from torch import nn

from bench.api import build_model
from bench.errors import BenchError
from bench.methods import Batch
from bench.methods.base import BaselineDeploy
from bench.methods.ssia import masked_mse, spatial_descriptor, standardize

STAGES = (16, 32, 64)  # resnet8 stage widths


@pytest.fixture
def net():
    torch.manual_seed(0)
    return build_model("ssia", "resnet8", 10, in_channels=1)


@pytest.fixture
def batch():
    gen = torch.Generator().manual_seed(1)
    return Batch(torch.randn(4, 1, 32, 32, generator=gen), torch.tensor([0, 1, 2, 3]))


def mlp_params(n_in: int, n_out: int, hidden: int = 64) -> int:
    """Linear(n_in, hidden, no bias) + BN(hidden) + Linear(hidden, n_out)."""
    return n_in * hidden + 2 * hidden + hidden * n_out + n_out


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def zero_grad(params) -> bool:
    return all(p.grad is None or not p.grad.any() for p in params)


def nonzero_grad(params) -> bool:
    params = list(params)
    return bool(params) and all(p.grad is not None and p.grad.any() for p in params)


def test_deploy_is_the_baseline(net):
    base = build_model("gap-fc", "resnet8", 10, in_channels=1)
    deployed = net.deploy()
    assert count(deployed) == count(base)
    assert isinstance(deployed, BaselineDeploy)
    assert [(n, type(m)) for n, m in deployed.named_modules()][1:] == \
        [(n, type(m)) for n, m in base.named_modules()][1:]  # [0] is the root itself
    assert deployed.state_dict().keys() == base.state_dict().keys()
    # The training-only part: per block a spatial MLP on the (grid x grid) map and a channel MLP.
    grids = (16, 8)
    extra = sum(mlp_params(g * g, g * g) + mlp_params(STAGES[n], STAGES[n + 1])
                for n, g in enumerate(grids))
    assert count(net) - count(base) == extra == 51104
    x = torch.randn(2, 1, 32, 32)
    net.eval()
    assert torch.equal(deployed(x), net(x))
    classes = torch.tensor([3, 7])
    assert torch.equal(deployed.localization_maps(x, classes),
                       net.head.cam(net.backbone(x)[-1], classes))


def test_signal_side_gets_no_gradient(net, batch):
    features = net.backbone(batch.x)
    sum(net.ssia[0](features[0], features[1], net.eta).values()).backward()
    bb = net.backbone
    assert zero_grad(bb.layer2.parameters()) and zero_grad(bb.layer3.parameters())
    assert nonzero_grad(p for n, p in bb.named_parameters() if n.startswith(("conv1", "layer1")))
    assert nonzero_grad(net.ssia[0].parameters())
    assert zero_grad(net.ssia[1].parameters()) and zero_grad(net.head.parameters())

    net.zero_grad(set_to_none=True)
    sum(net.ssia_losses(net.backbone(batch.x)).values()).backward()
    # Cascaded blocks: the last stage is only ever a signal side; the head is not involved.
    assert zero_grad(bb.layer3.parameters()) and zero_grad(net.head.parameters())
    assert nonzero_grad(p for n, p in bb.named_parameters() if n.startswith(("layer1", "layer2")))
    assert nonzero_grad(net.ssia.parameters())


def test_total_weights_blocks_and_signals(net, batch):
    features = net.backbone(batch.x)
    b0 = net.ssia[0](features[0], features[1], 0.5)
    b1 = net.ssia[1](features[1], features[2], 0.5)
    losses = net.ssia_losses(features)
    # weight 0.2, block weights 1 and 2 (first two of 1, 2, 3), lambda_s = 1, lambda_c = 3.
    expected_s = 0.2 * (1 * b0["spatial"] + 2 * b1["spatial"])
    expected_c = 0.2 * (1 * 3 * b0["channel"] + 2 * 3 * b1["channel"])
    assert torch.allclose(losses["ssia_spatial"], expected_s)
    assert torch.allclose(losses["ssia_channel"], expected_c)
    out = net.training_loss(batch)
    assert set(out.terms) == {"ce", "ssia_spatial", "ssia_channel"}
    assert all(torch.isfinite(v) and v > 0 for v in out.terms.values())
    assert torch.allclose(out.loss, sum(out.terms.values()))


@pytest.mark.parametrize("off,kept", [("spatial", "ssia_channel"), ("channel", "ssia_spatial")])
def test_each_signal_is_switchable(net, batch, off, kept):
    full = net.training_loss(batch)
    torch.manual_seed(0)
    variant = build_model(f"ssia[{off}=false]", "resnet8", 10, in_channels=1)
    variant.load_state_dict(net.state_dict(), strict=False)  # same weights where they exist
    assert all(getattr(block, off) is None for block in variant.ssia)
    out = variant.training_loss(batch)
    assert set(out.terms) == {"ce", kept}
    assert torch.allclose(out.terms[kept], full.terms[kept])
    assert torch.allclose(out.terms["ce"], full.terms["ce"])
    assert torch.allclose(out.loss, out.terms["ce"] + out.terms[kept])


def test_masked_mse_counts_only_valid_positions():
    pred = torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]])
    signal = torch.tensor([[0.2, 1.0, -2.0, 12.0],  # valid: 1.0 and -2.0 (0.5 < |G| < 10)
                           [0.4, -0.5, 0.5, 10.0]])  # no valid position (bounds are strict)
    # sample 1: ((2 - 1)^2 + (3 + 2)^2) / 2 = 13; sample 2: 0; batch mean 6.5.
    assert masked_mse(pred, signal, eta=0.5).item() == pytest.approx(6.5)
    assert masked_mse(pred, signal, eta=1.5).item() == pytest.approx((3 + 2) ** 2 / 2)


def test_standardize_and_descriptor_by_hand():
    v = torch.tensor([[1.0, 2.0, 3.0, 6.0]])
    mean, std = 3.0, (((1 - 3) ** 2 + 1 + 0 + 9) / 4) ** 0.5
    expected = torch.tensor([[(1 - mean) / std, (2 - mean) / std, 0.0, (6 - mean) / std]])
    assert torch.allclose(standardize(v), expected, atol=1e-5)
    # Channel mean, then bilinear halving of a 4x4 map = average of each 2x2 cell.
    x = torch.arange(32.0).view(1, 2, 4, 4)
    mean_map = (x[0, 0] + x[0, 1]) / 2
    cells = mean_map.view(2, 2, 2, 2).mean(dim=(1, 3)).flatten()
    assert torch.allclose(spatial_descriptor(x, 2), cells[None])
    assert torch.equal(spatial_descriptor(x, 4), mean_map.flatten()[None])


def test_options_and_errors():
    net = build_model("ssia[grid=4+2,hidden=8,block_weights=0.5+1]", "resnet8", 10, in_channels=1)
    assert net.block_weights == (0.5, 1.0)
    assert net.ssia[0].spatial[0].in_features == 16 and net.ssia[1].spatial[-1].out_features == 4
    assert net.ssia[0].channel[0].out_features == 8
    out = net.training_loss(Batch(torch.randn(4, 1, 32, 32), torch.tensor([0, 1, 2, 3])))
    assert torch.isfinite(out.loss)
    with pytest.raises(BenchError, match="spatial=true or channel=true"):
        build_model("ssia[spatial=false,channel=false]", "resnet8", 10)
    with pytest.raises(BenchError, match="grid needs one value per SSIA block"):
        build_model("ssia[grid=28+14]", "resnet18", 10)
