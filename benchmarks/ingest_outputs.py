"""What the per-file ingest produces, as digests: record them, then prove a change keeps them.

    python benchmarks/ingest_outputs.py record OUT.json [--profile basic ...]
    python benchmarks/ingest_outputs.py compare OUT.json [--profile basic ...]
    python benchmarks/ingest_outputs.py profile [--corpus phi] [--top 40]

Runs the per-file work of ``lake ingest`` (reading, documents, de-identification, the row,
the pixel blob: ``lake.ingest._run._process_items``, as a worker runs it, no commit) in this
process over:

- the PHI-rich corpus of ``tests/deid_corpus.py`` (``benchmarks/_corpus.make_phi_corpus``);
- 200 files of the CT/MR bench corpus (``make_corpus``);
- pydicom's test files (``get_testdata_files()``);
- the vendor data in ``LAKE_SHARED_DATA`` (``/work/shared/data``) when present.

Each outcome becomes one digest over everything a commit would store of it (every column of
the row: header JSON, header bytes, the typed attributes, the lake's own columns; the action
counts; a quarantine record's reason and message), and each lake's blob files one digest
(path and content). ``compare`` fails on the first corpus whose digests differ. The secret is
fixed, so the de-identified values are the same from run to run.

``profile`` runs cProfile with the process's CPU clock over one corpus (a new lake).
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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lake
from benchmarks._corpus import make_corpus, make_phi_corpus
from lake.ingest import Accepted, Ingestor, iter_items
from lake.ingest._run import _FileReading, _process_items
from lake.vault import Secret

CACHE = Path(os.environ.get("LAKE_BENCH_DIR", Path(tempfile.gettempdir()) / "imaging-lake-bench"))
SECRET = Secret(hashlib.sha256(b"imaging-lake ingest_outputs").digest())


def corpora() -> dict[str, list[str]]:
    """The corpora by name: their sources (files or folders)."""
    from pydicom.data import get_testdata_files

    found = {
        "phi": [str(CACHE / "phi-1300")],
        "ctmr": [str(p) for p in make_corpus(CACHE / "corpus-2000", 2000)[:200]],
        "pydicom": sorted(get_testdata_files("*")),
    }
    make_phi_corpus(CACHE / "phi-1300", 1300)
    shared = Path(os.environ.get("LAKE_SHARED_DATA", "/work/shared/data"))
    if shared.is_dir():
        found["shared"] = [str(shared)]
    return found


def _value(value: Any) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        return "bytes:" + hashlib.sha256(bytes(value)).hexdigest()
    if isinstance(value, list | tuple):
        return [_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _value(v) for k, v in sorted(value.items())}
    return repr(value)


def outcome_digest(outcome: object) -> str:
    """The sha256 of an ingest outcome: its row (every column), action counts, blob written and
    bytes in, or its quarantine record (but the sealed object's random key)."""
    if isinstance(outcome, Accepted):
        what: Any = {"row": _value(outcome.row), "actions": sorted(outcome.actions.items()),
                     "blob_written": outcome.blob_written, "bytes_in": outcome.bytes_in}
    elif hasattr(outcome, "record"):
        record = dict(outcome.record)
        record.pop("object_key", None)  # sealed with a random nonce
        what = {"rejected": _value(record)}
    else:
        what = {"skipped": repr(outcome)}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()


def blobs_digest(root: Path) -> str:
    """The sha256 of every blob file of the lake at ``root``, paths and bytes."""
    digest = hashlib.sha256()
    blobs = root / "blobs"
    for path in sorted(blobs.rglob("*")) if blobs.exists() else []:
        if path.is_file():
            digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _tasks(sources: list[str], size: int = 32) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for item in iter_items(sources):
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def run(sources: list[str], profile: str, work: Path) -> tuple[list[str], str, int, float]:
    """(per-outcome digests, blob digest, files, CPU seconds) of ``sources`` under ``profile``."""
    lk = lake.init(work / "lake", vault=work / "vault")
    reading = _FileReading(Ingestor(lk, SECRET, profile).context)
    digests: list[str] = []
    cpu = 0.0
    # keyed by the path below the corpus, so recordings made in other bench folders compare
    root = os.path.commonpath([os.path.abspath(s) for s in sources]) if sources else ""
    for task in _tasks(sources):
        started = time.process_time()
        outcomes, _ = _process_items(task, reading)
        cpu += time.process_time() - started
        digests.extend(f"{os.path.relpath(os.path.abspath(item.path), root)}:{outcome_digest(o)}"
                       for item, o in zip(task, outcomes, strict=True))
    return digests, blobs_digest(work / "lake"), len(digests), cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["record", "compare", "profile"])
    parser.add_argument("file", nargs="?")
    parser.add_argument("--profile", action="append", help="de-identification profiles")
    parser.add_argument("--corpus", action="append", help="corpora (default: all)")
    parser.add_argument("--top", type=int, default=45)
    args = parser.parse_args()
    profiles = args.profile or ["basic"]
    found = corpora()
    names = args.corpus or list(found)
    if args.mode == "profile":
        with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
            profiler = cProfile.Profile(time.process_time)
            profiler.enable()
            _, _, files, cpu = run(found[names[0]], profiles[0], Path(tmp))
            profiler.disable()
        print(f"{names[0]}: {files} files, {cpu * 1000 / files:.2f} ms CPU per file (profiled)")
        stats = pstats.Stats(profiler)
        stats.sort_stats("cumulative").print_stats(args.top)
        stats.sort_stats("tottime").print_stats(args.top)
        return
    result: dict[str, Any] = {}
    for profile in profiles:
        for name in names:
            with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
                digests, blobs, files, cpu = run(found[name], profile, Path(tmp))
            print(f"{profile} {name}: {files} files, {cpu * 1000 / files:.2f} ms CPU per file "
                  f"(load {os.getloadavg()[0]:.1f})", flush=True)
            result[f"{profile}/{name}"] = {"outcomes": digests, "blobs": blobs}
    if args.mode == "record":
        Path(args.file).write_text(json.dumps(result, indent=0))
        return
    expected = json.loads(Path(args.file).read_text())
    failed = False
    for key, got in result.items():
        if key not in expected:
            print(f"{key}: not in {args.file} (recorded: {', '.join(sorted(expected))})")
            failed = True
            continue
        want = dict(line.rsplit(":", 1) for line in expected[key]["outcomes"])
        have = dict(line.rsplit(":", 1) for line in got["outcomes"])
        differ = sorted(name for name in want.keys() & have.keys() if want[name] != have[name])
        missing, added = sorted(want.keys() - have.keys()), sorted(have.keys() - want.keys())
        same_blobs = expected[key]["blobs"] == got["blobs"]
        print(f"{key}: {len(have)} outcomes, {len(differ)} differ, {len(missing)} recorded but "
              f"not found, {len(added)} not recorded; blobs "
              f"{'identical' if same_blobs else 'DIFFER'}")
        for name in (differ + missing + added)[:5]:
            print("   ", name)
        failed = failed or bool(differ or missing or added) or not same_blobs
    if failed:
        raise SystemExit("outputs differ")


if __name__ == "__main__":
    main()
