"""An instance whose de-identification kills its worker process (a segfault, the OOM killer).

The worker processes are spawned with a loop that sends itself SIGSEGV on one marked
instance (the test's own worker target: nothing of it exists in the server's code), so
the crash is a real one of a real worker process. Shown: the server keeps receiving the
others, the marked instance ends in quarantine as ``deid_worker_crashed`` with its
sealed original, a restart does not replay it, nothing else is lost, and a crash's
leftover receipt of it is recovered through the workers instead of the server's process.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from multiprocessing.connection import Connection
from pathlib import Path

import pytest
from pydicom import dcmread

import lake
from lake._errors import NetError
from lake.ingest import Accepted, IngestContext
from lake.net import DicomServer, ServerConfig
from lake.net._intake import CRASHED
from lake.net._journal import ReceiptJournal
from lake.net._workers import MAX_CRASHES, START_ATTEMPTS, DeidWorkers, _serve
from tests.net_peers import dcmtk, require
from tests.series import write_ct_series

pytestmark = pytest.mark.network

_REAL_SERVE = _serve

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


def dying_worker(conn: Connection, context: IngestContext) -> None:
    """A worker process that ends before it is ready (as one killed while warming up)."""
    os._exit(3)


def _deid_workers(lk: lake.Lake, vault_dir: Path, workers: int,
                  retry_delay: float) -> DeidWorkers:
    from lake._capture import Captured
    from lake.ingest import Ingestor

    return DeidWorkers(Ingestor(lk, lk.secret(vault_dir)).context, workers, Captured(),
                       retry_delay=retry_delay)


def _done(future: Future[object]) -> BaseException | None:
    try:
        return future.exception(timeout=120)  # a hang guard, not a timing
    except FutureTimeout:
        pytest.fail("the job never completed")


def _until(condition: Callable[[], bool]) -> None:
    for _ in range(1200):  # a hang guard (2 min), not a timing
        if condition():
            return
        time.sleep(0.1)
    pytest.fail("the worker pool never came back")


def _instance(tmp_path: Path) -> bytes:
    return write_ct_series(tmp_path / "one", 1, patient_id="PID-BACK")[0].read_bytes()


def test_a_replacement_that_cannot_start_is_retried_and_the_lost_job_fails_meanwhile(
    crashing: None, lk: lake.Lake, vault_dir: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Review s19 N15: an OSError starting the replacement (ENOMEM/EAGAIN, likely right after
    the OOM killer struck) escaped the collector thread: the dead worker's jobs never
    completed and the dead worker stayed in the pool. Then (86ccddea) the pool stayed empty
    and every later instance failed until a restart: now the start is retried."""
    workers = _deid_workers(lk, vault_dir, 1, retry_delay=0.01)
    workers.start()
    try:
        real = workers._new_worker
        failures = START_ATTEMPTS + 1  # the lost job fails after START_ATTEMPTS

        def short_of_memory() -> object:
            nonlocal failures
            if failures:
                failures -= 1
                raise OSError(12, "Cannot allocate memory")
            return real()

        monkeypatch.setattr(workers, "_new_worker", short_of_memory)
        future = workers.submit(b"not DICOM " + BAD_UID.encode())  # kills the only worker
        error = _done(future)
        assert isinstance(error, NetError) and "could be started" in str(error)
        _until(lambda: len(workers._pool) == 1)  # no restart: the retries got one started
        assert failures == 0 and workers.failed_starts == 0 and workers.crashes == 1
        outcome = workers.submit(_instance(tmp_path)).result(timeout=120)
        assert isinstance(outcome, Accepted)
    finally:
        workers.close()


