"""Re-profiling (issue 15.2): 'lake ingest --replace' replaces the rows of the same instances in a
new catalog version; older versions and pinned cohorts keep the old rows."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import lake

LAKE = str(Path(sys.executable).with_name("lake"))


def test_replace_reprofiles_in_a_new_version(
    lk: lake.Lake, lake_root: Path, vault_dir: Path, ct_folder: Path, tmp_path: Path
) -> None:
    first = lk.ingest([str(ct_folder)], vault=vault_dir, scheduler="sync", profile="basic")
    lk.refresh()
    before = lk.version
    lk.create_cohort("pinned", "SELECT * FROM instances")
    lk.export_dicom("pinned", tmp_path / "before")

    plain = lk.ingest([str(ct_folder)], vault=vault_dir, scheduler="sync", profile="research")
    assert (plain.ingested, plain.duplicates, plain.replaced) == (0, 12, 0)  # not without --replace

    env = dict(os.environ, LAKE_ROOT=str(lake_root), LAKE_VAULT=str(vault_dir))
    done = subprocess.run(
        [
            LAKE,
            "ingest",
            "-q",
            "--scheduler",
            "sync",
            "--batch-size",
            "5",
            "--replace",
            "--profile",
            "research",
            str(ct_folder),
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert "replaced (re-profiled)" in done.stderr
    assert not re.search(r"ingest\s+\d+/\d+", done.stderr), done.stderr  # -q: no progress bar
    lk.refresh()
    assert lk.sql("SELECT profile, count(*) FROM instances GROUP BY 1").fetchall() == [
        ("research", 12)
    ]
    assert lk.sql("SELECT sum(replaced), sum(ingested) FROM batches").fetchall() == [(12, 12)]
    old = lk.sql("SELECT DISTINCT profile FROM instances", as_of=before).fetchall()
    assert old == [("basic",)] and first.ingested == 12
    assert lk.verify().ok
    # The cohort keeps its pinned version: the same bytes as before the replacement.
    lk.export_dicom("pinned", tmp_path / "after")
    files = sorted(p.relative_to(tmp_path / "before") for p in (tmp_path / "before").rglob("*.dcm"))
    assert files and all(
        (tmp_path / "before" / f).read_bytes() == (tmp_path / "after" / f).read_bytes()
        for f in files
    )
    again = lk.ingest(
        [str(ct_folder)], vault=vault_dir, scheduler="sync", profile="research", replace=True
    )
    assert (again.replaced, again.duplicates) == (0, 12)  # already so: nothing to replace
