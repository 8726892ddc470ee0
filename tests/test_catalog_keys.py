"""Judging candidate keys against a table reads only what may hold them (lake/catalog/_keys.py),
and judges exactly as streaming every file's key column did."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

import lake
import lake.catalog._keys as keys_module
import lake.catalog._tables as tables_module
from lake.catalog import INSTANCES, DataFiles, DeltaTables
from lake.catalog._keys import files_holding, in_key_range, readable_by_duckdb
from lake.store import Location

KEY = "SOPInstanceUID"
FETCH = [KEY, "batch_id", "Modality", "Rows"]


def _rows(owner: str, uids: list[str], modality: str = "CT") -> pa.Table:
    return pa.Table.from_pylist(
        [{KEY: u, "batch_id": owner, "Modality": modality, "Rows": i} for i, u in enumerate(uids)],
        schema=INSTANCES.schema,
    )


def _many_files(tables: DeltaTables, rng: random.Random) -> list[str]:
    """An ``instances`` table of 24 data files: appends (``string`` columns), a delete and a
    compaction's rewrites (``string_view`` columns), and one UID stored twice (two files)."""
    stored: list[str] = []
    for n in range(24):
        uids = [f"2.25.{rng.getrandbits(100)}" for _ in range(rng.randrange(1, 40))]
        stored += uids
        tables.append(INSTANCES, _rows(f"b{n}", uids))
    tables.append(INSTANCES, _rows("twice", [stored[3]], modality="MR"))
    tables.delete(INSTANCES, f"{KEY} = '{stored[5]}'")  # rewrites that file
    tables.open(INSTANCES.name).optimize.compact(partition_filters=None, target_size=4096)
    tables.append(INSTANCES, _rows("last", [f"2.25.{rng.getrandbits(100)}"]))
    return [u for u in stored if u != stored[5]]


def _reference(files: DataFiles, columns: list[str], keys: pa.ChunkedArray) -> pa.Table:
    """``_matching`` as it was: every file's key column streamed (``_streamed``), then the
    other columns read from the files holding a match."""
    saved = tables_module.readable_by_duckdb
    tables_module.readable_by_duckdb = lambda paths: False
    try:
        return tables_module._matching(files, INSTANCES, columns, keys)
    finally:
        tables_module.readable_by_duckdb = saved


def test_judgement_equals_streaming_every_file(lk: lake.Lake, monkeypatch: pytest.MonkeyPatch
                                              ) -> None:
    """Keys present, absent, null, repeated within the batch, stored twice, in appended and
    rewritten files: the same rows, in the same order, as the old full scan; and the local
    path never streams the table (it would without lake/catalog/_keys.py)."""
    rng = random.Random(14)
    stored = _many_files(lk.tables, rng)
    files = lk.tables.data_files(INSTANCES.name)
    assert len(files.paths) > 10
    present = [*rng.sample(stored, 12), stored[3], stored[3]]
    absent = [f"2.25.{rng.getrandbits(100)}" for _ in range(40)] + ["it's", "x\"y"]
    batch = present + absent + [None, None]
    rng.shuffle(batch)
    keys = pa.chunked_array([pa.array(batch, pa.string())])
    expected = {tuple(c): _reference(files, c, keys) for c in ([KEY], FETCH)}
    assert expected[(KEY,)].num_rows == 12 + 2  # stored[3] is in two files

    def streamed(*args: object) -> None:
        raise AssertionError("a local table's key column was streamed")

    monkeypatch.setattr(tables_module, "_streamed", streamed)
    for probed in (keys_module.PROBED_KEYS, 0):  # a constant IN list, then a semi-join
        monkeypatch.setattr(keys_module, "PROBED_KEYS", probed)
        for columns in ([KEY], FETCH):
            got = tables_module._matching(files, INSTANCES, columns, keys)
            assert got.schema == expected[tuple(columns)].schema
            assert got.to_pylist() == expected[tuple(columns)].to_pylist()
    monkeypatch.undo()

    # insert_new's judgement: only the absent, non-null keys (first of each) are new.
    monkeypatch.setattr(tables_module, "_streamed", streamed)
    result = lk.tables.insert_new(INSTANCES, _rows("new", [k for k in batch if k is not None]),
                                  key=KEY)
    assert sorted(result.rows.column(KEY).to_pylist()) == sorted(absent)
    assert lk.tables.lookup(INSTANCES, KEY, present, ["batch_id"]).num_rows == 14


