"""Where work runs: in this process, on local worker processes, or on a Dask cluster.

Ingest and export share this machinery. ``"auto"`` (the default) keeps small jobs in
this process and sends larger ones to worker processes (a pool for ingest, a local Dask
cluster for export); the crossovers are measured (``benchmarks/bench_scheduling.py``,
``docs/performance.md``).
"""

from lake.compute._choice import (
    AUTO,
    EXPORT_CROSSOVER,
    INGEST_CROSSOVER,
    POOL,
    SCHEDULERS,
    Crossover,
    Workload,
    check_scheduler,
    choose_scheduler,
)
from lake.compute._runner import Runner

__all__ = [
    "AUTO",
    "EXPORT_CROSSOVER",
    "INGEST_CROSSOVER",
    "POOL",
    "SCHEDULERS",
    "Crossover",
    "Runner",
    "Workload",
    "check_scheduler",
    "choose_scheduler",
]
