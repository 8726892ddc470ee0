"""De-identification of received instances in worker processes.

``lake serve dicom`` journals each instance and acknowledges it; the de-identification
(parsing, the profile, pixel blob, encodings: ~2-3 ms of CPU per small instance here)
runs in worker processes, so it uses the other cores and, above all, never holds the
server's GIL: on threads of the server's own process, every system call of the receive
path (``recv``, ``send``, ``select``, ``fdatasync``) gave the GIL away to a de-identifying
thread that kept it for up to the 5 ms switch interval, and one association crawled.

Each worker is spawned (never forked: delta-rs must not be forked) at start-up with the
ingest context (profile, keys) and runs one instance through the whole path into a
throw-away folder, so imports and pydicom's lazy tables are paid before the first peer.
An instance's bytes go down the worker's pipe as they are (no pickling) from the thread
that received them; its outcome comes back pickled to one collector thread per worker.
``concurrent.futures.ProcessPoolExecutor`` would add a manager and a feeder thread, two
more hand-offs of every instance between threads of the server. What pydicom warns or
logs in a worker is captured there and only counted back.

A worker that dies fails the instances it holds (their receipts stay in the journal, so
the next start re-makes them); the others go on, and with none left instances are
de-identified on the receiving thread.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import tempfile
import threading
from collections import deque
from concurrent.futures import Future
from dataclasses import replace
from multiprocessing.connection import Connection
from pathlib import Path

from lake._capture import Captured, capture
from lake._errors import NetError
from lake.ingest import IngestContext, Outcome, process_bytes
from lake.store import resolve

__all__ = ["DeidWorkers"]

_LOG = logging.getLogger(__name__)

_Counts = tuple[dict[str, int], dict[str, int]]


# --- in the worker process ------------------------------------------------------------------


def _serve(conn: Connection, context: IngestContext) -> None:
    """The worker's loop: bytes in, ``(outcome, counts)`` or ``(None, error type)`` out."""
    _warm_up(context)
    conn.send(("ready", None))
    while True:
        try:
            data = conn.recv_bytes()
        except EOFError:
            return
        if not data:  # the server is stopping
            return
        try:
            with capture() as captured:
                outcome = process_bytes(data, context)
            conn.send((outcome, (captured.warnings, captured.records)))
        except Exception as exc:  # noqa: BLE001 - reported by type; the receipt is retried
            conn.send((None, type(exc).__name__))


def _warm_up(context: IngestContext) -> None:
    """Run one instance through the whole path, into a throw-away folder, not the lake.

    A fresh process pays ~1 s of CPU on its first instances (imports, pydicom's
    dictionaries, the profile's compiled rules); paid here, at start-up.
    """
    from pydicom.data import get_testdata_file

    sample = get_testdata_file("CT_small.dcm")
    if sample is None:
        return
    data = Path(sample).read_bytes()
    with tempfile.TemporaryDirectory(prefix="lake-warm-up-") as folder, capture():
        scratch = replace(context, location=resolve(folder))
        for _ in range(3):
            process_bytes(data, scratch)


# --- in the server ----------------------------------------------------------------------


class _Worker:
    def __init__(self, context: IngestContext, index: int, captured: Captured) -> None:
        spawn = multiprocessing.get_context("spawn")
        self.conn, child = spawn.Pipe()
        self.process = spawn.Process(target=_serve, args=(child, context),
                                     name=f"lake-deid-{index}", daemon=True)
        self.process.start()
        child.close()
        self.captured = captured
        self.pending: deque[Future[Outcome]] = deque()  # in the order sent
        self.send_lock = threading.Lock()  # one sender at a time (a send may wait for room)
        self.lock = threading.Lock()  # the pending queue and ``alive``, never held to send
        self.alive = True
        self.collector = threading.Thread(target=self._collect, name=f"lake-deid-{index}",
                                          daemon=True)

    def wait_ready(self) -> None:
        try:
            self.conn.recv()
        except EOFError:
            raise NetError(
                "a de-identification worker process failed to start; see its error above, "
                "or run the server with workers=0"
            ) from None
        self.collector.start()

    def submit(self, data: bytes) -> Future[Outcome] | None:
        """Hand ``data`` to the worker; None if it is gone."""
        future: Future[Outcome] = Future()
        with self.send_lock:
            with self.lock:
                if not self.alive:
                    return None
                self.pending.append(future)
            try:
                self.conn.send_bytes(data)  # waits while the worker's pipe is full
            except OSError:
                with self.lock:
                    if future in self.pending:
                        self.pending.remove(future)
                return None
        return future

    def load(self) -> int:
        return len(self.pending) if self.alive else 1 << 30

    def _collect(self) -> None:
        with capture(into=self.captured):  # unpickling outcomes: nothing should warn, but
            self._collect_results()

    def _collect_results(self) -> None:
        while True:
            try:
                outcome, extra = self.conn.recv()
            except (EOFError, OSError):
                break
            with self.lock:
                future = self.pending.popleft()
            if outcome is None:
                future.set_exception(NetError(f"de-identification failed ({extra})"))
            else:
                warnings, records = extra
                self.captured.merge(warnings, records)
                future.set_result(outcome)
        with self.lock:
            self.alive = False
            lost = list(self.pending)
            self.pending.clear()
        for future in lost:  # their receipts stay journaled: the next start re-makes them
            future.set_exception(NetError("the de-identification worker process ended"))
        if lost:
            _LOG.error("a de-identification worker process ended with %d instances", len(lost))

    def stop(self) -> None:
        with self.send_lock, contextlib.suppress(OSError):  # already gone
            self.conn.send_bytes(b"")
        self.collector.join(timeout=600)
        self.process.join(timeout=60)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.conn.close()


class DeidWorkers:
    """Worker processes running :func:`lake.ingest.process_bytes` (module docstring).

    Parameters
    ----------
    context : IngestContext
        The ingest context (``Ingestor.context``), sent once to each worker.
    workers : int
        Worker processes; 0 runs each instance in the calling thread instead.
    captured : Captured
        Receives the counts of what pydicom warned or logged while de-identifying.
    """

    def __init__(self, context: IngestContext, workers: int, captured: Captured) -> None:
        self.context = context
        self.workers = workers
        self.captured = captured
        self._pool: list[_Worker] = []

    def start(self) -> None:
        """Spawn the workers and wait until each is warmed up (~1-3 s).

        Raises
        ------
        NetError
            If a worker cannot start.
        """
        if self.workers <= 0 or self._pool:
            return
        self._pool = [_Worker(self.context, i, self.captured) for i in range(self.workers)]
        try:
            for worker in self._pool:
                worker.wait_ready()
        except NetError:
            self.close()
            raise

    def submit(self, data: bytes) -> Future[Outcome]:
        """De-identify ``data`` (its errors come out of the future's ``result()``)."""
        for worker in sorted(self._pool, key=_Worker.load):  # the least busy first
            future = worker.submit(data)
            if future is not None:
                return future
        result: Future[Outcome] = Future()  # no worker (left): on this thread
        try:
            with capture(into=self.captured):
                result.set_result(process_bytes(data, self.context))
        except Exception as exc:  # noqa: BLE001 - handed to the caller through the future
            result.set_exception(exc)
        return result

    def close(self) -> None:
        """Finish what was submitted and stop the workers."""
        pool, self._pool = self._pool, []
        for worker in pool:
            worker.stop()
