"""The catalog read path: DuckDB's Parquet reader over the Delta log's files, per-file
series/study summaries, compaction, and the lockdown around the files the views read."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute
import pyarrow.parquet as pq
import pytest

import lake
from lake.catalog import INSTANCES, write_summaries
from lake.catalog._scan import _groups, _union
from lake.catalog._summary import SUMMARY_DIR, data_files
from lake.export import create_cohort
from lake.steward import compact

# What the views held before summaries: the same aggregates over instance rows.
REFERENCE = {
    "series": """SELECT SeriesInstanceUID, count(*) AS instance_count,
                 sum(coalesce(NumberOfFrames, 1)) AS frame_count, sum(size_bytes) AS size_bytes,
                 min(ingested_at) AS first_ingested_at, max(ingested_at) AS last_ingested_at,
                 any_value(Modality) AS Modality, any_value(StudyInstanceUID) AS study
                 FROM instances GROUP BY 1""",
    "studies": """SELECT StudyInstanceUID, count(DISTINCT SeriesInstanceUID) AS n_series,
                  count(*) AS n_instances, sum(size_bytes) AS size_bytes,
                  list_sort(list_distinct(list(Modality) FILTER (WHERE Modality IS NOT NULL)))
                  AS modalities, any_value(StudyDate) AS StudyDate
                  FROM instances GROUP BY 1""",
    "patients": """SELECT PatientID, count(DISTINCT StudyInstanceUID) AS studies,
                   count(DISTINCT SeriesInstanceUID) AS series, count(*) AS n,
                   sum(size_bytes) AS size_bytes FROM instances GROUP BY 1""",
}
VIEWS = {
    "series": """SELECT SeriesInstanceUID, instance_count, frame_count, size_bytes,
                 first_ingested_at, last_ingested_at, Modality, StudyInstanceUID FROM series""",
    "studies": """SELECT StudyInstanceUID, NumberOfStudyRelatedSeries,
                  NumberOfStudyRelatedInstances, size_bytes, ModalitiesInStudy, StudyDate
                  FROM studies""",
    "patients": """SELECT PatientID, NumberOfPatientRelatedStudies, NumberOfPatientRelatedSeries,
                   NumberOfPatientRelatedInstances, size_bytes FROM patients""",
}


def _views_match(lk: lake.Lake, as_of: int | None = None) -> None:
    for name, reference in REFERENCE.items():
        want = sorted(lk.sql(reference, as_of=as_of).fetchall(), key=str)
        got = sorted(lk.sql(VIEWS[name], as_of=as_of).fetchall(), key=str)
        assert got == want, name
        assert want, name



def _summary_dir(lk: lake.Lake) -> Path:
    return Path(lk.tables.location.join("tables", "instances")) / SUMMARY_DIR


def test_every_commit_summarises_its_file(several: lake.Lake) -> None:
    files = data_files(several.tables, several.tables.open("instances"))
    for kind in ("series_parts", "study_parts"):
        names = {p.name for p in (_summary_dir(several) / kind).iterdir()}
        assert names == {Path(f).name for f in files}
    _views_match(several)


def test_views_read_the_stored_summaries(several: lake.Lake) -> None:
    """Proof the views take the summaries (not the rows) where they exist: alter one."""
    one = next((_summary_dir(several) / "series_parts").iterdir())
    parts = pq.read_table(one)
    counts = pa.compute.add(parts.column("instance_count"), 1000)
    pq.write_table(parts.set_column(parts.schema.get_field_index("instance_count"),
                                    "instance_count", counts), one)
    several.refresh()
    total = several.sql("SELECT sum(instance_count) FROM series").fetchall()[0][0]
    assert total == several.sql("SELECT count(*) FROM instances").fetchall()[0][0] + (
        1000 * parts.num_rows)


def test_views_are_exact_without_summaries(several: lake.Lake) -> None:
    shutil.rmtree(_summary_dir(several) / "series_parts")
    several.refresh()
    _views_match(several)  # every file aggregated on the fly
    assert write_summaries(several.tables) == len(
        data_files(several.tables, several.tables.open("instances")))
    several.refresh()
    _views_match(several)


def test_views_are_exact_with_some_summaries_missing(several: lake.Lake) -> None:
    one = next((_summary_dir(several) / "study_parts").iterdir())
    one.unlink()
    several.refresh()
    _views_match(several)


def test_compaction_keeps_rows_versions_and_views(several: lake.Lake) -> None:
    before_version = several.version
    before = sorted(several.sql("SELECT SOPInstanceUID, header_sha256 FROM instances").fetchall())
    files_before = len(data_files(several.tables, several.tables.open("instances")))
    done = {c.table: c for c in compact(several)}
    assert done["instances"].files_before == files_before > 1
    assert done["instances"].files_after == 1
    several.refresh()
    (path,) = data_files(several.tables, several.tables.open("instances"))
    assert (_summary_dir(several) / "series_parts" / Path(path).name).exists()
    assert sorted(several.sql("SELECT SOPInstanceUID, header_sha256 FROM instances")
                  .fetchall()) == before
    _views_match(several)
    _views_match(several, as_of=before_version)  # the old files are still read at that version
    assert several.sql("SELECT count(*) FROM instances", as_of=before_version).fetchall() == [
        (len(before),)]


def test_compacted_files_have_bloom_filters_on_uids(several: lake.Lake) -> None:
    compact(several)
    (path,) = data_files(several.tables, several.tables.open("instances"))
    rows = duckdb.sql(
        f"SELECT path_in_schema, bloom_filter_offset FROM parquet_metadata('{path}')"
    ).fetchall()
    blooms = {name for name, offset in rows if offset is not None}
    assert {"SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID", "PatientID"} <= blooms
    assert "header_json" not in blooms


def test_gc_and_vacuum_keep_the_summaries_of_live_files(several: lake.Lake) -> None:
    import datetime as dt

    from lake.steward import gc, vacuum

    compact(several)
    report = gc(several, grace=dt.timedelta(0), no_writers_running=True)  # none runs
    assert not any("_summary" in f for f in report.data_files)
    vacuum(several, retain=dt.timedelta(0), grace=dt.timedelta(0),
           no_writers_running=True)
    files = data_files(several.tables, several.tables.open("instances"))
    for kind in ("series_parts", "study_parts"):
        names = {p.name for p in (_summary_dir(several) / kind).iterdir()}
        assert names == {Path(f).name for f in files}  # the compacted-away files' are gone
    several.refresh()
    _views_match(several)


def test_header_sha256_is_stored_and_used_by_cohorts(several: lake.Lake) -> None:
    rows = several.sql("SELECT header_sha256, header_dicom FROM instances").fetchall()
    assert rows and all(h == hashlib.sha256(d).hexdigest() for h, d in rows)
    cohort = create_cohort(several, "all", "SELECT SeriesInstanceUID FROM series")
    stored = dict(several.sql("SELECT SOPInstanceUID, header_sha256 FROM instances").fetchall())
    assert {m.sop_uid: m.header_sha256 for m in cohort.members} == stored


def test_rows_without_header_sha256_get_it_computed(several: lake.Lake) -> None:
    """A row written before the column existed (null) is hashed from its header_dicom."""
    old = several.sql("SELECT * EXCLUDE (header_sha256) FROM instances LIMIT 1").arrow()
    table = old if isinstance(old, pa.Table) else old.read_all()
    uid = "2.25.1" + "7" * 30
    table = table.set_column(table.schema.get_field_index("SOPInstanceUID"), "SOPInstanceUID",
                             pa.array([uid]))
    data = pa.Table.from_pylist(
        [dict(r, header_sha256=None, StudyTime=None, SeriesTime=None, AcquisitionTime=None,
              ContentTime=None) for r in table.to_pylist()], schema=INSTANCES.schema)
    several.tables.append(INSTANCES, data)
    several.refresh()
    cohort = create_cohort(several, "one", f"SELECT '{uid}' AS SOPInstanceUID")
    (member,) = cohort.members
    header = several.sql(f"SELECT header_dicom FROM instances WHERE SOPInstanceUID = '{uid}'"
                         ).fetchall()[0][0]
    assert member.header_sha256 == hashlib.sha256(header).hexdigest()


def test_user_sql_cannot_write_or_attach_the_files_views_read(several: lake.Lake) -> None:
    path = data_files(several.tables, several.tables.open("instances"))[0]
    original = Path(path).read_bytes()
    # Reading a file the views read is reading the catalog (allowed, it is the same data).
    assert several.sql(f"SELECT count(*) FROM read_parquet('{path}')").fetchall()[0][0] > 0
    for query in (
        f"COPY (SELECT 1 AS a) TO '{path}' (FORMAT parquet)",
        f"ATTACH '{path}' AS x",
        f"SELECT 1; COPY (SELECT 1 AS a) TO '{path}'",
        f"EXPORT DATABASE '{Path(path).parent / 'dump'}'",
    ):
        with pytest.raises(lake.QueryError, match="query refused"):
            several.sql(query).fetchall()
    assert Path(path).read_bytes() == original
    compact(several)
    several.refresh()
    # A file the current version no longer reads (compacted away) is out of reach.
    with pytest.raises(lake.QueryError, match="query refused"):
        several.sql(f"SELECT count(*) FROM read_parquet('{path}')").fetchall()


def test_files_of_different_schemas_read_together(tmp_path: Path) -> None:
    """A file written before a column existed reads with NULL in that column."""
    old, new = tmp_path / "old.parquet", tmp_path / "new.parquet"
    pq.write_table(pa.table({"a": [1, 2], "b": ["x", "y"]}), old)
    pq.write_table(pa.table({"a": [3], "b": ["z"], "c": [1.5]}), new)
    con = duckdb.connect()
    con.execute("CREATE TEMP TABLE t_empty (a BIGINT, b VARCHAR, c DOUBLE)")
    assert len(_groups(con, [str(new), str(old)])) == 2
    rows = con.sql(_union(con, "t_empty", [str(new), str(old)])).fetchall()
    assert sorted(rows, key=str) == [(1, "x", None), (2, "y", None), (3, "z", 1.5)]


def test_schema_groups_come_in_the_order_of_their_first_file(tmp_path: Path) -> None:
    """Groups (and each file's schema fingerprint) do not depend on DuckDB's scan order:
    the same files give the same groups, ordered by their first file, every time."""
    files = []
    for i in range(6):  # three schemas, interleaved; wide enough for a parallel scan
        columns = {f"c{j}": [j] for j in range(40)} | ({"extra": [i]} if i % 3 == 1 else {})
        if i % 3 == 2:
            columns = dict(reversed(list(columns.items())))  # the same columns, other order
        path = tmp_path / f"f{i}.parquet"
        pq.write_table(pa.table(columns), path)
        files.append(str(path))
    con = duckdb.connect()
    con.execute("SET threads = 8")
    want = [[files[0], files[3]], [files[1], files[4]], [files[2], files[5]]]
    for _ in range(100):
        assert _groups(con, files) == want
    assert _groups(con, files[::-1]) == [g[::-1] for g in want[::-1]]


def _by_name_union(empty: str, files: list[list[str]], filename: bool = False) -> str:
    """The relation the views read before the projections: every schema group's
    ``read_parquet`` after the empty table, ``UNION ALL BY NAME``."""
    flag = "true" if filename else "false"
    return " UNION ALL BY NAME ".join(
        [f"SELECT * FROM {empty}", *(
            f"SELECT * FROM read_parquet({[str(f) for f in g]}, hive_partitioning = false, "
            f"filename = {flag})" for g in files)])


@pytest.mark.parametrize("filename", [False, True])
@pytest.mark.parametrize("schemas", [
    "one group lacking columns", "two groups", "a column of another type", "an extra column"])
def test_projections_equal_the_union_by_name(tmp_path: Path, schemas: str,
                                             filename: bool) -> None:
    """Each schema group read under a projection gives the columns, types, order and rows
    that UNION ALL BY NAME with the empty table gave; a file whose types differ from the
    declared ones (or that holds an undeclared column) still reads through the union."""
    tables = {
        "one group lacking columns": [pa.table({"a": [1, 2], "b": ["x", None]}),
                                      pa.table({"a": [3], "b": ["z"]})],
        "two groups": [pa.table({"a": [1, 2], "b": ["x", "y"]}),
                       pa.table({"a": [3], "b": ["z"], "c": [1.5],
                                 "d": pa.array([[{"k": "v"}]], pa.list_(
                                     pa.struct([("k", pa.string())])))})],
        "a column of another type": [pa.table({"a": pa.array([1], pa.int32()), "b": ["x"]}),
                                     pa.table({"a": [3], "b": ["z"]})],
        "an extra column": [pa.table({"a": [1], "b": ["x"], "e": [True]}),
                            pa.table({"a": [3], "b": ["z"]})],
    }[schemas]
    files = []
    for i, table in enumerate(tables):
        files.append(str(tmp_path / f"f{i}.parquet"))
        pq.write_table(table, files[-1])
    con = duckdb.connect()
    con.execute('CREATE TEMP TABLE t_empty (a BIGINT, b VARCHAR, c DOUBLE, d STRUCT("k" '
                'VARCHAR)[], f TIMESTAMP WITH TIME ZONE)')
    new = _union(con, "t_empty", files, filename=filename)
    old = _by_name_union("t_empty", _groups(con, files), filename)
    assert ("UNION ALL BY NAME" in new) == (schemas in ("a column of another type",
                                                          "an extra column"))
    assert con.sql(f"DESCRIBE {new}").fetchall() == con.sql(f"DESCRIBE {old}").fetchall()
    got, want = con.sql(new).fetchall(), con.sql(old).fetchall()
    assert sorted(got, key=str) == sorted(want, key=str)
    assert want


def test_count_reads_no_column_of_the_data_files(several: lake.Lake) -> None:
    """With the files of one schema under one projection (no union), DuckDB answers
    count(*) from the files' row counts: from its cache of their footers (filled by the
    catalog's set-up), in the plan itself, which scans no file (before the cache was on
    from the set-up's start, the first such query scanned them projecting no column)."""
    catalog = several.catalog()
    plan = json.loads(catalog.sql(
        "EXPLAIN (FORMAT JSON) SELECT count(*) FROM instances").fetchall()[0][1])

    def scans(node: dict[str, Any]) -> list[dict[str, Any]]:
        found = [node] if node.get("name") in ("READ_PARQUET", "UNION", "SEQ_SCAN") else []
        return found + [s for child in node.get("children", []) for s in scans(child)]

    found = [s for n in plan for s in scans(n)]
    assert found == [] and plan[0]["name"] == "COLUMN_DATA_SCAN"
    want = sum(pq.read_metadata(f).num_rows
               for f in data_files(several.tables, several.tables.open("instances")))
    assert catalog.sql("SELECT count(*) FROM instances").fetchall() == [(want,)]


def test_cohort_members_are_every_instance_of_its_series(several: lake.Lake) -> None:
    """Members are found with a StudyDate range taken from the series summaries (row groups
    of other dates are pruned): every instance of each series still joins, undated ones too."""
    undated = several.sql("SELECT count(*) FROM instances WHERE StudyDate IS NULL").fetchall()
    assert undated[0][0] > 0  # the samples include instances without a StudyDate
    for query in ("SELECT SeriesInstanceUID FROM series",
                  "SELECT SeriesInstanceUID FROM series WHERE SeriesDate IS NULL",
                  "SELECT SeriesInstanceUID FROM series WHERE Modality = 'CT'"):
        cohort = create_cohort(several, "c", query, replace=True)
        want = several.sql(
            f"SELECT SOPInstanceUID FROM instances WHERE SeriesInstanceUID IN ({query})"
        ).fetchall()
        assert sorted(m.sop_uid for m in cohort.members) == sorted(u for (u,) in want), query
