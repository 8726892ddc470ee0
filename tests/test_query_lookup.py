"""One instance by SOPInstanceUID through lake.query.InstanceLookup: the same row as
``SELECT * FROM instances WHERE SOPInstanceUID = ?``, at the newest and older versions, and
nothing of an erased instance."""

from __future__ import annotations

from pathlib import Path

import pytest

import lake
from lake import CatalogError, QueryError
from lake.query import InstanceLookup, Snapshot, instance_row
from lake.steward import compact, forget, target
from tests.series import write_ct_series

GONE = "WITHDRAWN-91"


@pytest.fixture
def several(lk: lake.Lake, vault_dir: Path, tmp_path: Path, samples: Path) -> lake.Lake:
    """Two CT series (one patient to forget) in batches of 5, then pydicom's samples."""
    write_ct_series(tmp_path / "a", 12, patient_id=GONE, patient_name="Gone^Gina")
    write_ct_series(tmp_path / "b", 7)
    lk.ingest([str(tmp_path / "a")], vault=vault_dir, scheduler="sync", batch_size=5)
    lk.ingest([str(tmp_path / "b"), str(samples)], vault=vault_dir, scheduler="sync")
    lk.refresh()
    return lk


def _sql_row(lk: lake.Lake, uid: str, as_of: int | None = None) -> dict[str, object] | None:
    relation = lk.sql(f"SELECT * FROM instances WHERE SOPInstanceUID = '{uid}'", as_of=as_of)
    rows = relation.fetchall()
    assert len(rows) <= 1
    return dict(zip(relation.columns, rows[0], strict=True)) if rows else None


def _uids(lk: lake.Lake, as_of: int | None = None) -> list[str]:
    return [u for (u,) in lk.sql("SELECT SOPInstanceUID FROM instances ORDER BY 1",
                                 as_of=as_of).fetchall()]


def test_every_instance_is_the_row_sql_gives(several: lake.Lake) -> None:
    uids = _uids(several)
    assert len(uids) > 19
    with InstanceLookup(several.tables) as lookup:
        assert lookup.version == several.version
        for uid in uids:
            want = _sql_row(several, uid)
            got = lookup.row(uid)
            assert got == want, uid
            assert list(got) == list(want or {})  # the same columns, in the same order
            assert lookup.table(uid).num_rows == 1
    rows = [_sql_row(several, u) or {} for u in uids]
    times = [r[c] for r in rows for c in ("StudyTime", "SeriesTime", "ContentTime",
                                          "AcquisitionTime") if r[c] is not None]
    assert times, "no TIME value compared"


def test_an_absent_uid_is_none(several: lake.Lake) -> None:
    with InstanceLookup(several.tables) as lookup:
        assert lookup.row("2.25.0") is None
        assert lookup.table("2.25.0").num_rows == 0
        assert lookup.row("") is None
    assert instance_row(several.tables, "1.2.3.4'; DROP TABLE x; --") is None


def test_an_older_version_answers_as_it_was(several: lake.Lake) -> None:
    first = min(v for v in range(several.version + 1)
                if several.sql("SELECT count(*) FROM instances", as_of=v).fetchall()[0][0])
    old = _uids(several, as_of=first)
    newer = sorted(set(_uids(several)) - set(old))
    assert old and newer
    with InstanceLookup(several.tables, first) as lookup:
        assert lookup.version == first
        for uid in old:
            assert lookup.row(uid) == _sql_row(several, uid, as_of=first)
        assert lookup.row(newer[0]) is None  # committed after that version
    assert instance_row(several.tables, newer[0], version=first) is None
    assert instance_row(several.tables, newer[0]) == _sql_row(several, newer[0])


def test_after_compaction_the_rows_stay_the_same(several: lake.Lake) -> None:
    uids = _uids(several)
    before = {u: _sql_row(several, u) for u in uids}
    compact(several)
    several.refresh()
    with InstanceLookup(several.tables) as lookup:
        assert len(lookup._files) < 4
        for uid in uids:
            assert lookup.row(uid) == before[uid] == _sql_row(several, uid)


def test_a_snapshot_is_read_at_its_version(several: lake.Lake) -> None:
    uid = _uids(several)[0]
    snapshot = Snapshot(several.tables, several.version)
    try:
        assert instance_row(snapshot, uid) == _sql_row(several, uid)
    finally:
        snapshot.close()
    scoped = Snapshot(several.tables, several.version, members=[(several.version, {uid})])
    try:  # a grant's members only: the whole version must not answer for it
        with pytest.raises(QueryError):
            instance_row(scoped, _uids(several)[1])
    finally:
        scoped.close()


def test_an_erased_instance_is_not_returned(several: lake.Lake, vault_dir: Path) -> None:
    secret = several.secret(vault_dir)
    chosen = target(several, secret, original_patient_id=GONE)
    gone = [u for (u,) in several.sql(
        f"SELECT SOPInstanceUID FROM instances WHERE PatientID = '{chosen.value}'").fetchall()]
    kept = sorted(set(_uids(several)) - set(gone))
    assert len(gone) == 12 and kept
    before = several.version
    with InstanceLookup(several.tables, before) as held:  # opened before the erasure
        forget(several, secret, chosen, by="steward")
        several.refresh()
        with pytest.raises(CatalogError):
            held.row(gone[0])  # its data files are gone from the disk
    with InstanceLookup(several.tables) as lookup:
        for uid in gone:
            assert lookup.row(uid) is None
        for uid in kept:
            assert lookup.row(uid) == _sql_row(several, uid)
    with pytest.raises(CatalogError, match="erase"):
        InstanceLookup(several.tables, before)  # time travel names the erasure
