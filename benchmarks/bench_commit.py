"""CPU of one catalog commit as ingest and the DICOM server make it (issues 14.3/14.4).

    python benchmarks/bench_commit.py [--rows 20] [--warm 30] [--commits 30] [--profile]

Processes bench_net's corpus (520 small CT/MR instances, ``benchmarks/_corpus.py``) once into
real outcomes (de-identified rows, blobs stored), then commits batches of ``--rows`` of them
through ``Ingestor.commit`` (``instances`` with the journal, the summaries and the key index's
upkeep, then the batch row), each row under a fresh SOPInstanceUID so every commit adds all
its rows. After ``--warm`` commits it measures ``--commits`` more: the CPU time of each
(``time.process_time``), printed as the median and quartiles with the load average; with
``--profile``, a cProfile at the CPU clock of the measured commits (top functions by
cumulative time).
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import os
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pydicom.uid import generate_uid

import lake
from benchmarks._corpus import make_corpus
from lake.ingest import Ingestor
from lake.ingest._instance import Accepted

CACHE = Path(os.environ.get("LAKE_BENCH_DIR", Path(tempfile.gettempdir()) / "imaging-lake-bench"))


def _load() -> str:
    with open("/proc/loadavg") as fh:
        return " ".join(fh.read().split()[:3])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=20, help="instances per commit (<= 520)")
    parser.add_argument("--warm", type=int, default=30, help="commits before measuring")
    parser.add_argument("--commits", type=int, default=30, help="commits measured")
    parser.add_argument("--profile", action="store_true", help="cProfile the measured commits")
    parser.add_argument("--top", type=int, default=45, help="functions the profile prints")
    parser.add_argument("--dump", type=Path, help="also save the profile's stats here")
    args = parser.parse_args()
    files = make_corpus(CACHE / "net-corpus-520", 520)
    with tempfile.TemporaryDirectory(prefix="bench-commit-") as scratch:
        lk = lake.init(Path(scratch) / "lake", vault=Path(scratch) / "vault")
        ingestor = Ingestor(lk, lk.secret(Path(scratch) / "vault"))
        outcomes = [ingestor.process(p.read_bytes()) for p in files[: args.rows]]
        accepted = [o for o in outcomes if isinstance(o, Accepted)]
        assert len(accepted) == len(outcomes), "the corpus was not accepted whole"

        def batch() -> list[Accepted]:
            return [dataclasses.replace(o, row=dict(o.row, SOPInstanceUID=generate_uid()))
                    for o in accepted]

        profile = cProfile.Profile(time.process_time)
        times = []
        for number in range(args.warm + args.commits):
            todo = batch()
            measured = number >= args.warm
            if measured and args.profile:
                profile.enable()
            start = time.process_time()
            result = ingestor.commit(todo)
            spent = time.process_time() - start
            if measured and args.profile:
                profile.disable()
            assert result.ingested == len(todo), result
            if measured:
                times.append(spent)
        q1, median, q3 = statistics.quantiles(times, n=4)
        print(f"rows {args.rows}  commits {args.commits} after {args.warm}  CPU per commit ms: "
              f"median {median * 1e3:.1f}  quartiles {q1 * 1e3:.1f}-{q3 * 1e3:.1f}  "
              f"load {_load()}", flush=True)
        if args.profile:
            pstats.Stats(profile).sort_stats("cumulative").print_stats(args.top)
            if args.dump:
                profile.dump_stats(args.dump)


if __name__ == "__main__":
    main()
