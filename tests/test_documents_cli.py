"""``lake attach`` and ``lake export documents`` as a user runs them, with planted identifiers."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import av
import pytest
from pydicom import dcmread

from lake.documents import pdf_words
from tests.documents_corpus import find_tokens, jpeg_with_metadata, pdf_report, video
from tests.series import write_ct_series
from tests.test_phi_proof import _table_texts

LAKE = str(Path(sys.executable).with_name("lake"))
TOKEN = "TKNCLIDOCZXQW"
pytestmark = pytest.mark.skipif(shutil.which("tesseract") is None,
                                reason="tesseract not installed")


def _run(env: dict[str, str], *args: str, ok: tuple[int, ...] = (0,)) -> str:
    proc = subprocess.run([LAKE, *args], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode in ok, (args, proc.returncode, proc.stderr[-2000:])
    return proc.stdout + proc.stderr


def test_attach_then_export_documents(tmp_path: Path) -> None:
    env = dict(os.environ, LAKE_ROOT=str(tmp_path / "lake"), LAKE_VAULT=str(tmp_path / "vault"))
    paths = write_ct_series(tmp_path / "in" / TOKEN, 2, patient_name=f"{TOKEN}^Heart",
                            patient_id=TOKEN)
    study = str(dcmread(paths[0]).StudyInstanceUID)
    logs = _run(env, "init")
    logs += _run(env, "ingest", "--profile", "research", "--scheduler", "sync", "-q",
                 str(tmp_path / "in"))
    docs = tmp_path / "docs" / TOKEN
    docs.mkdir(parents=True)
    (docs / f"{TOKEN}.pdf").write_bytes(pdf_report([f"Patient {TOKEN}", "CT chest"],
                                                    info={"Author": TOKEN}))
    (docs / "photo").write_bytes(jpeg_with_metadata(TOKEN))
    (docs / "clip.avi").write_bytes(video(metadata={"title": TOKEN}))
    (docs / "notes.txt").write_bytes(f"{TOKEN}\n".encode())
    logs += _run(env, "attach", study, *(str(p) for p in sorted(docs.iterdir())),
                 "--profile", "research", ok=(3,))
    assert "3 attached" in logs and "not_a_document: 1" in logs
    logs += _run(env, "attach", study, str(docs / "photo"), "--profile", "research")
    assert "1 already there" in logs
    refused = subprocess.run([LAKE, "attach", "1.2.3.999", str(docs / "photo")], env=env,
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode == 1 and "no instance of that study" in refused.stderr
    logs += refused.stdout + refused.stderr
    rows = json.loads(_run(env, "sql", "--format", "json",
                           "SELECT Modality, PatientID, StudyInstanceUID, document_mime_type "
                           "FROM instances ORDER BY Modality, document_mime_type"))
    assert sorted(r["Modality"] for r in rows) == ["CT", "CT", "DOC", "XC", "XC"]
    assert len({(r["PatientID"], r["StudyInstanceUID"]) for r in rows}) == 1
    sql = "SELECT SOPInstanceUID FROM instances"
    logs += _run(env, "export", "documents", "--sql", sql, "--out", str(tmp_path / "out"),
                 "--scheduler", "sync", "-q", ok=(4,))  # the CT slices are skipped
    listing = json.loads((tmp_path / "out" / "documents.json").read_text())
    assert sorted(e["mime_type"] for e in listing) == ["application/pdf", "image/jpeg",
                                                       "video/mp4"]
    files = {e["mime_type"]: (tmp_path / "out" / e["path"]).read_bytes() for e in listing}
    assert pdf_words(files["application/pdf"]) == ["Patient", "CT", "chest"]
    assert files["image/jpeg"].startswith(b"\xff\xd8")
    with av.open(io.BytesIO(files["video/mp4"])) as container:
        assert container.streams.video[0].frames == 20
    logs += _run(env, "export", "dicom", "--sql", sql, "--out", str(tmp_path / "dicom"),
                 "--scheduler", "sync", "-q")
    wrapped = [p for p in (tmp_path / "dicom").rglob("*.dcm")
               if dcmread(p, stop_before_pixels=True).Modality == "DOC"]
    assert len(wrapped) == 1
    if shutil.which("dcm2pdf"):
        subprocess.run(["dcm2pdf", str(wrapped[0]), str(tmp_path / "back.pdf")], check=True,
                       capture_output=True, timeout=60)
        assert (tmp_path / "back.pdf").read_bytes() == files["application/pdf"]
    everything = [p.read_bytes() + p.name.encode() for p in (tmp_path / "out").rglob("*")
                  if p.is_file()]
    everything += [p.read_bytes() + p.name.encode() for p in (tmp_path / "dicom").rglob("*")
                   if p.is_file()]
    everything += [data for _, data in _table_texts(tmp_path / "lake")]
    everything += [p.read_bytes() for p in (tmp_path / "lake" / "blobs").rglob("*")
                   if p.is_file()]
    assert find_tokens(b"\n".join(everything) + logs.encode(), {TOKEN}) == set()
