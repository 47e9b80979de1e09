"""GPU check: the suite's CUDA paths exercised end to end, with a short table and a JSON
file of everything measured.

    PYTHONPATH=. python benchmarks/gpu_check.py --device cuda --out gpu-check
    PYTHONPATH=. python benchmarks/gpu_check.py --device cpu --quick --out /tmp/gpu-check

``--quick`` shrinks every part (epochs, images, profile input and batch, timing budgets) so that
the same code runs on a CPU in minutes. Each part is independent: a part that fails is recorded
with its error and the others still run; the exit code is 1 when any part failed. Parts
(``--parts`` picks some):

- ``environment``: versions, the device, and the packages the other parts import.
- ``smoke``: ``bench.run(preset="smoke")`` of every method with the tasks accuracy, wsol and cost,
  data on the device; every run completes, and the metrics are compared with a CPU reference at
  the same seed: top-1 and top-5 within ``TOLERANCE_PP`` (15) percentage points, parameter and MAC
  counts exactly. GPU kernels add floats in another order than the CPU's and three epochs of SGD
  amplify such differences: on the CPU alone, changing only the summation order (channels_last)
  moved smoke top-1 by 0.0, 6.7, 8.0 and 3.6 pp (gap-fc, siou, saol, abn). 15 pp is about twice
  the largest of these, wide enough for ten methods and still far below the fall to chance a
  broken device path causes; the tight numerical comparison is the ``steps`` part's. Counts are
  computed on the CPU from shapes, so they must be equal. The reference is ``--reference DIR``
  (the JSON of an earlier ``--device cpu --parts smoke`` run of this script, same ``--quick``
  setting), or else, on CUDA, a CPU run of the same suite in this invocation (accuracy and cost
  only; cost without timed training steps).
- ``precision``: GAP-FC on ResNet-20 trained by bench's trainer for 4 epochs of digits-clutter
  (``--quick``: ResNet-8, 2 epochs, 256 images) in float32, ``amp=bf16``, ``amp=fp16`` (the
  trainer's GradScaler), ``channels_last`` and ``compile``: each trains (finite losses and
  weights, test top-1 above chance; not judged with ``--quick``), and its training images/s over
  the epochs after the first (which compiles and autotunes) against float32.
- ``throughput``: ResNet-110 and WRN-28-10 on CIFAR-shaped random data (50,000 32x32x3 uint8
  images with CIFAR-10's normalisation and augmentation, kept on the device): bench's trainer
  against benchmarks/trainer_speed.py's minimal loop (imported) on the same model, one measured
  epoch each after a warm-up on a few batches; target: trainer / minimal >= ``THROUGHPUT_TARGET``
  (0.95; not checked with ``--quick``, whose few images time nothing). The minimal loop indexes
  pre-normalised float tensors; the trainer normalises and augments each batch, as it trains.
- ``profile``: ``bench.profile(..., device=...)`` of every method on ResNet-50: latency at batch 1
  and 64, peak CUDA memory of a training step.
- ``torchrun``: ``torchrun --nproc_per_node N -m bench run --preset smoke --methods gap-fc siou``
  as a subprocess (N: the CUDA devices, at most 2; on the CPU 2 gloo processes). bench joins a
  process group only when N > 1 (bench/distributed.py), so on one GPU the check also runs a
  training step of sIoU under ``torchrun`` in a process group of its own (NCCL on CUDA, gloo on
  the CPU) with bench's gradient averaging: the averaged gradients must equal each rank's own.
  The suite must exit 0 with both runs complete and above chance (not judged with ``--quick``).
- ``steps``: one training step of every method (sIoU's differentiates twice) on the device
  against the same step on the CPU, same weights and batch, TF32 off: gradients within
  ``GRADIENT_TOLERANCE`` (1e-2) relative norm: generous for a difference in summation order only,
  and far below the order-1 change of a wrong kernel or a lost gradient term; and SAOL trained by bench's trainer with CutMix
  (probability 1) under ``amp=bf16`` and ``amp=fp16``: finite losses and weights (``--quick``: on
  the first 96 training images).

Offline GPU machines. The suite runs from source (``PYTHONPATH=.``; the script also puts the
repository first on ``sys.path``). fvcore (MAC counts: the cost task and ``profile``) needs
iopath, portalocker and termcolor besides packages such a machine usually has; fvcore and iopath
are published as source archives only, so build pure-Python wheels where there is internet::

    pip wheel --no-deps -w wheels/ fvcore iopath yacs portalocker termcolor tabulate

and install them there with ``pip install --no-index --no-deps wheels/*.whl``. optuna, ray and
grad-cam are not needed here.

Older torch. The pyproject floors are torch 2.14 / torchvision 0.29; a GPU machine may have older
ones. The code on these paths was read for newer APIs: none of torch.accelerator, the
``fp32_precision`` settings or other 2.12+ additions is used; the newest calls
(``torch.OutOfMemoryError``, on an error path, ``torch.amp.GradScaler(device)``,
``nn.Module.compile``) predate torch 2.6.
This script sets TF32 off only through ``torch.backends.cudnn.allow_tf32`` and
``torch.backends.cuda.matmul.allow_tf32`` (restored after), which every 2.x release has.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from source, whatever the current directory
    sys.path.insert(0, str(ROOT))

import torch

import bench
from bench.build import build_from_specs
from bench.data.base import Augment, DataBundle, TensorSplit
from bench.data.cifar import CIFAR10
from bench.device import resolve_device
from bench.plugins import load_all
from bench.presets import PRESETS
from bench.profiling.profile import random_batch
from bench.registry import BACKBONES, DATASETS, METHODS, parse_spec
from bench.suite import load_dataset
from bench.train import evaluate, train
from benchmarks.trainer_speed import minimal_epoch

JSON_NAME = "gpu_check.json"
TOLERANCE_PP = {"top1": 15.0, "top5": 15.0}  # CPU vs device, percentage points (see the docstring)
EXACT = ("params", "params_added", "params_train", "gmacs", "gmacs_all", "gmacs_train",
         "gmacs_reference")  # shape-based counts: equal on every device
WSOL_METRICS = ("gt_known_loc", "top1_loc", "maxboxacc_v2", "pxap")
CHANCE_TOP1 = 10.0  # digits-clutter has 10 classes
THROUGHPUT_TARGET = 0.95  # bench's trainer at least 95 % of the minimal loop's images/s
GRADIENT_TOLERANCE = 1e-2  # relative norm of (device - CPU) gradients of one step, TF32 off
PACKAGES = ("numpy", "pandas", "scipy", "sklearn", "cv2", "tqdm", "tabulate", "seaborn",
            "statsmodels", "fvcore", "iopath", "portalocker", "termcolor")


@dataclass(frozen=True)
class Sizes:
    """How big each part is: the full check, or ``--quick`` for a CPU."""

    smoke_recipe: dict[str, Any]  # recipe and dataset overrides of the smoke preset
    wsol: str  # the wsol task spec
    cost: str  # the cost task spec on the checked device
    precision_backbone: str
    precision_epochs: int  # at least 2: speed is timed after the first
    precision_images: Optional[int]  # first images of the smoke dataset's train split (None: all)
    throughput_models: tuple[str, ...]
    throughput_images: int
    throughput_batch: int
    throughput_reps: int
    profile_input: int
    profile_batch: int
    torchrun_args: tuple[str, ...]  # extra `bench run` arguments
    saol_epochs: int
    saol_images: Optional[int]  # first images of the smoke dataset's train split (None: all)


FULL = Sizes(smoke_recipe={}, wsol="wsol", cost="cost[min_run_time=0.2,pairs=3]",
             precision_backbone="resnet20", precision_epochs=4, precision_images=None,
             throughput_models=("resnet110", "wrn-28-10"), throughput_images=50_000,
             throughput_batch=128, throughput_reps=1, profile_input=224, profile_batch=64,
             torchrun_args=("--tasks", "accuracy", "wsol"), saol_epochs=2, saol_images=None)
SMALL_DIGITS = "digits-clutter[copies=1,eval_copies=1,canvas=16,min_size=8,max_size=14]"
QUICK = Sizes(smoke_recipe={"epochs": 1, "dataset": SMALL_DIGITS},
              wsol="wsol[cam_curve_interval=0.05]",
              cost="cost[batch_size=2,min_run_time=0.02,pairs=2]",
              precision_backbone="resnet8", precision_epochs=2, precision_images=256,
              throughput_models=("resnet110", "wrn-28-10"), throughput_images=16,
              throughput_batch=8, throughput_reps=1, profile_input=64, profile_batch=2,
              torchrun_args=("--tasks", "accuracy", "--epochs", "1", "--dataset", SMALL_DIGITS),
              saol_epochs=1, saol_images=96)
REFERENCE_COST = "cost[train_step=false,min_run_time=0.02]"  # counts only matter there


@dataclass
class Check:
    """One pass/fail statement of a part, with what it measured."""

    name: str
    ok: bool
    detail: str = ""


@dataclass
class Part:
    """What a part returns: its checks, its measurements and a one-line summary."""

    checks: list[Check] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    summary: str = ""

    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        self.checks.append(Check(name, bool(ok), detail))
        return bool(ok)


@dataclass
class Context:
    """The settings every part reads."""

    device: torch.device
    out: Path
    sizes: Sizes
    quick: bool
    threads: int
    reference: Optional[Path]
    cpu_reference: bool
    nproc: int

    @property
    def work(self) -> Path:
        return self.out / "gpu_check_work"


# -- running parts: each isolated, recorded, written as it finishes ---------------------------------
def run_part(fn: Callable[[Context], Part], ctx: Context) -> dict[str, Any]:
    """``fn(ctx)`` as a record: status ok when every check passed, failed on a failed check or an
    exception (its traceback's last lines kept); never raises."""
    start = time.perf_counter()
    try:
        part = fn(ctx)
        failed = [c.name for c in part.checks if not c.ok]
        record = {"status": "failed" if failed else "ok",
                  "error": f"failed checks: {', '.join(failed)}" if failed else None,
                  "summary": part.summary, "checks": [dataclasses.asdict(c) for c in part.checks],
                  "data": part.data}
    except Exception as error:  # noqa: BLE001 - a part's failure is the result, not a crash
        tail = "".join(traceback.format_exception(error)[-6:])
        record = {"status": "failed", "error": f"{type(error).__name__}: {error}",
                  "traceback": tail, "summary": "", "checks": [], "data": {}}
    record["seconds"] = round(time.perf_counter() - start, 2)
    return record


def write_json(path: Path, report: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=2, default=str))
    tmp.replace(path)


