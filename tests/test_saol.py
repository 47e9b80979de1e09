"""SAOL: normalised outputs, parameter counts from the definition, the loss terms, deployment."""
import math

import pytest
import torch
import torch.nn.functional as F

from bench.api import build_model
from bench.build import method_context, resolve_method
from bench.errors import BenchError
from bench.methods.base import BaselineDeploy, Batch
from bench.methods.saol import SaolClassifier, resize, spatial_kl
from bench.registry import BACKBONES, METHODS, parse_spec

K = 10
CIFAR = [16, 32, 64]  # resnet8 stage widths
IMAGENET_BASIC = [64, 128, 256, 512]  # resnet18 stage widths
IMAGENET_BOTTLENECK = [256, 512, 1024, 2048]  # resnet50/101 stage widths
COMPACT_CIFAR = 64 // 8  # layout=compact: C_L / 8 intermediate logits and hidden units


def params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def make(spec: str = "saol", backbone: str = "resnet8", seed: int = 0):
    torch.manual_seed(seed)
    return build_model(spec, backbone, K)


def cutmix_batch(seed: int = 1, size: int = 32) -> Batch:
    """A hand-made CutMix batch: rows 4..19, columns 8..23 pasted from x_a into x_b."""
    gen = torch.Generator().manual_seed(seed)
    x_b = torch.randn(4, 3, size, size, generator=gen)
    x_a = torch.randn(4, 3, size, size, generator=gen)
    mask = torch.zeros(4, 1, size, size)
    mask[..., 4:20, 8:24] = 1
    y = torch.tensor([0, 1, 2, 3])
    return Batch(mask * x_a + (1 - mask) * x_b, y, y_a=torch.tensor([4, 5, 6, 7]),
                 lam=mask[0].mean().item(), mask=mask, x_a=x_a)


def conv3x3_params(cin: int, cout: int, separable: bool) -> int:
    """3x3 conv without bias, or depthwise 3x3 + pointwise 1x1 (both without bias)."""
    return (9 * cin + cin * cout) if separable else 9 * cin * cout


def map_head_params(c_last: int, hidden: int, separable: bool) -> int:
    """Attention (or SS1) head: 3x3 conv C -> hidden, BN, 1x1 conv hidden -> 1 with bias."""
    return conv3x3_params(c_last, hidden, separable) + 2 * hidden + hidden + 1


def logits_params(channels: list[int], inter: int, separable: bool, classes: int = K) -> int:
    """Per stage 3x3 conv C -> inter + BN(inter); fuse 1x1 conv n*inter -> K with bias."""
    per_stage = sum(conv3x3_params(c, inter, separable) + 2 * inter for c in channels)
    return per_stage + len(channels) * inter * classes + classes


def test_output_is_a_probability_vector_and_attention_sums_to_one():
    model = make().eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        out = model.saol(model.backbone(x))
        log_probs = model(x)
    torch.testing.assert_close(log_probs.exp().sum(1), torch.ones(3))
    torch.testing.assert_close(out.log_attention.exp().sum(dim=(1, 2, 3)), torch.ones(3))
    torch.testing.assert_close(out.log_spatial.exp().sum(1), torch.ones(3, 8, 8))
    # y_hat_k = sum_ij A_ij Y_k,ij, computed directly from the probabilities.
    direct = torch.einsum("bhw,bkhw->bk", out.log_attention.exp()[:, 0], out.log_spatial.exp())
    torch.testing.assert_close(log_probs, direct.log())


