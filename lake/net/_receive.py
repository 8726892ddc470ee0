"""Receiving instances over C-STORE: make them durable, acknowledge, de-identify, commit.

Two receivers share the size checks, the counts and the stop gate:

- :class:`Receiver` de-identifies each instance, spools its outcome durably (one file per
  instance) and then answers: ``lake pull`` (C-STORE sub-operations of C-GET, or the
  temporary SCP a C-MOVE targets) and ``lake serve dicom`` on a lake in an object store.
- :class:`JournalReceiver` (``lake serve dicom`` on a local lake) first seals the instance
  as received into the :class:`~lake.net._journal.ReceiptJournal` (one append and a shared
  ``fdatasync``), then either answers at once and de-identifies on worker threads
  (:attr:`Acknowledge.RECEIPT`, the default) or de-identifies first and reports the
  outcome (:attr:`Acknowledge.OUTCOME`). Outcomes are committed in batches; a receipt is
  dropped once its outcome is in the catalog, and a start-up re-makes every outcome a crash
  left uncommitted from the journal.
"""

from __future__ import annotations

import enum
import io
import logging
import threading
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from functools import partial
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom.dsutils import encode_file_meta

from lake._capture import Captured, capture
from lake._errors import NetError
from lake.ingest import Accepted, BatchResult, Ingestor, Outcome
from lake.net._association import DataSetBuffer
from lake.net._journal import Receipt, ReceiptJournal
from lake.net._spool import Committer, SpoolEntry
from lake.net._workers import DeidWorkers

__all__ = ["Acknowledge", "JournalReceiver", "ReceiveStats", "Receiver", "StoreStatus"]

_LOG = logging.getLogger(__name__)


class StoreStatus(enum.IntEnum):
    """C-STORE statuses the lake answers (PS3.4 B.2.3)."""

    SUCCESS = 0x0000
    OUT_OF_RESOURCES = 0xA700
    """Too large, too much arriving at once, the receive spool cannot be written, or the
    server is stopping."""
    DATASET_MISMATCH = 0xA900
    """No SOP identity (missing UIDs) or a DICOMDIR sent as an instance."""
    CANNOT_UNDERSTAND = 0xC000
    """Not parseable: empty, not DICOM, truncated, malformed pixel module."""
    REFUSED_BY_PROFILE = 0xC001
    """The de-identification profile refuses the instance (e.g. burned-in annotation)."""


_PARSE_REASONS = {
    "empty": StoreStatus.CANNOT_UNDERSTAND,
    "not_dicom": StoreStatus.CANNOT_UNDERSTAND,
    "unreadable": StoreStatus.CANNOT_UNDERSTAND,
    "truncated": StoreStatus.CANNOT_UNDERSTAND,
    "bad_image": StoreStatus.CANNOT_UNDERSTAND,
    "processing_error": StoreStatus.CANNOT_UNDERSTAND,
    "dicomdir": StoreStatus.DATASET_MISMATCH,
    "missing_uid": StoreStatus.DATASET_MISMATCH,
}


_PREAMBLE = b"\x00" * 128 + b"DICM"


def _part10(event: Any, stream: io.BytesIO) -> bytes:
    """The received instance as a Part-10 file: file meta from the association, then the
    data set exactly as sent.

    One copy of the data set (pynetdicom's ``encoded_dataset`` makes two), and the
    received buffer is emptied once copied, so an instance costs its size once here.
    """
    with stream.getbuffer() as view:
        data = b"".join((_PREAMBLE, encode_file_meta(event.file_meta), view))
    stream.seek(0)
    stream.truncate()
    return data


def _status(code: StoreStatus, comment: str | None = None) -> Dataset:
    ds = Dataset()
    ds.Status = int(code)
    if comment:
        ds.ErrorComment = comment[:64]
    return ds


@dataclass
class ReceiveStats:
    """Counts of received instances (no identifiers)."""

    received: int = 0
    accepted: int = 0
    quarantined: int = 0
    too_large: int = 0
    busy: int = 0
    """Refused (Out of Resources) because the receive memory budget was spent."""
    spool_failures: int = 0
    bytes_in: int = 0


class _Gate:
    """Counts, and the stop gate: refuse new instances, wait for those in progress."""

    def __init__(self, max_instance_bytes: int) -> None:
        self.max_instance_bytes = max_instance_bytes
        self.stats = ReceiveStats()
        self._stats_lock = threading.Lock()
        self._accepting = True
        self._active = 0
        self._idle = threading.Condition()

    def _count(self, **increments: int) -> None:
        with self._stats_lock:
            for name, value in increments.items():
                setattr(self.stats, name, getattr(self.stats, name) + value)

    def _stop_accepting(self) -> None:
        with self._idle:
            self._accepting = False
            while self._active:
                self._idle.wait()

    def handle(self, event: Any, tag: str | None = None) -> Dataset:
        """The EVT_C_STORE handler body: returns the status dataset to send.

        A success status is returned only once the instance is durable.
        """
        stream = event.request.DataSet
        with self._idle:
            if not self._accepting:
                _release(stream)
                return _status(StoreStatus.OUT_OF_RESOURCES, "the lake is shutting down")
            self._active += 1
        try:
            refusal = self._check_size(stream)
            if refusal is not None:
                _release(stream)
                return refusal
            return self._store(event, stream, tag)  # releases the stream's budget when done
        finally:
            with self._idle:
                self._active -= 1
                self._idle.notify_all()

    def _check_size(self, stream: io.BytesIO) -> Dataset | None:
        if isinstance(stream, DataSetBuffer):  # bounded while it streamed in
            size, overflow = stream.size, stream.overflow
        else:
            size, overflow = len(stream.getbuffer()), None
        self._count(received=1, bytes_in=size)
        if overflow == "busy":
            self._count(busy=1)
            return _status(StoreStatus.OUT_OF_RESOURCES,
                           "the lake is receiving too much at once; retry later")
        if overflow is not None or size > self.max_instance_bytes:
            self._count(too_large=1)
            return _status(StoreStatus.OUT_OF_RESOURCES, "instance larger than the lake accepts")
        return None

    def _store(self, event: Any, stream: io.BytesIO, tag: str | None) -> Dataset:
        raise NotImplementedError

    def _counted(self, outcome: Outcome) -> Dataset:
        """Count ``outcome``; the status that reports it."""
        self._count(**{"accepted" if isinstance(outcome, Accepted) else "quarantined": 1})
        return self._status_of(outcome)

    @staticmethod
    def _status_of(outcome: Outcome) -> Dataset:
        if isinstance(outcome, Accepted):
            return _status(StoreStatus.SUCCESS)
        reason = str(outcome.record.get("reason") or "rejected")
        code = _PARSE_REASONS.get(reason, StoreStatus.REFUSED_BY_PROFILE)
        return _status(code, f"quarantined: {reason}")


class Receiver(_Gate):
    """Turns each received C-STORE into a durable, de-identified outcome, then acknowledges.

    The outcome (the de-identified row or the quarantine record) is made durable in the
    spool before the status is returned. Used by ``lake pull`` and by ``lake serve dicom``
    on a lake in an object store.

    Parameters
    ----------
    ingestor : Ingestor
        De-identifies and stores pixels (:meth:`Ingestor.process`).
    committer : Committer
        Spools outcomes durably and commits them in batches.
    max_instance_bytes : int
        Larger datasets are refused with Out of Resources.
    """

    def __init__(self, ingestor: Ingestor, committer: Committer, max_instance_bytes: int) -> None:
        super().__init__(max_instance_bytes)
        self.ingestor = ingestor
        self.committer = committer

    def close(self) -> None:
        """Refuse further instances (Out of Resources) and wait for those in progress."""
        self._stop_accepting()

    def _store(self, event: Any, stream: io.BytesIO, tag: str | None) -> Dataset:
        data = _part10(event, stream)
        # Ingestor.process is thread-safe: associations process their instances concurrently.
        try:
            outcome = self.ingestor.process(data)
        finally:
            _release(stream)
        del data
        try:
            self.committer.submit(outcome, tag)
        except NetError:
            self._count(spool_failures=1)
            return _status(StoreStatus.OUT_OF_RESOURCES, "the receive spool cannot be written")
        return self._counted(outcome)


class Acknowledge(enum.StrEnum):
    """When ``lake serve dicom`` answers a C-STORE."""

    RECEIPT = "receipt"
    """Once the instance as received is durable (sealed) in the receipt journal; it is
    de-identified and committed in the background, and a refusal is quarantined with its
    reason but not reported to the sender."""
    OUTCOME = "outcome"
    """Once it is also de-identified: refusals are reported per instance (slower)."""


_QUEUED = 256  # instances acknowledged but not de-identified yet, at most (then senders wait)


class JournalReceiver(_Gate):
    """C-STORE on a local lake: sealed receipt first, then de-identification (module docstring).

    Parameters
    ----------
    ingestor : Ingestor
        Its context de-identifies (in the workers); its commit is the committer's.
    committer : Committer
        Commits outcomes in batches; its ``on_committed`` must be :meth:`committed`.
    journal : ReceiptJournal
        Where received instances are durable before acknowledgement.
    max_instance_bytes : int
        Larger datasets are refused with Out of Resources.
    acknowledge : Acknowledge
        When the success status is sent.
    captured : Captured
        Counts what pydicom warns or logs while de-identifying.
    workers : int
        De-identification worker processes (0: on the association's own thread).
    """

    def __init__(
        self,
        ingestor: Ingestor,
        committer: Committer,
        journal: ReceiptJournal,
        max_instance_bytes: int,
        *,
        acknowledge: Acknowledge = Acknowledge.RECEIPT,
        captured: Captured | None = None,
        workers: int = 2,
    ) -> None:
        super().__init__(max_instance_bytes)
        self.ingestor = ingestor
        self.committer = committer
        self.journal = journal
        self.acknowledge = acknowledge
        self.captured = captured or Captured()
        self.failures = 0
        self.workers = DeidWorkers(ingestor.context, workers, self.captured)
        self._slots = threading.BoundedSemaphore(_QUEUED)
        self._inflight = 0
        self._settled = threading.Condition()

    def committed(self, entries: Sequence[SpoolEntry], batch: BatchResult) -> None:
        """The committer's ``on_committed``: the journal may drop these receipts."""
        self.journal.committed([_receipt(e.tag) for e in entries if e.tag])

    def recover(self) -> int:
        """De-identify and commit every instance a previous run journaled; returns how many."""
        done = 0
        with capture(into=self.captured):
            for receipt, data in self.journal.leftovers():
                self.committer.add(self.ingestor.process(data), str(receipt))
                done += 1
        self.committer.flush()
        return done

    def start(self) -> None:
        """Start the de-identification workers."""
        self.workers.start()

    def close(self) -> None:
        """Refuse further instances, wait for those in progress, de-identify all queued."""
        self._stop_accepting()
        self.drain()
        self.workers.close()

    @property
    def queued(self) -> int:
        """Instances received and not de-identified yet."""
        with self._settled:
            return self._inflight

    def drain(self) -> None:
        """Wait until every instance received so far is de-identified (and queued to commit)."""
        with self._settled:
            while self._inflight:
                self._settled.wait()

    def _store(self, event: Any, stream: io.BytesIO, tag: str | None) -> Dataset:
        data = _part10(event, stream)
        buffer = stream if isinstance(stream, DataSetBuffer) else None
        try:
            receipt = self.journal.append(data)
        except NetError:
            _release(stream)
            self._count(spool_failures=1)
            return _status(StoreStatus.OUT_OF_RESOURCES, "the receive journal cannot be written")
        # durable. At most _QUEUED wait for de-identification: beyond, the sender waits (and
        # their bytes stay counted in the receive budget until de-identified).
        self._slots.acquire()
        with self._settled:
            self._inflight += 1
        future = self.workers.submit(data)
        del data
        if self.acknowledge is Acknowledge.OUTCOME:
            outcome = self._finish(receipt, buffer, future)
            if outcome is None:
                return _status(StoreStatus.OUT_OF_RESOURCES,
                               "de-identification failed; retry later")
            return self._status_of(outcome)
        future.add_done_callback(partial(self._finish, receipt, buffer))
        return _status(StoreStatus.SUCCESS)

    def _finish(self, receipt: Receipt, buffer: DataSetBuffer | None,
                future: Future[Outcome]) -> Outcome | None:
        try:
            outcome = future.result()
            self.committer.add(outcome, str(receipt))
            self._counted(outcome)
            return outcome
        except Exception as exc:  # noqa: BLE001 - the receipt stays journaled: next start retries
            self.failures += 1
            _LOG.error("de-identifying a received instance failed (%s); it stays in the "
                       "receive journal and is retried at the next start", type(exc).__name__)
            return None
        finally:
            if buffer is not None:
                buffer.release()
            self._slots.release()
            with self._settled:
                self._inflight -= 1
                self._settled.notify_all()


def _release(stream: io.BytesIO) -> None:
    """Give a received data set's bytes back to the server's budget (idempotent)."""
    if isinstance(stream, DataSetBuffer):
        stream.release()


def _receipt(tag: str) -> Receipt:
    segment, record = tag.split(":")
    return Receipt(int(segment), int(record))
