"""Where independent pieces of work (a suite's runs, a study's trials) execute: in this process,
in local worker processes (``--jobs N``), or on a Ray cluster (``--executor ray``,
bench/ray_executor.py). The driver submits picklable top-level functions and collects results as
they finish; workers never open the store (``bench.store.WORKER_ENV``) and hand everything back.
"""
from __future__ import annotations

import abc
import multiprocessing as mp
import os
import sys
import threading
import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any, Callable, Optional

import torch

from bench.errors import BenchError

Done = tuple[Any, Any, Optional[str]]  # (handle, result, error text or None)


class Executor(abc.ABC):
    """Submits work and yields it back as it finishes."""

    slots: int = 1  # how many pieces run at once

    @abc.abstractmethod
    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Start ``fn(*args)``; returns a handle."""

    @abc.abstractmethod
    def next_done(self) -> Done:
        """Wait for one submitted piece: its handle, its result, or why it failed (a worker
        process that died, after any retries); an exception raised by ``fn`` itself propagates."""

    def share(self, obj: Any) -> Any:
        """``obj`` as passed to every submission (Ray puts it in the object store once)."""
        return obj

    def cancel(self) -> None:
        """Cancel what has not finished (Ctrl-C on the driver)."""

    def close(self) -> None:
        """Release the workers."""


class InProcess(Executor):
    """Runs each piece in this process, in submission order, when it is waited for."""

    def __init__(self) -> None:
        self.queue: deque = deque()

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        handle = object()
        self.queue.append((handle, fn, args))
        return handle

    def next_done(self) -> Done:
        handle, fn, args = self.queue.popleft()
        return handle, fn(*args), None

    def cancel(self) -> None:
        self.queue.clear()


_COUNTER: Any = None


def _exit_with(parent: int) -> None:
    """End this worker once its driver is gone (killed, say): nobody would collect its work."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)


def worker_setup(threads: int, counter: Any, parent: int, plugins: tuple[str, ...] = ()) -> None:
    """A local worker process: never opens the store, registries loaded (with the driver's
    ``plugins`` modules), its thread count, on a machine with several GPUs one GPU of its own
    (round robin), and it ends with its driver."""
    from bench.plugins import load_all
    from bench.store import WORKER_ENV

    threading.Thread(target=_exit_with, args=(parent,), daemon=True).start()
    os.environ[WORKER_ENV] = "1"
    load_all(plugins)
    torch.set_num_threads(threads)
    with counter.get_lock():
        index = counter.value
        counter.value += 1
    if torch.cuda.is_available() and torch.cuda.device_count() > 1:
        torch.cuda.set_device(index % torch.cuda.device_count())


def check_spawnable() -> None:
    """Refuse, before any worker starts, a main program that spawned processes cannot re-import:
    one read from standard input (``python - < script.py``) names a ``__file__`` that is no file,
    and every worker would die while starting."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if getattr(getattr(main, "__spec__", None), "name", None) is None and path is not None \
            and not os.path.isfile(path):
        raise BenchError(f"jobs: worker processes cannot start from this program: its main module "
                         f"{path!r} is not a file they can import (standard input?); run it as a "
                         f"script file, a module or a notebook, or with jobs=1", "jobs")


class Processes(Executor):
    """``jobs`` local worker processes (spawned: no state shared with the driver), each importing
    the ``plugins`` modules."""

    def __init__(self, jobs: int, threads: int, plugins: tuple[str, ...] = ()) -> None:
        context = mp.get_context("spawn")
        self.slots = jobs
        self.pool = ProcessPoolExecutor(jobs, mp_context=context, initializer=worker_setup,
                                        initargs=(threads, context.Value("i", 0), os.getpid(),
                                                  tuple(plugins)))
        self.futures: set[Future] = set()

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        future = self.pool.submit(fn, *args)
        self.futures.add(future)
        return future

    def next_done(self) -> Done:
        done, _ = wait(self.futures, return_when=FIRST_COMPLETED)
        future = next(iter(done))
        self.futures.discard(future)
        error = future.exception()
        if error is None:
            return future, future.result(), None
        if type(error).__name__ == "BrokenProcessPool":
            return future, None, "a worker process died"
        raise error

    def cancel(self) -> None:
        for future in self.futures:
            future.cancel()

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