@pytest.mark.parametrize("spec, inter, hidden", [("saol", COMPACT_CIFAR, COMPACT_CIFAR),
                                                  ("saol[layout=wide]", K, 64 // 4),
                                                  ("saol[inter=5,attn_hidden=3]", 5, 3)])
def test_parameter_counts_follow_the_definition(spec, inter, hidden):
    model = make(spec)
    backbone = params(make("gap-fc")) - (64 * K + K)
    saol = map_head_params(64, hidden, False) + logits_params(CIFAR, inter, False)
    ss1 = map_head_params(64, hidden, False)
    assert params(model) == backbone + saol + ss1 + (64 * K + K)  # + SS1 head + GAP-FC
    assert params(model.deploy()) == backbone + saol


def test_resnet50_sizes_compact_and_wide():
    """On ResNet-50 with 1000 classes the wide head is the earlier one (32,460,137 parameters);
    the compact default adds under 1M to the baseline's 25,557,032 (the paper: "almost the same")."""
    with torch.device("meta"):
        compact = build_model("saol", "resnet50", 1000).deploy()
        wide = build_model("saol[layout=wide]", "resnet50", 1000).deploy()
    backbone = 25_557_032 - (2048 * 1000 + 1000)
    width = 2048 // 8
    expected = (backbone + map_head_params(2048, width, True)
                + logits_params(IMAGENET_BOTTLENECK, width, True, classes=1000))
    assert params(compact) == expected
    assert params(compact) - 25_557_032 < 1_000_000
    assert params(wide) == 32_460_137


def test_auto_options_resolve_from_layout_and_backbone():
    def resolved(spec: str, backbone: str, classes: int) -> dict:
        context = method_context(parse_spec(BACKBONES, backbone), classes)
        return resolve_method(parse_spec(METHODS, spec), context).kwargs

    compact = resolved("saol", "resnet50", 1000)
    assert (compact["inter"], compact["attn_hidden"], compact["conv_at"], compact["separable"]) \
        == (256, 256, "stage", True)
    wide = resolved("saol[layout=wide]", "resnet8", K)
    assert (wide["inter"], wide["attn_hidden"], wide["conv_at"], wide["separable"]) \
        == (K, 16, "output", False)
    given = resolved("saol[inter=7,conv_at=output,separable=true]", "resnet8", K)
    assert (given["inter"], given["attn_hidden"], given["conv_at"], given["separable"]) \
        == (7, COMPACT_CIFAR, "output", True)
    assert str(resolve_method(parse_spec(METHODS, "saol"),
                              method_context(parse_spec(BACKBONES, "resnet8"), K))) == "saol"


@pytest.mark.parametrize("conv_at, sides", [("stage", [32, 16, 8]), ("output", [8, 8, 8])])
def test_conv_at_sets_where_the_3x3_layers_run(conv_at, sides):
    model = make(f"saol[conv_at={conv_at}]").eval()
    seen = []
    hooks = [branch.register_forward_hook(lambda m, i, o: seen.append(o.shape[-1]))
             for branch in model.saol.logits.branches]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = model.saol(model.backbone(x))
    for hook in hooks:
        hook.remove()
    assert seen == sides
    with torch.no_grad():  # at_stage: each branch at its stage's resolution, then area-averaged
        features = model.backbone(x)
        inter = [resize(b(f), (8, 8)) if conv_at == "stage" else b(resize(f, (8, 8)))
                 for b, f in zip(model.saol.logits.branches, features)]
        expected = F.log_softmax(model.saol.logits.fuse(torch.cat(inter, dim=1)), dim=1)
    torch.testing.assert_close(out.log_spatial, expected)


def test_kl_directions_of_ss2_and_sd():
    """target_pred = KL(target || prediction) (Y_A and SAOL are the targets), pred_target the
    reverse; both terms recomputed by hand."""
    batch = cutmix_batch()
    terms = {}
    for direction in ("target_pred", "pred_target"):
        model = make(f"saol[ss1=false,ss2_kl={direction},sd_kl={direction}]")
        out = model.training_loss(batch)
        with torch.no_grad():
            features = model.backbone(batch.x)
            saol = model.saol(features)
            y_a = model.saol(model.backbone(batch.x_a)).log_spatial
            gap = F.log_softmax(model.gapfc(features[-1]), dim=1)
        mask = resize(batch.mask, (8, 8))
        if direction == "target_pred":
            ss2 = spatial_kl(y_a, saol.log_spatial, mask)
            sd = F.kl_div(gap, saol.log_probs, reduction="batchmean", log_target=True)
        else:
            ss2 = spatial_kl(saol.log_spatial, y_a, mask)
            sd = F.kl_div(saol.log_probs, gap, reduction="batchmean", log_target=True)
        torch.testing.assert_close(out.terms["ss2"], ss2)
        torch.testing.assert_close(out.terms["sd_kl"], sd)
        terms[direction] = (ss2.item(), sd.item())
    assert terms["target_pred"][0] != pytest.approx(terms["pred_target"][0])
    assert terms["target_pred"][1] != pytest.approx(terms["pred_target"][1])


def test_separable_auto_is_on_for_imagenet_backbones_only():
    def grouped(model):
        return [m for m in model.saol.modules() if isinstance(m, torch.nn.Conv2d) and m.groups > 1]

    assert not grouped(make())
    assert grouped(make("saol[separable=true]"))
    model = make(backbone="resnet18")
    assert grouped(model)
    assert not grouped(make("saol[separable=false]", backbone="resnet18"))
    expected = map_head_params(512, 64, True) + logits_params(IMAGENET_BASIC, 64, True)
    assert params(model.saol) == expected


def test_stage_selection_changes_parameter_count():
    full, last = make(), make("saol[stages=3]")
    dropped = sum(9 * c * COMPACT_CIFAR + 2 * COMPACT_CIFAR for c in CIFAR[:2]) \
        + 2 * COMPACT_CIFAR * K
    assert params(full) - params(last) == dropped
    assert params(full) == params(make("saol[stages=1+2+3]"))
    with pytest.raises(BenchError):
        make("saol[stages=4]")


def test_head_gapfc_deploys_exactly_the_baseline():
    model = make("saol[head=gapfc]").eval()
    deployed = model.deploy()
    assert isinstance(deployed, BaselineDeploy)
    assert params(deployed) == params(make("gap-fc"))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(deployed(x), model(x))
        torch.testing.assert_close(model(x), model.gapfc(model.backbone(x)[-1]))
    with pytest.raises(BenchError):
        make("saol[head=gapfc,sd=false]")


def test_head_saol_deploys_without_training_only_heads():
    model = make().eval()
    deployed = model.deploy()
    assert isinstance(deployed, SaolClassifier)
    assert params(deployed) == params(model) - params(model.mask_head) - params(model.gapfc)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(deployed(x), model(x))


def test_localization_map_is_attention_times_class_logits():
    model = make().eval()
    x = torch.randn(2, 3, 32, 32)
    classes = torch.tensor([3, 7])
    with torch.no_grad():
        maps = model.localization_maps(x, classes)
        probs = model(x).exp()
    assert maps.shape == (2, 8, 8)  # X_L's resolution
    # sum_ij A_ij Y_c,ij is y_hat_c.
    torch.testing.assert_close(maps.sum(dim=(1, 2)), probs[torch.arange(2), classes])
    small = make("saol[out_size=4]").eval()
    with torch.no_grad():
        assert small.localization_maps(x, classes).shape == (2, 4, 4)
        assert small.localization_maps(torch.randn(2, 3, 64, 64), classes).shape == (2, 4, 4)


def test_plain_batch_has_no_self_supervision_terms():
    model = make()
    out = model.training_loss(Batch(torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])))
    assert set(out.terms) == {"sl", "sd_kl", "sd_ce"}
    torch.testing.assert_close(out.loss.detach(), sum(out.terms.values()))


