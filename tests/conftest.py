"""Shared fixtures: a fresh lake with its vault, and real DICOM inputs."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

import lake
from tests.series import write_ct_series

#: ``../shared/data`` from the project root; LAKE_SHARED_DATA points elsewhere (a git worktree).
SHARED_DATA = Path(
    os.environ.get("LAKE_SHARED_DATA")
    or Path(__file__).resolve().parents[1].parent / "shared" / "data"
)

# A handful of pydicom's own files: several modalities and transfer syntaxes, none at risk of
# burned-in text (secondary capture and ultrasound are refused by the basic profile).
SAMPLE_FILES = (
    "CT_small.dcm",
    "MR_small.dcm",
    "MR_small_RLE.dcm",
    "MR_small_jp2klossless.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "rtplan.dcm",
    "emri_small.dcm",
)


@pytest.fixture
def vault_dir(tmp_path: Path) -> Path:
    return tmp_path / "vault"


@pytest.fixture
def lake_root(tmp_path: Path) -> Path:
    return tmp_path / "lake"


@pytest.fixture
def lk(lake_root: Path, vault_dir: Path) -> lake.Lake:
    return lake.init(lake_root, vault=vault_dir)


@pytest.fixture
def samples(tmp_path: Path) -> Path:
    """A folder of real DICOM files from pydicom's test data."""
    folder = tmp_path / "in" / "samples"
    folder.mkdir(parents=True)
    for name in SAMPLE_FILES:
        path = get_testdata_file(name)
        assert path is not None, name
        shutil.copy(path, folder / name)
    return folder


@pytest.fixture
def ct_folder(tmp_path: Path) -> Path:
    """A generated 12-slice CT series."""
    folder = tmp_path / "in" / "ct"
    write_ct_series(folder, 12)
    return folder


@pytest.fixture
def several(lk: lake.Lake, vault_dir: Path, tmp_path: Path, samples: Path) -> lake.Lake:
    """A lake written by several commits: two CT series in batches of 5, then pydicom's samples."""
    write_ct_series(tmp_path / "a", 12)
    write_ct_series(tmp_path / "b", 7)
    lk.ingest([str(tmp_path / "a")], vault=vault_dir, scheduler="sync", batch_size=5)
    lk.ingest([str(tmp_path / "b"), str(samples)], vault=vault_dir, scheduler="sync")
    lk.refresh()
    return lk


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is absent")
    return SHARED_DATA


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Show the reports tests record as ``record_property("report_...", text)`` after the
    run, whether or not output is captured (e.g. the NIfTI parity table per repository)."""
    for outcome in ("passed", "failed"):
        for report in terminalreporter.stats.get(outcome, []):
            for name, value in getattr(report, "user_properties", ()):
                if str(name).startswith("report_"):
                    terminalreporter.write_line(str(value))
