"""A crash or kill at any moment leaves the lake consistent; re-running finishes without duplicates."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import lake
from tests.series import write_ct_series

LAKE = str(Path(sys.executable).with_name("lake"))


@pytest.fixture
def big_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "in"
    for i in range(6):
        write_ct_series(folder / f"s{i}", 40, patient_id=f"P{i}")
    return folder


def _env(lake_root: Path, vault: Path) -> dict[str, str]:
    return dict(os.environ, LAKE_ROOT=str(lake_root), LAKE_VAULT=str(vault))


def _count(lk: lake.Lake) -> tuple[int, int]:
    lk.refresh()
    return tuple(
        lk.sql("SELECT count(*), count(DISTINCT SOPInstanceUID) FROM instances").fetchall()[0]
    )  # type: ignore[return-value]


@pytest.mark.slow
@pytest.mark.parametrize("kill_after_commits", [1, 3])
def test_kill_mid_ingest_then_rerun(
    lk: lake.Lake, lake_root: Path, vault_dir: Path, big_folder: Path, kill_after_commits: int
) -> None:
    env = _env(lake_root, vault_dir)
    proc = subprocess.Popen(
        [LAKE, "ingest", "-q", "--scheduler", "sync", "--batch-size", "20", str(big_folder)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    log = lake_root / "tables" / "instances" / "_delta_log"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        commits = len(list(log.glob("*.json"))) - 1  # minus the creating commit
        if commits >= kill_after_commits or proc.poll() is not None:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    total, distinct = _count(lk)
    assert total == distinct  # whatever landed is consistent
    assert total < 240, "the ingest finished before it could be killed; make the input larger"
    assert lk.verify().ok  # every committed row's blob is there and intact
    done = subprocess.run(
        [LAKE, "ingest", "-q", "--scheduler", "sync", str(big_folder)],
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert _count(lk) == (240, 240)
    report = lk.verify()
    assert report.ok and report.rows_checked == 240


@pytest.mark.slow
def test_concurrent_ingests_of_the_same_files_do_not_duplicate(
    lk: lake.Lake, lake_root: Path, vault_dir: Path, big_folder: Path
) -> None:
    env = _env(lake_root, vault_dir)
    procs = [
        subprocess.Popen(
            [LAKE, "ingest", "-q", "--scheduler", "sync", "--batch-size", "40", str(big_folder)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for _ in range(2)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err.decode()[-2000:]
    assert _count(lk) == (240, 240)
