"""The public Python entry points: build a method's network, run a suite, profile methods.

Every argument naming something registered takes its text (``"se[r=8]"``) or a parsed ``Spec``.
Bad input raises ``BenchError`` whose ``param`` names the argument at fault (the CLI shows the
matching flag instead).
"""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
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
    from bench.suite import RunOutcome

SpecLike = str | Spec


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
    per metric and seed, as ``bench results`` lists them), and where the store and report are."""

    outcomes: list["RunOutcome"]
    records: list[dict[str, Any]]
    store: Path
    report: Optional["ReportFiles"] = None

    @property
    def failed(self) -> list["RunOutcome"]:
        return [o for o in self.outcomes if o.status == "failed"]


def _tasks(tasks: Optional[SpecLike | Iterable[SpecLike]], wsol_options: dict[str, Any]) -> list[Spec]:
    """Task specs (default: every task), with the WSOL shorthands applied to the wsol spec."""
    specs = as_specs(TASKS, tasks, "tasks") if tasks is not None else [
        parse_spec(TASKS, name) for name in TASKS.names()]
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise BenchError(f"tasks: each task once, got {', '.join(map(str, specs))}", "tasks")
    given = {k: v for k, v in wsol_options.items() if v is not None}
    if given:
        if "wsol" not in names:
            raise BenchError(f"{next(iter(given))} applies to the wsol task, which is not among "
                             f"the tasks ({', '.join(names)})", next(iter(given)))
        i = names.index("wsol")
        specs[i] = parse_spec(TASKS, _with_options(str(specs[i]), given))
    for spec in specs:
        TASKS.get(spec.name).obj.check(spec.kwargs)
    return specs


def run(methods: Optional[SpecLike | Sequence[SpecLike]] = None, *, preset: str = "quick",
        dataset: Optional[SpecLike] = None, backbone: Optional[SpecLike] = None,
        tasks: Optional[SpecLike | Sequence[SpecLike]] = None, out: str | Path = "reports",
        device: str | torch.device = "auto", data_root: Optional[str | Path] = None,
        download: bool = False, jobs: int = 1, threads: Optional[int] = None,
        retry_failed: bool = False, progress: bool = True, report: bool = True,
        save_scoremaps: Optional[str | Path] = None, cam_curve_interval: Optional[float] = None,
        **recipe: Any) -> SuiteResult:
    """Train and measure ``methods`` (default: all) under ``preset``, store every result under
    ``out`` and write the report there; what ``python -m bench run`` does, minus printing.

    ``recipe`` overrides single fields of the preset's recipe (``epochs=3``, ``lr=0.05``,
    ``seeds=3``, ``cutmix=0.5``, ...). ``save_scoremaps`` and ``cam_curve_interval`` are shorthands
    for the wsol task's options. A rerun skips everything already stored.
    """
    from bench.device import resolve_device
    from bench.presets import PRESETS
    from bench.store import Store
    from bench.suite import SuiteConfig, run_suite

    load_all()
    preset_entry = PRESETS.get(preset)
    config = preset_entry.obj.replace(**recipe)
    method_specs = as_specs(METHODS, methods, "methods") if methods is not None else [
        parse_spec(METHODS, name) for name in METHODS.names()]
    _check_positive(jobs=jobs, **({} if threads is None else {"threads": threads}))
    cfg = SuiteConfig(
        methods=method_specs,
        backbone=as_spec(BACKBONES, backbone or config.backbone, "backbone"),
        dataset=as_spec(DATASETS, dataset or config.dataset, "dataset"),
        recipe=config, preset=preset_entry.name,
        tasks=_tasks(tasks, {"save_scoremaps": save_scoremaps,
                             "cam_curve_interval": cam_curve_interval}),
        out_dir=Path(out), device=resolve_device(device), data_root=_path(data_root),
        download=download, retry_failed=retry_failed, progress=progress, jobs=jobs,
        threads=threads)
    for spec in method_specs:  # every option checked before the store is touched
        with torch.device("meta"):
            build_from_specs(spec, cfg.backbone, num_classes=2)
    Store(cfg.store_path).close()  # refuse an unusable store before any work
    outcomes = run_suite(cfg)
    from bench.distributed import is_main_process

    if not is_main_process():  # torchrun: the other ranks only helped train
        return SuiteResult(outcomes, [], cfg.store_path)
    store = Store(cfg.store_path, create=False)
    try:
        records = [r for r in store.records() if r["dataset"] == str(cfg.dataset)
                   and r["backbone"] == str(cfg.backbone)]
    finally:
        store.close()
    files = None
    if report:
        from bench.report import write_report

        files = write_report(cfg.out_dir)
    return SuiteResult(outcomes, records, cfg.store_path, files)


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
