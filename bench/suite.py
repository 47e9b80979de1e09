"""Runs a suite: every (method, seed) on one dataset and backbone, each requested task, results
into the store. Completed tasks are skipped by configuration hash, so a rerun resumes.

The process that owns the store (the driver) plans (and claims) every run and is its only writer.
Executing a run (``execute``: train or load the checkpoint, then measure each task) touches no
store: it hands each task's result to a sink. Run here, the sink writes each task in its own
transaction as it finishes; on an executor's workers (``--jobs`` processes, a Ray cluster:
bench/executors.py) ``remote_run`` works in a scratch directory and returns the results, the new
checkpoint and the files written, which the driver saves and writes when the run comes back.
Under torchrun every rank trains; rank 0 is the driver and alone measures.
"""
from __future__ import annotations

import dataclasses
import random
import shutil
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
from tqdm.auto import tqdm

from bench.build import build_from_specs, method_context, resolve_method
from bench.checkpoints import atomic_save, atomic_write_bytes, checkpoint_path
from bench.data.base import DataBundle
from bench.distributed import Dist, barrier, broadcast, init_from_env, local_device
from bench.errors import RunFailed
from bench.executors import Executor, InProcess, Processes
from bench.methods.base import MethodNet
from bench.plugins import load_all, provenance
from bench.presets import Recipe
from bench.registry import BACKBONES, DATASETS, METHODS, PRESETS, TASKS, Registry, Spec
from bench.store import INFRASTRUCTURE, RUN, Store, owner_token
from bench.tasks.base import RunContext, TaskResult, task_key
from bench.train import train

STORE_NAME = "results.sqlite"
INTERRUPTED = "interrupted (Ctrl-C) before it finished"
OWNER = owner_token()  # this process, as the holder of the runs it claims


@dataclass
class SuiteConfig:
    """Everything a suite run needs, resolved and validated by the caller (``bench.run``)."""

    methods: list[Spec]
    backbone: Spec
    dataset: Spec
    recipe: Recipe
    preset: str
    tasks: list[Spec]
    out_dir: Path
    device: torch.device
    data_root: Optional[Path] = None
    download: bool = False
    retry_failed: bool = False
    progress: bool = True
    jobs: int = 1  # parallel processes for independent (method, seed) runs (local executor)
    executor: str = "local"  # local (this machine: in-process or --jobs) | ray
    ray: Optional[Any] = None  # bench.ray_executor.RayOptions when executor == "ray"
    tuning: Optional[dict[str, Any]] = None  # the protocol that chose this recipe (bench tune)
    threads: int = 1  # torch CPU threads per run (resolved by the caller: part of a CPU run's identity)
    plugins: tuple[str, ...] = ()  # modules every worker imports (bench.plugins.worker_modules)
    max_retries: int = 2  # runs again a run whose worker process died (local --jobs and Ray)

    @property
    def store_path(self) -> Path:
        return self.out_dir / STORE_NAME

    def entries(self, method: Optional[Spec] = None) -> list[tuple[Registry, str]]:
        """The registered entries a run of ``method`` (default: of every method) uses."""
        methods = self.methods if method is None else [method]
        return ([(METHODS, m.name) for m in methods] + [(TASKS, t.name) for t in self.tasks]
                + [(BACKBONES, self.backbone.name), (DATASETS, self.dataset.name),
                   (PRESETS, self.preset)])

    @property
    def execution(self) -> dict[str, Any]:
        """What besides the recipe changes a run's numbers: the device type and, on the CPU, the
        thread count (float reductions split over threads round differently)."""
        if self.device.type == "cpu":
            return {"device": "cpu", "threads": self.threads}
        return {"device": self.device.type}


@dataclass
class RunOutcome:
    method: str
    seed: int
    status: str  # complete | skipped | failed
    reason: str = ""
    seconds: float = 0.0
    run_id: Optional[int] = None
    times: dict[str, float] = field(default_factory=dict)  # "training" and each task: seconds
    failure: Optional[str] = None  # of a failed run: RUN (final) or INFRASTRUCTURE (retried)
    notice: Optional[str] = None  # a stale claim this run took over


@dataclass
class TaskRecord:
    """One task's result as the driver stores it."""

    key: str
    result: TaskResult
    status: str = "complete"
    reason: Optional[str] = None
    seconds: Optional[float] = None
    failure: Optional[str] = None  # of a failed task: RUN or INFRASTRUCTURE


