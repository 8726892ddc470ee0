"""An instance whose de-identification kills its worker process (a segfault, the OOM killer).

The worker processes are spawned with a loop that sends itself SIGSEGV on one marked
instance (the test's own worker target: nothing of it exists in the server's code), so
the crash is a real one of a real worker process. Shown: the server keeps receiving the
others, the marked instance ends in quarantine as ``deid_worker_crashed`` with its
sealed original, a restart does not replay it, nothing else is lost, and a crash's
leftover receipt of it is recovered through the workers instead of the server's process.
"""

from __future__ import annotations

import os
import signal
from multiprocessing.connection import Connection
from pathlib import Path

import pytest
from pydicom import dcmread

import lake
from lake.ingest import IngestContext
from lake.net import DicomServer, ServerConfig
from lake.net._intake import CRASHED
from lake.net._journal import ReceiptJournal
from lake.net._workers import MAX_CRASHES
from tests.net_peers import dcmtk, require
from tests.series import write_ct_series

pytestmark = pytest.mark.network

BAD_UID = "1.2.826.0.1.3680043.8.498.4242424242"


def crashing_worker(conn: Connection, context: IngestContext) -> None:
    """The worker's loop, except that the instance with ``BAD_UID`` segfaults the process."""
    from lake.net import _workers

    real = _workers.process_bytes

    def process(data: bytes, ctx: IngestContext) -> object:
        if BAD_UID.encode() in data:
            os.kill(os.getpid(), signal.SIGSEGV)
        return real(data, ctx)

    _workers.process_bytes = process  # type: ignore[assignment]
    _workers._serve(conn, context)


@pytest.fixture
def crashing(monkeypatch: pytest.MonkeyPatch) -> None:
    # the target spawned worker processes run (pickled by name: the child imports this module)
    monkeypatch.setattr("lake.net._workers._serve", crashing_worker)


def _series(folder: Path, n: int, patient: str, bad: int | None = None) -> list[Path]:
    paths = write_ct_series(folder, n, patient_id=patient)
    if bad is not None:
        ds = dcmread(paths[bad])
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = BAD_UID
        ds.save_as(paths[bad], enforce_file_format=True)
    return paths


def _store(server: DicomServer, folder: Path) -> None:
    result = dcmtk("storescu", "-aec", "LAKE", "+sd", "127.0.0.1", str(server.port), folder)
    assert result.returncode == 0, result.stderr
    assert "Store Failed" not in result.stderr


def _catalog(lk: lake.Lake) -> tuple[int, list[tuple[str, str]]]:
    lk.refresh()
    (count,), = lk.sql("SELECT count(*) FROM instances").fetchall()
    quarantined = lk.sql("SELECT reason, message FROM quarantine").fetchall()
    return count, quarantined


def _receipts(lk: lake.Lake) -> list[Path]:
    return list((Path(lk.location.path) / "spool" / "dicom-store" / "receipts").glob("*.journal"))


def test_worker_crash_is_quarantined_and_the_server_goes_on(
    crashing: None, lk: lake.Lake, vault_dir: Path, tmp_path: Path
) -> None:
    require("storescu")
    _series(tmp_path / "first", 6, "PID-CRASH-1", bad=3)
    _series(tmp_path / "after", 4, "PID-CRASH-2")
    config = ServerConfig(port=0, aet="LAKE", workers=2)
    with DicomServer(lk, lk.secret(vault_dir), config) as server:
        _store(server, tmp_path / "first")  # all acknowledged: durable as received
        server.flush()
        workers = server.intake._workers
        assert workers.crashes == MAX_CRASHES  # tried again once in a new worker, then given up
        assert len(workers._pool) == 2 and all(w.alive for w in workers._pool)  # replaced
        _store(server, tmp_path / "after")  # and it goes on receiving
        server.flush()
        assert server.receiver.failures == 0
    count, quarantined = _catalog(lk)
    assert count == 5 + 4  # nothing else lost
    assert [reason for reason, _ in quarantined] == [CRASHED]
    assert "PID-CRASH" not in quarantined[0][1]
    assert _receipts(lk) == []  # committed: the receipt is gone
    # a restart replays nothing
    with DicomServer(lk, lk.secret(vault_dir), config) as again:
        assert again.report.recovered == 0
    assert _catalog(lk) == (count, quarantined)
    # the quarantined original is the instance as received, sealed
    (object_key,), = lk.sql("SELECT object_key FROM quarantine").fetchall()
    sealed = (Path(lk.location.path) / object_key).read_bytes()
    assert BAD_UID.encode() not in sealed


def test_leftover_receipt_that_crashes_is_recovered_through_the_workers(
    crashing: None, lk: lake.Lake, vault_dir: Path, tmp_path: Path
) -> None:
    require("storescu")
    good = _series(tmp_path / "left", 3, "PID-LEFT-1", bad=1)
    # a server killed after journaling these three, before de-identifying them
    journal = ReceiptJournal(Path(lk.location.path) / "spool" / "dicom-store" / "receipts",
                             lk.secret(vault_dir))
    for path in good:
        journal.append(path.read_bytes())
    journal.close()
    _series(tmp_path / "more", 2, "PID-LEFT-2")
    config = ServerConfig(port=0, aet="LAKE", workers=2)
    # before: de-identified in the server's own process at start (a real crash there would
    # end every start); now in the workers: the marked one crashes them, the server starts
    with DicomServer(lk, lk.secret(vault_dir), config) as server:
        assert server.report.recovered == 3
        assert server.intake._workers.crashes == MAX_CRASHES
        _store(server, tmp_path / "more")
        server.flush()
    count, quarantined = _catalog(lk)
    assert count == 2 + 2
    assert [reason for reason, _ in quarantined] == [CRASHED]
    assert _receipts(lk) == []
    with DicomServer(lk, lk.secret(vault_dir), config) as again:
        assert again.report.recovered == 0  # not replayed at every start
        assert again.intake._workers.crashes == 0
    assert _catalog(lk) == (count, quarantined)


def test_a_replacement_that_cannot_start_fails_the_lost_jobs_instead_of_hanging(
    crashing: None, lk: lake.Lake, vault_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review s19 N15: an OSError starting the replacement (ENOMEM/EAGAIN, likely right after
    the OOM killer struck) escaped the collector thread: the dead worker's jobs never
    completed and the dead worker stayed in the pool."""
    from concurrent.futures import TimeoutError as FutureTimeout

    from lake._capture import Captured
    from lake._errors import NetError
    from lake.ingest import Ingestor
    from lake.net._workers import DeidWorkers

    workers = DeidWorkers(Ingestor(lk, lk.secret(vault_dir)).context, 1, Captured())
    workers.start()
    try:
        def cannot_start() -> object:
            raise OSError(12, "Cannot allocate memory")

        monkeypatch.setattr(workers, "_new_worker", cannot_start)
        future = workers.submit(b"not DICOM " + BAD_UID.encode())  # kills the only worker
        try:
            error = future.exception(timeout=120)  # a hang guard, not a timing
        except FutureTimeout:
            pytest.fail("the dead worker's job never completed")
        assert isinstance(error, NetError)  # no worker left to send it to
        assert workers._pool == []
        assert isinstance(workers.submit(b"next").exception(timeout=120), NetError)
    finally:
        workers.close()
