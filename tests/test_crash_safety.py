"""SIGKILL at random moments (issue 15.5): ingest, export, compact, gc and forget, several seeds.

After every kill the lake verifies clean and shows no partial file; re-running the command
finishes the job exactly once, with nothing lost.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import lake
from tests.series import write_ct_series

LAKE = str(Path(sys.executable).with_name("lake"))
SEEDS = [int(s) for s in os.environ.get("LAKE_CRASH_SEEDS", "11,12").split(",")]


def _killed(args: list[str], env: dict[str, str], rng: random.Random) -> int | None:
    """Run ``lake ARGS``, SIGKILL it after a random moment; its exit code if it finished."""
    proc = subprocess.Popen(
        [LAKE, *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    time.sleep(rng.uniform(0.3, 2.5))
    proc.send_signal(signal.SIGKILL)
    code = proc.wait()
    return None if code == -signal.SIGKILL else code


def _finish(args: list[str], env: dict[str, str], *ok: int) -> None:
    done = subprocess.run([LAKE, *args], env=env, capture_output=True, text=True)
    assert done.returncode in (ok or (0,)), (args, done.stderr[-2000:])


def _consistent(lk: lake.Lake, lake_root: Path) -> tuple[int, int]:
    """verify clean, every data file the current version reads is whole; the counts."""
    report = lk.verify()
    assert report.ok, report
    for table in ("instances", "batches", "quarantine", "cohorts"):
        delta = lk.tables.open(table)
        for uri in delta.file_uris():
            pq.read_metadata(uri.removeprefix("file://"))  # a partial file would not parse
    lk.refresh()
    total, distinct = lk.sql(
        "SELECT count(*), count(DISTINCT SOPInstanceUID) FROM instances"
    ).fetchall()[0]
    return int(total), int(distinct)


def _tree(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.mark.slow
@pytest.mark.parametrize("seed", SEEDS)
def test_kills_at_random_moments(
    lk: lake.Lake, lake_root: Path, vault_dir: Path, tmp_path: Path, seed: int
) -> None:
    rng = random.Random(seed)
    inbox = tmp_path / "in"
    for s in range(3):
        write_ct_series(inbox / f"s{s}", 8, patient_id=f"CRASH-{s}")
    (inbox / "junk.bin").write_bytes(b"\x00junk" * 100)
    env = dict(os.environ, LAKE_ROOT=str(lake_root), LAKE_VAULT=str(vault_dir))
    ingest = ["ingest", "-q", "--scheduler", "sync", "--batch-size", str(rng.choice([2, 3, 5]))]

    # ingest: killed, then finished by a re-run
    _killed([*ingest, str(inbox)], env, rng)
    total, distinct = _consistent(lk, lake_root)
    assert total == distinct <= 24
    _finish([*ingest, str(inbox)], env, 0, 3)
    assert _consistent(lk, lake_root) == (24, 24)
    assert lk.sql("SELECT count(*) FROM quarantine").fetchall() == [(1,)]

    # export: killed (no partial file in the folder), then finished identical to a clean one
    export = ["export", "dicom", "--sql", "SELECT * FROM instances", "--scheduler", "sync"]
    _finish([*export, "--out", str(tmp_path / "reference")], env)
    _killed([*export, "--out", str(tmp_path / "out")], env, rng)
    for path in (tmp_path / "out").rglob("*.dcm") if (tmp_path / "out").exists() else []:
        assert path.read_bytes()[128:132] == b"DICM", path  # whole files only
    _finish([*export, "--out", str(tmp_path / "out")], env)
    assert _tree(tmp_path / "out") == _tree(tmp_path / "reference")

    # compact: killed; answers unchanged
    answer = lk.sql("SELECT SOPInstanceUID, pixel_hash FROM instances ORDER BY 1").fetchall()
    _killed(["compact", "--sort"], env, rng)
    assert _consistent(lk, lake_root) == (24, 24)
    assert (
        lk.sql("SELECT SOPInstanceUID, pixel_hash FROM instances ORDER BY 1").fetchall() == answer
    )

    # gc: killed; nothing referenced goes (no writer runs meanwhile: grace 0 is allowed)
    _killed(["gc", "--grace-hours", "0", "--no-writers-running"], env, rng)
    assert _consistent(lk, lake_root) == (24, 24)

    # forget: killed mid-way, then finished; the rest untouched
    patient = lk.sql("SELECT min(PatientID) FROM instances").fetchall()[0][0]
    others = lk.sql(
        f"SELECT SOPInstanceUID, pixel_hash FROM instances WHERE PatientID <> '{patient}' ORDER BY 1"
    ).fetchall()
    _killed(["forget", "--patient", patient, "--yes"], env, rng)
    assert _consistent(lk, lake_root)[0] in (16, 24)
    _finish(["forget", "--patient", patient, "--yes"], env)
    assert _consistent(lk, lake_root) == (16, 16)
    lk.refresh()
    assert (
        lk.sql("SELECT SOPInstanceUID, pixel_hash FROM instances ORDER BY 1").fetchall() == others
    )
    assert lk.sql("SELECT count(*) FROM erasures").fetchall()[0][0] >= 1

    # and a last ingest adds nothing forgotten (its tombstone drops it) and nothing twice
    _finish([*ingest, str(inbox)], env, 0, 3)
    assert _consistent(lk, lake_root) == (16, 16)
    lk.refresh()
    assert lk.sql("SELECT SOPInstanceUID, pixel_hash FROM instances ORDER BY 1").fetchall() == others
