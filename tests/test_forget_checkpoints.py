"""Erasure against a checkpoint written late: delta-rs writes a table's checkpoint after the
commit that makes it due (every 100th), from the log as it read it then. A writer whose 100th
commit lands just before ``lake forget`` deletes the rows, and whose checkpoint lands only after
forget scanned the checkpoints, would leave the statistics (minimum and maximum values: the
pseudonym, UIDs) of the erased rows' data files in that checkpoint, for good.

The interleaving is forced on a real ``lake ingest`` process: strace holds it in its
post-commit hook, after it read the log and built the checkpoint, just before delta-rs's local
object store creates the staged file (``NNN.checkpoint.parquet#1``: its openat is made to fail,
so delta-rs stages under ``#2`` once resumed, with a SIGSTOP), while ``lake forget`` runs."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

import lake
from lake.catalog import INSTANCES
from tests.series import write_ct_series
from tests.test_forget import _everything

LAKE = str(Path(sys.executable).with_name("lake"))
DUE = 99  # the version whose commit makes delta-rs write the table's first checkpoint


def _env(root: Path, vault: Path) -> dict[str, str]:
    return dict(os.environ, LAKE_ROOT=str(root), LAKE_VAULT=str(vault))


def _stopped(strace: subprocess.Popen[bytes], commit: Path) -> psutil.Process:
    """The writer, once its commit is made and strace stopped it before its checkpoint."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        assert strace.poll() is None, "the writer ended without reaching its checkpoint"
        if commit.exists():
            for child in psutil.Process(strace.pid).children(recursive=True):
                if child.status() in (psutil.STATUS_TRACING_STOP, psutil.STATUS_STOPPED):
                    return child
        time.sleep(0.05)
    raise AssertionError("the writer was not stopped before its checkpoint")


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace is absent")
def test_a_checkpoint_written_after_forget_scanned_holds_no_erased_identifier(
    lk: lake.Lake, lake_root: Path, vault_dir: Path, tmp_path: Path
) -> None:
    inbox = tmp_path / "in"
    for p in range(2):
        write_ct_series(inbox / f"p{p}", 5, patient_id=f"PAT-{p}", patient_name=f"Doe^P{p}")
    write_ct_series(tmp_path / "late", 3, patient_id="PAT-LATE", patient_name="Doe^Late")
    lk.ingest([str(inbox)], vault=vault_dir, scheduler="sync", batch_size=4)  # shared files
    lk.refresh()
    from lake.steward import target as resolve

    target = resolve(lk, lk.secret(vault_dir), original_patient_id="PAT-1").value
    mine = lk.sql("SELECT SOPInstanceUID, SeriesInstanceUID, StudyInstanceUID FROM instances "
                  f"WHERE PatientID = '{target}'").fetchall()
    tokens = {target} | {v for row in mine for v in row}
    assert len(mine) == 5
    tables = lk.tables
    while int(tables.open(INSTANCES.name).version()) < DUE - 1:  # empty commits, as forget's
        tables.append(INSTANCES, INSTANCES.schema.empty_table())
    log = lake_root / "tables" / INSTANCES.name / "_delta_log"
    assert not list(log.glob("*.checkpoint.parquet*"))

    staged = f"{log}/{DUE:020d}.checkpoint.parquet#1"
    writer = subprocess.Popen(
        ["strace", "-f", "-qq", "-o", os.devnull, "-P", staged, "-e", "trace=openat",
         "-e", "inject=openat:error=EEXIST:signal=SIGSTOP",
         LAKE, "ingest", str(tmp_path / "late")],
        env=_env(lake_root, vault_dir), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        held = _stopped(writer, log / f"{DUE:020d}.json")
        assert not list(log.glob("*.checkpoint.parquet*"))  # due, not written
        first = subprocess.run([LAKE, "forget", "--patient", target, "--yes"],
                               env=_env(lake_root, vault_dir), capture_output=True, text=True)
        held.send_signal(signal.SIGCONT)
        _, err = writer.communicate(timeout=300)
    finally:
        if writer.poll() is None:
            writer.kill()
    assert writer.returncode == 0, err
    assert (log / f"{DUE:020d}.checkpoint.parquet").exists()  # written late
    if first.returncode != 0:  # refused while the checkpoint was due: run again
        assert "is being written; re-run the command" in first.stderr, first.stderr
        assert "Traceback" not in first.stderr
        again = subprocess.run([LAKE, "forget", "--patient", target, "--yes"],
                               env=_env(lake_root, vault_dir), capture_output=True, text=True)
        assert again.returncode == 0, again.stderr

    found = {name: sorted(t for t in tokens if t in text)
             for name, text in _everything(lake_root).items()}
    assert {n: t for n, t in found.items() if t} == {}
    assert first.returncode != 0  # it did not finish while a checkpoint was due
    lk.refresh()
    assert lk.sql("SELECT count(*) FROM instances").fetchall() == [(8,)]
    assert lk.verify().ok
