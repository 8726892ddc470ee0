"""Rewriting a Delta table's history: data files removed for good, their traces scrubbed.

Delta keeps every version: a row deleted today is still in the data files that older
versions reference, and the log describes those files (``stats``: per-column minimum and
maximum values, so identifiers) in its commit files and checkpoints. Erasure therefore:

1. finds every data file on storage that holds a matching row, whatever version uses it;
2. scrubs the log: drops the statistics of those files from every commit file, and
   replaces any erased identifier left in a commit's information (a delete predicate, a
   batch journal) by ``<erased>``; checkpoints that describe those files are replaced by
   a checkpoint of the current version, once every checkpoint due before it is written
   (delta-rs writes one after a writer's 100th commit, from the log as it read it then);
3. deletes the files. The versions that referenced them can no longer be read; which ones
   they are is computed from the log (:func:`unreadable_versions`).

The current version must no longer reference the files (delete the rows first).
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from lake._errors import CatalogError
from lake.catalog import INSTANCES, DeltaTables, Table, prune_summaries
from lake.store import atomic_write

__all__ = [
    "ERASED",
    "HistoryErasure",
    "data_files",
    "erase_files",
    "live_files",
    "log_actions",
    "matching_rows",
    "staged_leftovers",
    "token_pattern",
    "unreadable_versions",
]

ERASED = "<erased>"
_LOG = "_delta_log"
# A checkpoint's name (the Delta protocol's single-file and multi-part forms), and the
# name delta-rs's local object store stages it under before renaming it into place: a
# write killed before its rename leaves a staged file, partial, that no reader opens.
_CHECKPOINT = re.compile(r"\d{20}\.checkpoint(?:\.\d{10}\.\d{10})?\.parquet")
_STAGED = re.compile(_CHECKPOINT.pattern + r"#\d+")
STAGED_AGE = 600.0
"""Seconds after which a staged checkpoint is a killed write's leftover, not one in progress,
and after which a checkpoint due and not written will not be (:func:`_await_checkpoints`)."""
DUE_WAIT = 10.0
"""Seconds an erasure waits for a checkpoint due before its own commits to be written."""
_INTERVAL = "delta.checkpointInterval"

Match = Callable[[pa.Table], pa.Array]
"""Given rows (some columns of one data file), which of them are to be erased."""


@dataclass(frozen=True)
class HistoryErasure:
    """What :func:`erase_files` did to one table."""

    table: str
    files: tuple[str, ...]
    commits_scrubbed: int
    checkpoints_removed: int


def _table_dir(tables: DeltaTables, table: Table) -> str:
    return tables.location.join("tables", table.name)


def data_files(tables: DeltaTables, table: Table) -> list[str]:
    """Every data file of ``table`` on storage (relative paths), whichever version uses it."""
    fs = tables.location.fs
    root = _table_dir(tables, table)
    try:
        names = fs.find(root, withdirs=False)
    except FileNotFoundError:
        return []
    out = []
    for name in names:
        relative = str(name)[len(root) :].lstrip("/")
        # Paths starting with '_' are not data (Delta's convention): the log, and the
        # per-file summaries below _summary/ (lake.catalog._summary).
        if relative.endswith(".parquet") and not relative.startswith(("_", _LOG)):
            out.append(relative)
    return sorted(out)


def live_files(tables: DeltaTables, table: Table) -> set[str]:
    """The data files the current version of ``table`` reads (relative paths)."""
    actions = tables.open(table.name).get_add_actions(flatten=True)
    return {str(p) for p in pa.table(actions).column("path").to_pylist()}


def matching_rows(
    tables: DeltaTables,
    table: Table,
    columns: Sequence[str],
    match: Match,
    files: Iterable[str] | None = None,
) -> dict[str, pa.Table]:
    """Per data file on storage, its rows (``columns``) that ``match`` selects.

    Reads the files themselves, current and historical, each with the table's declared
    types (files written by delta-rs may hold ``string_view``).
    """
    fs = _arrow_fs(tables)
    root = _table_dir(tables, table)
    schema = pa.schema([table.schema.field(c) for c in columns])
    found: dict[str, pa.Table] = {}
    for relative in data_files(tables, table) if files is None else files:
        fragment = ds.ParquetFileFormat().make_fragment(f"{root}/{relative}", filesystem=fs)
        physical = fragment.physical_schema
        present = [c for c in columns if c in physical.names]
        dataset = ds.FileSystemDataset(
            [fragment], pa.schema([schema.field(c) for c in present]), fragment.format, fs
        )
        rows = dataset.to_table(columns=present)
        for name in columns:
            if name not in present:
                rows = rows.append_column(
                    schema.field(name), pa.nulls(rows.num_rows, schema.field(name).type)
                )
        rows = rows.select(list(columns))
        selected = rows.filter(match(rows))
        if selected.num_rows:
            found[relative] = selected
    return found


def _arrow_fs(tables: DeltaTables) -> pafs.FileSystem:
    """Arrow's filesystem for the lake (native for a local lake: see ``arrow_dataset``)."""
    if tables.location.is_local:
        return pafs.LocalFileSystem()
    return pafs.PyFileSystem(pafs.FSSpecHandler(tables.location.fs))


