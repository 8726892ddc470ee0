"""Background commits of an ingest (``_Committer``): on worker schedulers each batch is committed
on a thread of its own, in order; a commit's error is never lost, also when the driver fails too;
the lake stays consistent and a re-run finishes without duplicates."""

from __future__ import annotations

import errno
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import lake
from lake.ingest import _commit
from tests.series import write_ct_series

FILES = 8
BATCH = 2
#: A planted value in the commit error's message: it must not reach the note (type only).
PLANTED = "/no/space/DOE^JOHN"
#: Worker schedulers: their batches are committed on the commit thread ("sync" commits inline).
SCHEDULERS = ("threads", "pool")


@pytest.fixture
def ct_files(tmp_path: Path) -> Path:
    folder = tmp_path / "in" / "ct"
    write_ct_series(folder, FILES)
    return folder


def _failing_commit(fail_on: int, calls: list[int]) -> Callable[[Any, Any], None]:
    """``record_batch`` failing with ENOSPC on its ``fail_on``-th call (after the instances
    commit of that batch, as a full disk would), the real one otherwise."""
    real = _commit.record_batch

    def record(tables: Any, journal: Any) -> None:
        calls.append(journal.batch["catalog_version"])
        if len(calls) == fail_on:
            raise OSError(errno.ENOSPC, "No space left on device", PLANTED)
        real(tables, journal)

    return record


def _ingest(lk: lake.Lake, vault: Path, folder: Path, scheduler: str, **kwargs: Any) -> Any:
    return lk.ingest(
        [str(folder)], vault=vault, scheduler=scheduler, workers=2, batch_size=BATCH, **kwargs
    )


def _counts(lk: lake.Lake) -> tuple[int, int]:
    lk.refresh()
    (row,) = lk.sql("SELECT count(*), count(DISTINCT SOPInstanceUID) FROM instances").fetchall()
    return row[0], row[1]


def _rerun_finishes(lk: lake.Lake, vault: Path, folder: Path, scheduler: str) -> None:
    """The lake verifies as left; a re-run lands the rest, duplicates nothing, verifies."""
    report = lk.verify()
    assert report.ok, report
    assert report.duplicate_instances == []
    assert report.missing_batches == []
    landed, distinct = _counts(lk)
    assert landed == distinct < FILES
    summary = _ingest(lk, vault, folder, scheduler)
    assert (summary.ingested, summary.duplicates) == (FILES - landed, landed)
    assert _counts(lk) == (FILES, FILES)
    again = lk.verify()
    assert again.ok and again.rows_checked == FILES and again.completed_batches == []


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_a_commit_failing_on_the_commit_thread_fails_the_ingest_with_its_error(
    lk: lake.Lake, vault_dir: Path, ct_files: Path, scheduler: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    monkeypatch.setattr(_commit, "record_batch", _failing_commit(2, calls))
    with pytest.raises(OSError) as raised:
        _ingest(lk, vault_dir, ct_files, scheduler)
    assert raised.value.errno == errno.ENOSPC and raised.value.filename == PLANTED
    assert len(calls) == 2  # no batch was committed after the failed one
    monkeypatch.undo()
    # Batch 2's instances landed before its record failed: verify completes that record.
    assert _counts(lk) == (2 * BATCH, 2 * BATCH)
    assert len(lk.verify().completed_batches) == 1
    _rerun_finishes(lk, vault_dir, ct_files, scheduler)


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_batches_land_in_order_with_the_rows_of_a_sync_ingest(
    lk: lake.Lake, vault_dir: Path, ct_files: Path, tmp_path: Path, scheduler: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = _commit.record_batch
    recorded: list[tuple[str, int]] = []

    def record(tables: Any, journal: Any) -> None:
        recorded.append((journal.batch["batch_id"], journal.batch["catalog_version"]))
        real(tables, journal)

    monkeypatch.setattr(_commit, "record_batch", record)
    summary = _ingest(lk, vault_dir, ct_files, scheduler)
    assert (summary.ingested, summary.duplicates, summary.quarantined) == (FILES, 0, 0)
    monkeypatch.undo()

    batches = lk.sql(
        "SELECT batch_id, catalog_version, ingested FROM batches ORDER BY started_at"
    ).fetchall()
    # Handed over in this order (started_at), committed in this order (catalog versions
    # rise one by one), recorded in this order, each whole.
    assert len(batches) == FILES // BATCH
    assert [v for _, v, _ in batches] == list(range(batches[0][1], batches[0][1] + len(batches)))
    assert [(b, v) for b, v, _ in batches] == recorded
    assert [n for _, _, n in batches] == [BATCH] * len(batches)
    per_batch = dict(lk.sql("SELECT batch_id, count(*) FROM instances GROUP BY 1").fetchall())
    assert per_batch == {b: BATCH for b, _, _ in batches}

    # The same rows as a sync ingest of the same files under the same key.
    other = lake.init(tmp_path / "sync-lake", vault=tmp_path / "sync-vault")
    lake.ingest.ingest(other, [str(ct_files)], lk.secret(vault_dir), scheduler="sync")
    other.refresh()
    run_own = {"batch_id", "ingested_at"}
    columns = [c for (c,) in lk.sql("SELECT column_name FROM (DESCRIBE instances)").fetchall()]
    compared = ", ".join(f'"{c}"' for c in columns if c not in run_own)
    query = f"SELECT {compared} FROM instances ORDER BY SOPInstanceUID"
    assert lk.sql(query).fetchall() == other.sql(query).fetchall()


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_a_failed_commit_is_not_hidden_by_a_driver_failure(
    lk: lake.Lake, vault_dir: Path, ct_files: Path, scheduler: str,
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    """Disk full on commit 2 while the driver fails after 6 files (a pool worker lost, a
    progress callback raising): the driver's error is raised, the commit's ENOSPC chained to
    it and named (its type only) in a note and a warning (the command line shows only the
    driver error's message)."""
    calls: list[int] = []
    monkeypatch.setattr(_commit, "record_batch", _failing_commit(2, calls))
    done = [0]

    def progress(files: int, nbytes: int) -> None:
        done[0] += files
        if done[0] >= 6:
            raise RuntimeError("driver-side failure")

    with pytest.raises(RuntimeError, match="driver-side failure") as raised:
        _ingest(lk, vault_dir, ct_files, scheduler, on_progress=progress)
    assert len(calls) == 2
    failed = raised.value.__context__
    assert isinstance(failed, OSError) and failed.errno == errno.ENOSPC
    notes = getattr(raised.value, "__notes__", [])
    assert any("OSError" in note for note in notes), notes
    assert not any(PLANTED in note or "DOE" in note for note in notes)
    warnings = [r.getMessage() for r in caplog.records if r.name == "lake.ingest._run"]
    assert warnings == notes[-1:]
    monkeypatch.undo()
    _rerun_finishes(lk, vault_dir, ct_files, scheduler)
