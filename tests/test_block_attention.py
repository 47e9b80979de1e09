"""Block-attention family (SE, CBAM, SimAM, ECA, BAM): parameter counts computed from each
method's definition, formulas against independent computations, gate ranges and init, options,
and one forward/backward step per method and backbone."""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import pytest
import torch

import bench
from bench.errors import BenchError
from bench.methods.bam import Bam
from bench.methods.base import Batch
from bench.methods.cbam import Cbam
from bench.methods.eca import Eca, adaptive_kernel_size
from bench.methods.se import SqueezeExcite
from bench.methods.simam import SimAM

# (block output width, number of blocks) per stage, from the architectures' definitions:
# ResNet-50 (He et al. 2016, Table 1: 3, 4, 6, 3 bottlenecks of 256..2048 channels), CIFAR
# ResNet-20 (3 stages of 3 basic blocks, 16/32/64), WRN-40-2 (3 stages of 6 blocks, 32/64/128).
ARCHS = {
    "resnet50": [(256, 3), (512, 4), (1024, 6), (2048, 3)],
    "resnet20": [(16, 3), (32, 3), (64, 3)],
    "wrn-40-2": [(32, 6), (64, 6), (128, 6)],
}
CLASSES = {"resnet50": 1000, "resnet20": 10, "wrn-40-2": 100}


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@lru_cache(maxsize=None)
def census(spec: str, backbone: str) -> tuple[int, dict[type, int]]:
    """Parameter count and number of modules of each type of ``spec`` on ``backbone`` (cached)."""
    types: dict[type, int] = {}
    model = bench.build_model(spec, backbone, CLASSES[backbone])
    for m in model.modules():
        types[type(m)] = types.get(type(m), 0) + 1
    return n_params(model), types


def baseline_params(backbone: str) -> int:
    return census("gap-fc", backbone)[0]


def hidden(c: int, r: int) -> int:
    return max(1, c // r)


def se_block(c: int, r: int = 16) -> int:
    """FC C->h (weights + bias), FC h->C (weights + bias)."""
    h = hidden(c, r)
    return c * h + h + h * c + c


def cbam_block(c: int, r: int = 16, k: int = 7) -> int:
    """One shared MLP as SE's, a k x k conv 2->1 without bias, BN(1) weight and bias."""
    return se_block(c, r) + 2 * k * k + 2


def eca_kernel(c: int) -> int:
    """Odd integer nearest to t = (log2 C + 1) / 2, ties going up: 2 * floor(t / 2) + 1."""
    t = (math.log2(c) + 1) / 2
    return 2 * math.floor(t / 2) + 1


def bam_stage(c: int, r: int = 16) -> int:
    """Channel: FC C->h, BN1d(h), FC h->C. Spatial: 1x1 C->h + BN, 2 x (3x3 h->h + BN), 1x1 h->1."""
    h = hidden(c, r)
    channel = (c * h + h) + 2 * h + (h * c + c)
    spatial = (c * h + h) + 2 * h + 2 * (9 * h * h + h + 2 * h) + (h + 1)
    return channel + spatial


def per_block(fn):
    return lambda arch: sum(n * fn(c) for c, n in arch)


def per_stage_but_last(fn):
    return lambda arch: sum(fn(c) for c, _ in arch[:-1])


COUNTS = [
    ("se", per_block(se_block)),
    ("se[r=8]", per_block(lambda c: se_block(c, 8))),
    ("se[r=32]", per_block(lambda c: se_block(c, 32))),  # C = 16 < r: hidden width 1
    ("cbam", per_block(cbam_block)),
    ("cbam[r=8,kernel=3]", per_block(lambda c: cbam_block(c, 8, 3))),
    ("eca", per_block(eca_kernel)),
    ("eca[k=9]", per_block(lambda c: 9)),
    ("bam", per_stage_but_last(bam_stage)),
    ("bam[r=8,dilation=2,combine=product]", per_stage_but_last(lambda c: bam_stage(c, 8))),
    ("simam", lambda arch: 0),
    ("simam[lambda=0.1]", lambda arch: 0),
]


def test_resnet50_baseline_count():
    assert baseline_params("resnet50") == 25_557_032


@pytest.mark.parametrize("backbone", list(ARCHS))
@pytest.mark.parametrize("spec,extra", COUNTS, ids=[c[0] for c in COUNTS])
def test_parameter_count(spec, extra, backbone):
    assert census(spec, backbone)[0] == baseline_params(backbone) + extra(ARCHS[backbone])


def test_resnet50_published_totals():
    """SE-ResNet-50 28.09M (Hu et al.), ECA +86 (SSIA Table 3), BAM 25.92M, SimAM +0."""
    totals = {m: census(m, "resnet50")[0] for m in ("se", "eca", "bam")}
    assert totals["se"] == 28_088_024
    assert totals["eca"] - 25_557_032 == 86
    assert round(totals["bam"] / 1e6, 2) == 25.92


def test_one_module_per_block_or_stage():
    modules = {"se": SqueezeExcite, "cbam": Cbam, "eca": Eca, "simam": SimAM, "bam": Bam}
    for method, cls in modules.items():
        assert census(method, "resnet50")[1][cls] == (3 if method == "bam" else 16), method


def test_simam_matches_energy_formula():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 5, 7) * 2 + 1
    for e_lambda in (1e-4, 0.1):
        out = SimAM(e_lambda)(x).double().numpy()
        xs = x.double().numpy()
        ref = np.empty_like(xs)
        for b in range(xs.shape[0]):
            for c in range(xs.shape[1]):
                plane = xs[b, c]
                mu = sum(plane.flat) / plane.size
                var = sum((v - mu) ** 2 for v in plane.flat) / (plane.size - 1)
                for i in range(plane.shape[0]):
                    for j in range(plane.shape[1]):
                        energy = (plane[i, j] - mu) ** 2 / (4 * (var + e_lambda)) + 0.5
                        ref[b, c, i, j] = plane[i, j] / (1 + math.exp(-energy))
        np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)


