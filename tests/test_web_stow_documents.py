"""STOW-RS of an already wrapped document (issue 13.1): an identified Encapsulated PDF stored
over DICOMweb lands with its report cleaned - text redacted, Info and Document Title cleaned,
in its study's pseudonymous modules - not refused and not replaced by the engine's dummy.

(The planted corpus STOWed in tests/test_web_stow.py proves no token comes back; this proves
what lands.)
"""

from __future__ import annotations

import io
from pathlib import Path

from pydicom import dcmread

import lake
from lake.access import create_token
from lake.documents import pdf_words
from lake.documents._iod import encapsulated_pdf, study_modules
from tests.documents_corpus import find_tokens, pdf_report
from tests.series import write_ct_series
from tests.web_peers import WebLake, serving

TOKEN = "TKNSTOWDOCQX"
MULTIPART = 'multipart/related; type="application/dicom"; boundary=XyZ'


def test_a_stowed_encapsulated_pdf_lands_cleaned(tmp_path: Path) -> None:
    lk = lake.init(tmp_path / "lake", vault=tmp_path / "vault")
    paths = write_ct_series(tmp_path / "ct", 2, patient_name=f"{TOKEN}^Anna", patient_id=TOKEN)
    lk.ingest([str(tmp_path / "ct")], vault=tmp_path / "vault", scheduler="sync",
              profile="research")
    wrapped = encapsulated_pdf(
        study_modules(dcmread(paths[0])),
        pdf_report([f"Patient Anna {TOKEN}", "CT chest: no effusion"], info={"Author": TOKEN}),
        series_uid="1.2.826.0.1.3680043.10.1077.88.1",
        sop_uid="1.2.826.0.1.3680043.10.1077.88.2")
    wrapped.DocumentTitle = f"Report of {TOKEN}"
    part = io.BytesIO()
    wrapped.save_as(part, enforce_file_format=True)
    body = (b"--XyZ\r\nContent-Type: application/dicom\r\n\r\n" + part.getvalue()
            + b"\r\n--XyZ--\r\n")
    _, steward = create_token(lk, "steward")
    web = WebLake(lk, tmp_path / "vault", tokens={"steward": steward})
    with serving(web, profile="research") as (_, http):
        response = http.post("/dicomweb/studies", content=body, headers={
            "Authorization": f"Bearer {steward}", "Content-Type": MULTIPART})
    assert response.status_code == 200, response.text
    assert TOKEN not in response.text
    lk.refresh()
    rows = lk.sql("SELECT Modality, PatientID, StudyInstanceUID, header_dicom FROM instances "
                  "ORDER BY Modality").fetchall()
    assert [r[0] for r in rows] == ["CT", "CT", "DOC"]
    assert rows[2][1:3] == rows[0][1:3]  # the study's pseudonym and keyed UID
    ds = dcmread(io.BytesIO(rows[2][3]))
    pdf = bytes(ds.EncapsulatedDocument)[: int(ds.EncapsulatedDocumentLength)]
    assert pdf.startswith(b"%PDF-")  # the report, not the engine's dummy
    assert pdf_words(pdf) == ["Patient", "CT", "chest:", "no", "effusion"]
    assert find_tokens(pdf + rows[2][3], {TOKEN}) == set()
    assert TOKEN not in str(ds.get("DocumentTitle", ""))
