"""Keeping a lake tidy while it is in use: compaction, garbage collection, vacuum.

- :func:`compact` merges small data files (every ingest batch writes one) into large ones,
  optionally sorted by SOPInstanceUID so that Parquet statistics prune UID lookups. It is a
  Delta commit that changes no row: query results and every ``--as-of`` stay the same, and
  concurrent ingests simply judge their batch again (their commits must follow a snapshot).
- :func:`gc` removes what crashes and lost races leave behind and nothing references: pixel
  blobs no row of any version, spool entry or cohort names; data files no version of the log
  adds (a commit that lost its race wrote its file first); sealed originals no quarantine row
  or spool entry names; temporary files (and checkpoints killed writes left staged, by the
  rule ``lake forget`` applies). It lists the files first and reads what references
  them afterwards, so whatever is committed before that read is kept; files of a batch still
  in flight (written, not yet committed) are protected by the grace period alone, so a grace
  shorter than :data:`MIN_GRACE` is refused unless the caller says no writer runs.
- :func:`vacuum` deletes data files only versions older than ``retain`` read, keeping every
  version a saved cohort is pinned to; older versions can then no longer be read.
"""

from __future__ import annotations

import datetime as dt
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pyarrow.compute as pc

from lake._errors import ConfigError
from lake.catalog import (
    COHORTS,
    INSTANCES,
    QUARANTINE,
    TABLES,
    Table,
    prune_summaries,
    write_rep_headers,
    write_summaries,
)
from lake.catalog._layout import writer_properties
from lake.steward._history import data_files, live_files, matching_rows, staged_leftovers
from lake.store import TMP_PREFIX, modified_at

if TYPE_CHECKING:
    from lake._lake import Lake

__all__ = [
    "DEFAULT_GRACE",
    "MIN_GRACE",
    "CompactReport",
    "GcReport",
    "VacuumReport",
    "compact",
    "gc",
    "vacuum",
]

DEFAULT_GRACE = dt.timedelta(hours=1)
MIN_GRACE = DEFAULT_GRACE
"""The shortest grace :func:`gc` and :func:`vacuum` accept while writers may run (Delta's VACUUM refuses a
retention below its configured minimum in the same way). A batch in flight is protected by
the grace alone, so it must outlast any batch: an ingest commits every ``batch_size``
instances (1,000 by default; measured ~2 ms per file on this laptop, so seconds), the DICOM
receiver and STOW-RS every ``commit_every`` instances or ``commit_interval`` seconds (the
receiver 1,000 or 2 s, up to 8 s while instances keep arriving, and never more than
:data:`lake.net._config.MAX_COMMIT_WAIT`, 15 minutes, a quarter of this grace: a longer
``commit_interval`` is refused; STOW-RS 500 or 1 s). A
reused file's time is refreshed at once on a local lake, elsewhere when older than
:data:`lake.store.REFRESH_AFTER` (10 minutes; on S3 by a server-side copy).
An hour leaves ample margin."""
_LOG = "_delta_log"


@dataclass(frozen=True)
class CompactReport:
    """What :func:`compact` did to one table."""

    table: str
    files_before: int
    files_after: int
    version: int


def compact(lake: Lake, *, sort: bool = False, target_mb: int = 256) -> list[CompactReport]:
    """Merge the small data files of every table (``sort``: instances by SOPInstanceUID).

    Retried (bounded, with backoff) when another writer's commit conflicts.
    """
    from deltalake.exceptions import CommitFailedError

    from lake.catalog._retry import Backoff

    reports = []
    for table in TABLES:
        if not lake.tables.exists(table.name):
            continue
        before = len(live_files(lake.tables, table))
        backoff = Backoff(f"compaction of {table.name!r}")
        while True:
            delta = lake.tables.open(table.name)
            optimizer = delta.optimize
            layout = writer_properties(table)  # ZSTD, row groups, Bloom filters on UIDs
            try:
                if sort and table is INSTANCES:
                    optimizer.z_order(
                        ["SOPInstanceUID"], target_size=target_mb << 20, writer_properties=layout
                    )
                else:
                    optimizer.compact(target_size=target_mb << 20, writer_properties=layout)
            except CommitFailedError as exc:
                backoff.failed(exc)
                continue
            break
        if table is INSTANCES:
            write_summaries(lake.tables)  # the series/study summaries of the new files
            write_rep_headers(lake.tables)  # and of files summarised before rep_headers existed
        after = live_files(lake.tables, table)
        reports.append(
            CompactReport(
                table.name, before, len(after), int(lake.tables.open(table.name).version())
            )
        )
    lake.refresh()
    return reports


