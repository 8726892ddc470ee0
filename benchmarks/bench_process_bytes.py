"""The per-file ingest alone: ``lake.ingest.process_bytes`` in one warm process.

    python benchmarks/bench_process_bytes.py cpu [--corpus net|phi] [--rounds 3] [--files N]
    python benchmarks/bench_process_bytes.py profile [--corpus net|phi] [--top 40]
    python benchmarks/bench_process_bytes.py digest OUT.json [--corpus net --corpus phi]
    python benchmarks/bench_process_bytes.py compare OUT.json [--corpus net --corpus phi]

What a ``lake serve dicom`` worker does per instance (issue 14.4) and ``lake ingest``'s
workers per DICOM file: the files are read into memory first; each round makes a new lake and
a new ingest context (so the engine's memo starts empty, as a new worker's), warms it up as a
receive worker does (``CT_small.dcm`` three times into a scratch folder), then runs
``process_bytes`` over the corpus and prints the CPU per file (``time.process_time``) with the
load average.

Corpora: ``net`` -- the 520 CT/MR instances ``bench_net.py`` sends; ``phi`` -- the PHI-rich
corpus of ``bench_ingest.py --phi 1300`` (``tests/deid_corpus.py``: planted identifiers).

``digest``/``compare``: every outcome's row (every column), action counts, quarantine reason
and message, and every blob file of the lake (path and bytes), as digests; the secret is fixed
so de-identified values repeat from run to run. ``profile``: cProfile at the CPU clock over
one round. Under ``valgrind --tool=callgrind``, ``cpu --rounds 1 --files N`` minus ``--files
0`` gives the instructions of N files.
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import json
import os
import pstats
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lake
from benchmarks._corpus import make_corpus, make_phi_corpus
from benchmarks.ingest_outputs import blobs_digest, outcome_digest
from lake._capture import capture
from lake.ingest import Accepted, IngestContext, Ingestor, process_bytes
from lake.store import resolve
from lake.vault import Secret

CACHE = Path(os.environ.get("LAKE_BENCH_DIR", Path(tempfile.gettempdir()) / "imaging-lake-bench"))
SECRET = Secret(hashlib.sha256(b"imaging-lake ingest_outputs").digest())


def corpus(name: str, limit: int | None = None) -> list[tuple[str, bytes]]:
    """(name, bytes) of each file of corpus ``name`` (the first ``limit``), in a fixed
    order."""
    if name == "net":
        folder = CACHE / "net-corpus-520"
        paths = make_corpus(folder, 520)
    elif name == "phi":
        folder = CACHE / "phi-1300"
        paths = make_phi_corpus(folder, 1300)
    else:
        raise SystemExit(f"unknown corpus {name!r} (net or phi)")
    return [(str(p.relative_to(folder)), p.read_bytes()) for p in paths[:limit]]


def _context(work: Path, profile: str) -> IngestContext:
    lk = lake.init(work / "lake", vault=work / "vault")
    ctx = Ingestor(lk, SECRET, profile).context
    from pydicom.data import get_testdata_file

    sample = Path(str(get_testdata_file("CT_small.dcm"))).read_bytes()
    (work / "warm").mkdir()
    scratch = replace(ctx, location=resolve(str(work / "warm")))
    with capture():
        for _ in range(3):  # as lake.net._workers._warm_up
            process_bytes(sample, scratch)
    return ctx


def one_round(files: list[tuple[str, bytes]], profile: str, work: Path,
              profiler: cProfile.Profile | None = None) -> tuple[float, list[Any]]:
    """CPU seconds of ``process_bytes`` over ``files`` into a new lake, and the outcomes."""
    ctx = _context(work, profile)
    outcomes: list[Any] = []
    started = time.process_time()
    if profiler is not None:
        profiler.enable()
    with capture():
        for _, data in files:
            outcomes.append(process_bytes(data, ctx))
    if profiler is not None:
        profiler.disable()
    return time.process_time() - started, outcomes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["cpu", "profile", "digest", "compare"])
    parser.add_argument("file", nargs="?")
    parser.add_argument("--corpus", action="append")
    parser.add_argument("--profile", default="basic")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--files", type=int)
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--dump", help="profile: also write the pstats file here")
    args = parser.parse_args()
    names = args.corpus or ["net"]
    CACHE.mkdir(parents=True, exist_ok=True)
    if args.mode in ("cpu", "profile"):
        files = corpus(names[0], args.files)
        profiler = cProfile.Profile(time.process_time) if args.mode == "profile" else None
        for _ in range(args.rounds):
            with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
                cpu, _ = one_round(files, args.profile, Path(tmp), profiler)
            per_file = cpu * 1000 / max(len(files), 1)
            print(f"{names[0]}: {len(files)} files, {per_file:.3f} ms CPU per file "
                  f"(load {' '.join(f'{x:.2f}' for x in os.getloadavg())})", flush=True)
        if profiler is not None:
            stats = pstats.Stats(profiler)
            if args.dump:
                stats.dump_stats(args.dump)
            stats.sort_stats("cumulative").print_stats(args.top)
            stats.sort_stats("tottime").print_stats(args.top)
        return
    result: dict[str, Any] = {}
    for name in names:
        files = corpus(name)
        with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
            _, outcomes = one_round(files, args.profile, Path(tmp))
            blobs = blobs_digest(Path(tmp) / "lake")
        result[name] = {"outcomes": {f: outcome_digest(o) for (f, _), o in zip(files, outcomes,
                                                                       strict=True)},
                        "blobs": blobs}
        kinds: dict[str, int] = {}
        for o in outcomes:
            key = "accepted" if isinstance(o, Accepted) else o.record["reason"]
            kinds[key] = kinds.get(key, 0) + 1
        print(f"{name}: {len(files)} files, {kinds}", flush=True)
    if args.mode == "digest":
        Path(args.file).write_text(json.dumps(result, indent=0, sort_keys=True))
        return
    expected = json.loads(Path(args.file).read_text())
    failed = False
    for name, got in result.items():
        want = expected[name]
        differ = [f for f in want["outcomes"] if got["outcomes"].get(f) != want["outcomes"][f]]
        same = want["blobs"] == got["blobs"]
        print(f"{name}: {len(got['outcomes'])} outcomes, {len(differ)} differ; blobs "
              f"{'identical' if same else 'DIFFER'}", differ[:5])
        failed = failed or bool(differ) or not same or len(want["outcomes"]) != len(got["outcomes"])
    if failed:
        raise SystemExit("outputs differ")


if __name__ == "__main__":
    main()
