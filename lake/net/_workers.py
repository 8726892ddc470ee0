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
that received them, with their length in one system call (``socket.sendmsg`` on a
duplicate of the pipe's socket, never a bare descriptor: :meth:`_Worker.submit`); its
outcome comes back pickled to one collector thread per worker.
``concurrent.futures.ProcessPoolExecutor`` would add a manager and a feeder thread, two
more hand-offs of every instance between threads of the server. What pydicom warns or
logs in a worker is captured there and only counted back.

A worker that dies (an input that segfaults its parser or exhausts memory) is replaced;
the instance it was working on counts a crash and is tried again, and after
:data:`MAX_CRASHES` it is given up (:class:`WorkerCrashError`: the intake quarantines it as
``deid_worker_crashed``); the other instances it held go to the other workers. A
replacement that cannot start (``Process.start()`` failing with ENOMEM/EAGAIN right after
the out-of-memory killer struck, or a worker that dies before it is ready) leaves its
place empty and is retried in the background, waiting longer after each failure, until
the pool is whole again or it closes; meanwhile the live workers take everything, and
while none is live an instance waits for a start for at most :data:`START_ATTEMPTS`
failed attempts, then fails (its receipt stays for the next start) rather than hanging.
Stopping never waits for a start, also one under way (a replacement may hang in its warm-up
on a swapping machine): readiness is awaited in short slices, a stop coming gives it up and
ends the half-started process (SIGTERM, then SIGKILL), and waiting instances fail at once.
With worker processes an instance is never de-identified in the server's own process.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import socket
import struct
import tempfile
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection
from pathlib import Path

from lake._capture import Captured, capture
from lake._errors import NetError
from lake.ingest import IngestContext, Outcome, process_bytes
from lake.store import resolve

__all__ = ["MAX_CRASHES", "START_ATTEMPTS", "DeidWorkers", "WorkerCrashError"]

_LOG = logging.getLogger(__name__)

_Counts = tuple[dict[str, int], dict[str, int]]
_LENGTH = struct.Struct("!i")  # multiprocessing.Connection's framing of a message
_ONE_SEND = 0x7FFFFFFF  # longer messages take Connection's own (8-byte length) framing


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

MAX_CRASHES = 2
"""Worker processes an instance may end (segfault, out of memory) before it is given up."""

START_ATTEMPTS = 3
"""Failed starts of a worker in a row an instance waits through, while no worker is live."""

READY_TIMEOUT = 600.0
"""Seconds a new worker may take to warm up (~1-3 s; far more on a swapping machine)."""

_READY_SLICE = 0.1
"""Seconds between two looks at closing while a new worker warms up."""

_STOP_TIMEOUT = 5.0
"""Seconds a worker that never became ready gets to end after SIGTERM, before SIGKILL."""

_JOIN_TIMEOUT = 60.0
"""Seconds :meth:`DeidWorkers.close` waits for the thread starting workers (it gives up
a start within :data:`_READY_SLICE`; this bound only guards against the unforeseen)."""

RETRY_CAP = 60.0
"""Seconds between two attempts to start a missing worker, at most."""


class WorkerCrashError(NetError):
    """De-identifying this instance ended a worker process :data:`MAX_CRASHES` times."""

    def __init__(self, crashes: int) -> None:
        super().__init__(f"de-identifying the instance ended a worker process {crashes} times")
        self.crashes = crashes


@dataclass(eq=False)
class _Job:
    data: bytes
    future: Future[Outcome]
    crashes: int = 0


_OnDeath = Callable[["_Worker", list[_Job]], None]


class _Worker:
    def __init__(self, context: IngestContext, index: int, captured: Captured,
                 on_death: _OnDeath) -> None:
        spawn = multiprocessing.get_context("spawn")
        self.conn, child = spawn.Pipe()
        # what submit() writes through: the same socket (the pipe is a socket pair; os.dup
        # is not inherited), the length and the bytes in one system call, I/O through a
        # socket object; closed with ``conn``, under ``send_lock``
        self.sender = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM,
                                    fileno=os.dup(self.conn.fileno()))
        self.process = spawn.Process(target=_serve, args=(child, context),
                                     name=f"lake-deid-{index}", daemon=True)
        self.process.start()
        child.close()
        self.index = index
        self.captured = captured
        self.on_death = on_death
        self.pending: deque[_Job] = deque()  # in the order sent
        self.send_lock = threading.Lock()  # one sender at a time (a send may wait for room)
        self.lock = threading.Lock()  # the pending queue and ``alive``, never held to send
        self.alive = True
        self.stopping = False
        self.collector = threading.Thread(target=self._collect, name=f"lake-deid-{index}",
                                          daemon=True)

    def wait_ready(self, closing: Callable[[], bool] = lambda: False,
                   timeout: float = READY_TIMEOUT) -> bool:
        """Wait for the worker's warm-up; False as soon as ``closing()`` (then :meth:`stop`).

        Raises
        ------
        NetError
            If the worker died while warming up, or is still warming up after ``timeout``.
        """
        try:
            waited = 0.0
            while not self.conn.poll(_READY_SLICE):  # in slices: a close never waits for it
                if closing():
                    return False
                waited += _READY_SLICE
                if waited >= timeout:
                    raise EOFError
            self.conn.recv()
        except (EOFError, OSError):
            raise NetError(
                "a de-identification worker process failed to start; see its error above, "
                "or run the server with workers=0"
            ) from None
        self.collector.start()
        return True

    def submit(self, job: _Job) -> bool:
        """Hand ``job`` to the worker; False if it is gone (the job is not its)."""
        with self.send_lock:
            with self.lock:
                if not self.alive:
                    return False
                self.pending.append(job)
            try:
                self._send(job.data)  # waits while the worker's pipe is full
            except OSError:
                with self.lock:
                    if job not in self.pending:
                        return True  # the worker's death already handed it on
                    self.pending.remove(job)
                return False
        return True

    def _send(self, data: bytes) -> None:
        """:func:`send_bytes` to the worker (called under :attr:`send_lock`)."""
        send_bytes(self.conn, self.sender, data)

    def close_pipe(self) -> None:
        """Close the server's end of the pipe (both its objects), under :attr:`send_lock`."""
        with self.send_lock:
            self.sender.close()
            self.conn.close()

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
                job = self.pending.popleft()
            if outcome is None:
                job.future.set_exception(NetError(f"de-identification failed ({extra})"))
            else:
                warnings, records = extra
                self.captured.merge(warnings, records)
                job.future.set_result(outcome)
        with self.lock:
            self.alive = False
            lost = list(self.pending)
            self.pending.clear()
        if not self.stopping:
            self.on_death(self, lost)

    def stop(self) -> None:
        self.stopping = True
        with self.send_lock, contextlib.suppress(OSError):  # already gone
            self._send(b"")
        if self.collector.ident is None:  # never ready: it may hang in its warm-up
            self.process.terminate()
            self.process.join(timeout=_STOP_TIMEOUT)
        else:  # it finishes what it holds, then ends
            if threading.current_thread() is not self.collector:
                self.collector.join(timeout=READY_TIMEOUT)
            self.process.join(timeout=60)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(timeout=_STOP_TIMEOUT)
        self.close_pipe()


