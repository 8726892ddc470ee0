"""DICOM network: receive throughput and C-FIND latency, lake against Orthanc, same run.

    python benchmarks/bench_net.py [--files 520] [--lake-instances 100000]
                                   [--orthanc-instances 20000] [--repeat 25] [--no-orthanc]
                                   [--quick] [--rounds 1]

Receive: the same generated small CT/MR files are sent by dcmtk's storescu to Orthanc and
to `lake serve dicom` (in-process DicomServer): over one association, split over four
associations at once, and over one association with Nagle's algorithm left on in
storescu (no TCP_NODELAY=1 in its environment). Orthanc runs as packaged and with
TCP_NODELAY=1 in its environment. For the lake, with each --acknowledge mode, two rates
are printed: acknowledged (every storescu done; every instance durable) and committed
(the catalog holds every row: the time until storescu is done plus the time to
de-identify what is still queued and commit). The ratio is lake committed / Orthanc.
CPU time per instance (user + system) is printed for each peer: Orthanc's process (read
from /proc around the sends), the lake's server process and its de-identification
workers (commits included); with the load average, since the machine is shared.
--quick measures only one and four associations with TCP_NODELAY=1, Orthanc with
TCP_NODELAY=1 and the default acknowledge=receipt; --rounds repeats that, interleaved.

C-FIND: STUDY-level queries (exact PatientID, a one-month StudyDate range, MR in a
date range, a PatientID wildcard) sent over one pynetdicom association (TCP_NODELAY on,
the same client for both servers); the median latency of --repeat runs. Both servers
run as their own processes (`lake serve dicom` and `Orthanc`). The lake's catalog gets
synthetic rows written straight into its Delta table; Orthanc gets the same instances
as tiny DICOM files through its REST API (4 concurrent requests; 100,000 take about 6
minutes here) and is measured with StorageAccessOnFind=Always (its default) and Never.
With a smaller --orthanc-instances the lake is measured at that size too.
"""

from __future__ import annotations

import argparse
import io
import itertools
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pydicom import dcmwrite
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, build_context, evt

import lake
from benchmarks._corpus import make_corpus
from lake.catalog import INSTANCES
from lake.net import DicomServer, ServerConfig
from lake.net._server import quiet_identifiers, set_nodelay
from tests.net_peers import Orthanc, free_port, synthetic_rows, wait_port

CACHE = Path(os.environ.get("LAKE_BENCH_DIR", Path(tempfile.gettempdir()) / "imaging-lake-bench"))
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
RETURN_KEYS = ("StudyInstanceUID", "PatientID", "StudyDate", "StudyTime", "StudyDescription",
               "ModalitiesInStudy", "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances")
QUERIES: dict[str, dict[str, str]] = {
    "PatientID exact": {"PatientID": "P000042"},
    "StudyDate 1 month": {"StudyDate": "20150201-20150228"},
    "MR + date range": {"ModalitiesInStudy": "MR", "StudyDate": "20150301-20150415"},
    "PatientID wildcard": {"PatientID": "P00001*"},
}


# --- receive ---------------------------------------------------------------------------