def table(parts: dict[str, dict[str, Any]]) -> str:
    """The printed summary: one line per part."""
    lines = [f"{'part':<12} {'status':<7} {'seconds':>8}  summary / error", "-" * 78]
    for name, rec in parts.items():
        text = rec["summary"] if rec["status"] == "ok" else rec["error"]
        lines.append(f"{name:<12} {rec['status']:<7} {rec['seconds']:>8.1f}  {text}")
    return "\n".join(lines)


# -- environment ------------------------------------------------------------------------------------
def part_environment(ctx: Context) -> Part:
    part = Part()
    import importlib

    missing = []
    for name in PACKAGES:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    cuda = ctx.device.type == "cuda"
    part.data = {"python": platform.python_version(), "torch": torch.__version__,
                 "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if cuda else None,
                 "device": str(ctx.device),
                 "device_name": torch.cuda.get_device_name(ctx.device) if cuda else "cpu",
                 "device_count": torch.cuda.device_count() if cuda else 0,
                 "cpu_count": os.cpu_count(), "threads": ctx.threads, "missing": missing}
    try:
        import torchvision

        part.data["torchvision"] = torchvision.__version__
    except ImportError:
        missing.append("torchvision")
    part.check("packages", not missing, f"missing: {', '.join(missing)} (see the docstring: "
               "pip wheel ... then pip install --no-index --no-deps)" if missing else "all import")
    part.summary = (f"torch {torch.__version__}, {part.data['device_name']}"
                    + (f", missing {', '.join(missing)}" if missing else ""))
    return part


