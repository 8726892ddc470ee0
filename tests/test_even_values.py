"""Values received with an odd length are stored, exported and served even (PS3.5 7.1.1).

pydicom copies a raw value as it is, so before session 26 a Modality received as ``CTX``
(3 bytes) was stored as 3 bytes, and every DICOM export and WADO-RS instance of it was
non-conformant: dcmtk warns ``Length of element (0008,0060) is odd`` and dciodvfy reports a
bad value length. The lake's encoder pads such values as the standard says (space for text,
NUL for UIDs, OB and UN), at any depth, also inside sequences it copies unread. Readers
strip the padding: pydicom reads the values received, and the DICOM JSON the lake keys
instances by (``identity_sha256``) is unchanged, so the same object stays a duplicate.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import warnings
from pathlib import Path

import pytest
from pydicom import dcmread, dcmwrite
from pydicom.data import get_testdata_file
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

import lake
from lake._capture import capture
from lake.export import create_cohort, export_dicom
from lake.ingest._encode import encode_part10, header_json

# tag, VR, value received (odd), the value pydicom reads back
ODD = (
    (0x00080060, "CS", b"CTX", "CTX"),  # Modality
    (0x00081030, "LO", b"Head study", "Head study"),  # StudyDescription, 10: even (control)
    (0x0008103E, "LO", b"AX 5mm", "AX 5mm"),  # SeriesDescription, 6: even (control)
    (0x00180050, "DS", b"1.5", "1.5"),  # SliceThickness
    (0x00200052, "UI", b"1.2.3", "1.2.3"),  # FrameOfReferenceUID
    (0x00181030, "LO", b"ABDOMEN", "ABDOMEN"),  # ProtocolName
)
NESTED = (0x00081150, "UI", b"1.2.840.10008.5.1.4.1.1.2.1", "1.2.840.10008.5.1.4.1.1.2.1")


def _raw(tag: int, vr: str, value: bytes, little: bool) -> RawDataElement:
    return RawDataElement(BaseTag(tag), vr, len(value), value, 0, False, little)


def _received(folder: Path, syntax: str) -> Path:
    """CT_small in ``syntax`` with odd-length values, also inside a sequence pydicom leaves
    unread, written as pydicom writes what it received (raw values as they are)."""
    ds = dcmread(get_testdata_file("CT_small.dcm"))
    ds.file_meta.TransferSyntaxUID = syntax
    item = Dataset()
    item.ReferencedSOPInstanceUID = "1.2.3.4"
    ds.ReferencedImageSequence = [item]
    even = io.BytesIO()
    with capture():
        dcmwrite(even, ds, enforce_file_format=True)  # converted: every value even
    ds = dcmread(io.BytesIO(even.getvalue()))  # raw again, in syntax
    little = syntax != ExplicitVRBigEndian
    for tag, vr, value, _ in ODD:
        ds._dict[BaseTag(tag)] = _raw(tag, vr, value, little)
    ref = ds.ReferencedImageSequence[0]  # read: its element is raw, in syntax
    ref._dict[BaseTag(NESTED[0])] = _raw(NESTED[0], NESTED[1], NESTED[2], little)
    path = folder / f"odd-{syntax}.dcm"
    folder.mkdir(parents=True, exist_ok=True)
    with capture():
        dcmwrite(path, ds, enforce_file_format=True)
    return path


def _odd_lengths(path: Path) -> list[str]:
    """The elements dcmtk's dcmdump calls odd (it warns once per element)."""
    run = subprocess.run(["dcmdump", str(path)], capture_output=True, text=True,
                         errors="replace", timeout=60, check=False)
    assert run.returncode == 0, run.stderr
    return [line for line in (run.stdout + run.stderr).splitlines() if "is odd" in line]


def _dcmtk() -> None:
    if shutil.which("dcmdump") is None:
        pytest.skip("dcmtk's dcmdump is not installed")


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian,
                                    ExplicitVRBigEndian])