@dataclass
class GcReport:
    """What :func:`gc` removed (or would remove, in a dry run)."""

    blobs: list[str] = field(default_factory=list)
    data_files: list[str] = field(default_factory=list)
    sealed: list[str] = field(default_factory=list)
    temporary: list[str] = field(default_factory=list)
    bytes: int = 0


def _files(lake: Lake, *parts: str) -> Iterator[tuple[str, dict[str, Any]]]:
    fs = lake.location.fs
    root = lake.location.join(*parts)
    try:
        found = fs.find(root, withdirs=False, detail=True)
    except FileNotFoundError:
        return
    yield from ((str(path), dict(info)) for path, info in found.items())


def _referenced_blobs(lake: Lake) -> set[str]:
    tables = lake.tables
    keep: set[str] = set()
    for rows in matching_rows(
        tables, INSTANCES, ["pixel_hash"], lambda r: pc.is_valid(r.column(0))
    ).values():
        keep.update(rows.column("pixel_hash").to_pylist())
    if tables.exists(COHORTS.name):
        for members in (
            tables.dataset(COHORTS.name).to_table(columns=["members"]).column(0).to_pylist()
        ):
            keep.update(m["pixel_hash"] for m in members or [] if m["pixel_hash"])
    for row in _spooled_rows(lake):
        if row.get("pixel_hash"):
            keep.add(row["pixel_hash"])
    return keep


def _spooled_rows(lake: Lake) -> Iterator[dict[str, Any]]:
    from lake.ingest import Accepted, Rejected
    from lake.net._spool import Spool

    fs = lake.location.fs
    try:
        names = [
            str(p).rsplit("/", 1)[-1] for p in fs.ls(lake.location.join("spool"), detail=False)
        ]
    except FileNotFoundError:
        return
    for name in names:
        for entry in Spool(lake.location, name).entries():
            if isinstance(entry.outcome, Accepted):
                yield entry.outcome.row
            elif isinstance(entry.outcome, Rejected):
                yield entry.outcome.record


def _logged_files(lake: Lake, table: Table) -> set[str]:
    """Every data file any version of ``table`` adds (from its commit files)."""
    from lake.steward._history import log_actions

    out: set[str] = set()
    for _, action in log_actions(lake.tables, table):
        add = action.get("add")
        if isinstance(add, dict):
            out.add(str(add["path"]))
    return out


def _named_sealed(lake: Lake) -> set[str]:
    named: set[str] = set()
    if lake.tables.exists(QUARANTINE.name):
        for rows in matching_rows(
            lake.tables, QUARANTINE, ["object_key"], lambda r: pc.is_valid(r.column(0))
        ).values():
            named.update(rows.column("object_key").to_pylist())
    named.update(r["object_key"] for r in _spooled_rows(lake) if r.get("object_key"))
    return named


@dataclass(frozen=True)
class _Candidate:
    """A file old enough to go if nothing references it (listed before any reference is read)."""

    kind: str  # "blob", "data_file", "sealed", "temporary" or "aside" (of a killed gc)
    path: str
    name: str  # how the report names it
    size: int
    table: str = ""


_ASIDE = ".gc-aside-"
"""The prefix of a file gc renamed aside (:func:`_remove_if_old`)."""


