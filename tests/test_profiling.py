"""Cost measurement: MAC counts against fvcore, FlopCounterMode and hand counts; memory traffic and
saved activations against hand counts; timing helpers; the profile rows."""
from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import bench
from bench.errors import BenchError
from bench.methods.base import BaselineDeploy, Batch, MethodNet, StepOutput
from bench.cli import main
from bench.profiling.profile import (FIGURES, Workload, counted_figures, figure_settings,
                                     min_input_size, profile_methods, random_batch)
from bench.profiling.flops import count_dispatched, count_traced
from bench.profiling.latency import time_call, time_interleaved
from bench.profiling.memory import (count_params, memory_access_bytes, saved_activation_bytes,
                                    tensor_bytes)
from bench.registry import BACKBONES, METHODS, Entry, parse_spec


class SELike(nn.Module):
    """Squeeze-and-excitation: mean, FC, ReLU, FC, sigmoid, channel scaling."""

    def __init__(self, channels: int, r: int = 4) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(channels, channels // r), nn.Linear(channels // r, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean(dim=(2, 3))))))
        return x * s[:, :, None, None]


class CBAMLike(SELike):
    """Channel gate from mean and max, then a 7x7 spatial gate on [max, mean] over channels."""

    def __init__(self, channels: int, r: int = 4) -> None:
        super().__init__(channels, r)
        self.conv = nn.Conv2d(2, 1, 7, padding=3, bias=False)
        self.bn = nn.BatchNorm2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        def mlp(v: torch.Tensor) -> torch.Tensor:
            return self.fc2(F.relu(self.fc1(v)))
        x = x * torch.sigmoid(mlp(x.mean(dim=(2, 3))) + mlp(x.amax(dim=(2, 3))))[:, :, None, None]
        pooled = torch.cat([x.max(dim=1, keepdim=True)[0], x.mean(dim=1, keepdim=True)], 1)
        return x * torch.sigmoid(self.bn(self.conv(pooled)))


class SimAMLike(nn.Module):
    """Parameter-free: x * sigmoid(d / (4 (v + lambda)) + 0.5), d = (x - mu)^2."""

    def __init__(self, channels: int) -> None:
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[2] * x.shape[3] - 1
        d = (x - x.mean(dim=(2, 3), keepdim=True)).pow(2)
        return x * torch.sigmoid(d / (4 * (d.sum(dim=(2, 3), keepdim=True) / n + 1e-4)) + 0.5)


class AuxHead(MethodNet):
    """A training-only method: an auxiliary head on stage 2 in training, the baseline deployed."""

    def __init__(self, backbone: nn.Module, num_classes: int) -> None:
        super().__init__(backbone, num_classes)
        self.aux = nn.Sequential(nn.Conv2d(backbone.stage_channels[1], 64, 3, padding=1),
                                 nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                 nn.Linear(64, num_classes))

    def training_loss(self, batch: Batch) -> StepOutput:
        features = self.backbone(batch.x)
        logits = self.head(features[-1])
        aux = batch.classification_loss(self.aux(features[1]))
        loss = batch.classification_loss(logits) + aux
        return StepOutput(loss, logits, {"aux": aux.detach()})

    def deploy(self) -> nn.Module:
        return BaselineDeploy(self.backbone, self.head)


def small_net(**hooks) -> MethodNet:
    torch.manual_seed(0)
    return MethodNet(BACKBONES.get("resnet8").obj(**hooks), 10)


STAND_INS = {"baseline": {}, "se": {"block_attn": SELike}, "cbam": {"block_attn": CBAMLike},
             "simam": {"conv_attn": SimAMLike}}
RESNET8 = parse_spec(BACKBONES, "resnet8")
WORK = Workload(RESNET8, 3, 32, 10)


def specs(*names: str) -> list:
    return [parse_spec(METHODS, n) for n in names]


@pytest.fixture(scope="module")
def resnet50():
    """ResNet-50 at 224: the deployed baseline, its traced counts and its FlopCounterMode counts."""
    torch.manual_seed(0)
    net = MethodNet(BACKBONES.get("resnet50").obj(), 1000).deploy().eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        dispatched = count_dispatched(lambda: net(x))
    return net, count_traced(net, x), dispatched


@pytest.fixture(scope="module")
def counts():
    """Counted figures of the stand-ins on ResNet-8 at 32x32."""
    baseline_params = count_params(small_net())
    return {name: counted_figures(small_net(**hooks), WORK, baseline_params)
            for name, hooks in STAND_INS.items()}


@pytest.mark.torch_version
def test_resnet50_parameters_and_gmacs_match_torchvision(resnet50):
    net, traced, _ = resnet50
    reference = torchvision.models.resnet50()
    assert count_params(net) == count_params(reference) == 25_557_032
    assert round(traced.default.giga, 2) == 4.11
    theirs = count_traced(reference.eval(), torch.randn(1, 3, 224, 224))
    assert traced.all.total == theirs.all.total
    # fvcore counts torchvision's AdaptiveAvgPool2d (1 per input element) but not GapFc's mean.
    assert theirs.default.total - traced.default.total == 2048 * 7 * 7


@pytest.mark.torch_version
def test_flop_counter_mode_agrees_with_fvcore(resnet50):
    """FlopCounterMode's own conv and matmul formulas (halved) give fvcore's conv and linear MACs;
    with the rule table, both tools give the same total (ReLU, additions, max pool, GAP added)."""
    _, traced, dispatched = resnet50
    assert dispatched.by_op["convolution"] == traced.default.by_op["conv"]
    assert dispatched.by_op["addmm"] == traced.default.by_op["linear"] == 2048 * 1000
    assert dispatched.total == traced.all.total > traced.default.total
    assert {k: traced.all.by_op[k] for k in traced.default.by_op} == traced.default.by_op
    assert traced.all.by_op["max_pool2d"] == 64 * 56 * 56 * 9


@pytest.mark.torch_version
def test_flop_counter_mode_counts_twice_per_mac():
    conv, x = nn.Conv2d(3, 8, 3, padding=1, bias=False), torch.randn(2, 3, 10, 10)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        conv(x)
    macs = 2 * 8 * 10 * 10 * 3 * 9
    assert counter.get_total_flops() == 2 * macs == 2 * count_dispatched(lambda: conv(x)).total


class HandCounted(nn.Module):
    """Ops with known counts on x of shape (1, 2, 4, 6) (48 elements, 12 per channel map)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gated = x * torch.sigmoid(x)                                   # 48 + 48
        pooled = F.max_pool2d(gated, 3, stride=2, padding=1)           # (1, 2, 2, 3): 12 x 9
        spread = gated.var(dim=(2, 3), keepdim=True)                   # 2 x 48
        attention = torch.softmax(x.flatten(2), dim=-1).view_as(x)     # 5 x 48
        return pooled.sum() + spread.mean() + attention.amax()         # 12 + 2 + 48 + 2 (adds)


HAND_COUNT = 48 + 48 + 12 * 9 + 2 * 48 + 5 * 48 + 12 + 2 + 48 + 2


@pytest.mark.torch_version
def test_rule_table_on_hand_counted_ops():
    net, x = HandCounted(), torch.randn(1, 2, 4, 6)
    traced = count_traced(net, x)
    assert traced.default.total == 0
    assert traced.all.total == HAND_COUNT
    assert traced.all.uncounted == []
    assert count_dispatched(lambda: net(x)).total == HAND_COUNT


class GridSample(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grid = torch.zeros(x.shape[0], 3, 3, 2)
        return F.grid_sample(x, grid, align_corners=False)


FVCORE_COUNTED = {
    "batch_norm_train": (nn.BatchNorm2d(4), True, 5 * 200),
    "batch_norm_eval": (nn.BatchNorm2d(4), False, 2 * 200),
    "batch_norm_eval_no_affine": (nn.BatchNorm2d(4, affine=False), False, 200),
    "group_norm": (nn.GroupNorm(2, 4), True, 5 * 200),
    "layer_norm": (nn.LayerNorm([5, 5]), True, 5 * 200),
    "upsample_nearest": (nn.Upsample(scale_factor=2), False, 800),
    "upsample_bilinear": (nn.Upsample(scale_factor=2, mode="bilinear"), False, 4 * 800),
    "adaptive_avg_pool": (nn.AdaptiveAvgPool2d(2), False, 200),
    "grid_sample": (GridSample(), False, 4 * 2 * 4 * 9),
}


@pytest.mark.torch_version
@pytest.mark.parametrize("name", list(FVCORE_COUNTED))
def test_fvcore_rules_are_reproduced_at_the_dispatcher(name):
    """fvcore's own handles (traced) and their replicas (dispatched) agree, on x of 200 elements."""
    module, training, expected = FVCORE_COUNTED[name]
    x = torch.randn(2, 4, 5, 5)
    module.train(training)
    assert count_traced(module, x).default.total == expected
    assert count_dispatched(lambda: module(x)).total == expected


@pytest.mark.torch_version
@pytest.mark.parametrize("name", list(STAND_INS))
def test_dispatch_count_equals_traced_count(name):
    """The rule table gives the same total through fvcore's trace and through FlopCounterMode."""
    net, x = small_net(**STAND_INS[name]).eval(), torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        dispatched = count_dispatched(lambda: net(x))
    assert dispatched.total == count_traced(net, x).all.total
    assert dispatched.uncounted == []


@pytest.mark.torch_version
def test_parameter_free_attention_shows_only_in_gmacs_all(counts):
    base, simam, se = counts["baseline"], counts["simam"], counts["se"]
    assert simam["params_added"] == 0
    assert simam["gmacs"] == base["gmacs"]
    assert simam["gmacs_all"] > base["gmacs_all"]
    # ResNet-8: 3 blocks with 16, 32, 64 channels at 32, 16, 8 pixels; SE adds 2 FCs (r = 4).
    assert se["params_added"] == sum(2 * c * (c // 4) + c // 4 + c for c in (16, 32, 64))


@pytest.mark.torch_version
def test_training_only_method_deploys_the_baseline(counts):
    baseline = counts["baseline"]
    torch.manual_seed(0)
    toy = counted_figures(AuxHead(BACKBONES.get("resnet8").obj(), 10), WORK,
                          baseline["params"])
    for key in ("params", "gmacs", "gmacs_all"):
        assert toy[key] == baseline[key]
    assert toy["params_added"] == 0
    aux_params = 32 * 64 * 9 + 64 + 64 * 10 + 10
    assert toy["params_train"] == baseline["params_train"] + aux_params
    # The auxiliary head's 3x3 conv at 16x16 alone: 32 * 64 * 9 * 256 MACs per image.
    assert toy["gmacs_train"] - baseline["gmacs_train"] > 32 * 64 * 9 * 256 / 1e9


@pytest.mark.torch_version
def test_memory_traffic_grows_with_attention():
    x = torch.randn(2, 3, 32, 32)
    traffic = {}
    for name in ("baseline", "se", "cbam"):
        net = small_net(**STAND_INS[name]).eval()
        with torch.no_grad():
            traffic[name] = memory_access_bytes(lambda: net(x)).total
    assert traffic["baseline"] < traffic["se"] < traffic["cbam"]


@pytest.mark.torch_version
def test_memory_traffic_of_a_1x1_convolution_is_shufflenet_v2s_formula():
    """MAC = hw(c1 + c2) + c1 c2 for a 1x1 convolution (ShuffleNet V2), here in float32 bytes;
    a flatten (a view) adds nothing, a broadcast factor is read once."""
    h, w, c1, c2 = 5, 7, 3, 4
    conv = nn.Conv2d(c1, c2, 1, bias=False)
    x, scale = torch.randn(1, c1, h, w), torch.randn(1, c2, 1, 1)
    with torch.no_grad():
        plain = memory_access_bytes(lambda: conv(x).flatten(1)).total
        scaled = memory_access_bytes(lambda: conv(x) * scale.expand(1, c2, h, w)).total
    assert plain == 4 * (h * w * (c1 + c2) + c1 * c2)
    assert scaled == plain + 4 * (h * w * c2 + c2 + h * w * c2)
    assert tensor_bytes(scale.expand(3, c2, h, w)) == 4 * c2


@pytest.mark.torch_version
def test_saved_activations_count_each_storage_once():
    """conv1 saves x; the in-place ReLU saves its output, which conv2 saves again (same storage);
    weights are not activations; sum() saves nothing."""
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.ReLU(inplace=True),
                        nn.Conv2d(4, 5, 1, bias=False))
    x = torch.randn(2, 3, 8, 8)
    saved = saved_activation_bytes(net, lambda: net(x).sum())
    assert saved == 4 * (2 * 3 * 64 + 2 * 4 * 64)


@pytest.mark.torch_version
def test_saved_activations_of_a_discarded_branch_are_not_held():
    net = nn.Linear(6, 6, bias=False)
    x = torch.randn(4, 6)

    def loss() -> torch.Tensor:
        net(torch.exp(x)).sum()  # built and dropped: its graph is freed
        return net(x).sum()

    assert saved_activation_bytes(net, loss) == 4 * 4 * 6


def test_interleaved_ratio_recovers_a_known_ratio():
    paired = time_interleaved(lambda: time.sleep(0.004), lambda: time.sleep(0.002), threads=1,
                              pairs=3, warmup=1, min_repetition_time=0.02)
    assert paired.ratio > 1.5 and paired.ratio < 2.6  # the method sleeps twice as long
    assert paired.method.median_ms > paired.baseline.median_ms > 2.0
    timing = time_call(lambda: time.sleep(0.002), threads=1, min_run_time=0.05, warmup=1)
    assert timing.samples >= 5 and timing.median_ms > 2.0 and timing.iqr_ms >= 0


def test_cutmix_batch_is_a_cutmix_mix():
    batch = random_batch(3, 2, 16, 5, cutmix=True)
    assert batch.mixed and batch.mask.shape == (3, 1, 16, 16)
    assert batch.lam == pytest.approx(batch.mask.mean().item())
    assert 0.4 < batch.lam < 0.6
    x_b = random_batch(3, 2, 16, 5).x
    assert torch.equal(batch.x, batch.mask * batch.x_a + (1 - batch.mask) * x_b)


@pytest.mark.torch_version
def test_profile_rows_carry_figures_and_settings(monkeypatch):
    monkeypatch.setitem(METHODS._entries, "toy-aux",
                        Entry("toy-aux", lambda make, k: AuxHead(make(), k), "test stand-in"))
    rows = profile_methods(specs("gap-fc", "toy-aux"), RESNET8, 32, 10, batch_size=2, threads=1,
                           train_step=True, min_run_time=0.02, train_pairs=2)
    base, toy = rows
    assert base["params_added"] == toy["params_added"] == 0
    assert toy["gmacs"] == base["gmacs"] and toy["gmacs_train"] > base["gmacs_train"]
    assert toy["saved_activations_mb"] > base["saved_activations_mb"] > 0
    assert toy["memory_access_mb"] == base["memory_access_mb"]
    for row in rows:
        assert {"latency_ms", "latency_batch_ms", "train_step_ms", "train_step_ratio"} <= set(row)
        assert row["train_step_ratio"] > 0 and math.isfinite(row["train_step_ratio"])
        settings = (row["device"], row["threads"], row["batch_size"], row["dtype"])
        assert settings == ("cpu", 1, 2, "float32")
        for name in FIGURES:
            if name in row:
                settings = figure_settings(name, row)
                assert settings["input_size"] == 32 and "tool" in settings
    assert "peak_memory_mb" not in base  # CPU


@pytest.mark.parametrize("kwargs", [{"batch_size": 0}, {"device": "tpu"}, {"channels_last": True},
                                    {"amp": "fp16"}, {"amp": "float8"}, {"compile": True},
                                    {"input_size": 0}, {"methods": "gap-fc[r=2]"}])
def test_bad_settings_are_user_errors(kwargs):
    """Each bad setting is a BenchError naming its parameter (the CLI shows the flag)."""
    args = {"methods": "gap-fc", "backbone": "resnet8", "input_size": 32, "num_classes": 10,
            **kwargs}
    with pytest.raises(BenchError) as error:
        bench.profile(**args)
    name = next(iter(kwargs))
    assert error.value.param == name and str(error.value).startswith(name)


@pytest.mark.parametrize("backbone, smallest", [
    ("resnet8", 4), ("resnet110", 4), ("wrn-40-2", 4),  # CIFAR: stride-2 stages 2 and 3
    ("resnet18", 32), ("resnet50", 32)])  # ImageNet: stride-2 stem conv and max-pool, stages 2-4
def test_min_input_size_is_the_backbones_downsampling(backbone, smallest):
    spec = parse_spec(BACKBONES, backbone)
    assert min_input_size(spec, 3) == smallest
    net = BACKBONES.get(backbone).obj(in_channels=3).eval()
    with torch.no_grad():  # a real forward: each side of the last stage is the input side / factor
        assert net(torch.zeros(1, 3, 3 * smallest, 3 * smallest))[-1].shape[-2:] == (3, 3)
    with pytest.raises(BenchError) as error:
        profile_methods(specs("gap-fc"), spec, smallest - 1, 10, latency=False)
    assert error.value.param == "input_size"
    assert str(error.value) == (f"input_size {smallest - 1} is too small for backbone {backbone}, "
                                f"which downsamples by {smallest}: use {smallest} or more")


@pytest.mark.parametrize("args, message", [
    (["--input-size", "1"], "--input-size 1 is too small for backbone resnet50, which downsamples "
                            "by 32: use 32 or more"),
    (["--backbone", "resnet8", "--input-size", "3"], "--input-size 3 is too small for backbone "
                                                     "resnet8, which downsamples by 4: use 4 or more"),
])
def test_too_small_input_is_one_line_exit_2(capsys, args, message):
    assert main(["profile", "--methods", "gap-fc", *args]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {message}\n"


CPU_OOM = ("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: "
           "you tried to allocate 120000000000 bytes. Error code 12 (Cannot allocate memory)")
CUDA_OOM = "CUDA out of memory. Tried to allocate 111.76 GiB. GPU 0 has a total capacity of 79 GiB"


@pytest.mark.parametrize("error, size", [(RuntimeError(CPU_OOM), "120000000000 bytes"),
                                         (torch.OutOfMemoryError(CUDA_OOM), "111.76 GiB")])
def test_out_of_memory_names_the_input_size(monkeypatch, capsys, error, size):
    def allocate(self, n):  # what torch raises when the input does not fit
        raise error

    monkeypatch.setattr(Workload, "images", allocate)
    code = main(["profile", "--methods", "gap-fc", "--backbone", "resnet8", "--input-size",
                 "100000", "--num-classes", "10"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert err == (f"error: --input-size 100000: method 'gap-fc' ran out of memory measuring "
                   f"100000x100000 images (an allocation of {size} failed); use a smaller input "
                   f"size, or a smaller batch size\n")


def test_other_runtime_errors_are_not_taken_for_memory(monkeypatch):
    def broken(self, n):
        raise RuntimeError("shape mismatch")

    monkeypatch.setattr(Workload, "images", broken)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        profile_methods(specs("gap-fc"), RESNET8, 32, 10, latency=False)


def test_the_no_cuda_runtime_notice_alone_is_silenced(tmp_path):
    """torch.utils.benchmark imports torch.utils.cpp_extension, which warns "No CUDA runtime is
    found" when a CUDA toolkit is installed without a usable GPU: timing drops that one message."""
    env = dict(os.environ, CUDA_HOME=str(tmp_path), CUDA_VISIBLE_DEVICES="",
               PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    notice = "No CUDA runtime is found"
    control = subprocess.run([sys.executable, "-c", "import torch.utils.benchmark"], env=env,
                             capture_output=True, text=True, timeout=300)
    assert notice in control.stderr  # what torch prints on such a machine
    script = ("import logging\n"
              "from bench.profiling.latency import time_call\n"
              "time_call(lambda: None, 1, min_run_time=0.01)\n"
              "logging.getLogger('torch.utils.cpp_extension').warning('another warning')\n")
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert notice not in proc.stderr and "another warning" in proc.stderr
