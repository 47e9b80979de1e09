"""The cost task: registered, needs no training, returns each figure with its unit and settings."""
from __future__ import annotations

import pytest
import torch

from bench.data.base import DataBundle, TensorSplit
from bench.errors import BenchError
from bench.presets import Recipe
from bench.registry import BACKBONES, METHODS, TASKS, parse_spec
from bench.tasks.base import Metric, RunContext
from bench.tasks.cost import CostTask  # importing it registers the task


def tiny_data(size: int = 24, channels: int = 1, classes: int = 3) -> DataBundle:
    images = torch.zeros(4, channels, size, size, dtype=torch.uint8)
    split = TensorSplit(images, torch.arange(4) % classes, [0.5] * channels, [0.25] * channels,
                        [f"{i}.png" for i in range(4)])
    return DataBundle("tiny", classes, channels, size, split, split)


def context(tmp_path, options: str, cutmix: float = 0.0) -> RunContext:
    """A run context whose task options come from the spec ``cost[<options>]``."""
    return RunContext(method=parse_spec(METHODS, "gap-fc"),
                      backbone=parse_spec(BACKBONES, "resnet8"), data=tiny_data(),
                      recipe=Recipe(cutmix=cutmix), seed=0, device=torch.device("cpu"),
                      out_dir=tmp_path, run_id=1,
                      options=parse_spec(TASKS, f"cost[{options}]").kwargs)


def test_cost_is_a_registered_task_without_training():
    task = TASKS.get("cost").obj
    assert isinstance(task, CostTask) and task.name == "cost" and not task.needs_training


@pytest.mark.torch_version
def test_cost_metrics_carry_units_and_settings(tmp_path):
    result = TASKS.get("cost").obj.run(
        context(tmp_path, "batch_size=3,threads=1,pairs=2,min_run_time=0.02"))
    metrics = {m.name: m for m in result.metrics}
    assert all(isinstance(m, Metric) for m in result.metrics)
    assert {"params", "params_added", "gmacs", "gmacs_all", "gmacs_train", "memory_access_mb",
            "saved_activations_mb", "latency_ms", "latency_batch_ms", "train_step_ms",
            "train_step_ratio"} <= set(metrics)
    assert metrics["gmacs"].unit == "GMACs" and metrics["memory_access_mb"].unit == "MB"
    assert metrics["latency_ms"].unit == "ms" and metrics["params"].unit == "count"
    # ResNet-8 on the dataset's 1-channel 24x24 images and 3 classes.
    stem = 16 * 1 * 9
    blocks = 2 * 16 * 16 * 9 + (16 * 32 * 9 + 32 * 32 * 9) + (32 * 64 * 9 + 64 * 64 * 9)
    bns = 2 * (16 + 2 * 16 + 2 * 32 + 2 * 64)
    assert metrics["params"].value == stem + blocks + bns + 64 * 3 + 3
    assert metrics["params_added"].value == 0
    assert metrics["latency_ms"].extra["batch_size"] == 1
    for name in ("memory_access_mb", "saved_activations_mb", "latency_batch_ms", "train_step_ms"):
        extra = metrics[name].extra
        assert extra["batch_size"] == 3 and extra["input_size"] == 24
        assert extra["dtype"] == "float32" and extra["device"] == "cpu" and extra["tool"]
    assert metrics["gmacs"].extra["batch_size"] == "per image"
    assert metrics["train_step_ms"].extra["threads"] == 1


@pytest.mark.torch_version
def test_cost_without_train_step(tmp_path):
    result = TASKS.get("cost").obj.run(
        context(tmp_path, "batch_size=2,train_step=false,threads=1,min_run_time=0.02", cutmix=1.0))
    names = {m.name for m in result.metrics}
    assert "train_step_ms" not in names and "gmacs_train" in names


def test_cost_options_are_parsed_and_checked():
    assert parse_spec(TASKS, "cost[batch_size=16,train_step=no]").kwargs["batch_size"] == 16
    assert parse_spec(TASKS, "cost[train_step=no]").kwargs["train_step"] is False
    with pytest.raises(BenchError, match="unknown option 'batchsize' for task 'cost'"):
        parse_spec(TASKS, "cost[batchsize=4]")
    with pytest.raises(BenchError, match="integer"):
        parse_spec(TASKS, "cost[batch_size=many]")
    task = TASKS.get("cost").obj
    for bad in ("batch_size=0", "pairs=1", "threads=-1", "min_run_time=0", "amp=fp8"):
        with pytest.raises(BenchError, match="task 'cost'"):
            task.check(parse_spec(TASKS, f"cost[{bad}]").kwargs)
