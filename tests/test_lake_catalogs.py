"""An open lake keeps a bounded number of catalogs, one per ``as_of`` version (lake/_lake.py).

A long-lived lake (a web or DICOM server, a notebook) asked for many versions must not hold
a DuckDB database for each of them forever: the least recently used beyond
:data:`lake._lake.KEPT_CATALOGS` is closed, and asking for its version again builds it anew
with the same answers.
"""

from __future__ import annotations

import duckdb
import pytest

import lake
from lake._lake import KEPT_CATALOGS


def _count(lk: lake.Lake, as_of: int | None) -> int:
    return int(lk.sql("SELECT count(*) FROM instances", as_of=as_of).fetchall()[0][0])


def test_catalogs_are_bounded_and_the_evicted_closed(several: lake.Lake) -> None:
    lk = several
    versions: list[int | None] = [*range(lk.version + 1), None]  # None: the current one
    assert len(versions) > KEPT_CATALOGS + 1  # the fixture commits enough versions
    counts = {v: _count(lk, v) for v in versions}
    assert counts[0] == 0 and counts[None] == counts[lk.version] > 0
    assert list(lk._catalogs) == versions[-KEPT_CATALOGS:]  # not one per version asked

    kept = lk.catalog(versions[-KEPT_CATALOGS])
    assert lk.catalog(versions[-KEPT_CATALOGS]) is kept  # reused, now the most recently used
    order = list(lk._catalogs)
    assert order[-1] == versions[-KEPT_CATALOGS]
    first_out = lk._catalogs[order[0]]
    lk.catalog(versions[0])  # built again: the least recently used goes, and is closed
    assert len(lk._catalogs) == KEPT_CATALOGS
    assert list(lk._catalogs) == [*order[1:], versions[0]]
    assert lk._catalogs[versions[-KEPT_CATALOGS]] is kept
    with pytest.raises(duckdb.Error):
        first_out.con.execute("SELECT 1")
    assert kept.con.execute("SELECT count(*) FROM instances").fetchall()  # kept: still open
    # every version asked again answers as before
    assert {v: _count(lk, v) for v in versions} == counts
    assert len(lk._catalogs) == KEPT_CATALOGS


def test_refresh_closes_every_kept_catalog(several: lake.Lake) -> None:
    lk = several
    catalogs = [lk.catalog(v) for v in (1, 2, None)]
    lk.refresh()
    assert not lk._catalogs
    for catalog in catalogs:
        with pytest.raises(duckdb.Error):
            catalog.con.execute("SELECT 1")
