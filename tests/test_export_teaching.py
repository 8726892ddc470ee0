"""Teaching sets: a zip of de-identified DICOM, mid-slice PNG previews and a student manifest,
refused for instances de-identified with a profile weaker than ``teaching``."""

from __future__ import annotations

import csv
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import lake
from lake.export import create_cohort, export_dicom, export_teaching, teaching_profiles
from tests.series import ct_series
from tests.test_export import identifying_values

BAND = 12  # slice i of a marked series is bright in columns [BAND * i, BAND * i + 10)


def write_marked_series(folder: Path, n: int, *, windowed: bool) -> None:
    """A CT series whose slice at position i (along the normal) shows a bright band at i.

    InstanceNumber runs against the position, so only a geometric sort finds the middle.
    """
    folder.mkdir(parents=True)
    for i, ds in enumerate(ct_series(n, patient_id="PAT-0042", patient_name="Teach^Ing")):
        pixels = np.zeros((int(ds.Rows), int(ds.Columns)), dtype=np.int16)
        pixels[:, BAND * i : BAND * i + 10] = 1000
        ds.PixelData = pixels.tobytes()
        ds.InstanceNumber = n - i
        if windowed:
            ds.WindowCenter = -500
            ds.WindowWidth = 400
        ds.save_as(folder / f"slice{i:02d}.dcm", enforce_file_format=True)


@pytest.fixture
def teaching_lake(
    lk: lake.Lake, vault_dir: Path, samples: Path, tmp_path: Path
) -> lake.Lake:
    write_marked_series(tmp_path / "teach" / "plain", 9, windowed=False)
    write_marked_series(tmp_path / "teach" / "windowed", 7, windowed=True)
    lk.ingest([str(tmp_path / "teach")], vault=vault_dir, profile="teaching", scheduler="sync")
    lk.ingest([str(samples)], vault=vault_dir, profile="basic", scheduler="sync")
    create_cohort(lk, "teach", "SELECT SeriesInstanceUID FROM series "
                  "WHERE SeriesInstanceUID IN (SELECT SeriesInstanceUID FROM instances "
                  "WHERE profile = 'teaching')")
    create_cohort(lk, "mixed", "SELECT SeriesInstanceUID FROM series")
    return lk


def test_only_teaching_and_its_descendants_are_accepted() -> None:
    accepted = teaching_profiles()
    assert "teaching" in accepted
    assert not accepted & {"basic", "research"}


def test_weaker_profiles_are_refused_with_a_clear_message(
    teaching_lake: lake.Lake, tmp_path: Path
) -> None:
    weaker = teaching_lake.sql(
        "SELECT count(*) FROM instances WHERE profile <> 'teaching'"
    ).fetchall()[0][0]
    total = teaching_lake.sql("SELECT count(*) FROM instances").fetchall()[0][0]
    with pytest.raises(lake.ExportError) as caught:
        export_teaching(teaching_lake, "mixed", tmp_path / "out", scheduler="sync")
    message = str(caught.value)
    assert f"{weaker} of {total} instances" in message
    assert "profile(s) basic, weaker than 'teaching'" in message
    assert "profile='teaching'" in message and "skip_weaker=True" in message
    assert not (tmp_path / "out").exists()


def test_skip_weaker_leaves_them_out_and_lists_them(
    teaching_lake: lake.Lake, tmp_path: Path
) -> None:
    full = export_teaching(teaching_lake, "teach", tmp_path / "full", scheduler="sync")
    mixed = export_teaching(teaching_lake, "mixed", tmp_path / "mixed", skip_weaker=True,
                            scheduler="sync")
    weaker = {
        sop for sop, profile in teaching_lake.sql(
            "SELECT SOPInstanceUID, profile FROM instances").fetchall()
        if profile != "teaching"
    }
    listed = {s.instance for s in mixed.skipped if s.reason == "weaker_profile"}
    assert listed == weaker and len(weaker) == 4  # CT, MR (4 files, 1 instance), plan, eMRI
    assert mixed.files == full.files  # the same teaching instances, the same bytes


def test_zip_holds_dicom_previews_and_a_student_manifest(
    teaching_lake: lake.Lake, tmp_path: Path
) -> None:
    result = export_teaching(teaching_lake, "teach", tmp_path / "out", scheduler="sync")
    assert result.archive is not None and result.archive.name == "teach-teaching.zip"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "manifest.json", "teach-teaching.zip"
    ]
    with zipfile.ZipFile(result.archive) as archive:
        names = archive.namelist()
        members = {n: archive.read(n) for n in names}
    assert names == sorted(names)
    assert {"README.txt", "manifest.csv", "manifest.json"} <= set(names)
    images = [n for n in names if n.endswith(".dcm")]
    assert len(images) == 16
    assert all(n.startswith("case-001/study-") and "/series-01/image-" in n for n in images)

    # The DICOM files are the de-identified instances, as the DICOM export writes them.
    dicom = export_dicom(teaching_lake, "teach", tmp_path / "dicom", scheduler="sync")
    assert sorted(members[n] for n in images) == sorted(
        (tmp_path / "dicom" / f.path).read_bytes() for f in dicom.files
    )

    rows = list(csv.DictReader(io.StringIO(members["manifest.csv"].decode())))
    student = json.loads(members["manifest.json"])
    assert len(rows) == len(student["series"]) == 2
    assert {r["images"] for r in rows} == {"9", "7"}
    for row in rows:
        assert row["Modality"] == "CT" and row["case"] == "case-001"
        assert row["preview"] == row["folder"] + "/preview.png"
        preview = Image.open(io.BytesIO(members[row["preview"]]))
        assert preview.mode == "L" and preview.size == (128, 128)
        pixels = np.asarray(preview)
        middle = int(row["images"]) // 2  # the band of the middle slice along the normal
        bright = np.flatnonzero(pixels.mean(axis=0) > 250)
        assert bright.tolist() == list(range(BAND * middle, BAND * middle + 10)), row
        assert pixels.max() == 255 and pixels.min() == 0
    assert "2 series, 16 image file(s)" in members["README.txt"].decode()


def test_teaching_zip_is_reproducible_and_free_of_originals(
    teaching_lake: lake.Lake, tmp_path: Path
) -> None:
    one = export_teaching(teaching_lake, "teach", tmp_path / "one", scheduler="sync")
    two = export_teaching(teaching_lake, "teach", tmp_path / "two", scheduler="threads",
                          workers=2)
    assert one.archive is not None and two.archive is not None
    assert one.archive.read_bytes() == two.archive.read_bytes()
    assert (tmp_path / "one" / "manifest.json").read_bytes() == (
        tmp_path / "two" / "manifest.json").read_bytes()
    secrets = {s.encode() for s in identifying_values(tmp_path / "teach")}
    assert b"Teach^Ing" in secrets and b"PAT-0042" in secrets
    with zipfile.ZipFile(one.archive) as archive:
        for name in archive.namelist():
            data = archive.read(name)
            assert not [s for s in secrets if s in data or s.decode() in name], name


def test_preview_size_is_bounded(teaching_lake: lake.Lake, tmp_path: Path) -> None:
    result = export_teaching(teaching_lake, "teach", tmp_path / "out", preview_size=64,
                             scheduler="sync")
    assert result.archive is not None
    with zipfile.ZipFile(result.archive) as archive:
        previews = [n for n in archive.namelist() if n.endswith(".png")]
        sizes = {Image.open(io.BytesIO(archive.read(n))).size for n in previews}
    assert len(previews) == 2 and sizes == {(64, 64)}
