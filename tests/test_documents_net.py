"""Documents over the DICOM network: wrapped objects arriving by C-STORE are cleaned, and
C-GET serves Encapsulated PDF, VL Photographic (JPEG) and Video Photographic (H.264) back."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread

import lake
from lake.documents import pdf_words
from lake.documents._iod import encapsulated_pdf, study_modules
from lake.ingest import ingest
from lake.net import DicomServer, ServerConfig
from tests.documents_corpus import find_tokens, jpeg_with_metadata, pdf_report, video
from tests.net_peers import dcmtk, require
from tests.series import write_ct_series

pytestmark = [
    pytest.mark.network,
    pytest.mark.skipif(shutil.which("tesseract") is None, reason="tesseract not installed"),
]
TOKEN = "TKNNETDOCQWRT"


@pytest.fixture
def server(lk: lake.Lake, vault_dir: Path) -> Iterator[DicomServer]:
    require("storescu", "getscu")
    srv = DicomServer(lk, lk.secret(vault_dir),
                      ServerConfig(port=0, commit_interval=0.2, commit_every=50,
                                   profile="research"))
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def test_store_and_get_documents(server: DicomServer, lk: lake.Lake, vault_dir: Path,
                                 tmp_path: Path) -> None:
    folder = tmp_path / "in" / "study"
    paths = write_ct_series(folder, 2, patient_name=f"{TOKEN}^John", patient_id=TOKEN)
    (folder / "photo.jpg").write_bytes(jpeg_with_metadata(TOKEN))
    (folder / "clip.avi").write_bytes(video(seconds=1, metadata={"title": TOKEN}))
    ingest(lk, [str(folder)], lk.secret(vault_dir), profile="research", scheduler="sync")
    # an Encapsulated PDF made elsewhere, sent identified by C-STORE
    header = dcmread(paths[0])
    wrapped = encapsulated_pdf(
        study_modules(header), pdf_report([f"Patient {TOKEN}", "CT chest"],
                                          info={"Author": TOKEN}),
        series_uid="1.2.826.0.1.3680043.10.1077.77.1", sop_uid="1.2.826.0.1.3680043.10.1077.77.2")
    wrapped.DocumentTitle = f"Report of {TOKEN}"
    sent = tmp_path / "send" / "doc.dcm"
    sent.parent.mkdir()
    wrapped.save_as(sent, enforce_file_format=True)
    result = dcmtk("storescu", "-v", "-aet", "STORESCU", "-aec", "LAKE", "127.0.0.1",
                   str(server.port), str(sent))
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    server.flush()
    lk.refresh()
    study = lk.sql("SELECT DISTINCT StudyInstanceUID FROM instances").fetchall()
    assert len(study) == 1
    logs = ""
    for name, prefer in (("got", "+x="), ("video", "+xn")):  # getscu accepts H.264 only with +xn
        (tmp_path / name).mkdir()
        result = dcmtk("getscu", "-S", prefer, "-aec", "LAKE", "-od", str(tmp_path / name),
                       "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study[0][0]}",
                       "127.0.0.1", str(server.port))
        assert result.returncode == 0, result.stderr
        logs += result.stdout + result.stderr
    out = tmp_path / "got"
    got = {dcmread(p).Modality: p for p in out.iterdir()}
    assert set(got) == {"CT", "DOC", "XC"} and len(list(out.iterdir())) == 4
    (clip,) = list((tmp_path / "video").iterdir())
    movie = dcmread(clip)
    assert movie.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.102"
    assert int(movie.NumberOfFrames) == 10
    photo = dcmread(got["XC"])  # getscu +x= accepts uncompressed only: the JPEG is decoded
    assert photo.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert photo.pixel_array.shape == (480, 640, 3)
    doc = dcmread(got["DOC"])
    pdf = bytes(doc.EncapsulatedDocument)[: int(doc.EncapsulatedDocumentLength)]
    assert pdf_words(pdf) == ["Patient", "CT", "chest"]
    if shutil.which("dcm2pdf"):
        subprocess.run(["dcm2pdf", str(got["DOC"]), str(tmp_path / "back.pdf")], check=True,
                       capture_output=True, timeout=60)
        assert (tmp_path / "back.pdf").read_bytes() == pdf
    served = b"".join(p.read_bytes() for p in [*out.iterdir(), clip])
    assert find_tokens(served + logs.encode(), {TOKEN}) == set()
