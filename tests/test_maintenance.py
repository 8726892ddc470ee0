"""Maintenance (issue 15.4): compact, gc and vacuum keep answers, versions and cohorts intact."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import lake
from lake.catalog import INSTANCES
from lake.steward import compact, gc, vacuum
from lake.steward._history import live_files
from tests.series import write_ct_series

LAKE = str(Path(sys.executable).with_name("lake"))
QUERY = "SELECT SOPInstanceUID, pixel_hash, Modality FROM instances ORDER BY 1"


def _age(path: Path, hours: float) -> None:
    then = time.time() - hours * 3600
    os.utime(path, (then, then))


def test_compact_keeps_answers_and_every_version(
    lk: lake.Lake, vault_dir: Path, ct_folder: Path
) -> None:
    lk.ingest([str(ct_folder)], vault=vault_dir, scheduler="sync", batch_size=2)
    lk.refresh()
    answers = {v: lk.sql(QUERY, as_of=v).fetchall() for v in range(1, lk.version + 1)}
    files = len(live_files(lk.tables, INSTANCES))
    assert files == 6
    reports = compact(lk, sort=True)
    (instances,) = [r for r in reports if r.table == "instances"]
    assert instances.files_before == 6 and instances.files_after == 1
    assert lk.sql(QUERY).fetchall() == answers[max(answers)]
    for version, rows in answers.items():
        assert lk.sql(QUERY, as_of=version).fetchall() == rows
    assert lk.sql(
        "SELECT count(*) FROM instances WHERE SOPInstanceUID = (SELECT max(SOPInstanceUID) "
        "FROM instances)"
    ).fetchall() == [(1,)]
    assert lk.verify().ok


def test_gc_removes_only_old_unreferenced_debris(
    lk: lake.Lake, lake_root: Path, vault_dir: Path, ct_folder: Path
) -> None:
    lk.ingest([str(ct_folder)], vault=vault_dir, scheduler="sync")
    lk.refresh()
    kept_blobs = set(lk.blobs.keys())
    stray_old = lk.blobs.put(b"left by a crash")
    stray_new = lk.blobs.put(b"a batch in flight")
    _age(Path(lk.blobs.path_of(stray_old)), 5)
    tmp_blob = Path(lk.blobs.path_of(stray_old)).parent / ".tmp-deadbeef"
    tmp_blob.write_bytes(b"partial")
    _age(tmp_blob, 5)
    lost = lake_root / "tables" / "instances" / "part-lost-race.parquet"
    pq.write_table(pa.table({"SOPInstanceUID": ["2.25.1"]}), lost)
    _age(lost, 5)
    sealed = lake_root / "quarantine" / ("ab" * 32 + ".sealed")
    sealed.parent.mkdir(exist_ok=True)
    sealed.write_bytes(b"sealed, no row")
    _age(sealed, 5)

    dry = gc(lk, dry_run=True)
    assert dry.blobs == [stray_old] and lost.exists()
    report = gc(lk)
    assert report.blobs == [stray_old]
    assert report.data_files == ["instances/part-lost-race.parquet"]
    assert report.sealed == ["ab" * 32] and len(report.temporary) == 1
    assert set(lk.blobs.keys()) == kept_blobs | {stray_new}  # the young one waits
    assert not lost.exists() and not sealed.exists() and not tmp_blob.exists()
    lk.refresh()
    assert lk.sql("SELECT count(*) FROM instances").fetchall() == [(12,)]
    assert lk.verify().ok
    cli = subprocess.run(
        [LAKE, "gc", "--grace-hours", "0", "--no-writers-running", "--dry-run"],  # none runs
        env=dict(os.environ, LAKE_ROOT=str(lake_root)),
        capture_output=True,
        text=True,
    )
    assert cli.returncode == 0 and "would remove 1 blobs" in cli.stdout, cli.stderr


def test_vacuum_keeps_what_cohorts_pin(
    lk: lake.Lake, lake_root: Path, vault_dir: Path, ct_folder: Path, tmp_path: Path
) -> None:
    lk.ingest([str(ct_folder)], vault=vault_dir, scheduler="sync", batch_size=4)
    lk.refresh()
    lk.create_cohort("first8", "SELECT * FROM instances WHERE InstanceNumber <= 8")
    pinned = lk.cohort("first8").catalog_version
    lk.export_dicom("first8", tmp_path / "before")
    write_ct_series(tmp_path / "later", 4, patient_id="LATER")
    lk.ingest([str(tmp_path / "later")], vault=vault_dir, scheduler="sync", batch_size=2)
    unpinned = pinned + 1  # reads a file that only versions before the compaction read
    compact(lk)
    report = vacuum(lk, retain=dt.timedelta(0), grace=dt.timedelta(0), no_writers_running=True)
    assert report.files  # the pre-compaction files only old versions read
    lk.refresh()
    lk.export_dicom("first8", tmp_path / "after")
    before = {p.name: p.read_bytes() for p in (tmp_path / "before").rglob("*.dcm")}
    after = {p.name: p.read_bytes() for p in (tmp_path / "after").rglob("*.dcm")}
    assert before == after and len(after) == 8
    assert lk.sql("SELECT count(*) FROM instances").fetchall() == [(16,)]
    with pytest.raises(lake.LakeError, match="can no longer be read"):
        lk.sql("SELECT count(*) FROM instances", as_of=unpinned).fetchall()
    assert lk.verify().ok


def test_verify_is_clean_after_a_clean_ingest(
    lk: lake.Lake, vault_dir: Path, tmp_path: Path
) -> None:
    for p in range(2):
        write_ct_series(tmp_path / f"p{p}", 5, patient_id=f"P{p}")
    lk.ingest([str(tmp_path)], vault=vault_dir, scheduler="sync", batch_size=3)
    report = lk.verify()
    assert report.ok and not report.orphans and not report.completed_batches


def test_vacuum_refuses_a_short_grace_unless_no_writers_run(
    lk: lake.Lake, vault_dir: Path, ct_folder: Path
) -> None:
    """As gc: a grace under MIN_GRACE would delete files a commit, an export or a query on
    a version current a moment ago still reads; the library refuses it (before: vacuum
    took grace=0 and removed them) unless the caller says no writer runs."""
    from lake.steward._maintenance import MIN_GRACE

    lk.ingest([str(ct_folder)], vault=vault_dir, scheduler="sync", batch_size=4)
    compact(lk)  # the pre-compaction files: only older versions read them
    files = {p for p in Path(lk.root, "tables").rglob("*.parquet")}
    for grace in (dt.timedelta(0), MIN_GRACE / 2):
        with pytest.raises(lake.LakeError, match="no_writers_running=True") as caught:
            vacuum(lk, retain=dt.timedelta(0), grace=grace)
        assert caught.value.parameters == ("no_writers_running",)
    with pytest.raises(lake.LakeError, match="cannot be negative"):
        vacuum(lk, retain=dt.timedelta(0), grace=-MIN_GRACE, no_writers_running=True)
    assert {p for p in Path(lk.root, "tables").rglob("*.parquet")} == files
    assert vacuum(lk, retain=dt.timedelta(0)).files == ()  # the default: all within the hour
    assert vacuum(lk, retain=dt.timedelta(0), grace=dt.timedelta(0),
                  no_writers_running=True).files
    assert lk.verify().ok


def test_compact_backfills_representative_headers_and_leaves_none_for_gone_files(
    lk: lake.Lake, vault_dir: Path, ct_folder: Path
) -> None:
    """A lake summarised before representative headers existed gets them from ``lake compact``
    (files compaction leaves alone included); a part written for a file that left the catalog
    meanwhile (an erasure, a compaction) is removed, so no header values outlive their file."""
    import shutil

    from lake.catalog import write_rep_headers
    from lake.catalog._summary import REP_HEADERS, SUMMARY_DIR

    lk.ingest([str(ct_folder)], vault=vault_dir, scheduler="sync")
    parts = Path(lk.location.path) / "tables" / "instances" / SUMMARY_DIR / REP_HEADERS
    assert len(list(parts.iterdir())) == 1
    shutil.rmtree(parts)  # as a lake summarised before d0835acf
    compact(lk)  # one file: nothing to rewrite
    assert len(live_files(lk.tables, INSTANCES)) == 1
    assert len(list(parts.iterdir())) == 1
    old = lk.tables.open("instances")
    more = Path(lk.location.path).parent / "more"
    write_ct_series(more, n=3)
    lk.ingest([str(more)], vault=vault_dir, scheduler="sync")
    compact(lk)  # two files become one: the old file leaves the newest version
    shutil.rmtree(parts)
    assert write_rep_headers(lk.tables, old) == 1  # written for the old version's file...
    assert list(parts.iterdir()) == []  # ...and removed: that file is no longer in the catalog


def test_gc_removes_killed_checkpoint_writes_by_forgets_rule(
    lk: lake.Lake, lake_root: Path, vault_dir: Path, ct_folder: Path
) -> None:
    """A checkpoint staged by delta-rs (``NNN.checkpoint.parquet#N``) and left by a killed
    write is partial and read by no one: gc removes it by the rule ``lake forget`` applies
    (older than ten minutes, whatever the grace), and leaves a younger one, perhaps a write in
    progress. A dry run removes nothing."""
    from lake.steward._history import STAGED_AGE

    lk.ingest([str(ct_folder)], vault=vault_dir, scheduler="sync")
    log = lake_root / "tables" / "instances" / "_delta_log"
    killed = log / "00000000000000000001.checkpoint.parquet#1"
    killed.write_bytes(b"PAR1 partial")
    old = time.time() - STAGED_AGE - 60
    os.utime(killed, (old, old))
    writing = log / "00000000000000000002.checkpoint.parquet#1"
    writing.write_bytes(b"PAR1 in progress")
    batches = lake_root / "tables" / "batches" / "_delta_log"
    other = batches / "00000000000000000000.checkpoint.parquet#3"
    other.write_bytes(b"PAR1")
    os.utime(other, (old, old))

    dry = gc(lk, dry_run=True)
    assert sorted(dry.temporary) == sorted([str(killed), str(other)])
    assert killed.exists() and other.exists()
    report = gc(lk)
    assert sorted(report.temporary) == sorted([str(killed), str(other)])
    assert report.bytes == len(b"PAR1 partial") + len(b"PAR1")
    assert not killed.exists() and not other.exists() and writing.exists()
    lk.refresh()
    assert lk.sql("SELECT count(*) FROM instances").fetchall() == [(12,)]
