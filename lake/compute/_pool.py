"""A local pool of spawned worker processes: the machine's cores without a cluster's start-up.

A ``dask.distributed`` LocalCluster starts a scheduler, a nanny per worker and the workers,
and routes every task and result through the scheduler: seconds of CPU before the first task
on a 2-core machine. A :class:`concurrent.futures.ProcessPoolExecutor` (the pool that Dask's
own ``processes`` scheduler runs on) has none of that: each worker is one spawned process that
imports what its first task needs, and tasks and results travel over one pipe. Workers are
spawned, never forked: a fork would copy delta-rs's and DuckDB's threads and locks.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from multiprocessing.sharedctypes import Synchronized

__all__ = ["Pool", "call_with_shared", "start_pool"]

T = TypeVar("T")
R = TypeVar("R")

_held: dict[str, Any] = {}
"""In a pool worker process only: the value its initializer received (the map's ``shared``),
held in memory for every task (never written anywhere: it may hold keys)."""

_PARENT_POLL = 1.0
"""Seconds between a worker's checks that the process that started it is alive."""


class Pool:
    """A :class:`~concurrent.futures.ProcessPoolExecutor` of spawned workers that each hold
    one shared value, handed over through a queue (see :func:`start_pool`)."""

    def __init__(self, workers: int, name: str, shared: Any) -> None:
        context = multiprocessing.get_context("spawn")
        self.name = name
        self._shared = shared
        self._workers = workers
        self._handed = 0
        self._taken = context.Value("i", 0)
        self._handover: multiprocessing.Queue[Any] = context.Queue()
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
        """Submit ``func(*args)``; the pool starts a worker for it if none is idle.

        The executor starts a process only on a submission (and at most one per
        submission), so one shared value handed over per submission, up to one per worker,
        is at least one per started worker, and no more than needed when there are fewer
        tasks than workers.
        """
        if self._handed < self._workers:
            self._handover.put(self._shared)
            self._handed += 1
        return self._executor.submit(func, *args)

    def shutdown(self) -> None:
        """Stop the workers (cancelling tasks not started), then take back the shared
        values no worker took, so that the queue's feeder thread ends."""
        self._executor.shutdown(wait=True, cancel_futures=True)
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


def start_pool(workers: int, name: str, shared: Any) -> Pool:
    """A pool of up to ``workers`` spawned processes, each holding ``shared`` under ``name``.

    ``shared`` travels through a queue, not with the arguments that start each process:
    those are written to the new process's pipe while it starts, and a value larger than
    the pipe's buffer (an ingest's de-identification engine pickles to megabytes) would
    block this process until the new one had imported its modules, one worker after the
    other. The queue's feeder thread writes it instead, and the workers start together.
    Stop the pool with :meth:`Pool.shutdown`: it takes back the values no worker took.
    """
    return Pool(workers, name, shared)


def _hold(
    name: str, handover: multiprocessing.Queue[Any], taken: Synchronized[int], parent: int
) -> None:
    """Worker initializer: keep the shared value (and count it taken); leave Ctrl-C to the
    parent (it stops the pool); exit when the parent is gone (killed: nobody else would stop
    this process)."""
    _held[name] = handover.get()
    with taken.get_lock():
        taken.value += 1
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_exit_with, args=(parent,), daemon=True).start()


def _exit_with(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(_PARENT_POLL)
    os._exit(1)


def call_with_shared(func: Callable[[T, Any], R], task: T, name: str) -> R:
    """``func(task, shared)`` in a pool worker, with the value its initializer holds."""
    return func(task, _held[name])