@pytest.mark.parametrize("off, removed", [("ss1", {"ss1"}), ("ss2", {"ss2"}),
                                          ("sd", {"sd_kl", "sd_ce"})])
def test_switching_a_term_off_removes_it_from_the_loss(off, removed):
    batch = cutmix_batch()
    full = make()
    reduced = make(f"saol[{off}=false]")
    reduced.load_state_dict(full.state_dict(), strict=False)  # same weights, minus the unused heads
    out_full = full.training_loss(batch)
    out_reduced = reduced.training_loss(batch)
    assert set(out_full.terms) == {"sl", "ss1", "ss2", "sd_kl", "sd_ce"}
    assert set(out_reduced.terms) == set(out_full.terms) - removed
    torch.testing.assert_close(out_full.loss.detach(), sum(out_full.terms.values()))
    dropped = sum(out_full.terms[name] for name in removed)
    torch.testing.assert_close(out_reduced.loss.detach(), out_full.loss.detach() - dropped)


def test_sd_ce_is_beta_times_gapfc_cross_entropy():
    batch = cutmix_batch()
    model = make("saol[beta=0.25]")
    out = model.training_loss(batch)
    gap_logits = model.gapfc(model.backbone(batch.x)[-1])
    expected = 0.25 * batch.classification_loss(gap_logits).detach()
    torch.testing.assert_close(out.terms["sd_ce"], expected)


