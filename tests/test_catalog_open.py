"""Opening the catalog asks DuckDB about every table at once, and builds the same catalog.

:class:`lake.catalog._scan.Footers` asks DuckDB for the declared columns of every empty table,
the Parquet schema of every data file and the column types of one file per schema in one
query each, where the set-up asked per table (and per schema group); the set-up statements
run in one execute. The catalog built so must equal the one built by the per-table queries:
the same relations, views (their SQL and ``DESCRIBE``) and answers, at every version.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import lake
from lake.catalog import Catalog
from lake.catalog._scan import Footers, _file_groups, _union
from lake.catalog._schema import INSTANCES
from lake.catalog._summary import SUMMARY_DIR
from tests.series import write_ct_series

_QUERIES = (
    "SELECT * FROM instances ORDER BY SOPInstanceUID",
    "SELECT * FROM series ORDER BY SeriesInstanceUID",
    "SELECT * FROM studies ORDER BY StudyInstanceUID",
    "SELECT * FROM patients ORDER BY PatientID",
    "SELECT * FROM series_parts ORDER BY ALL",
    "SELECT * FROM batches ORDER BY batch_id",
    "SELECT * FROM quarantine ORDER BY ALL",
    "SELECT * FROM cohorts ORDER BY ALL",
    "SELECT count(*), count(DISTINCT StudyInstanceUID) FROM instances",
    "SELECT Modality, count(*), sum(pixel_bytes) FROM instances GROUP BY 1 ORDER BY 1",
)


def _catalog_as_seen(catalog: Catalog) -> dict[str, Any]:
    con = catalog.con
    names = con.execute("SELECT table_name, table_type FROM information_schema.tables "
                        "ORDER BY ALL").fetchall()
    seen: dict[str, Any] = {"names": names, "versions": catalog.versions}
    seen |= {f"DESCRIBE {n}": con.execute(f'DESCRIBE "{n}"').fetchall() for n, _ in names}
    seen["views"] = con.execute(
        "SELECT view_name, sql FROM duckdb_views() WHERE NOT internal ORDER BY 1").fetchall()
    seen |= {query: catalog.sql(query).fetchall() for query in _QUERIES}
    return seen


def test_the_catalog_equals_the_one_of_per_table_queries(
        several: lake.Lake, monkeypatch: pytest.MonkeyPatch) -> None:
    lk = several
    lk.create_cohort("all", "SELECT SeriesInstanceUID FROM series")
    versions = [None, *range(lk.version + 1)]
    batched = {}
    for version in versions:
        catalog = Catalog(lk.tables, version)
        batched[version] = _catalog_as_seen(catalog)
        catalog.close()
    assert batched[None]["SELECT * FROM instances ORDER BY SOPInstanceUID"]
    assert batched[None]["SELECT * FROM cohorts ORDER BY ALL"]
    assert "instances_unsummarised" not in str(batched[None]["names"])
    # Without the footers asked at once, every table's set-up asks DuckDB itself, as before.
    monkeypatch.setattr(Footers, "read", classmethod(lambda cls, con, files: cls()))
    for version in versions:
        catalog = Catalog(lk.tables, version)
        assert catalog.con is not None
        assert _catalog_as_seen(catalog) == batched[version], version
        catalog.close()


def test_files_without_summaries_read_alike(several: lake.Lake,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The rows of data files without summaries (aggregated on the fly) take their file
    groups from the footers asked at once too."""
    lk = several
    shutil.rmtree(Path(lk.root) / "tables" / INSTANCES.name / SUMMARY_DIR)
    catalog = Catalog(lk.tables)
    batched = _catalog_as_seen(catalog)
    catalog.close()
    assert "instances_unsummarised" in str(batched["names"])
    monkeypatch.setattr(Footers, "read", classmethod(lambda cls, con, files: cls()))
    catalog = Catalog(lk.tables)
    assert _catalog_as_seen(catalog) == batched
    catalog.close()


