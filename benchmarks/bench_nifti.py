"""NIfTI export versus the dcm2niix binary, measured side by side in the same run.

Run: ``python benchmarks/bench_nifti.py [--repeats N] [--slices N]``.

Cases
-----
* ``ct``: a generated CT series (default 140 slices of 512x512, 16-bit with noise so gzip
  has realistic work), written to a temporary folder as DICOM files.
* ``dcm_qa``: every Siemens mosaic series of ``../shared/data/dcm_qa`` (skipped if absent).

Both tools start from the DICOM files on disk and end with ``.nii``/``.nii.gz`` and a JSON
sidecar on disk; ours includes ``pydicom.dcmread`` of every file. Runs are interleaved and
repeated; the best time of each is compared (the machine is shared, the minimum is the
least disturbed measurement) and the median is shown too. Ratios are ours / dcm2niix:
below 1 means we are faster. Compression is compared at the same gzip level (dcm2niix
``-z y -<level>`` uses pigz with all cores; ours uses zlib-ng in threads).

Goals (issue 4, point 8): uncompressed within 2x of dcm2niix; gzip faster than dcm2niix.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pydicom

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lake.nifti import series_to_nifti, write_volume  # noqa: E402
from tests.nifti_synth import synthetic_series  # noqa: E402

DCM_QA_IN = ROOT.parent / "shared" / "data" / "dcm_qa" / "In"
_SKIP_SUFFIXES = {".nii", ".txt", ".pdf", ".xlsx", ".sr"}


def _dicom_files(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() not in _SKIP_SUFFIXES
    )


def _ours(files: list[Path], out: Path, *, compress: bool, level: int) -> int:
    series: dict[str, list[pydicom.Dataset]] = {}
    for path in files:
        ds = pydicom.dcmread(path)
        if "PixelData" in ds:
            series.setdefault(str(ds.SeriesInstanceUID), []).append(ds)
    written = 0
    for number, datasets in enumerate(series.values()):
        volumes, _ = series_to_nifti(datasets)
        for volume in volumes:
            stem = out / f"s{number:03d}{volume.suffix}"
            written += len(write_volume(volume, stem, compress=compress, level=level))
    return written


def _dcm2niix(source: Path, out: Path, *, compress: bool, level: int) -> int:
    exe = shutil.which("dcm2niix")
    assert exe is not None
    args = [exe, "-b", "y", "-z", "y" if compress else "n", f"-{level}", "-f", "%s_%p"]
    subprocess.run([*args, "-o", str(out), str(source)], check=True, capture_output=True)
    return len(list(out.iterdir()))


def _time(run: Callable[[Path], int], scratch: Path) -> float:
    out = Path(tempfile.mkdtemp(dir=scratch))
    start = time.perf_counter()
    produced = run(out)
    elapsed = time.perf_counter() - start
    assert produced > 0, "nothing was written"
    shutil.rmtree(out)
    return elapsed


def _bench(name: str, source: Path, repeats: int, scratch: Path) -> list[tuple[str, float]]:
    files = _dicom_files(source)
    size = sum(p.stat().st_size for p in files) / 1e6
    print(f"\n{name}: {len(files)} files, {size:.0f} MB of DICOM")
    print(f"{'mode':<14}{'dcm2niix s':>12}{'ours s':>10}{'ratio':>8}   (best of {repeats}; "
          "median in brackets)")
    ratios = []
    for label, compress, level in (("uncompressed", False, 6), ("gzip -1", True, 1),
                                   ("gzip -6", True, 6)):
        theirs: list[float] = []
        ours: list[float] = []
        for _ in range(repeats):
            theirs.append(_time(partial(_dcm2niix, source, compress=compress, level=level),
                                scratch))
            ours.append(_time(partial(_ours, files, compress=compress, level=level), scratch))
        ratio = min(ours) / min(theirs)
        ratios.append((f"{name} {label}", ratio))
        print(f"{label:<14}{min(theirs):>12.3f}{min(ours):>10.3f}{ratio:>8.2f}   "
              f"[{statistics.median(theirs):.3f} / {statistics.median(ours):.3f}]")
    return ratios


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--slices", type=int, default=140)
    args = parser.parse_args()
    if shutil.which("dcm2niix") is None:
        print("dcm2niix is not installed: nothing to compare against")
        return 1
    version = subprocess.run(["dcm2niix", "-v"], capture_output=True, text=True).stdout
    print("dcm2niix", version.strip().splitlines()[-1] if version.strip() else "?")
    with tempfile.TemporaryDirectory(prefix="bench-nifti-") as tmp:
        scratch = Path(tmp)
        ct = scratch / "ct"
        ct.mkdir()
        series = synthetic_series(
            n_slices=args.slices, rows=512, cols=512, noise=15.0,
            pixel_spacing=(0.7, 0.7), slice_spacing=1.25, series_tag="bench",
        )
        for i, ds in enumerate(series):
            ds.save_as(ct / f"{i:04d}.dcm", enforce_file_format=True)
        del series
        ratios = _bench(f"CT {args.slices}x512x512", ct, args.repeats, scratch)
        if DCM_QA_IN.is_dir():
            ratios += _bench("dcm_qa mosaics", DCM_QA_IN, args.repeats, scratch)
        else:
            print(f"\n{DCM_QA_IN} absent: mosaic case skipped")
    print("\nratio = ours / dcm2niix; goal: uncompressed <= 2, gzip < 1")
    for label, ratio in ratios:
        goal = 2.0 if "uncompressed" in label else 1.0
        verdict = "meets goal" if ratio <= goal else "MISSES goal"
        print(f"  {label:<32}{ratio:6.2f}  {verdict}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
