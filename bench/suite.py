"""Runs a suite: every (method, seed) on one dataset and backbone, each requested task, results
into the store. Completed tasks are skipped by configuration hash, so a rerun resumes."""
from __future__ import annotations

import dataclasses
import multiprocessing as mp
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from tqdm.auto import tqdm

from bench.api import build_from_specs
from bench.data.base import DataBundle
from bench.distributed import Dist, barrier, broadcast, init_from_env, local_device
from bench.errors import BenchError, RunFailed
from bench.methods.base import MethodNet
from bench.presets import Recipe
from bench.registry import DATASETS, TASKS, Spec, load_all
from bench.store import Store, atomic_save, checkpoint_path
from bench.tasks.base import RunContext, TaskResult
from bench.train import train

STORE_NAME = "results.sqlite"


@dataclass
class SuiteConfig:
    """Everything a suite run needs, resolved and validated by the caller (the CLI or a user)."""

    methods: list[Spec]
    backbone: Spec
    dataset: Spec
    recipe: Recipe
    preset: str
    tasks: list[str]
    out_dir: Path
    device: torch.device
    data_root: Optional[Path] = None
    download: bool = False
    task_options: dict[str, Any] = field(default_factory=dict)
    retry_failed: bool = False
    progress: bool = True
    jobs: int = 1  # parallel processes for independent (method, seed) runs
    threads: Optional[int] = None  # torch CPU threads (default: torch's own choice)


@dataclass
class RunOutcome:
    method: str
    seed: int
    status: str  # complete | skipped | failed
    reason: str = ""
    seconds: float = 0.0


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when present, else CPU; an explicit device must exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise BenchError(f"unknown --device {name!r}; valid: auto, cpu, cuda, cuda:N")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise BenchError(f"--device {name} requested but no CUDA device is available; use cpu or auto")
    return torch.device(name)


def load_dataset(spec: Spec, data_root: Optional[Path], download: bool) -> DataBundle:
    return DATASETS.get(spec.name).obj(data_root, download, **spec.kwargs)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def run_config(cfg: SuiteConfig, method: Spec, seed: int) -> dict[str, Any]:
    """The configuration that identifies a run (its hash decides what a rerun skips)."""
    return {"method": method.name, "method_options": dict(method.options),
            "backbone": str(cfg.backbone), "backbone_options": dict(cfg.backbone.options),
            "dataset": cfg.dataset.name, "dataset_options": dict(cfg.dataset.options),
            "recipe": dataclasses.asdict(cfg.recipe) | {"seeds": None}, "seed": seed}


def _train_or_load(cfg: SuiteConfig, ckpt: Path, method: Spec, seed: int, data: DataBundle,
                   dist: Optional[Dist]) -> tuple[MethodNet, dict[str, Any]]:
    """The trained model of a run: from its checkpoint if one exists, else trained now (by every
    torchrun rank together; rank 0 saves the checkpoint)."""
    seed_everything(seed)
    model = build_from_specs(method, cfg.backbone, data.num_classes, data.in_channels)
    if broadcast(ckpt.exists(), dist):
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        return model.to(cfg.device).eval(), state["history"]
    history = train(model, data, cfg.recipe, seed, cfg.device, progress=cfg.progress,
                    desc=f"{method} seed {seed}", dist=dist)
    record = dataclasses.asdict(history)
    if dist is None or dist.is_main:
        atomic_save({"model": model.state_dict(), "history": record}, ckpt)
    return model.eval(), record


def prepare_data(cfg: SuiteConfig) -> DataBundle:
    """Load the dataset once and move in-memory splits to the training device."""
    data = load_dataset(cfg.dataset, cfg.data_root, cfg.download)
    for split_name in ("train", "test", "holdout"):
        split = getattr(data, split_name)
        if hasattr(split, "to"):
            setattr(data, split_name, split.to(cfg.device))
    return data


def run_suite(cfg: SuiteConfig) -> list[RunOutcome]:
    """Run every (method, seed) of ``cfg``; a failing run is recorded and the suite goes on.
    Under torchrun every rank calls this; only rank 0 touches the store."""
    dist = init_from_env()
    if cfg.jobs > 1 and dist is None:
        return run_parallel(cfg)
    if dist is not None:
        cfg = dataclasses.replace(cfg, device=local_device(), progress=cfg.progress and dist.is_main)
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    store = Store(cfg.out_dir / STORE_NAME) if dist is None or dist.is_main else None
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    data = prepare_data(cfg)
    outcomes = []
    jobs = [(m, s) for m in cfg.methods for s in range(cfg.recipe.seeds)]
    outer = tqdm(jobs, desc="suite", unit="run", disable=not cfg.progress, dynamic_ncols=True)
    try:
        for method, seed in outer:
            outer.set_postfix_str(f"{method} seed {seed}")
            outcomes.append(run_one(cfg, store, data, method, seed, dist))
    finally:
        outer.close()
        if store is not None:
            store.close()
    return outcomes


