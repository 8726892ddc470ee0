"""The receipt journal: every received instance, sealed, on disk before it is acknowledged.

``lake serve dicom`` acknowledges a C-STORE once the instance as received (file meta plus
data set) is durable here: sealed with AES-256-GCM under a key derived from the lake's
secret (purpose ``net-receipts``, like the quarantine's own key), appended to a segment
file and ``fdatasync``'d. The lake alone reveals nothing, as for quarantined originals;
the record lives only until the instance's outcome (row or quarantine record) is
committed to the catalog, then its segment is deleted. On start-up, whatever a crash left
is unsealed, processed and committed before the server listens.

Why a journal rather than one file per instance: on this machine's ext4 a new file plus
``fsync`` plus the folder's ``fsync`` costs ~5 ms, an append plus ``fdatasync`` ~0.5 ms.
Appends from concurrent associations share their ``fdatasync`` (group commit): a writer
whose record an earlier sync already covered does not sync again. And the original is
what a crash must not lose: from it the de-identified row, the pixel blob and any
quarantine record are all re-made, identically (UIDs and dates are keyed), so blobs no
longer need their own sync before the acknowledgement.

Segment format: records ``[u32 length][12-byte nonce][ciphertext+tag]``, the associated
data naming the format, segment and record number, so a record cannot be moved between
segments or positions unnoticed. A record that is incomplete or does not authenticate
ends its segment's reading: it was never acknowledged if it is the last one (a torn
write); if bytes follow it, the segment is kept aside as ``.damaged`` and counted.
"""

from __future__ import annotations

import contextlib
import os
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from lake._errors import NetError
from lake.vault import Secret

__all__ = ["Receipt", "ReceiptJournal"]

_PURPOSE = "net-receipts"
_SUFFIX = ".journal"
_DAMAGED = ".damaged"
_NONCE = 12
_LENGTH = struct.Struct(">I")
_FORMAT = b"imaging-lake receipt v1"
_SEGMENT_BYTES = 64 * 2**20  # a segment is closed after this much (and deleted once committed)


@dataclass(frozen=True)
class Receipt:
    """Where a received instance is journaled: segment number and record number."""

    segment: int
    record: int

    def __str__(self) -> str:
        return f"{self.segment}:{self.record}"


class _Segment:
    def __init__(self, number: int, path: Path) -> None:
        self.number = number
        self.path = path
        self.records = 0
        self.pending = 0  # records whose outcome is not committed yet
        self.fd: int | None = None
        self.written = 0  # bytes appended...
        self.synced = 0  # ...and known to be on disk
        self.users = 0  # appenders between their write and their sync
        self.closed = False  # fsync'd and closed (once its users are done)
        self.keep = False  # damaged: renamed aside, never deleted


