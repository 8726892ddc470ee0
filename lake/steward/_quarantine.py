"""Quarantine review: list, look inside, release, hand out, discard and locate refused files.

A quarantined file is one row of the ``quarantine`` table (reason, size, when, batch; the
sha256 of the original as its identity) and, when it could be read, its original sealed
with the vault's quarantine key below ``<lake>/quarantine/``. Nothing here stores a path:
:func:`locate` hashes the files the steward names and looks the hashes up.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lake._capture import capture
from lake._errors import ConfigError, IntegrityError
from lake.catalog import QUARANTINE

if TYPE_CHECKING:
    from lake._lake import Lake
    from lake.deid import Profile
    from lake.documents import DocumentKind
    from lake.ingest import Ingestor, Outcome
    from lake.vault import Secret

__all__ = [
    "HeaderLine",
    "QuarantineEntry",
    "Release",
    "export_original",
    "list_quarantine",
    "locate",
    "purge",
    "release",
    "show",
]

_MIN_ID = 8
_HEAD = 1024  # a document is recognised by its first bytes (lake.documents.sniff)
_SUFFIXES = {"pdf": "pdf", "jpeg": "jpg", "png": "png", "bmp": "bmp", "tiff": "tif",
             "avi": "avi", "mp4": "mp4", "mov": "mov"}


@dataclass(frozen=True)
class QuarantineEntry:
    """One quarantined file (no original value, no path)."""

    id: str
    """The sha256 (hex) of the original; commands accept any unique prefix of 8+ digits."""
    reason: str
    message: str
    size_bytes: int | None
    quarantined_at: dt.datetime | None
    batch_id: str | None
    sealed: bool
    """Whether the original is kept (sealed); files refused unread are not."""


def list_quarantine(lake: Lake, reason: str | None = None) -> list[QuarantineEntry]:
    """Every quarantined file, oldest first, optionally of one ``reason``."""
    if not lake.tables.exists(QUARANTINE.name):
        return []
    rows = lake.tables.dataset(QUARANTINE.name).to_table().to_pylist()
    entries = [_entry(row) for row in rows if reason is None or row["reason"] == reason]
    return sorted(
        entries, key=lambda e: (e.quarantined_at or dt.datetime.min.replace(tzinfo=dt.UTC), e.id)
    )


def _entry(row: dict[str, Any]) -> QuarantineEntry:
    return QuarantineEntry(
        id=str(row["source_sha256"] or ""),
        reason=str(row["reason"] or ""),
        message=str(row["message"] or ""),
        size_bytes=row["size_bytes"],
        quarantined_at=row["quarantined_at"],
        batch_id=row["batch_id"],
        sealed=bool(row["object_key"]),
    )


def _find(lake: Lake, ident: str) -> QuarantineEntry:
    ident = ident.strip().lower()
    if len(ident) < _MIN_ID or any(c not in "0123456789abcdef" for c in ident):
        raise ConfigError(
            f"a quarantine ID is the hex sha256 of the file (at least {_MIN_ID} digits); "
            "lake.steward.list_quarantine() lists them",
            functions=("lake.steward.list_quarantine",)
        )
    found = {e.id: e for e in list_quarantine(lake) if e.id.startswith(ident)}
    if not found:
        raise ConfigError(f"no quarantined file has an ID starting {ident}")
    if len(found) > 1:
        raise ConfigError(
            f"{len(found)} quarantined files have IDs starting {ident}; give more digits"
        )
    return next(iter(found.values()))


def _original(lake: Lake, secret: Secret, entry: QuarantineEntry) -> bytes:
    from lake.ingest import decrypt, quarantine_key

    if not entry.sealed:
        raise ConfigError(
            f"the original of {entry.id[:12]} was not kept (it was refused unread: "
            f"{entry.reason}); nothing to show, release or export"
        )
    path = lake.location.join("quarantine", f"{entry.id}.sealed")
    try:
        with lake.location.fs.open(path, "rb") as fh:
            sealed = fh.read()
    except FileNotFoundError:
        raise IntegrityError(
            f"the sealed original of {entry.id[:12]} is missing; purge the entry "
            "(lake.steward.purge()) or run Lake.verify()",
            functions=("lake.steward.purge", "Lake.verify")
        ) from None
    data = decrypt(sealed, quarantine_key(secret))
    if hashlib.sha256(data).hexdigest() != entry.id:
        raise IntegrityError(f"the sealed original of {entry.id[:12]} does not match its hash")
    return data


@dataclass(frozen=True)
class HeaderLine:
    """One element of a quarantined original's header, its value masked unless asked."""

    depth: int
    tag: str
    keyword: str
    vr: str
    value: str


