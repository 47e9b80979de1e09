"""Runs a suite: every (method, seed) on one dataset and backbone, each requested task, results
into the store. Completed tasks are skipped by configuration hash, so a rerun resumes.

The process that owns the store (the driver) plans every run and is its only writer. Executing a
run (``execute``: train or load the checkpoint, then measure each task) touches no store: it hands
each task's result to a sink. Run here, the sink writes each task in its own transaction as it
finishes; in ``--jobs`` worker processes it collects the results, which the driver writes when the
run comes back. Under torchrun every rank trains; rank 0 is the driver and alone measures.
"""
from __future__ import annotations

import dataclasses
import multiprocessing as mp
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
from tqdm.auto import tqdm

from bench.api import build_from_specs, method_context, resolve_method
from bench.checkpoints import atomic_save, checkpoint_path
from bench.data.base import DataBundle
from bench.distributed import Dist, barrier, broadcast, init_from_env, local_device
from bench.errors import RunFailed
from bench.methods.base import MethodNet
from bench.plugins import load_all
from bench.presets import Recipe
from bench.registry import DATASETS, TASKS, Spec
from bench.store import Store
from bench.tasks.base import RunContext, TaskResult, task_key
from bench.train import train

STORE_NAME = "results.sqlite"


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
    jobs: int = 1  # parallel processes for independent (method, seed) runs
    threads: Optional[int] = None  # torch CPU threads (default: torch's own choice)

    @property
    def store_path(self) -> Path:
        return self.out_dir / STORE_NAME


@dataclass
class RunOutcome:
    method: str
    seed: int
    status: str  # complete | skipped | failed
    reason: str = ""
    seconds: float = 0.0


@dataclass
class TaskRecord:
    """One task's result as the driver stores it."""

    key: str
    result: TaskResult
    status: str = "complete"
    reason: Optional[str] = None


@dataclass
class RunPlan:
    """What one (method, seed) still needs: decided by the driver from the store."""

    method: Spec
    seed: int
    run_id: int
    checkpoint: Path
    wanted: list[str]  # keys of every task this run should have
    pending: list[Spec] = field(default_factory=list)  # the tasks still to run


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
            "recipe": dataclasses.asdict(cfg.recipe) | {"seeds": None}, "seed": seed}


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
    run_id = store.start_run(run_config(cfg, method, seed), method=str(method),
                             method_name=method.name, options=method.kwargs,
                             backbone=str(cfg.backbone), dataset=str(cfg.dataset), seed=seed,
                             preset=cfg.preset, device=str(cfg.device),
                             torch_version=torch.__version__)
    tasks = [t for t in cfg.tasks if TASKS.get(t.name).obj.per_seed or seed == 0]
    done = {"complete", "skipped"} | (set() if cfg.retry_failed else {"failed"})
    pending = [t for t in tasks if store.task_status(run_id, task_key(t)) not in done]
    return RunPlan(method, seed, run_id, checkpoint_path(cfg.out_dir, store.run_hash(run_id)),
                   [task_key(t) for t in tasks], pending)


def finish_run(store: Store, plan: RunPlan) -> str:
    """Mark the run complete, or failed if any of its tasks failed; returns that status."""
    statuses = [store.task_status(plan.run_id, key) for key in plan.wanted]
    status = "failed" if "failed" in statuses else "complete"
    reasons = [r for r in (store.task_reason(plan.run_id, k) for k in plan.wanted) if r]
    store.end_run(plan.run_id, status, reasons[0] if status == "failed" and reasons else None)
    return status


def store_sink(store: Store, plan: RunPlan) -> Sink:
    """A sink writing each task result in its own transaction."""
    return lambda record: store.record_task(plan.run_id, record.key, record.result, record.status,
                                            record.reason)


# -- executing a run: no store access ---------------------------------------------------------------
def train_or_load(cfg: SuiteConfig, plan: RunPlan, data: DataBundle,
                  dist: Optional[Dist]) -> tuple[MethodNet, dict[str, Any]]:
    """The trained model of a run: from its checkpoint if one exists, else trained now (by every
    torchrun rank together; rank 0 saves the checkpoint)."""
    seed_everything(plan.seed)
    model = build_from_specs(plan.method, cfg.backbone, data.num_classes, data.in_channels)
    if broadcast(plan.checkpoint.exists(), dist):
        state = torch.load(plan.checkpoint, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        return model.to(cfg.device).eval(), state["history"]
    history = train(model, data, cfg.recipe, plan.seed, cfg.device, progress=cfg.progress,
                    desc=f"{plan.method} seed {plan.seed}", dist=dist)
    record = dataclasses.asdict(history)
    if dist is None or dist.is_main:
        atomic_save({"model": model.state_dict(), "history": record}, plan.checkpoint)
    return model.eval(), record


def execute(cfg: SuiteConfig, plan: RunPlan, data: DataBundle, sink: Optional[Sink],
            dist: Optional[Dist] = None) -> None:
    """Train (or load) one run and measure its pending tasks, handing each result to ``sink``
    (None on the torchrun ranks that only help train). A training failure fails the tasks that
    need the trained model; the others still run."""
    model, history, failure = None, None, None
    if any(TASKS.get(t.name).obj.needs_training for t in plan.pending):
        try:
            model, history = train_or_load(cfg, plan, data, dist)
        except RunFailed as error:
            failure = str(error)
    if sink is None:
        return
    for spec in plan.pending:
        task = TASKS.get(spec.name).obj
        if task.needs_training and failure is not None:
            sink(TaskRecord(task_key(spec), TaskResult(), "failed", failure))
            continue
        if model is not None:
            model.eval()
        ctx = RunContext(plan.method, cfg.backbone, data, cfg.recipe, plan.seed, cfg.device,
                         cfg.out_dir, plan.run_id, model, history, spec.kwargs)
        sink(TaskRecord(task_key(spec), task.run(ctx)))


# -- the suite ----------------------------------------------------------------------------------------
def run_suite(cfg: SuiteConfig) -> list[RunOutcome]:
    """Run every (method, seed) of ``cfg``; a failing run is recorded and the suite goes on.
    Under torchrun every rank calls this; only rank 0 touches the store."""
    dist = init_from_env()
    if cfg.jobs > 1 and dist is None:
        return run_parallel(cfg)
    if dist is not None:
        cfg = dataclasses.replace(cfg, device=local_device(), progress=cfg.progress and dist.is_main)
    store = Store(cfg.store_path) if dist is None or dist.is_main else None
    if cfg.threads:
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
                    finish_run(store, plan)
                outcomes.append(RunOutcome(str(method), seed, "skipped", "already in the store"))
                continue
            execute(cfg, plan, data, store_sink(store, plan) if store else None, dist)
            status = finish_run(store, plan) if store else "complete"
            barrier(dist)
            outcomes.append(_outcome(store, plan, status, time.perf_counter() - start))
    finally:
        outer.close()
        if store is not None:
            store.close()
    return outcomes


def _outcome(store: Optional[Store], plan: RunPlan, status: str, seconds: float) -> RunOutcome:
    reason = store.run_reason(plan.run_id) if store is not None and status == "failed" else ""
    return RunOutcome(str(plan.method), plan.seed, status, reason or "", seconds)


# -- parallel (method, seed) runs: ``--jobs N`` --------------------------------------------------------
_WORKER: dict[str, Any] = {}


def _worker_init(cfg: SuiteConfig, counter: Any) -> None:
    load_all()  # a spawned process starts with empty registries
    with counter.get_lock():
        index = counter.value
        counter.value += 1
    device = cfg.device
    if device.type == "cuda" and torch.cuda.device_count() > 1:
        device = torch.device("cuda", index % torch.cuda.device_count())
    threads = cfg.threads or max((os.cpu_count() or 1) // cfg.jobs, 1)
    cfg = dataclasses.replace(cfg, device=device, progress=False, threads=threads, jobs=1)
    torch.set_num_threads(threads)
    _WORKER["cfg"] = cfg
    _WORKER["data"] = prepare_data(cfg)


def _worker_run(plan: RunPlan) -> tuple[RunPlan, list[TaskRecord], float]:
    """Execute one planned run in a worker; its results go back to the driver."""
    start = time.perf_counter()
    records: list[TaskRecord] = []
    execute(_WORKER["cfg"], plan, _WORKER["data"], records.append)
    return plan, records, time.perf_counter() - start


def run_parallel(cfg: SuiteConfig) -> list[RunOutcome]:
    """Independent (method, seed) runs in ``cfg.jobs`` processes (one GPU each when there are
    several). Workers never open the store: the driver plans every run, then writes each
    returned run's tasks, one transaction each."""
    store = Store(cfg.store_path)
    outcomes: list[RunOutcome] = []
    try:
        # fill the cache once, fail early, and resolve the methods for the data's shape
        cfg = resolve_methods(cfg, load_dataset(cfg.dataset, cfg.data_root, cfg.download))
        plans = []
        for method in cfg.methods:
            for seed in range(cfg.recipe.seeds):
                plan = plan_run(cfg, store, method, seed)
                if plan.pending:
                    plans.append(plan)
                else:
                    finish_run(store, plan)
                    outcomes.append(RunOutcome(str(method), seed, "skipped", "already in the store"))
        if not plans:
            return outcomes
        context = mp.get_context("spawn")
        counter = context.Value("i", 0)
        with context.Pool(min(cfg.jobs, len(plans)), initializer=_worker_init,
                          initargs=(cfg, counter)) as pool:
            results = pool.imap_unordered(_worker_run, plans)
            for plan, records, seconds in tqdm(results, total=len(plans),
                                               desc=f"suite ({cfg.jobs} jobs)", unit="run",
                                               disable=not cfg.progress, dynamic_ncols=True):
                sink = store_sink(store, plan)
                for record in records:
                    sink(record)
                outcomes.append(_outcome(store, plan, finish_run(store, plan), seconds))
    finally:
        store.close()
    return outcomes
