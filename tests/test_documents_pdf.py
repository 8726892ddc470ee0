"""PDF de-identification: metadata out, identifying text removed from the content streams."""

from __future__ import annotations

import io
import shutil
import zlib
from pathlib import Path

import pikepdf
import pytest

from lake.deid import load_profile
from lake.documents import (
    DocumentKind,
    DocumentRefusedError,
    Limits,
    Ocr,
    TextPolicy,
    clean_pdf,
    pdf_words,
    sniff,
)
from tests.documents_corpus import find_tokens, pdf_report, pdf_scan

TOKEN = "TKNQZXVWPLM"
NAME = "Heart"  # a patient whose name is an ordinary (vocabulary) word
needs_ocr = pytest.mark.skipif(shutil.which("tesseract") is None, reason="tesseract not installed")


def _policy(profile: str = "research", identifiers: tuple[str, ...] = ("heart", "john"),
            digits: tuple[str, ...] = ("12345678",)) -> TextPolicy:
    prof = load_profile(profile)
    from lake.deid import ProfileOption

    return TextPolicy(prof.vocabulary, frozenset(identifiers), frozenset(digits),
                      redact=ProfileOption.CLEAN_DESCRIPTORS in prof.options)


def _everything(data: bytes) -> bytes:
    """The file plus every stream decoded: where a reader could find text."""
    parts = [data]
    with pikepdf.open(io.BytesIO(data)) as pdf:
        for obj in pdf.objects:
            if isinstance(obj, pikepdf.Stream):
                parts.append(bytes(obj.read_bytes()))
    return b"\n".join(parts)


def test_kinds_are_recognised_by_content_not_name() -> None:
    assert sniff(pdf_report(["x"])) is DocumentKind.PDF
    assert sniff(b"junk before the header %PDF-1.4\n") is DocumentKind.PDF
    assert sniff(b"BM" + bytes(12) + b"\x28\0\0\0" + bytes(10)) is DocumentKind.BMP
    assert sniff(b"BM is a text file") is None
    assert sniff(b"\0\0\0\x20ftypqt  " + bytes(8)) is DocumentKind.MOV
    assert sniff(b"\0\0\0\x20ftypisom" + bytes(8)) is DocumentKind.MP4
    assert sniff(b"RIFF\0\0\0\0AVI LIST") is DocumentKind.AVI
    assert sniff(bytes(128) + b"DICM" + b"II*\0") is None  # DICOM first, even with a TIFF look


def test_every_hiding_place_is_emptied_and_text_redacted() -> None:
    data = pdf_report(
        [f"Patient: John {NAME} MRN 12345678 {TOKEN}", "CT chest: no evidence of pneumothorax.",
         "Date 12/03/2020"],
        info={"Author": TOKEN, "Title": f"report {TOKEN}", "CreationDate": "D:20200312101112"},
        annotation=TOKEN + "A", attachment=TOKEN + "B", javascript=TOKEN + "C",
        form_field=TOKEN + "D", outline=TOKEN + "E", actual_text=TOKEN + "F",
        form_xobject_text=f"{NAME} {TOKEN}G", xmp=TOKEN + "H")
    tokens = {TOKEN, *(TOKEN + c for c in "ABCDEFGH")}
    assert find_tokens(_everything(data), tokens) == tokens  # a real test: all there first
    cleaned = clean_pdf(data, _policy(), ocr=None)
    assert find_tokens(_everything(cleaned.data), tokens | {NAME, "12345678"}) == set()
    words = pdf_words(cleaned.data)
    assert not any(TOKEN in w or NAME.lower() in w.lower() for w in words)
    assert {"CT", "chest:", "evidence"} <= set(words)  # what names no one stays
    assert cleaned.glyphs_removed > 0 and cleaned.pages == 1
    assert cleaned.created == ("20200312", "101112")
    with pikepdf.open(io.BytesIO(cleaned.data)) as pdf:
        assert "/Info" not in pdf.trailer
        for key in ("/Metadata", "/AcroForm", "/Names", "/OpenAction", "/Outlines"):
            assert key not in pdf.Root
        assert "/Annots" not in pdf.pages[0].obj


def test_redaction_keeps_the_layout() -> None:
    """Removed glyphs become TJ displacements: the words after them do not move."""
    data = pdf_report([f"CT {TOKEN} chest"])
    cleaned = clean_pdf(data, _policy(), ocr=None)
    with pikepdf.open(io.BytesIO(cleaned.data)) as pdf:
        ops = [str(i.operator) for i in pikepdf.parse_content_stream(pdf.pages[0])]
        tj = [i.operands[0] for i in pikepdf.parse_content_stream(pdf.pages[0])
              if str(i.operator) == "TJ"]
    assert "TJ" in ops
    kerns = [x for x in tj[0] if not isinstance(x, pikepdf.String)]
    assert kerns and all(float(k) < 0 for k in kerns)


def test_glyph_by_glyph_text_is_read_as_words() -> None:
    data = pdf_report(["CT chest"], glyph_by_glyph=f"{NAME} {TOKEN}")
    assert TOKEN in "".join(pdf_words(data))
    cleaned = clean_pdf(data, _policy(), ocr=None)
    assert TOKEN not in "".join(pdf_words(cleaned.data))
    assert find_tokens(_everything(cleaned.data), {TOKEN}) == set()


