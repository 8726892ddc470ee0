"""The planted-identifier proof, for documents: identifiers in PDF text, metadata, annotations and
attachments, EXIF fields, AVI INFO chunks, and burned into a picture and a video - none of them
in the lake, its decoded tables, the DICOM and documents exports, or the command output.

Bytes are searched everywhere; PDFs are also read (PDFium's text and every decoded stream),
and every exported picture and video frame is read by OCR for the burned-in tokens.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import av
import pikepdf
import pytest
from PIL import Image
from pydicom import dcmread

from lake.documents import Ocr, pdf_words
from tests.deid_corpus import expected_absent, write_corpus
from tests.documents_corpus import find_tokens
from tests.test_phi_proof import _table_texts

LAKE = str(Path(sys.executable).with_name("lake"))
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("tesseract") is None, reason="tesseract not installed"),
]


def _run(env: dict[str, str], *args: str, ok: tuple[int, ...] = (0,)) -> str:
    proc = subprocess.run([LAKE, *args], env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode in ok, (args, proc.returncode, proc.stderr[-3000:])
    return proc.stdout + proc.stderr


def _pdf_texts(data: bytes) -> bytes:
    """What a reader finds in a PDF: its text layer and every decoded stream."""
    parts = [" ".join(pdf_words(data)).encode()]
    with pikepdf.open(io.BytesIO(data)) as pdf:
        parts.extend(bytes(o.read_bytes()) for o in pdf.objects if isinstance(o, pikepdf.Stream))
    return b"\n".join(parts)


def _pictures(root: Path) -> list[Image.Image]:
    """Every exported picture and some frames of every exported video."""
    images: list[Image.Image] = []
    for path in sorted(root.rglob("*")):
        if path.suffix in (".jpg", ".png", ".tif"):
            images.append(Image.open(path).convert("RGB"))
        elif path.suffix == ".mp4":
            with av.open(str(path)) as container:
                for i, frame in enumerate(container.decode(video=0)):
                    if i % 5 == 0:
                        images.append(frame.to_image())
    return images


@pytest.mark.parametrize("profile", ["basic", "research", "teaching"])
def test_no_planted_token_in_documents(profile: str, tmp_path: Path) -> None:
    tokens = write_corpus(tmp_path / "corpus", 1, documents=True)
    readable = {t for t in tokens if t.startswith("TKN")}  # what OCR could read back
    env = dict(os.environ, LAKE_ROOT=str(tmp_path / "lake"), LAKE_VAULT=str(tmp_path / "vault"))
    logs = _run(env, "init")
    logs += _run(env, "ingest", "--profile", profile, "--scheduler", "sync",
                 str(tmp_path / "corpus"), ok=(0, 3))
    logs += _run(env, "sql", "SELECT * FROM quarantine", "-f", "csv")
    logs += _run(env, "sql", "SELECT Modality, SOPClassUID, document_mime_type FROM instances",
                 "-f", "csv")
    every = "SELECT SOPInstanceUID FROM instances"
    exports = tmp_path / "exports"
    logs += _run(env, "export", "dicom", "--sql", every, "--out", str(exports / "dicom"),
                 "--scheduler", "sync", "-q", ok=(0, 4))
    logs += _run(env, "export", "documents", "--sql", every, "--out",
                 str(exports / "documents"), "--scheduler", "sync", "-q", ok=(0, 4))
    absent = expected_absent(tokens, retains_device_identity=profile == "research")
    texts: list[bytes] = [logs.encode()]
    texts += [data for _, data in _table_texts(tmp_path / "lake")]
    for path in (tmp_path / "lake").rglob("*"):
        if path.is_file() and "quarantine" not in path.parts:
            texts.append(path.read_bytes())
    for path in exports.rglob("*"):
        if not path.is_file():
            continue
        data = path.read_bytes()
        texts.append(data + path.name.encode())
        if path.suffix == ".pdf":
            texts.append(_pdf_texts(data))
        if path.suffix == ".dcm":
            ds = dcmread(path)
            if "EncapsulatedDocument" in ds:
                texts.append(_pdf_texts(bytes(ds.EncapsulatedDocument)
                                        [: int(ds.EncapsulatedDocumentLength)]))
    assert find_tokens(b"\n".join(texts), absent) == set()
    read = " ".join(w.text for image in _pictures(exports / "documents")
                    for w in Ocr(min_confidence=0).words(image)).upper()
    assert not any(t[3:9] in read for t in readable), read


def test_documents_really_were_ingested(tmp_path: Path) -> None:
    """A control: under research the clean documents land (so the proof above is not empty)."""
    write_corpus(tmp_path / "corpus", 1, documents=True)
    env = dict(os.environ, LAKE_ROOT=str(tmp_path / "lake"), LAKE_VAULT=str(tmp_path / "vault"))
    _run(env, "init")
    _run(env, "ingest", "--profile", "research", "--scheduler", "sync",
         str(tmp_path / "corpus"), ok=(0, 3))
    out = _run(env, "sql", "SELECT document_mime_type, count(*) FROM instances "
               "WHERE document_mime_type IS NOT NULL GROUP BY ALL ORDER BY 1", "-f", "csv")
    out = out.replace('"', "")
    assert "application/pdf,2" in out and "image/jpeg,1" in out and "video/mp4,1" in out
    reasons = _run(env, "sql", "SELECT reason, count(*) FROM quarantine GROUP BY ALL ORDER BY 1",
                   "-f", "csv")
    assert "burned_in_text,2" in reasons.replace('"', "")
