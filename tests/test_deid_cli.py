"""Steward commands: lake profiles list/show/diff and the lake deid dry run."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom import config, dcmread
from pydicom.data import get_testdata_file
from typer.testing import CliRunner

from pipelines.cli import app

runner = CliRunner()
ENV = {"COLUMNS": "240", "NO_COLOR": "1"}


def test_list() -> None:
    result = runner.invoke(app, ["profiles", "list"], env=ENV)
    assert result.exit_code == 0, result.output
    for name in ("basic", "research", "teaching"):
        assert name in result.stdout
    assert "clean-pixel-data" in result.stdout


def test_show_lists_every_attribute_from_the_compiled_plan() -> None:
    result = runner.invoke(app, ["profiles", "show", "basic"], env=ENV)
    assert result.exit_code == 0, result.output
    assert "PS3.15 2024b" in result.stdout
    assert "(0010,0010)" in result.stdout and "Patient's Name" in result.stdout
    assert "keyed pseudonym" in result.stdout  # PatientID
    rules = int(result.stdout.strip().splitlines()[-1].split()[0])
    assert rules >= 621
    teaching = runner.invoke(app, ["profiles", "show", "teaching", "--grep", "0010,0020"],
                             env=ENV)
    assert "pixel filter" in teaching.stdout and "Lake ultrasound regions" in teaching.stdout


def test_diff() -> None:
    result = runner.invoke(app, ["profiles", "diff", "basic", "research"], env=ENV)
    assert result.exit_code == 0, result.output
    assert "Study Date" in result.stdout and "shift date" in result.stdout
    assert "retain-modified-dates" in result.stdout
    same = runner.invoke(app, ["profiles", "diff", "basic", "basic"], env=ENV)
    assert "0 attributes differ" in same.stdout


def test_unknown_profile_is_one_line_and_non_zero() -> None:
    result = runner.invoke(app, ["profiles", "show", "nonexistent"], env=ENV)
    assert result.exit_code == 1
    assert "unknown profile" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.fixture
def named_ct(tmp_path: Path) -> Path:
    ds = dcmread(get_testdata_file("CT_small.dcm"))
    ds.PatientName = "Zyxwvut^Qwerty"
    ds.StudyDescription = "Head for Zyxwvut"
    path = tmp_path / "named.dcm"
    ds.save_as(path)
    return path


def test_dry_run_masks_values_by_default(named_ct: Path) -> None:
    before = named_ct.read_bytes()
    mode = config.settings.reading_validation_mode
    result = runner.invoke(app, ["deid", str(named_ct), "--profile", "research"], env=ENV)
    assert config.settings.reading_validation_mode == mode  # restored after the dry run
    assert result.exit_code == 0, result.output
    assert "Zyxwvut" not in result.output
    assert "ephemeral random secret" in result.stdout
    assert "PatientName" in result.stdout and "removed (X)" in result.stdout
    assert "StudyDescription" in result.stdout
    assert named_ct.read_bytes() == before  # nothing written
    assert sorted(p.name for p in named_ct.parent.iterdir()) == ["named.dcm"]


def test_dry_run_reveals_values_on_request(named_ct: Path) -> None:
    result = runner.invoke(app, ["deid", str(named_ct), "--show-values"], env=ENV)
    assert result.exit_code == 0, result.output
    assert "Zyxwvut" in result.stdout


def test_dry_run_refusal_and_bad_input(tmp_path: Path) -> None:
    refused = runner.invoke(app, ["deid", get_testdata_file("US1_UNCR.dcm")], env=ENV)
    assert refused.exit_code == 1
    assert "burned-in" in refused.stderr or "BurnedInAnnotation" in refused.stderr
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not dicom at all")
    bad = runner.invoke(app, ["deid", str(junk)], env=ENV)
    assert bad.exit_code == 1 and "not a DICOM file" in bad.stderr
    assert str(junk) not in bad.output and "junk" not in bad.output  # no path, no name