# -- smoke ------------------------------------------------------------------------------------------
def smoke_settings(ctx: Context) -> dict[str, Any]:
    """What a reference must share with this run for its metrics to be comparable."""
    recipe = PRESETS.get("smoke").obj.replace(**{k: v for k, v in ctx.sizes.smoke_recipe.items()
                                                 if k != "dataset"})
    return {"preset": "smoke", "epochs": recipe.epochs, "batch_size": recipe.batch_size,
            "dataset": ctx.sizes.smoke_recipe.get("dataset", recipe.dataset),
            "backbone": recipe.backbone, "seed": 0, "quick": ctx.quick}


def run_smoke(ctx: Context, device: torch.device, tasks: list[str],
              threads: Optional[int]) -> tuple[dict[str, dict[str, float]], list[str]]:
    """The smoke suite of every method on ``device``: metrics per method, and the failed runs."""
    out = ctx.work / f"smoke-{device.type}"
    result = bench.run(None, preset="smoke", tasks=tasks, device=device, out=out, threads=threads,
                       progress=False, report=False, **ctx.sizes.smoke_recipe)
    metrics: dict[str, dict[str, float]] = {}
    for record in result.records:
        metrics.setdefault(record["method"], {})[record["metric"]] = record["value"]
    return metrics, [f"{o.method}: {o.reason}" for o in result.failed]


