"""The cost of methods on a backbone, each figure with the settings it was measured under.

``profile_methods`` returns one row per method: parameters, MACs (fvcore's default count, the count
with element-wise work, the training computation), memory traffic, training activation memory,
latency and, on request, training-step time interleaved with the baseline. The metric catalogue
(``bench.metrics``) gives each figure's unit, tool and network; ``figure_settings`` adds the input
size, batch size and dtype it was measured at, as COST.md requires. Each method's network is built
once and measured in turn (counts, memory, latency, then training steps).

Which network each figure measures: ``params``, ``gmacs``, ``gmacs_all``, ``memory_access_mb`` and
latency the deployed network (``model.deploy().eval()``); ``gmacs_reference``, only for methods
whose authors' code computes more at inference than our deployed network, that code path
(``model.reference_network()``, fvcore default op set); ``params_train``, ``gmacs_train``,
``saved_activations_mb``, ``peak_memory_mb`` and the training step the training network in train
mode. MAC counts are per image and shape-based (taken on the CPU in float32, so independent of the
device and dtype); ``gmacs_train`` is counted on a batch of 2 (batch norm in training mode needs
two values per channel) and halved, which is exact since every counted op scales with the batch.
The other figures are measured at ``batch_size`` on the device (latency also at batch 1). Training
batches are random data of the right shape; with ``cutmix`` a CutMix batch whose pasted box covers
half the image (the mean pasted fraction under CutMix's Beta(1, 1)).
"""
from __future__ import annotations

import math
import re
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Optional

import torch
from torch import nn

from bench.build import build_from_specs, method_context, resolve_method
from bench.device import amp_dtype, autocast
from bench.errors import BenchError
from bench.methods.base import Batch, MethodNet
from bench.metrics import METRICS
from bench.profiling.flops import count_dispatched, count_traced
from bench.profiling.latency import inference_call, time_call, time_interleaved, train_step_call
from bench.profiling.memory import (count_params, memory_access_bytes, peak_cuda_bytes,
                                    saved_activation_bytes)
from bench.registry import BACKBONES, METHODS, Spec, parse_spec

BASELINE = "gap-fc"
MB = 1e6  # bytes
TRAIN_COUNT_BATCH = 2  # batch on which gmacs_train is counted (then divided by it)
FIGURES = [m.name for m in METRICS if m.task == "cost"]
SPREAD = {"latency_ms": "latency_iqr_ms", "latency_batch_ms": "latency_batch_iqr_ms",
          "train_step_ms": "train_step_iqr_ms"}
PER_IMAGE = ("gmacs", "gmacs_all", "gmacs_train", "gmacs_reference")
TIMED = ("latency_ms", "latency_batch_ms", "train_step_ms", "train_step_ratio")


def figure_settings(name: str, row: dict[str, Any]) -> dict[str, Any]:
    """How figure ``name`` of ``row`` was obtained: tool, mode, input size, batch, dtype, device."""
    info = METRICS.get(name)
    settings: dict[str, Any] = {"tool": info.tool, "mode": info.network,
                                "input_size": row["input_size"]}
    if name in PER_IMAGE:
        settings.update(batch_size="per image", dtype="float32 (shape-based count)")
        if name in ("gmacs_all", "gmacs_train"):
            settings["uncounted_ops"] = row["uncounted_ops_train" if name == "gmacs_train"
                                            else "uncounted_ops"]
    elif not name.startswith("params"):
        settings.update(batch_size=1 if name == "latency_ms" else row["batch_size"],
                        dtype=row["dtype"], device=row["device"], device_name=row["device_name"],
                        channels_last=row["channels_last"])
        if name in TIMED:
            settings.update(threads=row["threads"], compile=row["compile"])
        if name in SPREAD:
            settings["iqr_ms"] = row[SPREAD[name]]
    return settings


