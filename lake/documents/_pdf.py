"""De-identifying a PDF: metadata out, identifying text removed for real, images checked.

Steps, each refusing the document (:class:`DocumentRefusedError`) rather than passing
something it cannot vouch for:

1. Open with qpdf (pikepdf). Encrypted PDFs are refused (``pdf_encrypted``), unparsable
   ones too (``pdf_malformed``); so are Flate bombs and too many pages.
2. Remove everything that is not page content: the Info dictionary and every XMP stream,
   annotations (form fields, links, attachments, comments), the AcroForm, the name tree
   (embedded files, JavaScript), open actions and additional actions, outlines, the
   structure tree, page labels, thumbnails, piece info, associated files, output intents,
   and the marked-content ``ActualText``/``Alt`` a reader would show.
3. Read the text layer glyph by glyph (:mod:`._pdf_text`) and judge every word with the
   :class:`~lake.documents._text.TextPolicy`: with Clean Descriptors the identifying words
   are removed from the content streams; without it, one identifying word refuses the PDF
   (``pdf_text``).
4. OCR every image the pages draw, and every page without a text layer (rendered), for
   burned-in text (``burned_in_text``); with Clean Pixel Data the image is masked and read
   again.
5. Write a new file (no incremental update keeps an old revision, unused objects and
   resources are dropped, a deterministic ``/ID``), then verify: PDFium (an independent
   reader) extracts the text again and no identifying word may remain
   (``pdf_redaction_failed``); no identifying word of the study may be found in any
   decoded stream or string of the file either.
"""

from __future__ import annotations

import io
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import pikepdf
from PIL import Image

from lake.documents._limits import DocumentRefusedError, Limits
from lake.documents._ocr import Ocr, mask
from lake.documents._pdf_text import read_text
from lake.documents._text import TextPolicy

__all__ = ["CleanedPdf", "clean_pdf", "pdf_words"]

_ROOT_KEYS = (
    "/Metadata", "/AcroForm", "/Names", "/OpenAction", "/AA", "/Outlines", "/StructTreeRoot",
    "/MarkInfo", "/PageLabels", "/Threads", "/SpiderInfo", "/URI", "/Perms", "/Collection",
    "/Legal", "/Requirements", "/OutputIntents", "/AF", "/Dests", "/PieceInfo", "/Lang",
)
_PAGE_KEYS = (
    "/Annots", "/AA", "/Metadata", "/PieceInfo", "/Thumb", "/B", "/StructParents", "/ID",
    "/PZ", "/SeparationInfo", "/AF", "/VP", "/TemplateInstantiated",
)
_ANY_KEYS = ("/Metadata", "/PieceInfo", "/AF", "/StructParent", "/StructParents", "/OPI",
             "/Name")
_HIDDEN_PROPERTIES = ("/ActualText", "/Alt", "/E", "/T")
_MIN_OCR_SIDE = 24  # smaller images cannot hold a legible word
_PDF_DATE = re.compile(r"D:(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?")


@dataclass(frozen=True)
class CleanedPdf:
    """A de-identified PDF and what was done to it (counts only, no values)."""

    data: bytes
    pages: int
    glyphs_removed: int
    images_read: int
    images_masked: int
    created: tuple[str, str] | None  # (DA, TM) of the original /CreationDate, to be shifted


def _refuse(reason: str, message: str) -> DocumentRefusedError:
    return DocumentRefusedError(reason, message)


def _open(data: bytes, limits: Limits) -> pikepdf.Pdf:
    if len(data) > limits.max_bytes:
        raise _refuse("pdf_too_large", "the PDF is larger than the lake's limit")
    try:
        pdf = pikepdf.open(io.BytesIO(data))
    except pikepdf.PasswordError:
        raise _refuse("pdf_encrypted", "the PDF is encrypted; send it without a password") from None
    except (pikepdf.PdfError, ValueError, RuntimeError) as exc:
        raise _refuse("pdf_malformed", f"the PDF cannot be read ({type(exc).__name__})") from None
    if pdf.is_encrypted:
        raise _refuse("pdf_encrypted", "the PDF is encrypted; send it without a password")
    try:
        pages = len(pdf.pages)
    except pikepdf.PdfError:
        raise _refuse("pdf_malformed", "the PDF's page tree cannot be read") from None
    if pages == 0:
        raise _refuse("pdf_malformed", "the PDF has no page")
    if pages > limits.max_pages:
        raise _refuse("pdf_too_large", f"the PDF has more than {limits.max_pages} pages")
    return pdf


def _check_streams(pdf: pikepdf.Pdf, limits: Limits) -> None:
    """Refuse a PDF one of whose (non-image) Flate streams inflates past the limit."""
    for obj in pdf.objects:
        if not isinstance(obj, pikepdf.Stream) or obj.get("/Subtype") == "/Image":
            continue
        if obj.get("/Filter") not in ("/FlateDecode", pikepdf.Array([pikepdf.Name.FlateDecode])):
            continue
        try:
            raw = obj.read_raw_bytes()
        except pikepdf.PdfError:
            raise _refuse("pdf_malformed", "a stream of the PDF cannot be read") from None
        inflater = zlib.decompressobj()
        total = 0
        chunk = raw
        while chunk:
            try:
                out = inflater.decompress(chunk, 1 << 20)
            except zlib.error:
                break  # qpdf reports or tolerates a corrupt stream; only the size matters here
            total += len(out)
            if total > limits.max_stream_bytes:
                raise _refuse("pdf_too_large", "a stream of the PDF inflates past the lake's limit")
            chunk = inflater.unconsumed_tail
            if not out and not chunk:
                break