def compare_metrics(metrics: dict[str, dict[str, float]],
                    reference: dict[str, dict[str, float]]) -> tuple[list[Check], dict[str, Any]]:
    """Checks of ``metrics`` against ``reference``, per method: ``TOLERANCE_PP`` metrics within
    their tolerance, ``EXACT`` ones equal; and the differences."""
    checks, diffs = [], {}
    for method in sorted(set(metrics) | set(reference)):
        ours, ref = metrics.get(method), reference.get(method)
        if ours is None or ref is None:
            checks.append(Check(f"{method}: in both runs", False,
                                "missing here" if ours is None else "missing in the reference"))
            continue
        for name, tolerance in TOLERANCE_PP.items():
            if name in ours and name in ref:
                diff = ours[name] - ref[name]
                diffs.setdefault(method, {})[name] = round(diff, 4)
                checks.append(Check(f"{method}: {name}", abs(diff) <= tolerance,
                                    f"{ours[name]:.2f} vs {ref[name]:.2f} (|diff| <= {tolerance})"))
        unequal = [n for n in EXACT if (n in ours) != (n in ref) or ours.get(n) != ref.get(n)]
        checks.append(Check(f"{method}: counts", not unequal,
                            "equal" if not unequal else
                            "; ".join(f"{n} {ours.get(n)} vs {ref.get(n)}" for n in unequal)))
    return checks, diffs


def load_reference(path: Path, settings: dict[str, Any]) -> dict[str, dict[str, float]]:
    """The smoke metrics of an earlier run of this script (``path``: its --out or its JSON),
    refused when they were measured with other settings."""
    file = path / JSON_NAME if path.is_dir() else path
    smoke = json.loads(file.read_text())["parts"].get("smoke", {}).get("data", {})
    if "metrics" not in smoke:
        raise ValueError(f"{file} has no smoke metrics")
    if smoke.get("settings") != settings:
        raise ValueError(f"{file}: the reference ran with {smoke.get('settings')}, this run with "
                         f"{settings}")
    return smoke["metrics"]


def part_smoke(ctx: Context) -> Part:
    part = Part()
    settings = smoke_settings(ctx)
    metrics, failed = run_smoke(ctx, ctx.device, ["accuracy", ctx.sizes.wsol, ctx.sizes.cost],
                                ctx.threads)
    part.data.update(settings=settings, metrics=metrics)
    part.check("every run completed", not failed, "; ".join(failed) or f"{len(metrics)} methods")
    part.check("every method measured", set(metrics) == set(METHODS.names()),
               f"missing: {sorted(set(METHODS.names()) - set(metrics))}")
    bad = [f"{m}: {n} {v.get(n)}" for m, v in metrics.items() for n in WSOL_METRICS
           if not 0 <= v.get(n, -1) <= 100]
    part.check("wsol metrics in [0, 100]", not bad, "; ".join(bad))
    reference, source = None, "none"
    if ctx.reference is not None:
        reference, source = load_reference(ctx.reference, settings), str(ctx.reference)
    elif ctx.device.type != "cpu" and ctx.cpu_reference:
        reference, ref_failed = run_smoke(ctx, torch.device("cpu"), ["accuracy", REFERENCE_COST],
                                          None)
        part.check("CPU reference runs completed", not ref_failed, "; ".join(ref_failed))
        source = "CPU, this invocation"
    part.data["reference"] = {"source": source, "metrics": reference}
    if reference is not None:
        checks, diffs = compare_metrics(metrics, reference)
        part.checks += checks
        part.data["differences"] = diffs
        worst = max((abs(d["top1"]) for d in diffs.values() if "top1" in d), default=0.0)
        part.summary = (f"{len(metrics)} methods; vs reference ({source}): max |top-1 diff| "
                        f"{worst:.2f} pp")
    else:
        part.summary = f"{len(metrics)} methods; no reference to compare with"
    return part


# -- precision and execution settings ---------------------------------------------------------------
VARIANTS = {"fp32": {}, "bf16": {"amp": "bf16"}, "fp16": {"amp": "fp16"},
            "channels_last": {"channels_last": True}, "compile": {"compile": True}}


def smoke_data(ctx: Context, images: Optional[int]) -> DataBundle:
    """The smoke preset's dataset (``--quick``: its small variant) on the device, its train split
    cut to the first ``images`` (None: all)."""
    dataset = ctx.sizes.smoke_recipe.get("dataset", PRESETS.get("smoke").obj.dataset)
    data = load_dataset(parse_spec(DATASETS, dataset), None, False)
    return dataclasses.replace(data, train=head(data.train, images).to(ctx.device),
                               test=data.test.to(ctx.device))


@dataclass
class Trained:
    """One training run by bench's trainer: its losses, test top-1 and steady speed."""

    train_loss: list[float]
    test_top1: float
    images_per_s: float  # over the epochs after the first (compilation, autotuning); nan for one
    finite: bool  # every epoch's loss and every weight


