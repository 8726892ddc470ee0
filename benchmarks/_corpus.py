"""Generated benchmark corpora: real files cloned with new UIDs (and a changed pixel per file)."""

from __future__ import annotations

import copy
from pathlib import Path

from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

__all__ = ["make_corpus", "make_phi_corpus"]

TEMPLATES = ("CT_small.dcm", "MR_small.dcm")


def make_corpus(folder: Path, n: int, *, patients: int = 20, series_size: int = 50) -> list[Path]:
    """Write ``n`` instances to ``folder`` (reused when already complete).

    Instances are grouped into series of ``series_size`` and spread over ``patients``
    patients; every instance has its own SOPInstanceUID and slightly different pixels.
    """
    folder.mkdir(parents=True, exist_ok=True)
    existing = sorted(folder.glob("*.dcm"))
    if len(existing) == n:
        return existing
    for path in existing:
        path.unlink()
    templates = [dcmread(get_testdata_file(name)) for name in TEMPLATES]  # type: ignore[arg-type]
    paths: list[Path] = []
    study = series = ""
    for i in range(n):
        if i % series_size == 0:
            patient = (i // series_size) % patients
            study, series = generate_uid(), generate_uid()
        template = templates[(i // series_size) % len(templates)]
        ds = copy.deepcopy(template)
        ds.PatientID = f"BENCH{patient:05d}"
        ds.PatientName = f"Bench^Patient{patient:05d}"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = i % series_size + 1
        pixels = bytearray(ds.PixelData)
        pixels[0:4] = i.to_bytes(4, "little")
        ds.PixelData = bytes(pixels)
        path = folder / f"{i:06d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def make_phi_corpus(folder: Path, n: int) -> list[Path]:
    """At least ``n`` PHI-rich files (tests/deid_corpus.py: CT with sequences and private
    groups, SR, PDF, ultrasound; six files per patient), reused when already complete."""
    from tests.deid_corpus import write_corpus

    patients = -(-n // 6)
    stamp = folder / f".complete-{patients}"
    if not stamp.exists():
        if folder.exists():
            import shutil

            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        write_corpus(folder, patients)
        stamp.touch()
    return sorted(p for p in folder.rglob("*.dcm"))