def _creation_date(pdf: pikepdf.Pdf) -> tuple[str, str] | None:
    info = pdf.trailer.get("/Info")
    value = info.get("/CreationDate") if isinstance(info, pikepdf.Dictionary) else None
    if value is None:
        return None
    m = _PDF_DATE.match(str(value))
    if m is None or not m.group(3):
        return None
    da = m.group(1) + m.group(2) + m.group(3)
    tm = "".join(g or "00" for g in m.groups()[3:6])
    return da, tm


def _strip(pdf: pikepdf.Pdf) -> None:
    if "/Info" in pdf.trailer:
        del pdf.trailer["/Info"]
    root = pdf.Root
    for key in _ROOT_KEYS:
        if key in root:
            del root[key]
    for page in pdf.pages:
        for key in _PAGE_KEYS:
            if key in page.obj:
                del page.obj[key]
    for obj in pdf.objects:
        if isinstance(obj, pikepdf.Dictionary | pikepdf.Stream):
            for key in _ANY_KEYS:
                if key in obj and not (key == "/Name" and obj.get("/Type") == "/Font"):
                    del obj[key]
            properties = obj.get("/Properties") if isinstance(obj, pikepdf.Dictionary) else None
            if isinstance(properties, pikepdf.Dictionary):
                for name in list(properties.keys()):
                    prop = properties[name]
                    if isinstance(prop, pikepdf.Dictionary):
                        for key in _HIDDEN_PROPERTIES:
                            if key in prop:
                                del prop[key]


def _image(xobj: pikepdf.Stream, limits: Limits) -> Image.Image | None:
    try:
        width, height = int(xobj.get("/Width", 0)), int(xobj.get("/Height", 0))
    except (TypeError, ValueError):
        return None
    if width * height > limits.max_pixels:
        raise _refuse("image_too_large", "an image in the PDF is larger than the lake's limit")
    if min(width, height) < _MIN_OCR_SIDE or bool(xobj.get("/ImageMask", False)):
        return None
    try:
        return pikepdf.PdfImage(xobj).as_pil_image()
    except (pikepdf.PdfError, NotImplementedError, ValueError, OSError):
        raise _refuse("pdf_unsupported", "an image in the PDF cannot be decoded for its "
                      "burned-in text check") from None


def _replace_image(xobj: pikepdf.Stream, image: Image.Image) -> None:
    rgb = image.convert("RGB")
    xobj.write(zlib.compress(rgb.tobytes()), filter=pikepdf.Name.FlateDecode)
    xobj.ColorSpace = pikepdf.Name.DeviceRGB
    xobj.BitsPerComponent = 8
    for key in ("/DecodeParms", "/Decode", "/SMask", "/Mask", "/Intent"):
        if key in xobj:
            del xobj[key]


def _ocr_images(pdf: pikepdf.Pdf, images: list[pikepdf.Stream], policy: TextPolicy,
                ocr: Ocr, clean_pixels: bool, limits: Limits) -> tuple[int, int]:
    read = masked = 0
    seen: set[tuple[int, int]] = set()
    for xobj in images:
        if xobj.objgen in seen:
            continue
        seen.add(xobj.objgen)
        image = _image(xobj, limits)
        if image is None:
            continue
        read += 1
        found = _identifying(ocr, image, policy)
        if not found:
            continue
        if not clean_pixels:
            raise _refuse("burned_in_text", "an image in the PDF shows identifying text; "
                          "a profile with Clean Pixel Data masks it")
        cleaned = mask(image, found)
        if _identifying(ocr, cleaned, policy):
            raise _refuse("burned_in_text", "identifying text remains in an image of the PDF "
                          "after masking")
        _replace_image(xobj, cleaned)
        masked += 1
    return read, masked


def _identifying(ocr: Ocr, image: Image.Image, policy: TextPolicy) -> list:  # type: ignore[type-arg]
    try:
        return ocr.identifying(image, policy)
    except TimeoutError:
        raise _refuse("ocr_timeout", "burned-in text could not be checked in time") from None


def _render_pages(data: bytes, pages: list[int]) -> Iterator[Image.Image]:
    import pypdfium2

    document = pypdfium2.PdfDocument(data)
    try:
        for index in pages:
            page = document[index]
            try:
                bitmap = page.render(scale=150 / 72)
                try:
                    yield bitmap.to_pil()
                finally:
                    bitmap.close()
            finally:
                page.close()
    finally:
        document.close()


