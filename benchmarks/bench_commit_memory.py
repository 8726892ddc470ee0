"""The driver's memory over many commits of instances: does anything grow per commit?

    python benchmarks/bench_commit_memory.py [--commits 400] [--rows 100] [--every 50]
                                             [--tracemalloc] [--inventory] [--lake DIR]
                                             [--profile N]

Drives the catalog's commit path as ingest's driver does for each batch (issue 14.3, "memory
flat from 2,000 to 50,000 files"), without reading or de-identifying any file: judge the
batch's SOPInstanceUIDs against ``instances`` with ingest's compared columns and commit the new
rows with a journal in the commit's metadata (``DeltaTables.insert_new``), then insert the
batch row (``record_batch``). Every ``--every`` commits it prints the process's RSS and
anonymous RSS (``/proc/self/status``), glibc's heap (``mallinfo2``: mapped and in use), the
threads, the objects the garbage collector tracks and, with ``--tracemalloc``, the Python
allocations alive and the ten sites that grew most since the first sample; with
``--inventory``, the threads by name and the resident memory by mapping (each shared library,
anonymous mappings by size class). The rows are built without pandas, as ingest builds them
(``python_table``), so pandas's import does not hide the commit path's own warm-up. Small commits
(100 rows) make many commits quickly: the growth measured in ``docs/performance.md`` followed
the commits, not the rows.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import ctypes
import datetime as dt
import gc
import os
import pstats
import random
import re
import resource
import sys
import tempfile
import threading
import time
import tracemalloc
import uuid
from pathlib import Path

import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lake.catalog import INSTANCES, Decision, DeltaTables, Judged
from lake.catalog._arrow_values import python_table
from lake.catalog._journal import BatchJournal, record_batch
from lake.ingest._identity import COMPARED_COLUMNS
from lake.store import Location

KEY = "SOPInstanceUID"
COMPARED = COMPARED_COLUMNS  # what ingest's judgement fetches


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


def _glibc() -> tuple[float, float]:
    """glibc's heap: (MB mapped, MB in use); zeros where mallinfo2 is absent."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = _Mallinfo2
    except (OSError, AttributeError):
        return 0.0, 0.0
    info = libc.mallinfo2()
    return (info.arena + info.hblkhd) / 1e6, (info.uordblks + info.hblkhd) / 1e6


def _status() -> dict[str, float]:
    fields = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "RssAnon", "Threads"):
                number = float(value.split()[0])
                fields[name] = number / 1024 if name != "Threads" else number
    return fields


def _threads() -> dict[str, int]:
    """The process's threads by name (``/proc/self/task/*/comm``), digits folded (``duckdb``,
    ``tokio-runtime-w``, ``jemalloc_bg_thd``...)."""
    names: dict[str, int] = {}
    for task in os.listdir("/proc/self/task"):
        with contextlib.suppress(OSError), open(f"/proc/self/task/{task}/comm") as fh:
            name = re.sub(r"[0-9]+", "#", fh.read().strip())
            names[name] = names.get(name, 0) + 1
    return dict(sorted(names.items(), key=lambda item: -item[1]))


def _mappings() -> dict[str, float]:
    """The process's resident memory by mapping kind (``/proc/self/smaps``), MB: each shared
    library by name, ``[heap]``, ``[stack]``, and anonymous mappings by size class (thread
    stacks are 8 MB + a guard page, glibc arenas 64 MB, jemalloc's chunks other sizes)."""
    kinds: dict[str, float] = {}
    kind = ""
    with open("/proc/self/smaps") as fh:
        for line in fh:
            head = line.split()
            if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
                low, high = (int(x, 16) for x in head[0].split("-"))
                size = high - low
                if len(head) >= 6:
                    kind = head[5].rsplit("/", 1)[-1]
                    kind = re.sub(r"-[0-9a-f]{8,}", "", kind)  # wheels' hashed library names
                elif size >= 60 << 20:
                    kind = "anon >=60 MB"
                elif 7 << 20 <= size <= 9 << 20:
                    kind = "anon 7-9 MB (thread stacks)"
                elif size >= 1 << 20:
                    kind = "anon 1-60 MB"
                else:
                    kind = "anon <1 MB"
            elif head and head[0] == "Rss:":
                kinds[kind] = kinds.get(kind, 0.0) + int(head[1]) / 1024
    return dict(sorted(kinds.items(), key=lambda item: -item[1]))


def _rows(rng: random.Random, count: int, batch_id: str) -> pa.Table:
    study = f"2.25.{rng.getrandbits(100)}"
    series = f"2.25.{rng.getrandbits(100)}"
    now = dt.datetime.now(dt.UTC)
    return python_table([
        {KEY: f"2.25.{rng.getrandbits(120)}", "SeriesInstanceUID": series,
         "StudyInstanceUID": study, "PatientID": "P" + study[-8:], "Modality": "CT",
         "SOPClassUID": "1.2.840.10008.5.1.4.1.1.2", "Rows": 512, "Columns": 512,
         "identity_sha256": f"{rng.getrandbits(256):064x}",
         "profile_sha256": "0" * 64, "pixel_hash": f"{rng.getrandbits(256):064x}",
         "pixel_vr": "OW", "TransferSyntaxUID": "1.2.840.10008.1.2.1",
         "batch_id": batch_id, "ingested_at": now}
        for _ in range(count)], INSTANCES.schema)


def _batch_row(batch_id: str, rows: int) -> dict[str, object]:
    now = dt.datetime.now(dt.UTC)
    return {"batch_id": batch_id, "source": "bench", "started_at": now, "finished_at": now,
            "files_seen": rows, "ingested": rows}


def commit(tables: DeltaTables, rows: pa.Table, batch_id: str) -> None:
    """One batch as ingest commits it: instances with the journal, then the batch row."""
    journal = BatchJournal(_batch_row(batch_id, rows.num_rows), [])

    def plan(judged: Judged) -> Decision:
        return Decision(judged.new, journal.encode())

    tables.insert_new(INSTANCES, rows, key=KEY, fetch=COMPARED, plan=plan, commit_empty=True)
    record_batch(tables, journal)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--commits", type=int, default=400)
    parser.add_argument("--rows", type=int, default=100, help="instances per commit")
    parser.add_argument("--every", type=int, default=50, help="print a sample every N commits")
    parser.add_argument("--tracemalloc", action="store_true",
                        help="trace Python allocations (slower) and print the sites that grew")
    parser.add_argument("--lake", type=Path,
                        help="keep the lake in this folder, and add to it if it exists "
                             "(default: a temporary folder, removed)")
    parser.add_argument("--inventory", action="store_true",
                        help="at each sample also print the threads by name and the resident "
                             "memory by mapping that changed since the first sample")
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="profile the last N commits (CPU clock) and print where it went")
    args = parser.parse_args()
    if args.tracemalloc:
        tracemalloc.start(12)
    rng = random.Random()
    profile = cProfile.Profile(time.process_time)
    with contextlib.ExitStack() as stack:
        scratch = args.lake or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        tables = DeltaTables(Location(str(scratch.resolve())))
        tables.create_all()
        first = None
        inventory: tuple[dict[str, int], dict[str, float]] | None = None
        started, cpu = time.perf_counter(), time.process_time()
        print("commits  rss_MB  anon_MB  heap_mapped  heap_used  threads  py_threads  "
              "gc_objects  traced_MB  cpu_s")
        for number in range(1, args.commits + 1):
            batch_id = uuid.uuid4().hex
            if number == args.commits - args.profile + 1:
                profile.enable()
            commit(tables, _rows(rng, args.rows, batch_id), batch_id)
            if number % args.every and number != 1:
                continue
            gc.collect()
            status = _status()
            mapped, used = _glibc()
            traced = tracemalloc.get_traced_memory()[0] / 1e6 if args.tracemalloc else 0.0
            print(f"{number:7d}  {status['VmRSS']:6.0f}  {status['RssAnon']:7.0f}  "
                  f"{mapped:11.0f}  {used:9.0f}  {status['Threads']:7.0f}  "
                  f"{threading.active_count():10d}  {len(gc.get_objects()):10d}  "
                  f"{traced:9.1f}  {time.process_time() - cpu:5.1f}", flush=True)
            if args.inventory:
                threads, kinds = _threads(), _mappings()
                if inventory is None:
                    inventory = (threads, kinds)
                print("    threads: " + ", ".join(f"{n} {c}" for n, c in threads.items()))
                moved = {k: v - inventory[1].get(k, 0.0) for k, v in kinds.items()}
                print("    RSS MB by mapping (change since the first sample): " + ", ".join(
                    f"{k} {v:.1f} ({moved[k]:+.1f})" for k, v in kinds.items()
                    if abs(moved[k]) >= 0.5 or v >= 5))
            if args.tracemalloc:
                snapshot = tracemalloc.take_snapshot().filter_traces(
                    [tracemalloc.Filter(False, tracemalloc.__file__)])
                if first is None:
                    first = snapshot
                elif number == args.commits:
                    for stat in snapshot.compare_to(first, "traceback")[:10]:
                        print(f"    {stat.size_diff / 1e3:+9.1f} kB {stat.count_diff:+7d}  "
                              + " <- ".join(f"{f.filename.rsplit('/', 2)[-1]}:{f.lineno}"
                                            for f in stat.traceback[:6]))
        if args.profile:
            profile.disable()
            pstats.Stats(profile).sort_stats("cumulative").print_stats(30)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"{args.commits} commits of {args.rows} rows: {time.perf_counter() - started:.1f} s "
              f"wall, {time.process_time() - cpu:.1f} s CPU, peak RSS {peak:.0f} MB, "
              f"load {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
