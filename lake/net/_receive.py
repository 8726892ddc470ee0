"""Receiving instances over C-STORE: make them durable, acknowledge, de-identify, commit.

:class:`StoreReceiver` is the C-STORE handler of ``lake serve dicom`` and of ``lake pull``
(C-STORE sub-operations of C-GET, or the temporary SCP a C-MOVE targets): the size and
memory checks, the stop gate, the counts and the statuses. What happens to an instance is
the :class:`~lake.net.Intake`'s: on a local lake it is sealed into the receipt journal (one
append and a shared ``fdatasync``), then either answered at once and de-identified in the
background (:attr:`Acknowledge.RECEIPT`, the default of ``lake serve dicom``) or
de-identified first and answered with its outcome's status (:attr:`Acknowledge.OUTCOME`,
``lake pull``). On a lake in an object store the outcome is spooled before the status,
which is always the outcome's.
"""

from __future__ import annotations

import enum
import io
import logging
import struct
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from functools import partial
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION

from lake._errors import NetError
from lake.ingest import Accepted, Outcome
from lake.net._association import DataSetBuffer
from lake.net._intake import Intake

__all__ = ["Acknowledge", "ReceiveStats", "StoreReceiver", "StoreStatus"]

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


NON_ASCII_UID = "request UID not ASCII (SOP Class, Instance or transfer syntax)"
_PREAMBLE = b"\x00" * 128 + b"DICM"
_SHORT = struct.Struct("<HH2sH")  # explicit VR little endian, a 2-byte length
_GROUP_LENGTH = struct.Struct("<HH2sHI")
_VERSION = struct.pack("<HH2sHI", 0x0002, 0x0001, b"OB", 0, 2) + b"\x00\x01"


def _element(element: int, vr: bytes, value: bytes, pad: bytes) -> bytes:
    if len(value) % 2:
        value += pad
    return _SHORT.pack(0x0002, element, vr, len(value)) + value


_IMPLEMENTATION = (
    _element(0x0012, b"UI", PYNETDICOM_IMPLEMENTATION_UID.encode("ascii"), b"\x00")
    + _element(0x0013, b"SH", PYNETDICOM_IMPLEMENTATION_VERSION.encode("ascii"), b" ")
)


def file_meta_bytes(sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str) -> bytes:
    """The encoded File Meta Information of a received data set (PS3.10 7.1).

    Byte for byte what ``pynetdicom.dsutils.encode_file_meta(event.file_meta)`` gives
    (group length, version, the request's SOP Class and Instance UIDs, the context's
    transfer syntax, pynetdicom's implementation UID and version), without building and
    validating a pydicom data set per instance: that took ~0.5 ms of the server's CPU
    per C-STORE here, a quarter of its share. The UIDs are the request's, as decoded by
    pynetdicom, which checks only their length (1-64 characters) unless told to enforce
    conformance: one that is not ASCII is refused here, never rewritten.

    Raises
    ------
    NetError
        If a UID is not ASCII (the value is not repeated: it came from the peer).
    """
    try:
        body = b"".join((
            _VERSION,
            _element(0x0002, b"UI", sop_class_uid.encode("ascii"), b"\x00"),
            _element(0x0003, b"UI", sop_instance_uid.encode("ascii"), b"\x00"),
            _element(0x0010, b"UI", transfer_syntax.encode("ascii"), b"\x00"),
            _IMPLEMENTATION,
        ))
    except UnicodeEncodeError:
        raise NetError(NON_ASCII_UID) from None
    return _GROUP_LENGTH.pack(0x0002, 0x0000, b"UL", 4, len(body)) + body


def _part10(event: Any, stream: io.BytesIO) -> bytes:
    """The received instance as a Part-10 file: file meta from the association, then the
    data set exactly as sent.

    One copy of the data set (pynetdicom's ``encoded_dataset`` makes two), and the
    received buffer is emptied once copied, so an instance costs its size once here.
    """
    request = event.request
    meta = file_meta_bytes(str(request.AffectedSOPClassUID or ""),
                           str(request.AffectedSOPInstanceUID or ""),
                           str(event.context.transfer_syntax))
    with stream.getbuffer() as view:
        data = b"".join((_PREAMBLE, meta, view))
    stream.seek(0)
    stream.truncate()
    return data