def _candidates(lake: Lake, cutoff: float) -> list[_Candidate]:
    """Every file older than ``cutoff`` that gc may remove, before knowing what is referenced,
    and every file a killed gc left aside (:func:`_put_back`), whatever its age."""
    found: list[_Candidate] = []

    def old(info: dict[str, Any]) -> bool:
        return modified_at(info) < cutoff

    def aside(path: str, size: int) -> bool:
        if path.rsplit("/", 1)[-1].startswith(_ASIDE):
            found.append(_Candidate("aside", path, path, size))
            return True
        return False

    for path, info in _files(lake, "blobs"):
        name, size = path.rsplit("/", 1)[-1], int(info.get("size") or 0)
        if aside(path, size) or not old(info):
            continue
        if name.startswith(TMP_PREFIX):
            found.append(_Candidate("temporary", path, path, size))
        elif not name.startswith("."):
            found.append(_Candidate("blob", path, f"sha256:{name}", size))
    for table in TABLES:
        root = lake.location.join("tables", table.name)
        for path, info in _files(lake, "tables", table.name):
            relative, size = path[len(root) :].lstrip("/"), int(info.get("size") or 0)
            if aside(path, size) or not old(info):
                continue
            if (relative.startswith(f"{_LOG}/") and relative.endswith(".tmp")) or (
                relative.rsplit("/", 1)[-1].startswith(TMP_PREFIX)  # e.g. a summary's (_summary)
            ):
                found.append(_Candidate("temporary", path, path, size))
            elif (relative.endswith(".parquet") and not relative.startswith("_")
                  and not relative.rsplit("/", 1)[-1].startswith(".")):
                # not _delta_log nor _summary: a data file
                found.append(_Candidate("data_file", path, relative, size, table.name))
    for path, info in _files(lake, "quarantine"):
        name, size = path.rsplit("/", 1)[-1], int(info.get("size") or 0)
        if aside(path, size) or not old(info):
            continue
        if name.startswith(TMP_PREFIX):
            found.append(_Candidate("temporary", path, path, size))
        elif name.endswith(".sealed") and not name.startswith("."):
            found.append(_Candidate("sealed", path, name, size))
    return found



def _put_back(path: str) -> None:
    """Put back a file that a gc killed between renaming it aside and deciding left aside.

    Such a file may be a blob or sealed original a writer refreshed (reused) just before the
    rename: rows may need it. When its name is free again it goes back (a later gc judges it
    anew); when a writer has stored it again meanwhile, the aside copy (same content) goes.
    """
    folder, name = path.rsplit("/", 1)
    original = f"{folder}/{name[len(_ASIDE):]}"
    if os.path.exists(original):
        os.unlink(path)
    else:
        os.rename(path, original)


def _remove_if_old(lake: Lake, path: str, cutoff: float) -> bool:
    """Remove ``path`` if it is still older than ``cutoff``; whether it was removed.

    A batch that reuses a stored blob or sealed original refreshes its time
    (:func:`lake.store.reused`). On a local lake the file is first renamed aside, atomically,
    and its time read there: a refresh made before the rename is seen (the file is put
    back), one after it finds no file and writes it again. Elsewhere the time is read again
    just before the removal: two requests, and a refresh (S3 CopyObject) completing between
    them is lost; S3 cannot condition the delete on it (``If-Match`` compares ETags, which
    the refresh keeps; a last-modified condition exists for directory buckets only). See
    docs/steward.md (gc) for what follows and how it is repaired.
    """
    fs = lake.location.fs
    if lake.location.is_local:
        folder, name = path.rsplit("/", 1)
        aside = f"{folder}/{_ASIDE}{name}"  # named for what it is: a killed gc's is put back
        try:
            os.rename(path, aside)
        except FileNotFoundError:
            return False
        if os.stat(aside).st_mtime < cutoff:
            os.unlink(aside)
            return True
        os.replace(aside, path)  # refreshed by a writer: put back (same content either way)
        return False
    fs.invalidate_cache(path)  # an object store's listing cache holds the time gc listed
    try:
        if modified_at(dict(fs.info(path))) >= cutoff:
            return False
    except FileNotFoundError:
        return False
    fs.rm_file(path)
    return True


