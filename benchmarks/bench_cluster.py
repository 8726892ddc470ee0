"""Scaling of ingest and export on a dask.distributed cluster of 1, 2 and 4 worker processes.

    python benchmarks/bench_cluster.py [--files 4000] [--workers 1,2,4]

A LocalCluster of N worker processes (one thread each) is started first and reached by its
address, as an external cluster is (``--scheduler tcp://...``): its start-up is printed but
not counted, every task runs on the workers, and the driver (this process) reads the
sources' listing and commits each batch. Baseline in the same run: the same job in this
process (``scheduler="sync"``). Prints wall times, files/s, the speed-up over one worker and
over in-process, and the CPU time the driver spent (the part that does not scale out).
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._corpus import make_corpus

CACHE = Path(os.environ.get("LAKE_BENCH_DIR", Path(tempfile.gettempdir()) / "imaging-lake-bench"))


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _workers_cpu(client: object) -> float:
    """CPU seconds the cluster's worker processes have used so far (0 without a cluster)."""
    if client is None:
        return 0.0
    return float(sum(client.run(_cpu).values()))  # type: ignore[attr-defined]


def _run(lk: object, corpus: Path, out: Path, vault: Path, scheduler: str,
         client: object = None) -> tuple[float, ...]:
    """(ingest s, driver CPU s, workers CPU s, export s, driver CPU s, workers CPU s, files)."""
    cpu, wcpu, start = _cpu(), _workers_cpu(client), time.perf_counter()
    summary = lk.ingest([str(corpus)], vault=vault, scheduler=scheduler)  # type: ignore[attr-defined]
    t_ingest, c_ingest = time.perf_counter() - start, _cpu() - cpu
    w_ingest = _workers_cpu(client) - wcpu
    lk.refresh()  # type: ignore[attr-defined]
    cpu, wcpu, start = _cpu(), _workers_cpu(client), time.perf_counter()
    result = lk.export_dicom(  # type: ignore[attr-defined]
        "SELECT SeriesInstanceUID FROM series", out, scheduler=scheduler
    )
    t_export, c_export = time.perf_counter() - start, _cpu() - cpu
    w_export = _workers_cpu(client) - wcpu
    n_files = len([f for f in result.files if f.path.endswith(".dcm")])
    if summary.ingested != n_files:
        raise SystemExit(f"ingested {summary.ingested} but exported {n_files}")
    return (t_ingest, c_ingest, w_ingest, t_export, c_export, w_export,
            float(summary.ingested))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--files", type=int, default=4000)
    parser.add_argument("--workers", default="1,2,4")
    args = parser.parse_args()

    from distributed import Client, LocalCluster

    import lake

    corpus = CACHE / f"corpus-{args.files}"
    paths = make_corpus(corpus, args.files)
    mb = sum(p.stat().st_size for p in paths) / 1e6
    print(f"corpus: {len(paths)} CT/MR files, {mb:.0f} MB; {os.cpu_count()} CPUs")
    rows: list[tuple[str, float, tuple[float, ...]]] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        vault = work / "vault"
        lake.init(work / "template", vault=vault)

        def fresh(name: str) -> object:
            shutil.copytree(work / "template", work / name)  # same key: same rows
            return lake.open(work / name)

        rows.append(("in this process (sync)", 0.0,
                     _run(fresh("sync"), corpus, work / "out-sync", vault, "sync")))
        for n in [int(x) for x in args.workers.split(",")]:
            started = time.perf_counter()
            with LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                              dashboard_address=":0", silence_logs=logging.CRITICAL) as cluster:
                boot = time.perf_counter() - started
                with Client(cluster) as client:
                    figures = _run(fresh(f"w{n}"), corpus, work / f"out-{n}", vault,
                                   str(cluster.scheduler_address), client)
            rows.append((f"{n} worker process{'es' if n > 1 else ''}", boot, figures))
            load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
            print(f"  ... {n} workers done (load average {load})", flush=True)

    base = rows[0][2]
    one = rows[1][2] if len(rows) > 1 else base
    print("\n| engine | start s | ingest s | files/s | vs 1 worker | vs sync | CPU s driver"
          " + workers | export s | vs 1 worker | vs sync | CPU s driver + workers |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, boot, (ti, ci, wi, te, ce, we, n_files) in rows:
        print(f"| {name} | {boot:.1f} | {ti:.2f} | {n_files / ti:.0f} | {one[0] / ti:.2f}x "
              f"| {base[0] / ti:.2f}x | {ci:.1f} + {wi:.1f} | {te:.2f} | {one[3] / te:.2f}x "
              f"| {base[3] / te:.2f}x | {ce:.1f} + {we:.1f} |")
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"(load average at the end: {load}; {os.cpu_count()} CPUs: CPU s / wall s above the"
          " CPU count means the cores were shared)")

if __name__ == "__main__":
    main()
