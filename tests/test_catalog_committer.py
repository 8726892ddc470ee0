"""A writer's commits reuse what the previous commit opened (``lake/catalog/_committer.py``):
each table is opened once and brought up to date, one DuckDB database serves every query.
What another writer committed in between is judged all the same, without a lost race."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path
from typing import Any

import duckdb
import pytest

import lake.catalog._tables as tables_module
from lake.catalog import BATCHES, INSTANCES, DeltaTables
from lake.catalog._arrow_values import python_table
from lake.catalog._journal import BatchJournal, record_batch
from lake.catalog._retry import Backoff
from lake.store import Location

KEY = "SOPInstanceUID"


def _rows(uids: list[str], batch_id: str) -> list[dict[str, Any]]:
    return [{KEY: uid, "SeriesInstanceUID": "2.25.9", "StudyInstanceUID": "2.25.8",
             "PatientID": "P1", "Modality": "CT", "batch_id": batch_id} for uid in uids]


def _commit(tables: DeltaTables, uids: list[str], batch_id: str) -> int:
    """One batch as ingest commits it: instances (with the key index's upkeep and the
    summaries), then the batch row; returns how many instances were new."""
    rows = python_table(_rows(uids, batch_id), INSTANCES.schema)
    inserted = tables.insert_new(INSTANCES, rows, key=KEY, fetch=("Modality",))
    record_batch(tables, BatchJournal({"batch_id": batch_id}, []))
    return inserted.count


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Counts of Delta tables opened, DuckDB databases made and commits retried."""
    counts = {"opened": 0, "databases": 0, "retried": 0}
    opened, connect, failed = tables_module.DeltaTable, duckdb.connect, Backoff.failed

    class Opened(opened):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            counts["opened"] += 1
            super().__init__(*args, **kwargs)

    def make_database(*args: Any, **kwargs: Any) -> Any:
        counts["databases"] += 1
        return connect(*args, **kwargs)

    def retried(self: Backoff, exc: BaseException) -> None:
        counts["retried"] += 1
        failed(self, exc)

    monkeypatch.setattr(tables_module, "DeltaTable", Opened)
    monkeypatch.setattr(duckdb, "connect", make_database)
    monkeypatch.setattr(Backoff, "failed", retried)
    return counts


def test_commits_open_each_table_once_and_make_one_database(
        tmp_path: Path, counted: dict[str, int]) -> None:
    """Twenty commits (two segments of the key index written, summaries, batch rows): the two
    tables written are opened once each and one DuckDB database is made (fails before: every
    commit opened both tables and made two databases or more)."""
    tables = DeltaTables(Location(str(tmp_path / "lake")))
    tables.create_all()
    counted.update(opened=0, databases=0)
    for n in range(20):
        assert _commit(tables, [f"2.25.{n}.{i}" for i in range(5)], f"b{n:02d}") == 5
    assert counted["opened"] == 2
    assert counted["databases"] == 1
    assert counted["retried"] == 0
    assert tables.latest(INSTANCES.name)[0] == 20
    assert len(tables.data_files(BATCHES.name).paths) == 20


def test_another_writers_commits_are_judged_without_a_lost_race(
        tmp_path: Path, counted: dict[str, int]) -> None:
    """Two writers on one lake (two open lakes, as two processes): each kept table is brought
    up to the other's commits before judging, so repeated keys are found, nothing is added
    twice, and no commit loses its compare-and-swap (a stale kept table would)."""
    root = str(tmp_path / "lake")
    first, second = DeltaTables(Location(root)), DeltaTables(Location(root))
    first.create_all()
    assert _commit(first, ["2.25.1", "2.25.2"], "b1") == 2
    assert _commit(second, ["2.25.2", "2.25.3"], "b2") == 1
    assert _commit(first, ["2.25.3", "2.25.4"], "b3") == 1
    assert _commit(second, ["2.25.1", "2.25.4", "2.25.5"], "b4") == 1
    assert counted["retried"] == 0
    stored = first.lookup(INSTANCES, KEY, [f"2.25.{n}" for n in range(1, 7)], ["batch_id"])
    assert sorted(stored.to_pylist(), key=lambda row: row[KEY]) == [
        {KEY: "2.25.1", "batch_id": "b1"}, {KEY: "2.25.2", "batch_id": "b1"},
        {KEY: "2.25.3", "batch_id": "b2"}, {KEY: "2.25.4", "batch_id": "b3"},
        {KEY: "2.25.5", "batch_id": "b4"}]