def show(
    lake: Lake, secret: Secret, ident: str, *, show_values: bool = False
) -> tuple[QuarantineEntry, list[HeaderLine]]:
    """The entry and the header of its original (values masked unless ``show_values``).

    The original is decrypted with the vault; a file that is not DICOM (a document, junk)
    gives no lines.
    Masked values show only their length: the header's structure without identifiers.
    """
    from pydicom import dcmread

    entry = _find(lake, ident)
    data = _original(lake, secret, entry)
    if _document_kind(data) is not None:
        return entry, []  # a PDF, picture or video: no DICOM header to show
    # pydicom's warnings and log records quote original values: captured, never shown.
    with capture():
        try:
            ds = dcmread(io.BytesIO(data), force=True, stop_before_pixels=True)
            lines = list(_lines(ds, 0, show_values))
        except Exception:  # noqa: BLE001 - a refused file may be anything: show what parses
            lines = []
    return entry, lines


def _lines(ds: Any, depth: int, show_values: bool) -> Iterator[HeaderLine]:
    for elem in ds:
        tag = f"({elem.tag.group:04X},{elem.tag.element:04X})"
        if elem.VR == "SQ":
            yield HeaderLine(depth, tag, elem.keyword, "SQ", f"{len(elem.value)} item(s)")
            for item in elem.value:
                yield from _lines(item, depth + 1, show_values)
            continue
        if show_values:
            text = repr(elem.value) if isinstance(elem.value, bytes) else str(elem.value)
            value = text if len(text) <= 200 else text[:200] + "..."
        else:
            length = len(elem.value) if hasattr(elem.value, "__len__") else len(str(elem.value))
            value = f"<{length} masked>"
        yield HeaderLine(depth, tag, elem.keyword, str(elem.VR), value)


def export_original(lake: Lake, secret: Secret, ident: str, out: str | os.PathLike[str]) -> Path:
    """Write the original of a quarantined file, decrypted, to folder ``out`` (outside the lake).

    The file is named by its ID (never by anything it holds), with the extension of its
    kind: ``.pdf``, ``.jpg``... for a document, else ``.dcm``. Returns its path.
    """
    lake.location.refuse_inside(out)
    folder = Path(out).resolve()
    entry = _find(lake, ident)
    data = _original(lake, secret, entry)
    folder.mkdir(parents=True, exist_ok=True)
    kind = _document_kind(data)
    target = folder / f"{entry.id}.{_SUFFIXES[kind.value] if kind else 'dcm'}"
    target.write_bytes(data)
    return target


def purge(lake: Lake, idents: Sequence[str] = (), *, reason: str | None = None) -> int:
    """Discard quarantined files: their rows and sealed originals. Returns how many.

    Give IDs, or a ``reason`` to discard every file quarantined for it.
    """
    if bool(idents) == (reason is not None):
        raise ConfigError("purge either IDs or every file of one reason, not both or neither")
    chosen = [_find(lake, i) for i in idents] if idents else list_quarantine(lake, reason)
    shas = sorted({e.id for e in chosen if e.id})
    if shas:
        listed = ", ".join(f"'{sha}'" for sha in shas)
        lake.tables.delete(QUARANTINE, f"source_sha256 IN ({listed})")
    elif reason is not None and any(not e.id for e in chosen):
        lake.tables.delete(QUARANTINE, f"reason = '{_plain(reason)}' AND source_sha256 IS NULL")
    for sha in shas:
        path = lake.location.join("quarantine", f"{sha}.sealed")
        if lake.location.fs.exists(path):
            lake.location.fs.rm_file(path)
    lake.refresh()
    return len(chosen)


def _plain(text: str) -> str:
    if not text.replace("_", "").isalnum():
        raise ConfigError("a reason code is letters, digits and '_' (as "
                          "lake.steward.list_quarantine() shows them)",
                          functions=("lake.steward.list_quarantine",))
    return text


@dataclass(frozen=True)
class Release:
    """What re-running a quarantined file through a profile did."""

    entry: QuarantineEntry
    outcome: str
    """``ingested``, ``duplicate``, or ``quarantined`` (still: see ``reason``)."""
    reason: str | None
    catalog_version: int


