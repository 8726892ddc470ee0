"""Ingest throughput and memory against the floor and Orthanc, measured in the same run.

    python benchmarks/bench_ingest.py [--files 2000] [--phi 1300] [--large 20000] [--huge 50000]
                                      [--no-orthanc]

Prints, for a generated corpus of real CT/MR files cloned with new UIDs (2,000) and for the
PHI-rich corpus of tests/deid_corpus.py (>= 1,300 files: sequences, private groups, SR, PDF,
ultrasound):
- the floor: pydicom read + write of every file to a folder, no de-identification (one process);
- `lake ingest` as a user runs it (`--scheduler auto`): files/s and MB/s;
- their ratio (goal, issue 14.3: >= 1.0 using the machine's cores);
- Orthanc's REST import of the same files (when the `Orthanc` binary is installed) and the ratio
  (goal > 1), also at 20,000 files;
- peak memory (RSS of the ingest process tree, and per process) at 2,000, 20,000 and 50,000
  files: it must not grow with the number of files; and the driver's peak anonymous RSS and
  most threads (its RSS less the libraries' pages, which move ~50 MB between runs).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
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


def _children_cpu() -> float:
    """CPU seconds (user + system) of every waited-for child process so far, their own
    waited-for children included (the ingest's workers, Orthanc)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def floor(paths: list[Path], out: Path) -> tuple[float, float]:
    """pydicom read + write, no changes; returns (seconds, CPU seconds)."""
    from pydicom import dcmread

    out.mkdir(parents=True, exist_ok=True)
    start, used = time.perf_counter(), time.process_time()
    for path in paths:
        ds = dcmread(path)
        ds.save_as(out / path.name)
    return time.perf_counter() - start, time.process_time() - used


class PeakRSS:
    """Samples the RSS of a process and all its children."""

    def __init__(self, pid: int) -> None:
        self.proc = psutil.Process(pid)
        self.peak = 0
        self.peaks: dict[int, int] = {}
        self.driver_anon = 0  # the driver's (the process itself) peak anonymous RSS, bytes
        self.driver_threads = 0  # and most threads at once
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                procs = [self.proc, *self.proc.children(recursive=True)]
                memory = {p.pid: p.memory_info() for p in procs if p.is_running()}
                rss = sum(info.rss for info in memory.values())
                for pid, info in memory.items():
                    self.peaks[pid] = max(self.peaks.get(pid, 0), info.rss)
                driver = memory.get(self.proc.pid)
                if driver is not None:  # RssAnon: resident less file-backed and shared pages
                    self.driver_anon = max(self.driver_anon, driver.rss - driver.shared)
                self.driver_threads = max(self.driver_threads, self.proc.num_threads())
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


def lake_ingest(corpus: Path, work: Path) -> tuple[float, int, list[int], float]:
    """`lake ingest` as a user runs it: (seconds, peak RSS of its process tree, peak per
    process, CPU seconds of the process tree)."""
    lake_bin = str(Path(sys.executable).with_name("lake"))
    env = dict(os.environ, LAKE_ROOT=str(work / "lake"), LAKE_VAULT=str(work / "vault"))
    subprocess.run([lake_bin, "init"], env=env, check=True, capture_output=True)
    used = _children_cpu()
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
    cpu = _children_cpu() - used
    if proc.returncode not in (0, 3):  # 3: some files quarantined (the PHI-rich corpus's are)
        raise SystemExit(f"lake ingest failed ({proc.returncode}): {err.decode()[-2000:]}")
    print(f"  (lake ingest of {corpus.name}: driver's anonymous RSS up to "
          f"{rss.driver_anon / 1e6:.0f} MB, threads up to {rss.driver_threads})", flush=True)
    return elapsed, rss.peak, sorted(rss.peaks.values(), reverse=True), cpu


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def orthanc_import(paths: list[Path], work: Path) -> tuple[float, float] | None:
    """Orthanc's REST import (POST /instances, one client thread): (seconds, CPU seconds of
    Orthanc and of the client); None when Orthanc is absent."""
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
        server = psutil.Process(proc.pid)
        server_used = sum(server.cpu_times()[:2])
        start, used = time.perf_counter(), time.process_time()
        for path in paths:
            req = urllib.request.Request(base + "/instances", data=path.read_bytes(), method="POST")
            urllib.request.urlopen(req, timeout=30).read()
        elapsed, client = time.perf_counter() - start, time.process_time() - used
        return elapsed, client + sum(server.cpu_times()[:2]) - server_used
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _compare(name: str, paths: list[Path], corpus_dir: Path, work: Path,
             orthanc: bool) -> tuple[float, float, int, list[int], float | None]:
    """Floor, `lake ingest` and Orthanc on one corpus; prints and returns
    (floor s, lake s, peak RSS, per-process peaks, Orthanc s). CPU ms per file is printed
    beside each rate: on a machine shared with other jobs it moves much less than wall time."""
    n, mb = len(paths), _size(paths)
    t_floor, cpu_floor = floor(paths, work / "floor")
    t_lake, rss, procs, cpu_lake = lake_ingest(corpus_dir, work / "lake")
    o = orthanc_import(paths, work / "orthanc") if orthanc else None
    t_orthanc = None if o is None else o[0]
    print(f"\n{name}: {n} files, {mb:.1f} MB (load average {os.getloadavg()[0]:.1f})")
    print(f"  floor (pydicom read+write, 1 process): {n / t_floor:8.1f} files/s {mb / t_floor:7.1f} MB/s"
          f"  CPU {cpu_floor * 1000 / n:5.2f} ms/file")
    print(f"  lake ingest (de-identify + store):     {n / t_lake:8.1f} files/s {mb / t_lake:7.1f} MB/s"
          f"  CPU {cpu_lake * 1000 / n:5.2f} ms/file")
    print(f"  ratio lake/floor: {t_floor / t_lake:.2f}  (goal >= 1.0); CPU per file lake/floor: "
          f"{cpu_lake / cpu_floor:.2f}")
    if o is not None:
        print(f"  Orthanc REST import:                   {n / o[0]:8.1f} files/s "
              f"{mb / o[0]:7.1f} MB/s  CPU {o[1] * 1000 / n:5.2f} ms/file (server + client)")
        print(f"  ratio lake/Orthanc: {o[0] / t_lake:.2f}  (goal > 1)")
    else:
        print("  Orthanc REST import: skipped (Orthanc not installed or --no-orthanc)")
    print(f"  peak RSS: {rss / 1e6:.0f} MB (per process: "
          f"{', '.join(f'{p / 1e6:.0f}' for p in procs)} MB)")
    return t_floor, t_lake, rss, procs, t_orthanc


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--phi", type=int, default=1300,
                        help="PHI-rich files (tests/deid_corpus.py; 0 to skip)")
    parser.add_argument("--large", type=int, default=20000,
                        help="a larger CT/MR corpus, also against Orthanc (0 to skip)")
    parser.add_argument("--huge", type=int, default=50000,
                        help="memory at this many files against --files (0 to skip)")
    parser.add_argument("--no-orthanc", action="store_true")
    args = parser.parse_args()
    orthanc = not args.no_orthanc
    print(f"{os.cpu_count()} CPUs; lake ingest runs as a user runs it (default --scheduler auto)")

    corpus_dir = CACHE / f"corpus-{args.files}"
    paths = make_corpus(corpus_dir, args.files)
    with tempfile.TemporaryDirectory() as tmp:
        _, _, rss_small, _, _ = _compare("CT/MR cloned with new UIDs", paths, corpus_dir,
                                         Path(tmp), orthanc)
    if args.phi:
        from benchmarks._corpus import make_phi_corpus

        phi_dir = CACHE / f"phi-{args.phi}"
        phi = make_phi_corpus(phi_dir, args.phi)
        with tempfile.TemporaryDirectory() as tmp:
            _compare("PHI-rich (sequences, private groups, SR, PDF, US; tests/deid_corpus.py)",
                     phi, phi_dir, Path(tmp), orthanc)
    if args.large:
        large_dir = CACHE / f"corpus-{args.large}"
        large = make_corpus(large_dir, args.large)
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            t_large, rss_large, procs_large, cpu_large = lake_ingest(large_dir, work / "lake")
            o = orthanc_import(large, work / "orthanc") if orthanc else None
        n = len(large)
        print(f"\nCT/MR, {n} files (load average {os.getloadavg()[0]:.1f}): lake ingest "
              f"{n / t_large:8.1f} files/s, CPU {cpu_large * 1000 / n:.2f} ms/file")
        if o is not None:
            print(f"  Orthanc REST import {n / o[0]:8.1f} files/s, CPU {o[1] * 1000 / n:.2f} "
                  f"ms/file; ratio lake/Orthanc: {o[0] / t_large:.2f}  (goal > 1)")
        print(f"  peak RSS: {rss_large / 1e6:.0f} MB (per process: "
              f"{', '.join(f'{p / 1e6:.0f}' for p in procs_large)} MB)")
    if args.huge:
        huge_dir = CACHE / f"corpus-{args.huge}"
        huge = make_corpus(huge_dir, args.huge)
        with tempfile.TemporaryDirectory() as tmp:
            t_huge, rss_huge, procs_huge, _ = lake_ingest(huge_dir, Path(tmp))
        print(f"\nCT/MR, {len(huge)} files: lake ingest {len(huge) / t_huge:8.1f} files/s")
        print(f"  peak RSS: {rss_huge / 1e6:.0f} MB (per process: "
              f"{', '.join(f'{p / 1e6:.0f}' for p in procs_huge)} MB); ratio to "
              f"{len(paths)} files: {rss_huge / rss_small:.2f} (the engines differ: in this "
              "process for small jobs, worker processes for large ones; compare per-process "
              "peaks)")

if __name__ == "__main__":
    main()