def test_a_table_of_one_file_asks_no_parquet_schema(
        lk: lake.Lake, vault_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A table of one data file is one group: no footer is read to group it (the query of
    every file's Parquet schema cost ~4 ms of CPU per catalog), and the catalog is the one
    of per-table queries."""
    from lake.catalog import _scan

    write_ct_series(tmp_path / "ct", 4)
    lk.ingest([str(tmp_path / "ct")], vault=vault_dir, scheduler="sync")
    lk.create_cohort("all", "SELECT SeriesInstanceUID FROM series")
    asked: list[list[str]] = []
    fingerprints = _scan._fingerprints

    def spy(con: duckdb.DuckDBPyConnection, files: list[str]) -> dict[str, str]:
        asked.append(list(files))
        return fingerprints(con, files)

    monkeypatch.setattr(_scan, "_fingerprints", spy)
    catalog = Catalog(lk.tables)
    seen = _catalog_as_seen(catalog)
    catalog.close()
    assert asked == [] and seen["SELECT * FROM cohorts ORDER BY ALL"]
    monkeypatch.setattr(Footers, "read", classmethod(lambda cls, con, files: cls()))
    catalog = Catalog(lk.tables)  # (every table's set-up asking DuckDB itself)
    assert _catalog_as_seen(catalog) == seen
    catalog.close()


def test_execute_answers_as_sql_does_under_the_same_lockdown(several: lake.Lake,
                                                              tmp_path: Path) -> None:
    """Lake._execute and Catalog._execute run a query once (no relation bound first) with the
    checks of sql(): the same rows, the same refusals, DuckDB's errors as QueryError."""
    lk = several
    uid = lk.sql("SELECT min(SOPInstanceUID) FROM instances").fetchall()[0][0]
    pinned = f"SELECT SOPInstanceUID, InstanceNumber FROM instances WHERE SOPInstanceUID = '{uid}'"
    for query in (*_QUERIES, pinned, pinned):  # (the second pinned query prunes files)
        relation = lk.sql(query)
        assert lk._execute(query) == (relation.description, relation.fetchall()), query
        assert lk.catalog()._execute(query)[1] == lk.sql(query).fetchall(), query
    assert lk.catalog()._files_for(pinned) is not None
    target = tmp_path / "out.csv"
    for refused in ("SELECT * FROM read_text('/etc/hostname')",
                    f"COPY (SELECT 1) TO '{target}'", "SET enable_external_access = true",
                    "SELECT * FROM no_such_table", "SELECT CAST('x' AS INTEGER)"):
        with pytest.raises(lake.QueryError):
            lk._execute(refused)
    assert not target.exists()


def test_footers_of_several_tables_give_each_its_own_groups(tmp_path: Path) -> None:
    """Files of several schemas for two tables, a file lacking columns, one with a column of
    another type: the relations built from the footers asked at once are the per-table ones."""
    made = {
        "t": [pa.table({"a": [1, 2], "b": ["x", None]}), pa.table({"a": [3], "b": ["z"]}),
              pa.table({"a": [4], "b": ["w"], "c": [1.5]})],
        "u": [pa.table({"a": pa.array([1], pa.int32()), "b": ["x"]}),
              pa.table({"a": [3], "b": ["z"]})],
    }
    files: dict[str, list[str]] = {}
    for name, tables in made.items():
        for i, table in enumerate(tables):
            path = tmp_path / f"{name}{i}.parquet"
            pq.write_table(table, path)
            files.setdefault(f"{name}_empty", []).append(str(path))
    con = duckdb.connect()
    for name in made:
        con.execute(f"CREATE TEMP TABLE {name}_empty (a BIGINT, b VARCHAR, c DOUBLE)")
    footers = Footers.read(con, files)
    assert set(footers.declared) == set(files)
    assert set(footers.fingerprints) == {f for names in files.values() for f in names}
    for empty, names in files.items():
        for filename in (False, True):
            assert (_file_groups(con, empty, names, filename=filename, footers=footers)
                    == _file_groups(con, empty, names, filename=filename))
            assert (_union(con, empty, names, filename=filename, footers=footers)
                    == _union(con, empty, names, filename=filename))
    assert _file_groups(con, "t_empty", files["t_empty"], footers=footers) is not None
    assert _file_groups(con, "u_empty", files["u_empty"], footers=footers) is None  # union
    assert Footers.read(con, {"t_empty": []}) == Footers()


def _recording_openings(lk: lake.Lake, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The tables ``lk`` opens from now on (a Delta table opened, not brought up to date)."""
    opened: list[str] = []
    tables = type(lk.tables)
    real_opened, real_at = tables._opened, tables.version_at

    def _opened(self: Any, name: str, version: int | None) -> Any:
        opened.append(name)
        return real_opened(self, name, version)

    def version_at(self: Any, name: str, when: Any) -> Any:
        opened.append(name)
        return real_at(self, name, when)

    monkeypatch.setattr(tables, "_opened", _opened)
    monkeypatch.setattr(tables, "version_at", version_at)
    return opened


def test_an_export_s_catalog_reads_the_kept_snapshots(
        several: lake.Lake, monkeypatch: pytest.MonkeyPatch) -> None:
    """A lake opened anew resolves a cohort at the latest version it keeps, then queries that
    version: the catalog opens no table again (each was opened twice, and ``instances`` once
    more, before), reads what a fresh open reads, and sees a commit made meanwhile."""
    lk = lake.open(several.root)
    opened = _recording_openings(lk, monkeypatch)
    version, _ = lk.tables.latest(INSTANCES.name)  # what resolve_cohort does first
    assert opened == [INSTANCES.name]
    catalog = lk.catalog(version)
    assert INSTANCES.name not in opened[1:]
    assert len(opened) == len(set(opened))  # each table opened once, none at a version
    opened.clear()
    lk.refresh()
    again = lk.catalog(version)
    assert opened == [] and again is not catalog
    fresh = Catalog(lake.open(several.root).tables, version)
    assert _catalog_as_seen(again) == _catalog_as_seen(fresh)
    fresh.close()

    other = lake.open(several.root)  # a commit through another open lake
    other.create_cohort("later", "SELECT SeriesInstanceUID FROM series")
    lk.refresh()
    assert lk.catalog(version).sql("SELECT name FROM cohorts").fetchall() == [("later",)]


def test_an_erased_version_is_refused_from_the_kept_snapshots(
        lk: lake.Lake, vault_dir: Path, tmp_path: Path) -> None:
    """A version kept before an erasure made through another open lake is refused by the
    catalog after it, as a table opened at that version is."""
    from lake.steward import forget, target
    from tests.series import write_ct_series

    write_ct_series(tmp_path / "gone", 2, patient_id="GONE-2")
    lk.ingest([str(tmp_path / "gone")], vault=vault_dir, scheduler="sync")
    version, _ = lk.tables.latest(INSTANCES.name)
    assert lk.catalog(version).sql("SELECT count(*) FROM instances").fetchall() == [(2,)]
    other = lake.open(lk.root)
    secret = other.secret(vault_dir)
    forget(other, secret, target(other, secret, original_patient_id="GONE-2"))
    lk.refresh()
    with pytest.raises(lake.CatalogError, match="was erased"):
        lk.catalog(version)


def test_an_export_s_catalog_reads_the_erasures_once(
        several: lake.Lake, monkeypatch: pytest.MonkeyPatch) -> None:
    """The catalog of a kept version checks every table's version against the erasures'
    records read once (``DeltaTables.files_at``), not once per table: ``erasures`` is looked
    for once (its own version; its records' check then finds its latest snapshot kept), where
    it was looked for by every table's check; the versions and what they read are those of a
    fresh open."""
    lk = lake.open(several.root)
    version, _ = lk.tables.latest(INSTANCES.name)
    tables = lk.tables
    assert tables.exists("erasures")
    asked: list[str] = []
    exists = type(tables).exists

    def spy(name: str) -> bool:
        asked.append(name)
        return exists(tables, name)

    monkeypatch.setattr(tables, "exists", spy)
    catalog = lk.catalog(version)
    assert asked.count("erasures") == 1
    fresh = Catalog(lake.open(several.root).tables, version)
    assert _catalog_as_seen(catalog) == _catalog_as_seen(fresh)
    fresh.close()
