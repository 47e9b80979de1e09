"""Options resolved from the run's input (``auto``): the registry's typed Auto defaults, each
method's rule (SSIA grid, SimAM lambda, ECA kernel sizes, SAOL widths), build_model's context,
and the resolved values stored with every run and shown by `bench results --format json`."""
import json

import pytest
import torch

import bench
from bench.build import method_context, resolve_method
from bench.cli import main
from bench.errors import BenchError
from bench.methods.eca import Eca
from bench.methods.simam import SimAM
from bench.registry import BACKBONES, METHODS, Auto, Registry, parse_spec
from bench.store import Store


def resolved(spec: str, backbone: str, classes: int = 10, **context) -> dict:
    return resolve_method(parse_spec(METHODS, spec),
                          method_context(parse_spec(BACKBONES, backbone), classes,
                                         **context)).kwargs


def test_auto_options_parse_as_their_type_and_print_as_auto():
    reg = Registry("thing")
    reg.add("x", object(), "d", resolve=lambda options, ctx: options, g=Auto((0,)), f=Auto(0.0))
    spec = parse_spec(reg, "x")
    assert spec.unresolved and str(spec) == "x"
    assert isinstance(spec.kwargs["g"], Auto) and str(spec.kwargs["g"]) == "auto"
    given = parse_spec(reg, "x[g=28+14+7,f=0.1]")
    assert given.kwargs == {"g": (28, 14, 7), "f": 0.1} and not given.unresolved
    assert str(given) == "x[f=0.1,g=28+14+7]"
    assert parse_spec(reg, "x[g=auto]").unresolved and str(parse_spec(reg, "x[g=auto]")) == "x"
    with pytest.raises(BenchError, match="expected a number"):
        parse_spec(reg, "x[f=big]")
    with pytest.raises(ValueError, match="no resolve function"):
        reg.add("y", object(), "d", g=Auto(0))


def test_ssia_grid_is_the_signal_stages_native_size():
    assert resolved("ssia", "resnet8")["grid"] == (16, 8)  # 32x32 CIFAR nets
    assert resolved("ssia", "resnet50", 1000)["grid"] == (28, 14, 7)  # 224x224: the paper's
    assert resolved("ssia", "resnet8", input_size=16)["grid"] == (8, 4)
    assert resolved("ssia", "resnet50", 100, input_size=32)["grid"] == (4, 2, 1)
    assert resolved("ssia[grid=5+5]", "resnet8")["grid"] == (5, 5)  # a given value is kept


def test_simam_lambda_follows_the_dataset():
    assert resolved("simam", "resnet50", 1000, dataset="imagenet")["lambda"] == 0.1
    assert resolved("simam", "resnet50", 1000)["lambda"] == 1e-4
    assert resolved("simam", "resnet110", 100, dataset="cifar100")["lambda"] == 1e-4
    assert resolved("simam[lambda=0.5]", "resnet50", dataset="imagenet")["lambda"] == 0.5
    model = bench.build_model("simam", "resnet18", 1000, dataset="imagenet")
    assert {m.e_lambda for m in model.modules() if isinstance(m, SimAM)} == {0.1}


def eca_sizes(model: torch.nn.Module) -> list[int]:
    return [m.conv.kernel_size[0] for m in model.modules() if isinstance(m, Eca)]