@dataclass
class RunPlan:
    """What one (method, seed) still needs: decided by the driver from the store."""

    method: Spec
    seed: int
    run_id: int
    checkpoint: Path
    wanted: list[str]  # keys of every task this run should have
    pending: list[Spec] = field(default_factory=list)  # the tasks still to run
    holder: Optional[str] = None  # another live process that has claimed the run
    notice: Optional[str] = None  # the stale claim taken over, if any
    train_seconds: Optional[float] = None  # set by ``execute`` when it trains


Sink = Callable[[TaskRecord], None]


def load_dataset(spec: Spec, data_root: Optional[Path], download: bool) -> DataBundle:
    return DATASETS.get(spec.name).obj(data_root, download, **spec.kwargs)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_methods(cfg: SuiteConfig, data: DataBundle) -> SuiteConfig:
    """``cfg`` with every method's ``auto`` options resolved for the loaded data (its input size
    and classes) and dataset; the methods' labels stay as written."""
    context = method_context(cfg.backbone, data.num_classes, data.in_channels, data.input_size,
                             cfg.dataset.name)
    return dataclasses.replace(cfg, methods=[resolve_method(m, context) for m in cfg.methods])


def run_config(cfg: SuiteConfig, method: Spec, seed: int) -> dict[str, Any]:
    """The configuration that identifies a run (its hash decides what a rerun skips); the
    method's options as resolved for the run (``resolve_methods``)."""
    return {"method": method.name, "method_options": dict(method.options),
            "backbone": str(cfg.backbone), "backbone_options": dict(cfg.backbone.options),
            "dataset": cfg.dataset.name, "dataset_options": dict(cfg.dataset.options),
            "recipe": dataclasses.asdict(cfg.recipe) | {"seeds": None}, "seed": seed,
            "execution": cfg.execution} | ({"tuning": cfg.tuning} if cfg.tuning else {})


def prepare_data(cfg: SuiteConfig) -> DataBundle:
    """Load the dataset once and move in-memory splits to the training device."""
    data = load_dataset(cfg.dataset, cfg.data_root, cfg.download)
    for split_name in ("train", "test", "holdout"):
        split = getattr(data, split_name)
        if hasattr(split, "to"):
            setattr(data, split_name, split.to(cfg.device))
    return data


# -- planning and recording: the driver, the store's only writer ----------------------------------
def plan_run(cfg: SuiteConfig, store: Store, method: Spec, seed: int) -> RunPlan:
    """The run's row (created if new) and the tasks it still needs."""
    plugins = provenance(cfg.entries(method))
    run_id = store.start_run(run_config(cfg, method, seed), method=str(method),
                             method_name=method.name, options=method.kwargs,
                             backbone=str(cfg.backbone), dataset=str(cfg.dataset), seed=seed,
                             preset=cfg.preset, device=str(cfg.device),
                             torch_version=torch.__version__, plugins=plugins)
    tasks = [t for t in cfg.tasks if TASKS.get(t.name).obj.per_seed or seed == 0]
    pending = [t for t in tasks if not task_done(store, run_id, task_key(t), cfg.retry_failed)]
    plan = RunPlan(method, seed, run_id, checkpoint_path(cfg.out_dir, store.run_hash(run_id)),
                   [task_key(t) for t in tasks], pending)
    if pending:
        claim = store.claim(run_id, OWNER, str(cfg.device), plugins)
        plan.holder, plan.notice = claim.holder, claim.notice
        if plan.holder:
            plan.pending = []
    return plan


def task_done(store: Store, run_id: int, key: str, retry_failed: bool) -> bool:
    """Whether a rerun leaves the task as stored: complete or skipped, or failed by the run
    itself (a NaN loss, an exception in the method) unless ``retry_failed``. A failure of the
    infrastructure (a worker that died, an interrupted run) is always tried again."""
    status = store.task_status(run_id, key)
    if status == "failed":
        return not retry_failed and store.task_failure(run_id, key) == RUN
    return status in ("complete", "skipped")


def finish_run(store: Store, plan: RunPlan, ran: bool = True) -> str:
    """Mark the run complete, or failed if any of its tasks failed, by the run itself when any
    task's failure was its own (a run claimed by another process is left to it); returns the
    status. ``ran=False`` (nothing to do): the stored row changes only if it was out of date."""
    if plan.holder:
        return "skipped"
    failures = [store.task_failure(plan.run_id, key) for key in plan.wanted]
    status = "failed" if any(failures) else "complete"
    failure = (RUN if RUN in failures else INFRASTRUCTURE) if status == "failed" else None
    reasons = [store.task_reason(plan.run_id, k) for k, f in zip(plan.wanted, failures)
               if f == failure]
    reason = next((r for r in reasons if r), None) if status == "failed" else None
    store.end_run(plan.run_id, status, reason, plan.train_seconds, failure, changed_only=not ran)
    return status


