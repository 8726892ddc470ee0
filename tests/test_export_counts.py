"""Export summaries count written and skipped series separately (issue 15.6)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import lake

LAKE = str(Path(sys.executable).with_name("lake"))


def test_skipped_series_are_not_counted_as_written(
    lk: lake.Lake, lake_root: Path, vault_dir: Path, ct_folder: Path, samples: Path, tmp_path: Path
) -> None:
    lk.ingest([str(ct_folder), str(samples / "rtplan.dcm")], vault=vault_dir, scheduler="sync")
    lk.refresh()
    assert lk.sql("SELECT count(DISTINCT SeriesInstanceUID) FROM instances").fetchall() == [(2,)]
    result = lk.export_nifti("SELECT * FROM instances", tmp_path / "out", scheduler="sync")
    counts = result.manifest["counts"]
    assert (counts["series_exported"], counts["series_skipped"]) == (1, 1)
    assert (result.written, result.skipped_series) == (1, 1)
    assert result.skipped  # and why
    env = dict(os.environ, LAKE_ROOT=str(lake_root), LAKE_VAULT=str(vault_dir))
    cli = subprocess.run(
        [
            LAKE,
            "export",
            "nifti",
            "--sql",
            "SELECT * FROM instances",
            "--out",
            str(tmp_path / "cli"),
            "--scheduler",
            "sync",
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    assert cli.returncode == 4, cli.stderr
    assert "series exported" in cli.stderr and "series skipped" in cli.stderr
    lines = {line.strip("│ ").split("│")[0].strip(): line for line in cli.stderr.splitlines()}
    assert any("series skipped" in k and "1" in v for k, v in lines.items())
