"""What the repository itself holds: no vault key, no lake, no DICOM input is ever committed
(a scratch lake with its key was, once: t3/, removed in session 22)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _tracked() -> list[str]:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    listed = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z"], check=True,
                            capture_output=True).stdout
    return [p for p in listed.decode().split("\0") if p]


def test_no_key_lake_or_dicom_file_is_tracked() -> None:
    tracked = _tracked()
    assert "pyproject.toml" in tracked  # (the listing works)
    suspicious = [p for p in tracked
                  if p.endswith((".key", ".dcm", ".parquet")) or "/_delta_log/" in f"/{p}"]
    assert suspicious == []
