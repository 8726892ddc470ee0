"""Quarantine review of documents (issues 13 and 15.3): a refused PDF is shown, exported and
released as the document it is, not as a failed DICOM file.

Found by review: releasing a PDF that ``basic`` refused (``pdf_text``) re-ran it as DICOM and
re-quarantined it as ``not_dicom``; ``show`` parsed the PDF as a DICOM header
(``(5025,4644) ? UN``) and ``export`` named it ``.dcm``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from pydicom import dcmread

import lake
from lake.documents import pdf_words
from tests.documents_corpus import find_tokens, pdf_report
from tests.series import write_ct_series

LAKE = str(Path(sys.executable).with_name("lake"))
TOKEN = "TKNQDOCWHITFIELD"


def _cli(root: Path, vault: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, LAKE_ROOT=str(root), LAKE_VAULT=str(vault))
    return subprocess.run([LAKE, *args], env=env, capture_output=True, text=True, timeout=300)


def test_a_refused_pdf_is_shown_exported_and_released_as_a_document(
    lk: lake.Lake, lake_root: Path, vault_dir: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "in" / "visit"
    paths = write_ct_series(folder, 2, patient_name=f"{TOKEN}^Margaret", patient_id=TOKEN)
    original = pdf_report([f"Patient Margaret {TOKEN}", "CT chest: no pneumothorax"])
    (folder / "report").write_bytes(original)  # no extension: a document by its content
    ingested = _cli(lake_root, vault_dir, "ingest", "-q", "--profile", "basic",
                    "--scheduler", "sync", str(folder))
    assert ingested.returncode == 3, ingested.stderr
    (entry,) = json.loads(_cli(lake_root, vault_dir, "quarantine", "list", "--format",
                               "json").stdout)
    assert entry["reason"] == "pdf_text"
    ident = entry["id"]

    shown = _cli(lake_root, vault_dir, "quarantine", "show", ident)
    assert shown.returncode == 0, shown.stderr
    assert "(5025," not in shown.stdout and "pdf" in shown.stdout.lower()
    assert TOKEN not in shown.stdout + shown.stderr

    exported = _cli(lake_root, vault_dir, "quarantine", "export", ident,
                    "--out", str(tmp_path / "out"))
    assert exported.returncode == 0, exported.stderr
    assert (tmp_path / "out" / f"{ident}.pdf").read_bytes() == original

    # Without its study a document cannot be wrapped: one line, exit 1, nothing changes.
    orphan = _cli(lake_root, vault_dir, "quarantine", "release", ident, "--profile", "research")
    assert orphan.returncode == 1 and len(orphan.stderr.strip().splitlines()) == 1, orphan.stderr
    assert "StudyInstanceUID or AccessionNumber" in orphan.stderr and TOKEN not in orphan.stderr
    assert json.loads(_cli(lake_root, vault_dir, "quarantine", "list", "--format",
                           "json").stdout)[0]["reason"] == "pdf_text"
    # An unknown study: one line, exit 1.
    unknown = _cli(lake_root, vault_dir, "quarantine", "release", ident, "--profile",
                   "research", "--study", "1.2.3.4.5")
    assert unknown.returncode == 1 and len(unknown.stderr.strip().splitlines()) == 1

    study = str(dcmread(paths[0]).StudyInstanceUID)  # the original UID, as the steward knows it
    stays = _cli(lake_root, vault_dir, "quarantine", "release", ident, "--profile", "basic",
                 "--study", study)
    assert stays.returncode == 3 and "pdf_text" in stays.stderr, stays.stderr
    released = _cli(lake_root, vault_dir, "quarantine", "release", ident, "--profile",
                    "research", "--study", study)
    assert released.returncode == 0 and "ingested" in released.stdout, released.stderr
    lk.refresh()
    rows = lk.sql("SELECT Modality, PatientID, StudyInstanceUID, header_dicom FROM instances "
                  "ORDER BY Modality").fetchall()
    assert [r[0] for r in rows] == ["CT", "CT", "DOC"]
    assert rows[2][1:3] == rows[0][1:3]  # the study's pseudonym and keyed UID
    ds = dcmread(__import__("io").BytesIO(rows[2][3]))
    pdf = bytes(ds.EncapsulatedDocument)[: int(ds.EncapsulatedDocumentLength)]
    assert pdf_words(pdf)[-3:] == ["chest:", "no", "pneumothorax"]
    assert find_tokens(pdf, {TOKEN}) == set()
    assert lk.sql("SELECT count(*) FROM quarantine").fetchall() == [(0,)]
    assert not list((lake_root / "quarantine").glob("*.sealed"))
    assert lk.verify().ok


def test_study_is_for_documents_only(
    lk: lake.Lake, lake_root: Path, vault_dir: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "in"
    (path,) = write_ct_series(folder, 1)
    ds = dcmread(path)
    ds.BurnedInAnnotation = "YES"  # basic refuses it
    ds.save_as(path, enforce_file_format=True)
    assert _cli(lake_root, vault_dir, "ingest", "-q", "--scheduler", "sync",
                str(folder)).returncode == 3
    (entry,) = json.loads(_cli(lake_root, vault_dir, "quarantine", "list", "--format",
                               "json").stdout)
    wrong = _cli(lake_root, vault_dir, "quarantine", "release", entry["id"], "--profile",
                 "basic", "--study", str(ds.StudyInstanceUID))
    assert wrong.returncode == 1 and len(wrong.stderr.strip().splitlines()) == 1, wrong.stderr
    assert str(ds.StudyInstanceUID) not in wrong.stderr