class ReceiptJournal:
    """Sealed, append-only, group-committed receipts of received instances.

    Parameters
    ----------
    folder : Path
        A local folder of the lake (``spool/dicom-store/receipts``); created if needed.
    secret : Secret
        The lake's secret; the sealing key is derived from it.

    Examples
    --------
    >>> journal = ReceiptJournal(lake_root / "spool/dicom-store/receipts", secret)  # doctest: +SKIP
    >>> receipt = journal.append(part10_bytes)  # durable when this returns  # doctest: +SKIP
    >>> journal.committed([receipt])  # its outcome is in the catalog  # doctest: +SKIP
    """

    def __init__(self, folder: Path, secret: Secret) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._aead = AESGCM(secret.derive(_PURPOSE))
        self._lock = threading.Lock()  # appends and bookkeeping
        self._sync_lock = threading.Lock()  # one fdatasync at a time: the others wait, then
        self._segments: dict[int, _Segment] = {}  # usually find their record covered
        self._active: _Segment | None = None
        existing = [self._number(p) for p in self.folder.glob(f"*{_SUFFIX}")]
        self._next = max(existing, default=0) + 1
        self.damaged = len(list(self.folder.glob(f"*{_DAMAGED}")))

    @staticmethod
    def _number(path: Path) -> int:
        return int(path.name.split(".")[0])

    @staticmethod
    def _aad(segment: int, record: int) -> bytes:
        return b"%s:%d:%d" % (_FORMAT, segment, record)

    # -- appending ---------------------------------------------------------------------
    def append(self, data: bytes) -> Receipt:
        """Seal ``data`` and make it durable; returns where it is.

        Raises
        ------
        NetError
            If the journal cannot be written (disk full, permissions): the instance must
            not be acknowledged.
        """
        nonce = os.urandom(_NONCE)
        try:
            with self._lock:
                segment = self._writable()
                receipt = Receipt(segment.number, segment.records)
                sealed = self._aead.encrypt(nonce, data, self._aad(segment.number,
                                                                   segment.records))
                assert segment.fd is not None
                _write_all(segment.fd, _LENGTH.pack(len(sealed) + _NONCE) + nonce, sealed)
                segment.records += 1
                segment.pending += 1
                segment.written += _LENGTH.size + _NONCE + len(sealed)
                segment.users += 1
                end = segment.written
            try:
                self._sync(segment, end)
            finally:
                with self._lock:
                    segment.users -= 1
                    self._release(segment)
        except OSError as exc:
            raise NetError(
                f"cannot write the receive journal in {self.folder} ({type(exc).__name__}); "
                "free disk space or fix permissions"
            ) from None
        return receipt

    def _writable(self) -> _Segment:
        segment = self._active
        if segment is not None and segment.written < _SEGMENT_BYTES:
            return segment
        self._close_active()
        number, self._next = self._next, self._next + 1
        segment = _Segment(number, self.folder / f"{number:012d}{_SUFFIX}")
        segment.fd = os.open(segment.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND,
                             0o600)
        _fsync_folder(self.folder)  # the file's name is durable before any record in it
        self._segments[number] = segment
        self._active = segment
        return segment

    def _sync(self, segment: _Segment, end: int) -> None:
        """``fdatasync`` unless a sync that started after our write already covered it."""
        with self._sync_lock:
            with self._lock:
                if segment.closed or segment.synced >= end:
                    return
                target, fd = segment.written, segment.fd
            assert fd is not None
            os.fdatasync(fd)
            with self._lock:
                segment.synced = max(segment.synced, target)

    def _close_active(self) -> None:
        """Make the active segment wholly durable and retire it (called under the lock)."""
        segment, self._active = self._active, None
        if segment is None:
            return
        if segment.fd is not None:
            os.fsync(segment.fd)
        segment.closed = True
        self._release(segment)

    def _release(self, segment: _Segment) -> None:
        """Close a retired segment's file once no appender uses it; delete it once done."""
        if not segment.closed or segment.users:
            return
        if segment.fd is not None:
            os.close(segment.fd)
            segment.fd = None
        if segment.pending == 0:
            self._segments.pop(segment.number, None)
            if not segment.keep:
                with contextlib.suppress(FileNotFoundError):
                    segment.path.unlink()

    # -- committing --------------------------------------------------------------------
    def committed(self, receipts: list[Receipt]) -> None:
        """The outcomes of ``receipts`` are in the catalog: their records may go."""
        with self._lock:
            for receipt in receipts:
                segment = self._segments.get(receipt.segment)
                if segment is None:
                    continue
                segment.pending -= 1
                if segment.pending == 0 and segment is self._active:
                    self._close_active()  # everything in it is done: the next starts afresh
                else:
                    self._release(segment)

    @property
    def pending(self) -> int:
        """Records not committed yet."""
        with self._lock:
            return sum(s.pending for s in self._segments.values())

    def close(self) -> None:
        """Retire the active segment (deleted if all its records were committed)."""
        with self._lock:
            self._close_active()

    # -- recovery ----------------------------------------------------------------------
    def leftovers(self) -> Iterator[tuple[Receipt, bytes]]:
        """Every record a previous run left (unsealed), oldest first; call before appending.

        Each is registered as pending, so :meth:`committed` deletes its segment once all
        are committed. A segment with a damaged record followed by more bytes is renamed
        ``.damaged`` (and counted in :attr:`damaged`) after its readable records.
        """
        for path in sorted(self.folder.glob(f"*{_SUFFIX}"), key=self._number):
            number = self._number(path)
            if number in self._segments:
                continue
            segment = _Segment(number, path)
            segment.closed = True  # read only: deleted once its records are committed
            records = list(self._read(segment))
            with self._lock:
                self._segments[number] = segment
                segment.pending += len(records)
                self._release(segment)
            yield from records

    def _read(self, segment: _Segment) -> Iterator[tuple[Receipt, bytes]]:
        data = segment.path.read_bytes()
        offset = record = 0
        while offset + _LENGTH.size <= len(data):
            (length,) = _LENGTH.unpack_from(data, offset)
            start, end = offset + _LENGTH.size, offset + _LENGTH.size + length
            if length <= _NONCE or end > len(data):
                break
            blob = data[start:end]
            try:
                plain = self._aead.decrypt(blob[:_NONCE], blob[_NONCE:],
                                           self._aad(segment.number, record))
            except InvalidTag:
                break
            yield Receipt(segment.number, record), plain
            offset, record = end, record + 1
        if offset < len(data) and _damaged_beyond(data, offset):
            segment.path.rename(segment.path.with_suffix(_DAMAGED))
            segment.keep = True  # for whoever investigates; never read again
            self.damaged += 1


def _damaged_beyond(data: bytes, offset: int) -> bool:
    """Whether the unreadable bytes at ``offset`` are more than one torn last record."""
    if offset + _LENGTH.size > len(data):
        return False  # a torn length prefix
    length: int = _LENGTH.unpack_from(data, offset)[0]
    return offset + _LENGTH.size + length < len(data)


def _write_all(fd: int, head: bytes, body: bytes) -> None:
    """Append ``head`` then ``body`` (one ``writev``, no joined copy of a large body)."""
    parts = [memoryview(head), memoryview(body)]
    while parts:
        written = os.writev(fd, parts)
        while parts and written >= len(parts[0]):
            written -= len(parts[0])
            parts.pop(0)
        if parts:
            parts[0] = parts[0][written:]


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