def test_ss2_sends_no_gradient_into_the_source_image():
    base = cutmix_batch()

    def grads(spec: str):
        x = base.x.clone().requires_grad_(True)
        x_a = base.x_a.clone().requires_grad_(True)
        batch = Batch(x, base.y, y_a=base.y_a, lam=base.lam, mask=base.mask, x_a=x_a)
        make(spec).training_loss(batch).loss.backward()
        return x.grad, x_a.grad

    g_mixed, g_source = grads("saol[ss1=false,sd=false]")
    g_without, _ = grads("saol[ss1=false,sd=false,ss2=false]")  # same seed, same weights
    assert g_source is None
    assert (g_mixed - g_without).abs().max() > 0


def test_sd_detach_keeps_the_kl_gradient_out_of_saol():
    batch = cutmix_batch()
    for detach in (True, False):
        model = make(f"saol[ss1=false,ss2=false,sd_detach={str(detach).lower()}]")
        out = model.training_loss(batch)
        features = model.backbone(batch.x)
        saol = model.saol(features).log_probs
        teacher = saol.detach() if detach else saol
        kl = F.kl_div(F.log_softmax(model.gapfc(features[-1]), 1), teacher,
                      reduction="batchmean", log_target=True)
        grad = torch.autograd.grad(kl, model.saol.logits.fuse.weight, allow_unused=True)[0]
        assert (grad is None) == detach
        torch.testing.assert_close(kl.detach(), out.terms["sd_kl"])


def test_spatial_kl_against_hand_computation():
    p = torch.tensor([0.5, 0.5]).log()
    q = torch.tensor([0.25, 0.75]).log()
    log_target = torch.stack([p, p], dim=-1).view(1, 2, 1, 2)  # (B, K, H, W): two positions
    log_pred = torch.stack([q, p], dim=-1).view(1, 2, 1, 2)  # differs at the first only
    expected = 0.5 * math.log(2) + 0.5 * math.log(2 / 3)  # KL(p || q)
    first = torch.tensor([1.0, 0.0]).view(1, 1, 1, 2)
    torch.testing.assert_close(spatial_kl(log_target, log_pred, first), torch.tensor(expected))
    half = torch.tensor([0.5, 0.5]).view(1, 1, 1, 2)
    torch.testing.assert_close(spatial_kl(log_target, log_pred, half), torch.tensor(expected / 2))
    torch.testing.assert_close(spatial_kl(log_target, log_pred, torch.zeros(1, 1, 1, 2)),
                               torch.tensor(0.0))


def test_resize_averages_areas_when_shrinking_and_interpolates_when_enlarging():
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., 4:20, 8:24] = 1
    cells = resize(mask, (8, 8))[0, 0]
    assert cells[1:5, 2:6].eq(1).all() and cells.sum() == 16  # 4x4-pixel cells, fully covered
    x = torch.arange(16.0).view(1, 1, 4, 4)
    torch.testing.assert_close(resize(x, (2, 2))[0, 0], torch.tensor([[2.5, 4.5], [10.5, 12.5]]))
    assert resize(x, (4, 4)) is x
    torch.testing.assert_close(resize(x, (8, 8)),
                               F.interpolate(x, size=(8, 8), mode="bilinear", align_corners=False))


def test_invalid_options_are_bench_errors():
    for spec in ("saol[separable=maybe]", "saol[head=cam]", "saol[stages=0]", "saol[out_size=-1]",
                 "saol[layout=narrow]", "saol[inter=0]", "saol[conv_at=input]",
                 "saol[ss2_kl=forward]", "saol[sd_kl=x]"):
        with pytest.raises(BenchError):
            make(spec)
