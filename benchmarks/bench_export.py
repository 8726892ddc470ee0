"""Cohort export throughput against the floor, measured in the same run.

    python benchmarks/bench_export.py [--files 2000]

Builds a lake from a generated corpus (real files cloned with new UIDs), saves a cohort of
every series, and prints, in instances per second:

- the floor: read every row (header + blob) from the lake and write each reassembled
  instance to a folder, in one process, no journal, no atomic writes, no checks;
- ``export_dicom`` in one process (``scheduler="sync"``): the cost of planning, verification
  against the cohort's hashes, temp-and-rename writes, fsync and the resume journal;
- ``export_dicom`` on the default local Dask cluster, and as a zip;
- re-running a finished export (verification of every file against the manifest).

Each line gives the ratio to the floor (higher is better for throughput).
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._corpus import make_corpus

CACHE = Path(os.environ.get("LAKE_BENCH_DIR", Path(tempfile.gettempdir()) / "imaging-lake-bench"))


def floor(lk: object, out: Path) -> tuple[float, int]:
    """Reassemble and write every instance with no export machinery; (seconds, count)."""
    from pydicom import dcmread, dcmwrite

    assert hasattr(lk, "tables") and hasattr(lk, "blobs")
    start = time.perf_counter()
    table = lk.tables.open("instances").to_pyarrow_dataset().to_table(
        columns=["SOPInstanceUID", "header_dicom", "pixel_hash", "pixel_vr"]
    )
    out.mkdir(parents=True)
    count = 0
    for row in table.to_pylist():
        ds = dcmread(io.BytesIO(row["header_dicom"]))
        if row["pixel_hash"]:
            ds.add_new(0x7FE00010, row["pixel_vr"], lk.blobs.get(row["pixel_hash"]))
        dcmwrite(out / f"{count:07d}.dcm", ds, enforce_file_format=True)
        count += 1
    return time.perf_counter() - start, count


def timed(label: str, base_rate: float, count: int, run: object) -> float:
    assert callable(run)
    start = time.perf_counter()
    run()
    elapsed = time.perf_counter() - start
    rate = count / elapsed
    print(f"{label:<44} {elapsed:7.2f} s {rate:9.0f} inst/s   ratio {rate / base_rate:5.2f}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=2000)
    args = parser.parse_args()

    import lake
    from lake.export import create_cohort, export_dicom

    paths = make_corpus(CACHE / f"corpus-{args.files}", args.files)
    work = Path(tempfile.mkdtemp(prefix="bench-export-"))
    try:
        lk = lake.init(work / "lake", vault=work / "vault")
        lk.ingest([str(paths[0].parent)], vault=work / "vault", scheduler="threads")
        cohort = create_cohort(lk, "all", "SELECT SeriesInstanceUID FROM series")
        count = len(cohort.members)
        mb = cohort.pixel_bytes / 1e6
        print(f"{count} instances in {len(cohort.series)} series, {mb:.0f} MB of pixels, "
              f"{os.cpu_count()} CPUs")

        seconds, written = floor(lk, work / "floor")
        assert written == count
        base = count / seconds
        print(f"{'floor: reassemble + write, one process':<44} {seconds:7.2f} s {base:9.0f} "
              "inst/s   ratio  1.00")
        timed("export_dicom, sync (one process)", base, count,
              lambda: export_dicom(lk, cohort, work / "sync", scheduler="sync"))
        timed("export_dicom, processes (default)", base, count,
              lambda: export_dicom(lk, cohort, work / "processes"))
        timed("export_dicom --zip, processes", base, count,
              lambda: export_dicom(lk, cohort, work / "zip", as_zip=True))
        timed("re-run of a finished export (verify only)", base, count,
              lambda: export_dicom(lk, cohort, work / "sync", scheduler="sync"))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