def test_without_clean_descriptors_identifying_text_is_refused() -> None:
    data = pdf_report([f"Patient {TOKEN}"])
    with pytest.raises(DocumentRefusedError) as refused:
        clean_pdf(data, _policy("basic"), ocr=None)
    assert refused.value.reason == "pdf_text"
    assert TOKEN not in str(refused.value)
    clean = clean_pdf(pdf_report(["CT chest with contrast"]), _policy("basic"), ocr=None)
    assert "chest" in pdf_words(clean.data)


def test_vocabulary_names_of_the_study_are_redacted() -> None:
    data = pdf_report([f"{NAME} chest"])
    cleaned = clean_pdf(data, _policy(identifiers=("heart",)), ocr=None)
    assert pdf_words(cleaned.data) == ["chest"]
    kept = clean_pdf(data, _policy(identifiers=()), ocr=None)  # not the patient: stays
    assert pdf_words(kept.data) == [NAME, "chest"]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (pdf_report(["x"], password="secret"), "pdf_encrypted"),
        (b"%PDF-1.4\n" + bytes(range(256)) * 4, "pdf_malformed"),
    ],
)
def test_bad_pdfs_are_refused_with_a_reason(data: bytes, reason: str) -> None:
    with pytest.raises(DocumentRefusedError) as refused:
        clean_pdf(data, _policy(), ocr=None)
    assert refused.value.reason == reason


def test_a_flate_bomb_is_refused_before_it_is_inflated() -> None:
    pdf = pikepdf.new()
    bomb = pdf.make_stream(zlib.compress(b"\0" * (8 << 20)))
    bomb.Filter = pikepdf.Name.FlateDecode
    bomb.write(zlib.compress(b"\0" * (8 << 20)), filter=pikepdf.Name.FlateDecode)
    page = pikepdf.Dictionary(Type=pikepdf.Name.Page, MediaBox=[0, 0, 10, 10], Contents=bomb)
    pdf.pages.append(pikepdf.Page(page))
    out = io.BytesIO()
    pdf.save(out, compress_streams=False)
    with pytest.raises(DocumentRefusedError) as refused:
        clean_pdf(out.getvalue(), _policy(), ocr=None, limits=Limits(max_stream_bytes=1 << 20))
    assert refused.value.reason == "pdf_too_large"


def test_pages_without_text_need_ocr() -> None:
    with pytest.raises(DocumentRefusedError) as refused:
        clean_pdf(pdf_scan("CT CHEST"), _policy(), ocr=None)
    assert refused.value.reason == "ocr_unavailable"


@needs_ocr
def test_a_scan_with_a_name_burned_in_is_refused() -> None:
    with pytest.raises(DocumentRefusedError) as refused:
        clean_pdf(pdf_scan(f"SMITH {TOKEN}"), _policy(), ocr=Ocr())
    assert refused.value.reason == "burned_in_text"


@needs_ocr
def test_a_scan_is_masked_under_clean_pixel_data() -> None:
    cleaned = clean_pdf(pdf_scan(f"SMITH {TOKEN}"), _policy("teaching"), ocr=Ocr(),
                        clean_pixels=True)
    assert cleaned.images_masked == 1


def test_too_many_operators_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    import lake.documents._pdf_text as pdf_text

    monkeypatch.setattr(pdf_text, "MAX_OPERATORS", 5)
    with pytest.raises(DocumentRefusedError) as refused:
        clean_pdf(pdf_report(["a", "b", "c", "d"]), _policy(), ocr=None)
    assert refused.value.reason == "pdf_too_large"


def test_an_embedded_unicode_font_with_justified_text() -> None:
    """A PDF as word processors write it: an embedded TrueType font (Type0, Identity-H, a
    ToUnicode CMap, per-glyph widths), accented names, justified lines."""
    fpdf = pytest.importorskip("fpdf")
    import matplotlib

    pdf = fpdf.FPDF()
    pdf.add_page()
    font = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    pdf.add_font("dejavu", fname=str(font))
    pdf.set_font("dejavu", size=12)
    pdf.cell(text="Patient: Jürgen Müller-Heart MRN 12345678", new_x="LMARGIN", new_y="NEXT")
    pdf.multi_cell(w=120, align="J", text="CT chest with contrast. There is no evidence of "
                   "pneumothorax. Dictated by Dr Jürgen Heart on 12/03/2020 at the clinic.")
    data = bytes(pdf.output())
    assert {"Jürgen", "Müller-Heart", "12345678"} <= set(pdf_words(data))
    policy = _policy(identifiers=("jürgen", "müller", "heart"))
    words = pdf_words(clean_pdf(data, policy, ocr=None).data)
    assert not {w for w in words if any(n in w.lower() for n in ("rgen", "ller", "heart"))}
    assert not any(any(c.isdigit() for c in w) for w in words)
    assert {"CT", "chest", "evidence", "pneumothorax.", "clinic."} <= set(words)