def _commit_files(tables: DeltaTables, table: Table) -> list[str]:
    fs = tables.location.fs
    folder = f"{_table_dir(tables, table)}/{_LOG}"
    return sorted(str(p) for p in fs.ls(folder, detail=False) if str(p).endswith(".json"))


def _version(path: str) -> int | None:
    stem = path.rsplit("/", 1)[-1].split(".", 1)[0]
    return int(stem) if stem.isdigit() else None


def token_pattern(tokens: Iterable[str]) -> re.Pattern[str]:
    """A pattern finding any of ``tokens`` as a whole (not inside a longer UID or hash)."""
    chosen = sorted({t for t in tokens if t}, key=len, reverse=True)
    if not chosen:
        return re.compile(r"(?!)")
    body = "|".join(re.escape(t) for t in chosen)
    return re.compile(rf"(?<![0-9A-Za-z.:])(?:{body})(?![0-9A-Za-z.])")


def _redact(value: object, tokens: re.Pattern[str]) -> object:
    if isinstance(value, str):
        return tokens.sub(ERASED, value)
    if isinstance(value, list):
        return [_redact(v, tokens) for v in value]
    if isinstance(value, dict):
        return {k: _redact(v, tokens) for k, v in value.items()}
    return value


def _scrub_line(line: str, files: frozenset[str], tokens: re.Pattern[str]) -> str:
    action = json.loads(line)
    for kind in ("add", "remove"):
        entry = action.get(kind)
        if isinstance(entry, dict) and entry.get("path") in files:
            entry.pop("stats", None)
            entry.pop("tags", None)
    info = action.get("commitInfo")
    if isinstance(info, dict):
        action["commitInfo"] = _scrub_info(info, tokens)
    text = json.dumps(action, separators=(",", ":"))
    if tokens.search(text):
        raise CatalogError(
            "an erased identifier is still in the table's log after scrubbing; nothing was "
            "deleted yet: report this, and do not re-run until it is fixed"
        )
    return text


def _scrub_info(info: dict[str, object], tokens: re.Pattern[str]) -> dict[str, object]:
    from lake.catalog._journal import JOURNAL_KEY

    journal = info.get(JOURNAL_KEY)
    if isinstance(journal, str) and tokens.search(journal):
        doc = json.loads(journal)
        doc["quarantine"] = [
            record for record in doc.get("quarantine", []) if not tokens.search(json.dumps(record))
        ]
        info = dict(info, **{JOURNAL_KEY: json.dumps(doc, separators=(",", ":"), sort_keys=True)})
    result = _redact(info, tokens)
    assert isinstance(result, dict)
    return result


def _scrub_commits(
    tables: DeltaTables, table: Table, files: frozenset[str], tokens: re.Pattern[str]
) -> int:
    fs = tables.location.fs
    changed = 0
    for path in _commit_files(tables, table):
        with fs.open(path, "rb") as fh:
            original = fh.read().decode()
        lines = [line for line in original.splitlines() if line.strip()]
        scrubbed = "\n".join(_scrub_line(line, files, tokens) for line in lines) + "\n"
        if scrubbed != original and [json.loads(x) for x in scrubbed.splitlines()] != [
            json.loads(x) for x in lines
        ]:
            atomic_write(fs, path, scrubbed.encode())
            changed += 1
    return changed


