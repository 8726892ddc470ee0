"""The ingest driver: stream items to workers, commit one batch of rows per Delta commit."""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import importlib
import itertools
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any

from lake._capture import capture
from lake._errors import InputRefusedError
from lake.compute import AUTO, INGEST_CROSSOVER, Runner, Workload
from lake.deid import Deidentifier, Profile, load_profile
from lake.ingest._commit import BatchResult, Original, _Counts, commit_batch
from lake.ingest._content import NOT_MEDICAL, sniff
from lake.ingest._instance import IngestContext, Outcome, Rejected, process_bytes, reject
from lake.ingest._limits import ReadLimits
from lake.ingest._quarantine import quarantine_key
from lake.ingest._sources import (
    ZIP_ERRORS,
    Archives,
    NotRegularFileError,
    SourceItem,
    SourceReport,
    iter_items,
    read_item,
)
from lake.vault import Secret

if TYPE_CHECKING:
    from lake._lake import Lake
    from lake.catalog import TombstoneCache
    from lake.documents import FolderStudies

__all__ = ["BatchResult", "IngestSummary", "Ingestor", "ingest"]

_LOG = logging.getLogger(__name__)

_TASK_BYTES = 64 * 1024 * 1024
"""Most bytes a task carries to a worker (members of nested archives travel as bytes)."""


