"""The batch journal: a batch's own records, committed atomically with its instance rows.

A batch writes three tables (instances, quarantine, batches) and Delta commits one table
at a time. So the instances commit of a batch carries, in its commit info, the batch row
and the quarantine rows it will append next: if the writer dies between its commits,
whatever is missing is materialised from this journal later (:func:`complete_batches`,
run by ``lake verify``), once, because quarantine and batch rows are inserted keyed by
``source_sha256`` and ``batch_id``. The journal holds only what those rows hold: counts,
reason codes, hashes; never an original value or a path.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from lake.catalog._schema import BATCHES, INSTANCES, QUARANTINE, Table
from lake.catalog._tables import DeltaTables

__all__ = ["JOURNAL_KEY", "BatchJournal", "complete_batches", "journal_of", "record_batch"]

JOURNAL_KEY = "imaging-lake.batch"
_LOG = "_delta_log"


@dataclass(frozen=True)
class BatchJournal:
    """One batch's records as written into its instances commit."""

    batch: dict[str, Any]
    quarantine: list[dict[str, Any]]

    def encode(self) -> dict[str, str]:
        """Commit metadata holding this journal."""
        doc = {
            "batch": _to_json(BATCHES, self.batch),
            "quarantine": [_to_json(QUARANTINE, row) for row in self.quarantine],
        }
        return {JOURNAL_KEY: json.dumps(doc, separators=(",", ":"), sort_keys=True)}

    @classmethod
    def decode(cls, text: str, version: int) -> BatchJournal:
        """The journal stored in the commit of ``version``."""
        doc = json.loads(text)
        batch = _from_json(BATCHES, doc["batch"])
        batch["catalog_version"] = version
        return cls(batch, [_from_json(QUARANTINE, row) for row in doc["quarantine"]])


def _to_json(table: Table, row: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for column in table.columns:  # declared types: no pyarrow needed (issue 14.1)
        value = row.get(column.name)
        if isinstance(value, dt.datetime):
            value = value.isoformat()
        elif column.declared.factory == "map_" and value is not None:
            value = [list(pair) for pair in value]
        out[column.name] = value
    return out


def _from_json(table: Table, doc: dict[str, Any]) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for column in table.columns:
        value = doc.get(column.name)
        if column.declared.factory == "timestamp" and value is not None:
            value = dt.datetime.fromisoformat(value)
        elif column.declared.factory == "map_" and value is not None:
            value = [tuple(pair) for pair in value]
        row[column.name] = value
    return row


def journal_of(commit_info: dict[str, Any], version: int) -> BatchJournal | None:
    """The batch journal in one commit's ``commitInfo``, if it has one."""
    text = commit_info.get(JOURNAL_KEY)
    return BatchJournal.decode(text, version) if isinstance(text, str) else None


def _journals(tables: DeltaTables) -> Iterator[BatchJournal]:
    """Every batch journal in the instances log, newest commit first.

    Read from the commit files themselves (``_delta_log/<version>.json``): the file
    name is the version, which deltalake's ``history()`` can misnumber.
    """
    fs = tables.location.fs
    folder = tables.location.join("tables", INSTANCES.name, _LOG)
    versions = sorted(
        (
            int(name.rsplit("/", 1)[-1][: -len(".json")])
            for name in fs.ls(folder, detail=False)
            if name.endswith(".json") and name.rsplit("/", 1)[-1][: -len(".json")].isdigit()
        ),
        reverse=True,
    )
    for version in versions:
        with fs.open(f"{folder}/{version:020d}.json", "rb") as fh:
            for line in fh:
                action = json.loads(line)
                if "commitInfo" in action:
                    journal = journal_of(action["commitInfo"], version)
                    if journal is not None:
                        yield journal
                    break


def _column(tables: DeltaTables, table: Table, name: str) -> set[str]:
    if not tables.exists(table.name):
        return set()
    values = tables.dataset(table.name).to_table(columns=[name]).column(name)
    return {v for v in values.to_pylist() if v is not None}


def record_batch(tables: DeltaTables, journal: BatchJournal) -> None:
    """Append the journal's quarantine rows, then its batch row, each exactly once.

    The batch row comes last: a batch row present means its quarantine rows are too.
    """
    if journal.quarantine:
        tables.insert_new(QUARANTINE, journal.quarantine, key="source_sha256")
    tables.insert_new(BATCHES, [journal.batch], key="batch_id")


def complete_batches(tables: DeltaTables) -> list[str]:
    """Materialise the records of batches whose writer stopped after its instances commit.

    Reads every commit of the instances log (a batch that added no instance is found
    too); safe while other writers run, since each record is inserted exactly once.

    Returns
    -------
    list of str
        The batch ids completed (empty when every batch is recorded).
    """
    recorded = _column(tables, BATCHES, "batch_id")
    done: list[str] = []
    for journal in _journals(tables):
        batch_id = journal.batch["batch_id"]
        if batch_id not in recorded:
            record_batch(tables, journal)
            recorded.add(batch_id)
            done.append(batch_id)
    return sorted(done)