def _checkpoints(tables: DeltaTables, table: Table, name: re.Pattern[str] = _CHECKPOINT
                 ) -> list[str]:
    fs = tables.location.fs
    folder = f"{_table_dir(tables, table)}/{_LOG}"
    return sorted(
        str(p) for p in fs.ls(folder, detail=False)
        if name.fullmatch(str(p).rsplit("/", 1)[-1])
    )


def staged_leftovers(tables: DeltaTables, table: Table, now: float) -> tuple[list[str], int]:
    """The staged checkpoints of ``table`` that killed writes left, and how many are younger.

    delta-rs's local object store writes a checkpoint as ``NNN.checkpoint.parquet#N`` and
    renames it into place; a write killed in between leaves that partial file, read by no
    one, which may hold erased files' statistics and cannot be read to tell. One older than
    :data:`STAGED_AGE` is such a leftover (the rule :func:`erase_files` and
    :func:`lake.steward.gc` share); a younger one may be a write in progress. Only a local
    lake has them (``[]`` and 0 elsewhere).
    """
    if not tables.location.is_local:
        return [], 0
    fs = tables.location.fs
    old, young = [], 0
    for staged in _checkpoints(tables, table, _STAGED):
        try:
            age = now - float(fs.info(staged)["mtime"])
        except FileNotFoundError:  # renamed into place, or removed, since the listing
            continue
        if age < STAGED_AGE:
            young += 1
        else:
            old.append(staged)
    return old, young


def _remove_staged(tables: DeltaTables, table: Table, now: float) -> int:
    """Remove the staged checkpoints of killed writes (:func:`staged_leftovers`); a younger
    one may be a write in progress, so the erasure stops and asks to be run again."""
    old, young = staged_leftovers(tables, table, now)
    if young:
        raise CatalogError(
            f"a checkpoint of {table.name!r} is being written; re-run the command in "
            f"{int(STAGED_AGE) // 60} minutes"
        )
    fs = tables.location.fs
    for staged in old:
        with contextlib.suppress(FileNotFoundError):  # a gc removed it meanwhile
            fs.rm_file(staged)
    return len(old)


def _unwritten(tables: DeltaTables, table: Table, version: int, now: float) -> list[int]:
    """The versions before ``version`` whose checkpoint is due and not written yet.

    delta-rs writes a checkpoint after each commit of a version ``v`` with ``v + 1`` a
    multiple of ``delta.checkpointInterval`` (100), from the log as it reads it then: a
    writer whose such commit precedes the erasure's may still write it, describing the erased
    files (statistics included) as it read them. Those newer than every checkpoint written,
    committed less than :data:`STAGED_AGE` ago (older: the write was killed), are due.
    """
    configured = tables.open(table.name).metadata().configuration.get(_INTERVAL)
    interval = int(configured or 100)
    written = [int(p.rsplit("/", 1)[-1][:20]) for p in _checkpoints(tables, table)]
    first = (max(written, default=-1) + 1) // interval * interval + interval - 1
    due = []
    for candidate in range(first, version, interval):
        when = tables.commit_time(table.name, candidate)
        if when is not None and now - when.timestamp() < STAGED_AGE:
            due.append(candidate)
    return due


def _await_checkpoints(tables: DeltaTables, table: Table, version: int) -> None:
    """Wait (:data:`DUE_WAIT`) until no checkpoint of a version before ``version`` is due
    (:func:`_unwritten`): one written after the erasure's scan would keep what it erases.

    Raises
    ------
    CatalogError
        If one is still due (its writer is slow, or stopped): re-run the erasure.
    """
    deadline = time.monotonic() + DUE_WAIT
    while due := _unwritten(tables, table, version, time.time()):
        if time.monotonic() >= deadline:
            raise CatalogError(
                f"a checkpoint of {table.name!r} (version {due[0]}) is being written; re-run "
                f"the command once it is (in at most {int(STAGED_AGE) // 60} minutes)"
            )
        time.sleep(0.2)


