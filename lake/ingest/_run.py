"""The ingest driver: stream items to workers, commit one batch of rows per Delta commit."""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import os
import time
import uuid
import zipfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from lake.catalog import BATCHES, INSTANCES, QUARANTINE
from lake.compute import AUTO, INGEST_CROSSOVER, Runner, Workload
from lake.deid import Deidentifier, Profile, load_profile
from lake.ingest._instance import Accepted, IngestContext, Outcome, Rejected, process_bytes
from lake.ingest._lenient import lenient_pydicom
from lake.ingest._quarantine import quarantine_key
from lake.ingest._sources import SourceItem, iter_items, read_item
from lake.store import flush
from lake.vault import Secret

if TYPE_CHECKING:
    from lake._lake import Lake

__all__ = ["BatchResult", "IngestSummary", "Ingestor", "ingest"]

T = TypeVar("T")


def _chunks(items: Iterable[T], size: int) -> Iterator[list[T]]:
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass
class _Counts:
    """Counts shared by a batch and a whole run (no original values, no paths)."""

    files_seen: int = 0
    ingested: int = 0
    duplicates: int = 0
    quarantined: int = 0
    bytes_in: int = 0
    blobs_written: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    catalog_version: int = 0


@dataclass
class BatchResult(_Counts):
    """What one committed batch did."""

    batch_id: str = ""
    actions: Counter[str] = field(default_factory=Counter)


@dataclass
class IngestSummary(_Counts):
    """Totals of an ingest run."""

    batches: list[str] = field(default_factory=list)
    elapsed: float = 0.0

    def add(self, batch: BatchResult) -> None:
        """Add one committed batch to the totals."""
        for name in (
            "files_seen",
            "ingested",
            "duplicates",
            "quarantined",
            "bytes_in",
            "blobs_written",
        ):
            setattr(self, name, getattr(self, name) + getattr(batch, name))
        self.reasons.update(batch.reasons)
        self.batches.append(batch.batch_id)
        self.catalog_version = batch.catalog_version

    @property
    def files_per_second(self) -> float:
        return self.files_seen / self.elapsed if self.elapsed else 0.0


class Ingestor:
    """De-identify and store instances, then commit them in batches.

    Used by ``lake ingest`` (through :func:`ingest`) and by the DICOM network
    services, which call :meth:`process` per received instance and :meth:`commit`
    per batch.

    Parameters
    ----------
    lake : Lake
        An open lake.
    secret : Secret
        The lake's secret from the vault.
    profile : str or Profile, optional
        The de-identification profile (default: the lake's default profile).
    source : str
        Recorded in the ``batches`` table: ``ingest``, ``dicom-store``, ``pull``.
    """

    def __init__(
        self,
        lake: Lake,
        secret: Secret,
        profile: str | Profile | None = None,
        source: str = "ingest",
    ) -> None:
        self.lake = lake
        self.source = source
        chosen = profile if profile is not None else lake.config.default_profile
        self.profile = chosen if isinstance(chosen, Profile) else load_profile(chosen)
        self.context = IngestContext(
            location=lake.location,
            engine=Deidentifier(self.profile, secret),
            quarantine_key=quarantine_key(secret),
        )

    def process(self, data: bytes) -> Outcome:
        """De-identify one instance and store its pixels (no commit)."""
        return process_bytes(data, self.context)

    def commit(
        self, outcomes: Sequence[Outcome], started_at: dt.datetime | None = None
    ) -> BatchResult:
        """Commit one batch: instance rows (new SOPInstanceUIDs only), quarantine rows, batch row."""
        batch = BatchResult(batch_id=uuid.uuid4().hex)
        started_at = started_at or _now()
        now = _now()
        rows: list[dict[str, Any]] = []
        rejected: list[dict[str, Any]] = []
        for outcome in outcomes:
            batch.files_seen += 1
            batch.bytes_in += outcome.bytes_in
            if isinstance(outcome, Accepted):
                outcome.row["batch_id"] = batch.batch_id
                outcome.row["ingested_at"] = now
                rows.append(outcome.row)
                batch.actions.update(outcome.actions)
                batch.blobs_written += int(outcome.blob_written)
            else:
                record = dict(outcome.record, batch_id=batch.batch_id, quarantined_at=now)
                rejected.append(record)
                batch.reasons[record["reason"]] += 1
        tables = self.lake.tables
        flush(self.lake.location)  # blobs of this batch reach the disk before rows name them
        inserted, version = tables.insert_new(
            INSTANCES, rows, key="SOPInstanceUID", owner="batch_id"
        )
        batch.ingested = inserted
        batch.duplicates = len(rows) - inserted
        batch.quarantined = len(rejected)
        batch.catalog_version = version
        if rejected:
            tables.append(QUARANTINE, rejected)
        tables.append(
            BATCHES,
            [
                {
                    "batch_id": batch.batch_id,
                    "source": self.source,
                    "started_at": started_at,
                    "finished_at": _now(),
                    "profile": self.profile.name,
                    "profile_version": self.profile.version,
                    "profile_sha256": self.profile.sha256,
                    "files_seen": batch.files_seen,
                    "ingested": batch.ingested,
                    "duplicates": batch.duplicates,
                    "quarantined": batch.quarantined,
                    "bytes_in": batch.bytes_in,
                    "blobs_written": batch.blobs_written,
                    "actions": sorted(batch.actions.items()),
                    "catalog_version": version,
                }
            ],
        )
        return batch


