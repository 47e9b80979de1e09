"""The Ray executor (``--executor ray``): every (method, seed) run is a Ray task on a cluster.

The driver (the process that ran ``bench run``) plans and claims every run in the store, as the
local executor does, then submits each run as a task asking for ``num_cpus`` (default: the run's
thread count) and, for CUDA runs, ``num_gpus`` (default 1). Workers share nothing with the driver:
a worker trains (or loads the checkpoint the driver sends it through the object store), measures
the run's tasks in a scratch directory of its own and returns the task results, the new
checkpoint's bytes and the files the tasks wrote; the driver, the store's only writer, saves the
checkpoint and files under ``--out`` and writes each task in its own transaction. A worker that
tries to open the store fails (``bench.store.WORKER_ENV``). Runs carry the same configuration
hash, seeds and thread count as local runs, so on the CPU their numbers are identical.

Faults: a worker process that dies (killed, out of memory, node lost) is retried by Ray up to
``max_retries`` times, then its run's tasks are stored as failed with the reason; a run that fails
by itself (a NaN loss) is stored as failed by the worker's own result and not retried. Ctrl-C on
the driver cancels the outstanding tasks; what was written stays consistent, and the driver's
claims lapse with it, so a rerun resumes.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from bench.errors import BenchError
from bench.tasks.base import TaskResult

LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class RayOptions:
    """Where the cluster is and what each run asks of it."""

    address: str = "auto"  # auto: a running cluster (RAY_ADDRESS or local), else start one here
    max_retries: int = 2  # retries of a run whose worker process died
    num_cpus: Optional[float] = None  # per run (default: the run's CPU threads)
    num_gpus: Optional[float] = None  # per CUDA run (default 1)

    def validate(self) -> None:
        if isinstance(self.max_retries, bool) or not isinstance(self.max_retries, int) \
                or self.max_retries < 0:
            raise BenchError(f"max_retries must be an integer >= 0, got {self.max_retries!r}",
                             "max_retries")
        for name in ("num_cpus", "num_gpus"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise BenchError(f"{name} must be positive, got {value!r}", f"ray_{name[4:]}")


@dataclass
class RemoteRun:
    """What a worker sends back for one run."""

    plan: Any  # the RunPlan it executed (with its training time)
    records: list  # TaskRecords
    seconds: float
    checkpoint: Optional[bytes]  # the weights it trained now, to be saved by the driver
    files: dict[str, bytes]  # files the tasks wrote, by path relative to --out


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise BenchError("executor ray needs Ray: pip install -e \".[ray]\" (or pip install "
                         "ray)", "executor") from None
    return ray


def connect(options: RayOptions) -> Any:
    """Connect to the cluster (or, with ``auto`` and none running, start one in this process,
    on the loopback address); any failure is one BenchError line."""
    ray = import_ray()
    if ray.is_initialized():
        if options.address in ("auto", ray.get_runtime_context().gcs_address):
            return ray
        ray.shutdown()  # connected elsewhere: this suite asked for another cluster
    try:
        if options.address == "auto" and not os.environ.get("RAY_ADDRESS"):
            try:
                ray.init(address="auto", log_to_driver=True, logging_level="error")
            except ConnectionError:
                ray.init(_node_ip_address=LOOPBACK, include_dashboard=False,
                         log_to_driver=True, logging_level="error")
        else:
            ray.init(address=options.address, log_to_driver=True, logging_level="error")
    except Exception as error:  # Ray raises many types (ConnectionError, RuntimeError, ...)
        raise BenchError(f"ray_address {options.address!r}: cannot connect to a Ray cluster "
                         f"({type(error).__name__}: {str(error).splitlines()[0][:200]})",
                         "ray_address") from None
    return ray


def resources(cfg: Any) -> dict[str, float]:
    """What each run asks for: CPUs for its threads, a GPU when it runs on CUDA."""
    options: RayOptions = cfg.ray
    wanted = {"num_cpus": float(options.num_cpus or cfg.threads)}
    if cfg.device.type == "cuda":
        wanted["num_gpus"] = float(options.num_gpus or 1)
    return wanted


def check_resources(ray: Any, wanted: dict[str, float], address: str) -> None:
    """Refuse a run that no node of the cluster can hold (it would wait forever)."""
    names = {"num_cpus": "CPU", "num_gpus": "GPU"}
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    fits = [all(node.get(names[k], 0.0) >= v for k, v in wanted.items()) for node in nodes]
    if not any(fits):
        have = ", ".join(f"{n.get('CPU', 0):g} CPU/{n.get('GPU', 0):g} GPU" for n in nodes)
        asked = ", ".join(f"{v:g} {names[k]}" for k, v in wanted.items())
        raise BenchError(f"executor ray: no node of the cluster at {address} can run a run asking "
                         f"for {asked} (nodes: {have or 'none'}); lower --ray-cpus/--threads, or "
                         "use a cluster with GPU nodes for --device cuda", "executor")


_DATA: dict[Any, Any] = {}  # per worker process: the prepared dataset of a configuration


def execute_remote(cfg: Any, plan: Any, checkpoint: Optional[bytes]) -> RemoteRun:
    """A Ray task: execute one planned run in a scratch directory and return what it made."""
    import torch

    from bench import suite
    from bench.plugins import load_all
    from bench.store import WORKER_ENV

    os.environ[WORKER_ENV] = "1"
    load_all()
    torch.set_num_threads(cfg.threads)
    start = time.perf_counter()
    scratch = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    try:
        local = dataclasses.replace(cfg, out_dir=scratch, progress=False)
        key = (str(cfg.dataset), str(cfg.data_root), str(cfg.device))
        if key not in _DATA:
            _DATA[key] = suite.prepare_data(local)
        name = plan.checkpoint.name
        plan = dataclasses.replace(plan, checkpoint=scratch / "checkpoints" / name)
        if checkpoint is not None:
            plan.checkpoint.parent.mkdir(parents=True)
            plan.checkpoint.write_bytes(checkpoint)
        records: list = []
        plan.train_seconds = suite.execute(local, plan, _DATA[key], records.append,
                                           epoch_lines=True)
        trained = plan.checkpoint.read_bytes() if checkpoint is None and \
            plan.checkpoint.exists() else None
        files = {}
        for record in records:
            record.result = _relocate(record.result, scratch, files)
        return RemoteRun(dataclasses.replace(plan, checkpoint=Path(name)), records,
                         time.perf_counter() - start, trained, files)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _relocate(result: TaskResult, scratch: Path, files: dict[str, bytes]) -> TaskResult:
    """Collect the files a task wrote under ``scratch``; its artifact paths become relative to
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