def gc(
    lake: Lake,
    *,
    grace: dt.timedelta = DEFAULT_GRACE,
    dry_run: bool = False,
    no_writers_running: bool = False,
) -> GcReport:
    """Remove unreferenced blobs, data files, sealed originals and temporary files.

    Files are listed first, and only then is what references them read (every data file of
    every table on storage, cohorts, spool entries), so whatever a writer commits before that
    read is kept. Among unreferenced files only those last modified more than ``grace`` ago
    go: a batch in flight (blobs and sealed originals written, rows not yet committed) is
    protected by the grace alone, so a grace shorter than :data:`MIN_GRACE` is refused unless
    ``no_writers_running`` says that no ingest, DICOM receiver or upload writes to the lake.

    Raises
    ------
    ConfigError
        If ``grace`` is negative, or shorter than :data:`MIN_GRACE` without
        ``no_writers_running``.
    """
    _check_grace(grace, no_writers_running)
    from lake.catalog import complete_batches

    complete_batches(lake.tables)  # a batch's journal names quarantine rows: restore them first
    cutoff = time.time() - grace.total_seconds()
    report = GcReport()
    # 1. what could go (listed first) ...
    candidates = _candidates(lake, cutoff)
    if not dry_run:  # only a local lake's gc renames aside
        for c in candidates:
            if c.kind == "aside":
                _put_back(c.path)
    # 2. ... then what references files: anything committed before this point is kept.
    referenced = _referenced_blobs(lake)
    logged = {
        table.name: _logged_files(lake, table)
        for table in TABLES
        if lake.tables.exists(table.name)
    }
    named = _named_sealed(lake)
    doomed: list[_Candidate] = []
    for c in candidates:
        if (
            c.kind == "temporary"
            or (c.kind == "blob" and c.name not in referenced)
            or (c.kind == "data_file" and c.table in logged and c.name not in logged[c.table])
            or (c.kind == "sealed" and f"quarantine/{c.name}" not in named)
        ):
            doomed.append(c)
    if not dry_run:  # what a writer refreshed since the listing stays (and is not reported)
        doomed = [c for c in doomed if _remove_if_old(lake, c.path, cutoff)]
    for c in doomed:
        if c.kind == "temporary":
            report.temporary.append(c.name)
        elif c.kind == "blob":
            report.blobs.append(c.name)
        elif c.kind == "data_file":
            report.data_files.append(f"{c.table}/{c.name}")
        else:
            report.sealed.append(c.name[: -len(".sealed")])
        report.bytes += c.size
    _staged_checkpoints(lake, report, dry_run)
    return report


def _staged_checkpoints(lake: Lake, report: GcReport, dry_run: bool) -> None:
    """Remove the staged checkpoints killed writes left (``NNN.checkpoint.parquet#N``), by
    the rule ``lake forget`` applies (:func:`lake.steward._history.staged_leftovers`: older
    than ten minutes, whatever the grace); they are reported as temporary files."""
    fs = lake.location.fs
    for table in TABLES:
        if not lake.tables.exists(table.name):
            continue
        for path in staged_leftovers(lake.tables, table, time.time())[0]:
            try:
                size = int(fs.info(path).get("size") or 0)
                if not dry_run:
                    fs.rm_file(path)
            except FileNotFoundError:  # removed meanwhile (a forget, another gc)
                continue
            report.temporary.append(path)
            report.bytes += size


def _hours(span: dt.timedelta) -> str:
    hours = span.total_seconds() / 3600
    return f"{hours:g} hour" + ("" if hours == 1 else "s")


@dataclass(frozen=True)
class VacuumReport:
    """What :func:`vacuum` removed (or would remove, in a dry run)."""

    files: tuple[str, ...]
    bytes: int
    oldest_kept: dict[str, int]
    """Per table, the oldest version (not pinned by a cohort) that can still be read."""


def _commit_times(lake: Lake, table: Table) -> dict[int, float]:
    from lake.steward._history import log_actions

    times: dict[int, float] = {}
    for version, action in log_actions(lake.tables, table):
        info = action.get("commitInfo")
        if isinstance(info, dict) and isinstance(info.get("timestamp"), int | float):
            times[version] = float(info["timestamp"]) / 1000.0
    return times


