"""Judging a commit's keys through a sorted key-hash index, against today's judgement.

    LAKE_BENCH_CATALOG=/work/wt/catalog10m/.bench/catalog \\
        python benchmarks/bench_key_index.py [--lake lake-v3-10000000] [--scratch .bench]

The read side of the key index designed in ``docs/performance.md`` ("Judging a commit's keys"),
measured on a benchmark catalog that it only reads. It builds, into ``--scratch``, an index of
the ``instances`` table's SOPInstanceUIDs: one row per stored row, (the first 8 bytes of the
UID's SHA-256 as an unsigned integer, the data file's number, the row's number in it), sorted
by the hash, written twice: as Parquet in row groups of 4,096 rows, and as one uncompressed
Arrow IPC record batch that is memory-mapped. Then, each in a fresh process, it judges one
batch of 1,000 candidate UIDs (10 stored, 990 not) three ways and prints the CPU seconds, the
growth of the peak RSS (VmHWM, reset before the judgement) and the UIDs found (each way must
find exactly the 10):

- ``duckdb``: today's judgement, ``lake.catalog._keys.files_holding`` over every data file;
- ``parquet``: the row groups of the Parquet index whose hash range holds a candidate's hash
  (from the footer's statistics), read and matched;
- ``mmap``: a binary search of the memory-mapped hashes (what ``lake/catalog/_key_index.py``
  does with its segments).

Both index ways confirm each hash hit by reading its row's UID from its data file's row group
(a hash may collide; the index only says where to look).
"""

from __future__ import annotations

import argparse
import hashlib
import mmap
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import unquote

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

KEY = "SOPInstanceUID"
GROUP_ROWS = 4096


def _files(lake: Path) -> list[str]:
    from deltalake import DeltaTable

    return [unquote(u) for u in DeltaTable(str(lake / "lake" / "tables" / "instances")).file_uris()]


def _hash(uid: str) -> int:
    return int(hashlib.sha256(uid.encode()).hexdigest()[:16], 16)


def build(lake: Path, scratch: Path) -> tuple[Path, Path]:
    """The index of ``lake``'s instances as Parquet and as Arrow IPC (built once, kept)."""
    import pyarrow as pa
    import pyarrow.ipc as ipc
    import pyarrow.parquet as pq

    from lake.catalog._duckdb import connect

    parquet, arrow = scratch / f"{lake.name}.keys.parquet", scratch / f"{lake.name}.keys.arrow"
    if parquet.exists() and arrow.exists():
        return parquet, arrow
    files = _files(lake)
    listed = "[" + ", ".join("'" + f.replace("'", "''") + "'" for f in files) + "]"
    con = connect()
    con.execute("SET preserve_insertion_order = false")
    started = time.process_time()
    con.execute(
        f"COPY (SELECT ('0x' || left(sha256({KEY}), 16))::UBIGINT AS h, "
        f"(list_position({listed}, filename) - 1)::INTEGER AS f, file_row_number::INTEGER AS r "
        f"FROM read_parquet({listed}, filename = true, file_row_number = true) ORDER BY h) "
        f"TO '{parquet}' (FORMAT parquet, ROW_GROUP_SIZE {GROUP_ROWS}, COMPRESSION zstd)")
    con.close()
    table = pq.read_table(parquet).combine_chunks()
    with ipc.new_file(str(arrow), table.schema) as writer:
        writer.write_table(table, max_chunksize=max(1, table.num_rows))
    print(f"index of {table.num_rows:,} rows built in {time.process_time() - started:.1f} s of "
          f"CPU: Parquet {parquet.stat().st_size / 1e6:.0f} MB, Arrow IPC "
          f"{arrow.stat().st_size / 1e6:.0f} MB")
    del pa
    return parquet, arrow


def _kb(field: str) -> int:
    """A ``/proc/self/status`` field, in kB."""
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith(field + ":"))


def _confirmed(files: list[str], places: list[tuple[int, int]], keys: set[str]) -> list[str]:
    """The UIDs at ``places`` (file number, row number) that are among ``keys``."""
    import bisect
    import itertools

    import pyarrow.parquet as pq

    found = []
    for number, rows in itertools.groupby(sorted(places), key=lambda p: p[0]):
        parquet = pq.ParquetFile(files[number])
        meta = parquet.metadata
        starts = list(itertools.accumulate(
            (meta.row_group(g).num_rows for g in range(meta.num_row_groups)), initial=0))
        for _, row in rows:
            group = bisect.bisect_right(starts, row) - 1
            uid = parquet.read_row_group(group, columns=[KEY]).column(0)[row - starts[group]]
            if uid.as_py() in keys:
                found.append(uid.as_py())
    return sorted(found)