def train_variant(method: str, backbone: str, data: DataBundle, recipe: Any,
                  device: torch.device) -> Trained:
    """``method`` on ``backbone`` (seed 0) trained by bench's trainer with ``recipe``, then
    evaluated on the test split."""
    torch.manual_seed(0)
    model = bench.build_model(method, backbone, data.num_classes, data.in_channels,
                              input_size=data.input_size)
    ends: list[float] = []

    def epoch_end(epoch: int, net: Any) -> bool:
        ends.append(time.perf_counter())  # the trainer has read the loss back: work is done
        return False

    history = train(model, data, recipe, 0, device, progress=False, test_curve=False,
                    on_epoch=epoch_end)
    top1 = evaluate(model, data.test, len(data.test), device)["top1"]  # one shape to compile
    finite = all(math.isfinite(v) for v in history.train_loss) and all(
        bool(torch.isfinite(p).all()) for p in model.parameters())
    per_epoch = history.images / history.epochs
    speed = per_epoch * (len(ends) - 1) / (ends[-1] - ends[0]) if len(ends) > 1 else math.nan
    return Trained(history.train_loss, top1, speed, finite)


def part_precision(ctx: Context) -> Part:
    part = Part()
    data = smoke_data(ctx, ctx.sizes.precision_images)
    recipe = PRESETS.get("smoke").obj.replace(epochs=ctx.sizes.precision_epochs)
    speeds = {}
    for name, options in VARIANTS.items():
        try:
            run = train_variant("gap-fc", ctx.sizes.precision_backbone, data,
                                recipe.replace(**options), ctx.device)
        except Exception as error:  # noqa: BLE001 - one variant failing leaves the others
            part.check(f"{name}: trains", False, f"{type(error).__name__}: {error}")
            continue
        part.data[name] = dataclasses.asdict(run)
        speeds[name] = run.images_per_s
        part.check(f"{name}: finite loss and weights", run.finite, f"train loss {run.train_loss}")
        detail = f"test top-1 {run.test_top1:.1f} % (chance {CHANCE_TOP1:.0f} %)"
        if ctx.quick:
            part.check(f"{name}: accuracy", True, detail + ", not checked (--quick)")
        else:
            part.check(f"{name}: above chance", run.test_top1 > CHANCE_TOP1, detail)
    fp32 = speeds.get("fp32")
    part.data["speed_vs_fp32"] = {n: v / fp32 for n, v in speeds.items()} if fp32 else {}
    part.data["settings"] = {"backbone": ctx.sizes.precision_backbone,
                             "epochs": ctx.sizes.precision_epochs,
                             "train_images": len(data.train)}
    part.summary = ", ".join(f"{n} x{r:.2f}" for n, r in part.data["speed_vs_fp32"].items()
                             if n != "fp32") + " images/s vs fp32"
    return part


def head(split: TensorSplit, n: Optional[int]) -> TensorSplit:
    """The first ``n`` images of an in-memory split (all of them for None)."""
    return dataclasses.replace(split, images=split.images[:n], labels=split.labels[:n],
                               ids=split.ids[:n])