def random_batch(batch_size: int, in_channels: int, input_size: int, num_classes: int,
                 cutmix: bool = False, seed: int = 0) -> Batch:
    """A training batch of random images and labels; with ``cutmix``, a CutMix batch pasting a
    box of half the image area (CutMix's mean under Beta(1, 1)) from a second random batch."""
    g = torch.Generator().manual_seed(seed)
    shape = (batch_size, in_channels, input_size, input_size)
    x_b, y = torch.randn(shape, generator=g), torch.randint(num_classes, (batch_size,), generator=g)
    if not cutmix:
        return Batch(x_b, y)
    x_a = torch.randn(shape, generator=g)
    y_a = torch.randint(num_classes, (batch_size,), generator=g)
    side = round(input_size / math.sqrt(2))
    top, left = (int(v) for v in torch.randint(input_size - side + 1, (2,), generator=g))
    return Batch.cutmix(x_b, y, x_a, y_a, (top, top + side, left, left + side))


@dataclass(frozen=True)
class Workload:
    """What is profiled: the backbone, the data's shape and dataset (for the methods' ``auto``
    options), and how training batches look."""

    backbone: Spec
    in_channels: int
    input_size: int
    num_classes: int
    cutmix: bool = False
    seed: int = 0
    dataset: Optional[str] = None

    def resolve(self, method: Spec) -> Spec:
        """``method`` with its ``auto`` options resolved for this workload."""
        return resolve_method(method, method_context(self.backbone, self.num_classes,
                                                     self.in_channels, self.input_size,
                                                     self.dataset))

    def build(self, method: Spec, device: torch.device | str = "cpu") -> MethodNet:
        """The method's training network, initialised from ``seed`` (on the meta device: shapes
        only, no memory, for counting parameters)."""
        torch.manual_seed(self.seed)
        with torch.device(device):
            return build_from_specs(self.resolve(method), self.backbone, self.num_classes,
                                    self.in_channels)

    def images(self, n: int) -> torch.Tensor:
        return torch.randn(n, self.in_channels, self.input_size, self.input_size,
                           generator=torch.Generator().manual_seed(self.seed))

    def batch(self, n: int) -> Batch:
        return random_batch(n, self.in_channels, self.input_size, self.num_classes, self.cutmix,
                            self.seed)


