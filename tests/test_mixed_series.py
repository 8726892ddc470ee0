"""A series holding two patients (issue 15.6): reported at ingest and by verify, exported with
each patient apart (the teaching export failed with a 'short-hash collision')."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
from pydicom import dcmread

import lake
from tests.series import write_ct_series


@pytest.fixture
def mixed(lk: lake.Lake, vault_dir: Path, tmp_path: Path) -> lake.ingest.IngestSummary:
    paths = write_ct_series(tmp_path / "in", 6, patient_id="PAT-A")
    for path in paths[3:]:
        ds = dcmread(path)
        ds.PatientID = "PAT-B"
        ds.save_as(path)
    summary = lk.ingest(
        [str(tmp_path / "in")], vault=vault_dir, scheduler="sync", profile="teaching"
    )
    lk.refresh()
    return summary


def test_reported_at_ingest_and_by_verify(lk: lake.Lake, mixed: lake.ingest.IngestSummary) -> None:
    assert mixed.mixed_series == 1 and mixed.ingested == 6
    report = lk.verify()
    assert report.ok and len(report.mixed_series) == 1


def test_every_export_keeps_each_patient_apart(
    lk: lake.Lake, mixed: lake.ingest.IngestSummary, tmp_path: Path
) -> None:
    teaching = lk.export_teaching("SELECT * FROM instances", tmp_path / "t", scheduler="sync")
    with zipfile.ZipFile(teaching.out / teaching.manifest["archive"]["path"]) as zf:
        images = [n for n in zf.namelist() if n.endswith(".dcm")]
    assert len(images) == 6
    assert {n.split("/")[0] for n in images} == {"case-001", "case-002"}
    dicom = lk.export_dicom("SELECT * FROM instances", tmp_path / "d", scheduler="sync")
    assert dicom.manifest["counts"]["files"] == 6 and not dicom.skipped
