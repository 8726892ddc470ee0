"""NIfTI export checked against dcm2niix on the dcm_qa validation set (Siemens mosaics).

dcm_qa (``../shared/data/dcm_qa``) holds Siemens mosaics in axial, coronal and sagittal
orientations with ascending, descending and interleaved slice orders, multiband fMRI in
lossless JPEG and JPEG 2000, and Prisma EPI with varied readout parameters, plus the NIfTI
and JSON that dcm2niix v1.0.20241127 wrote from them (``Ref/``, named ``%p_%s``:
ProtocolName_SeriesNumber, see its batch.sh). The Debian ``dcm2niix`` (v1.0.20220720) is
also run on the same input, side by side, for the keys newer releases embellish.
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom
import pytest

from lake.nifti import FORBIDDEN_KEYS, derive_acquisition, series_to_nifti, write_volume
from tests.conftest import SHARED_DATA

DCM_QA = SHARED_DATA / "dcm_qa"

pytestmark = [
    pytest.mark.vendor,
    pytest.mark.skipif(not (DCM_QA / "Ref").is_dir(), reason="../shared/data/dcm_qa is absent"),
]

#: Keys whose values newer dcm2niix releases format or extend differently; compared below
#: with their own rule instead of equality with Ref.
_SPECIAL = {"ImageType", "AcquisitionTime", "SliceTiming", "ConversionSoftware"}


def _ref_names() -> list[str]:
    if not (DCM_QA / "Ref").is_dir():
        return []
    return sorted(p.stem for p in (DCM_QA / "Ref").glob("*.nii"))


@pytest.fixture(scope="module")
def qa_series() -> dict[str, list[pydicom.Dataset]]:
    series: dict[str, list[pydicom.Dataset]] = {}
    for path in sorted((DCM_QA / "In").rglob("*")):
        if not path.is_file() or path.suffix.lower() in {".nii", ".txt", ".pdf", ".xlsx", ".sr"}:
            continue
        ds = pydicom.dcmread(path)
        if "PixelData" not in ds:
            continue
        name = f"{ds.ProtocolName}_{ds.SeriesNumber}"
        series.setdefault(name, []).append(ds)
    return series


@pytest.fixture(scope="module")
def debian_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    exe = shutil.which("dcm2niix")
    if exe is None:
        pytest.skip("dcm2niix is not installed")
    out = tmp_path_factory.mktemp("dcm2niix")
    subprocess.run(
        [exe, "-b", "y", "-z", "n", "-f", "%p_%s", "-o", str(out), str(DCM_QA / "In")],
        check=True,
        capture_output=True,
    )
    return out


def _load(path: Path) -> Any:
    return nib.load(path)


def _canonical(image: Any) -> Any:
    return nib.as_closest_canonical(image)  # type: ignore[no-untyped-call]


def _seconds(clock: str) -> float:
    hours, minutes, seconds = clock.split(":")
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def _same(ours: Any, ref: Any) -> bool:
    if isinstance(ours, list) and isinstance(ref, list):
        return len(ours) == len(ref) and all(_same(a, b) for a, b in zip(ours, ref, strict=True))
    if isinstance(ours, bool) or isinstance(ref, bool):
        return bool(ours == ref)
    if isinstance(ours, int | float) and isinstance(ref, int | float):
        # dcm2niix prints numbers with %g (6 significant digits) or full precision
        return bool(np.isclose(ours, ref, rtol=1e-5, atol=1e-12))
    return bool(ours == ref)


@pytest.mark.parametrize("name", _ref_names())
def test_matches_dcm2niix_reference(
    name: str, qa_series: dict[str, list[pydicom.Dataset]], debian_out: Path
) -> None:
    if name not in qa_series:
        pytest.skip(f"dcm_qa has a reference but no input DICOM for {name}")
    datasets = qa_series[name]
    volumes, refusals = series_to_nifti(list(reversed(datasets)))
    assert refusals == []
    assert len(volumes) == 1
    ours = volumes[0]
    ref = _load(DCM_QA / "Ref" / f"{name}.nii")

    # geometry and voxels: exactly dcm2niix's voxel order, hence also after reorientation
    assert ours.image.shape == ref.shape
    np.testing.assert_allclose(ours.image.affine, ref.affine, atol=1e-3)
    ours_c, ref_c = _canonical(ours.image), _canonical(ref)
    np.testing.assert_allclose(ours_c.affine, ref_c.affine, atol=1e-3)
    np.testing.assert_array_equal(np.asanyarray(ours_c.dataobj), np.asanyarray(ref_c.dataobj))
    header: Any = ours.image.header
    assert header.get_data_dtype() == ref.get_data_dtype()
    assert int(header["qform_code"]) == 1 and int(header["sform_code"]) == 1
    assert int(header["xyzt_units"]) == 10 == int(ref.header["xyzt_units"])
    assert float(header["pixdim"][4]) == pytest.approx(float(ref.header["pixdim"][4]))
    assert int(header["dim_info"]) == int(ref.header["dim_info"])

    # sidecar: every key we write is one dcm2niix writes, with the same value
    ref_json = json.loads((DCM_QA / "Ref" / f"{name}.json").read_text())
    debian_json = json.loads((debian_out / f"{name}.json").read_text())
    assert not FORBIDDEN_KEYS & set(ours.sidecar)
    assert {"InstitutionName", "DeviceSerialNumber", "StationName"} <= set(ref_json)
    for key, value in ours.sidecar.items():
        if key in _SPECIAL:
            continue
        assert key in ref_json, key
        assert _same(value, ref_json[key]), (key, value, ref_json[key])
    for key in ("EchoTime", "RepetitionTime", "FlipAngle", "PhaseEncodingDirection",
                "SliceTiming", "TotalReadoutTime", "EffectiveEchoSpacing", "ImageType",
                "SeriesNumber", "Manufacturer", "MagneticFieldStrength", "SliceThickness"):
        assert key in ours.sidecar, key
    # Ref writes unpadded seconds ("15:35:9.335000"); the instant must be the same
    assert _seconds(ours.sidecar["AcquisitionTime"]) == pytest.approx(
        _seconds(ref_json["AcquisitionTime"]), abs=1e-6
    )
    # releases since 2024 append MAGNITUDE, as we do; the Debian release (2022) does not
    assert ours.sidecar["ImageType"] == ref_json["ImageType"]
    assert ours.sidecar["ImageType"][:-1] == debian_json["ImageType"]
    # Siemens reports slice times per volume with 2.5 ms jitter; Ref took volume 2 once
    np.testing.assert_allclose(ours.sidecar["SliceTiming"], ref_json["SliceTiming"], atol=0.0026)
    np.testing.assert_allclose(
        ours.sidecar["SliceTiming"], debian_json["SliceTiming"], atol=1e-6
    )


def test_written_files_load_back_identically(
    qa_series: dict[str, list[pydicom.Dataset]], tmp_path: Path
) -> None:
    volumes, _ = series_to_nifti(qa_series["fMRI_MB_int_26"])  # JPEG 2000 mosaics
    ref = _load(DCM_QA / "Ref" / "fMRI_MB_int_26.nii")
    for compress in (False, True):
        paths = write_volume(volumes[0], tmp_path / f"mb_{compress}", compress=compress, level=6)
        back = _load(paths[0])
        np.testing.assert_array_equal(np.asanyarray(back.dataobj), np.asanyarray(ref.dataobj))
        np.testing.assert_allclose(back.affine, ref.affine, atol=1e-3)
        assert json.loads(paths[1].read_text())["EchoTime"] == pytest.approx(0.034)
    uncompressed = (tmp_path / "mb_False.nii").read_bytes()
    ref_bytes = (DCM_QA / "Ref" / "fMRI_MB_int_26.nii").read_bytes()
    # same voxel bytes as dcm2niix, after the 352-byte header
    assert uncompressed[352:] == ref_bytes[352:]


def test_mosaic_without_csa_header_converts_from_derived_parameters(
    qa_series: dict[str, list[pydicom.Dataset]],
) -> None:
    """De-identification drops the CSA header: the tile layout derived from the original
    header beforehand is all the converter needs; without it the mosaic is refused."""
    originals = qa_series["ax_asc_35sl_6"]
    derived = [derive_acquisition(ds) for ds in originals]
    stripped = []
    for ds in originals:
        copied = copy.deepcopy(ds)
        copied.remove_private_tags()
        stripped.append(copied)
    volumes, refusals = series_to_nifti(stripped, [{} for _ in stripped])
    assert volumes == []
    assert [r.reason_code.value for r in refusals] == ["mosaic_without_layout"]
    assert series_to_nifti(stripped)[1] == refusals  # nothing left to derive from
    (volume,), refusals = series_to_nifti(stripped, derived)
    (reference,), _ = series_to_nifti(originals)
    assert refusals == []
    assert volume.sidecar == reference.sidecar
    assert np.array_equal(np.asanyarray(volume.image.dataobj),
                          np.asanyarray(reference.image.dataobj))


def test_mosaic_volume_order_ignores_file_order(
    qa_series: dict[str, list[pydicom.Dataset]],
) -> None:
    datasets = qa_series["fMRI_MB_asc_25"]
    forward = series_to_nifti(datasets)[0][0]
    backward = series_to_nifti(list(reversed(datasets)))[0][0]
    np.testing.assert_array_equal(
        np.asanyarray(forward.image.dataobj), np.asanyarray(backward.image.dataobj)
    )
    assert forward.sidecar == backward.sidecar