def _unreadable(exc: Exception) -> Rejected:
    record = {
        "source_sha256": None,
        "size_bytes": None,
        "reason": "unreadable",
        "message": f"the file cannot be read ({type(exc).__name__})",
        "object_key": None,
    }
    return Rejected(record, 0)


def _process_items(items: list[SourceItem], ctx: IngestContext) -> list[Outcome]:
    from lake.documents import FolderStudies, ingest_item

    outcomes: list[Outcome] = []
    folders = FolderStudies(ctx.engine)  # documents: the study of each folder, read once
    with lenient_pydicom():
        for item in items:
            try:
                data = read_item(item)
            except (OSError, zipfile.BadZipFile, KeyError, RuntimeError) as exc:
                outcomes.append(_unreadable(exc))
                continue
            document = ingest_item(item.path, item.member, data, ctx, folders, ctx.documents)
            outcomes.append(document if document is not None else process_bytes(data, ctx))
    return outcomes


def _measured(items: Iterator[SourceItem]) -> tuple[Iterator[SourceItem], Workload]:
    """The workload of ``items`` (counted up to the ingest crossover) and the same items.

    Counting stops at the crossover, so a large source costs at most that many ``stat``
    calls more; the items counted are kept and handed on first. A zip archive counts
    its size once.
    """
    head: list[SourceItem] = []
    sized: set[str] = set()
    workload = Workload(0, 0, INGEST_CROSSOVER)
    for item in items:
        head.append(item)
        nbytes = workload.nbytes
        if item.path not in sized:
            sized.add(item.path)
            with contextlib.suppress(OSError):  # unreadable: quarantined when its turn comes
                nbytes += os.stat(item.path).st_size
        workload = Workload(len(head), nbytes, INGEST_CROSSOVER)
        if workload.pays_for_a_cluster:
            break
    return itertools.chain(head, items), workload


def ingest(
    lake: Lake,
    sources: Iterable[str],
    secret: Secret,
    *,
    profile: str | Profile | None = None,
    scheduler: str = AUTO,
    workers: int | None = None,
    batch_size: int = 1000,
    task_size: int = 32,
    on_progress: Callable[[int, int], None] | None = None,
    study: str | None = None,
) -> IngestSummary:
    """Ingest files, folders and zip archives into ``lake``.

    Items stream through Dask in tasks of ``task_size`` files; rows are committed
    every ``batch_size`` instances, so memory stays bounded however many files
    there are. Re-running over the same files adds nothing (rows are keyed by the
    de-identified SOPInstanceUID, blobs by content).

    Parameters
    ----------
    lake : Lake
        The lake to ingest into.
    sources : iterable of str
        Files, folders (recursive) and ``.zip`` archives.
    secret : Secret
        The lake's key from the vault.
    profile : str or Profile, optional
        De-identification profile; the lake's default when omitted.
    scheduler : str
        ``"auto"`` (in this process below the measured crossover, else a local cluster),
        ``"sync"``, ``"processes"``, ``"threads"`` or a scheduler address; see
        :class:`lake.compute.Runner`.
    workers : int, optional
        Local worker count.
    batch_size : int
        Instances per Delta commit.
    task_size : int
        Files per Dask task.
    on_progress : callable, optional
        Called with ``(files_done, bytes_done)`` increments as tasks finish.
    study : str, optional
        The original StudyInstanceUID (or AccessionNumber) the run's documents (PDF,
        pictures, videos) belong to; by default each document's folder decides
        (see :mod:`lake.documents`).

    Returns
    -------
    IngestSummary
    """
    ingestor = Ingestor(lake, secret, profile)
    if study is not None:
        from lake.documents import document_options

        ingestor.context = document_options(lake, ingestor.context, study)
    summary = IngestSummary()
    started = time.perf_counter()
    items = iter_items(sources)
    workload = None
    if scheduler == AUTO:
        items, workload = _measured(items)
    pending: list[Outcome] = []
    batch_started = _now()
    with Runner(scheduler, workers, workload) as runner:
        tasks = _chunks(items, max(1, min(task_size, batch_size)))
        for outcomes in runner.map(_process_items, tasks, ingestor.context):
            pending.extend(outcomes)
            if on_progress is not None:
                on_progress(len(outcomes), sum(o.bytes_in for o in outcomes))
            while len(pending) >= batch_size:
                summary.add(ingestor.commit(pending[:batch_size], batch_started))
                pending, batch_started = pending[batch_size:], _now()
        if pending or not summary.batches:
            summary.add(ingestor.commit(pending, batch_started))
    summary.elapsed = time.perf_counter() - started
    return summary