def store_sink(store: Store, plan: RunPlan, times: dict[str, float]) -> Sink:
    """A sink writing each task result in its own transaction (and noting its time)."""
    def write(record: TaskRecord) -> None:
        store.record_task(plan.run_id, record.key, record.result, record.status, record.reason,
                          record.seconds, record.failure)
        times[record.key] = record.seconds or 0.0
    return write


def plan_all(cfg: SuiteConfig, store: Store) -> tuple[list[RunPlan], list[RunOutcome]]:
    """Every run of the suite planned (and claimed) by the driver: those with work to do, and
    the outcomes of those skipped."""
    plans, outcomes = [], []
    for method in cfg.methods:
        for seed in range(cfg.recipe.seeds):
            plan = plan_run(cfg, store, method, seed)
            if plan.pending:
                plans.append(plan)
            else:
                finish_run(store, plan, ran=False)
                outcomes.append(skipped(plan, store))
    return plans, outcomes


def record_run(store: Store, plan: RunPlan, records: list[TaskRecord],
               seconds: float) -> RunOutcome:
    """Write a run that came back from a worker: each task in its own transaction, then its
    status."""
    times: dict[str, float] = {}
    sink = store_sink(store, plan, times)
    for record in records:
        sink(record)
    return _outcome(store, plan, finish_run(store, plan), seconds, times)


def skipped(plan: RunPlan, store: Optional[Store] = None) -> RunOutcome:
    """A run with nothing to do; one whose stored run failed carries that failure."""
    reason, failure = f"claimed by {plan.holder}" if plan.holder else "already in the store", None
    stored, kind = store.run_failure(plan.run_id) if store is not None else (None, None)
    if kind is not None and not plan.holder:
        reason, failure = f"failed earlier: {stored}", kind
    return RunOutcome(str(plan.method), plan.seed, "skipped", reason, run_id=plan.run_id,
                      failure=failure, notice=plan.notice)


def failure_text(error: Exception) -> str:
    """An exception raised by a method or task, as a stored reason: its type, message and the
    line that raised it."""
    frame = traceback.extract_tb(error.__traceback__)[-1:] if error.__traceback__ else []
    where = f" (at {Path(frame[0].filename).name}:{frame[0].lineno})" if frame else ""
    return f"{type(error).__name__}: {error}{where}"


