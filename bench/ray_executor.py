"""The Ray executor (``--executor ray``): every (method, seed) run, or tuning trial, is a Ray task.

The driver (the process that ran ``bench run`` or ``bench tune``) plans and claims every run in
the store, as with the local executor, then submits each as a task asking for ``num_cpus``
(default: the run's thread count) and, for CUDA runs, ``num_gpus`` (default 1). Workers share
nothing with the driver (bench/suite.py ``remote_run``): a worker trains (or loads the checkpoint
the driver sends it through the object store), measures the run's tasks in a scratch directory of
its own and returns the task results, the new checkpoint's bytes and the files the tasks wrote;
the driver, the store's only writer, saves them under ``--out`` and writes each task in its own
transaction. A worker that tries to open the store fails (``bench.store.WORKER_ENV``). Runs carry
the same configuration hash, seeds and thread count as local runs, so on the CPU their numbers are
identical.

Faults: a worker process that dies (killed, out of memory, node lost) is retried by Ray up to
``max_retries`` times, then its run's tasks are stored as failed by the infrastructure, with the
reason (a plain rerun retries them); a run that fails by itself (a NaN loss) is stored as failed
by the worker's own result and not retried. Ctrl-C on the driver cancels the outstanding tasks
and marks the runs it held interrupted; what was written stays consistent, so a rerun resumes.
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Any, Callable, Optional

from bench.errors import BenchError
from bench.executors import Done, Executor
from bench.store import WORKER_ENV

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


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise BenchError("executor ray needs Ray: pip install -e \".[ray]\" (or pip install "
                         "ray)", "executor") from None
    return ray


def _listening(address: str, timeout: float = 5.0) -> bool:
    """Whether something accepts TCP connections at a ``host:port`` address (other forms are left
    to Ray): Ray itself retries an unreachable address for minutes before giving up."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return True
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            return True
    except OSError:
        return False


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
            if not _listening(options.address):
                raise ConnectionError(f"nothing listens at {options.address}")
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


class RayCluster(Executor):
    """Each submitted piece a Ray task asking for ``resources(cfg)``, retried up to
    ``max_retries`` times when its worker process dies."""

    def __init__(self, cfg: Any) -> None:
        options: RayOptions = cfg.ray
        self.ray = connect(options)
        self.wanted = resources(cfg)
        check_resources(self.ray, self.wanted, options.address)
        self.max_retries = options.max_retries
        total = self.ray.cluster_resources()
        self.slots = max(1, int(min(total.get("CPU", 0.0) // self.wanted["num_cpus"],
                                    total.get("GPU", 0.0) // self.wanted.get("num_gpus", 1e-9)
                                    if "num_gpus" in self.wanted else 1e9)))
        self.refs: dict[Any, Any] = {}

    def share(self, obj: Any) -> Any:
        return self.ray.put(obj)

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        remote = self.ray.remote(fn).options(max_retries=self.max_retries,
                                             runtime_env={"env_vars": {WORKER_ENV: "1"}},
                                             **self.wanted)
        ref = remote.remote(*args)
        self.refs[ref] = True
        return ref

    def next_done(self) -> Done:
        done, _ = self.ray.wait(list(self.refs), num_returns=1)
        ref = done[0]
        del self.refs[ref]
        try:
            return ref, self.ray.get(ref), None
        except self.ray.exceptions.RayTaskError as error:  # the function itself raised
            raise error.as_instanceof_cause() from None
        except self.ray.exceptions.RayError as error:  # its worker died, retries exhausted
            return ref, None, (f"Ray worker lost after {self.max_retries} retries "
                               f"({type(error).__name__})")

    def cancel(self) -> None:
        for ref in self.refs:
            self.ray.cancel(ref, force=True)
        self.refs.clear()