class DeidWorkers:
    """Worker processes running :func:`lake.ingest.process_bytes` (module docstring).

    A worker process that dies (a segfault, the out-of-memory killer) is replaced by a
    new one. The instance it was working on (the oldest it held: it works on one at a
    time, in the order sent) counts a crash and is sent again like any instance: to the
    least busy live worker, behind whatever that worker already holds (if it kills that
    worker too, those others are sent on unharmed). After :data:`MAX_CRASHES` its future
    raises :class:`WorkerCrashError` (the intake quarantines it). The others the dead
    worker held are sent to the live workers unharmed. A crash is blamed on the instance
    the worker held when it died: when the out-of-memory killer ends a worker for another
    process's sake, a healthy instance can count a crash, and twice in a row lands it in
    quarantine (sealed: a steward re-runs it with ``lake quarantine release``).

    A replacement that cannot start leaves its place empty and is retried by a
    background thread (1 s, 2 s, 4 s ... at most :data:`RETRY_CAP` apart) until the pool
    is whole or closing. While no worker is live an instance waits for that thread
    through at most :data:`START_ATTEMPTS` failed starts in a row, then its future
    raises :class:`NetError`; as soon as a start succeeds, instances flow again, without
    a restart. With worker processes, an instance is never de-identified in the server's
    own process, which an input that crashes its worker would bring down. A worker that
    *hangs* on an instance (no crash) is not detected.

    Parameters
    ----------
    context : IngestContext
        The ingest context (``Ingestor.context``), sent once to each worker.
    workers : int
        Worker processes; 0 runs each instance in the calling thread instead.
    captured : Captured
        Receives the counts of what pydicom warned or logged while de-identifying.
    retry_delay : float
        Seconds before the first retry of a worker that could not start (doubling).
    """

    def __init__(self, context: IngestContext, workers: int, captured: Captured,
                 retry_delay: float = 1.0) -> None:
        self.context = context
        self.workers = workers
        self.captured = captured
        self.retry_delay = retry_delay
        self.crashes = 0
        """Worker processes that died while serving (each replaced)."""
        self.failed_starts = 0
        """Starts of a replacement worker that failed, in a row (0 once one succeeds)."""
        self._pool: list[_Worker] = []
        self._changed = threading.Condition()  # the pool, the retries and closing
        self._closing = False
        self._stopping = False  # give_up_waiting(): no job waits for a start any more
        self._spawned = 0
        self._filling = False  # a thread is starting the pool's missing workers
        self._filler: threading.Thread | None = None
        self._waiting: deque[tuple[_Job, int]] = deque()  # (job, failed_starts then)

    @property
    def running(self) -> bool:
        """Whether instances go to worker processes (else the calling thread)."""
        return bool(self._pool)

    def start(self) -> None:
        """Spawn the workers and wait until each is warmed up (~1-3 s).

        Raises
        ------
        NetError
            If a worker cannot start.
        """
        if self.workers <= 0 or self._pool:
            return
        self._closing = self._stopping = False
        pool: list[_Worker] = []
        try:
            for _ in range(self.workers):
                pool.append(self._new_worker())
            for worker in pool:
                worker.wait_ready()
        except (NetError, OSError) as exc:
            for worker in pool:
                worker.stop()
            if isinstance(exc, NetError):
                raise
            raise NetError(f"a de-identification worker process could not be started "
                           f"({exc.strerror or type(exc).__name__}); free memory or "
                           "processes, or run the server with workers=0") from None
        with self._changed:
            self._pool = pool
            self.failed_starts = 0

    def _new_worker(self) -> _Worker:
        with self._changed:
            self._spawned += 1
            index = self._spawned
        return _Worker(self.context, index, self.captured, self._on_death)

    def submit(self, data: bytes) -> Future[Outcome]:
        """De-identify ``data`` (its errors come out of the future's ``result()``)."""
        job = _Job(data, Future())
        if self.workers > 0:  # never here: an input that crashes a worker would crash us
            self._dispatch(job)
            return job.future
        try:  # no worker processes: on this thread
            with capture(into=self.captured):
                job.future.set_result(process_bytes(data, self.context))
        except Exception as exc:  # noqa: BLE001 - handed to the caller through the future
            job.future.set_exception(exc)
        return job.future

    def _dispatch(self, job: _Job) -> None:
        """To the least busy live worker; while none is, it waits for a replacement.

        Waiting does not hold the caller: the job is handed to the first worker that
        starts, or failed after :data:`START_ATTEMPTS` failed starts (or at closing).
        """
        while True:
            with self._changed:
                pool = list(self._pool)
            for worker in sorted(pool, key=_Worker.load):
                if worker.submit(job):
                    return
            with self._changed:
                if self._giving_up():
                    break
                if any(w.alive for w in self._pool):
                    continue  # one came alive meanwhile
                if self._pool or self._filling:  # a replacement is on its way
                    self._waiting.append((job, self.failed_starts))
                    return
                break  # never started
        _fail(job, "no de-identification worker process is running")

    def _pool_changed(self) -> None:
        """Under ``_changed``: wake waiters; a live worker takes the waiting jobs."""
        self._changed.notify_all()
        if not any(w.alive for w in self._pool):
            return
        waiting = list(self._waiting)
        self._waiting.clear()
        if waiting:  # dispatched from another thread: never under this lock
            threading.Thread(target=self._resend, args=([job for job, _ in waiting],),
                             name="lake-deid-resend", daemon=True).start()

    def _resend(self, jobs: list[_Job]) -> None:
        for job in jobs:
            self._dispatch(job)

    def _give_up_waiting(self) -> list[_Job]:
        """Under ``_changed``: the waiting jobs that waited through too many failed starts."""
        late = [job for job, since in self._waiting
                if self._closing or self.failed_starts - since >= START_ATTEMPTS]
        self._waiting = deque(w for w in self._waiting if w[0] not in late)
        return late

    def _on_death(self, dead: _Worker, lost: list[_Job]) -> None:
        """A worker died while serving: replace it, blame its current job, resend the rest.

        Whatever happens while replacing it (a replacement that cannot start: ENOMEM or
        EAGAIN right after the out-of-memory killer struck), the dead worker leaves the pool,
        a replacement is retried in the background, and the jobs it held are sent again or
        failed: none is left waiting forever. A stop coming gives up a start under way
        (:meth:`_replacement`), so :meth:`close` joining this thread never waits for a start.
        """
        with self._changed:
            self.crashes += 1
        if lost:
            lost[0].crashes += 1
        _LOG.error("a de-identification worker process ended (exit code %s) holding %d "
                   "instances; starting another", dead.process.exitcode, len(lost))
        replacement: _Worker | None = None
        try:
            dead.process.join(timeout=60)
            dead.close_pipe()  # no sender is writing to it (their writes fail: it is gone)
            replacement = self._replacement()
        finally:
            self._replace(dead, replacement)
            for job in lost:
                if job.crashes >= MAX_CRASHES:
                    job.future.set_exception(WorkerCrashError(job.crashes))
                else:
                    self._dispatch(job)

    def _replacement(self) -> _Worker | None:
        """A new worker, ready; None if it cannot start (logged, counted), or once a stop
        is coming (:meth:`give_up_waiting`, :meth:`close`: a start under way is given up)."""
        if self._giving_up():
            return None
        replacement: _Worker | None = None
        try:
            replacement = self._new_worker()
            if not replacement.wait_ready(self._giving_up):
                replacement.stop()  # closing: half-started, perhaps hanging in its warm-up
                return None
        except Exception as exc:  # noqa: BLE001 - any failure to start: retried later
            _LOG.error("a replacement de-identification worker process failed to start (%s)",
                       type(exc).__name__)
            if replacement is not None:
                with contextlib.suppress(Exception):
                    replacement.stop()
            with self._changed:
                self.failed_starts += 1
                late = self._give_up_waiting()
                self._changed.notify_all()
            for job in late:
                _fail(job, f"no de-identification worker process could be started "
                           f"({self.failed_starts} attempts in a row failed: short of memory "
                           "or processes?)")
            return None
        with self._changed:
            self.failed_starts = 0
        return replacement

    def _replace(self, dead: _Worker, replacement: _Worker | None) -> None:
        """Put ``replacement`` in ``dead``'s place in the pool, or drop ``dead`` from it."""
        with self._changed:
            index = self._pool.index(dead) if dead in self._pool else None
            if index is not None:
                if replacement is not None and not self._closing:
                    self._pool[index] = replacement
                    replacement = None
                else:
                    del self._pool[index]
                    self._fill_missing()
            self._pool_changed()
        if replacement is not None:  # closing meanwhile
            replacement.stop()

    def _giving_up(self) -> bool:
        """Whether a stop is coming: no start is begun or waited for any more."""
        return self._closing or self._stopping

    def _fill_missing(self) -> None:
        """Under ``_changed``: start the thread that fills the pool's empty places."""
        if self._giving_up() or self._filling:
            return
        self._filling = True
        self._filler = threading.Thread(target=self._fill, name="lake-deid-restart",
                                        daemon=True)
        self._filler.start()

    def _fill(self) -> None:
        """Start workers until the pool is whole again or closing, waiting longer each time."""
        while True:
            with self._changed:
                if self._giving_up() or len(self._pool) >= self.workers:
                    self._filling = False
                    self._changed.notify_all()
                    return
                failed = self.failed_starts
            if failed:
                delay = min(self.retry_delay * 2 ** (failed - 1), RETRY_CAP)
                with self._changed:
                    self._changed.wait_for(self._giving_up, timeout=delay)
                    if self._giving_up():
                        continue
            worker = self._replacement()
            if worker is None:
                continue
            with self._changed:
                if not self._closing and len(self._pool) < self.workers:
                    self._pool.append(worker)
                    self._pool_changed()
                    worker = None
            if worker is not None:
                worker.stop()

    def give_up_waiting(self) -> int:
        """A stop is coming: fail the jobs waiting for a worker to start, now and from now on
        (their receipts wait for the next start instead of a start under way or the retries;
        the live workers finish what they hold). How many failed now."""
        with self._changed:
            self._stopping = True
            late = [job for job, _ in self._waiting]
            self._waiting.clear()
            self._changed.notify_all()  # the filler gives up its retries
        for job in late:
            _fail(job, "the server stopped while no de-identification worker process was "
                       "running")
        return len(late)

    def close(self) -> None:
        """Finish what was submitted and stop the workers; never wait for a start.

        Jobs still waiting for a worker to start fail (their receipts stay journaled); a
        worker still starting (perhaps hanging in its warm-up) is stopped: SIGTERM, then
        SIGKILL after :data:`_STOP_TIMEOUT` seconds.
        """
        with self._changed:
            self._closing = True
            pool, self._pool = self._pool, []
            filler = self._filler
            late = self._give_up_waiting()
            self._changed.notify_all()
        for job in late:
            _fail(job, "the server stopped before a de-identification worker process started")
        if filler is not None and filler is not threading.current_thread():
            filler.join(timeout=_JOIN_TIMEOUT)  # it gives up a start under way at once
            if filler.is_alive():
                _LOG.error("the thread starting de-identification workers did not end; "
                           "stopping without it")
        with self._changed:
            self._filler = None
        for worker in pool:
            worker.stop()


