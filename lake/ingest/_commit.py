"""Committing one batch: exactly once, duplicates told from UID conflicts, records journaled."""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lake.catalog._schema import INSTANCES
from lake.ingest._identity import COMPARED_COLUMNS, identity_sha256, same_object
from lake.ingest._instance import Accepted, Outcome
from lake.ingest._quarantine import store_rejected
from lake.ingest._withdrawn import refused_identity
from lake.store import BlobStore, flush

if TYPE_CHECKING:
    from lake.catalog import BatchJournal, Decision, DeltaTables, Judged, Tombstones
    from lake.ingest._run import Ingestor

__all__ = ["CONFLICT_MESSAGE", "UID_CONFLICT", "BatchResult", "Original", "commit_batch"]

KEY = "SOPInstanceUID"
UID_CONFLICT = "uid_conflict"
CONFLICT_MESSAGE = (
    "another instance with this SOP Instance UID is already in the lake and differs from "
    "this one (header or pixel values); the first one is kept"
)

Original = Callable[[], bytes]
"""Reads an instance's original bytes again (for sealing a UID conflict); never stored."""


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass
class _Counts:
    """Counts shared by a batch and a whole run (no original values, no paths)."""

    files_seen: int = 0
    ingested: int = 0
    duplicates: int = 0
    quarantined: int = 0
    conflicts: int = 0
    replaced: int = 0
    erased: int = 0
    mixed_series: int = 0
    bytes_in: int = 0
    blobs_written: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    catalog_version: int = 0


@dataclass
class BatchResult(_Counts):
    """What one committed batch did.

    ``conflicts`` counts instances quarantined as ``uid_conflict`` (also counted in
    ``quarantined`` and ``reasons``): a different object already held their SOP
    Instance UID. ``duplicates`` are the same objects again (in any transfer syntax).
    ``replaced`` counts stored rows this batch replaced (``replace``: the same object
    de-identified under another profile); they are not counted as duplicates.
    ``mixed_series`` counts series of the batch whose instances name several patients
    (a modality or PACS error: they are ingested as they are, and reported).
    ``erased`` counts instances dropped because their patient, study or series was
    erased (``lake forget``'s tombstones): neither added nor quarantined (a refused file's
    sealed original is read to tell whose it is, and deleted); pixel blobs written for
    them are left unreferenced, for ``lake gc``.
    """

    batch_id: str = ""
    actions: Counter[str] = field(default_factory=Counter)


def commit_batch(
    ingestor: Ingestor,
    outcomes: Sequence[Outcome],
    started_at: dt.datetime,
    originals: Sequence[Original | None] | None,
    *,
    replace: bool = False,
) -> BatchResult:
    """Commit ``outcomes`` as one batch; see :meth:`lake.ingest.Ingestor.commit`."""
    # Imported here, by the driver: the worker processes of an ingest never commit, and
    # delta-rs and pyarrow start native threads when imported (lake.compute._pool).
    import pyarrow as pa
    import pyarrow.compute as pc

    from lake.catalog import BatchJournal, Decision
    from lake.catalog._arrow_values import arrow_array, python_table

    lake = ingestor.lake
    batch = BatchResult(batch_id=uuid.uuid4().hex)
    now = _now()
    accepted: list[tuple[int, dict[str, Any]]] = []
    rejected: list[dict[str, Any]] = []
    for index, outcome in enumerate(outcomes):
        batch.files_seen += 1
        batch.bytes_in += outcome.bytes_in
        if isinstance(outcome, Accepted):
            row = outcome.row
            row["batch_id"] = batch.batch_id
            row["ingested_at"] = now
            if row.get("identity_sha256") is None:
                row["identity_sha256"] = identity_sha256(row["header_json"])
            if row.get("header_sha256") is None and row.get("header_dicom") is not None:
                row["header_sha256"] = hashlib.sha256(row["header_dicom"]).hexdigest()
            accepted.append((index, row))
            batch.actions.update(outcome.actions)
            batch.blobs_written += int(outcome.blob_written)
        else:
            rejected.append(dict(outcome.record, batch_id=batch.batch_id, quarantined_at=now))
    patients: dict[str, set[str]] = {}
    for _, row in accepted:
        patients.setdefault(str(row.get("SeriesInstanceUID")), set()).add(str(row.get("PatientID")))
    batch.mixed_series = sum(1 for ids in patients.values() if len(ids) > 1)
    first: dict[str, int] = {}
    for position, (_, row) in enumerate(accepted):
        first.setdefault(row[KEY], position)
    candidates = [row for position, (_, row) in enumerate(accepted) if first[row[KEY]] == position]
    flush(lake.location)  # blobs of this batch reach the disk before rows name them

    sealer = _Sealer(ingestor, originals, batch.batch_id, now)
    refused = _Refused(ingestor)
    withdrawn: list[dict[str, Any]] = []  # refused files of erased patients: not recorded
    blobs = BlobStore(lake.location)
    journal: list[BatchJournal] = []

    def stored_columns(key: str) -> Callable[[tuple[str, ...]], dict[str, Any]]:
        def read(columns: tuple[str, ...]) -> dict[str, Any]:
            return dict(lake.tables.lookup(INSTANCES, KEY, [key], columns).to_pylist()[0])

        return read

    def plan(judged: Judged) -> Decision:
        # Read after the snapshot was opened and on every attempt: an erasure that lays a
        # tombstone after this read commits to instances after the snapshot, so this
        # commit loses its race and is judged again (lake.catalog._tombstones).
        tombstones = ingestor.tombstones.read(lake.tables)
        erased = {row[KEY] for _, row in accepted if tombstones.erased(row)}
        withdrawn[:] = [r for r in rejected if tombstones and refused.erased(r, tombstones)]
        stored = {row[KEY]: row for row in judged.existing.to_pylist()}
        conflicts: list[int] = []
        replacing: list[dict[str, Any]] = []
        duplicates = 0
        for position, (index, row) in enumerate(accepted):
            key = row[KEY]
            if key in erased:
                continue
            if key in stored:
                reference, columns = stored[key], stored_columns(key)
            elif first[key] == position:
                continue  # new: appended
            else:
                reference = accepted[first[key]][1]
                columns = _columns_of(reference)
            if not same_object(row, reference, blobs, columns):
                conflicts.append(index)
            elif replace and key in stored and first[key] == position and _differs(row, reference):
                replacing.append(row)
            else:
                duplicates += 1
        records = [r for r in rejected if not any(r is w for w in withdrawn)]
        records += [sealer.record(index) for index in conflicts]
        rows = judged.new
        if erased:
            keep = pc.invert(pc.is_in(rows.column(KEY), value_set=arrow_array(sorted(erased), pa.string())))
            rows = rows.filter(pc.fill_null(keep, True))
        batch.erased = sum(1 for _, row in accepted if row[KEY] in erased) + len(withdrawn)
        batch.ingested = rows.num_rows
        batch.duplicates = duplicates
        batch.replaced = len(replacing)
        batch.conflicts = len(conflicts)
        batch.quarantined = len(records)
        batch.reasons = Counter(record["reason"] for record in records)
        journal[:] = [BatchJournal(ingestor.batch_row(batch, started_at), records)]
        if replacing:
            rows = pa.concat_tables(
                [rows, python_table(replacing, INSTANCES.schema)]
            )
        return Decision(rows, journal[0].encode(), tuple(r[KEY] for r in replacing))

    result = lake.tables.insert_new(
        INSTANCES, candidates, key=KEY, fetch=COMPARED_COLUMNS, plan=plan, commit_empty=True
    )
    batch.catalog_version = result.version
    refused.discard(withdrawn)
    (written,) = journal
    written.batch["catalog_version"] = result.version
    record_batch(lake.tables, written)
    return batch