# -- executing a run: no store access ---------------------------------------------------------------
def train_or_load(cfg: SuiteConfig, plan: RunPlan, data: DataBundle, dist: Optional[Dist],
                  epoch_lines: bool = False) -> tuple[MethodNet, dict[str, Any]]:
    """The trained model of a run: from its checkpoint if one exists, else trained now (by every
    torchrun rank together; rank 0 saves the checkpoint)."""
    seed_everything(plan.seed)
    model = build_from_specs(plan.method, cfg.backbone, data.num_classes, data.in_channels)
    if broadcast(plan.checkpoint.exists(), dist):
        state = torch.load(plan.checkpoint, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        return model.to(cfg.device).eval(), state["history"]
    history = train(model, data, cfg.recipe, plan.seed, cfg.device, progress=cfg.progress,
                    desc=f"{plan.method} seed {plan.seed}", dist=dist, epoch_lines=epoch_lines)
    record = dataclasses.asdict(history)
    if dist is None or dist.is_main:
        atomic_save({"model": model.state_dict(), "history": record}, plan.checkpoint)
    return model.eval(), record


def execute(cfg: SuiteConfig, plan: RunPlan, data: DataBundle, sink: Optional[Sink],
            dist: Optional[Dist] = None, epoch_lines: bool = False) -> Optional[float]:
    """Train (or load) one run and measure its pending tasks, handing each result (with its
    wall time) to ``sink`` (None on the torchrun ranks that only help train). A training failure
    fails the tasks that need the trained model; the others still run. Returns the training
    time when the run trained now (None when it loaded its checkpoint or needed no model)."""
    model, history, failure, train_seconds = None, None, None, None
    if any(TASKS.get(t.name).obj.needs_training for t in plan.pending):
        start = time.perf_counter()
        trained = not plan.checkpoint.exists()
        try:
            model, history = train_or_load(cfg, plan, data, dist, epoch_lines)
        except RunFailed as error:
            failure = str(error)
        except Exception as error:  # the method's own failure: stored, and the suite goes on
            if dist is not None:  # under torchrun the other ranks would wait for this one
                raise
            failure = failure_text(error)
        train_seconds = time.perf_counter() - start if trained else None
    if sink is None:
        return train_seconds
    for spec in plan.pending:
        task = TASKS.get(spec.name).obj
        if task.needs_training and failure is not None:
            sink(TaskRecord(task_key(spec), TaskResult(), "failed", failure, failure=RUN))
            continue
        if model is not None:
            model.eval()
        ctx = RunContext(plan.method, cfg.backbone, data, cfg.recipe, plan.seed, cfg.device,
                         cfg.out_dir, plan.run_id, model, history, spec.kwargs)
        start = time.perf_counter()
        try:
            result = task.run(ctx)
        except Exception as error:  # this task failed (RunFailed, or a bug); the others still run
            reason = str(error) if isinstance(error, RunFailed) else failure_text(error)
            sink(TaskRecord(task_key(spec), TaskResult(), "failed", reason,
                            time.perf_counter() - start, RUN))
            continue
        sink(TaskRecord(task_key(spec), result, seconds=time.perf_counter() - start))
    return train_seconds


# -- the suite ----------------------------------------------------------------------------------------
def run_suite(cfg: SuiteConfig) -> list[RunOutcome]:
    """Run every (method, seed) of ``cfg``; a failing run is recorded and the suite goes on.
    Under torchrun every rank calls this; only rank 0 touches the store."""
    dist = init_from_env()
    if dist is None and (cfg.executor == "ray" or cfg.jobs > 1):
        return run_remote(cfg, make_executor(cfg))
    if dist is not None:
        cfg = dataclasses.replace(cfg, device=local_device(), progress=cfg.progress and dist.is_main)
    store = Store(cfg.store_path) if dist is None or dist.is_main else None
    torch.set_num_threads(cfg.threads)
    data = prepare_data(cfg)
    cfg = resolve_methods(cfg, data)
    outcomes = []
    jobs = [(m, s) for m in cfg.methods for s in range(cfg.recipe.seeds)]
    outer = tqdm(jobs, desc="suite", unit="run", disable=not cfg.progress, dynamic_ncols=True)
    try:
        for method, seed in outer:
            outer.set_postfix_str(f"{method} seed {seed}")
            start = time.perf_counter()
            plan = broadcast(plan_run(cfg, store, method, seed) if store else None, dist)
            if not plan.pending:
                if store is not None:
                    finish_run(store, plan, ran=False)
                outcomes.append(skipped(plan, store))
                continue
            times: dict[str, float] = {}
            plan.train_seconds = execute(cfg, plan, data,
                                         store_sink(store, plan, times) if store else None, dist)
            status = finish_run(store, plan) if store else "complete"
            barrier(dist)
            outcomes.append(_outcome(store, plan, status, time.perf_counter() - start, times))
    except KeyboardInterrupt:
        if store is not None:
            store.release_claims(OWNER, INTERRUPTED)
        raise
    finally:
        outer.close()
        if store is not None:
            store.close()
    return outcomes


def _outcome(store: Optional[Store], plan: RunPlan, status: str, seconds: float,
             times: dict[str, float]) -> RunOutcome:
    failed = store is not None and status == "failed"
    reason, failure = store.run_failure(plan.run_id) if failed else ("", None)
    if plan.train_seconds is not None:
        times = {"training": plan.train_seconds, **times}
    return RunOutcome(str(plan.method), plan.seed, status, reason or "", seconds, plan.run_id,
                      times, failure, plan.notice)


# -- runs in worker processes or on a cluster: the driver plans, workers execute, the driver writes --
_DATA: dict[Any, DataBundle] = {}  # per worker process: the prepared dataset of a configuration


def cached_data(cfg: SuiteConfig) -> DataBundle:
    """The suite's dataset, prepared once per process."""
    key = (str(cfg.dataset), str(cfg.data_root), str(cfg.device))
    if key not in _DATA:
        _DATA[key] = prepare_data(cfg)
    return _DATA[key]


@dataclass
class RemoteRun:
    """What a worker sends back for one run."""

    train_seconds: Optional[float]
    records: list[TaskRecord]
    seconds: float
    checkpoint: Optional[bytes]  # the weights it trained now, for the driver to save
    files: dict[str, bytes]  # files the tasks wrote, by path relative to --out


def remote_run(cfg: SuiteConfig, plan: RunPlan, checkpoint: Optional[bytes]) -> RemoteRun:
    """Execute one planned run in a worker, in a scratch directory of its own (it shares no disk
    with the driver), and return the results, the new checkpoint and the files written."""
    load_all(cfg.plugins)
    torch.set_num_threads(cfg.threads)
    start = time.perf_counter()
    scratch = Path(tempfile.mkdtemp(prefix="bench-run-"))
    try:
        local = dataclasses.replace(cfg, out_dir=scratch, progress=False)
        plan = dataclasses.replace(plan, checkpoint=scratch / "checkpoints" / plan.checkpoint.name)
        if checkpoint is not None:
            plan.checkpoint.parent.mkdir(parents=True)
            plan.checkpoint.write_bytes(checkpoint)
        records: list[TaskRecord] = []
        train_seconds = execute(local, plan, cached_data(local), records.append,
                                epoch_lines=cfg.executor == "ray")  # a local bar shows progress
        trained = (plan.checkpoint.read_bytes() if checkpoint is None and plan.checkpoint.exists()
                   else None)
        files: dict[str, bytes] = {}
        for record in records:
            record.result = _collect_files(record.result, scratch, files)
        return RemoteRun(train_seconds, records, time.perf_counter() - start, trained, files)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _collect_files(result: TaskResult, scratch: Path, files: dict[str, bytes]) -> TaskResult:
    """The files a task wrote under ``scratch``, gathered; its artifact paths become relative to
    ``--out``, where the driver writes them."""
    artifacts = {}
    for name, path in result.artifacts.items():
        path = Path(path)
        if path.is_file() and scratch in path.parents:
            relative = path.relative_to(scratch).as_posix()
            files[relative] = path.read_bytes()
            artifacts[name] = relative
        else:
            artifacts[name] = str(path)
    return dataclasses.replace(result, artifacts=artifacts)


def save_remote(out_dir: Path, plan: RunPlan, remote: RemoteRun) -> None:
    """The driver's side: the checkpoint and the tasks' files under ``--out`` (atomic renames),
    artifact paths made absolute again."""
    if remote.checkpoint is not None:
        atomic_write_bytes(remote.checkpoint, plan.checkpoint)
    for relative, data in remote.files.items():
        atomic_write_bytes(data, out_dir / relative)
    for record in remote.records:
        record.result.artifacts = {k: str(out_dir / v) if v in remote.files else v
                                   for k, v in record.result.artifacts.items()}


def failed_records(plan: RunPlan, reason: str) -> list[TaskRecord]:
    """The pending tasks of a run whose worker died (after the executor's retries): failures of
    the infrastructure, which a plain rerun retries."""
    return [TaskRecord(task_key(spec), TaskResult(), "failed", reason, failure=INFRASTRUCTURE)
            for spec in plan.pending]


def make_executor(cfg: SuiteConfig) -> Executor:
    """The executor the suite's settings name: Ray, local processes, or this process."""
    if cfg.executor == "ray":
        from bench.ray_executor import RayCluster

        return RayCluster(cfg)
    return (Processes(cfg.jobs, cfg.threads, cfg.max_retries, cfg.plugins) if cfg.jobs > 1
            else InProcess())


def run_remote(cfg: SuiteConfig, executor: Executor) -> list[RunOutcome]:
    """Plan every run, execute the pending ones on ``executor``, write each as it comes back
    (each task in its own transaction). Ctrl-C cancels what is outstanding."""
    store = Store(cfg.store_path)
    try:
        # fill the cache once, fail early, and resolve the methods for the data's shape
        cfg = resolve_methods(cfg, load_dataset(cfg.dataset, cfg.data_root, cfg.download))
        plans, outcomes = plan_all(cfg, store)
        shared = executor.share(dataclasses.replace(cfg, ray=None))
        handles = {}
        for plan in plans:
            checkpoint = plan.checkpoint.read_bytes() if plan.checkpoint.exists() else None
            handles[executor.submit(remote_run, shared, plan, checkpoint)] = plan
        failed = 0
        with tqdm(total=len(plans), desc=f"suite ({executor.slots} at once)", unit="run",
                  disable=not cfg.progress, dynamic_ncols=True) as bar:
            while handles:
                handle, remote, error = executor.next_done()
                plan = handles.pop(handle)
                if error is not None:
                    outcome = record_run(store, plan, failed_records(plan, error), 0.0)
                else:
                    save_remote(cfg.out_dir, plan, remote)
                    plan.train_seconds = remote.train_seconds
                    outcome = record_run(store, plan, remote.records, remote.seconds)
                outcomes.append(outcome)
                failed += outcome.status == "failed"
                bar.update(1)
                bar.set_postfix_str(f"finished {bar.n}, running {min(len(handles), executor.slots)}, "
                                    f"failed {failed}")
    except KeyboardInterrupt:
        executor.cancel()
        store.release_claims(OWNER, INTERRUPTED)
        raise
    finally:
        executor.close()
        store.close()
    return outcomes