# -- trainer throughput ----------------------------------------------------------------------------
def cifar_shaped(n: int, device: torch.device, seed: int = 0) -> DataBundle:
    """``n`` random 32x32x3 uint8 images and labels of 10 classes on ``device``, normalised and
    augmented as CIFAR-10 is (bench/data/cifar.py)."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, 10, (n,), generator=g)
    split = TensorSplit(images, labels, CIFAR10.mean, CIFAR10.std,
                        [f"train/{i:06d}.png" for i in range(n)],
                        augment=Augment(pad=4, flip=0.5)).to(device)
    return DataBundle("cifar-shaped", 10, 3, 32, split, split)


def loop_speeds(backbone: str, data: DataBundle, batch: int, reps: int,
                device: torch.device) -> dict[str, float]:
    """Images/s of bench's trainer and of the minimal loop on GAP-FC + ``backbone``, the median
    of ``reps`` interleaved epochs each, after one warm-up epoch of each on a few batches."""
    method, spec = parse_spec(METHODS, "gap-fc"), parse_spec(BACKBONES, backbone)
    recipe = PRESETS.get("quick").obj.replace(epochs=1, batch_size=batch)
    images = torch.cat([x for x, _ in data.train.batches(4096, train=False, device=device)])
    labels = data.train.labels
    warm = min(len(labels), 3 * batch + batch // 2)  # full batches and a partial one
    warm_data = dataclasses.replace(data, train=head(data.train, warm))
    minimal, ours = [], []
    for rep in range(reps + 1):  # repetition 0 warms up (cudnn autotuning, allocator) on a subset
        torch.manual_seed(rep)
        model = build_from_specs(method, spec, data.num_classes, data.in_channels).to(device)
        n = warm if rep == 0 else len(labels)
        seconds = minimal_epoch(model, images[:n], labels[:n], batch, recipe.lr,
                                torch.Generator().manual_seed(rep))
        torch.manual_seed(rep)
        model = build_from_specs(method, spec, data.num_classes, data.in_channels)
        history = train(model, warm_data if rep == 0 else data, recipe, rep, device,
                        progress=False, test_curve=False)
        if rep:
            minimal.append(n / seconds)
            ours.append(history.images / history.seconds)
    return {"minimal_images_per_s": statistics.median(minimal),
            "trainer_images_per_s": statistics.median(ours),
            "ratio": statistics.median(ours) / statistics.median(minimal)}


def part_throughput(ctx: Context) -> Part:
    part = Part()
    sizes = ctx.sizes
    torch.backends.cudnn.benchmark = True  # as the trainer sets it, for both loops alike
    data = cifar_shaped(sizes.throughput_images, ctx.device)
    part.data["settings"] = {"images": sizes.throughput_images, "batch_size": sizes.throughput_batch,
                             "reps": sizes.throughput_reps}
    for backbone in sizes.throughput_models:
        speeds = loop_speeds(backbone, data, sizes.throughput_batch, sizes.throughput_reps,
                             ctx.device)
        part.data[backbone] = speeds
        detail = (f"trainer {speeds['trainer_images_per_s']:.0f} / minimal "
                  f"{speeds['minimal_images_per_s']:.0f} images/s = {speeds['ratio']:.3f}")
        if ctx.quick:
            part.check(f"{backbone}: both loops ran", True, detail + " (target not checked: --quick)")
        else:
            part.check(f"{backbone}: trainer >= {THROUGHPUT_TARGET} x minimal",
                       speeds["ratio"] >= THROUGHPUT_TARGET, detail)
    part.summary = ", ".join(f"{b} ratio {part.data[b]['ratio']:.3f}"
                             for b in sizes.throughput_models)
    return part


# -- profile ----------------------------------------------------------------------------------------
PROFILE_FIELDS = ("params", "gmacs", "latency_ms", "latency_batch_ms", "peak_memory_mb",
                  "saved_activations_mb")


def part_profile(ctx: Context) -> Part:
    part = Part()
    rows = bench.profile(None, backbone="resnet50", input_size=ctx.sizes.profile_input,
                         batch_size=ctx.sizes.profile_batch, device=ctx.device,
                         threads=ctx.threads)
    wanted = ["latency_ms", "latency_batch_ms"] + ["peak_memory_mb"] * (ctx.device.type == "cuda")
    for row in rows:
        part.data[row["method"]] = {k: row[k] for k in PROFILE_FIELDS if k in row}
        bad = [k for k in wanted if not (math.isfinite(row.get(k, math.nan)) and row[k] > 0)]
        part.check(f"{row['method']}: measured", not bad, f"missing or not positive: {bad}")
    part.data["settings"] = {"input_size": ctx.sizes.profile_input,
                             "batch_size": ctx.sizes.profile_batch, "device": str(ctx.device)}
    slowest = max(rows, key=lambda r: r["latency_ms"])
    part.summary = (f"{len(rows)} methods, batch 1 latency up to {slowest['latency_ms']:.2f} ms "
                    f"({slowest['method']})")
    return part


# -- torchrun ---------------------------------------------------------------------------------------
def torchrun_command(nproc: int, script: list[str]) -> list[str]:
    """``torchrun --standalone --nproc_per_node nproc <script...>`` through this interpreter."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            "--nproc_per_node", str(nproc), *script]


def subprocess_env(threads: int) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    env["OMP_NUM_THREADS"] = str(threads)
    return env


