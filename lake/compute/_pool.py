"""A local pool of worker processes: the machine's cores without a cluster's start-up.

A ``dask.distributed`` LocalCluster starts a scheduler, a nanny per worker and the workers,
and routes every task and result through the scheduler: seconds of CPU before the first task
on a 2-core machine. A :class:`concurrent.futures.ProcessPoolExecutor` (the pool that Dask's
own ``processes`` scheduler runs on) has none of that: tasks and results travel over one pipe.

How the workers start decides what the pool costs on small jobs. A **forked** worker starts in
milliseconds with everything this process has imported and holds (the shared value is
inherited, never pickled); a **spawned** one is a new interpreter that imports the stack and
unpickles the shared value: ~1 s of CPU per worker, measured (docs/performance.md). A fork
copies only the calling thread: a lock another thread held at that moment stays locked
forever in the child. So the pool forks only when this process has no thread but the calling
one (:func:`fork_safe`), counted exactly: on Linux, by the OS (``/proc/self/task``), which
sees native threads too (an fsspec event loop, a server's threads, a database driver's or an
RPC client's pool in a caller's process), and by Python. No native thread is excused: numpy's
OpenBLAS starts its threads when numpy is imported (pydicom imports numpy) unless
``OPENBLAS_NUM_THREADS`` is 1, which the ``lake`` command sets before anything imports numpy
(its parallelism is its worker processes); a library caller whose numpy runs OpenBLAS
threads gets spawned workers. As a second guard, the pool never forks once a library is
loaded whose native threads may start behind the caller's back (:data:`_THREADED_LIBRARIES`:
pyarrow's allocator and thread pools, delta-rs's runtime, DuckDB; an ingest's driver imports
them at its first commit, after the fork). The same exact count is what CPython 3.12 and
later warn about (``DeprecationWarning``: a multi-threaded process calling fork), so a fork
decided here raises no such warning. Otherwise the workers are spawned.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from multiprocessing.sharedctypes import Synchronized

__all__ = ["Pool", "call_with_shared", "fork_safe", "os_threads", "start_pool"]

T = TypeVar("T")
R = TypeVar("R")

_held: dict[str, Any] = {}
"""In a pool worker process only: the value its initializer received (the map's ``shared``),
held in memory for every task (never written anywhere: it may hold keys)."""

_PARENT_POLL = 1.0
"""Seconds between a worker's checks that the process that started it is alive."""

_THREADED_LIBRARIES = ("pyarrow", "deltalake", "duckdb", "distributed")
"""Modules whose native (or background) threads may hold locks at any moment once loaded."""


def os_threads() -> int | None:
    """The threads of this process as the OS counts them (native ones too), or None where
    the OS does not say (``/proc/self/task`` is Linux's)."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return None


def fork_safe() -> bool:
    """Whether a fork of this process would copy everything that is running.

    True only on Linux, with exactly one thread in this process as the OS counts them
    (:func:`os_threads`: no native thread of any library, numpy's OpenBLAS included) and as
    Python counts them, and none of :data:`_THREADED_LIBRARIES` loaded (they may start
    threads at any moment). A library call therefore never forks a process that holds
    threads of its own or of its caller.
    """
    return (
        sys.platform.startswith("linux")
        and threading.active_count() == 1
        and not any(name in sys.modules for name in _THREADED_LIBRARIES)
        and os_threads() == 1
    )


class Pool:
    """A :class:`~concurrent.futures.ProcessPoolExecutor` whose workers each hold one shared
    value: inherited when they are forked, handed over through a queue when they are spawned
    (see :func:`start_pool`).

    Attributes
    ----------
    forked : bool
        Whether the workers are forked (start at once) rather than spawned.
    """

    def __init__(self, workers: int, name: str, shared: Any, *, fork: bool | None = None
                 ) -> None:
        self.forked = fork_safe() if fork is None else fork
        self.name = name
        self._shared = shared
        self._workers = workers
        self._handed = 0
        self._handover: multiprocessing.Queue[Any] | None = None
        if self.forked:
            # Inherited by the fork (initargs are not pickled): nothing to hand over.
            self._taken = None
            self._executor = ProcessPoolExecutor(
                max_workers=workers,
                mp_context=multiprocessing.get_context("fork"),
                initializer=_inherit,
                initargs=(name, shared, os.getpid()),
            )
            return
        context = multiprocessing.get_context("spawn")
        self._taken = context.Value("i", 0)
        self._handover = context.Queue()
        # Never let this process's exit wait for the queue's feeder thread: an item no
        # worker took would block it forever (the pipe is full and nobody reads it).
        self._handover.cancel_join_thread()
        self._executor = ProcessPoolExecutor(
            max_workers=workers,
            mp_context=context,
            initializer=_hold,
            initargs=(name, self._handover, self._taken, os.getpid()),
        )

    def submit(self, func: Callable[..., R], *args: Any) -> Future[R]:
        """Submit ``func(*args)``.

        A forking executor starts all its workers at the first submission. A spawning one
        starts a process only on a submission (and at most one per submission), so one
        shared value handed over per submission, up to one per worker, is at least one per
        started worker, and no more than needed when there are fewer tasks than workers.
        """
        if self._handover is not None and self._handed < self._workers:
            self._handover.put(self._shared)
            self._handed += 1
        return self._executor.submit(func, *args)

    def shutdown(self) -> None:
        """Stop the workers (cancelling tasks not started), then take back the shared
        values no worker took, so that the queue's feeder thread ends."""
        self._executor.shutdown(wait=True, cancel_futures=True)
        if self._handover is None or self._taken is None:
            return
        left = self._handed - self._taken.value
        for _ in range(left):
            try:
                self._handover.get(timeout=_DRAIN_TIMEOUT)
            except queue.Empty:  # a worker killed while taking it: the pipe is unusable
                return  # the feeder thread is abandoned (its join was cancelled)
        self._handover.close()
        self._handover.join_thread()


_DRAIN_TIMEOUT = 30.0
"""Seconds to wait for a shared value still in the queue's pipe when the pool stops (the
queue's feeder thread writes it while this process reads; normally immediate)."""


def start_pool(workers: int, name: str, shared: Any, *, fork: bool | None = None) -> Pool:
    """A pool of up to ``workers`` processes, each holding ``shared`` under ``name``.

    Forked when that is safe (:func:`fork_safe`; ``fork`` True or False forces it):
    the workers inherit ``shared``. Spawned otherwise: ``shared`` travels through a queue,
    not with the arguments that start each process: those are written to the new process's
    pipe while it starts, and a value larger than the pipe's buffer (an ingest's
    de-identification engine pickles to megabytes) would block this process until the new
    one had imported its modules, one worker after the other. The queue's feeder thread
    writes it instead, and the workers start together.
    Stop the pool with :meth:`Pool.shutdown`: it takes back the values no worker took.
    """
    return Pool(workers, name, shared, fork=fork)


def _guard(parent: int) -> None:
    """Leave Ctrl-C to the parent (it stops the pool); exit when the parent is gone (killed:
    nobody else would stop this process)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_exit_with, args=(parent,), daemon=True).start()


def _inherit(name: str, shared: Any, parent: int) -> None:
    """Initializer of a forked worker: keep the inherited shared value."""
    _held[name] = shared
    _guard(parent)


def _hold(
    name: str, handover: multiprocessing.Queue[Any], taken: Synchronized[int], parent: int
) -> None:
    """Initializer of a spawned worker: keep the shared value (and count it taken)."""
    _held[name] = handover.get()
    with taken.get_lock():
        taken.value += 1
    _guard(parent)


def _exit_with(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(_PARENT_POLL)
    os._exit(1)


def call_with_shared(func: Callable[[T, Any], R], task: T, name: str) -> R:
    """``func(task, shared)`` in a pool worker, with the value its initializer holds."""
    return func(task, _held[name])
