"""NIfTI export side by side with the Debian ``dcm2niix`` binary (v1.0.20220720).

The same DICOM files go through ``series_to_nifti`` and through ``dcm2niix``; shape, affine
(as written and after ``as_closest_canonical``), voxel arrays, data type, scaling, TR,
bval/bvec and the sidecar keys both write must agree. Inputs: series generated here and
pydicom's test files (compressed transfer syntaxes, enhanced multi-frame, RGB, rescale).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from lake.nifti import NiftiVolume, series_to_nifti, write_volume
from tests.nifti_synth import (
    CORONAL,
    PHI_SENTINELS,
    SAGITTAL,
    enhanced_from,
    synthetic_series,
)

DCM2NIIX = shutil.which("dcm2niix")
pytestmark = pytest.mark.skipif(DCM2NIIX is None, reason="dcm2niix is not installed")

#: Keys compared with dcm2niix's sidecar whenever both write them.
_COMPARED = (
    "Modality", "MagneticFieldStrength", "ImagingFrequency", "ManufacturersModelName",
    "PatientPosition", "SoftwareVersions", "MRAcquisitionType", "SeriesDescription",
    "ScanningSequence", "SequenceVariant", "SequenceName", "ImageType", "SeriesNumber",
    "SliceThickness", "SAR", "EchoTime", "RepetitionTime", "InversionTime", "FlipAngle",
    "PhaseEncodingDirection", "PhaseEncodingAxis", "ImageOrientationPatientDICOM",
    "InPlanePhaseEncodingDirectionDICOM", "ExposureTime", "XRayTubeCurrent", "XRayExposure",
    "ConvolutionKernel", "EchoNumber",
)


def _dcm2niix(datasets: list[pydicom.Dataset], folder: Path) -> list[Path]:
    source, out = folder / "in", folder / "out"
    source.mkdir()
    out.mkdir()
    for i, ds in enumerate(datasets):
        ds.save_as(source / f"{i:05d}.dcm", enforce_file_format=True)
    assert DCM2NIIX is not None
    subprocess.run(
        [DCM2NIIX, "-b", "y", "-z", "n", "-f", "x", "-o", str(out), str(source)],
        check=True, capture_output=True,
    )
    return sorted(out.glob("*.nii"))


def _load(path: Path) -> Any:
    return nib.load(path)


def _canonical(image: Any) -> Any:
    return nib.as_closest_canonical(image)  # type: ignore[no-untyped-call]


def _same_voxels(ours: Any, theirs: Any) -> None:
    mine, ref = np.asanyarray(ours.dataobj), np.asanyarray(theirs.dataobj)
    if mine.dtype.kind == "f":
        # dcm2niix rescales in float32, we in float64 before storing float32
        np.testing.assert_allclose(mine, ref, rtol=1e-5, atol=1e-3)
    else:
        np.testing.assert_array_equal(mine, ref)


def _compare(ours: NiftiVolume, ref_path: Path, *, compare_affine: bool = True) -> None:
    ref = _load(ref_path)
    assert ours.image.shape == ref.shape
    header: Any = ours.image.header
    assert header.get_data_dtype() == ref.get_data_dtype()
    ours_proxy: Any = ours.image.dataobj
    assert (ours_proxy.slope, ours_proxy.inter) == pytest.approx(
        (ref.dataobj.slope, ref.dataobj.inter)
    )
    _same_voxels(ours.image, ref)
    if compare_affine:
        np.testing.assert_allclose(ours.image.affine, ref.affine, atol=1e-3)
        a, b = _canonical(ours.image), _canonical(ref)
        np.testing.assert_allclose(a.affine, b.affine, atol=1e-3)
        _same_voxels(a, b)
    assert int(header["qform_code"]) == int(ref.header["qform_code"])
    assert int(header["sform_code"]) == int(ref.header["sform_code"])
    assert int(header["xyzt_units"]) == int(ref.header["xyzt_units"]) == 10
    assert float(header["pixdim"][4]) == pytest.approx(float(ref.header["pixdim"][4]))
    sidecar = json.loads(ref_path.with_suffix(".json").read_text())
    compared = 0
    for key in _COMPARED:
        if key in ours.sidecar and key in sidecar:
            compared += 1
            mine, theirs = ours.sidecar[key], sidecar[key]
            if key == "ImageType" and mine[-1:] == ["MAGNITUDE"] and "MAGNITUDE" not in theirs:
                mine = mine[:-1]  # appended since dcm2niix v1.0.2024; Debian's is from 2022
            numeric = all(isinstance(v, int | float) for v in np.ravel([mine, theirs]))
            if numeric and not isinstance(mine, bool):
                assert mine == pytest.approx(theirs, rel=1e-5, abs=1e-6), key
            else:
                assert mine == theirs, key
    assert compared >= 2
    for ext in ("bval", "bvec"):
        theirs_path = ref_path.with_suffix("." + ext)
        mine_array = getattr(ours, ext)
        assert theirs_path.exists() == (mine_array is not None), ext
        if mine_array is not None:
            theirs_array = np.loadtxt(theirs_path, ndmin=2)
            np.testing.assert_allclose(np.atleast_2d(mine_array), theirs_array, atol=1e-4)


_SYNTHETIC: dict[str, Callable[[], list[pydicom.Dataset]]] = {
    "ct-axial-shuffled": lambda: synthetic_series(
        n_slices=14, rows=32, cols=24, instance_numbers="shuffled", noise=5
    ),
    "mr-sagittal": lambda: synthetic_series(n_slices=10, rows=24, cols=20, modality="MR",
                                            orientation=SAGITTAL),
    "mr-coronal-signed": lambda: synthetic_series(n_slices=10, rows=24, cols=20, modality="MR",
                                                  orientation=CORONAL, signed=True),
    "mr-oblique": lambda: synthetic_series(
        n_slices=9, rows=16, cols=18, modality="MR",
        orientation=(0.9659258, 0.2588190, 0.0, -0.0669873, 0.25, -0.9659258),
    ),
    "mr-4d": lambda: synthetic_series(n_slices=8, rows=16, cols=16, modality="MR",
                                      n_volumes=5),
    "ct-rescale-per-slice": lambda: synthetic_series(n_slices=8, rows=16, cols=16,
                                                     rescale_per_slice=True),
    "mr-dwi": lambda: synthetic_series(
        n_slices=6, rows=16, cols=16, modality="MR", n_volumes=4,
        bvalues=[0, 1000, 1000, 2000],
        bvecs=[[0, 0, 0], [1, 0, 0], [0, 0.6, 0.8], [0.48, -0.6, 0.64]],
    ),
    "mr-dwi-sagittal": lambda: synthetic_series(
        n_slices=6, rows=16, cols=12, modality="MR", n_volumes=3, orientation=SAGITTAL,
        bvalues=[0, 800, 800], bvecs=[[0, 0, 0], [0.6, 0.8, 0], [0, 0.28, 0.96]],
    ),
    "mr-enhanced-3d-shuffled": lambda: [
        enhanced_from(
            s := synthetic_series(n_slices=9, rows=16, cols=12, modality="MR"),
            np.random.default_rng(4).permutation(len(s)).tolist(),
        )
    ],
}


@pytest.mark.parametrize("case", sorted(_SYNTHETIC))
def test_synthetic_series_match_dcm2niix(case: str, tmp_path: Path) -> None:
    series = _SYNTHETIC[case]()
    outputs = _dcm2niix(series, tmp_path)
    assert len(outputs) == 1
    volumes, refusals = series_to_nifti(series)
    assert refusals == [] and len(volumes) == 1
    _compare(volumes[0], outputs[0])


def test_volume_order_follows_acquisition_not_instance_number(tmp_path: Path) -> None:
    """dcm2niix orders volumes by InstanceNumber; we by acquisition number and time."""
    ordered = synthetic_series(n_slices=6, rows=8, cols=8, modality="MR", n_volumes=4)
    reversed_numbers = synthetic_series(
        n_slices=6, rows=8, cols=8, modality="MR", n_volumes=4, instance_numbers="reversed"
    )
    theirs = np.asanyarray(_load(_dcm2niix(reversed_numbers, tmp_path)[0]).dataobj)
    ours = np.asanyarray(series_to_nifti(reversed_numbers)[0][0].image.dataobj)
    truth = np.asanyarray(series_to_nifti(ordered)[0][0].image.dataobj)
    np.testing.assert_array_equal(ours, truth)
    np.testing.assert_array_equal(theirs, truth[..., ::-1])


def test_multi_echo_matches_dcm2niix(tmp_path: Path) -> None:
    series = synthetic_series(n_slices=6, rows=16, cols=16, modality="MR",
                              echo_times=[10.0, 20.0, 30.0])
    outputs = _dcm2niix(series, tmp_path)
    volumes, refusals = series_to_nifti(series)
    assert refusals == []
    names = ["x" + v.suffix for v in volumes]
    assert [p.stem for p in outputs] == names == ["x_e1", "x_e2", "x_e3"]
    for volume, output in zip(volumes, outputs, strict=True):
        _compare(volume, output)


@pytest.mark.parametrize(
    ("case", "flag", "reason"),
    [
        ("gap", "_Eq_", "missing_slices"),
        ("uneven", "_Eq_", "uneven_spacing"),
        ("tilt", "_Tilt_", "gantry_tilt"),
    ],
)
def test_what_we_refuse_dcm2niix_also_flags(
    case: str, flag: str, reason: str, tmp_path: Path
) -> None:
    series = {
        "gap": lambda: synthetic_series(n_slices=10, rows=16, cols=16, gap_after=4),
        "uneven": lambda: synthetic_series(rows=16, cols=16,
                                           positions=[0, 2, 4, 6, 9, 11, 13, 15]),
        "tilt": lambda: synthetic_series(n_slices=10, rows=16, cols=16, tilt_degrees=15),
    }[case]()
    outputs = _dcm2niix(series, tmp_path)
    # dcm2niix writes the raw stack plus a resampled/equalised variant and warns
    assert any(flag in p.name for p in outputs), [p.name for p in outputs]
    volumes, refusals = series_to_nifti(series)
    assert volumes == []
    assert [r.reason_code.value for r in refusals] == [reason]


_PYDICOM_FILES = [
    "CT_small.dcm", "MR_small.dcm", "MR_small_RLE.dcm", "MR_small_jp2klossless.dcm",
    "MR_small_bigendian.dcm", "MR2_UNCR.dcm", "693_UNCR.dcm", "eCT_Supplemental.dcm",
    "MR-SIEMENS-DICOM-WithOverlays.dcm", "SC_rgb.dcm", "SC_rgb_2frame.dcm", "US1_UNCR.dcm",
]


@pytest.mark.parametrize("name", _PYDICOM_FILES)
def test_pydicom_test_files_match_dcm2niix(name: str, tmp_path: Path) -> None:
    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"{name} is not available (pydicom-data not installed)")
    ds = pydicom.dcmread(path)
    outputs = _dcm2niix([ds], tmp_path)
    volumes, refusals = series_to_nifti([ds])
    assert refusals == [] and len(volumes) == 1
    image_outputs = [p for p in outputs if "_ROI" not in p.name]  # dcm2niix saves overlays
    assert len(image_outputs) == 1
    _compare(volumes[0], image_outputs[0])


def test_compressed_files_dcm2niix_cannot_read_still_convert() -> None:
    """JPEG-LS is not built into Debian's dcm2niix; compare with the uncompressed twin."""
    plain = get_testdata_file("MR_small.dcm")
    jpeg_ls = get_testdata_file("MR_small_jpeg_ls_lossless.dcm")
    assert plain is not None and jpeg_ls is not None
    a = series_to_nifti([pydicom.dcmread(plain)])[0][0]
    b = series_to_nifti([pydicom.dcmread(jpeg_ls)])[0][0]
    np.testing.assert_array_equal(np.asanyarray(a.image.dataobj), np.asanyarray(b.image.dataobj))


def test_dcm2niix_leaks_identity_that_we_drop(tmp_path: Path) -> None:
    series = synthetic_series(n_slices=4, rows=8, cols=8, modality="MR")
    outputs = _dcm2niix(series, tmp_path)
    theirs = outputs[0].with_suffix(".json").read_text()
    assert PHI_SENTINELS["InstitutionName"] in theirs  # the check below is not vacuous
    volumes, _ = series_to_nifti(series)
    written = write_volume(volumes[0], tmp_path / "ours", compress=True, level=6)
    for path in written:
        content = path.read_bytes()
        for value in PHI_SENTINELS.values():
            assert value.encode() not in content