def part_torchrun(ctx: Context) -> Part:
    part = Part()
    out = ctx.work / "torchrun"
    suite = ["-m", "bench", "run", "--preset", "smoke", "--methods", "gap-fc", "siou",
             "--device", ctx.device.type, "--out", str(out), "--no-progress",
             "--threads", str(ctx.threads), *ctx.sizes.torchrun_args]
    env = subprocess_env(ctx.threads)
    done = subprocess.run(torchrun_command(ctx.nproc, suite), env=env, capture_output=True,
                          text=True, timeout=600, cwd=ROOT, check=False)
    part.data["suite"] = {"nproc": ctx.nproc, "process_group": ctx.nproc > 1,
                          "returncode": done.returncode, "output_tail": done.stdout[-1500:]
                          + done.stderr[-1500:]}
    if part.check("suite under torchrun", done.returncode == 0,
                  f"exit {done.returncode}: {done.stderr.strip()[-300:]}"):
        from bench.report.collect import read_store

        records, runs, _, _ = read_store(out)
        top1 = {r["method"]: r["value"] for r in records if r["metric"] == "top1"}
        part.data["suite"]["top1"] = top1
        part.check("both runs complete", sorted(r["status"] for r in runs) == ["complete"] * 2,
                   str([(r["method"], r["status"]) for r in runs]))
        if ctx.quick:
            part.check("both measured", len(top1) == 2, f"{top1}; learning not judged (--quick)")
        else:
            part.check("both learn", len(top1) == 2 and min(top1.values()) > CHANCE_TOP1,
                       str(top1))
    result_file = ctx.work / "process_group_step.json"
    step = subprocess.run(torchrun_command(ctx.nproc, [str(Path(__file__).resolve()),
                                                       "--process-group-step", str(result_file),
                                                       "--device", ctx.device.type]),
                          env=env, capture_output=True, text=True, timeout=300, cwd=ROOT,
                          check=False)
    step_data = json.loads(result_file.read_text()) if result_file.is_file() else {}
    part.data["process_group_step"] = step_data | {"returncode": step.returncode}
    part.check("sIoU step with gradient averaging in a process group",
               step.returncode == 0 and step_data.get("ok") is True,
               step_data.get("detail") or f"exit {step.returncode}: {step.stderr.strip()[-300:]}")
    part.summary = (f"{ctx.nproc} process(es): suite exit {done.returncode}; "
                    f"{step_data.get('backend', '?')} step: {step_data.get('detail', 'no result')}")
    return part


def process_group_step(out: Path, device_type: str) -> int:
    """Under torchrun: join a process group (NCCL on CUDA, gloo on the CPU) even with one
    process, take one sIoU training step, average its gradients with bench's
    ``average_gradients``; rank 0 writes whether they equal this rank's own (every rank trains on
    the same batch) to ``out``."""
    import torch.distributed as dist

    from bench import distributed

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    device = (torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
              if device_type == "cuda" else torch.device("cpu"))
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend)
    try:
        load_all()
        model, batch = model_and_batch("siou", device)
        model.training_loss(batch).loss.backward()  # a double backward inside the loss
        own = [p.grad.clone() for p in model.parameters() if p.grad is not None]
        distributed.average_gradients(model, world)
        averaged = [p.grad for p in model.parameters() if p.grad is not None]
        error = max(float((a - o).abs().max() / o.abs().max().clamp_min(1e-30))
                    for a, o in zip(averaged, own))
        finite = all(bool(torch.isfinite(g).all()) for g in averaged)
        ok = finite and error <= 1e-5
        dist.barrier()
    finally:
        dist.destroy_process_group()
    if rank == 0:
        write_json(out, {"ok": ok, "backend": backend, "world": world, "max_relative_change":
                         error, "detail": f"{backend}, world {world}: averaged gradients "
                         f"{'finite' if finite else 'NOT finite'}, max relative change {error:.2e}"})
    return 0


# -- training steps on the device -------------------------------------------------------------------
def model_and_batch(method: str, device: torch.device, seed: int = 0) -> tuple[Any, Any]:
    """``method`` on ResNet-8 (seeded, built on the CPU, then moved) in train mode, and a random
    batch of 16 32x32 RGB images on ``device``."""
    torch.manual_seed(seed)
    model = bench.build_model(method, "resnet8", 10).to(device).train()
    b = random_batch(16, 3, 32, 10, seed=seed)
    return model, dataclasses.replace(b, x=b.x.to(device), y=b.y.to(device))