def judge(way: str, lake: Path, parquet: Path, arrow: Path) -> None:
    """One judgement of 1,000 candidates (10 stored) in this process; prints one line."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.ipc as ipc
    import pyarrow.parquet as pq

    files = _files(lake)
    rng = random.Random(7)
    middle = pq.ParquetFile(files[len(files) // 2]).read_row_group(0, columns=[KEY])
    stored = rng.sample(middle.column(0).to_pylist(), 10)
    keys = stored + [f"2.25.{rng.getrandbits(120)}" for _ in range(990)]
    with open("/proc/self/clear_refs", "w") as fh:  # the peak RSS (VmHWM) starts again here
        fh.write("5")
    before, anon = _kb("VmHWM"), _kb("RssAnon")
    started = time.process_time()
    detail = ""
    if way == "duckdb":
        from lake.catalog._keys import files_holding

        found = sorted(files_holding(files, KEY, pa.array(keys)).column(KEY).to_pylist())
    else:
        wanted = np.array(sorted({_hash(k) for k in keys}), dtype=np.uint64)
        if way == "parquet":
            index = pq.ParquetFile(parquet)
            meta = index.metadata
            highs = np.fromiter((meta.row_group(g).column(0).statistics.max
                                 for g in range(meta.num_row_groups)), np.uint64)
            groups = np.unique(np.searchsorted(highs, wanted))
            groups = groups[groups < meta.num_row_groups].tolist()
            read = index.read_row_groups(groups, columns=["h", "f", "r"], use_threads=False)
            hashes = read.column("h").to_numpy()
            at = np.minimum(np.searchsorted(wanted, hashes), len(wanted) - 1)
            hit = np.flatnonzero(wanted[at] == hashes)
            numbers, rows = read.column("f").to_numpy()[hit], read.column("r").to_numpy()[hit]
            detail = f" ({len(groups)} of {meta.num_row_groups} row groups read)"
        else:
            with open(arrow, "rb") as fh:  # each probe faults in its page, not a readahead
                mapped = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
            mapped.madvise(mmap.MADV_RANDOM)
            batch = ipc.open_file(pa.BufferReader(pa.py_buffer(mapped))).get_batch(0)
            hashes = np.frombuffer(batch.column(0).buffers()[1], np.uint64, len(batch))
            at = np.searchsorted(hashes, wanted)
            inside = at < len(hashes)
            hit = at[inside][hashes[at[inside]] == wanted[inside]]
            numbers = np.frombuffer(batch.column(1).buffers()[1], np.int32, len(batch))[hit]
            rows = np.frombuffer(batch.column(2).buffers()[1], np.int32, len(batch))[hit]
        places = list(zip(numbers.tolist(), rows.tolist(), strict=True))
        found = _confirmed(files, places, set(keys))
    cpu = time.process_time() - started
    grown, anon = (_kb("VmHWM") - before) / 1024, (_kb("RssAnon") - anon) / 1024
    right = "found the 10" if found == sorted(stored) else f"WRONG: {len(found)} found"
    print(f"  {way:8s} {cpu:6.3f} s CPU, peak RSS +{grown:4.0f} MB (anonymous "
          f"after: {anon:+4.0f}), {right}{detail}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lake", default="lake-v3-10000000",
                        help="a catalog below LAKE_BENCH_CATALOG (read only)")
    parser.add_argument("--scratch", type=Path, default=Path(".bench"),
                        help="where the index is written (about 30 bytes a row)")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--judge", choices=["duckdb", "parquet", "mmap"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    lake = Path(os.environ.get("LAKE_BENCH_CATALOG", ".bench/catalog")) / args.lake
    args.scratch.mkdir(parents=True, exist_ok=True)
    parquet, arrow = build(lake, args.scratch)
    if args.judge:
        judge(args.judge, lake, parquet, arrow)
        return
    print(f"{lake.name}: 1,000 candidates, 10 stored, each in a fresh process")
    for run in range(args.runs):
        print(f" run {run + 1}, load {os.getloadavg()[0]:.1f}")
        for way in ("duckdb", "parquet", "mmap"):
            subprocess.run([sys.executable, __file__, "--lake", args.lake, "--scratch",
                            str(args.scratch), "--judge", way], check=True)


if __name__ == "__main__":
    main()