def test_a_table_made_again_is_opened_again(tmp_path: Path) -> None:
    """A kept table whose folder was removed and made again (at a lower version) is not
    committed through: the commit opens the new table."""
    tables = DeltaTables(Location(str(tmp_path / "lake")))
    tables.create_all()
    for n in range(3):
        _commit(tables, [f"2.25.{n}"], f"b{n}")
    shutil.rmtree(tmp_path / "lake" / "tables" / INSTANCES.name)
    tables.create_all()
    assert _commit(tables, ["2.25.0", "2.25.7"], "b9") == 2
    assert tables.latest(INSTANCES.name)[0] == 1


def test_kept_tables_and_database_are_not_pickled(tmp_path: Path) -> None:
    tables = DeltaTables(Location(str(tmp_path / "lake")))
    tables.create_all()
    _commit(tables, ["2.25.1"], "b1")
    copy = pickle.loads(pickle.dumps(tables))
    assert _commit(copy, ["2.25.1", "2.25.2"], "b2") == 1


def test_a_kept_table_is_opened_again_after_a_new_checkpoint(
        tmp_path: Path, counted: dict[str, int]) -> None:
    """A table brought up to date commit after commit grows (deltalake keeps every update), so
    it is opened again once a newer checkpoint exists: then the open is cheap (fails before
    the rule: the kept table was used on and on)."""
    tables = DeltaTables(Location(str(tmp_path / "lake")))
    tables.create_all()
    _commit(tables, ["2.25.1"], "b1")
    _commit(tables, ["2.25.2"], "b2")
    counted.update(opened=0)
    tables.open(INSTANCES.name).create_checkpoint()  # (one open here)
    _commit(tables, ["2.25.3"], "b3")
    _commit(tables, ["2.25.4"], "b4")
    assert counted["opened"] == 2  # the checkpoint's open, then instances once
    assert tables.latest(INSTANCES.name)[0] == 4


def test_a_kept_table_is_brought_up_to_date_only_after_another_commit(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A writer alone commits without asking deltalake to bring its kept tables up to date
    (no next commit file: nothing to read); after another writer's commits it does, and
    judges them (fails before: every commit of every table called update_incremental)."""
    from deltalake import DeltaTable

    updates: list[str] = []
    update = DeltaTable.update_incremental

    def counted_update(self: DeltaTable) -> None:
        updates.append(self.table_uri.rstrip("/").rsplit("/", 1)[-1])
        update(self)

    monkeypatch.setattr(DeltaTable, "update_incremental", counted_update)
    root = str(tmp_path / "lake")
    first, second = DeltaTables(Location(root)), DeltaTables(Location(root))
    first.create_all()
    for n in range(5):
        assert _commit(first, [f"2.25.{n}"], f"a{n}") == 1
    assert updates == []
    assert _commit(second, ["2.25.1", "2.25.9"], "b1") == 1
    updates.clear()
    assert _commit(first, ["2.25.9", "2.25.10"], "a9") == 1  # judged against b1's commit
    assert sorted(updates) == [BATCHES.name, INSTANCES.name]


def test_key_ranges_are_read_from_the_log_once_and_learnt_from_the_rows_written(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A writer reads its tables' key ranges from the log at its first commit, then learns
    each file it writes from its rows; another writer's file makes it read the log again.
    The learnt ranges judge as the log's: a batch row or an instance committed again is
    found, not added twice (fails before: every commit read the log, twice)."""
    from deltalake import DeltaTable

    reads: list[str] = []
    actions = DeltaTable.get_add_actions

    def counted_actions(self: DeltaTable, *args: Any, **kwargs: Any) -> Any:
        reads.append(self.table_uri.rstrip("/").rsplit("/", 1)[-1])
        return actions(self, *args, **kwargs)

    monkeypatch.setattr(DeltaTable, "get_add_actions", counted_actions)
    root = str(tmp_path / "lake")
    first, second = DeltaTables(Location(root)), DeltaTables(Location(root))
    first.create_all()
    for n in range(5):
        assert _commit(first, [f"2.25.{n}"], f"a{n}") == 1
    assert sorted(reads) == [BATCHES.name, INSTANCES.name]  # the first commit's
    assert _commit(first, ["2.25.3", "2.25.7"], "a3") == 1  # a3's row again: found
    assert _commit(second, ["2.25.1", "2.25.8"], "b1") == 1
    reads.clear()
    assert _commit(first, ["2.25.8", "2.25.9"], "b1") == 1  # b1's file: read from the log
    assert sorted(reads) == [BATCHES.name, INSTANCES.name]
    rows = first.lookup(BATCHES, "batch_id", ["a3", "b1"], [])
    assert sorted(rows.column("batch_id").to_pylist()) == ["a3", "b1"]
    uids = first.lookup(INSTANCES, KEY, [f"2.25.{n}" for n in range(10)], [])
    assert sorted(uids.column(KEY).to_pylist()) == sorted(
        f"2.25.{n}" for n in (0, 1, 2, 3, 4, 7, 8, 9))