def _status(code: StoreStatus, comment: str | None = None) -> Dataset | int:
    if code is StoreStatus.SUCCESS and not comment:
        return 0x0000  # pynetdicom takes the bare code: no data set built and read back
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
    refused: int = 0
    """Refused before journaling: a request UID that is not ASCII."""
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

    def handle(self, event: Any, tag: str | None = None) -> Dataset | int:
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

    def _check_size(self, stream: io.BytesIO) -> Dataset | int | None:
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

    def _store(self, event: Any, stream: io.BytesIO, tag: str | None) -> Dataset | int:
        raise NotImplementedError

    @staticmethod
    def _status_of(outcome: Outcome) -> Dataset | int:
        if isinstance(outcome, Accepted):
            return _status(StoreStatus.SUCCESS)
        reason = str(outcome.record.get("reason") or "rejected")
        code = _PARSE_REASONS.get(reason, StoreStatus.REFUSED_BY_PROFILE)
        return _status(code, f"quarantined: {reason}")


class Acknowledge(enum.StrEnum):
    """When ``lake serve dicom`` answers a C-STORE."""

    RECEIPT = "receipt"
    """Once the instance as received is durable (sealed) in the receipt journal; it is
    de-identified and committed in the background, and a refusal is quarantined with its
    reason but not reported to the sender."""
    OUTCOME = "outcome"
    """Once it is also de-identified: refusals are reported per instance (slower)."""


_QUEUED = 256  # instances acknowledged but not de-identified yet, at most (then senders wait)


class StoreReceiver(_Gate):
    """C-STORE into an :class:`~lake.net.Intake` (module docstring).

    Parameters
    ----------
    intake : Intake
        Makes each instance durable, de-identifies it and commits it.
    max_instance_bytes : int
        Larger datasets are refused with Out of Resources.
    acknowledge : Acknowledge
        When the success status is sent. Without a journal (a lake in an object store)
        always once the outcome is durable, with its status.
    """

    def __init__(
        self,
        intake: Intake,
        max_instance_bytes: int,
        *,
        acknowledge: Acknowledge = Acknowledge.RECEIPT,
    ) -> None:
        super().__init__(max_instance_bytes)
        self.intake = intake
        self.acknowledge = acknowledge
        self._slots = threading.BoundedSemaphore(_QUEUED)

    @property
    def failures(self) -> int:
        """Instances whose de-identification failed (left for the next start)."""
        return self.intake.failures

    def close(self) -> None:
        """Refuse further instances (Out of Resources) and wait for those in progress."""
        self._stop_accepting()

    def _store(self, event: Any, stream: io.BytesIO, tag: str | None) -> Dataset | int:
        try:
            data = _part10(event, stream)
        except NetError:  # a UID that is not ASCII: nothing to journal faithfully
            _release(stream)
            self._count(refused=1)
            _LOG.warning("refused a received instance: %s", NON_ASCII_UID)
            return _status(StoreStatus.CANNOT_UNDERSTAND, NON_ASCII_UID)
        buffer = stream if isinstance(stream, DataSetBuffer) else None
        # At most _QUEUED wait for de-identification: beyond, the sender waits (and their
        # bytes stay counted in the receive budget until de-identified).
        self._slots.acquire()
        try:
            future = self.intake.submit(data, tag)
        except NetError:
            self._slots.release()
            _release(stream)
            self._count(spool_failures=1)
            return _status(StoreStatus.OUT_OF_RESOURCES, "the receive journal cannot be written")
        except Exception:
            self._slots.release()
            _release(stream)
            raise
        del data
        future.add_done_callback(partial(self._settle, buffer))
        if self.acknowledge is Acknowledge.RECEIPT and self.intake.journaled:
            return _status(StoreStatus.SUCCESS)  # durable: de-identified in the background
        try:
            return self._status_of(future.result())
        except Exception:  # noqa: BLE001 - the receipt stays journaled: next start retries
            return _status(StoreStatus.OUT_OF_RESOURCES, "de-identification failed; retry later")

    def _settle(self, buffer: DataSetBuffer | None, future: Future[Outcome]) -> None:
        try:
            if future.exception() is None:
                self._count(**{"accepted" if isinstance(future.result(), Accepted)
                               else "quarantined": 1})
        finally:
            if buffer is not None:
                buffer.release()
            self._slots.release()


def _release(stream: io.BytesIO) -> None:
    """Give a received data set's bytes back to the server's budget (idempotent)."""
    if isinstance(stream, DataSetBuffer):
        stream.release()
