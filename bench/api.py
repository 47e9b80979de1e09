"""The public Python entry points: build a method's network, run a suite, profile methods.

Every argument naming something registered takes its text (``"se[r=8]"``) or a parsed ``Spec``.
Bad input raises ``BenchError`` whose ``param`` names the argument at fault (the CLI shows the
matching flag instead).
"""
from __future__ import annotations

import dataclasses
import functools
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Optional, Sequence

import torch

from bench.errors import BenchError
from bench.methods.base import BuildContext, MethodNet
from bench.plugins import load_all
from bench.registry import (BACKBONES, DATASETS, METHODS, TASKS, Auto, Registry, Spec,
                            format_value, parse_spec, split_specs)

if TYPE_CHECKING:
    from bench.report import ReportFiles
    from bench.report.collect import Group
    from bench.suite import RunOutcome, SuiteConfig

SpecLike = str | Spec
EXECUTORS = ("local", "ray")


def _with_options(text: str, options: dict[str, Any]) -> str:
    """Append keyword options to a spec's text: ``("se[r=8]", {"x": 1})`` -> ``se[r=8,x=1]``."""
    if not options:
        return text
    extra = ",".join(f"{k}={format_value(v)}" for k, v in options.items())
    text = text.strip()
    if not text.endswith("]") or "[" not in text:
        return f"{text}[{extra}]"
    head, inner = text[:-1].split("[", 1)
    return f"{head}[{inner.strip() + ',' if inner.strip() else ''}{extra}]"


def as_spec(registry: Registry, value: SpecLike, param: str) -> Spec:
    """``value`` parsed against ``registry`` (a Spec of the right kind passes through)."""
    if isinstance(value, Spec):
        if value.kind != registry.kind:
            raise BenchError(f"{param}: expected a {registry.kind} spec, got a {value.kind} spec",
                             param)
        return value
    try:
        return parse_spec(registry, str(value))
    except BenchError as error:
        raise BenchError(f"{param}: {error}", param) from None


def as_specs(registry: Registry, values: Optional[SpecLike | Iterable[SpecLike]],
             param: str) -> list[Spec]:
    """A list of specs from one text (``"a,b[x=1]"``), Specs, or an iterable of either; None or
    nothing given is an empty list. An empty text (``""``, ``","``) is refused."""
    if values is None:
        return []
    items = [values] if isinstance(values, (str, Spec)) else list(values)
    specs = []
    for item in items:
        texts = [item] if isinstance(item, Spec) else split_specs(str(item))
        if not texts:
            raise BenchError(f"{param}: an empty name; valid: {', '.join(registry.names())}",
                             param)
        specs += [as_spec(registry, t, param) for t in texts]
    if not specs and items:
        raise BenchError(f"{param}: no {registry.kind} named; valid: "
                         f"{', '.join(registry.names())}", param)
    return specs


@functools.lru_cache(maxsize=64)
def _stage_shapes(backbone: Spec, in_channels: int,
                  input_size: Optional[int]) -> tuple[int, tuple[int, ...], tuple[int, ...]]:
    """(input size, stage widths, stage output sides) of ``backbone``, from a shape-only pass on
    the meta device; without ``input_size`` the backbone's own (``Backbone.input_size``)."""
    with torch.device("meta"):
        net = BACKBONES.get(backbone.name).obj(in_channels=in_channels, **backbone.kwargs).eval()
        size = input_size or net.input_size
        outputs = net(torch.empty(1, in_channels, size, size))
    return size, tuple(net.stage_channels), tuple(int(o.shape[-1]) for o in outputs)


def method_context(backbone: Spec, num_classes: int, in_channels: int = 3,
                   input_size: Optional[int] = None, dataset: Optional[str] = None) -> BuildContext:
    """The context a method's ``auto`` options are resolved in (see ``resolve_method``)."""
    size, channels, sides = _stage_shapes(backbone, in_channels, input_size)
    return BuildContext(backbone, num_classes, in_channels, size, dataset, channels, sides)


def resolve_method(method: Spec, context: BuildContext) -> Spec:
    """``method`` with its ``auto`` options replaced by the values its rules give in ``context``
    (the method's registered ``resolve``); its label (``str``) stays as the user wrote it."""
    if not method.unresolved:
        return method
    resolved = METHODS.get(method.name).resolve(method.kwargs, context)
    left = [k for k, v in resolved.items() if isinstance(v, Auto)]
    if left:
        raise ValueError(f"method {method.name!r}: resolve left {', '.join(left)} as auto")
    return dataclasses.replace(method, options=tuple(sorted(resolved.items())))


