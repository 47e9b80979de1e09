"""benchmarks/gpu_check.py: its comparison rules, its part isolation and JSON output, its cheapest
parts on the CPU, and (with mocks) the CUDA-only branches it relies on."""
import json
import math

import pytest
import torch

import bench
from bench.device import synchronize
from bench.presets import Recipe
from bench.registry import DATASETS
from bench.train import train
from benchmarks import gpu_check as gc


# -- comparison with the CPU reference ------------------------------------------------------------
def counts(**extra):
    return {"params": 78_042, "params_train": 78_042, "gmacs": 0.0123, "gmacs_all": 0.0131,
            "gmacs_train": 0.0395, **extra}


def test_metrics_within_tolerance_and_equal_counts_pass():
    top1, top5 = gc.TOLERANCE_PP["top1"], gc.TOLERANCE_PP["top5"]
    ours = {"se": counts(top1=40.0 + top1, top5=80.0)}
    ref = {"se": counts(top1=40.0, top5=80.0 + top5)}  # each exactly at its tolerance
    checks, diffs = gc.compare_metrics(ours, ref)
    assert all(c.ok for c in checks), checks
    assert diffs == {"se": {"top1": top1, "top5": -top5}}


def test_top1_beyond_tolerance_or_unequal_count_or_missing_method_fails():
    beyond = 40.0 + gc.TOLERANCE_PP["top1"] + 0.01
    ours = {"se": counts(top1=beyond), "eca": counts(top1=50.0, gmacs=0.0124)}
    ref = {"se": counts(top1=40.0), "eca": counts(top1=50.0), "cbam": counts(top1=40.0)}
    failed = {c.name for c in gc.compare_metrics(ours, ref)[0] if not c.ok}
    assert failed == {"se: top1", "eca: counts", "cbam: in both runs"}


def test_a_count_present_in_only_one_run_is_unequal():
    checks, _ = gc.compare_metrics({"abn": counts(gmacs_reference=0.02)}, {"abn": counts()})
    assert [c.name for c in checks if not c.ok] == ["abn: counts"]


def test_reference_with_other_settings_is_refused(tmp_path):
    settings = {"preset": "smoke", "epochs": 3, "quick": False}
    report = {"parts": {"smoke": {"data": {"settings": dict(settings, epochs=1),
                                           "metrics": {"se": counts()}}}}}
    (tmp_path / gc.JSON_NAME).write_text(json.dumps(report))
    with pytest.raises(ValueError, match="the reference ran with"):
        gc.load_reference(tmp_path, settings)
    assert gc.load_reference(tmp_path, dict(settings, epochs=1)) == {"se": counts()}


# -- part isolation and the JSON file --------------------------------------------------------------
def test_a_failing_part_is_recorded_and_the_others_still_run(tmp_path, monkeypatch, capsys):
    ran = []

    def good(ctx):
        ran.append("good")
        part = gc.Part(summary="fine")
        part.check("one", True)
        return part

    def boom(ctx):
        ran.append("boom")
        raise RuntimeError("CUDA error: an illegal memory access")

    def refuted(ctx):
        ran.append("refuted")
        part = gc.Part()
        part.check("speed", False, "0.80 < 0.95")
        return part

    monkeypatch.setattr(gc, "PARTS", {"good": good, "boom": boom, "refuted": refuted})
    code = gc.main(["--device", "cpu", "--out", str(tmp_path), "--threads", "1",
                    "--parts", "boom,good,refuted"])
    assert code == 1 and ran == ["boom", "good", "refuted"]
    parts = json.loads((tmp_path / gc.JSON_NAME).read_text())["parts"]
    assert [parts[n]["status"] for n in ("boom", "good", "refuted")] == ["failed", "ok", "failed"]
    assert parts["boom"]["error"] == "RuntimeError: CUDA error: an illegal memory access"
    assert "raise RuntimeError" in parts["boom"]["traceback"]
    assert parts["refuted"]["error"] == "failed checks: speed"
    assert parts["good"]["checks"] == [{"name": "one", "ok": True, "detail": ""}]
    table = capsys.readouterr().out
    assert "good         ok" in table and "failed checks: speed" in table


