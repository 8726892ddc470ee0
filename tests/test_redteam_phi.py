"""Red-team findings (PHI escapes): regression tests of leaks fixed on main.

Each test reproduces one finding of a red-team review; it failed before the fix.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from pydicom import config, dcmread
from pydicom.data import get_testdata_file
from pydicom.dataelem import DataElement
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import UID

import lake
from lake.ingest import ingest

LAKE = str(Path(sys.executable).with_name("lake"))

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
OPHTHALMIC_8BIT = "1.2.840.10008.5.1.4.1.1.77.1.5.1"
COMMENT = "TKNJPEGCOMMENT1"
EXIF = "TKNJPEGEXIFAPP1"


def _testdata(name: str) -> str:
    path = get_testdata_file(name)
    assert isinstance(path, str), name
    return path


def _segment(marker: int, payload: bytes) -> bytes:
    return bytes([0xFF, marker]) + (len(payload) + 2).to_bytes(2, "big") + payload


def _jpeg_with_metadata(folder: Path, sop_class: str) -> Path:
    """A JPEG Baseline instance whose frame carries a COM and an EXIF APP1 segment.

    Modalities (fundus cameras, dental and ultrasound devices) write EXIF (capture date,
    operator, sometimes the patient) and comments inside the JPEG stream itself, i.e. inside
    the encapsulated Pixel Data, which the header profile never looks at.
    """
    ds = dcmread(_testdata("SC_rgb_jpeg_dcmtk.dcm"))
    frame = next(iter(generate_frames(ds.PixelData, number_of_frames=1)))
    assert frame[:2] == b"\xff\xd8"
    frame = (
        frame[:2]
        + _segment(0xE1, b"Exif\x00\x00" + EXIF.encode())
        + _segment(0xFE, COMMENT.encode())
        + frame[2:]
    )
    ds.PixelData = encapsulate([frame])
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = UID(sop_class)
    ds.Modality = "CT" if sop_class == CT_IMAGE else "OP"
    ds.PatientName, ds.PatientID = "Planted^Patient", "PLANTED-ID"
    ds.BurnedInAnnotation = "NO"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "jpeg.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.parametrize("sop_class", [CT_IMAGE, OPHTHALMIC_8BIT], ids=["ct", "ophthalmic"])
@pytest.mark.parametrize("profile", ["basic", "research", "teaching"])
def test_jpeg_comment_and_exif_inside_pixel_data_do_not_survive(
    profile: str, sop_class: str, tmp_path: Path
) -> None:
    """Red-team finding, now a regression test:
    JPEG APPn/COM segments inside encapsulated Pixel Data are stored verbatim.

    The pixel blob is the exact PixelData value, so a COM or EXIF segment written by the
    modality reaches the lake, every DICOM export, C-GET/C-MOVE and WADO-RS. Documents
    (VL Photographic) already get lake.documents._image.strip_jpeg; other image objects do not.
    """
    lk = lake.init(tmp_path / "lake", vault=tmp_path / "vault")
    _jpeg_with_metadata(tmp_path / "in", sop_class)
    ingest(
        lk, [str(tmp_path / "in")], lk.secret(tmp_path / "vault"), profile=profile, scheduler="sync"
    )
    lk.refresh()
    assert lk.sql("SELECT count(*) FROM instances").fetchall() == [(1,)]
    found = {
        token
        for path in (tmp_path / "lake").rglob("*")
        if path.is_file()
        for token in (COMMENT, EXIF)
        if token.encode() in path.read_bytes()
    }
    assert not found, f"planted JPEG segments stored in the lake under {profile}: {found}"


def test_quarantine_show_with_values_masked_prints_no_original_value(tmp_path: Path) -> None:
    """Red-team finding, now a regression test:
    ``lake quarantine show ID`` (values masked) prints an original value on stderr.

    show() parses the decrypted original with pydicom outside lake._capture.capture(), so
    pydicom's "Invalid value for VR UI: '<original>'" warning goes to the terminal.
    """
    ds = dcmread(_testdata("CT_small.dcm"))
    ds.BurnedInAnnotation = "YES"  # refused by the basic profile: quarantined and sealed
    ds["StudyInstanceUID"] = DataElement(
        0x0020000D, "UI", "TKNBADSTUDYUID^1.2", validation_mode=config.IGNORE
    )
    (tmp_path / "in").mkdir()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    (tmp_path / "in" / "burned.dcm").write_bytes(buffer.getvalue())
    env = dict(os.environ, LAKE_ROOT=str(tmp_path / "lake"), LAKE_VAULT=str(tmp_path / "vault"))
    subprocess.run([LAKE, "init"], env=env, check=True, capture_output=True)
    done = subprocess.run(
        [LAKE, "ingest", str(tmp_path / "in")], env=env, capture_output=True, text=True
    )
    assert done.returncode == 3, done.stderr
    listed = subprocess.run(
        [LAKE, "quarantine", "list", "--format", "json"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    import json

    ident = json.loads(listed.stdout)[0]["id"]
    shown = subprocess.run(
        [LAKE, "quarantine", "show", ident], env=env, capture_output=True, text=True
    )
    assert shown.returncode == 0, shown.stderr
    assert "masked" in shown.stdout
    assert "TKNBADSTUDYUID" not in shown.stdout + shown.stderr, shown.stderr


def _processed(tmp_path: Path, data: bytes) -> str:
    """Everything the lake would store for ``data`` (header JSON, header bytes, typed row)."""
    from lake.ingest import Accepted, Ingestor

    lk = lake.init(tmp_path / "lake", vault=tmp_path / "vault")
    outcome = Ingestor(lk, lk.secret(tmp_path / "vault"), "basic", source="redteam").process(data)
    assert isinstance(outcome, Accepted), outcome
    row = outcome.row
    return (
        str(row["header_json"])
        + bytes(row["header_dicom"]).decode("latin-1")
        + repr(sorted((k, v) for k, v in row.items() if isinstance(v, str)))
    )


@pytest.mark.parametrize(
    "tag",
    [b"\xfe\xff\x00\xe0", b"\xfe\xff\xdd\xe0"],
    ids=["item-FFFE,E000", "sequence-delimiter-FFFE,E0DD"],
)
def test_an_element_tagged_like_an_item_delimiter_is_not_kept(tag: bytes, tmp_path: Path) -> None:
    """Red-team finding, now a regression test:
    a data element whose tag was damaged into an item or delimiter tag
    (FFFE,E000 / FFFE,E0DD) keeps its original value through every profile.

    Found by STOWing tests/mutants.py mutants of the planted corpus (seed 9, the ``tag`` and
    ``shuffle`` operators): the value came back in /metadata (``"FFFEE000": {"vr": "LO",
    "Value": ["TKN..."]}``) and in the stored instance bytes. pydicom's dictionary names
    these tags (VR "NONE"), so lake.deid's ``unknown`` rule does not remove them and Table
    E.1-1 does not list them. Here the PatientName element's tag is damaged.
    """
    ds = dcmread(_testdata("CT_small.dcm"))
    ds.PatientName = "TKNPATIENTNAME1"
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    original = b"\x10\x00\x10\x00PN"
    assert original in buffer.getvalue()
    damaged = buffer.getvalue().replace(original, tag + b"PN", 1)
    assert "TKNPATIENTNAME1" not in _processed(tmp_path, damaged)


@pytest.mark.parametrize("value", ["1.2.TKNSOPCLASS01", "1.2.840.10008.5.1.4.1.1.2^TKNSMITH"])
def test_a_sop_class_uid_that_is_no_uid_is_not_stored_verbatim(value: str, tmp_path: Path) -> None:
    """Red-team finding, now a regression test:
    SOPClassUID (and MediaStorageSOPClassUID) are kept as they come, even when the
    value is not a UID at all (letters, a name after '^'); the instance is accepted and the
    text is stored in the catalog column, header_json and header_dicom, and echoed in STOW
    responses.

    lake.deid keeps UIDs "naming a class" unchanged; it should keep only well-formed UIDs
    there (refuse the instance, or key the value, when it is not one).
    """
    ds = dcmread(_testdata("CT_small.dcm"))
    ds["SOPClassUID"] = DataElement(0x00080016, "UI", value, validation_mode=config.IGNORE)
    ds.file_meta["MediaStorageSOPClassUID"] = DataElement(
        0x00020002, "UI", value, validation_mode=config.IGNORE
    )
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # pydicom warns of the very value planted
        warnings.simplefilter("ignore")
        ds.save_as(buffer, enforce_file_format=True)
    from lake.ingest import Accepted, Ingestor

    lk = lake.init(tmp_path / "lake", vault=tmp_path / "vault")
    outcome = Ingestor(lk, lk.secret(tmp_path / "vault"), "basic", source="redteam").process(
        buffer.getvalue()
    )
    if isinstance(outcome, Accepted):  # refusing the instance is a fine answer too
        stored = outcome.row["header_json"] + outcome.row["header_dicom"].decode("latin-1")
        assert "TKN" not in stored + str(outcome.row.get("SOPClassUID"))


def test_the_senders_implementation_version_name_is_not_kept(tmp_path: Path) -> None:
    """Red-team finding (low), now a regression test:
    the sender's file meta ImplementationVersionName (0002,0013) is stored
    verbatim in header_dicom. It names the sending software, but sites also put station or
    site names there, and nothing in the de-identified object needs the sender's value: the
    lake writes the object anew and could give its own (as it does for AE titles in 0002).
    """
    ds = dcmread(_testdata("CT_small.dcm"))
    ds.file_meta.ImplementationVersionName = "TKNSTATION01"
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    assert "TKNSTATION01" not in _processed(tmp_path, buffer.getvalue())