def test_eca_kernels_are_the_released_ones_on_imagenet_only():
    assert resolved("eca", "resnet50", 1000, dataset="imagenet")["k"] == (3, 5, 5, 7)
    assert resolved("eca", "resnet101", 1000, dataset="imagenet")["k"] == (3, 3, 5, 7)
    assert resolved("eca", "resnet50", 1000)["k"] == (5, 5, 5, 7)  # adaptive, per stage
    assert resolved("eca", "resnet18", 1000, dataset="imagenet")["k"] == (3, 5, 5, 5)  # adaptive
    assert resolved("eca", "resnet8", dataset="cifar10")["k"] == (3, 3, 3)
    with torch.device("meta"):
        model = bench.build_model("eca", "resnet50", 1000, dataset="imagenet")
    # ResNet-50 has 3, 4, 6, 3 blocks: 3 * 3 + 4 * 5 + 6 * 5 + 3 * 7 = 80 weights (adaptive: 86)
    assert eca_sizes(model) == [3] * 3 + [5] * 4 + [5] * 6 + [7] * 3
    added = sum(p.numel() for m in model.modules() if isinstance(m, Eca) for p in m.parameters())
    assert added == 80


def test_eca_per_stage_sizes_given_by_hand():
    model = bench.build_model("eca[k=3+5+7]", "resnet20", 10)
    assert eca_sizes(model) == [3] * 3 + [5] * 3 + [7] * 3
    assert eca_sizes(bench.build_model("eca[k=5]", "resnet20", 10)) == [5] * 9
    assert eca_sizes(bench.build_model("eca[k=0]", "resnet20", 10)) == [3] * 9  # adaptive
    with pytest.raises(BenchError, match="one size per stage"):
        bench.build_model("eca[k=3+5]", "resnet20", 10)
    with pytest.raises(BenchError, match="odd kernel sizes"):
        bench.build_model("eca[k=3+4+5]", "resnet20", 10)


def test_build_model_context_defaults_and_checks():
    # without input_size: the backbone's own (224 for ImageNet ResNets); without dataset: none
    assert bench.build_model("ssia", "resnet50", 10).ssia[0].grid == 28
    assert bench.build_model("ssia", "resnet50", 10, input_size=64).ssia[0].grid == 8
    with pytest.raises(BenchError, match="dataset: unknown dataset 'mnist'"):
        bench.build_model("simam", "resnet8", 10, dataset="mnist")
    with pytest.raises(BenchError, match="input_size must be a positive integer"):
        bench.build_model("ssia", "resnet8", 10, input_size=0)


def test_resolved_options_are_stored_and_shown_by_results_json(tmp_path, capsys):
    args = ["run", "--methods", "ssia", "simam", "eca", "saol", "--dataset", "toy-quadrants",
            "--backbone", "resnet8", "--epochs", "1", "--seeds", "1", "--jobs", "1", "--no-progress", "--tasks", "accuracy",
            "--threads", "1", "--out", str(tmp_path)]
    assert main(args) == 0
    capsys.readouterr()
    assert main(["results", "--out", str(tmp_path), "--format", "json"]) == 0
    summary = json.loads(capsys.readouterr().out)["summary"]
    options = {r["method"]: r["method_options"] for r in summary if r["metric"] == "top1"}
    assert main(["results", "--out", str(tmp_path), "--format", "json", "--per-seed"]) == 0
    per_seed = json.loads(capsys.readouterr().out)
    assert options == {r["method"]: r["method_options"] for r in per_seed if r["metric"] == "top1"}
    assert set(options) == {"ssia", "simam", "eca", "saol"}  # labels as written
    assert options["ssia"]["grid"] == [8, 4]  # toy-quadrants: 16x16 inputs
    assert options["simam"]["lambda"] == 1e-4
    assert options["eca"]["k"] == [3, 3, 3]
    assert (options["saol"]["inter"], options["saol"]["attn_hidden"],
            options["saol"]["conv_at"], options["saol"]["separable"]) == (8, 8, "stage", False)
    assert main(args) == 0  # a rerun resolves the same way, so it finds the stored runs
    store = Store(tmp_path / "results.sqlite", create=False)
    try:
        runs = store.runs()
    finally:
        store.close()
    assert len(runs) == 4
    ssia = next(r for r in runs if r["method"] == "ssia")
    stored = json.loads(ssia["config"])["method_options"]["grid"]
    assert json.loads(ssia["options"])["grid"] == stored == [8, 4]
