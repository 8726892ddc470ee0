"""Receiving instances over C-STORE: de-identify, store, spool, acknowledge.

Shared by ``lake serve dicom`` (the Storage SCP) and ``lake pull`` (C-STORE
sub-operations of C-GET, or the temporary SCP a C-MOVE targets).
"""

from __future__ import annotations

import enum
import io
import threading
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom.dsutils import encode_file_meta

from lake._errors import NetError
from lake.ingest import Accepted, Ingestor
from lake.net._spool import Committer
from lake.net._transport import DataSetBuffer

__all__ = ["ReceiveStats", "Receiver", "StoreStatus"]


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


class Receiver:
    """Turns each received C-STORE into a durable, de-identified outcome.

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
        self.ingestor = ingestor
        self.committer = committer
        self.max_instance_bytes = max_instance_bytes
        self.stats = ReceiveStats()
        # Ingestor.process is thread-safe: associations process their instances concurrently.
        self._stats_lock = threading.Lock()
        self._accepting = True
        self._active = 0
        self._idle = threading.Condition()

    def close(self) -> None:
        """Refuse further instances (Out of Resources) and wait for those in progress."""
        with self._idle:
            self._accepting = False
            while self._active:
                self._idle.wait()

    def _count(self, **increments: int) -> None:
        with self._stats_lock:
            for name, value in increments.items():
                setattr(self.stats, name, getattr(self.stats, name) + value)

    def handle(self, event: Any, tag: str | None = None) -> Dataset:
        """The EVT_C_STORE handler body: returns the status dataset to send.

        The success status is returned only after the outcome is durable in the spool.
        """
        with self._idle:
            if not self._accepting:
                return _status(StoreStatus.OUT_OF_RESOURCES, "the lake is shutting down")
            self._active += 1
        try:
            return self._handle(event, tag)
        finally:
            with self._idle:
                self._active -= 1
                self._idle.notify_all()

    def _handle(self, event: Any, tag: str | None) -> Dataset:
        stream = event.request.DataSet
        try:
            return self._store(event, stream, tag)
        finally:
            if isinstance(stream, DataSetBuffer):
                stream.release()  # handled: its bytes go back to the server's budget

    def _store(self, event: Any, stream: io.BytesIO, tag: str | None) -> Dataset:
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
        data = _part10(event, stream)
        outcome = self.ingestor.process(data)
        del data
        try:
            self.committer.submit(outcome, tag)
        except NetError:
            self._count(spool_failures=1)
            return _status(StoreStatus.OUT_OF_RESOURCES, "the receive spool cannot be written")
        if isinstance(outcome, Accepted):
            self._count(accepted=1)
            return _status(StoreStatus.SUCCESS)
        self._count(quarantined=1)
        reason = str(outcome.record.get("reason") or "rejected")
        code = _PARSE_REASONS.get(reason, StoreStatus.REFUSED_BY_PROFILE)
        return _status(code, f"quarantined: {reason}")