def _chunks(items: Iterable[SourceItem], size: int) -> Iterator[list[SourceItem]]:
    """Tasks of ``size`` items, cut early once the bytes they carry reach ``_TASK_BYTES``."""
    chunk: list[SourceItem] = []
    carried = 0
    for item in items:
        chunk.append(item)
        carried += len(item.data) if item.data is not None else 0
        if len(chunk) >= size or carried >= _TASK_BYTES:
            yield chunk
            chunk, carried = [], 0
    if chunk:
        yield chunk


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass
class IngestSummary(_Counts):
    """Totals of an ingest run.

    ``suppressed`` counts the parser warnings and library log records raised while the
    files were read and de-identified (in this process or in workers), dropped because
    they can quote original values (:mod:`lake._capture`); ``warned_files`` counts the
    files that raised any. Counts only: no message text is kept.
    """

    batches: list[str] = field(default_factory=list)
    elapsed: float = 0.0
    sources: SourceReport = field(default_factory=SourceReport)
    suppressed: int = 0
    warned_files: int = 0

    def add(self, batch: BatchResult) -> None:
        """Add one committed batch to the totals."""
        for name in (
            "files_seen",
            "ingested",
            "duplicates",
            "quarantined",
            "conflicts",
            "replaced",
            "erased",
            "mixed_series",
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
    limits : ReadLimits, optional
        Bounds on what is read; by default the ``ingest`` section of ``lake.json`` (every
        front door: files, C-STORE, STOW-RS).
    replace : bool
        Replace the stored rows of instances committed again when they were de-identified
        otherwise (another profile): a new catalog version; older versions keep the old
        rows. Off: such instances are duplicates.
    """

    def __init__(
        self,
        lake: Lake,
        secret: Secret,
        profile: str | Profile | None = None,
        source: str = "ingest",
        limits: ReadLimits | None = None,
        replace: bool = False,
    ) -> None:
        self.lake = lake
        self.source = source
        self.replace = replace
        chosen = profile if profile is not None else lake.config.default_profile
        self.profile = chosen if isinstance(chosen, Profile) else load_profile(chosen)
        self.context = IngestContext(
            location=lake.location,
            engine=Deidentifier(self.profile, secret),
            quarantine_key=quarantine_key(secret),
            limits=limits or ReadLimits.from_settings(lake.config.ingest),
        )
        self._secret = secret

    @functools.cached_property
    def tombstone_key(self) -> bytes:
        """Tests instance rows against the erasure tombstones at commit (lake.steward.forget)."""
        from lake.catalog._tombstones import PURPOSE

        return self._secret.derive(PURPOSE)

    @functools.cached_property
    def tombstones(self) -> TombstoneCache:
        """The erasure tombstones, read at commit. Imported then, not before: the catalog's
        Delta modules start native threads, and an ingest's pool forks its workers only
        from a driver without them (:mod:`lake.compute._pool`)."""
        from lake.catalog._tombstones import TombstoneCache

        return TombstoneCache(self.tombstone_key)

    def process(self, data: bytes) -> Outcome:
        """De-identify one instance and store its pixels (no commit)."""
        return process_bytes(data, self.context)

    def commit(
        self,
        outcomes: Sequence[Outcome],
        started_at: dt.datetime | None = None,
        originals: Sequence[Original | None] | None = None,
    ) -> BatchResult:
        """Commit one batch, exactly once, whatever other writers do at the same time.

        One Delta commit adds the batch's new instance rows (SOPInstanceUIDs the table
        does not hold yet) together with its journal: the batch row and the quarantine
        rows, appended next (each keyed, so exactly once) and materialised from the
        journal by ``lake verify`` if this process dies in between.

        An instance whose SOPInstanceUID the lake (or this batch) holds already is a
        duplicate when it is the same object, in any transfer syntax; a different object
        reusing the UID is quarantined as ``uid_conflict`` (the first one is kept), its
        original sealed if ``originals`` can read it again.

        Parameters
        ----------
        outcomes : sequence of Outcome
            What :meth:`process` returned, in any order.
        started_at : datetime, optional
            When the batch started (default: now).
        originals : sequence, optional
            Per outcome, a function that reads its original bytes again, or None. Called
            only for a UID conflict, to seal the original in quarantine (front doors that
            cannot read it again pass None: the conflict is recorded, unsealed).
        """
        return commit_batch(
            self, outcomes, started_at or _now(), originals, replace=self.replace
        )

    def batch_row(self, batch: BatchResult, started_at: dt.datetime) -> dict[str, Any]:
        """The ``batches`` row of ``batch`` (its catalog_version set once committed)."""
        return {
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
            "catalog_version": None,  # the commit's own version, known once it is made
            "replaced": batch.replaced,
            "erased": batch.erased,
        }


def _unsealed(reason: str, message: str, size: int | None = None) -> Rejected:
    """A quarantine record for input that was not read (so nothing is sealed)."""
    record = {
        "source_sha256": None,
        "size_bytes": size,
        "reason": reason,
        "message": message,
        "object_key": None,
    }
    return Rejected(record, 0)


@dataclass(frozen=True)
class Skipped:
    """A file that was not ingested nor quarantined: ``kind`` says what it is."""

    kind: str


@dataclass(frozen=True)
class _FileReading:
    """What workers need to read files: the ingest context and the file rules."""

    context: IngestContext
    strict: bool = False


def _read(item: SourceItem, limits: ReadLimits, archives: Archives) -> bytes | Outcome | Skipped:
    if item.refused is not None:
        return _unsealed(*item.refused, size=item.size)
    try:
        return read_item(item, limits, archives)
    except NotRegularFileError:
        return Skipped("not_regular")  # replaced by a FIFO or device since the walk
    except InputRefusedError as exc:
        return _unsealed(exc.reason, exc.message)
    except ZIP_ERRORS as exc:
        return _unsealed(
            "bad_zip_member",
            f"the zip member cannot be read ({type(exc).__name__}); the other members are read",
        )
    except OSError as exc:
        return _unsealed("unreadable", f"the file cannot be read ({type(exc).__name__})")


@dataclass(frozen=True)
class _Suppressed:
    """What a task's scope captured: warnings plus log records, and the files that raised any
    (counts only; a task's result carries them back from a worker process)."""

    total: int = 0
    files: int = 0


def _process_items(
    items: list[SourceItem], reading: _FileReading
) -> tuple[list[Outcome | Skipped], _Suppressed]:
    """Read, classify and process one task's items (on a worker); and what its scope counted.

    Everything runs inside :func:`lake._capture.capture`: the documents hook reads the DICOM
    files beside a document, and parser warnings quote original values. The scope's count,
    and in how many files, comes back with the results.
    """
    from lake.documents import FolderStudies

    folders = FolderStudies(reading.context.engine, reading.context.limits)  # read once a folder
    results: list[Outcome | Skipped] = []
    warned = 0
    with Archives() as archives, capture() as captured:
        for item in items:
            before = captured.total
            results.append(_item_outcome(item, reading, archives, folders))
            warned += captured.total > before
    return results, _Suppressed(captured.total, warned)


def _item_outcome(item: SourceItem, reading: _FileReading, archives: Archives,
                  folders: FolderStudies) -> Outcome | Skipped:
    from lake.documents import ingest_item

    ctx = reading.context
    data = _read(item, ctx.limits, archives)
    if not isinstance(data, bytes):
        return data
    try:  # documents (PDF, pictures, videos) are wrapped as DICOM, never skipped
        document = ingest_item(item.path, item.member, data, ctx, folders, ctx.documents)
    except RecursionError:
        return reject(ctx, data, "too_deep", "sequences are nested too deeply to read")
    except Exception as exc:  # noqa: BLE001 - one bad file must not sink the batch
        return reject(ctx, data, "processing_error",
                      f"processing failed ({type(exc).__name__}); the original is kept sealed")
    if document is not None:
        return document
    kind = sniff(data)
    if kind in NOT_MEDICAL and not reading.strict:
        return Skipped(kind.value)
    return process_bytes(data, ctx)


def _process_sourced(
    items: list[SourceItem], reading: _FileReading
) -> tuple[list[tuple[SourceItem | None, Outcome | Skipped]], _Suppressed]:
    """:func:`_process_items`, each result with its item, or None for an item that cannot
    be read again (content read while walking: a member of a nested archive); and what the
    task's capture scope counted."""
    results, counted = _process_items(items, reading)
    rereadable = [item if item.data is None else None for item in items]
    return list(zip(rereadable, results, strict=True)), counted


def _original(item: SourceItem | None, limits: ReadLimits) -> Original | None:
    """A function reading ``item`` again, for sealing it if it turns out a UID conflict."""
    return None if item is None else functools.partial(_read_again, item, limits)


def _read_again(item: SourceItem, limits: ReadLimits) -> bytes:
    with Archives() as archives:
        return read_item(item, limits, archives)


WORKER_MODULES = ("lake.documents", "lake.nifti._derive")
"""What the per-file work imports at an ingest's first file (documents with pikepdf and PIL,
the NIfTI acquisition derivation with nibabel's CSA reader: ~165 modules, ~0.03 s of CPU each
package, measured), imported by :func:`ingest` before its pool forks the workers, which then
inherit them instead of each importing them again. None of them starts a thread
(``tests/test_ingest_fork.py``), so the pool still forks."""


def load_worker_modules() -> None:
    """Import :data:`WORKER_MODULES` in this process (a no-op once imported)."""
    for name in WORKER_MODULES:
        importlib.import_module(name)


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
    limits: ReadLimits | None = None,
    strict: bool = False,
    follow_symlinks: bool = False,
    replace: bool = False,
) -> IngestSummary:
    """Ingest files, folders and zip archives into ``lake``.

    Items stream through Dask in tasks of ``task_size`` files; rows are committed
    every ``batch_size`` instances, so memory stays bounded however many files
    there are. Re-running over the same files adds nothing (rows are keyed by the
    de-identified SOPInstanceUID, blobs by content).

    Only regular files are read, each within ``limits`` (an input over a bound is
    quarantined with the reason, unread). Files that are plainly not medical images
    (text, JSON, NIfTI: see :mod:`lake.ingest._content`) are skipped and counted in
    ``summary.sources.skipped``; what could not be walked (unreadable folders, links to
    folders, broken links) is counted per source in ``summary.sources.missing``.

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
    limits : ReadLimits, optional
        Bounds on what is read; by default the ``ingest`` section of ``lake.json``.
    strict : bool
        Quarantine files that are plainly not medical images instead of skipping them.
    follow_symlinks : bool
        Walk links to folders (each folder once) instead of counting them as missing.
    replace : bool
        Replace the rows of instances already in the lake that were de-identified
        otherwise (re-profiling; see :class:`Ingestor`).

    Returns
    -------
    IngestSummary
    """
    if limits is None:
        limits = ReadLimits.from_settings(lake.config.ingest)
    ingestor = Ingestor(lake, secret, profile, limits=limits, replace=replace)
    if study is not None:
        from lake.documents import document_options

        ingestor.context = document_options(lake, ingestor.context, study)
    summary = IngestSummary()
    started = time.perf_counter()
    items = iter_items(
        sources, limits=limits, report=summary.sources, follow_symlinks=follow_symlinks
    )
    workload = None
    if scheduler == AUTO:
        items, workload = _measured(items)
    reading = _FileReading(ingestor.context, strict)
    load_worker_modules()  # once here, not once per forked worker (and sync needs them anyway)
    pending: list[Outcome] = []
    originals: list[Original | None] = []  # per pending outcome: read its file again
    batch_started = _now()
    with Runner(scheduler, workers, workload) as runner, _Committer(
        ingestor, summary, background=runner.scheduler != "sync"
    ) as committer:
        tasks = _chunks(items, max(1, min(task_size, batch_size)))
        for sourced, suppressed in runner.map(_process_sourced, tasks, reading):
            summary.suppressed += suppressed.total
            summary.warned_files += suppressed.files
            results = [result for _, result in sourced]
            outcomes: list[Outcome] = []
            for item, result in sourced:
                if isinstance(result, Skipped):
                    summary.sources.skipped[result.kind] += 1
                else:
                    outcomes.append(result)
                    originals.append(_original(item, limits))
            pending.extend(outcomes)
            if on_progress is not None:
                on_progress(len(results), sum(o.bytes_in for o in outcomes))
            while len(pending) >= batch_size:
                committer.commit(pending[:batch_size], batch_started, originals[:batch_size])
                pending, batch_started = pending[batch_size:], _now()
                originals = originals[batch_size:]
        if pending or not committer.committed:
            committer.commit(pending, batch_started, originals)
    summary.elapsed = time.perf_counter() - started
    return summary