def storescu(port: int, folders: list[Path], nodelay: bool) -> float:
    """Send every folder over its own association, all at once; seconds until all are done."""
    env = {k: v for k, v in os.environ.items() if k != "TCP_NODELAY"}
    if nodelay:
        env["TCP_NODELAY"] = "1"
    started = time.perf_counter()
    senders = [
        subprocess.Popen(["storescu", "-aec", "ANY", "+sd", "127.0.0.1", str(port), str(folder)],
                         env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for folder in folders
    ]
    errors = [s.communicate()[1] for s in senders]
    elapsed = time.perf_counter() - started
    for sender, error in zip(senders, errors, strict=True):
        if sender.returncode != 0 or "Failed" in error:
            raise RuntimeError(f"storescu failed: {error[-500:]}")
    return elapsed


def _split(corpus: Path, parts: int, work: Path) -> list[Path]:
    """The corpus as ``parts`` folders of hard links (one per association)."""
    files = sorted(corpus.glob("*.dcm"))
    folders = [work / f"part-{parts}-{i}" for i in range(parts)]
    for i, folder in enumerate(folders):
        folder.mkdir(parents=True, exist_ok=True)
        for path in files[i::parts]:
            target = folder / path.name
            if not target.exists():
                os.link(path, target)
    return folders


# (column title, associations, TCP_NODELAY=1 in storescu's environment)
RECEIVE_RUNS = (("1 assoc", 1, True), ("4 assoc", 4, True), ("1 assoc, Nagle", 1, False))
QUICK_RUNS = RECEIVE_RUNS[:2]
_COMMITTED = "  committed (in the catalog)"


def _process_cpu(pid: int) -> float:
    """User + system CPU seconds of a running process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _own_cpu() -> float:
    times = os.times()
    return times.user + times.system


class _Receive:
    """Rates (/s) and CPU (ms per instance) by peer and column; printed as rows."""

    def __init__(self, files: int, runs: tuple[tuple[str, int, bool], ...]) -> None:
        self.files, self.runs = files, runs
        self.rates: dict[str, dict[str, list[float]]] = {}
        self.cpu: dict[str, dict[str, list[float]]] = {}
        self.parts: dict[str, dict[str, dict[str, list[float]]]] = {}

    def add(self, peer: str, title: str, rate: float, cpu_s: float | None = None) -> None:
        self.rates.setdefault(peer, {}).setdefault(title, []).append(rate)
        if cpu_s is not None:
            self.cpu.setdefault(peer, {}).setdefault(title, []).append(cpu_s / self.files * 1e3)

    def add_part(self, peer: str, part: str, title: str, cpu_s: float) -> None:
        """CPU of one part of ``peer`` (the lake's server process, its workers)."""
        parts = self.parts.setdefault(peer, {})
        parts.setdefault(part, {}).setdefault(title, []).append(cpu_s / self.files * 1e3)

    def row(self, peer: str) -> None:
        print(f"{peer:<46}" + "".join(
            f"{statistics.median(self.rates[peer][t]):>16.1f}/s" for t, _, _ in self.runs)
            + f"   (load {os.getloadavg()[0]:.1f})", flush=True)
        if peer in self.cpu:
            print(f"{'    CPU per instance, median':<46}" + "".join(
                f"{statistics.median(self.cpu[peer][t]):>15.2f}ms" for t, _, _ in self.runs),
                flush=True)
        for part, cpu in self.parts.get(peer, {}).items():
            print(f"{'      of which ' + part:<46}" + "".join(
                f"{statistics.median(cpu[t]):>15.2f}ms" for t, _, _ in self.runs), flush=True)

    def ratio(self, lake_peer: str, other: str) -> None:
        cells = []
        for title, _, _ in self.runs:
            mine, theirs = self.rates[lake_peer][title], self.rates[other][title]
            cells.append(f"{statistics.median(mine) / statistics.median(theirs):>17.2f}x")
        print(f"  vs {other:<42}" + "".join(cells))


def bench_receive(files: int, use_orthanc: bool, work: Path, *, quick: bool = False,
                  rounds: int = 1) -> None:
    corpus = CACHE / f"net-corpus-{files}"
    make_corpus(corpus, files)
    runs = QUICK_RUNS if quick else RECEIVE_RUNS
    load = os.getloadavg()[0]
    print(f"\n== receive: {files} small CT/MR instances sent by storescu (instances/s, median "
          f"of {rounds}); load average {load:.1f} ==")
    print("   columns: one association, or the corpus split over 4 at once; storescu with "
          "TCP_NODELAY=1 (dcmtk reads it) unless 'Nagle'")
    print(f"{'peer':<46}" + "".join(f"{title:>18}" for title, _, _ in runs))
    folders = {parts: _split(corpus, parts, work / "parts") for _, parts, _ in runs}
    results = _Receive(files, runs)
    orthancs = {"Orthanc, TCP_NODELAY=1 in its env": True}
    if not quick:
        orthancs = {"Orthanc as packaged": False, **orthancs}
    modes = ("receipt",) if quick else ("receipt", "outcome")
    for _ in range(rounds):  # interleaved: each round measures every peer once
        for name, orthanc_nodelay in orthancs.items() if use_orthanc else ():
            for title, parts, nodelay in runs:
                folder = work / f"orthanc-recv-{orthanc_nodelay}-{parts}-{nodelay}"
                with Orthanc(folder, nodelay=orthanc_nodelay) as pacs:
                    assert pacs.process is not None
                    before = _process_cpu(pacs.process.pid)
                    rate = files / storescu(pacs.dicom_port, folders[parts], nodelay)
                    results.add(name, title, rate, _process_cpu(pacs.process.pid) - before)
                    assert pacs.instance_count() == files
                shutil.rmtree(folder, ignore_errors=True)
        for acknowledge in modes:
            for title, parts, nodelay in runs:
                _lake_run(results, work, folders[parts], acknowledge, title, nodelay)
    for name in orthancs if use_orthanc else ():
        results.row(name)
    for acknowledge in modes:
        results.row(f"lake, acknowledge={acknowledge}")
        results.row(_COMMITTED + acknowledge * (acknowledge != "receipt"))
    if use_orthanc:
        print("ratio lake (committed, default acknowledge=receipt) / Orthanc "
              "(>1: the lake receives faster):")
        for name in orthancs:
            results.ratio(_COMMITTED, name)


def _lake_run(results: _Receive, work: Path, folders: list[Path], acknowledge: str,
              title: str, nodelay: bool) -> None:
    files = results.files
    root = work / f"lake-recv-{acknowledge}-{len(folders)}-{nodelay}"
    shutil.rmtree(root, ignore_errors=True)
    lk = lake.init(root / "lake", vault=root / "vault")
    config = ServerConfig(port=0, aet="ANY", acknowledge=acknowledge)
    server = DicomServer(lk, lk.secret(root / "vault"), config)
    server.start()
    workers = [w.process.pid for w in server.intake._workers._pool]
    try:
        before_server = _own_cpu()
        before_workers = sum(_process_cpu(pid) for pid in workers)
        elapsed = storescu(server.port, folders, nodelay)
        started = time.perf_counter()
        server.flush()  # de-identify what is queued, commit everything
        done = elapsed + time.perf_counter() - started
        server_cpu = _own_cpu() - before_server
        workers_cpu = sum(_process_cpu(pid) for pid in workers) - before_workers
        cpu = server_cpu + workers_cpu
    finally:
        server.stop()
    assert server.receiver.stats.accepted == files, server.receiver.stats
    results.add(f"lake, acknowledge={acknowledge}", title, files / elapsed)
    committed = _COMMITTED + acknowledge * (acknowledge != "receipt")
    results.add(committed, title, files / done, cpu)
    results.add_part(committed, "server process", title, server_cpu)
    results.add_part(committed, "workers", title, workers_cpu)
    shutil.rmtree(root, ignore_errors=True)


# --- C-FIND ------------------------------------------------------------------------------


class FindClient:
    """One association, TCP_NODELAY on, timing each C-FIND round trip."""

    def __init__(self, port: int, called: str) -> None:
        quiet_identifiers()
        self.port, self.called = port, called
        self.reconnects = 0
        self.assoc = self._associate()

    def _associate(self) -> Any:
        ae = AE(ae_title="BENCH")
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 600
        assoc = ae.associate(
            "127.0.0.1", self.port, [build_context(STUDY_ROOT_FIND)], ae_title=self.called,
            evt_handlers=[(evt.EVT_CONN_OPEN, _nodelay)],
        )
        if not assoc.is_established:
            raise RuntimeError(f"cannot associate with {self.called} on port {self.port}")
        return assoc

    def find(self, keys: dict[str, str]) -> tuple[float, int]:
        try:
            return self._find(keys)
        except ConnectionError:  # the peer dropped the association: count it, go on
            self.reconnects += 1
            print(f"    ({self.called} dropped the association; reconnected)")
            self.assoc = self._associate()
            return self._find(keys)

    def _find(self, keys: dict[str, str]) -> tuple[float, int]:
        ds = Dataset()
        ds.QueryRetrieveLevel = "STUDY"
        for keyword in RETURN_KEYS:
            setattr(ds, keyword, "")
        for keyword, value in keys.items():
            setattr(ds, keyword, value)
        started = time.perf_counter()
        matches = 0
        for status, identifier in self.assoc.send_c_find(ds, STUDY_ROOT_FIND):
            if not status:
                raise ConnectionError("no C-FIND response")
            if int(status.Status) not in (0xFF00, 0xFF01, 0x0000):
                raise RuntimeError(f"C-FIND failed with status 0x{int(status.Status):04X}")
            matches += identifier is not None
        return time.perf_counter() - started, matches

    def close(self) -> None:
        self.assoc.release()


def _nodelay(event: Any) -> None:
    set_nodelay(event.assoc.dul.socket.socket)


def measure(client: FindClient, repeat: int) -> dict[str, tuple[float, int]]:
    out = {}
    for name, keys in QUERIES.items():
        client.find(keys)  # warm
        runs = [client.find(keys) for _ in range(repeat)]
        out[name] = (statistics.median(t for t, _ in runs), runs[0][1])
    return out


def _append(lk: lake.Lake, rows: Iterable[dict[str, Any]], batch: int = 20_000) -> None:
    iterator = iter(rows)
    while chunk := list(itertools.islice(iterator, batch)):
        lk.tables.append(INSTANCES, chunk)


def _tiny_instance(row: dict[str, Any]) -> bytes:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = row["SOPClassUID"]
    ds.file_meta.MediaStorageSOPInstanceUID = row["SOPInstanceUID"]
    for keyword in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID",
                    "PatientID", "Modality", "StudyDescription"):
        setattr(ds, keyword, row[keyword])
    ds.PatientName = f"ANON^{row['PatientID'][1:]}"
    ds.StudyDate = row["StudyDate"].strftime("%Y%m%d")
    ds.StudyTime = row["StudyTime"].replace(":", "")
    ds.SeriesNumber = row["SeriesNumber"]
    ds.InstanceNumber = row["InstanceNumber"]
    ds.Rows = ds.Columns = 8
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelData = bytes(128)
    buffer = io.BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def load_orthanc(pacs: Orthanc, n: int) -> float:
    """Upload ``n`` synthetic instances through REST (4 concurrent requests); returns /s."""
    started = time.perf_counter()

    def post(row: dict[str, Any]) -> None:
        pacs.post("/instances", _tiny_instance(row))

    with ThreadPoolExecutor(4) as pool:
        for _ in pool.map(post, synthetic_rows(n)):
            pass
    return n / (time.perf_counter() - started)


def _report(name: str, results: dict[str, tuple[float, int]]) -> None:
    cells = "".join(f"{t * 1000:>12.1f}ms ({m:>3})" for t, m in results.values())
    print(f"{name:<42}{cells}")


def _serve(lake_root: Path, vault: Path) -> tuple[subprocess.Popen[bytes], int]:
    """`lake serve dicom` as its own process, like Orthanc (no GIL shared with the client)."""
    port = free_port()
    lake_cli = str(Path(sys.executable).with_name("lake"))
    proc = subprocess.Popen(
        [lake_cli, "serve", "dicom", "--lake", str(lake_root), "--vault", str(vault),
         "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    wait_port(port, timeout=120)
    return proc, port


def bench_find(lake_n: int, orthanc_n: int, repeat: int, use_orthanc: bool, work: Path) -> None:
    print(f"\n== C-FIND at STUDY level: median of {repeat} (matches in brackets) ==")
    header = "".join(f"{name:>20}" for name in QUERIES)
    print(f"{'server (instances)':<42}{header}")
    sizes = sorted({orthanc_n, lake_n}) if use_orthanc else [lake_n]
    results: dict[str, dict[str, tuple[float, int]]] = {}
    if use_orthanc:
        pacs = Orthanc(work / "orthanc-find", modalities={"BENCH": ("127.0.0.1", 1)})
        for access in ("Always", "Never"):  # Orthanc's default, then its index-only mode
            pacs.storage_access_on_find = access
            with pacs:
                if access == "Always":
                    rate = load_orthanc(pacs, orthanc_n)
                    print(f"(Orthanc REST load, 4 concurrent requests: {orthanc_n:,} instances "
                          f"at {rate:,.0f}/s)")
                client = FindClient(pacs.dicom_port, "ORTHANC")
                try:
                    key = f"Orthanc {orthanc_n:,} (StorageAccessOnFind={access})"
                    results[key] = measure(client, repeat)
                    _report(key, results[key])
                finally:
                    client.close()
        shutil.rmtree(work / "orthanc-find", ignore_errors=True)
    root = work / "lake-find"
    lk = lake.init(root / "lake", vault=root / "vault")
    loaded = 0
    for size in sizes:
        started = time.perf_counter()
        _append(lk, synthetic_rows(size - loaded, start=loaded))
        load_s = time.perf_counter() - started
        loaded = size
        proc, port = _serve(root / "lake", root / "vault")
        try:
            client = FindClient(port, "LAKE")
            try:
                first, _ = client.find(QUERIES["PatientID exact"])
                key = f"lake {size:,}"
                results[key] = measure(client, repeat)
                _report(key, results[key])
                print(f"{'':<4}(rows written in {load_s:.1f} s; first query, building the "
                      f"index, {first * 1000:.0f} ms)")
            finally:
                client.close()
        finally:
            proc.terminate()
            proc.wait(timeout=120)
    if use_orthanc:
        print("speed-up (Orthanc median / lake median, >1: the lake is faster):")
        for name, res in results.items():
            if not name.startswith("lake"):
                continue
            for other, ores in results.items():
                if other.startswith("Orthanc"):
                    ratios = "".join(f"{ores[q][0] / res[q][0]:>19.2f}x" for q in QUERIES)
                    label = f"{name} vs {other.split(' (')[0]} {other.split('=')[1][:-1]}"
                    print(f"  {label:<40}{ratios}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=520)
    parser.add_argument("--lake-instances", type=int, default=100_000)
    parser.add_argument("--orthanc-instances", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=25)
    parser.add_argument("--no-orthanc", action="store_true")
    parser.add_argument("--skip-receive", action="store_true")
    parser.add_argument("--skip-find", action="store_true")
    parser.add_argument("--quick", action="store_true",
                        help="receive: 1 and 4 associations, Orthanc with TCP_NODELAY=1 only")
    parser.add_argument("--rounds", type=int, default=1, help="receive: interleaved rounds")
    args = parser.parse_args(argv)
    use_orthanc = not args.no_orthanc and shutil.which("Orthanc") is not None
    if not use_orthanc:
        print("Orthanc is not installed (or --no-orthanc): lake figures only")
    if shutil.which("storescu") is None:
        raise SystemExit("dcmtk's storescu is needed: apt-get install dcmtk")
    work = Path(tempfile.mkdtemp(prefix="bench-net-"))
    try:
        if not args.skip_receive:
            bench_receive(args.files, use_orthanc, work, quick=args.quick, rounds=args.rounds)
        if not args.skip_find:
            bench_find(args.lake_instances, args.orthanc_instances, args.repeat, use_orthanc,
                       work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