def build_from_specs(method: Spec, backbone: Spec, num_classes: int, in_channels: int = 3,
                     input_size: Optional[int] = None, dataset: Optional[str] = None) -> MethodNet:
    """Build ``method`` on ``backbone`` (both parsed specs) for ``num_classes`` classes, its
    ``auto`` options resolved for ``input_size`` and ``dataset`` (see ``build_model``)."""
    if method.unresolved:
        method = resolve_method(method, method_context(backbone, num_classes, in_channels,
                                                       input_size, dataset))
    make_backbone_entry = BACKBONES.get(backbone.name).obj
    backbone_kwargs = backbone.kwargs

    def make_backbone(**hooks: Any):
        return make_backbone_entry(in_channels=in_channels, **backbone_kwargs, **hooks)

    return METHODS.get(method.name).obj(make_backbone, num_classes, **method.kwargs)


def build_model(method: SpecLike, backbone: SpecLike, num_classes: int, in_channels: int = 3,
                input_size: Optional[int] = None, dataset: Optional[str] = None,
                **options: Any) -> MethodNet:
    """A method's training network, e.g. ``build_model("se", "resnet50", 1000, r=8)``.

    ``method`` and ``backbone`` may carry variant options (``"se[r=8]"``); keyword ``options`` are
    added to the method's. ``.deploy()`` on the result gives the inference network. Options that
    default to ``auto`` follow the paper's setting for the data: ``input_size`` (default: the
    backbone's own, 32 for CIFAR nets, 224 for ImageNet ResNets) and ``dataset`` (a registered
    name; default None: no dataset-specific setting, e.g. ImageNet's SimAM lambda, applies).
    """
    load_all()
    if options:
        method = _with_options(str(method), options)
    if dataset is not None:
        dataset = as_spec(DATASETS, dataset, "dataset").name
    if input_size is not None:
        _check_positive(input_size=input_size)
    return build_from_specs(as_spec(METHODS, method, "method"),
                            as_spec(BACKBONES, backbone, "backbone"), num_classes, in_channels,
                            input_size, dataset)


def _check_positive(**values: Any) -> None:
    """A BenchError naming the first value that is not a positive integer."""
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise BenchError(f"{name} must be a positive integer, got {value!r}", name)


def list_methods() -> list[str]:
    """Names of every registered method, in registration order."""
    load_all()
    return METHODS.names()


@dataclass
class SuiteResult:
    """What ``bench.run`` did: each run's outcome, the stored records of this suite's runs (one
    per metric and seed), their configuration groups (bench/report/collect.py), where the store
    and report are, and where the time went."""

    outcomes: list["RunOutcome"]
    records: list[dict[str, Any]]
    groups: list["Group"]
    store: Path
    report: Optional["ReportFiles"] = None
    times: dict[str, float] = field(default_factory=dict)  # phase -> seconds, and "total"

    @property
    def failed(self) -> list["RunOutcome"]:
        return [o for o in self.outcomes if o.status == "failed"]


# Keyword arguments of ``run`` that set one task's option: argument -> (task, option).
TASK_SHORTHANDS = {"save_scoremaps": ("wsol", "save_scoremaps"),
                   "cam_curve_interval": ("wsol", "cam_curve_interval"),
                   "maps_images": ("maps", "images")}


def _tasks(tasks: Optional[SpecLike | Iterable[SpecLike]], shorthands: dict[str, Any]) -> list[Spec]:
    """Task specs (default: every task not opt-in), with the shorthands (``TASK_SHORTHANDS``)
    applied to their task's spec."""
    specs = as_specs(TASKS, tasks, "tasks") if tasks is not None else [
        parse_spec(TASKS, entry.name) for entry in TASKS if entry.obj.default]
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise BenchError(f"tasks: each task once, got {', '.join(map(str, specs))}", "tasks")
    for param, value in shorthands.items():
        if value is None:
            continue
        task, option = TASK_SHORTHANDS[param]
        if task not in names:
            raise BenchError(f"{param} applies to the {task} task, which is not among the tasks "
                             f"({', '.join(names)})", param)
        i = names.index(task)
        specs[i] = parse_spec(TASKS, _with_options(str(specs[i]), {option: value}))
    for spec in specs:
        TASKS.get(spec.name).obj.check(spec.kwargs)
    return specs


