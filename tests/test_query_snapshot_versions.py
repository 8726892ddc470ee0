"""A snapshot answers from its own catalog version while newer ones are committed.

A C-GET/C-MOVE holds its :class:`lake.query.Snapshot` for the whole transfer (and WADO-RS
for a response) while :class:`lake.query.SnapshotCache` follows the newest version:
appending new commits to the snapshot in place, or building a fresh one after a
compaction. The older snapshot must keep reading its own files (still on disk until
vacuum), and the cache must not close it under the retrieve still using it (review s19,
S1 and N6).
"""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

import pytest

import lake
from lake import CatalogError
from lake.catalog._summary import data_files
from lake.query import (
    Key,
    Level,
    RetrieveItem,
    Snapshot,
    SnapshotCache,
    identifier_from_filters,
    parse_identifier,
)
from lake.steward import compact
from tests.series import write_ct_series


def _uids(lk: lake.Lake) -> list[str]:
    lk.refresh()
    return sorted(r[0] for r in lk.sql("SELECT SOPInstanceUID FROM instances").fetchall())


def _retrieve_all(lk: lake.Lake, snapshot: Snapshot) -> list[RetrieveItem]:
    """What a C-GET/C-MOVE of every study asks ``snapshot`` for."""
    studies = lk.sql("SELECT DISTINCT StudyInstanceUID FROM instances").fetchall()
    items: list[RetrieveItem] = []
    for (study,) in studies:
        keys: list[Key] = parse_identifier(
            identifier_from_filters([f"StudyInstanceUID={study}"]), list(Level))[1]
        items += snapshot.retrieve(Level.STUDY, keys)
    return items


def _advance_then_compact(
    lk: lake.Lake, vault_dir: Path, tmp_path: Path
) -> tuple[SnapshotCache, Snapshot, list[str]]:
    """A cache whose snapshot advanced in place over a second commit, then a compaction
    (the review's repro): the cache, that snapshot, the first commit's UIDs."""
    write_ct_series(tmp_path / "a", 2, patient_id="A-1")
    lk.ingest([str(tmp_path / "a")], vault=vault_dir, scheduler="sync")
    cache = SnapshotCache(lk.tables)
    old = cache.current()
    first = _uids(lk)
    write_ct_series(tmp_path / "b", 2, patient_id="B-1")
    lk.ingest([str(tmp_path / "b")], vault=vault_dir, scheduler="sync")
    assert cache.current() is old  # the new commit was appended in place
    compact(lk)
    assert len(data_files(lk.tables, lk.tables.open("instances"))) == 1  # files were compacted
    return cache, old, first


def test_old_snapshot_reads_its_own_files_after_a_compaction(
    lk: lake.Lake, vault_dir: Path, tmp_path: Path
) -> None:
    cache, old, first = _advance_then_compact(lk, vault_dir, tmp_path)
    new = cache.current()
    assert new is not old and new.version > old.version
    every = _uids(lk)
    assert set(first) < set(every)
    # The retrieve still holding the older snapshot reads headers of both of its commits:
    # the file it was built from and the one it advanced over, both gone from `new`.
    got = old.headers(every, "header_dicom")
    assert set(got) == set(every) and all(isinstance(v, bytes) and v for v in got.values())
    # Its retrieve plan, then the headers as a C-GET reads them (places known).
    assert sorted(i.sop_instance_uid for i in _retrieve_all(lk, old)) == every
    assert old.headers(every, "header_json") == new.headers(every, "header_json")
    assert new.headers(every, "header_dicom") == got
    cache.close()


def test_replaced_snapshot_is_not_closed_and_not_kept(
    lk: lake.Lake, vault_dir: Path, tmp_path: Path
) -> None:
    cache, old, first = _advance_then_compact(lk, vault_dir, tmp_path)
    assert cache.current() is not old
    # Still usable by whoever holds it (its DuckDB connection is open) ...
    assert set(old.headers(first)) == set(first)
    assert len(_retrieve_all(lk, old)) == 4
    # ... and freed once nobody does: the cache keeps no reference to it.
    ref = weakref.ref(old)
    del old
    gc.collect()
    assert ref() is None
    cache.close()


def test_vanished_data_file_is_a_catalog_error(
    lk: lake.Lake, vault_dir: Path, tmp_path: Path
) -> None:
    cache, old, first = _advance_then_compact(lk, vault_dir, tmp_path)
    cache.current()
    assert len(_retrieve_all(lk, old)) == 4  # a C-GET planned its transfer ...
    for path in old._files.values():  # ... then a vacuum past its grace removed the files
        Path(path).unlink()
    with pytest.raises(CatalogError, match="no longer"):
        old.headers(first, "header_dicom")
    cache.close()