def test_rewritten_files_hold_string_views_and_are_judged_alike(tmp_path: Path) -> None:
    """The delete and the compaction above rewrite files with ``string_view`` keys (delta-rs),
    which DuckDB reads as it reads ``string``: a key in such a file is found."""
    import pyarrow.parquet as pq

    tables = DeltaTables(Location(str(tmp_path / "lake")))
    tables.create_all()
    stored = _many_files(tables, random.Random(3))
    paths = list(tables.data_files(INSTANCES.name).paths)
    views = [p for p in paths if pq.read_schema(p).field(KEY).type == pa.string_view()]
    assert views, "delta-rs no longer rewrites strings as string_view: simplify _keys' docs"
    in_view = pq.read_table(views[0], columns=[KEY]).column(0)[0].as_py()
    wanted = pa.array([in_view, stored[0], "2.25.0"])
    found = files_holding(paths, KEY, wanted)
    assert sorted(found.column(KEY).to_pylist()) == sorted({in_view, stored[0]})
    assert views[0] in found.column("file").to_pylist()
    keys_module.PROBED_KEYS, probed = 0, keys_module.PROBED_KEYS
    try:
        assert files_holding(paths, KEY, wanted).equals(found)
    finally:
        keys_module.PROBED_KEYS = probed


def test_paths_duckdb_would_glob_are_streamed(tmp_path: Path) -> None:
    """A lake below a folder whose name DuckDB would read as a glob pattern is judged by
    streaming the key column (as before), with the same answer."""
    assert readable_by_duckdb(["/a/b.parquet"])
    assert not readable_by_duckdb(["/a[1]/b.parquet"]) and not readable_by_duckdb(["b.parquet"])
    tables = DeltaTables(Location(str(tmp_path / "lake{1}*")))
    tables.create_all()
    tables.append(INSTANCES, _rows("a", ["2.25.1", "2.25.2"]))
    result = tables.insert_new(INSTANCES, _rows("b", ["2.25.2", "2.25.3"]), key=KEY)
    assert result.rows.column(KEY).to_pylist() == ["2.25.3"]
    assert tables.lookup(INSTANCES, KEY, ["2.25.1", "2.25.9"], []).column(KEY).to_pylist() == [
        "2.25.1"]


def test_a_column_added_after_a_file_was_written_reads_null(tmp_path: Path) -> None:
    """A lake made before a column existed: its old files lack it, and a fetched row from
    one has it null, as the streamed scan gives it."""
    from deltalake import write_deltalake

    tables = DeltaTables(Location(str(tmp_path / "lake")))
    older = pa.schema([f for f in INSTANCES.schema if f.name != "Rows"])
    write_deltalake(tables.uri(INSTANCES.name), _rows("old", ["2.25.1", "2.25.2"]).select(
        older.names).cast(older), mode="append")
    tables.append(INSTANCES, _rows("new", ["2.25.3"]))  # adds "Rows" first
    files = tables.data_files(INSTANCES.name)
    keys = pa.chunked_array([pa.array(["2.25.2", "2.25.3", "2.25.4"])])
    got = tables_module._matching(files, INSTANCES, FETCH, keys)
    assert got.to_pylist() == _reference(files, FETCH, keys).to_pylist()
    assert sorted(got.to_pylist(), key=lambda row: row[KEY]) == [
        {KEY: "2.25.2", "batch_id": "old", "Modality": "CT", "Rows": None},
        {KEY: "2.25.3", "batch_id": "new", "Modality": "CT", "Rows": 0},
    ]


