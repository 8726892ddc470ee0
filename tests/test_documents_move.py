"""C-MOVE of documents (issue 13.4 "served by C-GET/C-MOVE": test_documents_net covers C-GET):
a study holding CT slices, an Encapsulated PDF, a VL Photographic JPEG and an H.264 video is
moved to dcmtk's storescp, every instance arrives, cleaned, in its stored transfer syntax."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from pydicom import dcmread

import lake
from lake.documents import pdf_words
from lake.ingest import ingest
from lake.net import DicomServer, ServerConfig, parse_destination
from tests.documents_corpus import find_tokens, jpeg_with_metadata, pdf_report, video
from tests.net_peers import dcmtk, free_port, require, wait_port
from tests.series import write_ct_series

pytestmark = [
    pytest.mark.network,
    pytest.mark.skipif(shutil.which("tesseract") is None, reason="tesseract not installed"),
]
TOKEN = "TKNMOVEDOCZQ"


def test_move_documents_to_a_storage_scp(lk: lake.Lake, vault_dir: Path, tmp_path: Path) -> None:
    require("movescu", "storescp")
    folder = tmp_path / "in" / "study"
    write_ct_series(folder, 2, patient_name=f"{TOKEN}^John", patient_id=TOKEN)
    (folder / "report.pdf").write_bytes(pdf_report([f"Patient John {TOKEN}", "CT chest"],
                                                   info={"Author": TOKEN}))
    (folder / "photo.jpg").write_bytes(jpeg_with_metadata(TOKEN))
    (folder / "clip.avi").write_bytes(video(seconds=1, metadata={"title": TOKEN}))
    summary = ingest(lk, [str(folder)], lk.secret(vault_dir), profile="research",
                     scheduler="sync")
    assert summary.ingested == 5, summary
    lk.refresh()
    (study,) = lk.sql("SELECT DISTINCT StudyInstanceUID FROM instances").fetchall()[0]
    dest_port = free_port()
    out = tmp_path / "moved"
    out.mkdir()
    storescp = subprocess.Popen(
        ["storescp", "-aet", "DEST", "+xa", "-od", str(out), str(dest_port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_port(dest_port)
        config = ServerConfig(
            port=0, commit_interval=0.2,
            move_destinations={"DEST": parse_destination(f"DEST=127.0.0.1:{dest_port}")},
        )
        with DicomServer(lk, lk.secret(vault_dir), config) as server:
            result = dcmtk("movescu", "-d", "-S", "-aec", "LAKE", "-aem", "DEST", "-k",
                           "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}",
                           "127.0.0.1", str(server.port))
    finally:
        storescp.terminate()
        storescp.wait(timeout=30)
    assert result.returncode == 0, result.stderr
    final = result.stderr.rsplit("Received Final Move Response", 1)[1]
    assert "Completed Suboperations       : 5" in final, final
    assert "Failed Suboperations          : 0" in final, final
    moved = {p: dcmread(p) for p in out.iterdir()}
    by_syntax = sorted((str(ds.Modality), str(ds.file_meta.TransferSyntaxUID))
                       for ds in moved.values())
    assert by_syntax == [("CT", "1.2.840.10008.1.2.1"), ("CT", "1.2.840.10008.1.2.1"),
                         ("DOC", "1.2.840.10008.1.2.1"),
                         ("XC", "1.2.840.10008.1.2.4.102"),  # the video, as stored (H.264)
                         ("XC", "1.2.840.10008.1.2.4.50")]  # the photograph, JPEG as stored
    (doc,) = [ds for ds in moved.values() if ds.Modality == "DOC"]
    pdf = bytes(doc.EncapsulatedDocument)[: int(doc.EncapsulatedDocumentLength)]
    assert pdf_words(pdf) == ["Patient", "CT", "chest"]
    assert find_tokens(b"".join(p.read_bytes() for p in moved) + result.stderr.encode(),
                       {TOKEN}) == set()