def test_a_worker_that_dies_while_starting_is_retried_and_close_never_hangs(
    lk: lake.Lake, vault_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Replacement workers that die before they are ready, again and again (real processes):
    jobs do not block their callers, wait for a bounded number of starts, and the pool
    comes back once a worker can start; close() completes while a start is being retried."""
    from lake.net import _workers

    workers = _deid_workers(lk, vault_dir, 1, retry_delay=0.01)
    workers.start()
    try:
        monkeypatch.setattr(_workers, "_serve", dying_worker)  # every new worker dies
        (worker,) = workers._pool
        worker.process.kill()  # the OOM killer strikes the live one
        _until(lambda: workers.failed_starts >= START_ATTEMPTS)
        assert workers._pool == [] and workers.crashes == 1
        # a job now waits for a worker (not on the caller's thread), then fails: bounded
        assert isinstance(_done(workers.submit(b"anything")), NetError)
        monkeypatch.setattr(_workers, "_serve", _REAL_SERVE)  # memory came back
        _until(lambda: len(workers._pool) == 1 and workers._pool[0].alive)
        assert isinstance(workers.submit(_instance(tmp_path)).result(timeout=120), Accepted)
        # a start retried forever: close() still completes and fails the waiting job
        monkeypatch.setattr(_workers, "_serve", dying_worker)
        workers.retry_delay = 3600.0
        workers._pool[0].process.kill()
        _until(lambda: workers.failed_starts >= 1)
        waiting = workers.submit(b"anything")
        assert not waiting.done()
    finally:
        closing = threading.Thread(target=workers.close)
        closing.start()
        closing.join(timeout=120)  # a hang guard, not a timing
        assert not closing.is_alive(), "close() hung"
    assert isinstance(_done(waiting), NetError)


def test_intake_close_never_waits_for_workers_that_cannot_start(
    lk: lake.Lake, vault_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An instance received while no worker can start is durable (journaled); stopping the
    server does not wait for the start retries: it fails that instance's de-identification,
    and the next start (workers able to start again) commits it: nothing is lost."""
    from lake.ingest import Ingestor
    from lake.net import _workers
    from lake.net._intake import Intake

    secret = lk.secret(vault_dir)
    intake = Intake(Ingestor(lk, secret, source="dicom-store"), secret, "dicom-store",
                    workers=1, exclusive=True)
    intake.start()
    workers = intake._workers
    monkeypatch.setattr(_workers, "_serve", dying_worker)
    workers.retry_delay = 3600.0  # left alone, the next retry is an hour away
    workers._pool[0].process.kill()
    _until(lambda: workers.failed_starts >= 1)
    received = intake.submit(_instance(tmp_path))  # durable when this returns
    assert not received.done()
    closing = threading.Thread(target=intake.close)
    closing.start()
    closing.join(timeout=120)  # a hang guard, not a timing
    assert not closing.is_alive(), "Intake.close() hung"
    assert isinstance(_done(received), NetError) and intake.failures == 1
    monkeypatch.setattr(_workers, "_serve", _REAL_SERVE)
    again = Intake(Ingestor(lk, secret, source="dicom-store"), secret, "dicom-store",
                   workers=1, exclusive=True)
    assert again.start() == 1  # the receipt, de-identified and committed now
    again.close()
    count, quarantined = _catalog(lk)
    assert (count, quarantined) == (1, [])


def hanging_worker(conn: Connection, context: IngestContext) -> None:
    """A worker process that hangs in its warm-up (a swapping machine)."""
    time.sleep(3600)


def _child_after(index: int) -> multiprocessing.process.BaseProcess:
    """The first live worker process started after worker ``index`` (its name's number)."""
    found: list[multiprocessing.process.BaseProcess] = []

    def started() -> bool:
        found[:] = [child for child in multiprocessing.active_children()
                    if child.name.startswith("lake-deid-")
                    and int(child.name.rsplit("-", 1)[1]) > index]
        return bool(found)

    _until(started)
    return found[0]


def _kill_workers_and_join(closing: threading.Thread) -> None:
    """Whatever a hang test saw: no worker process is left hanging for an hour, and the
    thread that was closing is given time to end."""
    for child in multiprocessing.active_children():
        if child.name.startswith("lake-deid-"):
            child.kill()
    if closing.is_alive():
        closing.join(timeout=60)


@pytest.mark.parametrize("start", ["replacement", "retry"])
def test_close_never_waits_for_a_worker_hanging_in_its_warm_up(
    start: str, lk: lake.Lake, vault_dir: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Review s20 S11: close() waited (up to READY_TIMEOUT, 600 s) for a replacement worker
    hanging in its warm-up, the case that timeout exists for (a swapping machine after the
    OOM killer struck): the collector or the filler thread sat in wait_ready(). Real worker
    processes: the first replacement hangs, or a retry after a failed start does. close()
    completes and the half-started worker process is gone."""
    from lake.net import _workers

    workers = _deid_workers(lk, vault_dir, 1, retry_delay=0.01)
    workers.start()
    closing = threading.Thread(target=workers.close, name="closing", daemon=True)
    hanging: multiprocessing.process.BaseProcess | None = None
    try:
        if start == "retry":  # a start has failed: the filler thread retries
            monkeypatch.setattr(_workers, "_serve", dying_worker)
            workers._pool[0].process.kill()
            _until(lambda: workers.failed_starts >= 1)
        after = workers._spawned  # workers started after this one hang
        monkeypatch.setattr(_workers, "_serve", hanging_worker)
        if start == "replacement":
            workers._pool[0].process.kill()  # the OOM killer strikes the live one
        hanging = _child_after(after)
        waiting = workers.submit(b"anything")  # waits for the start under way
        closing.start()
        closing.join(timeout=30)  # a hang guard, not a timing (close() takes ~0.1 s)
        hung = closing.is_alive()
        left = hanging.is_alive()
    finally:
        _kill_workers_and_join(closing)
    assert not hung, "close() waited for a worker starting"
    assert not left and hanging.exitcode is not None, "the half-started worker was left"
    assert isinstance(_done(waiting), NetError)


def test_intake_close_never_waits_for_a_worker_hanging_in_its_warm_up(
    lk: lake.Lake, vault_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Review s20 S11, the server's stop: an instance received while the only worker's
    replacement hangs in its warm-up waits for that start; Intake.close() fails it (its
    receipt stays journaled) instead of waiting, and stops the half-started worker."""
    from lake.ingest import Ingestor
    from lake.net import _workers
    from lake.net._intake import Intake

    secret = lk.secret(vault_dir)
    intake = Intake(Ingestor(lk, secret, source="dicom-store"), secret, "dicom-store",
                    workers=1, exclusive=True)
    intake.start()
    workers = intake._workers
    after = workers._spawned
    monkeypatch.setattr(_workers, "_serve", hanging_worker)
    workers._pool[0].process.kill()
    closing = threading.Thread(target=intake.close, name="closing", daemon=True)
    try:
        hanging = _child_after(after)
        received = intake.submit(_instance(tmp_path))  # durable when this returns
        closing.start()
        closing.join(timeout=30)  # a hang guard, not a timing
        hung = closing.is_alive()
        left = hanging.is_alive()
    finally:
        _kill_workers_and_join(closing)
    assert not hung, "Intake.close() waited for a worker starting"
    assert not left, "the half-started worker was left"
    assert isinstance(_done(received), NetError) and intake.failures == 1
    assert len(_receipts(lk)) == 1  # kept for the next start
