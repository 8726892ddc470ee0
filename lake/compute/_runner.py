"""Running tasks in this process, on a local Dask cluster, or on a remote scheduler."""

from __future__ import annotations

import logging
import os
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import (
    Future,
    ThreadPoolExecutor,
)
from contextlib import AbstractContextManager
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from lake._errors import ConfigError, WorkerLostError
from lake.compute._choice import POOL, Workload, choose_scheduler

if TYPE_CHECKING:
    from lake.compute._pool import Pool

__all__ = ["Runner"]

T = TypeVar("T")
R = TypeVar("R")

_DONE = object()

POOL_TASKS_IN_FLIGHT = 8
"""Tasks in flight per pool worker. The caller consumes results on this thread, and while it
works on them (an ingest commits a batch, which ends with a sync of the disk) no task is
submitted: the workers go on with those in flight. Two per worker (32 files, ~0.2 s) drained
within a commit and left the cores idle; eight cover one."""


class Runner(AbstractContextManager["Runner"]):
    """Map a function over tasks with at most ``window`` in flight, yielding results as they finish.

    Parameters
    ----------
    scheduler : str
        ``"auto"`` (in this process below the workload's crossover, else the engine the
        crossover names; see :func:`lake.compute.choose_scheduler`), ``"pool"`` (a pool of
        worker processes, forked when that is safe, no Dask scheduler:
        :mod:`lake.compute._pool`),
        ``"processes"`` (a local
        ``dask.distributed`` cluster of worker processes, started with ``spawn``),
        ``"threads"`` (a local cluster of threads), ``"sync"`` (in this process, no
        cluster), or the address of a running scheduler (``tcp://host:8786``).
    workers : int, optional
        Local worker count (default: the number of CPUs). With a scheduler's address, the
        tasks kept in flight are twice this, by default twice the cluster's worker threads
        when the run starts.
    workload : Workload, optional
        The size of the job, for ``"auto"``.

    Attributes
    ----------
    scheduler : str
        The scheduler chosen (never ``"auto"``).

    Raises
    ------
    ConfigError
        If the scheduler is unknown.
    """

    def __init__(
        self,
        scheduler: str = "auto",
        workers: int | None = None,
        workload: Workload | None = None,
    ) -> None:
        self.scheduler = choose_scheduler(scheduler, workload, workers)
        self.workers = workers or os.cpu_count() or 1
        self._explicit_workers = workers is not None
        self._client: Any = None
        self._cluster: Any = None
        self._booting: ThreadPoolExecutor | None = None
        self._boot: Future[tuple[Any, Any]] | None = None
        self._pool: Pool | None = None

    @property
    def window(self) -> int:
        """Tasks kept in flight: two per worker; on the pool, :data:`POOL_TASKS_IN_FLIGHT`.

        What the caller holds follows: ``window`` tasks' inputs, and on the pool the results
        of up to ``window`` tasks waiting in task order (``2 * window`` while spawned
        workers start and this process runs tasks itself; docs/ingest.md, "Memory").
        """
        if self.scheduler == "sync":
            return 1
        return (POOL_TASKS_IN_FLIGHT if self.scheduler == POOL else 2) * self.workers

    def __enter__(self) -> Runner:
        if self.scheduler in ("sync", POOL):
            return self  # the pool starts in map, with what its workers hold
        from distributed import Client

        if "://" in self.scheduler:
            try:
                self._client = Client(self.scheduler, timeout="10s")
            except OSError:
                raise ConfigError(
                    f"cannot reach the Dask scheduler at {self.scheduler}; is it running?"
                ) from None
            if not self._explicit_workers:
                # Two tasks in flight per worker thread of the cluster, not per CPU of
                # this machine: a cluster of several machines would otherwise idle.
                threads = sum(self._client.nthreads().values())
                self.workers = max(1, int(threads))
            return self
        # A local cluster takes seconds to start (worker processes import the stack): start it
        # in the background and run tasks in this process meanwhile (see map).
        self._booting = ThreadPoolExecutor(1, thread_name_prefix="lake-cluster")
        self._boot = self._booting.submit(self._start_local)
        return self

    def _start_local(self) -> tuple[Any, Any]:
        from distributed import Client, LocalCluster

        cluster = LocalCluster(
            n_workers=self.workers if self.scheduler == "processes" else 1,
            threads_per_worker=1 if self.scheduler == "processes" else self.workers,
            processes=self.scheduler == "processes",
            dashboard_address=":0",
            silence_logs=logging.CRITICAL,
        )
        return cluster, Client(cluster)

    def _local_ready(self) -> bool:
        if self._boot is None or not self._boot.done():
            return False
        self._cluster, self._client = self._boot.result()
        self._boot = None
        return True

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
        if self._boot is not None:
            self._cluster, self._client = self._boot.result()
        if self._booting is not None:
            self._booting.shutdown()
        if self._client is not None:
            self._client.close()
        if self._cluster is not None:
            self._cluster.close()

    def map(self, func: Callable[[T, Any], R], tasks: Iterable[T], shared: Any) -> Iterator[R]:
        """Yield ``func(task, shared)`` for each task, in completion order.

        ``shared`` is sent to each worker once, not with every task, and held there in a
        worker plugin, in memory: data scattered the usual way may be spilled to the
        worker's disk under memory pressure, and ``shared`` may hold keys (an ingest's
        de-identification engine and quarantine key). While a local cluster is still
        starting, tasks run in this process; the rest go to the cluster.
        """
        iterator = iter(tasks)
        if self.scheduler == POOL:
            yield from self._map_pool(func, iterator, shared)
            return
        while self._client is None and not self._local_ready():
            task = next(iterator, _DONE)
            if task is _DONE:
                return
            yield func(task, shared)  # type: ignore[arg-type]
        from distributed import as_completed

        from lake.compute._plugin import Shared, call_with_shared

        name = f"lake-shared-{uuid.uuid4().hex}"
        self._client.register_plugin(Shared(shared), name=name)
        try:
            pending = as_completed()
            for task in iterator:
                pending.add(self._client.submit(call_with_shared, func, task, name, pure=False))
                if pending.count() >= self.window:
                    break
            for future in pending:
                result = future.result()
                future.release()
                for task in iterator:
                    pending.add(self._client.submit(call_with_shared, func, task, name, pure=False))
                    break
                yield result
        finally:
            self._client.unregister_worker_plugin(name)

    def _map_pool(
        self, func: Callable[[T, Any], R], iterator: Iterator[T], shared: Any
    ) -> Iterator[R]:
        """:meth:`map` on a pool of worker processes (:mod:`lake.compute._pool`), results in
        the order of the tasks.

        Forked workers start at once. Spawned ones take a second or so (a new interpreter
        importing what the tasks need); until the first of their results is back, this
        process runs tasks itself, so the start costs no wall time. Then it only feeds the
        pool, keeping :attr:`window` tasks in flight.

        Results come in the order of the tasks, as in this process (``"sync"``), whatever
        order the workers finish them in: an ingest commits the first of two files with one
        SOP Instance UID and calls the second a duplicate, so the order decides which file's
        encoding the lake keeps, and the pool must keep the same one.
        """
        # imported here: it imports multiprocessing (0.01 s of CPU), which only a pool needs
        from concurrent.futures.process import BrokenProcessPool

        from lake.compute._pool import call_with_shared, start_pool

        name = f"lake-shared-{uuid.uuid4().hex}"
        self._pool = start_pool(self.workers, name, shared)
        pending: deque[Future[R]] = deque()  # in the order of the tasks
        here: set[Future[R]] = set()  # those run in this process while workers start
        started = self._pool.forked  # forked workers are ready: nothing to bridge here

        def submit() -> bool:
            task = next(iterator, _DONE)
            if task is _DONE:
                return False
            assert self._pool is not None
            pending.append(self._pool.submit(call_with_shared, func, task, name))
            return True

        while len(pending) < self.window and submit():
            pass
        while pending:
            head = pending[0]
            if not started and not head.done() and len(pending) < 2 * self.window:
                task = next(iterator, _DONE)  # the workers are still starting: work here
                if task is not _DONE:
                    ran: Future[R] = Future()
                    ran.set_result(func(task, shared))  # type: ignore[arg-type]
                    pending.append(ran)
                    here.add(ran)
                    continue
            pending.popleft()
            if head in here:
                here.discard(head)
                yield head.result()
                continue
            try:
                result = head.result()
            except BrokenProcessPool:
                raise WorkerLostError(
                    "a worker process of the pool died (killed, or out of memory); "
                    "run the command again to finish the job, or run it with scheduler='sync'",
                    parameters=("scheduler",),
                ) from None
            started = True
            submit()
            yield result