def test_odd_values_are_written_even_and_read_back_the_same(syntax: str, tmp_path: Path
                                                            ) -> None:
    _dcmtk()
    source = _received(tmp_path / "in", syntax)
    received = " ".join(_odd_lengths(source))  # the test's input is odd where it says
    for tag in (0x00080060, 0x00180050, 0x00200052, 0x00181030, NESTED[0]):
        assert f"({tag >> 16:04x},{tag & 0xFFFF:04x}) is odd" in received, received
    with capture():
        original = dcmread(source)
        written = tmp_path / "written.dcm"
        written.write_bytes(encode_part10(dcmread(source)))
        assert _odd_lengths(written) == []  # before s26: the same five warnings
        back = dcmread(written)
        for tag, _, _, value in ODD:
            assert back[tag].value == value
        assert back.ReferencedImageSequence[0][NESTED[0]].value == NESTED[3]
        # the DICOM JSON (the instance's identity in the lake) does not see the padding
        assert header_json(back, 4096, _uri) == header_json(original, 4096, _uri)


def test_exports_of_odd_values_are_even(lk: lake.Lake, vault_dir: Path, tmp_path: Path) -> None:
    """Ingested, then exported as DICOM (the stored header, as WADO-RS and C-GET serve it)."""
    _dcmtk()
    source = _received(tmp_path / "in", ExplicitVRLittleEndian)
    twin = tmp_path / "twin" / "even.dcm"  # the same object, its values padded by pydicom
    twin.parent.mkdir()
    with capture():
        ds = dcmread(source)
        for tag, _, _, value in ODD:
            ds[tag].value = value
        ds.ReferencedImageSequence[0][NESTED[0]].value = NESTED[3]
        ds.save_as(twin, enforce_file_format=True)
    assert _odd_lengths(twin) == []
    first = lk.ingest([str(source)], vault=vault_dir, scheduler="sync")
    again = lk.ingest([str(twin)], vault=vault_dir, scheduler="sync")
    assert (first.ingested, again.duplicates, again.conflicts) == (1, 1, 0)
    cohort = create_cohort(lk, "odd", "SELECT SeriesInstanceUID FROM series")
    result = export_dicom(lk, cohort, tmp_path / "out", scheduler="sync")
    exported = [tmp_path / "out" / f.path for f in result.files if f.path.endswith(".dcm")]
    assert len(exported) == 1
    assert _odd_lengths(exported[0]) == []  # before s26: SliceThickness stayed odd
    with warnings.catch_warnings(), capture():
        back = dcmread(exported[0])
    assert back.Modality == "CTX"
    if shutil.which("dciodvfy"):
        run = subprocess.run(["dciodvfy", str(exported[0])], capture_output=True, text=True,
                             errors="replace", timeout=60, check=False)
        assert "not a multiple of 2" not in run.stdout + run.stderr


def _uri(_elem: object) -> str:
    return "urn:bulk"


def test_wado_rs_serves_odd_values_even(tmp_path: Path) -> None:
    """WADO-RS serves the stored header too (lake serve web, a steward's token)."""
    _dcmtk()
    from tests.web_peers import build_web_lake, parts_of, serving

    web = build_web_lake(tmp_path / "web", slices=1)
    source = _received(tmp_path / "in", ExplicitVRLittleEndian)
    assert web.lake.ingest([str(source)], vault=web.vault, scheduler="sync").ingested == 1
    web.lake.refresh()
    ((study, series, sop),) = web.lake.sql(
        "SELECT StudyInstanceUID, SeriesInstanceUID, SOPInstanceUID FROM instances "
        "WHERE Modality = 'CTX'").fetchall()
    with serving(web) as (_, http):
        response = http.get(
            f"/dicomweb/studies/{study}/series/{series}/instances/{sop}",
            headers={"Authorization": f"Bearer {web.tokens['steward']}",
                     "Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'})
    assert response.status_code == 200, response.text[:300]
    ((_, body),) = parts_of(response)
    served = tmp_path / "served.dcm"
    served.write_bytes(body)
    assert _odd_lengths(served) == []  # before s26: SliceThickness stayed odd
    with capture():
        assert dcmread(served).Modality == "CTX"