class _Committer:
    """Commits an ingest's batches one after the other, in order: on this thread, or on one
    thread of its own (``background``) while this one goes on feeding the workers.

    A commit ends with a sync of the disk and the Delta commits: seconds of waiting on a busy
    machine (2.4-22 s a batch of 1,000 at load 12), during which no result was taken from the
    workers and they ran out of tasks. In the background, the next batch gathers meanwhile;
    it is handed over only once the previous commit is done, so at most two batches are held
    and the commits keep their order. A commit's error is raised at the next hand-over or at
    the end; when the run fails on this thread meanwhile, it is chained to that error.
    """

    def __init__(self, ingestor: Ingestor, summary: IngestSummary, *, background: bool) -> None:
        self.ingestor = ingestor
        self.summary = summary
        self.committed = False
        self._thread = (
            ThreadPoolExecutor(1, thread_name_prefix="lake-commit") if background else None
        )
        self._running: Future[BatchResult] | None = None

    def commit(
        self, outcomes: list[Outcome], started_at: dt.datetime,
        originals: list[Original | None],
    ) -> None:
        """Commit one batch (after the one before it)."""
        self.committed = True
        self._finish()
        if self._thread is None:
            self.summary.add(self.ingestor.commit(outcomes, started_at, originals))
        else:
            self._running = self._thread.submit(
                self.ingestor.commit, outcomes, started_at, originals
            )

    def _finish(self) -> None:
        running, self._running = self._running, None
        if running is not None:
            self.summary.add(running.result())

    def __enter__(self) -> _Committer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if exc_type is None:
                self._finish()
        finally:
            if self._thread is not None:
                self._thread.shutdown(wait=True)  # a commit under way completes
        if exc is not None:
            self._keep_visible(exc)

    def _keep_visible(self, exc: BaseException) -> None:
        """Chain the error of a commit that failed while ``exc`` ended the run on this thread.

        Both are raised as one: ``exc`` (what stopped the driver), with the commit's error as
        the ``__context__`` of the innermost exception of its chain (none is replaced), and
        named by its type only in a note and a logged warning (its message may quote a
        value). A failed commit leaves the lake consistent (``Lake.verify()`` completes a
        batch whose record is missing); re-running the ingest finishes the job without
        duplicates.
        """
        running, self._running = self._running, None
        failed = None if running is None else running.exception()
        if failed is None:
            return
        chain, innermost = {id(exc)}, exc
        while innermost.__context__ is not None and id(innermost.__context__) not in chain:
            innermost = innermost.__context__
            chain.add(id(innermost))
        if id(failed) in chain:
            return  # raised already, as part of exc
        if innermost.__context__ is None:
            innermost.__context__ = failed
        note = (
            f"a background commit of this ingest failed too ({type(failed).__name__}); "
            "re-run the ingest to finish it (no duplicates are created)"
        )
        exc.add_note(note)
        _LOG.warning(note)  # seen also where only exc's message is shown (the command line)