def send_bytes(conn: Connection, sender: socket.socket, data: bytes) -> None:
    """``conn.send_bytes(data)`` in one system call; ``sender`` is ``conn``'s socket, dup'd.

    ``Connection.send_bytes`` writes the 4-byte length and, for more than 16 KiB, the
    bytes in two ``write`` calls: each gives the GIL away, and a worker waiting for its
    next instance wakes for the length, then waits again for the bytes. The same bytes go
    in one ``sendmsg`` (no joined copy) through ``sender``, a socket object, which refuses
    I/O once closed (never a bare descriptor, which another thread's close could let the
    system reuse meanwhile); a worker closes both only under its ``send_lock``, which its
    senders hold.

    Raises
    ------
    OSError
        If the other end is gone, or ours is closed.
    """
    if len(data) > _ONE_SEND or conn.closed:
        conn.send_bytes(data)  # Connection's framing for >2 GiB; raises if closed
        return
    parts = [memoryview(_LENGTH.pack(len(data))), memoryview(data)]
    while parts:
        sent = sender.sendmsg(parts)
        while parts and sent >= len(parts[0]):
            sent -= len(parts[0])
            parts.pop(0)
        if parts:
            parts[0] = parts[0][sent:]


def _fail(job: _Job, message: str) -> None:
    """Fail ``job`` with :class:`NetError` (its receipt waits for the next start)."""
    if not job.future.done():
        job.future.set_exception(NetError(f"{message}; the instance is retried at the next "
                                          "start"))