@contextlib.contextmanager
def full_fp32() -> Iterator[None]:
    """TF32 off for cuDNN and matmuls (restored after), so that device and CPU differ only by
    summation order."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def step_gradients(method: str, device: torch.device) -> tuple[float, torch.Tensor]:
    """Loss and all gradients (flattened, on the CPU) of one training step of ``method`` on
    ``device``."""
    model, batch = model_and_batch(method, device)
    loss = model.training_loss(batch).loss
    loss.backward()
    grads = torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.grad is not None])
    return loss.item(), grads.cpu()


def part_steps(ctx: Context) -> Part:
    part = Part()
    steps = {}
    for method in METHODS.names():  # sIoU's step differentiates twice
        with full_fp32():
            loss, grads = step_gradients(method, ctx.device)
            cpu_loss, cpu_grads = step_gradients(method, torch.device("cpu"))
        relative = float((grads - cpu_grads).norm() / cpu_grads.norm())
        steps[method] = {"loss": loss, "cpu_loss": cpu_loss, "relative_gradient_diff": relative}
        part.check(f"{method} step: finite and equal to the CPU's",
                   math.isfinite(loss) and bool(torch.isfinite(grads).all())
                   and relative <= GRADIENT_TOLERANCE,
                   f"loss {loss:.6g} vs {cpu_loss:.6g}, gradients' relative difference "
                   f"{relative:.2e} (<= {GRADIENT_TOLERANCE})")
    part.data["steps"] = steps
    worst = max(steps, key=lambda m: steps[m]["relative_gradient_diff"])
    data = smoke_data(ctx, ctx.sizes.saol_images)
    recipe = PRESETS.get("smoke").obj.replace(epochs=ctx.sizes.saol_epochs, cutmix=1.0)
    for amp in ("bf16", "fp16"):
        try:
            run = train_variant("saol", "resnet8", data, recipe.replace(amp=amp), ctx.device)
        except Exception as error:  # noqa: BLE001 - one precision failing leaves the other
            part.check(f"SAOL + CutMix, {amp}: trains", False, f"{type(error).__name__}: {error}")
            continue
        part.data[f"saol_cutmix_{amp}"] = dataclasses.asdict(run)
        part.check(f"SAOL + CutMix, {amp}: finite loss and weights", run.finite,
                   f"train loss {run.train_loss}, test top-1 {run.test_top1:.1f} %")
    top1 = {a: part.data.get(f"saol_cutmix_{a}", {}).get("test_top1", math.nan)
            for a in ("bf16", "fp16")}
    part.summary = (f"steps vs CPU: worst {worst} {steps[worst]['relative_gradient_diff']:.1e}; "
                    f"SAOL+CutMix test top-1 "
                    + ", ".join(f"{a} {v:.1f} %" for a, v in top1.items()))
    return part


PARTS: dict[str, Callable[[Context], Part]] = {
    "environment": part_environment, "smoke": part_smoke, "precision": part_precision,
    "throughput": part_throughput, "profile": part_profile, "torchrun": part_torchrun,
    "steps": part_steps}


# -- command line -----------------------------------------------------------------------------------
def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu")
    parser.add_argument("--out", type=Path, default=Path("gpu-check"),
                        help=f"where {JSON_NAME} and the runs' stores go")
    parser.add_argument("--quick", action="store_true", help="shrink every part (for a CPU)")
    parser.add_argument("--parts", default=",".join(PARTS),
                        help=f"comma-separated, of: {', '.join(PARTS)}")
    parser.add_argument("--reference", type=Path, default=None,
                        help="an earlier --device cpu run's --out (or its JSON) to compare smoke with")
    parser.add_argument("--no-cpu-reference", action="store_true",
                        help="on CUDA without --reference, skip the CPU run of the smoke suite")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's own)")
    parser.add_argument("--nproc", type=int, default=None,
                        help="torchrun processes (default: CUDA devices up to 2; CPU: 2)")
    parser.add_argument("--process-group-step", type=Path, default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def default_nproc(device: torch.device) -> int:
    """torchrun processes: one per CUDA device (at most 2: NCCL refuses two ranks on one GPU), or
    2 gloo processes on the CPU."""
    return max(1, min(2, torch.cuda.device_count())) if device.type == "cuda" else 2


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    if args.process_group_step is not None:
        return process_group_step(args.process_group_step, args.device)
    load_all()
    unknown = [p for p in args.parts.split(",") if p not in PARTS]
    if unknown:
        print(f"--parts: unknown {', '.join(unknown)}; valid: {', '.join(PARTS)}", file=sys.stderr)
        return 2
    device = resolve_device(args.device)
    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    ctx = Context(device, args.out, QUICK if args.quick else FULL, args.quick, threads,
                  args.reference, not args.no_cpu_reference, args.nproc or default_nproc(device))
    args.out.mkdir(parents=True, exist_ok=True)
    if ctx.work.exists():  # this script's own scratch: every check starts from empty stores
        import shutil

        shutil.rmtree(ctx.work)
    report = {"script": "benchmarks/gpu_check.py", "device": str(device), "quick": args.quick,
              "threads": threads, "argv": sys.argv[1:] if argv is None else argv,
              "started": time.strftime("%Y-%m-%d %H:%M:%S"), "parts": {}}
    start = time.perf_counter()
    for name in args.parts.split(","):
        print(f"[gpu_check] {name} ...", flush=True)
        report["parts"][name] = run_part(PARTS[name], ctx)
        report["wall_s"] = round(time.perf_counter() - start, 1)
        write_json(args.out / JSON_NAME, report)
        print(f"[gpu_check] {name}: {report['parts'][name]['status']} "
              f"({report['parts'][name]['seconds']:.1f} s)", flush=True)
    print(table(report["parts"]))
    print(f"wall time {report['wall_s']:.0f} s; details in {args.out / JSON_NAME}")
    return 1 if any(p["status"] != "ok" for p in report["parts"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
