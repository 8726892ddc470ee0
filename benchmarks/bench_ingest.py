"""Ingest throughput and memory against the floor and Orthanc, measured in the same run.

    python benchmarks/bench_ingest.py [--files 2000] [--large 20000] [--no-orthanc]

Prints, for a generated corpus of real files cloned with new UIDs:
- the floor: pydicom read + write of every file to a folder, no de-identification (one process);
- `lake ingest` (default scheduler: a local Dask cluster, one worker per CPU): files/s and MB/s;
- their ratio (goal >= 0.5);
- Orthanc's REST import of the same files (when the `Orthanc` binary is installed) and the ratio;
- peak memory (RSS of the ingest process tree) for the small and the large corpus: it must not grow
  with the number of files.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._corpus import make_corpus

CACHE = Path(os.environ.get("LAKE_BENCH_DIR", Path(tempfile.gettempdir()) / "imaging-lake-bench"))


def _size(paths: list[Path]) -> float:
    return sum(p.stat().st_size for p in paths) / 1e6


def floor(paths: list[Path], out: Path) -> float:
    """pydicom read + write, no changes; returns seconds."""
    from pydicom import dcmread

    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    for path in paths:
        ds = dcmread(path)
        ds.save_as(out / path.name)
    return time.perf_counter() - start


class PeakRSS:
    """Samples the RSS of a process and all its children."""

    def __init__(self, pid: int) -> None:
        self.proc = psutil.Process(pid)
        self.peak = 0
        self.peaks: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                procs = [self.proc, *self.proc.children(recursive=True)]
                sizes = {p.pid: p.memory_info().rss for p in procs if p.is_running()}
                rss = sum(sizes.values())
                for pid, size in sizes.items():
                    self.peaks[pid] = max(self.peaks.get(pid, 0), size)
            except psutil.Error:
                rss = 0
            self.peak = max(self.peak, rss)
            time.sleep(0.05)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def lake_ingest(corpus: Path, work: Path) -> tuple[float, int, list[int]]:
    """`lake ingest` as a user runs it: (seconds, peak RSS of its process tree, peak per process)."""
    lake_bin = str(Path(sys.executable).with_name("lake"))
    env = dict(os.environ, LAKE_ROOT=str(work / "lake"), LAKE_VAULT=str(work / "vault"))
    subprocess.run([lake_bin, "init"], env=env, check=True, capture_output=True)
    start = time.perf_counter()
    proc = subprocess.Popen(
        [lake_bin, "ingest", "-q", str(corpus)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    with PeakRSS(proc.pid) as rss:
        _, err = proc.communicate()
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"lake ingest failed ({proc.returncode}): {err.decode()[-2000:]}")
    return elapsed, rss.peak, sorted(rss.peaks.values(), reverse=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def orthanc_import(paths: list[Path], work: Path) -> float | None:
    """Orthanc's REST import (POST /instances, one client thread); None when Orthanc is absent."""
    binary = shutil.which("Orthanc")
    if binary is None:
        return None
    port, dicom_port = _free_port(), _free_port()
    config = {
        "Name": "bench",
        "StorageDirectory": str(work / "storage"),
        "IndexDirectory": str(work / "index"),
        "HttpPort": port,
        "DicomPort": dicom_port,
        "HttpBindAddress": "127.0.0.1",
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomAlwaysAllowStore": True,
    }
    work.mkdir(parents=True, exist_ok=True)
    (work / "orthanc.json").write_text(json.dumps(config))
    proc = subprocess.Popen(
        [binary, str(work / "orthanc.json")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(200):
            try:
                urllib.request.urlopen(base + "/system", timeout=1).read()
                break
            except OSError:
                time.sleep(0.1)
        start = time.perf_counter()
        for path in paths:
            req = urllib.request.Request(base + "/instances", data=path.read_bytes(), method="POST")
            urllib.request.urlopen(req, timeout=30).read()
        return time.perf_counter() - start
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--large", type=int, default=20000, help="0 to skip the memory comparison")
    parser.add_argument("--no-orthanc", action="store_true")
    args = parser.parse_args()

    corpus_dir = CACHE / f"corpus-{args.files}"
    paths = make_corpus(corpus_dir, args.files)
    mb = _size(paths)
    print(
        f"corpus: {len(paths)} files, {mb:.1f} MB (CT/MR cloned with new UIDs), {os.cpu_count()} CPUs"
    )

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        t_floor = floor(paths, work / "floor")
        t_lake, rss_small, procs_small = lake_ingest(corpus_dir, work / "small")
        t_orthanc = None if args.no_orthanc else orthanc_import(paths, work / "orthanc")

    n = len(paths)
    print(
        f"floor  (pydicom read+write, 1 process): {n / t_floor:8.1f} files/s {mb / t_floor:7.1f} MB/s"
    )
    print(
        f"lake ingest (de-identify + store):      {n / t_lake:8.1f} files/s {mb / t_lake:7.1f} MB/s"
    )
    print(f"ratio lake/floor: {t_floor / t_lake:.2f}  (goal >= 0.5)")
    if t_orthanc is not None:
        print(
            f"Orthanc REST import:                    {n / t_orthanc:8.1f} files/s {mb / t_orthanc:7.1f} MB/s"
        )
        print(f"ratio lake/Orthanc: {t_orthanc / t_lake:.2f}  (goal > 1)")
    else:
        print("Orthanc REST import: skipped (Orthanc not installed or --no-orthanc)")
    print(
        f"peak RSS, {n} files: {rss_small / 1e6:.0f} MB (per process: "
        f"{', '.join(f'{p / 1e6:.0f}' for p in procs_small)} MB)"
    )

    if args.large:
        large_dir = CACHE / f"corpus-{args.large}"
        large = make_corpus(large_dir, args.large)
        with tempfile.TemporaryDirectory() as tmp:
            t_large, rss_large, procs_large = lake_ingest(large_dir, Path(tmp))
        rate = len(large) / t_large
        print(
            f"lake ingest, {len(large)} files: {rate:8.1f} files/s; ratio to the floor "
            f"{rate / (n / t_floor):.2f} (start-up amortised)"
        )
        if t_orthanc is not None:
            print(f"ratio to Orthanc's import rate: {rate / (n / t_orthanc):.2f}")
        per_process = ", ".join(f"{p / 1e6:.0f}" for p in procs_large)
        print(
            f"peak RSS, {len(large)} files: {rss_large / 1e6:.0f} MB (per process: {per_process} MB;"
            f" ratio to {n} files: {rss_large / rss_small:.2f}; bounded memory means ~1)"
        )


if __name__ == "__main__":
    main()