def _describes(tables: DeltaTables, checkpoint: str, files: frozenset[str]) -> bool:
    with tables.location.fs.open(checkpoint, "rb") as fh:
        actions = pq.read_table(fh, columns=["add", "remove"])
    for column in ("add", "remove"):
        for entry in actions.column(column).to_pylist():
            if entry is not None and entry.get("path") in files:
                return True
    return False


def erase_files(
    tables: DeltaTables, table: Table, files: Iterable[str], tokens: Iterable[str]
) -> HistoryErasure:
    """Remove ``files`` of ``table`` for good, with every trace of them in its log.

    Idempotent: re-running after a crash finishes the job.

    Raises
    ------
    CatalogError
        If the current version still reads one of ``files`` (delete its rows first), a
        checkpoint of the table is being written (a staged one younger than
        :data:`STAGED_AGE`, or one due before the current version and not written within
        :data:`DUE_WAIT`: run it again later), or an erased identifier cannot be scrubbed
        from the log.
    """
    chosen = frozenset(files)
    wanted = {t for t in tokens if t}
    if not chosen and not wanted:
        return HistoryErasure(table.name, (), 0, 0)
    secret = token_pattern(wanted)
    live = live_files(tables, table) & chosen
    if live:
        raise CatalogError(
            f"{len(live)} data file(s) of {table.name!r} holding erased rows are in use by its "
            "current version (written again meanwhile?); re-run the command"
        )
    # Checkpoints of versions after the erased files' removal describe them by path only
    # (delta-rs writes remove actions without statistics); one of an earlier version, due
    # and not written yet, is waited for, so that the scan below sees it.
    _await_checkpoints(tables, table, int(tables.open(table.name).version()))
    removed = _remove_staged(tables, table, time.time())
    scrubbed = _scrub_commits(tables, table, chosen, secret)
    stale = [c for c in _checkpoints(tables, table) if _describes(tables, c, chosen)]
    if stale:
        tables.open(table.name).create_checkpoint()  # _last_checkpoint now names this one
        fs = tables.location.fs
        latest = _checkpoints(tables, table)
        for checkpoint in stale:
            if checkpoint in latest and _describes(tables, checkpoint, chosen):
                fs.rm_file(checkpoint)
                removed += 1
    fs = tables.location.fs
    root = _table_dir(tables, table)
    for relative in sorted(chosen):
        path = f"{root}/{relative}"
        if fs.exists(path):
            fs.rm_file(path)
    if table.name == INSTANCES.name:  # their series/study summaries hold the erased rows' UIDs
        prune_summaries(tables, data_files(tables, table))
    return HistoryErasure(table.name, tuple(sorted(chosen)), scrubbed, removed)


def log_actions(tables: DeltaTables, table: Table) -> Iterator[tuple[int, dict[str, object]]]:
    """Every action of ``table``'s commit files, with its version, oldest first."""
    fs = tables.location.fs
    for path in _commit_files(tables, table):
        version = _version(path)
        if version is None:
            continue
        with fs.open(path, "rb") as fh:
            for line in fh.read().decode().splitlines():
                if line.strip():
                    yield version, json.loads(line)


def unreadable_versions(tables: DeltaTables, table: Table) -> list[tuple[int, int]]:
    """The version ranges (inclusive) of ``table`` that read a data file no longer stored.

    Computed from the log: a file is read from the version that adds it up to the one
    before the version that removes it.
    """
    present = set(data_files(tables, table))
    added: dict[str, int] = {}
    ranges: list[tuple[int, int]] = []
    last = -1
    for version, action in log_actions(tables, table):
        last = max(last, version)
        add, remove = action.get("add"), action.get("remove")
        if isinstance(add, dict):
            added.setdefault(str(add["path"]), version)
        if isinstance(remove, dict):
            path = str(remove["path"])
            if path in added and path not in present:
                ranges.append((added[path], version - 1))
            added.pop(path, None)
    ranges.extend((start, last) for path, start in added.items() if path not in present)
    return _merge(ranges)


def _merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for start, end in sorted(r for r in ranges if r[0] <= r[1]):
        if merged and start <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged
