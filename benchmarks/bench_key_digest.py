"""The cost of checking the key index's segments against their digests, at 10 million rows.

    python benchmarks/bench_key_digest.py [--rows 10000000] [--scratch .bench/key-digest]

A judgement (every commit of ``instances`` on a local lake) opens each segment it uses and
checks its columns against the XXH3-128 digest in its schema before trusting it
(``lake/catalog/_key_index.py``): one pass over ~20 bytes a row, ~200 MB at 10 million rows.
This writes a synthetic segment set of ``--rows`` rows with the lake's own writer (random
hashes; segments of at most ``SEGMENT_ROWS``), then, each in a fresh process, opens and checks
every segment and judges 1,000 candidates (``located``), with the segments in the page cache
("warm") and evicted from it first ("cold": ``posix_fadvise(DONTNEED)`` on these files only),
mapped with the advice the module uses (``MADV_SEQUENTIAL``) and with ``MADV_RANDOM`` (the
advice before 2026-12-07 13:05), interleaved. It prints CPU seconds (user + sys), wall seconds
and the load, and removes the segments at the end. No benchmark catalog is read or written.
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def build(root: Path, rows: int) -> None:
    import numpy as np
    import pyarrow as pa

    import lake.catalog._key_index as index

    rng = np.random.default_rng(1)
    number = 0
    while rows > 0:
        count = min(rows, index.SEGMENT_ROWS)
        files = [f"s{number}-f{i}.parquet" for i in range(40)]
        table = pa.table({"hash": pa.array(rng.integers(0, 2**63, count, dtype=np.uint64)),
                          "file": pa.array(rng.integers(0, 40, count, dtype=np.int32)),
                          "row": pa.array(rng.integers(0, 250_000, count, dtype=np.int64))})
        index._write(str(root), files, table)
        rows -= count
        number += 1


def measure(root: Path, advice: str, cold: bool) -> dict[str, object]:
    import pyarrow as pa
    import pyarrow.ipc as ipc

    import lake.catalog._key_index as index

    def opened(path: str) -> pa.RecordBatch:  # the module's _open, with ``advice``
        with open(path, "rb") as fh:
            mapped = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        mapped.madvise(getattr(mmap, advice))
        return ipc.open_file(pa.BufferReader(pa.py_buffer(mapped))).get_batch(0)

    index._open = opened  # type: ignore[assignment]
    segments = index.segments(str(root))
    snapshot = [f"{root}/{f}" for s in segments for f in s.files]
    keys = [f"2.25.{n}" for n in range(1000)]

    def evict() -> None:
        for segment in segments:
            fd = os.open(segment.path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)

    def cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    result: dict[str, object] = {"advice": advice, "cache": "cold" if cold else "warm"}
    for what, run in (("checked", lambda: [index._columns(s) for s in segments]),
                      ("judged", lambda: index.located(str(root), snapshot, snapshot, keys))):
        if cold:
            evict()
        else:
            for segment in segments:
                Path(segment.path).read_bytes()
        before, started = cpu(), time.perf_counter()
        run()
        result[what] = (round(cpu() - before, 4), round(time.perf_counter() - started, 4))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--scratch", type=Path, default=Path(".bench/key-digest"))
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--measure", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.scratch, args.measure[0], args.measure[1] == "cold")))
        return
    if args.scratch.exists():
        sys.exit(f"{args.scratch} exists: give another --scratch")
    args.scratch.mkdir(parents=True)
    try:
        build(args.scratch, args.rows)
        size = sum(p.stat().st_size for p in args.scratch.rglob("*.arrow"))
        print(f"{args.rows:,} rows, {size / 1e6:.0f} MB of segments; CPU s, wall s; "
              "checked: every segment opened and checked, judged: located() of 1,000 keys")
        for run in range(args.runs):
            for cache in ("warm", "cold"):
                for advice in ("MADV_SEQUENTIAL", "MADV_RANDOM"):
                    out = subprocess.run(
                        [sys.executable, __file__, "--scratch", str(args.scratch),
                         "--measure", advice, cache], check=True, capture_output=True, text=True)
                    got = json.loads(out.stdout)
                    print(f" run {run + 1} load {os.getloadavg()[0]:4.1f} {cache} {advice:16s} "
                          f"checked {got['checked']} judged {got['judged']}", flush=True)
    finally:
        shutil.rmtree(args.scratch)


if __name__ == "__main__":
    main()