def test_all_parts_passing_exit_zero_and_unknown_part_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(gc, "PARTS", {"good": lambda ctx: gc.Part()})
    assert gc.main(["--device", "cpu", "--out", str(tmp_path), "--parts", "good"]) == 0
    assert gc.main(["--device", "cpu", "--out", str(tmp_path), "--parts", "good,nope"]) == 2


# -- the cheapest parts, on the CPU ---------------------------------------------------------------
def test_siou_step_gradients_are_reproducible_and_nonzero():
    loss_a, grads_a = gc.step_gradients("siou", torch.device("cpu"))
    loss_b, grads_b = gc.step_gradients("siou", torch.device("cpu"))
    assert math.isfinite(loss_a) and loss_a == loss_b
    assert torch.equal(grads_a, grads_b) and grads_a.abs().sum() > 0


def test_loop_speeds_on_cifar_shaped_data():
    data = gc.cifar_shaped(20, torch.device("cpu"))
    assert data.train.images.shape == (20, 3, 32, 32) and data.train.images.dtype == torch.uint8
    speeds = gc.loop_speeds("resnet8", data, batch=8, reps=1, device=torch.device("cpu"))
    assert speeds["ratio"] == pytest.approx(speeds["trainer_images_per_s"]
                                            / speeds["minimal_images_per_s"])
    assert all(v > 0 for v in speeds.values())


# -- CUDA-only branches, with mocks ------------------------------------------------------------------
def test_torchrun_processes_per_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert gc.default_nproc(torch.device("cuda")) == 1  # NCCL: one rank per GPU
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    assert gc.default_nproc(torch.device("cuda")) == 2
    assert gc.default_nproc(torch.device("cpu")) == 2  # gloo


def test_synchronize_waits_on_cuda_only(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: calls.append(device))
    synchronize(torch.device("cpu"))
    assert calls == []
    synchronize(torch.device("cuda", 0))
    assert calls == [torch.device("cuda", 0)]


def test_full_fp32_turns_tf32_off_and_restores_it():
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    with gc.full_fp32():
        assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
    assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == before


@pytest.mark.torch_version
@pytest.mark.parametrize("amp, enabled", [("fp16", True), ("bf16", False), ("none", False)])
def test_trainer_scales_gradients_for_fp16_only(monkeypatch, amp, enabled):
    """The precision part's fp16 variant relies on the trainer's GradScaler (bench/train.py):
    enabled for fp16 only, and every step's loss goes through it."""
    made = []

    class SpyScaler(torch.amp.GradScaler):
        def __init__(self, device, enabled=True, **kwargs):
            super().__init__(device, enabled=enabled, **kwargs)
            self.args, self.scaled = (device, enabled), 0
            made.append(self)

        def scale(self, outputs):
            self.scaled += 1
            return super().scale(outputs)

    monkeypatch.setattr(torch.amp, "GradScaler", SpyScaler)
    data = DATASETS.get("toy-quadrants").obj(None, n=64)
    torch.manual_seed(0)
    model = bench.build_model("gap-fc", "resnet8", 4, in_channels=1)
    recipe = Recipe(epochs=1, batch_size=32, amp=amp)
    train(model, data, recipe, 0, torch.device("cpu"), progress=False, test_curve=False)
    assert [s.args for s in made] == [("cpu", enabled)] and made[0].scaled == 2


def test_train_variant_reports_steady_speed_from_the_second_epoch():
    data = DATASETS.get("toy-quadrants").obj(None, n=64)
    two = gc.train_variant("gap-fc", "resnet8", data, Recipe(epochs=2, batch_size=32),
                           torch.device("cpu"))
    assert two.finite and len(two.train_loss) == 2 and two.images_per_s > 0
    assert 0 <= two.test_top1 <= 100
    one = gc.train_variant("gap-fc", "resnet8", data, Recipe(epochs=1, batch_size=32),
                           torch.device("cpu"))
    assert math.isnan(one.images_per_s)  # a single epoch also compiles and autotunes