@dataclass(frozen=True)
class Settings:
    """Where and how the measured figures are taken (validated by ``make``)."""

    device: torch.device
    batch_size: int
    threads: int
    amp: str
    channels_last: bool
    compile_mode: Optional[str]

    @classmethod
    def make(cls, batch_size: int, device: torch.device, threads: Optional[int],
             channels_last: bool, amp: str, compile_mode: Optional[str]) -> "Settings":
        if batch_size < 1:
            raise BenchError(f"batch_size must be a positive integer, got {batch_size}",
                             "batch_size")
        if threads is not None and threads < 1:
            raise BenchError(f"threads must be a positive integer, got {threads}", "threads")
        amp = str(amp or "none").lower()
        amp_dtype(amp)
        for param, on in (("channels_last", channels_last), ("amp", amp != "none"),
                          ("compile", bool(compile_mode))):
            if on and device.type != "cuda":
                raise BenchError(f"{param} is measured on CUDA only; use device cuda", param)
        return cls(device, batch_size, threads or torch.get_num_threads(), amp, channels_last,
                   compile_mode)

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def record(self) -> dict[str, Any]:
        """The settings as stored with every row."""
        cuda = self.device.type == "cuda"
        return {"device": str(self.device),
                "device_name": torch.cuda.get_device_name(self.device) if cuda else "cpu",
                "threads": self.threads, "batch_size": self.batch_size,
                "dtype": f"{self.amp} autocast" if self.amp != "none" else "float32",
                "channels_last": self.channels_last, "compile": self.compile_mode,
                "torch": torch.__version__}

    def place(self, *nets: nn.Module) -> None:
        """Move networks (a training network and its deployed one) to the device, in the memory
        format; modules they share move once."""
        for net in nets:
            net.to(self.device, memory_format=self.memory_format)

    def compile(self, module: nn.Module) -> None:
        """torch.compile ``module`` in place (``Module.compile``) when a mode is set."""
        if self.compile_mode:
            module.compile(mode=None if self.compile_mode == "default" else self.compile_mode)

    def move(self, t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        """A tensor on the device; images (4-d) in the memory format."""
        if t is None:
            return None
        fmt = self.memory_format if t.dim() == 4 else torch.preserve_format
        return t.to(self.device, memory_format=fmt)

    def move_batch(self, batch: Batch) -> Batch:
        move = self.move
        return Batch(move(batch.x), move(batch.y), move(batch.y_a), batch.lam, move(batch.mask),
                     move(batch.x_a))


def min_input_size(backbone: Spec, in_channels: int) -> int:
    """The backbone's total downsampling factor: the smallest input side whose last stage is
    computed from the image rather than from padding alone (32 for the ImageNet ResNets, 4 for
    the CIFAR ones); from one forward pass on the meta device (no memory, no compute)."""
    probe = 1024  # a multiple of any power-of-two downsampling up to 1024
    with torch.device("meta"):
        net = BACKBONES.get(backbone.name).obj(in_channels=in_channels, **backbone.kwargs)
        last = net(torch.empty(1, in_channels, probe, probe))[-1]
    return probe // last.shape[-1]


def _out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is an allocator's failure (CUDA's OutOfMemoryError, the CPU allocator's
    "can't allocate memory")."""
    text = str(error)
    return (isinstance(error, torch.OutOfMemoryError) or "can't allocate memory" in text
            or "out of memory" in text.lower())


@contextmanager
def _user_errors(method: Spec, batch_size: int, input_size: int) -> Iterator[None]:
    """Turn batch norm's refusal of a one-image training batch, and running out of memory, into
    one-line user-facing errors naming the batch or input size."""
    try:
        yield
    except ValueError as error:
        if batch_size == 1 and str(error).startswith("Expected more than 1 value per channel"):
            raise BenchError(f"method {str(method)!r} cannot take a training step on one image "
                             f"({error}); use a batch size of 2 or more", "batch_size") from None
        raise
    except RuntimeError as error:
        if not _out_of_memory(error):
            raise
        tried = re.search(r"[Tt]ried to allocate (\d+(?:\.\d+)? ?[A-Za-z]+)", str(error))
        need = f" (an allocation of {tried.group(1)} failed)" if tried else ""
        raise BenchError(f"input_size {input_size}: method {str(method)!r} ran out of memory "
                         f"measuring {input_size}x{input_size} images{need}; use a smaller input "
                         f"size, or a smaller batch size", "input_size") from None


def profile_methods(methods: list[Spec], backbone: Spec, input_size: int, num_classes: int,
                    in_channels: int = 3, batch_size: int = 1,
                    device: torch.device = torch.device("cpu"), train_step: bool = False,
                    threads: Optional[int] = None, *, channels_last: bool = False,
                    amp: str = "none", compile_mode: Optional[str] = None, cutmix: bool = False,
                    latency: bool = True, min_run_time: float = 1.0, train_pairs: int = 5,
                    seed: int = 0, dataset: Optional[str] = None) -> list[dict[str, Any]]:
    """One row of cost figures per parsed method spec on ``backbone``; see the module docstring
    for what each figure measures. ``amp`` (bf16/fp16), ``channels_last`` and ``compile_mode`` (a
    torch.compile mode, "default" for the default) apply on CUDA only; ``latency=False`` skips
    the inference timings. Each row also gives the method's options as resolved for this
    workload (``dataset``: a registered name, for dataset-dependent defaults)."""
    settings = Settings.make(batch_size, device, threads, channels_last, amp, compile_mode)
    if train_step and train_pairs < 2:
        raise BenchError(f"train_pairs must be at least 2 (an IQR needs two), got {train_pairs}",
                         "train_pairs")
    smallest = min_input_size(backbone, in_channels)
    if input_size < smallest:
        raise BenchError(f"input_size {input_size} is too small for backbone {backbone}, which "
                         f"downsamples by {smallest}: use {smallest} or more", "input_size")
    work = Workload(backbone, in_channels, input_size, num_classes, cutmix, seed, dataset)
    baseline_spec = parse_spec(METHODS, BASELINE)
    baseline_params = count_params(work.build(baseline_spec, "meta").deploy())
    baseline = _trainer(work.build(baseline_spec), settings) if train_step else None
    rows = []
    for method in methods:
        model = work.build(method)
        row = {"method": str(method), "method_options": dict(work.resolve(method).options),
               "backbone": str(backbone), "input_size": input_size,
               "num_classes": num_classes, "in_channels": in_channels, "cutmix": cutmix,
               **settings.record()}
        with _user_errors(method, batch_size, input_size):
            row.update(counted_figures(model, work, baseline_params))
            row.update(_memory_figures(model, work, settings))
            if latency:
                row.update(_latency_figures(model, work, settings, min_run_time))
            if baseline is not None:
                row.update(_train_step_figures(model, baseline, work, settings, train_pairs))
        rows.append(row)
    return rows


def counted_figures(model: MethodNet, work: Workload, baseline_params: int) -> dict[str, Any]:
    """Parameters and MAC counts of ``model`` (on the CPU, float32, per image); ``params_added``
    is relative to ``baseline_params``; ``gmacs_reference`` only where the method has a
    reference network."""
    deployed = model.deploy().eval()
    traced = count_traced(deployed, work.images(1))
    reference = model.reference_network()
    if reference is not None:
        reference = count_traced(reference.eval(), work.images(1)).default.giga
    batch = work.batch(TRAIN_COUNT_BATCH)
    model.train()
    training = count_dispatched(lambda: model.training_loss(batch))
    params = count_params(deployed)
    figures = {"params": params, "params_added": params - baseline_params,
               "params_train": count_params(model),
               "gmacs": traced.default.giga, "gmacs_all": traced.all.giga,
               "gmacs_train": training.total / TRAIN_COUNT_BATCH / 1e9,
               "uncounted_ops": traced.all.uncounted, "uncounted_ops_train": training.uncounted}
    if reference is not None:
        figures["gmacs_reference"] = reference
    return figures


def _memory_figures(model: MethodNet, work: Workload, settings: Settings) -> dict[str, Any]:
    """Memory traffic of the deployed network, saved activations and (CUDA) peak memory of the
    training network, at ``settings.batch_size`` on the device."""
    deployed = model.deploy().eval()
    settings.place(model, deployed)
    x = settings.move(work.images(settings.batch_size))
    traffic = memory_access_bytes(inference_call(deployed, x, settings.amp))
    figures = {"memory_access_mb": traffic.total / MB}
    batch = settings.move_batch(work.batch(settings.batch_size))
    model.train()

    def loss() -> torch.Tensor:
        with autocast(settings.device, settings.amp):
            return model.training_loss(batch).loss

    figures["saved_activations_mb"] = saved_activation_bytes(model, loss) / MB
    if settings.device.type == "cuda":
        step = train_step_call(model, batch, settings.amp)
        step()  # the optimizer's momentum buffers exist from the first step on
        figures["peak_memory_mb"] = peak_cuda_bytes(step, settings.device) / MB
    return figures


def _latency_figures(model: MethodNet, work: Workload, settings: Settings,
                     min_run_time: float) -> dict[str, Any]:
    """Inference latency of the deployed network at batch 1 and at ``settings.batch_size``."""
    deployed = model.deploy().eval()
    settings.place(deployed)
    settings.compile(deployed)
    figures = {}
    sizes = [("latency", 1)] + [("latency_batch", settings.batch_size)] * (settings.batch_size > 1)
    for key, n in sizes:
        x = settings.move(work.images(n))
        timing = time_call(inference_call(deployed, x, settings.amp), settings.threads,
                           min_run_time)
        figures[f"{key}_ms"], figures[f"{key}_iqr_ms"] = timing.median_ms, timing.iqr_ms
    return figures


def _trainer(net: MethodNet, settings: Settings) -> MethodNet:
    """``net`` on the device in train mode, the modules ``training_loss`` calls compiled (it is
    not ``forward``) when a compile mode is set."""
    settings.place(net)
    net.train()
    for child in net.children():
        settings.compile(child)
    return net


def _train_step_figures(model: MethodNet, baseline: MethodNet, work: Workload,
                        settings: Settings, pairs: int) -> dict[str, Any]:
    """Training-step time of ``model``, interleaved with the baseline network on the same batch."""
    batch = settings.move_batch(work.batch(settings.batch_size))
    step = train_step_call(_trainer(model, settings), batch, settings.amp)
    paired = time_interleaved(step, train_step_call(baseline, batch, settings.amp),
                              settings.threads, pairs)
    return {"train_step_ms": paired.method.median_ms, "train_step_iqr_ms": paired.method.iqr_ms,
            "baseline_train_step_ms": paired.baseline.median_ms, "train_step_ratio": paired.ratio,
            "train_step_pairs": paired.pairs}
