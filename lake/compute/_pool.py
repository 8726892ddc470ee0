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
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any, TypeVar

__all__ = ["call_with_shared", "start_pool"]

T = TypeVar("T")
R = TypeVar("R")

_held: dict[str, Any] = {}
"""In a pool worker process only: the value its initializer received (the map's ``shared``),
held in memory for every task (never written anywhere: it may hold keys)."""

_PARENT_POLL = 1.0
"""Seconds between a worker's checks that the process that started it is alive."""


def start_pool(workers: int, name: str, shared: Any) -> ProcessPoolExecutor:
    """A pool of ``workers`` spawned processes, each holding ``shared`` under ``name``.

    ``shared`` travels through a queue, not with the arguments that start each process:
    those are written to the new process's pipe while it starts, and a value larger than
    the pipe's buffer (an ingest's de-identification engine pickles to megabytes) would
    block this process until the new one had imported its modules, one worker after the
    other. The queue's feeder thread writes it instead, and the workers start together.
    """
    context = multiprocessing.get_context("spawn")
    handover: multiprocessing.Queue[Any] = context.Queue()
    for _ in range(workers):
        handover.put(shared)
    return ProcessPoolExecutor(
        max_workers=workers,
        mp_context=context,
        initializer=_hold,
        initargs=(name, handover, os.getpid()),
    )


def _hold(name: str, handover: multiprocessing.Queue[Any], parent: int) -> None:
    """Worker initializer: keep the shared value; leave Ctrl-C to the parent (it stops the
    pool); exit when the parent is gone (killed: nobody else would stop this process)."""
    _held[name] = handover.get()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_exit_with, args=(parent,), daemon=True).start()


def _exit_with(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(_PARENT_POLL)
    os._exit(1)


def call_with_shared(func: Callable[[T, Any], R], task: T, name: str) -> R:
    """``func(task, shared)`` in a pool worker, with the value its initializer holds."""
    return func(task, _held[name])