def _pinned_versions(lake: Lake) -> set[int]:
    if not lake.tables.exists(COHORTS.name):
        return set()
    versions = lake.tables.dataset(COHORTS.name).to_table(columns=["catalog_version"]).column(0)
    return {int(v) for v in versions.to_pylist() if v is not None}


def _check_grace(grace: dt.timedelta, no_writers_running: bool) -> None:
    """The rule :func:`gc` and :func:`vacuum` share: at least :data:`MIN_GRACE`, unless the
    caller says that nothing writes to the lake meanwhile."""
    if grace < dt.timedelta(0):
        raise ConfigError("the grace period cannot be negative")
    if grace < MIN_GRACE and not no_writers_running:
        raise ConfigError(
            f"a grace period of {_hours(grace)} is shorter than the {_hours(MIN_GRACE)} that "
            "protects ingest batches and commits in flight; keep at least that, or pass "
            "no_writers_running=True if no ingest, DICOM receiver or upload writes to this lake "
            "until it ends",
            parameters=("no_writers_running",),
        )


def vacuum(
    lake: Lake,
    *,
    retain: dt.timedelta,
    grace: dt.timedelta = DEFAULT_GRACE,
    dry_run: bool = False,
    no_writers_running: bool = False,
) -> VacuumReport:
    """Delete data files that only versions older than ``retain`` read.

    Kept: files of the current version, of every version committed within ``retain``
    (and ``grace``, whichever is longer), and of every ``instances`` version a saved
    cohort is pinned to. Older versions can no longer be read afterwards.

    The grace protects what works on a version that was current a moment ago (a commit
    judged against it, an export or a query reading it), so, as for :func:`gc`, a grace
    shorter than :data:`MIN_GRACE` is refused unless ``no_writers_running`` says that
    nothing writes to the lake (nor reads an older version) until vacuum ends.

    Raises
    ------
    ConfigError
        If ``retain`` or ``grace`` is negative, or ``grace`` is shorter than
        :data:`MIN_GRACE` without ``no_writers_running``.
    """
    from lake.steward._history import log_actions

    if retain < dt.timedelta(0):
        raise ConfigError("the retention cannot be negative")
    _check_grace(grace, no_writers_running)
    cutoff = time.time() - max(retain, grace).total_seconds()
    pinned = _pinned_versions(lake)
    fs = lake.location.fs
    removed: list[str] = []
    size = 0
    oldest: dict[str, int] = {}
    for table in TABLES:
        if not lake.tables.exists(table.name):
            continue
        times = _commit_times(lake, table)
        latest = max(times) if times else 0
        retained = {v for v, t in times.items() if t >= cutoff} | {latest}
        if table is INSTANCES:
            retained |= pinned
        oldest[table.name] = min(
            (v for v in retained if v not in pinned or table is not INSTANCES), default=latest
        )
        spans: dict[str, list[int]] = {}
        for version, action in log_actions(lake.tables, table):
            add, remove = action.get("add"), action.get("remove")
            if isinstance(add, dict):
                spans.setdefault(str(add["path"]), [version, latest + 1])
            if isinstance(remove, dict) and str(remove["path"]) in spans:
                spans[str(remove["path"])][1] = version
        live = live_files(lake.tables, table)
        root = lake.location.join("tables", table.name)
        for relative in data_files(lake.tables, table):
            if relative in live or relative not in spans:
                continue  # unlogged files are gc's (they may be a commit in flight)
            start, end = spans[relative]
            if any(start <= v < end for v in retained):
                continue
            path = f"{root}/{relative}"
            size += int(fs.size(path) or 0)
            removed.append(f"{table.name}/{relative}")
            if not dry_run:
                fs.rm_file(path)
    if not dry_run and removed:
        # Summaries of data files no longer on storage (lake.catalog._summary).
        prune_summaries(lake.tables, data_files(lake.tables, INSTANCES))
    return VacuumReport(tuple(removed), size, oldest)
