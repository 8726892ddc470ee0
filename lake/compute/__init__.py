"""Where work runs: in this process, on a local Dask cluster, or on a remote scheduler.

Ingest and export share this machinery. ``"auto"`` (the default) keeps small jobs in
this process and sends large ones to a local process cluster; the crossovers are
measured (``benchmarks/bench_scheduling.py``, ``docs/performance.md``).
"""

from lake.compute._choice import (
    AUTO,
    EXPORT_CROSSOVER,
    INGEST_CROSSOVER,
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
    "SCHEDULERS",
    "Crossover",
    "Runner",
    "Workload",
    "check_scheduler",
    "choose_scheduler",
]
