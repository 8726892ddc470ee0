"""Choosing where a job runs: in this process, or on a cluster where that pays.

A local ``dask.distributed`` cluster costs seconds before it does any work: each worker
process starts Python and imports the lake's stack, and every task and result is pickled
across processes. On a small job that costs more than the second core gives back. The
crossovers below were measured with ``benchmarks/bench_scheduling.py`` (see
``docs/performance.md``, "Choosing the engine"): below them the in-process run finishes
first.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from lake._errors import ConfigError

__all__ = [
    "AUTO",
    "EXPORT_CROSSOVER",
    "INGEST_CROSSOVER",
    "POOL",
    "SCHEDULERS",
    "Crossover",
    "Workload",
    "check_scheduler",
    "choose_scheduler",
]

AUTO = "auto"
POOL = "pool"
SCHEDULERS = (AUTO, "sync", POOL, "processes", "threads")
"""Scheduler names; anything else must be a scheduler address such as ``tcp://host:8786``."""


@dataclass(frozen=True)
class Crossover:
    """The job size from which a local cluster finishes before the in-process run.

    A job at or above either bound goes to a cluster.

    Parameters
    ----------
    items : int
        Number of inputs (files to ingest, instances to export).
    nbytes : int
        Their total size in bytes.
    engine : str
        Where a job at or above the crossover runs: ``"pool"`` (local worker processes,
        no Dask scheduler) or ``"processes"`` (a local ``dask.distributed`` cluster).
    forked_items : int, optional
        With the ``"pool"`` engine: the number of inputs from which a job goes to the pool
        when the pool can fork its workers (:func:`lake.compute._pool.fork_safe`), which then
        start in milliseconds instead of a second of CPU each.
    """

    items: int
    nbytes: int
    engine: str = "processes"
    forked_items: int | None = None

    def threshold(self) -> int:
        """The number of inputs from which a job goes to :attr:`engine` in this process now."""
        if self.engine == POOL and self.forked_items is not None:
            from lake.compute._pool import fork_safe

            if fork_safe():
                return min(self.items, self.forked_items)
        return self.items


@dataclass(frozen=True)
class Workload:
    """How big a job is.

    Parameters
    ----------
    items : int
        Number of inputs counted (possibly only up to the crossover: counting stops there).
    nbytes : int
        Their total size in bytes.
    crossover : Crossover
        The crossover measured for this kind of job.
    """

    items: int
    nbytes: int
    crossover: Crossover

    @property
    def pays_for_a_cluster(self) -> bool:
        """Whether the job is at or above its crossover (for this process now: a pool that
        can fork pays from fewer inputs, :meth:`Crossover.threshold`)."""
        return (self.items >= self.crossover.threshold()
                or self.nbytes >= self.crossover.nbytes)


# Measured on the shared 2-core machine (benchmarks/bench_scheduling.py, docs/performance.md):
# a local Dask cluster did not finish first below 8,000 files or instances (the fitted lines
# meet near 16,000 files for ingest, not at all for DICOM export). For ingest a pool of
# spawned workers spent less CPU and wall time than the local cluster (4,000 files: 4.3 against
# 6.6 ms of CPU per file, 67 against 88 s at load 13), but still more than one process (2.7 ms,
# 39 s): with no free core, the crossover stays where the cluster's was. A pool that forks its
# workers (a CLI ingest: nothing threaded is loaded before the first commit) spends the CPU
# one process spends (2,000 CT/MR files: 8.2-9.8 s against 9.0-9.1 s of CPU, load 8), so it
# pays as soon as a second core is free and there are tasks for both: from 500 files.
INGEST_CROSSOVER = Crossover(items=10_000, nbytes=4_000_000_000, engine="pool",
                             forked_items=500)
"""Ingest: files (de-identify, hash, store, encode: ~2-3 ms per small file in one process)."""

EXPORT_CROSSOVER = Crossover(items=10_000, nbytes=4_000_000_000)
"""Export: member instances (NIfTI, DICOM or teaching set)."""


def check_scheduler(scheduler: str) -> None:
    """Refuse a scheduler name that is neither known nor an address.

    Raises
    ------
    ConfigError
        If ``scheduler`` is unknown.
    """
    if scheduler not in SCHEDULERS and "://" not in scheduler:
        raise ConfigError(
            f"unknown scheduler {scheduler!r}; use one of {', '.join(SCHEDULERS)} or an "
            "address such as tcp://127.0.0.1:8786"
        )


def choose_scheduler(
    scheduler: str, workload: Workload | None, workers: int | None = None
) -> str:
    """The scheduler a job runs on: ``scheduler`` itself unless it is ``"auto"``.

    ``"auto"`` runs in this process (``"sync"``) when the job is below its crossover or
    only one CPU is there to use, and otherwise on the engine the crossover names (a pool
    of worker processes for ingest, a local process cluster for export). Without a
    workload (size unknown) it assumes the job is large and starts a local cluster.

    Parameters
    ----------
    scheduler : str
        ``"auto"``, ``"sync"``, ``"pool"``, ``"processes"``, ``"threads"`` or a scheduler
        address.
    workload : Workload or None
        The size of the job.
    workers : int, optional
        Local workers asked for (default: the number of CPUs).

    Raises
    ------
    ConfigError
        If ``scheduler`` is unknown.

    Examples
    --------
    >>> small = Workload(items=10, nbytes=10_000, crossover=INGEST_CROSSOVER)
    >>> choose_scheduler("auto", small)
    'sync'
    >>> choose_scheduler("processes", small)
    'processes'
    """
    check_scheduler(scheduler)
    if scheduler != AUTO:
        return scheduler
    if (workers or os.cpu_count() or 1) < 2:
        return "sync"
    if workload is None:
        return "processes"
    if not workload.pays_for_a_cluster:
        return "sync"
    return workload.crossover.engine