def suite_config(methods: Optional[SpecLike | Sequence[SpecLike]] = None, *,
                 preset: str = "quick", dataset: Optional[SpecLike] = None,
                 backbone: Optional[SpecLike] = None,
                 tasks: Optional[SpecLike | Sequence[SpecLike]] = None,
                 out: str | Path = "reports", device: str | torch.device = "auto",
                 data_root: Optional[str | Path] = None, download: bool = False,
                 jobs: Optional[int] = 1,
                 threads: Optional[int] = None, retry_failed: bool = False,
                 progress: bool = True, save_scoremaps: Optional[str | Path] = None,
                 cam_curve_interval: Optional[float] = None, maps_images: Optional[int] = None,
                 executor: str = "local",
                 ray_address: str = "auto", max_retries: int = 2,
                 ray_cpus: Optional[float] = None, ray_gpus: Optional[float] = None,
                 **recipe: Any) -> "SuiteConfig":
    """The suite ``run`` (and ``tune``) execute, every argument checked and every method built
    once on the meta device before the store is touched (see ``run`` for the arguments)."""
    from bench.device import resolve_device
    from bench.presets import PRESET_METHODS, PRESETS
    from bench.store import Store
    from bench.suite import SuiteConfig

    load_all()
    preset_entry = PRESETS.get(preset)
    config = preset_entry.obj.replace(**recipe)
    method_specs = as_specs(METHODS, methods, "methods") if methods is not None else [
        parse_spec(METHODS, name)
        for name in PRESET_METHODS.get(preset_entry.name, METHODS.names())]
    _check_positive(**{k: v for k, v in (("jobs", jobs), ("threads", threads)) if v is not None})
    if executor not in EXECUTORS:
        raise BenchError(f"executor {executor!r} is not an executor; valid: "
                         f"{', '.join(EXECUTORS)}", "executor")
    ray_options = None
    if executor == "ray":
        from bench.ray_executor import RayOptions, import_ray

        if jobs not in (None, 1):
            raise BenchError("jobs applies to the local executor; with executor ray the cluster's "
                             "resources decide how many runs go at once", "jobs")
        ray_options = RayOptions(ray_address, max_retries, ray_cpus, ray_gpus)
        ray_options.validate()
        import_ray()
    device = resolve_device(device)
    if jobs is None:  # auto (the CLI's default): on the CPU, one single-thread process per core
        runs = len(method_specs) * config.seeds
        auto = executor == "local" and device.type == "cpu" and threads is None
        jobs = min(os.cpu_count() or 1, runs) if auto else 1
        threads = 1 if jobs > 1 else threads
    if threads is None:  # resolved here: the thread count is part of a CPU run's identity
        threads = max((os.cpu_count() or 1) // jobs, 1) if jobs > 1 else torch.get_num_threads()
    cfg = SuiteConfig(
        methods=method_specs,
        backbone=as_spec(BACKBONES, backbone or config.backbone, "backbone"),
        dataset=as_spec(DATASETS, dataset or config.dataset, "dataset"),
        recipe=config, preset=preset_entry.name,
        tasks=_tasks(tasks, {"save_scoremaps": save_scoremaps,
                             "cam_curve_interval": cam_curve_interval, "maps_images": maps_images}),
        out_dir=writable_dir(out), device=device, data_root=_path(data_root),
        download=download, retry_failed=retry_failed, progress=progress, jobs=jobs,
        threads=threads, executor=executor, ray=ray_options)
    for spec in method_specs:  # every option checked before the store is touched
        with torch.device("meta"):
            build_from_specs(spec, cfg.backbone, num_classes=2)
    Store(cfg.store_path).close()  # refuse an unusable store before any work
    return cfg


def run(methods: Optional[SpecLike | Sequence[SpecLike]] = None, *, report: bool = True,
        **settings: Any) -> SuiteResult:
    """Train and measure ``methods`` (default: the preset's list, else all), store every result
    under ``out`` and write the report there; what ``python -m bench run`` does, minus printing.

    Settings: ``preset`` (quick), ``dataset``, ``backbone``, ``tasks`` (specs, default all),
    ``out`` (reports), ``device`` (auto), ``data_root``, ``download``, ``threads`` (CPU threads
    per run), ``retry_failed``, ``progress``; ``executor`` ``local`` (with ``jobs`` processes: 1 by
    default, None for one single-thread process per CPU core, the CLI's default) or
    ``ray`` (each (method, seed) a task on the cluster at ``ray_address``, ``max_retries``,
    ``ray_cpus``, ``ray_gpus``: bench/ray_executor.py); ``save_scoremaps`` and
    ``cam_curve_interval``, shorthands for the wsol task's options; and any recipe field of the
    preset (``epochs=3``, ``lr=0.05``, ``seeds=3``, ``cutmix=0.5``, ...). A rerun skips everything
    already stored.
    """
    from bench.suite import run_suite

    cfg = suite_config(methods, **settings)
    start = time.perf_counter()
    outcomes = run_suite(cfg)
    from bench.distributed import is_main_process

    if not is_main_process():  # torchrun: the other ranks only helped train
        return SuiteResult(outcomes, [], [], cfg.store_path)
    return _finish(cfg, outcomes, report, start)


@dataclass
class TuneResult:
    """What ``bench.tune`` did: per method its study (trials, best trial, chosen configuration)
    and the retrained runs, as ``bench.run`` reports them."""

    studies: list[Any]  # bench.tune.TuneOutcome
    suite: SuiteResult
    sequential: bool = True  # trials one at a time: the only way the study is reproducible


def tune(methods: Optional[SpecLike | Sequence[SpecLike]] = None, *, trials: int,
         sampler: str = "tpe", sampler_seed: int = 0, prune: bool = False,
         select: str = "accuracy", space: Sequence[str] = (), report: bool = True,
         **settings: Any) -> TuneResult:
    """Equal-budget tuning (bench/tuning.py): ``trials`` trials per method, scored on the holdout
    split by ``select`` (accuracy or wsol), sampled by ``sampler`` (tpe or random) seeded with
    ``sampler_seed`` (the same for every method), optionally ``prune``d; then each method's best
    configuration retrained for ``seeds`` seeds and evaluated on the test split. ``space`` narrows
    declared ranges (``"lr=0.01:0.2"``); ``settings`` are ``run``'s."""
    from bench.tuning import TuneConfig
    from bench.tuning import tune as run_tuning

    cfg = suite_config(methods, **settings)
    tcfg = TuneConfig(cfg, trials, sampler, sampler_seed, prune, select, tuple(space))
    tcfg.validate()
    start = time.perf_counter()
    studies, outcomes, searched = run_tuning(tcfg)
    suite = _finish(cfg, outcomes, report, start)
    suite.times = {"trials": searched, **suite.times}
    return TuneResult(studies, suite, cfg.executor != "ray" and cfg.jobs == 1)


def _finish(cfg: "SuiteConfig", outcomes: list["RunOutcome"], report: bool,
            start: float) -> SuiteResult:
    """Read back this suite's runs, group them, write the report and total the times."""
    from bench.report.collect import configuration_groups, read_store

    records, runs, _, _ = read_store(cfg.out_dir)
    ids = {o.run_id for o in outcomes}
    # Groups over the whole store, so that labels name what tells this recipe from others there.
    groups = [g for g in configuration_groups(records, runs) if ids & set(g.runs["id"])]
    records = [r for r in records if r["run_id"] in ids]
    times: dict[str, float] = {}
    for outcome in outcomes:
        for phase, seconds in outcome.times.items():
            times[phase] = times.get(phase, 0.0) + seconds
    files = None
    if report:
        from bench.report import write_report

        report_start = time.perf_counter()
        files = write_report(cfg.out_dir)
        times["report"] = time.perf_counter() - report_start
    times["total"] = time.perf_counter() - start
    return SuiteResult(outcomes, records, groups, cfg.store_path, files, times)


def writable_dir(path: str | Path, param: str = "out") -> Path:
    """``path`` created if needed and proven writable, else a BenchError naming ``param``."""
    import tempfile

    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as e:
        raise BenchError(f"{param} {path} is not a writable directory ({e.strerror or e})",
                         param) from None
    return path


def _path(value: Optional[str | Path]) -> Optional[Path]:
    return None if value is None else Path(value)


def profile(methods: Optional[SpecLike | Sequence[SpecLike]] = None, *,
            backbone: SpecLike = "resnet50", input_size: int = 224, num_classes: int = 1000,
            in_channels: int = 3, batch_size: int = 8, device: str | torch.device = "cpu",
            train_step: bool = False, threads: Optional[int] = None, channels_last: bool = False,
            amp: str = "none", compile: bool = False, latency: bool = True,
            dataset: Optional[str] = None) -> list[dict[str, Any]]:
    """Cost figures of ``methods`` (default: all) on ``backbone``: one row per method with
    parameters, GMACs (three conventions, and as the authors' code runs it where that differs),
    memory traffic, saved activations, latency and, with ``train_step``, the training-step time
    against gap-fc; what ``bench profile`` prints. ``dataset`` (a registered name) resolves the
    methods' ``auto`` options as for a run on it (see ``build_model``)."""
    from bench.device import resolve_device
    from bench.profiling.profile import profile_methods

    load_all()
    specs = as_specs(METHODS, methods, "methods") if methods is not None else [
        parse_spec(METHODS, name) for name in METHODS.names()]
    _check_positive(input_size=input_size, num_classes=num_classes, in_channels=in_channels,
                    batch_size=batch_size)
    dataset_name = None if dataset is None else as_spec(DATASETS, dataset, "dataset").name
    return profile_methods(specs, as_spec(BACKBONES, backbone, "backbone"), input_size,
                           num_classes, in_channels, batch_size, resolve_device(device),
                           train_step, threads, channels_last=channels_last, amp=amp,
                           compile_mode="default" if compile else None, latency=latency,
                           dataset=dataset_name)
