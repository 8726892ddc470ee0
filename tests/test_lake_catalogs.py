"""An open lake keeps a bounded number of catalogs, one per ``as_of`` version (lake/_lake.py).

A long-lived lake (a web or DICOM server, a notebook) asked for many versions must not hold
a DuckDB database for each of them forever: beyond :data:`lake._lake.KEPT_CATALOGS` pinned
versions the least recently used is let go (not closed: a relation it handed out stays
fetchable), the current catalog (``as_of=None``) is kept until ``refresh()``, and asking for
a version again builds it anew with the same answers. A kept catalog whose data files another
process removed (an erasure, a vacuum) is made again, not taken for a refused query.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

import lake
from lake._lake import KEPT_CATALOGS
from lake.export import resolve_cohort
from lake.steward import forget, target
from tests.series import write_ct_series


def _count(lk: lake.Lake, as_of: int | None) -> int:
    return int(lk.sql("SELECT count(*) FROM instances", as_of=as_of).fetchall()[0][0])


def test_catalogs_are_bounded_and_the_current_one_kept(several: lake.Lake) -> None:
    lk = several
    current = lk.catalog(None)
    versions = list(range(lk.version + 1))
    assert len(versions) > KEPT_CATALOGS  # the fixture commits enough versions
    counts = {v: _count(lk, v) for v in [*versions, None]}
    assert counts[0] == 0 and counts[None] == counts[lk.version] > 0
    assert list(lk._catalogs) == [*versions[-KEPT_CATALOGS:], None]  # not one per version
    assert lk.catalog(None) is current  # the current catalog is never let go

    kept = lk.catalog(versions[-KEPT_CATALOGS])
    assert lk.catalog(versions[-KEPT_CATALOGS]) is kept  # reused, now the most recently used
    order = [v for v in lk._catalogs if v is not None]
    assert order[-1] == versions[-KEPT_CATALOGS]
    lk.catalog(versions[0])  # built again: the least recently used pinned version goes
    assert list(v for v in lk._catalogs if v is not None) == [*order[1:], versions[0]]
    assert lk._catalogs[versions[-KEPT_CATALOGS]] is kept and lk.catalog(None) is current
    # every version asked again answers as before
    assert {v: _count(lk, v) for v in [*versions, None]} == counts
    assert len(lk._catalogs) == KEPT_CATALOGS + 1


@pytest.mark.parametrize("query", [
    "SELECT count(*) FROM instances",
    "SELECT count(*) FROM series",
    "SELECT * FROM instances WHERE SOPInstanceUID = '2.25.0'",  # the Bloom cursor path, twice
])
def test_a_relation_outlives_the_letting_go_of_its_catalog(several: lake.Lake, query: str) -> None:
    lk = several
    for _ in range(2):
        relation = lk.sql(query, as_of=1)
    others = [v for v in range(lk.version + 1) if v != 1]
    assert len(others) >= KEPT_CATALOGS
    for version in others:
        lk.catalog(version)
    assert 1 not in lk._catalogs
    assert relation.fetchall() is not None  # was: ConnectionException, connection closed


@pytest.fixture
def two_patients(lk: lake.Lake, vault_dir: Path, tmp_path: Path) -> tuple[lake.Lake, int]:
    write_ct_series(tmp_path / "kept", 3, patient_id="KEPT-1")
    write_ct_series(tmp_path / "gone", 2, patient_id="GONE-2")
    lk.ingest([str(tmp_path / "kept")], vault=vault_dir, scheduler="sync")
    lk.ingest([str(tmp_path / "gone")], vault=vault_dir, scheduler="sync")
    return lk, lk.version


def _erase_elsewhere(lk: lake.Lake, vault_dir: Path) -> None:
    other = lake.open(lk.root)  # another open lake: another process's `lake forget`
    secret = other.secret(vault_dir)
    forget(other, secret, target(other, secret, original_patient_id="GONE-2"))


SERIES = "SELECT SeriesInstanceUID FROM series"


def test_the_current_catalog_after_an_erasure_elsewhere_reads_what_is_left(
    two_patients: tuple[lake.Lake, int], vault_dir: Path
) -> None:
    lk, _ = two_patients
    assert len(lk.sql(SERIES).fetchall()) == 2
    _erase_elsewhere(lk, vault_dir)
    # was: QueryError "query refused: SQL over the catalog cannot read or write files"
    assert lk.sql("SELECT count(*) FROM instances").fetchall() == [(3,)]
    assert len(lk.sql(SERIES).fetchall()) == 1


def test_an_erased_version_kept_open_says_it_was_erased(
    two_patients: tuple[lake.Lake, int], vault_dir: Path
) -> None:
    lk, version = two_patients
    assert len(lk.sql(SERIES, as_of=version).fetchall()) == 2
    assert len(resolve_cohort(lk, SERIES, as_of=version).members) == 5
    _erase_elsewhere(lk, vault_dir)
    with pytest.raises(lake.CatalogError, match="erased"):
        lk.sql(SERIES, as_of=version)
    with pytest.raises(lake.CatalogError, match="erased"):
        resolve_cohort(lk, SERIES, as_of=version)


def test_a_users_read_of_a_file_is_still_refused(several: lake.Lake) -> None:
    path = several.tables.uri("instances")
    with pytest.raises(lake.QueryError, match="query refused"):
        several.sql(f"SELECT * FROM read_parquet('{path}/*.parquet')")


def test_refresh_closes_every_kept_catalog(several: lake.Lake) -> None:
    lk = several
    catalogs = [lk.catalog(v) for v in (1, 2, None)]
    lk.refresh()
    assert not lk._catalogs
    for catalog in catalogs:
        with pytest.raises(duckdb.Error):
            catalog.con.execute("SELECT 1")
