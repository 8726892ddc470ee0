"""Documents in the lake: same pseudonym, date shift and keyed UIDs as their study's images."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import pytest
from pydicom import dcmread

import lake
from lake.documents import (
    FolderStudies,
    Ocr,
    before_deid,
    document_outcome,
    pdf_words,
    sniff,
    study_from_lake,
)
from lake.ingest import Accepted, Ingestor, Rejected, ingest
from tests.documents_corpus import find_tokens, jpeg_with_metadata, pdf_report, video
from tests.series import write_ct_series

needs_ocr = pytest.mark.skipif(shutil.which("tesseract") is None, reason="tesseract not installed")
TOKEN = "TKNDOCINGESTQ"
NAME = "Heart^John"


@pytest.fixture
def study_folder(tmp_path: Path) -> tuple[Path, list[Path]]:
    folder = tmp_path / "in" / "study"
    paths = write_ct_series(folder, 3, patient_name=NAME, patient_id=TOKEN)
    return folder, paths


def _ingestor(lk: lake.Lake, vault: Path, profile: str = "research") -> Ingestor:
    return Ingestor(lk, lk.secret(vault), profile)


def _outcome(ing: Ingestor, path: Path, ocr: Ocr | None = None) -> Accepted | Rejected:
    data = path.read_bytes()
    kind = sniff(data[:1024])
    assert kind is not None
    study = FolderStudies(ing.context.engine).study(str(path), None)
    return document_outcome(kind, data, study, ing.context, ocr=ocr)


def test_a_pdf_beside_its_study_gets_the_study_s_keys(
    lk: lake.Lake, vault_dir: Path, study_folder: tuple[Path, list[Path]]
) -> None:
    folder, _ = study_folder
    ing = _ingestor(lk, vault_dir)
    ingest(lk, [str(folder)], lk.secret(vault_dir), profile="research", scheduler="sync")
    report = folder / "report"  # no extension: recognised by content
    report.write_bytes(pdf_report([f"Patient John Heart {TOKEN}", "CT chest"],
                                  info={"Author": TOKEN, "CreationDate": "D:20200312"}))
    outcome = _outcome(ing, report)
    assert isinstance(outcome, Accepted), getattr(outcome, "record", None)
    ing.commit([outcome])
    lk.refresh()
    rows = lk.sql("SELECT Modality, PatientID, StudyInstanceUID, StudyDate, ContentDate, "
                  "document_mime_type, document_pages, header_dicom FROM instances "
                  "ORDER BY Modality").fetchall()
    ct, doc = rows[0], rows[-1]
    assert doc[0] == "DOC" and ct[0] == "CT"
    assert doc[1:4] == ct[1:4]  # pseudonym, keyed study UID, shifted study date
    assert doc[4] is not None and doc[4] != __import__("datetime").date(2020, 3, 12)  # shifted
    assert doc[5:7] == ("application/pdf", 1)
    ds = dcmread(io.BytesIO(doc[7]))
    pdf = bytes(ds.EncapsulatedDocument)[: int(ds.EncapsulatedDocumentLength)]
    assert find_tokens(pdf, {TOKEN, "Heart"}) == set()
    assert "chest" in pdf_words(pdf) and "Heart" not in pdf_words(pdf)
    assert ds.PatientIdentityRemoved == "YES"
    again = _outcome(ing, report)  # the same file again: the same instance
    assert isinstance(again, Accepted)
    assert again.row["SOPInstanceUID"] == outcome.row["SOPInstanceUID"]
    assert ing.commit([again]).duplicates == 1


def test_without_a_study_a_document_is_quarantined(lk: lake.Lake, vault_dir: Path,
                                                   tmp_path: Path) -> None:
    lone = tmp_path / "lone" / "report.pdf"
    lone.parent.mkdir()
    lone.write_bytes(pdf_report(["CT chest"]))
    outcome = _outcome(_ingestor(lk, vault_dir), lone)
    assert isinstance(outcome, Rejected) and outcome.record["reason"] == "no_study"
    assert "report" not in outcome.record["message"]


def test_two_studies_in_a_folder_is_no_study(lk: lake.Lake, vault_dir: Path,
                                             study_folder: tuple[Path, list[Path]]) -> None:
    folder, _ = study_folder
    write_ct_series(folder / "..", 1)  # another study, other folder: does not count
    other = write_ct_series(folder.parent / "x", 1)[0]
    shutil.copy(other, folder / "other.dcm")
    (folder / "r.pdf").write_bytes(pdf_report(["CT"]))
    outcome = _outcome(_ingestor(lk, vault_dir), folder / "r.pdf")
    assert isinstance(outcome, Rejected) and outcome.record["reason"] == "no_study"


def test_attach_by_study_uid_copies_the_lake_s_modules(
    lk: lake.Lake, vault_dir: Path, study_folder: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    folder, paths = study_folder
    ingest(lk, [str(folder)], lk.secret(vault_dir), profile="research", scheduler="sync")
    lk.refresh()
    ing = _ingestor(lk, vault_dir)
    uid = str(dcmread(paths[0]).StudyInstanceUID)
    study = study_from_lake(lk, ing.context.engine, uid)
    assert not study.identified
    data = pdf_report(["CT chest", f"Zyxwv {TOKEN}"])
    outcome = document_outcome(sniff(data), data, study, ing.context)  # type: ignore[arg-type]
    assert isinstance(outcome, Accepted)
    ct = lk.sql("SELECT PatientID, StudyInstanceUID FROM instances LIMIT 1").fetchall()[0]
    assert (outcome.row["PatientID"], outcome.row["StudyInstanceUID"]) == ct
    assert outcome.row["ContentDate"] is None
    with pytest.raises(lake.IngestError):
        study_from_lake(lk, ing.context.engine, "1.2.3.4.5")


def test_an_encapsulated_pdf_arriving_as_dicom_keeps_its_cleaned_report(
    lk: lake.Lake, vault_dir: Path, study_folder: tuple[Path, list[Path]]
) -> None:
    from lake.documents._iod import encapsulated_pdf, study_modules

    _, paths = study_folder
    header = dcmread(paths[0])
    ds = encapsulated_pdf(study_modules(header), pdf_report([f"John Heart {TOKEN} chest"]),
                          series_uid="1.2.826.0.1.3680043.10.1077.9.1",
                          sop_uid="1.2.826.0.1.3680043.10.1077.9.2")
    ds.DocumentTitle = f"Report of {TOKEN}"
    engine = _ingestor(lk, vault_dir).context.engine
    content = before_deid(ds, engine)
    assert content is not None
    engine.apply(ds)
    assert bytes(ds.EncapsulatedDocument) == bytes(8)  # the engine alone: a dummy
    content.restore(ds)
    pdf = bytes(ds.EncapsulatedDocument)[: int(ds.EncapsulatedDocumentLength)]
    assert pdf_words(pdf) == ["chest"]
    assert TOKEN not in str(ds.DocumentTitle)


@needs_ocr
def test_photographs_and_videos_beside_their_study(
    lk: lake.Lake, vault_dir: Path, study_folder: tuple[Path, list[Path]]
) -> None:
    folder, _ = study_folder
    (folder / "photo.jpg").write_bytes(jpeg_with_metadata(TOKEN))
    (folder / "clip").write_bytes(video(metadata={"title": TOKEN}))
    ing = _ingestor(lk, vault_dir)
    photo = _outcome(ing, folder / "photo.jpg", Ocr())
    clip = _outcome(ing, folder / "clip", Ocr())
    assert isinstance(photo, Accepted) and isinstance(clip, Accepted)
    assert photo.row["TransferSyntaxUID"] == "1.2.840.10008.1.2.4.50"
    assert clip.row["TransferSyntaxUID"] == "1.2.840.10008.1.2.4.102"
    assert clip.row["document_duration"] == pytest.approx(2.0)
    assert photo.row["PatientID"] == clip.row["PatientID"] != TOKEN
    ing.commit([photo, clip])
    blobs = b"".join(p.read_bytes() for p in (Path(lk.root) / "blobs").rglob("*")
                     if p.is_file())
    assert find_tokens(blobs, {TOKEN}) == set()


@needs_ocr
def test_lake_ingest_takes_documents_beside_dicom_in_folders_and_zips(
    lk: lake.Lake, vault_dir: Path, tmp_path: Path
) -> None:
    import zipfile

    folder = tmp_path / "in" / "visit"
    write_ct_series(folder, 2, patient_name=NAME, patient_id=TOKEN)
    (folder / "report.pdf").write_bytes(pdf_report([f"John {TOKEN}", "CT chest"]))
    (folder / "photo.jpg").write_bytes(jpeg_with_metadata(TOKEN))
    (folder / "clip.avi").write_bytes(video(seconds=1))
    zipped = tmp_path / "in" / "other.zip"
    other = write_ct_series(tmp_path / "zipsrc", 1, patient_name="Doe^Jane", patient_id="P2")
    with zipfile.ZipFile(zipped, "w") as archive:
        archive.write(other[0], "study/slice.dcm")
        archive.writestr("study/scan.pdf", pdf_report(["CT chest"]))
        archive.writestr("elsewhere/lonely.pdf", pdf_report(["CT"]))
    lonely = tmp_path / "in" / "lonely" / "r.pdf"
    lonely.parent.mkdir()
    lonely.write_bytes(pdf_report(["CT"]))
    summary = ingest(lk, [str(tmp_path / "in")], lk.secret(vault_dir), profile="research",
                     scheduler="sync")
    assert summary.ingested == 2 + 3 + 1 + 1 and dict(summary.reasons) == {"no_study": 2}
    lk.refresh()
    rows = lk.sql("SELECT PatientID, StudyInstanceUID, count(*) FROM instances "
                  "GROUP BY ALL ORDER BY 3").fetchall()
    assert [r[2] for r in rows] == [2, 5]  # each document in its own folder's study


def test_lake_ingest_study_option_binds_documents_to_a_study_in_the_lake(
    lk: lake.Lake, vault_dir: Path, study_folder: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    folder, paths = study_folder
    secret = lk.secret(vault_dir)
    ingest(lk, [str(folder)], secret, profile="research", scheduler="sync")
    docs = tmp_path / "later"
    docs.mkdir()
    (docs / "report.pdf").write_bytes(pdf_report(["CT chest"]))
    uid = str(dcmread(paths[0]).StudyInstanceUID)
    summary = ingest(lk, [str(docs)], secret, profile="research", scheduler="sync", study=uid)
    assert summary.ingested == 1
    lk.refresh()
    assert lk.sql("SELECT count(DISTINCT StudyInstanceUID) FROM instances").fetchall() == [(1,)]


def test_attach_by_accession_and_names_that_are_words(
    lk: lake.Lake, vault_dir: Path, tmp_path: Path
) -> None:
    """The lake keeps keyed hashes of the accession and of vocabulary-word names, never them."""
    from lake.documents import attach
    from tests.test_phi_proof import _table_texts

    folder = tmp_path / "in" / "s"
    accession = "ACCTKN7731"
    for path in write_ct_series(folder, 2, patient_name="Heart^Young", patient_id=TOKEN):
        ds = dcmread(path)
        ds.AccessionNumber = accession
        ds.save_as(path, enforce_file_format=True)
    secret = lk.secret(vault_dir)
    ingest(lk, [str(folder)], secret, profile="research", scheduler="sync")
    report = tmp_path / "report.pdf"
    report.write_bytes(pdf_report(["Heart Young chest", "heart"]))
    batch = attach(lk, secret, accession, [report], profile="research")
    assert batch.ingested == 1
    lk.refresh()
    header = lk.sql("SELECT header_dicom FROM instances WHERE Modality = 'DOC'").fetchall()[0][0]
    ds = dcmread(io.BytesIO(header))
    pdf = bytes(ds.EncapsulatedDocument)[: int(ds.EncapsulatedDocumentLength)]
    assert pdf_words(pdf) == ["chest"]  # the patient's names went, though they are words
    keys = lk.sql("SELECT DISTINCT accession_key, identity_keys FROM instances").fetchall()
    assert len(keys) == 1 and keys[0][0].startswith("2.25.") and len(keys[0][1]) >= 2
    tables = b"".join(data for _, data in _table_texts(Path(lk.root)))
    assert find_tokens(tables, {accession, "Young", TOKEN}) == set()
    with pytest.raises(lake.IngestError):
        attach(lk, secret, "ACC-UNKNOWN", [report], profile="research")


@needs_ocr
def test_export_documents_unwraps_png_and_multipage_tiff(
    lk: lake.Lake, vault_dir: Path, tmp_path: Path
) -> None:
    from PIL import Image

    from lake.export import export_documents
    from tests.documents_corpus import photo

    folder = tmp_path / "in" / "scans"
    write_ct_series(folder, 1)
    photo().save(folder / "wound.png")
    pages = [photo(seed=i).convert("L") for i in range(3)]
    pages[0].save(folder / "consent.tif", save_all=True, append_images=pages[1:])
    ingest(lk, [str(folder)], lk.secret(vault_dir), profile="research", scheduler="sync")
    lk.refresh()
    result = export_documents(lk, "SELECT SOPInstanceUID FROM instances", tmp_path / "out",
                              scheduler="sync")
    by_ext = {f.path.rsplit(".", 1)[1]: tmp_path / "out" / f.path for f in result.files
              if not f.path.endswith(".json")}
    assert set(by_ext) == {"png", "tif"}
    assert Image.open(by_ext["png"]).size == (640, 480)
    scan = Image.open(by_ext["tif"])
    assert scan.n_frames == 3 and scan.size == (640, 480)
    assert [s.reason for s in result.skipped] == ["not_a_document"]  # the CT slice


def test_warnings_about_original_values_stay_captured(
    lk: lake.Lake, vault_dir: Path, study_folder: tuple[Path, list[Path]]
) -> None:
    """A sibling header whose values make pydicom warn: nothing of it reaches a warning."""
    import warnings

    folder, paths = study_folder
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = dcmread(paths[0])
        ds.add_new(0x00081030, "LO", "x" * 70 + TOKEN)  # too long for LO
        ds.add_new(0x00200052, "UI", f"1.2.{TOKEN}")  # not a UID
        ds.save_as(paths[0], enforce_file_format=True)
    (folder / "r.pdf").write_bytes(pdf_report(["CT chest"]))
    from lake.documents import ingest_item

    ing = _ingestor(lk, vault_dir)
    data = (folder / "r.pdf").read_bytes()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        outcome = ingest_item(str(folder / "r.pdf"), None, data, ing.context,
                              FolderStudies(ing.context.engine))
    assert isinstance(outcome, Accepted)
    assert not [str(w.message) for w in seen if TOKEN in str(w.message)]


def test_documents_reach_ingest_and_deid_through_their_public_seams() -> None:
    """One row-building path for every front door (``lake.ingest.accept`` / ``reject``) and one
    text rule (``lake.deid.clean_text``): lake.documents imports no private module of another
    package of the lake, so it cannot hold a copy of their internals."""
    import ast

    import lake.documents

    private = []
    for path in sorted(Path(lake.documents.__file__).parent.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([node.module or ""] if isinstance(node, ast.ImportFrom)
                     else [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            for name in names:
                parts = name.split(".")
                if (len(parts) > 2 and parts[0] == "lake" and parts[1] != "documents"
                        and parts[2].startswith("_")):
                    private.append(f"{path.name}: {name}")
    assert private == []
