"""Where independent pieces of work (a suite's runs, a study's trials) execute: in this process,
in local worker processes (``--jobs N``), or on a Ray cluster (``--executor ray``,
bench/ray_executor.py). The driver submits picklable top-level functions and collects results as
they finish; workers never open the store (``bench.store.WORKER_ENV``) and hand everything back.
"""
from __future__ import annotations

import abc
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from multiprocessing import connection as mp_connection
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


def _exit_with(parent: int) -> None:
    """End this worker once its driver is gone (killed, say): nobody would collect its work."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)


def worker_setup(threads: int, index: int, parent: int, plugins: tuple[str, ...] = ()) -> None:
    """A local worker process: never opens the store, registries loaded (with the driver's
    ``plugins`` modules), its thread count, on a machine with several GPUs one GPU of its own
    (round robin), and it ends with its driver."""
    from bench.plugins import load_all
    from bench.store import WORKER_ENV

    threading.Thread(target=_exit_with, args=(parent,), daemon=True).start()
    os.environ[WORKER_ENV] = "1"
    load_all(plugins)
    torch.set_num_threads(threads)
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


def death_reason(exitcode: Optional[int]) -> str:
    """How a worker process ended, in words: ``worker killed by signal 9 (SIGKILL; out of
    memory?)``."""
    if exitcode is not None and exitcode < 0:
        number = -exitcode
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = "unknown signal"
        hint = "; out of memory?" if number == signal.SIGKILL else ""
        return f"worker killed by signal {number} ({name}{hint})"
    return f"worker exited with code {exitcode} while running it"


def _worker_loop(connection: Any, threads: int, index: int, parent: int,
                 plugins: tuple[str, ...]) -> None:
    """A local worker: set up once, then run each piece the driver sends and send back its
    result or the exception it raised; None ends it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's to handle
    worker_setup(threads, index, parent, plugins)
    while True:
        work = connection.recv()
        if work is None:
            return
        fn, args = work
        try:
            reply = ("ok", fn(*args))
        except Exception as error:  # the piece's own failure, raised again in the driver
            reply = ("error", error)
        try:
            connection.send(reply)
        except Exception as error:  # a result or exception that does not pickle
            connection.send(("error", RuntimeError(f"{type(error).__name__}: {error}")))


@dataclass(eq=False)
class _Piece:
    handle: Any
    fn: Callable[..., Any]
    args: tuple
    attempts: int = 0  # how many workers died running it


@dataclass(eq=False)
class _Worker:
    process: Any
    connection: Any
    piece: Optional[_Piece] = None


class Processes(Executor):
    """``jobs`` local worker processes (spawned: no state shared with the driver), each running
    one piece at a time. A worker that dies (killed, out of memory) is replaced and only the
    piece it ran is run again, up to ``max_retries`` times; then that piece comes back with the
    cause of death as its error. The other workers' pieces are not disturbed. Each worker imports
    the ``plugins`` modules."""

    def __init__(self, jobs: int, threads: int, max_retries: int = 2,
                 plugins: tuple[str, ...] = ()) -> None:
        self.context = mp.get_context("spawn")
        self.slots, self.threads, self.max_retries = jobs, threads, max_retries
        self.plugins = tuple(plugins)
        self.queue: deque[_Piece] = deque()
        self.workers: list[_Worker] = []  # started when there is work for them, up to ``jobs``

    def _start(self, index: int) -> _Worker:
        mine, theirs = self.context.Pipe()
        process = self.context.Process(target=_worker_loop, name=f"bench-worker-{index}",
                                       args=(theirs, self.threads, index, os.getpid(),
                                              self.plugins))
        process.start()
        theirs.close()
        return _Worker(process, mine)

    def _dispatch(self) -> None:
        """Hand queued pieces to idle workers (one that died while idle is replaced first),
        starting workers while pieces wait and fewer than ``jobs`` run."""
        idle = sum(worker.piece is None for worker in self.workers)
        while len(self.workers) < self.slots and len(self.queue) > idle:
            self.workers.append(self._start(len(self.workers)))
            idle += 1
        for index, worker in enumerate(self.workers):
            if worker.piece is None and self.queue:
                if not worker.process.is_alive():
                    worker.connection.close()
                    worker = self.workers[index] = self._start(index)
                worker.piece = self.queue.popleft()
                worker.connection.send((worker.piece.fn, worker.piece.args))

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        handle = object()
        self.queue.append(_Piece(handle, fn, args))
        self._dispatch()
        return handle

    def next_done(self) -> Done:
        while True:
            busy = {w.connection: w for w in self.workers if w.piece is not None}
            if not busy:
                raise RuntimeError("next_done with nothing submitted")
            ready = mp_connection.wait(list(busy) + [w.process.sentinel for w in busy.values()])
            for worker in busy.values():
                if worker.connection not in ready and worker.process.sentinel not in ready:
                    continue
                piece = worker.piece
                try:
                    status, value = worker.connection.recv()
                except (EOFError, OSError):  # the worker died (its pipe closed)
                    done = self._replace(worker)
                    if done is not None:
                        return done
                    break
                worker.piece = None
                self._dispatch()
                if status == "error":
                    raise value
                return piece.handle, value, None

    def _replace(self, worker: _Worker) -> Optional[Done]:
        """Run the dead worker's piece again (``_dispatch`` starts a worker in its place when
        there is work for one), or, once it has died ``max_retries + 1`` times, hand it back with
        the cause."""
        worker.process.join(timeout=10)
        reason = death_reason(worker.process.exitcode)
        worker.connection.close()
        piece, worker.piece = worker.piece, None
        piece.attempts += 1
        if piece.attempts <= self.max_retries:
            self.queue.appendleft(piece)
            self._dispatch()
            return None
        self._dispatch()
        tries = "once" if piece.attempts == 1 else f"in each of {piece.attempts} attempts"
        return piece.handle, None, f"{reason}, {tries}"

    def cancel(self) -> None:
        self.queue.clear()
        for worker in self.workers:
            if worker.piece is not None:
                worker.process.terminate()
                worker.piece = None

    def close(self) -> None:
        self.queue.clear()
        for worker in self.workers:
            try:
                worker.connection.send(None)
            except OSError:
                pass
        for worker in self.workers:
            worker.process.join(timeout=30)
            if worker.process.is_alive():
                worker.process.terminate()
                worker.process.join()
            worker.connection.close()
