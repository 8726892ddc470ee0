"""``lake ingest`` counts the parser warnings it suppresses, in whatever process a file is read.

pydicom warns and logs about a malformed value, quoting it (``Invalid value for VR UI:
'<an original UID>'``); ingest drops those inside :func:`lake._capture.capture` scopes, on the
worker that reads the file. Before session 26 the count stayed there: no path led from the
workers to the summary, and ``lake ingest`` printed nothing (``lake serve dicom``, ``lake pull``
and STOW-RS report theirs). Real CT files whose SeriesInstanceUID is not a UID are ingested in
this process, by a pool of forked workers and on a dask.distributed cluster: each run counts
the same warnings in the same files, and the command prints the count once, with no value.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file

import lake
from lake._capture import capture
from lake.ingest import Ingestor, process_bytes
from tests.series import write_ct_series

LAKE = str(Path(sys.executable).with_name("lake"))
TOKEN = "TKNINGESTUI4QX"
BAD = 3
LINE = re.compile(
    r"(\d+) parser warnings and library log records about (\d+) of the files read were "
    r"suppressed")


def _bad_uids(folder: Path) -> list[Path]:
    """Real CTs whose SeriesInstanceUID is not a UID (pydicom warns and logs, quoting it)."""
    source = get_testdata_file("CT_small.dcm")
    assert source is not None
    folder.mkdir(parents=True)
    paths = []
    for n in range(BAD):
        ds = dcmread(source)
        with capture():  # the test writes an invalid value on purpose (pydicom warns, logs)
            ds.SOPInstanceUID = f"1.2.826.0.1.3680043.10.511.{n}"
            ds.SeriesInstanceUID = f"1.2.826.{TOKEN}^{n}"
            ds.save_as(folder / f"bad_uid_{n}.dcm", enforce_file_format=True)
        paths.append(folder / f"bad_uid_{n}.dcm")
    return paths


def _expected(folder: Path, path: Path) -> int:
    """What one de-identification of the file warns and logs (into a throw-away lake)."""
    scratch = lake.init(folder / "lake", vault=folder / "vault")
    context = Ingestor(scratch, scratch.secret(folder / "vault")).context
    clean = get_testdata_file("CT_small.dcm")
    assert clean is not None
    with capture():  # warmed up (a process's first instance may warn once more)
        process_bytes(Path(clean).read_bytes(), context)
    with capture() as counted:
        process_bytes(path.read_bytes(), context)
    assert counted.total > 0
    return counted.total


@pytest.fixture
def inputs(tmp_path: Path) -> Path:
    """Three malformed CTs among a clean generated series."""
    folder = tmp_path / "in"
    _bad_uids(folder / "bad")
    write_ct_series(folder / "ct", 6)
    return folder


@pytest.mark.parametrize("scheduler", ["sync", "pool"])
def test_lake_ingest_prints_the_count_once(
    scheduler: str, inputs: Path, lk: lake.Lake, lake_root: Path, vault_dir: Path,
    tmp_path: Path,
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAKE_")}
    run = subprocess.run(
        [LAKE, "ingest", str(inputs), "--lake", str(lake_root), "--vault", str(vault_dir),
         "--scheduler", scheduler, "--workers", "2", "--quiet"],
        capture_output=True, text=True, timeout=600, env=env,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert TOKEN not in run.stdout + run.stderr
    found = LINE.findall(run.stderr)
    assert len(found) == 1, run.stderr[-2000:]  # before s26: no line at all
    total, files = (int(n) for n in found[0])
    assert files == BAD  # the clean series warns about nothing
    expected = _expected(tmp_path / "scratch", inputs / "bad" / "bad_uid_0.dcm")
    assert BAD * expected <= total < 2 * BAD * expected
    again = subprocess.run(  # clean files only: no line
        [LAKE, "ingest", str(inputs / "ct"), "--lake", str(lake_root), "--vault",
         str(vault_dir), "--scheduler", scheduler, "--quiet"],
        capture_output=True, text=True, timeout=600, env=env,
    )
    assert again.returncode == 0, again.stderr[-2000:]
    assert "parser warnings" not in again.stderr


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=1, threads_per_worker=1, processes=True,
        dashboard_address=":0", silence_logs=logging.CRITICAL,
    ) as local:
        yield str(local.scheduler_address)


@pytest.mark.slow
def test_every_engine_counts_the_same(cluster: str, inputs: Path, tmp_path: Path) -> None:
    counts = {}
    for scheduler in ("sync", "pool", cluster):
        name = "cluster" if "://" in scheduler else scheduler
        vault = tmp_path / name / "vault"
        lk = lake.init(tmp_path / name / "lake", vault=vault)
        summary = lk.ingest([str(inputs)], vault=vault, scheduler=scheduler, workers=2)
        assert summary.ingested == BAD + 6
        counts[name] = (summary.suppressed, summary.warned_files)
    expected = _expected(tmp_path / "scratch", inputs / "bad" / "bad_uid_0.dcm")
    for name, (total, files) in counts.items():
        assert files == BAD, name  # before s26: 0 (the workers' counts stayed there)
        assert BAD * expected <= total < 2 * BAD * expected, (name, total)
