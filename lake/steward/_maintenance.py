"""Keeping a lake tidy while it is in use: compaction, garbage collection, vacuum.

- :func:`compact` merges small data files (every ingest batch writes one) into large ones,
  optionally sorted by SOPInstanceUID so that Parquet statistics prune UID lookups. It is a
  Delta commit that changes no row: query results and every ``--as-of`` stay the same, and
  concurrent ingests simply judge their batch again (their commits must follow a snapshot).
- :func:`gc` removes what crashes and lost races leave behind and nothing references: pixel
  blobs no row of any version, spool entry or cohort names; data files no version of the log
  adds (a commit that lost its race wrote its file first); sealed originals no quarantine row
  or spool entry names; temporary files. Only files older than a grace period are touched,
  so work in flight (a batch between writing its blobs and its commit) is never removed.
- :func:`vacuum` deletes data files only versions older than ``retain`` read, keeping every
  version a saved cohort is pinned to; older versions can then no longer be read.
"""

from __future__ import annotations

import datetime as dt
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
    write_summaries,
)
from lake.catalog._layout import writer_properties
from lake.steward._history import data_files, live_files, matching_rows

if TYPE_CHECKING:
    from lake._lake import Lake

__all__ = ["CompactReport", "GcReport", "VacuumReport", "compact", "gc", "vacuum"]

DEFAULT_GRACE = dt.timedelta(hours=1)
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


def _mtime(info: dict[str, Any]) -> float:
    for key in ("mtime", "LastModified", "last_modified", "created"):
        value = info.get(key)
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, dt.datetime):
            return value.timestamp()
    return time.time()  # unknown: treat as new, never removed


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


def gc(lake: Lake, *, grace: dt.timedelta = DEFAULT_GRACE, dry_run: bool = False) -> GcReport:
    """Remove unreferenced blobs, data files, sealed originals and temporary files.

    Only files last modified more than ``grace`` ago are considered.
    """
    if grace < dt.timedelta(0):
        raise ConfigError("the grace period cannot be negative")
    from lake.catalog import complete_batches

    complete_batches(lake.tables)  # a batch's journal names quarantine rows: restore them first
    cutoff = time.time() - grace.total_seconds()
    fs = lake.location.fs
    report = GcReport()
    doomed: list[str] = []

    def old(info: dict[str, Any]) -> bool:
        return _mtime(info) < cutoff

    referenced = _referenced_blobs(lake)
    for path, info in _files(lake, "blobs"):
        name = path.rsplit("/", 1)[-1]
        if name.startswith(".tmp-") and old(info):
            report.temporary.append(path)
        elif not name.startswith(".") and f"sha256:{name}" not in referenced and old(info):
            report.blobs.append(f"sha256:{name}")
        else:
            continue
        doomed.append(path)
        report.bytes += int(info.get("size") or 0)
    for table in TABLES:
        if not lake.tables.exists(table.name):
            continue
        logged = _logged_files(lake, table)
        root = lake.location.join("tables", table.name)
        for path, info in _files(lake, "tables", table.name):
            relative = path[len(root) :].lstrip("/")
            stale_temp = (relative.startswith(f"{_LOG}/") and relative.endswith(".tmp")) or (
                relative.rsplit("/", 1)[-1].startswith(".tmp-")  # e.g. a summary's, below _summary
            )
            if stale_temp and old(info):
                report.temporary.append(path)
            elif (
                relative.endswith(".parquet")
                and not relative.startswith("_")  # _delta_log, _summary (not data files)
                and relative not in logged
                and old(info)
            ):
                report.data_files.append(f"{table.name}/{relative}")
            else:
                continue
            doomed.append(path)
            report.bytes += int(info.get("size") or 0)
    named = set()
    if lake.tables.exists(QUARANTINE.name):
        for rows in matching_rows(
            lake.tables, QUARANTINE, ["object_key"], lambda r: pc.is_valid(r.column(0))
        ).values():
            named.update(rows.column("object_key").to_pylist())
    named.update(r["object_key"] for r in _spooled_rows(lake) if r.get("object_key"))
    for path, info in _files(lake, "quarantine"):
        name = path.rsplit("/", 1)[-1]
        if name.startswith(".tmp-") and old(info):
            report.temporary.append(path)
        elif name.endswith(".sealed") and f"quarantine/{name}" not in named and old(info):
            report.sealed.append(name[: -len(".sealed")])
        else:
            continue
        doomed.append(path)
        report.bytes += int(info.get("size") or 0)
    if not dry_run:
        for path in doomed:
            if fs.exists(path):
                fs.rm_file(path)
    return report


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


def vacuum(
    lake: Lake,
    *,
    retain: dt.timedelta,
    grace: dt.timedelta = DEFAULT_GRACE,
    dry_run: bool = False,
) -> VacuumReport:
    """Delete data files that only versions older than ``retain`` read.

    Kept: files of the current version, of every version committed within ``retain``
    (and ``grace``, whichever is longer), and of every ``instances`` version a saved
    cohort is pinned to. Older versions can no longer be read afterwards.
    """
    from lake.steward._history import log_actions

    if retain < dt.timedelta(0):
        raise ConfigError("the retention cannot be negative")
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
