"""Every document object is valid per its IOD (dicom3tools' dciodvfy); dcm2pdf gets the PDF back."""

from __future__ import annotations

import io
import shutil
import subprocess
from pathlib import Path

import pytest
from pydicom import dcmread, examples
from pydicom.dataset import Dataset

from lake.deid import load_profile
from lake.documents import DocumentKind, Ocr, TextPolicy, clean_image, clean_pdf, clean_video
from lake.documents._iod import (
    encapsulated_pdf,
    multiframe_sc,
    study_modules,
    video_photographic,
    vl_photographic,
)
from tests.documents_corpus import pdf_report, photo, video

needs_dciodvfy = pytest.mark.skipif(shutil.which("dciodvfy") is None,
                                    reason="dicom3tools (dciodvfy) not installed")
needs_ocr = pytest.mark.skipif(shutil.which("tesseract") is None, reason="tesseract not installed")
POLICY = TextPolicy(load_profile("research").vocabulary, redact=True)


def _study() -> Dataset:
    return study_modules(examples.ct)


def _errors(ds: Dataset, path: Path) -> list[str]:
    ds.save_as(path, enforce_file_format=True)
    proc = subprocess.run(["dciodvfy", "-new", str(path)], capture_output=True, text=True,
                          timeout=120)
    return [line for line in (proc.stdout + proc.stderr).splitlines()
            if line.startswith("Error")]


def _pdf() -> tuple[Dataset, bytes]:
    cleaned = clean_pdf(pdf_report(["CT chest with contrast"]), POLICY, ocr=None)
    ds = encapsulated_pdf(_study(), cleaned.data, series_uid="2.25.1", sop_uid="2.25.2",
                          created=("20200312", "101112"))
    return ds, cleaned.data


@needs_dciodvfy
def test_encapsulated_pdf_is_valid_and_dcm2pdf_gets_it_back(tmp_path: Path) -> None:
    ds, pdf = _pdf()
    assert _errors(ds, tmp_path / "doc.dcm") == []
    if shutil.which("dcm2pdf") is None:
        pytest.skip("dcmtk (dcm2pdf) not installed")
    subprocess.run(["dcm2pdf", str(tmp_path / "doc.dcm"), str(tmp_path / "back.pdf")],
                   check=True, capture_output=True, timeout=60)
    assert (tmp_path / "back.pdf").read_bytes() == pdf


def test_encapsulated_pdf_without_dates_keeps_type_2_empty() -> None:
    cleaned = clean_pdf(pdf_report(["CT"]), POLICY, ocr=None)
    ds = encapsulated_pdf(_study(), cleaned.data, series_uid="2.25.1", sop_uid="2.25.2")
    assert ds.ContentDate == "" and ds.EncapsulatedDocumentLength == len(cleaned.data)
    assert ds.MIMETypeOfEncapsulatedDocument == "application/pdf" and ds.Modality == "DOC"


@needs_dciodvfy
@needs_ocr
@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "BMP"])
def test_vl_photographic_is_valid(tmp_path: Path, fmt: str) -> None:
    out = io.BytesIO()
    photo().save(out, fmt)
    image = clean_image(out.getvalue(), DocumentKind[fmt], POLICY, ocr=Ocr())
    ds = vl_photographic(_study(), image, series_uid="2.25.3", sop_uid="2.25.4")
    assert _errors(ds, tmp_path / "vl.dcm") == []
    back = dcmread(tmp_path / "vl.dcm")
    assert back.file_meta.TransferSyntaxUID == ("1.2.840.10008.1.2.4.50" if fmt == "JPEG"
                                                else "1.2.840.10008.1.2.1")
    assert back.pixel_array.shape == (480, 640, 3)


@needs_dciodvfy
@needs_ocr
def test_multiframe_scan_is_valid(tmp_path: Path) -> None:
    out = io.BytesIO()
    pages = [photo(seed=i).convert("L") for i in range(2)]
    pages[0].save(out, "TIFF", save_all=True, append_images=pages[1:])
    image = clean_image(out.getvalue(), DocumentKind.TIFF, POLICY, ocr=Ocr())
    ds = multiframe_sc(_study(), image, series_uid="2.25.5", sop_uid="2.25.6")
    assert _errors(ds, tmp_path / "sc.dcm") == []
    assert dcmread(tmp_path / "sc.dcm").pixel_array.shape == (2, 480, 640)


@needs_dciodvfy
@needs_ocr
def test_video_photographic_is_valid(tmp_path: Path) -> None:
    cleaned = clean_video(video(), POLICY, ocr=Ocr())
    ds = video_photographic(_study(), cleaned, series_uid="2.25.7", sop_uid="2.25.8")
    assert _errors(ds, tmp_path / "video.dcm") == []
    back = dcmread(tmp_path / "video.dcm")
    assert back.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.102"
    assert int(back.NumberOfFrames) == 20 and float(back.FrameTime) == pytest.approx(100.0)