def pdf_words(data: bytes) -> list[str]:
    """Every word PDFium extracts from the text layer of ``data`` (an independent reader)."""
    import pypdfium2

    words: list[str] = []
    document = pypdfium2.PdfDocument(data)
    try:
        for page in document:
            textpage = page.get_textpage()
            try:
                words.extend(textpage.get_text_range().split())
            finally:
                textpage.close()
                page.close()
    finally:
        document.close()
    return words


def _strings(pdf: pikepdf.Pdf, limits: Limits) -> Iterator[bytes]:
    """Every string and every decoded non-image stream of ``pdf``."""
    for obj in pdf.objects:
        if isinstance(obj, pikepdf.Stream):
            if obj.get("/Subtype") == "/Image":
                continue
            try:
                yield bytes(obj.read_bytes())[: limits.max_stream_bytes]
            except pikepdf.PdfError:
                yield bytes(obj.read_raw_bytes())
        if isinstance(obj, pikepdf.Dictionary | pikepdf.Stream):
            for value in obj.values():
                if isinstance(value, pikepdf.String):
                    yield bytes(value)
        elif isinstance(obj, pikepdf.String):
            yield bytes(obj)


def _verify(data: bytes, policy: TextPolicy, limits: Limits) -> None:
    if any(policy.is_identifying(word) for word in pdf_words(data)):
        raise _refuse("pdf_redaction_failed", "identifying text remains in the PDF's text "
                      "layer after redaction (the layout defeats word-level redaction)")
    needles = sorted(w for w in policy.identifiers if len(w) >= 4 and w not in policy.vocabulary)
    if not needles:
        return
    pattern = re.compile("|".join(re.escape(w) for w in needles).encode(), re.IGNORECASE)
    utf16 = [w.encode("utf-16-be") for w in needles]
    with pikepdf.open(io.BytesIO(data)) as pdf:
        for blob in _strings(pdf, limits):
            if pattern.search(blob) or any(u in blob for u in utf16):
                raise _refuse("pdf_redaction_failed", "an identifying word of the study remains "
                              "in the PDF's objects")


def clean_pdf(data: bytes, policy: TextPolicy, *, ocr: Ocr | None, clean_pixels: bool = False,
              limits: Limits | None = None) -> CleanedPdf:
    """De-identify a PDF (see the module docstring for every step).

    Parameters
    ----------
    data : bytes
        The original PDF.
    policy : TextPolicy
        The study's identifying words and the profile's rule.
    ocr : Ocr or None
        The OCR engine; None (Tesseract absent) refuses PDFs with images or without text.
    clean_pixels : bool
        The profile cleans pixels: burned-in text in images is masked instead of refused.
    limits : Limits, optional

    Returns
    -------
    CleanedPdf

    Raises
    ------
    DocumentRefusedError
        With the reason code of the first check that fails.
    """
    limits = limits or Limits()
    pdf = _open(data, limits)
    with pdf:
        _check_streams(pdf, limits)
        created = _creation_date(pdf)
        _strip(pdf)
        try:
            text = read_text(pdf)
        except OverflowError:
            raise _refuse("pdf_too_large", "the PDF's pages draw more operators than the lake "
                          "reads") from None
        except (ValueError, pikepdf.PdfError):
            raise _refuse("pdf_malformed", "a page of the PDF cannot be parsed") from None
        removed = 0
        identifying = [w for w in text.words() if policy.is_identifying(w)]
        if identifying:
            if not policy.redact:
                raise _refuse("pdf_text", f"{len(identifying)} identifying word(s) in the PDF's "
                              "text; a profile with Clean Descriptors redacts them")
            removed = text.redact(policy.is_identifying)
        else:
            text.redact(lambda _w: False)  # still drops marked-content ActualText
        images = [i for i in text.images if isinstance(i, pikepdf.Stream)]
        if images and ocr is None:
            raise _refuse("ocr_unavailable", "the PDF holds images and no OCR engine is "
                          "installed to check them for burned-in text (install tesseract-ocr)")
        read, masked = (_ocr_images(pdf, images, policy, ocr, clean_pixels, limits)
                        if ocr is not None else (0, 0))
        pdf.remove_unreferenced_resources()
        out = io.BytesIO()
        try:
            pdf.save(out, compress_streams=True, deterministic_id=True, fix_metadata_version=False,
                     object_stream_mode=pikepdf.ObjectStreamMode.generate)
        except (pikepdf.PdfError, ValueError, RuntimeError):
            raise _refuse("pdf_malformed", "the cleaned PDF cannot be written") from None
        pages = len(pdf.pages)
        drawn_pages = text.pages_without_content(pages)
    cleaned = out.getvalue()
    if drawn_pages:
        if ocr is None:
            raise _refuse("ocr_unavailable", "the PDF has pages without a text layer and no "
                          "OCR engine is installed to read them (install tesseract-ocr)")
        for image in _render_pages(cleaned, drawn_pages):
            read += 1
            if _identifying(ocr, image, policy):
                raise _refuse("burned_in_text", "a page without a text layer shows identifying "
                              "text (a scan or drawn text)")
    _verify(cleaned, policy, limits)
    return CleanedPdf(cleaned, pages, removed, read, masked, created)
