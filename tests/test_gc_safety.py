"""lake gc while writers run (issue 15.4): nothing a committed row or a batch in flight needs goes.

gc lists files first and reads what references them afterwards; a batch in flight is
protected by the grace period, so a grace shorter than the minimum is refused unless the
caller says no writer runs; a batch that reuses an old orphan blob refreshes it.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fsspec.implementations.local import LocalFileSystem

import lake
from lake.steward import gc
from lake.steward._maintenance import MIN_GRACE, _remove_if_old
from lake.store import REFRESH_AFTER, BlobStore, modified_at, resolve
from tests.series import write_ct_series

LAKE = str(Path(sys.executable).with_name("lake"))


def _age(path: Path, hours: float) -> None:
    then = time.time() - hours * 3600
    os.utime(path, (then, then))


def _rows_without_blob(lk: lake.Lake) -> list[str]:
    lk.refresh()
    hashes = lk.sql("SELECT pixel_hash FROM instances WHERE pixel_hash IS NOT NULL").fetchall()
    return [h for (h,) in hashes if not lk.blobs.exists(h)]


@pytest.mark.slow
def test_gc_loop_during_an_ingest_that_reuses_old_orphans_loses_nothing(
    lk: lake.Lake, lake_root: Path, vault_dir: Path, tmp_path: Path
) -> None:
    """The reviewer's repro (300 slices, distinct pixels, batches of 10, gc in a loop), at the
    shortest grace gc accepts, made harder: every blob the ingest needs is already stored as
    an orphan five hours old (a crashed earlier run), so only the refresh on reuse and the
    listing-before-references order keep them."""
    inbox = tmp_path / "in"
    write_ct_series(inbox, 300, patient_id="GC-RACE")
    scratch = lake.init(tmp_path / "scratch", vault=tmp_path / "scratch-vault")
    scratch.ingest([str(inbox)], vault=tmp_path / "scratch-vault", scheduler="sync")
    shutil.copytree(tmp_path / "scratch" / "blobs", lake_root / "blobs", dirs_exist_ok=True)
    orphans = set(scratch.blobs.keys())
    assert len(orphans) == 300
    for path in (lake_root / "blobs").rglob("*"):
        if path.is_file():
            _age(path, 5)
    assert set(lk.blobs.keys()) == orphans

    env = dict(os.environ, LAKE_ROOT=str(lake_root), LAKE_VAULT=str(vault_dir))
    hours = str(MIN_GRACE.total_seconds() / 3600)
    ingest = subprocess.Popen(
        [LAKE, "ingest", "-q", "--scheduler", "sync", "--batch-size", "10", str(inbox)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    runs = []
    try:
        while ingest.poll() is None:
            done = subprocess.run(
                [LAKE, "gc", "--grace-hours", hours], env=env, capture_output=True, text=True
            )
            assert done.returncode == 0, done.stderr[-2000:]
            runs.append(done.stdout)
    finally:
        if ingest.poll() is None:
            ingest.kill()
        _, stderr = ingest.communicate()
    assert ingest.returncode == 0, stderr[-2000:]
    assert runs  # at least one gc started while the ingest ran
    lk.refresh()
    assert lk.sql("SELECT count(DISTINCT SOPInstanceUID) FROM instances").fetchall() == [(300,)]
    assert _rows_without_blob(lk) == []
    referenced = {h for (h,) in lk.sql("SELECT pixel_hash FROM instances").fetchall()}
    assert referenced == orphans  # the ingest did reuse every old orphan
    verify = subprocess.run([LAKE, "verify"], env=env, capture_output=True, text=True)
    assert verify.returncode == 0, verify.stdout[-2000:] + verify.stderr[-2000:]


def test_a_short_grace_is_refused_without_the_no_writers_flag(
    lk: lake.Lake, lake_root: Path, vault_dir: Path, ct_folder: Path
) -> None:
    lk.ingest([str(ct_folder)], vault=vault_dir, scheduler="sync")
    stray = lk.blobs.put(b"a batch in flight")  # young, unreferenced: what grace 0 would take
    with pytest.raises(lake.LakeError, match="no_writers_running=True"):
        gc(lk, grace=MIN_GRACE / 2)
    env = dict(os.environ, LAKE_ROOT=str(lake_root))
    for extra in ([], ["--dry-run"]):
        cli = subprocess.run(
            [LAKE, "gc", "--grace-hours", "0", *extra], env=env, capture_output=True, text=True
        )
        assert cli.returncode == 1, (cli.stdout, cli.stderr)
        message = cli.stderr.strip()
        assert "\n" not in message and "Traceback" not in message, message
        assert "--no-writers-running" in message and "1 hour" in message, message
    assert lk.blobs.exists(stray)
    assert gc(lk, grace=MIN_GRACE).blobs == []  # the minimum itself is accepted


def test_with_no_writers_a_zero_grace_removes_fresh_debris(
    lk: lake.Lake, lake_root: Path, vault_dir: Path, ct_folder: Path
) -> None:
    lk.ingest([str(ct_folder)], vault=vault_dir, scheduler="sync")
    kept = set(lk.blobs.keys())
    stray = lk.blobs.put(b"left by a crash a moment ago")
    tmp_blob = Path(lk.blobs.path_of(stray)).parent / ".tmp-cafe"
    tmp_blob.write_bytes(b"partial")
    lost = lake_root / "tables" / "instances" / "part-lost-race.parquet"
    pq.write_table(pa.table({"SOPInstanceUID": ["2.25.1"]}), lost)
    sealed = lake_root / "quarantine" / ("cd" * 32 + ".sealed")
    sealed.parent.mkdir(exist_ok=True)
    sealed.write_bytes(b"sealed, no row")

    assert gc(lk).blobs == []  # the default grace keeps all of it
    cli = subprocess.run(
        [LAKE, "gc", "--grace-hours", "0", "--no-writers-running"],
        env=dict(os.environ, LAKE_ROOT=str(lake_root)), capture_output=True, text=True,
    )
    assert cli.returncode == 0, cli.stderr
    assert "removed 1 blobs, 1 data files, 1 sealed originals, 1 temporary files" in cli.stdout
    assert set(lk.blobs.keys()) == kept
    assert not lost.exists() and not sealed.exists() and not tmp_blob.exists()
    assert lk.verify().ok and _rows_without_blob(lk) == []


def test_a_batch_reusing_an_old_orphan_refreshes_it(lk: lake.Lake) -> None:
    """An orphan older than the grace that a batch in flight stores again is kept by gc
    until it is old again (the batch's rows may commit after gc read the references)."""
    orphan = lk.blobs.put(b"pixels of an instance whose first batch crashed")
    _age(Path(lk.blobs.path_of(orphan)), 5)
    assert gc(lk, dry_run=True).blobs == [orphan]
    key, written = lk.blobs.put_new(b"pixels of an instance whose first batch crashed")
    assert (key, written) == (orphan, False)
    assert gc(lk).blobs == [] and lk.blobs.exists(orphan)
    _age(Path(lk.blobs.path_of(orphan)), 5)  # never committed: an orphan again, and it goes
    assert gc(lk).blobs == [orphan] and not lk.blobs.exists(orphan)


def test_an_object_store_rewrites_an_old_blob_it_reuses() -> None:
    """Where a file cannot be touched (fsspec's memory filesystem, like S3), a reused blob
    older than REFRESH_AFTER is written again, so its time counts from the reuse."""
    location = resolve(f"memory://gc-safety-{uuid.uuid4().hex}")
    blobs = BlobStore(location)
    fs = location.fs
    data = b"pixels stored by a crashed batch"
    key = blobs.put(data)
    path = blobs.path_of(key)
    try:
        assert not isinstance(fs, LocalFileSystem)
        entry = fs.store[path]
        entry.created = entry.modified = dt.datetime.now(dt.UTC) - dt.timedelta(hours=5)
        assert modified_at(fs.info(path)) < time.time() - MIN_GRACE.total_seconds()
        assert blobs.put_new(data) == (key, False)
        assert modified_at(fs.info(path)) > time.time() - REFRESH_AFTER
        assert blobs.get(key) == data
        fresh = modified_at(fs.info(path))
        assert blobs.put_new(data) == (key, False)  # young: not written again
        assert modified_at(fs.info(path)) == fresh
    finally:
        fs.rm(location.path, recursive=True)


def test_a_blob_refreshed_after_the_listing_is_put_back(lk: lake.Lake) -> None:
    """gc renames a doomed blob aside before reading its time: a writer's refresh made before
    (here: after gc's listing, before its removal) is seen and the blob put back."""
    orphan = lk.blobs.put(b"an orphan a batch in flight is reusing")
    path = Path(lk.blobs.path_of(orphan))
    _age(path, 5)
    cutoff = time.time() - MIN_GRACE.total_seconds()
    assert gc(lk, dry_run=True).blobs == [orphan]  # listed as old ...
    assert lk.blobs.put_new(b"an orphan a batch in flight is reusing") == (orphan, False)
    assert not _remove_if_old(lk, str(path), cutoff)  # ... refreshed since: kept
    assert lk.blobs.get(orphan) == b"an orphan a batch in flight is reusing"
    _age(path, 5)
    assert _remove_if_old(lk, str(path), cutoff) and not path.exists()
    assert not _remove_if_old(lk, str(path), cutoff)  # gone already: nothing to do
    assert [p.name for p in path.parent.iterdir()] == []  # nothing left aside


def test_what_a_killed_gc_left_aside_is_put_back(lk: lake.Lake, tmp_path: Path) -> None:
    """A gc killed between renaming a file aside and deciding leaves it aside; rows may need
    it (a writer refreshed it just before). The next gc puts it back instead of deleting it as
    debris, and drops the aside copy when the file was stored again meanwhile."""
    folder = tmp_path / "in"
    write_ct_series(folder, 2)
    lk.ingest([str(folder)], vault=tmp_path / "vault", scheduler="sync")
    lk.refresh()
    needed = [h for (h,) in lk.sql("SELECT pixel_hash FROM instances").fetchall()]
    first, second = (Path(lk.blobs.path_of(h)) for h in needed)
    for path in (first, second):  # as a gc killed right after its rename leaves them
        os.rename(path, path.with_name(".gc-aside-" + path.name))
        _age(path.with_name(".gc-aside-" + path.name), 5)
    second.write_bytes(second.with_name(".gc-aside-" + second.name).read_bytes())  # re-stored
    assert _rows_without_blob(lk) == [needed[0]]
    gc(lk, grace=dt.timedelta(0), no_writers_running=True)
    assert _rows_without_blob(lk) == []
    assert not any(p.name.startswith(".gc-aside-") for p in first.parent.parent.rglob("*"))
    assert subprocess.run([LAKE, "verify", "--lake", str(lk.location.path)],
                          capture_output=True).returncode == 0