def _save(out_dir: Path, remote: RemoteRun, plan: Any) -> None:
    """The driver's side: the checkpoint and the tasks' files under ``--out`` (atomic renames),
    artifact paths made absolute again."""
    from bench.checkpoints import atomic_write_bytes

    if remote.checkpoint is not None:
        atomic_write_bytes(remote.checkpoint, plan.checkpoint)
    for relative, data in remote.files.items():
        atomic_write_bytes(data, out_dir / relative)
    for record in remote.records:
        record.result.artifacts = {k: str(out_dir / v) if v in remote.files else v
                                   for k, v in record.result.artifacts.items()}


def _failed(plan: Any, reason: str) -> list:
    from bench.suite import TaskRecord
    from bench.tasks.base import task_key

    return [TaskRecord(task_key(spec), TaskResult(), "failed", reason) for spec in plan.pending]


def run_ray(cfg: Any) -> list:
    """Plan every run, run the pending ones as Ray tasks, store what comes back."""
    from tqdm.auto import tqdm

    from bench.store import Store
    from bench.suite import plan_all, record_run

    options: RayOptions = cfg.ray
    ray = connect(options)
    wanted = resources(cfg)
    check_resources(ray, wanted, options.address)
    store = Store(cfg.store_path)
    pending: dict[Any, Any] = {}
    try:
        plans, outcomes = plan_all(cfg, store)
        remote = ray.remote(execute_remote).options(max_retries=options.max_retries, **wanted)
        cfg_ref = ray.put(dataclasses.replace(cfg, ray=None))
        for plan in plans:
            checkpoint = plan.checkpoint.read_bytes() if plan.checkpoint.exists() else None
            pending[remote.remote(cfg_ref, plan, checkpoint)] = plan
        failed = 0
        with tqdm(total=len(plans), desc="suite (ray)", unit="run", disable=not cfg.progress,
                  dynamic_ncols=True) as bar:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                plan = pending.pop(done[0])
                try:
                    result: RemoteRun = ray.get(done[0])
                except ray.exceptions.RayError as error:  # the worker died, retries exhausted
                    reason = (f"Ray worker lost after {options.max_retries} retries "
                              f"({type(error).__name__})")
                    outcome = record_run(store, plan, _failed(plan, reason), 0.0)
                else:
                    _save(cfg.out_dir, result, plan)
                    plan.train_seconds = result.plan.train_seconds
                    outcome = record_run(store, plan, result.records, result.seconds)
                outcomes.append(outcome)
                failed += outcome.status == "failed"
                bar.update(1)
                bar.set_postfix_str(f"finished {bar.n}, running {min(len(pending), _slots(ray, wanted))}, "
                                    f"failed {failed}")
    except KeyboardInterrupt:
        for ref in pending:
            ray.cancel(ref, force=True)
        raise
    finally:
        store.close()
    return outcomes


def _slots(ray: Any, wanted: dict[str, float]) -> int:
    """How many runs the cluster can hold at once (for the progress line)."""
    total = ray.cluster_resources()
    return int(min(total.get("CPU", 0.0) // wanted["num_cpus"],
                   total.get("GPU", 0.0) // wanted["num_gpus"] if "num_gpus" in wanted else 1e9))

