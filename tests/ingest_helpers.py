"""Running ingest in tests: in-process, or as ``lake ingest`` with its summary table read."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import lake

__all__ = ["LAKE", "cli_env", "ingest_cli", "ingest_sync", "summary_count"]

LAKE = str(Path(sys.executable).with_name("lake"))


def ingest_sync(
    lk: lake.Lake, vault: Path, *sources: Path, **kwargs: object
) -> lake.ingest.IngestSummary:
    """``lk.ingest`` in this process (``--scheduler sync``) of ``sources``."""
    kwargs.setdefault("scheduler", "sync")
    return lk.ingest([str(s) for s in sources], vault=vault, **kwargs)  # type: ignore[no-any-return,arg-type]


def cli_env(tmp_path: Path) -> dict[str, str]:
    """The environment of a lake at ``tmp_path/lake`` (created on first use), wide tables."""
    env = dict(os.environ, LAKE_ROOT=str(tmp_path / "lake"), LAKE_VAULT=str(tmp_path / "vault"),
               COLUMNS="200")
    if not (tmp_path / "lake").exists():
        subprocess.run([LAKE, "init"], env=env, check=True, capture_output=True, timeout=120)
    return env


def ingest_cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``lake ingest --scheduler sync -q ARGS`` into the lake at ``tmp_path/lake``."""
    return subprocess.run([LAKE, "ingest", "--scheduler", "sync", "-q", *args],
                          env=cli_env(tmp_path), capture_output=True, text=True, timeout=300)


def summary_count(stderr: str, label: str) -> int | None:
    """The count on the row ``label`` of the ingest summary table."""
    found = re.search(re.escape(label) + r"\s*│\s*([\d,]+)", stderr)
    return int(found.group(1).replace(",", "")) if found else None