def record_batch(tables: DeltaTables, journal: BatchJournal) -> None:
    """:func:`lake.catalog.record_batch`, imported when a batch is committed (a module-level
    name: tests stop a commit here)."""
    from lake.catalog import record_batch as record

    record(tables, journal)


def _differs(row: dict[str, Any], stored: dict[str, Any]) -> bool:
    """Whether a stored row of the same object was de-identified otherwise (profile, header)."""
    return bool(
        row.get("profile_sha256") != stored.get("profile_sha256")
        or row.get("identity_sha256") != stored.get("identity_sha256")
    )


def _columns_of(row: dict[str, Any]) -> Callable[[tuple[str, ...]], dict[str, Any]]:
    def read(columns: tuple[str, ...]) -> dict[str, Any]:
        return {c: row.get(c) for c in columns}

    return read


class _Refused:
    """Whether refused files belong to something erased, each sealed original read once."""

    def __init__(self, ingestor: Ingestor) -> None:
        self.context = ingestor.context
        self._identity: dict[str, dict[str, str] | None] = {}

    def erased(self, record: dict[str, Any], tombstones: Tombstones) -> bool:
        object_key = record.get("object_key")
        if not object_key:
            return False  # nothing was kept of it: no one's
        if object_key not in self._identity:
            self._identity[object_key] = refused_identity(
                self.context.location, object_key, self.context.engine,
                self.context.quarantine_key)
        identity = self._identity[object_key]
        return identity is not None and tombstones.erased(identity)

    def discard(self, records: Sequence[dict[str, Any]]) -> None:
        """Delete the sealed originals of ``records`` (refused files of erased patients)."""
        if not records:  # (no fsspec for nothing: a local commit imports none)
            return
        fs = self.context.location.fs
        for object_key in {r["object_key"] for r in records}:
            with contextlib.suppress(FileNotFoundError):
                fs.rm_file(self.context.location.join(object_key))


class _Sealer:
    """Quarantine records for UID conflicts, each original sealed once per batch."""

    def __init__(
        self,
        ingestor: Ingestor,
        originals: Sequence[Original | None] | None,
        batch_id: str,
        now: dt.datetime,
    ) -> None:
        self.ingestor = ingestor
        self.originals = originals
        self.batch_id = batch_id
        self.now = now
        self._records: dict[int, dict[str, Any]] = {}

    def record(self, index: int) -> dict[str, Any]:
        if index not in self._records:
            self._records[index] = self._seal(index)
        return self._records[index]

    def _seal(self, index: int) -> dict[str, Any]:
        data = self._original(index)
        digest = object_key = None
        message = CONFLICT_MESSAGE
        if data is None:
            message += " (the original could not be read again, so it was not kept)"
        else:
            context = self.ingestor.context
            digest, object_key = store_rejected(context.location, data, context.quarantine_key)
        return {
            "source_sha256": digest,
            "size_bytes": None if data is None else len(data),
            "reason": UID_CONFLICT,
            "message": message,
            "object_key": object_key,
            "batch_id": self.batch_id,
            "quarantined_at": self.now,
        }

    def _original(self, index: int) -> bytes | None:
        if self.originals is None or self.originals[index] is None:
            return None
        read = self.originals[index]
        assert read is not None
        try:
            return read()
        except Exception:  # noqa: BLE001 - gone, changed, unreadable: it cannot be sealed
            return None