def test_simam_one_pixel_map_is_finite():
    x = torch.randn(2, 4, 1, 1)
    torch.testing.assert_close(SimAM()(x), x * torch.sigmoid(torch.tensor(0.5)))


def test_simam_sits_after_the_3x3_conv_with_lambda_option():
    model = bench.build_model("simam[lambda=0.1]", "resnet8", 10)
    blocks = [b for stage in model.backbone.stages for b in stage]
    assert all(isinstance(b.conv_attn, SimAM) and b.conv_attn.e_lambda == 0.1 for b in blocks)
    resnet50 = bench.build_model("simam", "resnet50", 1000).backbone
    assert [b.conv_attn.e_lambda for b in resnet50.layer1] == [1e-4] * 3


def test_se_gate_shape_range_and_formula():
    torch.manual_seed(0)
    se = SqueezeExcite(64, reduction=16)
    x = torch.randn(3, 64, 6, 5)
    gate = se.gate(x)
    assert gate.shape == (3, 64, 1, 1)
    assert bool(((gate > 0) & (gate < 1)).all())
    fc1, fc2 = se.mlp[0], se.mlp[2]
    assert fc1.weight.shape == (4, 64) and fc2.weight.shape == (64, 4)
    z = x.double().mean(dim=(2, 3))
    hidden_act = torch.clamp(z @ fc1.weight.double().T + fc1.bias.double(), min=0)
    expected = 1 / (1 + torch.exp(-(hidden_act @ fc2.weight.double().T + fc2.bias.double())))
    torch.testing.assert_close(gate.double().squeeze(), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(se(x), x * gate)


def test_cbam_gates_shape_range_and_channel_formula():
    torch.manual_seed(0)
    cbam = Cbam(32, reduction=16, kernel_size=7).eval()
    x = torch.randn(2, 32, 6, 6)
    cg = cbam.channel_gate(x)
    sg = cbam.spatial_gate(x)
    assert cg.shape == (2, 32, 1, 1) and sg.shape == (2, 1, 6, 6)
    for g in (cg, sg):
        assert bool(((g > 0) & (g < 1)).all())
    mlp = cbam.channel_gate.mlp
    flat = x.flatten(2)
    expected = torch.sigmoid(mlp(flat.mean(-1)) + mlp(flat.max(-1).values))
    torch.testing.assert_close(cg.squeeze(), expected)
    torch.testing.assert_close(cbam(x), x * cg * cbam.spatial_gate(x * cg))


def test_cbam_spatial_gate_pools_max_then_mean():
    gate = Cbam(8).spatial_gate.eval()  # fresh BN: weight 1, bias 0, running mean 0, var 1
    with torch.no_grad():
        gate.conv.weight.zero_()
        gate.conv.weight[0, 0, 3, 3] = 1.0  # centre tap of the first pooled map only
    x = torch.randn(2, 8, 5, 5)
    expected = torch.sigmoid(x.amax(dim=1, keepdim=True) / math.sqrt(1 + 1e-5))
    torch.testing.assert_close(gate(x), expected)
    assert gate.conv.bias is None and gate.conv.padding == (3, 3) and gate.bn.momentum == 0.01


@pytest.mark.parametrize("backbone", ["resnet8", "resnet50", "wrn-40-2"])
def test_cbam_spatial_gate_starts_at_one_half(backbone):
    model = bench.build_model("cbam", backbone, 10)
    modules = [m for m in model.modules() if isinstance(m, Cbam)]
    assert modules
    x = torch.randn(2, modules[0].channel_gate.mlp[0].in_features, 4, 4)
    for m in modules:
        assert bool((m.spatial_gate.bn.weight == 0).all())  # not overwritten by the backbone init
        assert bool((m.channel_gate.mlp[0].bias == 0).all())
    for training in (True, False):
        gate = modules[0].spatial_gate.train(training)(x)
        assert bool((gate == 0.5).all())


@pytest.mark.parametrize("channels,k", [(64, 3), (256, 5), (512, 5), (2048, 7)])
def test_eca_adaptive_kernel(channels, k):
    assert adaptive_kernel_size(channels) == eca_kernel(channels) == k
    assert Eca(channels).conv.kernel_size == (k,)
    assert Eca(channels, kernel_size=9).conv.kernel_size == (9,)


def test_eca_gate_is_a_1d_conv_across_channels():
    torch.manual_seed(0)
    eca = Eca(16, kernel_size=5)
    x = torch.randn(2, 16, 3, 4)
    w = eca.conv.weight.detach().double().flatten().tolist()
    expected = np.empty((2, 16))
    for b, row in enumerate(x.double().mean(dim=(2, 3)).tolist()):
        for i in range(16):  # zero padding of 2 channels on each side
            z = sum(w[j] * row[i + j - 2] for j in range(5) if 0 <= i + j - 2 < 16)
            expected[b, i] = 1 / (1 + math.exp(-z))
    with torch.no_grad():
        gate = eca.gate(x)
    assert gate.shape == (2, 16, 1, 1)
    np.testing.assert_allclose(gate.squeeze().double().numpy(), expected, rtol=1e-5)


def test_bam_gate_range_combine_and_reference_init():
    torch.manual_seed(0)
    model = bench.build_model("bam", "resnet8", 10)
    bams = [m for m in model.modules() if isinstance(m, Bam)]
    assert len(bams) == 2 and [b.channel.mlp[0].in_features for b in bams] == [16, 32]
    for b in bams:
        for m in b.modules():
            if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)):
                assert bool((m.bias == 0).all())
    bam = Bam(32, reduction=16, dilation=4).eval()
    x = torch.rand(2, 32, 9, 9) + 0.1
    gate = bam.gate(x)
    assert gate.shape == x.shape and bool(((gate > 0) & (gate < 1)).all())
    c, s = bam.channel(x), bam.spatial(x)
    assert c.shape == (2, 32, 1, 1) and s.shape == (2, 1, 9, 9)
    torch.testing.assert_close(bam(x), x * (1 + torch.sigmoid(c + s)))
    bam.combine = "product"
    torch.testing.assert_close(bam(x), x * (1 + torch.sigmoid(c * s)))
    dilated = bam.spatial[1][0]
    assert dilated.dilation == (4, 4) and dilated.padding == (4, 4)


@pytest.mark.parametrize("spec", ["se[foo=1]", "simam[r=16]", "se[r=0]", "cbam[kernel=4]",
                                  "eca[k=4]", "eca[k=-1]", "bam[combine=max]", "bam[dilation=0]",
                                  "simam[lambda=0]", "se[r=x]"])
def test_bad_options_are_bench_errors(spec):
    with pytest.raises(BenchError):
        bench.build_model(spec, "resnet8", 10)


@pytest.mark.parametrize("backbone", ["resnet8", "resnet18", "wrn-40-2"])
@pytest.mark.parametrize("method", ["se", "cbam", "simam", "eca", "bam"])
def test_one_training_step(method, backbone):
    torch.manual_seed(0)
    model = bench.build_model(method, backbone, 10)
    x = torch.randn(2, 3, 32, 32)
    out = model.training_loss(Batch(x, torch.tensor([1, 7])))
    assert out.logits.shape == (2, 10) and torch.isfinite(out.loss)
    out.loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and bool(torch.isfinite(p.grad).all()), name
    model.eval()
    with torch.no_grad():
        maps = model.localization_maps(x, torch.tensor([1, 7]))
    assert maps.shape[0] == 2 and maps.dim() == 3 and bool(torch.isfinite(maps).all())