def test_fetched_columns_come_from_the_row_group_holding_each_match(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Files of many row groups (as compaction leaves them): a match in the first, a middle
    and the last row group, at both edges of each, is fetched from its own row group, as the
    streamed scan fetches it (``_rows_at`` picks the row group of each row number)."""
    import pyarrow.parquet as pq

    import lake.catalog._layout as layout_module

    monkeypatch.setattr(layout_module, "ROW_GROUP_ROWS", 4)
    tables = DeltaTables(Location(str(tmp_path / "lake")))
    tables.create_all()
    rng = random.Random(22)
    files = [[f"2.25.{rng.getrandbits(100)}" for _ in range(count)] for count in (40, 10)]
    for n, uids in enumerate(files):
        tables.append(INSTANCES, _rows(f"b{n}", uids))
    monkeypatch.undo()
    stored = tables.data_files(INSTANCES.name)
    groups = sorted(pq.ParquetFile(p).metadata.num_row_groups for p in stored.paths)
    assert groups == [3, 10]  # rows 0-3, 4-7, ... of each file
    # First group: rows 0 and 3; second: 4; middle (16-19, 20-23): 19, 20, 23; last: 36, 39;
    # and the other file's first, middle and last groups' edges.
    chosen = [files[0][n] for n in (0, 3, 4, 19, 20, 23, 36, 39)]
    chosen += [files[1][n] for n in (0, 4, 7, 8, 9)]
    keys = pa.chunked_array([pa.array([*chosen, "2.25.0", None], pa.string())])
    expected = _reference(stored, FETCH, keys)
    assert sorted((r["batch_id"], r["Rows"]) for r in expected.to_pylist()) == [
        ("b0", n) for n in (0, 3, 4, 19, 20, 23, 36, 39)] + [("b1", n) for n in (0, 4, 7, 8, 9)]
    for probed in (keys_module.PROBED_KEYS, 0):  # a constant IN list, then a semi-join
        monkeypatch.setattr(keys_module, "PROBED_KEYS", probed)
        got = tables_module._matching(stored, INSTANCES, FETCH, keys)
        assert got.schema == expected.schema
        assert got.to_pylist() == expected.to_pylist()


def test_more_keys_than_a_statement_held_are_judged_in_one_query(
        lk: lake.Lake, monkeypatch: pytest.MonkeyPatch) -> None:
    """Above ``PROBED_KEYS`` the keys are one list parameter: 12,000 keys (formerly two
    statements of at most 10,000) give the streamed scan's rows, in one scan of the files."""
    rng = random.Random(12)
    stored = _many_files(lk.tables, rng)
    files = lk.tables.data_files(INSTANCES.name)
    absent = [f"2.25.{rng.getrandbits(100)}" for _ in range(12_000 - len(stored))]
    batch = [*stored, *absent, "it's"]
    rng.shuffle(batch)
    keys = pa.chunked_array([pa.array(batch, pa.string())])
    expected = {tuple(c): _reference(files, c, keys) for c in ([KEY], FETCH)}
    assert expected[(KEY,)].num_rows == len(stored) + 1  # stored[3] is in two files
    queries: list[str] = []
    connect = keys_module.connect

    def counted() -> object:
        con = connect()

        class Counted:
            def sql(self, query: str, **kwargs: object) -> object:
                queries.append(query)
                return con.sql(query, **kwargs)

            def close(self) -> None:
                con.close()

        return Counted()

    monkeypatch.setattr(keys_module, "connect", counted)
    for columns in ([KEY], FETCH):
        got = tables_module._matching(files, INSTANCES, columns, keys)
        assert got.schema == expected[tuple(columns)].schema
        assert got.to_pylist() == expected[tuple(columns)].to_pylist()
    assert len(queries) == 2  # one per call
    assert all("unnest(?)" in q and not any(k in q for k in batch) for q in queries)


def test_a_commit_lists_its_files_from_the_log_not_as_a_statistics_dataset(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Judging a commit's keys and ``lookup`` take the snapshot's file list from the Delta log:
    deltalake's ``to_pyarrow_dataset`` builds an Arrow expression from every column's
    statistics of every file (0.26 s of CPU a call at 300 files), a cost that grew with the
    table at every commit (``benchmarks/bench_commit_memory.py``). Same judgement."""
    from deltalake import DeltaTable

    tables = DeltaTables(Location(str(tmp_path / "lake")))
    tables.create_all()
    rng = random.Random(5)
    stored = _many_files(tables, rng)

    def refused(*args: object, **kwargs: object) -> None:
        raise AssertionError("a commit built deltalake's statistics dataset")

    monkeypatch.setattr(DeltaTable, "to_pyarrow_dataset", refused)
    for local in (True, False):  # DuckDB's reader, then the streamed scan of a remote lake
        monkeypatch.setattr(tables_module, "readable_by_duckdb", lambda paths, local=local: local)
        absent = [f"2.25.{rng.getrandbits(100)}" for _ in range(3)]
        result = tables.insert_new(INSTANCES, _rows("n", [*stored[:4], *absent]), key=KEY,
                                   fetch=["batch_id"])
        assert sorted(result.rows.column(KEY).to_pylist()) == sorted(absent)
        stored += absent
        found = tables.lookup(INSTANCES, KEY, [stored[0], stored[-1], "2.25.0"], ["batch_id"])
        assert sorted(found.column(KEY).to_pylist()) == sorted([stored[0], stored[-1]])


def test_key_ranges_in_the_log_keep_every_file_that_may_hold_a_key() -> None:
    """A file is skipped only when its recorded range holds no key: bounds missing, a key at
    either bound, and a maximum cut to a prefix (which still bounds the key's prefix) keep it."""
    bounds: dict[str, tuple[str | None, str | None]] = {
        "a": ("2.25.10", "2.25.19"), "b": ("2.25.30", "2.25.30"), "c": (None, "2.25.5"),
        "cut": ("2.25.40", "2.25.4"),  # the true maximum was longer: "2.25.4..." all fit
    }
    paths = ["a", "b", "c", "cut", "unrecorded"]
    assert in_key_range(paths, bounds, ["2.25.0"]) == ("c", "unrecorded")
    assert in_key_range(paths, bounds, sorted(["2.25.10", "2.25.30"])) == (
        "a", "b", "c", "unrecorded")
    assert in_key_range(paths, bounds, ["2.25.19"]) == ("a", "c", "unrecorded")
    assert in_key_range(paths, bounds, ["2.25.45"]) == ("c", "cut", "unrecorded")
    assert in_key_range(paths, bounds, ["2.25.2", "2.25.31"]) == ("c", "unrecorded")


def test_a_batch_row_is_judged_without_opening_other_batches_files(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``batches`` gets a file per commit, each one batch id (its minimum is its maximum in
    the log): a new batch id opens none of them, a repeated one only its own; the answer is
    the one every file gives (fails before: DuckDB opened every file)."""
    from lake.catalog import BATCHES

    tables = DeltaTables(Location(str(tmp_path / "lake")))
    tables.create_all()
    for n in range(12):
        tables.insert_new(BATCHES, [{"batch_id": f"b{n:02d}"}], key="batch_id")
    opened: list[list[str]] = []
    holding = tables_module.files_holding

    def recorded(paths: list[str], key: str, keys: pa.Array, **options: Any) -> pa.Table:
        opened.append(list(paths))
        return holding(paths, key, keys, **options)

    monkeypatch.setattr(tables_module, "files_holding", recorded)
    assert tables.insert_new(BATCHES, [{"batch_id": "b99"}], key="batch_id").count == 1
    assert tables.insert_new(BATCHES, [{"batch_id": "b05"}], key="batch_id").count == 0
    found = tables.lookup(BATCHES, "batch_id", ["b03", "b07", "zz"], [])
    assert sorted(found.column("batch_id").to_pylist()) == ["b03", "b07"]
    assert [len(paths) for paths in opened] == [1, 2]  # b05's file; b03's and b07's
    assert len(tables.data_files(BATCHES.name).paths) == 13