def run_one(cfg: SuiteConfig, store: Optional[Store], data: DataBundle, method: Spec, seed: int,
            dist: Optional[Dist] = None) -> RunOutcome:
    """Train (or load) one (method, seed) and run its pending tasks; ``store`` is None on the
    torchrun ranks other than 0, which only help train."""
    start = time.perf_counter()
    plan = None
    if store is not None:
        run_id = store.start_run(run_config(cfg, method, seed), method=str(method),
                                 method_name=method.name, options=method.kwargs,
                                 backbone=str(cfg.backbone), dataset=str(cfg.dataset), seed=seed,
                                 preset=cfg.preset, device=str(cfg.device),
                                 torch_version=torch.__version__)
        # Cost does not depend on the seed: it is measured once, with the first seed.
        wanted = [t for t in cfg.tasks if not (t == "cost" and seed > 0)]
        skip = {"complete", "skipped"} | (set() if cfg.retry_failed else {"failed"})
        pending = [t for t in wanted if store.task_status(run_id, t) not in skip]
        plan = (run_id, wanted, pending, checkpoint_path(cfg.out_dir, store.run_hash(run_id)))
    run_id, wanted, pending, ckpt = broadcast(plan, dist)
    if not pending:
        if store is not None:
            store.end_run(run_id, _overall(store, run_id, wanted))
        return RunOutcome(str(method), seed, "skipped", "already in the store")
    model, history = None, None
    try:
        if any(TASKS.get(t).obj.needs_training for t in pending):
            model, history = _train_or_load(cfg, ckpt, method, seed, data, dist)
    except RunFailed as failure:
        if store is not None:
            for task in pending:
                store.record_task(run_id, task, TaskResult(), "failed", str(failure))
            store.end_run(run_id, "failed", str(failure))
        return RunOutcome(str(method), seed, "failed", str(failure), time.perf_counter() - start)
    if store is None:  # other torchrun ranks: training done, rank 0 measures and stores
        barrier(dist)
        return RunOutcome(str(method), seed, "complete", "", time.perf_counter() - start)
    for task in pending:
        ctx = RunContext(method, cfg.backbone, data, cfg.recipe, seed, cfg.device, cfg.out_dir,
                         run_id, model, history, cfg.task_options.get(task, {}))
        if model is not None:
            model.eval()
        store.record_task(run_id, task, TASKS.get(task).obj.run(ctx))
    status = _overall(store, run_id, wanted)
    store.end_run(run_id, status)
    barrier(dist)
    return RunOutcome(str(method), seed, status, "", time.perf_counter() - start)


def _overall(store: Store, run_id: int, tasks: list[str]) -> str:
    statuses = [store.task_status(run_id, t) for t in tasks]
    return "failed" if "failed" in statuses else "complete"


# -- parallel (method, seed) runs: ``--jobs N`` ----------------------------------------------------
_WORKER: dict[str, Any] = {}


def _worker_init(cfg: SuiteConfig, counter: Any) -> None:
    load_all()  # a spawned process starts with empty registries
    with counter.get_lock():
        index = counter.value
        counter.value += 1
    device = cfg.device
    if device.type == "cuda" and torch.cuda.device_count() > 1:
        device = torch.device("cuda", index % torch.cuda.device_count())
    threads = max((os.cpu_count() or 1) // cfg.jobs, 1)
    cfg = dataclasses.replace(cfg, device=device, progress=False, threads=threads, jobs=1)
    torch.set_num_threads(threads)
    _WORKER["cfg"] = cfg
    _WORKER["data"] = prepare_data(cfg)


def _worker_run(job: tuple[Spec, int]) -> RunOutcome:
    cfg = _WORKER["cfg"]
    store = Store(cfg.out_dir / STORE_NAME)
    try:
        return run_one(cfg, store, _WORKER["data"], *job)
    finally:
        store.close()


def run_parallel(cfg: SuiteConfig) -> list[RunOutcome]:
    """Independent (method, seed) runs in ``cfg.jobs`` processes (one GPU each when there are
    several), all writing one store; SQLite's WAL and retried transactions keep writes safe."""
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    Store(cfg.out_dir / STORE_NAME).close()
    load_dataset(cfg.dataset, cfg.data_root, cfg.download)  # fill the cache once, fail early
    jobs = [(m, s) for m in cfg.methods for s in range(cfg.recipe.seeds)]
    context = mp.get_context("spawn")
    counter = context.Value("i", 0)
    with context.Pool(cfg.jobs, initializer=_worker_init, initargs=(cfg, counter)) as pool:
        results = pool.imap_unordered(_worker_run, jobs)
        return list(tqdm(results, total=len(jobs), desc=f"suite ({cfg.jobs} jobs)", unit="run",
                         disable=not cfg.progress, dynamic_ncols=True))