def release(
    lake: Lake, secret: Secret, ident: str, profile: str | Profile, *, study: str | None = None
) -> Release:
    """Re-run a quarantined original through ``profile``.

    It lands (its quarantine row and sealed original are removed) or stays quarantined
    with the new reason (the row is updated, the original stays sealed).

    Parameters
    ----------
    study : str, optional
        For a document (PDF, picture, video): the original StudyInstanceUID or
        AccessionNumber of the study of the lake it belongs to (its folder is not known any
        more). Documents need it; DICOM files refuse it.

    Raises
    ------
    ConfigError
        When a document is released without ``study``, or a DICOM file with one.
    IngestError
        When ``study`` names no study of the lake.
    """
    from lake.ingest import Accepted, Ingestor, Rejected
    from lake.ingest._commit import CONFLICT_MESSAGE

    entry = _find(lake, ident)
    data = _original(lake, secret, entry)
    kind = _document_kind(data)
    if kind is None and study is not None:
        raise ConfigError(
            f"{entry.id[:12]} is not a document: a study is named only for documents"
        )
    if kind is not None and study is None:
        raise ConfigError(
            f"{entry.id[:12]} is a {kind.value.upper()} document: give the study it belongs "
            "to (its original StudyInstanceUID or AccessionNumber)"
        )
    ingestor = Ingestor(lake, secret, profile, source="quarantine-release")
    if kind is not None and study is not None:
        outcome = _document_outcome(lake, ingestor, kind, data, study)
    else:
        outcome = ingestor.process(data)
    if isinstance(outcome, Rejected):
        record = dict(outcome.record)
        batch = ingestor.commit([])  # a batch row for the release, for the record
        _requarantine(lake, entry, record, batch.batch_id)
        return Release(entry, "quarantined", str(record["reason"]), batch.catalog_version)
    assert isinstance(outcome, Accepted)
    batch = ingestor.commit([outcome], originals=[lambda: data])
    if batch.conflicts:
        record = {
            "source_sha256": entry.id,
            "size_bytes": len(data),
            "reason": "uid_conflict",
            "message": CONFLICT_MESSAGE,
            "object_key": f"quarantine/{entry.id}.sealed",
        }
        _requarantine(lake, entry, record, batch.batch_id)
        return Release(entry, "quarantined", "uid_conflict", batch.catalog_version)
    purge(lake, [entry.id])
    landed = "ingested" if batch.ingested else "duplicate"
    return Release(entry, landed, None, batch.catalog_version)


def _document_kind(data: bytes) -> DocumentKind | None:
    from lake.documents import sniff

    return sniff(data[:_HEAD])


def _document_outcome(
    lake: Lake, ingestor: Ingestor, kind: DocumentKind, data: bytes, study: str
) -> Outcome:
    from lake.documents import Ocr, document_outcome, study_from_lake

    found = study_from_lake(lake, ingestor.context.engine, study)
    # The parsers' warnings may quote original values: captured, never shown.
    with capture():
        return document_outcome(
            kind, data, found, ingestor.context, ocr=Ocr() if Ocr.available() else None
        )


def _requarantine(
    lake: Lake, entry: QuarantineEntry, record: dict[str, Any], batch_id: str
) -> None:
    row = dict(
        record, source_sha256=entry.id, batch_id=batch_id, quarantined_at=dt.datetime.now(dt.UTC)
    )
    lake.tables.replace_where(QUARANTINE, [row], f"source_sha256 = '{entry.id}'")
    lake.refresh()


def locate(
    lake: Lake, sources: Iterable[str | os.PathLike[str]]
) -> Iterator[tuple[str, QuarantineEntry]]:
    """Which local files (folders walked) are quarantined, matched by content hash.

    Yields ``(path as found, entry)``; the lake stores no path, so the paths come only
    from ``sources``.
    """
    entries = {e.id: e for e in list_quarantine(lake) if e.id}
    for path in _walk(sources):
        digest = hashlib.sha256()
        try:
            with open(path, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(chunk)
        except OSError:
            continue
        entry = entries.get(digest.hexdigest())
        if entry is not None:
            yield path, entry


def _walk(sources: Iterable[str | os.PathLike[str]]) -> Iterator[str]:
    for source in sources:
        text = os.fspath(source)
        if os.path.isdir(text):
            for folder, _, names in sorted(os.walk(text)):
                for name in sorted(names):
                    path = os.path.join(folder, name)
                    if os.path.isfile(path) and not os.path.islink(path):
                        yield path
        elif os.path.isfile(text):
            yield text
