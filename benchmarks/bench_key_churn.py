"""The key index under concurrent writers: segments written, merged, cut and removed.

    python benchmarks/bench_key_churn.py [--writers 3] [--commits 40] [--rows 5]
        [--scratch .bench/key-churn]

Each writer process commits ``--commits`` batches of ``--rows`` new UIDs to ``instances``
(``DeltaTables.insert_new``, as ingest does) on one scratch lake, each commit followed by its
upkeep of the key index (``lake/catalog/_key_index.py``). Each writer counts the segments its
upkeeps wrote (and their rows), merged, cut and removed; at the end the index on disk is
compared with what a judgement uses: segments chosen, segments no judgement would choose
(left by writers racing on the same uncovered files), data files uncovered. Prints one JSON
line with the load, and removes the scratch lake.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def writer(root: str, seed: int, commits: int, rows: int, out: str) -> None:
    import pyarrow as pa

    import lake.catalog._key_index as index
    from lake.catalog import INSTANCES, DeltaTables
    from lake.store import Location

    counts = {"written": 0, "written_rows": 0, "merges": 0, "cuts": 0, "removed": 0}
    write, merged, cut, remove = index._write, index._merged, index._without, os.remove

    def counted_write(*args):  # type: ignore[no-untyped-def]
        segment = write(*args)
        counts["written"] += 1
        counts["written_rows"] += segment.rows
        return segment

    def counted(name, call):  # type: ignore[no-untyped-def]
        def wrapped(*args):  # type: ignore[no-untyped-def]
            counts[name] += 1
            return call(*args)
        return wrapped

    def counted_remove(path):  # type: ignore[no-untyped-def]
        if str(path).endswith(".arrow"):
            counts["removed"] += 1
        return remove(path)

    index._write = counted_write
    index._merged = counted("merges", merged)
    index._without = counted("cuts", cut)
    os.remove = counted_remove
    tables = DeltaTables(Location(root))
    rng = random.Random(seed)
    for n in range(commits):
        batch = pa.Table.from_pylist(
            [{"SOPInstanceUID": f"2.25.{rng.getrandbits(100)}", "batch_id": f"w{seed}-{n}"}
             for _ in range(rows)], schema=INSTANCES.schema)
        tables.insert_new(INSTANCES, batch, key="SOPInstanceUID")
    Path(out).write_text(json.dumps(counts))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--writers", type=int, default=3)
    parser.add_argument("--commits", type=int, default=40)
    parser.add_argument("--rows", type=int, default=5)
    parser.add_argument("--scratch", type=Path, default=Path(".bench/key-churn"))
    args = parser.parse_args()
    import lake.catalog._key_index as index
    from lake.catalog import INSTANCES, DeltaTables
    from lake.store import Location

    if args.scratch.exists():
        sys.exit(f"{args.scratch} exists: give another --scratch")
    base = args.scratch.resolve()
    root = str(base / "lake")
    try:
        DeltaTables(Location(root)).create_all()
        context = multiprocessing.get_context("spawn")
        workers = [context.Process(target=writer, args=(root, seed, args.commits, args.rows,
                                                        str(base / f"w{seed}.json")))
                   for seed in range(args.writers)]
        started, load = time.perf_counter(), os.getloadavg()[0]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
            if worker.exitcode:
                sys.exit(f"a writer failed ({worker.exitcode})")
        tables = DeltaTables(Location(root))
        table_root = root + "/tables/" + INSTANCES.name
        live = {os.path.relpath(p, table_root) for p in tables.data_files(INSTANCES.name).paths}
        found = index.segments(table_root)
        chosen = index._chosen(found, live)
        covered = {f for s in chosen for f in s.files}
        print(json.dumps({
            "load": [round(load, 1), round(os.getloadavg()[0], 1)],
            "wall_s": round(time.perf_counter() - started, 1),
            "writers": [json.loads((base / f"w{s}.json").read_text())
                        for s in range(args.writers)],
            "files": len(live), "segments": len(found), "chosen": len(chosen),
            "never_chosen": len(found) - len(chosen), "uncovered_files": len(live - covered),
        }))
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
