"""Generating real DICOM series for tests: pydicom's bundled files cloned with new identities."""

from __future__ import annotations

import copy
from pathlib import Path

from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

__all__ = ["ct_series", "write_ct_series"]


def ct_series(
    n: int = 10,
    *,
    patient_id: str = "PAT-0001",
    patient_name: str = "Doe^Jane",
    study_uid: str | None = None,
    spacing: float = 2.5,
) -> list[Dataset]:
    """``n`` axial CT slices cloned from pydicom's CT_small.dcm, one new study and series."""
    template = dcmread(get_testdata_file("CT_small.dcm"))
    study = study_uid or generate_uid()
    series = generate_uid()
    frame = generate_uid()
    out = []
    for i in range(n):
        ds = copy.deepcopy(template)
        ds.PatientID = patient_id
        ds.PatientName = patient_name
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = series
        ds.FrameOfReferenceUID = frame
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = i + 1
        ds.ImagePositionPatient = [-158.0, -179.0, -75.0 + i * spacing]
        ds.SliceLocation = -75.0 + i * spacing
        pixels = bytearray(ds.PixelData)
        pixels[0:2] = (i % 65536).to_bytes(2, "little")  # distinct pixel data per slice
        ds.PixelData = bytes(pixels)
        out.append(ds)
    return out


def write_ct_series(folder: Path, n: int = 10, **kwargs: object) -> list[Path]:
    """Write :func:`ct_series` to ``folder``; returns the file paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, ds in enumerate(ct_series(n, **kwargs)):  # type: ignore[arg-type]
        path = folder / f"slice{i:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
