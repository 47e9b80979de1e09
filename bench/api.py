"""The public Python entry points: build a method's network, run a suite, profile methods, and
read stored results as DataFrames.

Every argument naming something registered takes its text (``"se[r=8]"``) or a parsed ``Spec``.
Bad input raises ``BenchError`` whose ``param`` names the argument at fault (the CLI shows the
matching flag instead).
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Optional, Sequence

import torch

from bench.build import SpecLike, as_spec, as_specs, build_from_specs, with_options
from bench.errors import BenchError
from bench.methods.base import MethodNet
from bench.plugins import load_all, worker_modules
from bench.registry import BACKBONES, DATASETS, METHODS, TASKS, Spec, parse_spec

if TYPE_CHECKING:
    import pandas as pd

    from bench.report.write import ReportFiles
    from bench.report.collect import Group
    from bench.suite import RunOutcome, SuiteConfig

EXECUTORS = ("local", "ray")


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
        method = with_options(str(method), options)
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
        """The runs stored as failed: now, or earlier (skipped by this invocation)."""
        return [o for o in self.outcomes if o.failure is not None]


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
        specs[i] = parse_spec(TASKS, with_options(str(specs[i]), {option: value}))
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
                 plugins: Sequence[str] = (), **recipe: Any) -> "SuiteConfig":
    """The suite ``run`` (and ``tune``) execute, every argument checked and every method built
    once on the meta device before the store is touched (see ``run`` for the arguments)."""
    from bench.device import resolve_device
    from bench.presets import PRESET_METHODS, PRESETS
    from bench.store import Store
    from bench.suite import SuiteConfig

    if isinstance(plugins, str):
        plugins = [plugins]
    load_all(plugins)
    preset_entry = PRESETS.get(preset)
    config = preset_entry.obj.replace(**recipe)
    method_specs = as_specs(METHODS, methods, "methods") if methods is not None else [
        parse_spec(METHODS, name)
        for name in PRESET_METHODS.get(preset_entry.name, METHODS.names())]
    _check_positive(**{k: v for k, v in (("jobs", jobs), ("threads", threads)) if v is not None})
    if executor not in EXECUTORS:
        raise BenchError(f"executor {executor!r} is not an executor; valid: "
                         f"{', '.join(EXECUTORS)}", "executor")
    if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
        raise BenchError(f"max_retries must be an integer >= 0, got {max_retries!r}",
                         "max_retries")
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
    if device.type == "cpu" and config.amp == "fp16":
        raise BenchError("amp fp16 is not offered on the CPU: autocast to float16 there runs "
                         "several times slower than float32 (7x measured on an AVX2 CPU: no fast "
                         "fp16 kernels); use none, or device cuda", "amp")
    runs = len(method_specs) * config.seeds
    auto_jobs = jobs is None or executor == "ray"  # Ray: the cluster decides how many at once
    if jobs is None:  # auto (the CLI's default): on the CPU, one single-thread process per core
        auto = executor == "local" and device.type == "cpu" and threads is None
        jobs = min(os.cpu_count() or 1, runs) if auto else 1
    if threads is None:  # resolved here: the thread count is part of a CPU run's identity
        threads = default_threads(jobs, auto_jobs and device.type == "cpu", runs)
    cfg = SuiteConfig(
        methods=method_specs,
        backbone=as_spec(BACKBONES, backbone or config.backbone, "backbone"),
        dataset=as_spec(DATASETS, dataset or config.dataset, "dataset"),
        recipe=config, preset=preset_entry.name,
        tasks=_tasks(tasks, {"save_scoremaps": save_scoremaps,
                             "cam_curve_interval": cam_curve_interval, "maps_images": maps_images}),
        out_dir=writable_dir(out), device=device, data_root=_path(data_root),
        download=download, retry_failed=retry_failed, progress=progress, jobs=jobs,
        threads=threads, executor=executor, ray=ray_options, max_retries=max_retries)
    if executor == "local" and jobs > 1:
        from bench.executors import check_spawnable

        check_spawnable()
    if executor == "ray" or jobs > 1:  # what the workers must import, refused if they cannot
        cfg.plugins = worker_modules(cfg.entries(), remote=executor == "ray")
    for spec in method_specs:  # every option checked before the store is touched
        with torch.device("meta"):
            try:
                build_from_specs(spec, cfg.backbone, num_classes=2)
            except (ValueError, IndexError, RuntimeError, TypeError) as error:
                raise BenchError(f"methods: {spec} on backbone {cfg.backbone} cannot be built "
                                 f"({type(error).__name__}: {error}); check their options",
                                 "methods") from None
    Store(cfg.store_path).close()  # refuse an unusable store before any work
    return cfg


def default_threads(jobs: int, auto_jobs: bool, runs: int) -> int:
    """CPU threads per run when none are asked for. A run's thread count changes its numbers,
    so on the CPU both executors follow one rule when ``jobs`` is left to bench (the CLI's
    default; ``auto_jobs``): one thread per run when the suite has several runs and the
    driver's machine several cores, else torch's default (all cores); the same command thus
    gives the same runs with either executor. An explicit ``jobs`` > 1 gives each process its
    share of the cores."""
    cores = os.cpu_count() or 1
    if auto_jobs:
        return 1 if min(cores, runs) > 1 else torch.get_num_threads()
    return max(cores // jobs, 1) if jobs > 1 else torch.get_num_threads()


def run(methods: Optional[SpecLike | Sequence[SpecLike]] = None, *, report: bool = True,
        **settings: Any) -> SuiteResult:
    """Train and measure ``methods`` (default: the preset's list, else all), store every result
    under ``out`` and write the report there; what ``python -m bench run`` does, minus printing.

    Settings: ``preset`` (quick), ``dataset``, ``backbone``, ``tasks`` (specs, default all),
    ``out`` (reports), ``device`` (auto), ``data_root``, ``download``, ``threads`` (CPU threads
    per run), ``retry_failed``, ``progress``; ``executor`` ``local`` (with ``jobs`` processes: 1 by
    default, None for one single-thread process per CPU core, the CLI's default) or
    ``ray`` (each (method, seed) a task on the cluster at ``ray_address``, ``ray_cpus``,
    ``ray_gpus``: bench/ray_executor.py); ``max_retries`` (2: runs again a run whose worker
    process died, with ``jobs`` > 1 or Ray); ``save_scoremaps`` and ``cam_curve_interval``,
    shorthands for the wsol task's options; ``plugins``, modules to import as plugins (in this
    process and every worker; see bench/plugins.py); and any recipe field of the preset
    (``epochs=3``, ``lr=0.05``, ``seeds=3``, ``cutmix=0.5``, ...). A rerun skips everything
    already stored, except failures of the infrastructure (a worker that died, an interrupted
    run): see docs/store.md.
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
        from bench.report.write import write_report

        report_start = time.perf_counter()
        files = write_report(cfg.out_dir)
        times["report"] = time.perf_counter() - report_start
    times["total"] = time.perf_counter() - start
    return SuiteResult(outcomes, records, groups, cfg.store_path, files, times)


def writable_dir(path: str | Path, param: str = "out") -> Path:
    """``path`` created if needed and proven writable, else a BenchError naming ``param``."""
    import tempfile

    if not str(path).strip():
        raise BenchError(f"{param} is empty; name a directory (e.g. reports)", param)
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


def results(out: str | Path = "reports", per_seed: bool = False,
            interval: str = "t") -> "pd.DataFrame":
    """The stored results under ``out`` as a tidy DataFrame with the columns of ``bench results
    --format csv``: one row per configuration group, method and metric (and setting) with the
    mean over seeds, its 95% ``interval`` (t or bootstrap), the paired difference to gap-fc,
    Holm-corrected p and verdict; with ``per_seed``, one row per method, metric and seed."""
    from bench.report.collect import configuration_groups, read_store
    from bench.report.results import per_seed_frame, summary_frame
    from bench.report.stats import check_interval

    check_interval(interval)
    load_all()  # method order and plugin methods, as in the report
    records, runs, curves, _ = read_store(Path(out))
    if per_seed:
        return per_seed_frame(records)
    # curves: the learning-speed metrics are derived from them, as in `bench results`
    return summary_frame(configuration_groups(records, runs, curves), interval)


def compare(out: str | Path = "reports", metric: str = "top1",
            interval: str = "t") -> "pd.DataFrame":
    """The verdict table of one stored ``metric``: per configuration group and method, the mean
    with its interval and, against gap-fc (paired by seed), the difference with its interval,
    the p-value, its Holm correction and the verdict (gap-fc's row reads ``reference``)."""
    frame = results(out, interval=interval)
    if metric not in set(frame["metric"]):
        stored = ", ".join(dict.fromkeys(frame["metric"])) or "none"
        raise BenchError(f"metric {metric!r} is not stored under {out}; stored: {stored}",
                         "metric")
    return frame[frame["metric"] == metric].reset_index(drop=True)
