"""Documents that arrive already wrapped as DICOM (files, C-STORE, STOW-RS): their content too.

The de-identification engine handles headers. Alone, it would pass an Encapsulated PDF's
document through Table E.1-1's action for Encapsulated Document (a dummy: the report is
lost) and a photograph's or video's pixels unchecked (VL classes are not "at risk" of
burned-in text for the engine). :func:`before_deid` runs on the *identified* instance, before
the engine: it cleans the content with the instance's own header as the study's identifiers
(same rules as for a document file, :mod:`lake.documents`), and returns what
:meth:`Content.restore` puts back once the engine has done the header.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.pixels.utils import pixel_array
from pydicom.uid import UID, ExplicitVRLittleEndian

from lake.deid import Deidentifier
from lake.documents._ingest import document_columns
from lake.documents._iod import ENCAPSULATED_PDF, VIDEO_PHOTOGRAPHIC, VL_PHOTOGRAPHIC
from lake.documents._keys import study_keys
from lake.documents._limits import DocumentRefusedError, Limits
from lake.documents._ocr import Ocr, mask
from lake.documents._pdf import clean_pdf
from lake.documents._text import TextPolicy, identifiers_of
from lake.documents._video import clean_video
from lake.nifti import decode_past_panic

__all__ = ["Content", "before_deid"]

_VL_IMAGES = frozenset({
    VL_PHOTOGRAPHIC,
    UID("1.2.840.10008.5.1.4.1.1.77.1.1"),  # VL Endoscopic Image
    UID("1.2.840.10008.5.1.4.1.1.77.1.2"),  # VL Microscopic Image
    UID("1.2.840.10008.5.1.4.1.1.77.1.3"),  # VL Slide-Coordinates Microscopic Image
})
_VIDEOS = frozenset({
    VIDEO_PHOTOGRAPHIC,
    UID("1.2.840.10008.5.1.4.1.1.77.1.1.1"),  # Video Endoscopic Image
    UID("1.2.840.10008.5.1.4.1.1.77.1.2.1"),  # Video Microscopic Image
})
_SOP_CLASS = 0x00080016
_H264 = frozenset({"1.2.840.10008.1.2.4.102", "1.2.840.10008.1.2.4.103",
                   "1.2.840.10008.1.2.4.104", "1.2.840.10008.1.2.4.105",
                   "1.2.840.10008.1.2.4.106"})


@dataclass
class Content:
    """De-identified content to put back into the instance after the engine."""

    elements: dict[str, Any] = field(default_factory=dict)
    syntax: UID | None = None
    columns: dict[str, Any] = field(default_factory=dict)

    def restore(self, ds: Dataset) -> None:
        """Set the cleaned content on the de-identified ``ds``."""
        for keyword, value in self.elements.items():
            setattr(ds, keyword, value)
        if "PixelData" in self.elements:
            ds["PixelData"].VR = "OB"
        if self.syntax is not None:
            ds.file_meta.TransferSyntaxUID = self.syntax


def _ocr() -> Ocr | None:
    return Ocr() if Ocr.available() else None


def _title(ds: Dataset, policy: TextPolicy) -> str:
    title = str(ds.get("DocumentTitle") or "")
    if not policy.redact:
        return ""
    return " ".join(w for w in title.split() if not policy.is_identifying(w))


def _syntax(ds: Dataset) -> str:
    meta = getattr(ds, "file_meta", None)
    return str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""


def _pdf(ds: Dataset, policy: TextPolicy, engine: Deidentifier, limits: Limits) -> Content:
    data = bytes(ds.get("EncapsulatedDocument") or b"")
    length = ds.get("EncapsulatedDocumentLength")
    if isinstance(length, int) and 0 < length <= len(data):
        data = data[:length]
    pdf = clean_pdf(data, policy, ocr=_ocr(), clean_pixels=engine.plan.clean_pixels,
                    limits=limits)
    padded = pdf.data + (b"\0" if len(pdf.data) % 2 else b"")
    return Content(
        {"EncapsulatedDocument": padded, "EncapsulatedDocumentLength": len(pdf.data),
         "DocumentTitle": _title(ds, policy)},
        columns=document_columns("application/pdf", pdf.pages, None),
    )


def _vl_image(ds: Dataset, policy: TextPolicy, engine: Deidentifier) -> Content:
    ocr = _ocr()
    if ocr is None:
        raise DocumentRefusedError("ocr_unavailable", "no OCR engine is installed to check the "
                                   "image for burned-in text (install tesseract-ocr)")
    try:
        array = decode_past_panic(pixel_array, ds)
    except Exception as exc:  # noqa: BLE001 - pydicom's decoders raise many types
        raise DocumentRefusedError("pixel_decode", "the image's pixels cannot be decoded "
                                   f"({type(exc).__name__})") from None
    frames = array if int(ds.get("NumberOfFrames") or 1) > 1 else array[np.newaxis]
    if ds.get("PhotometricInterpretation", "").startswith("YBR"):
        from pydicom.pixels.processing import convert_color_space

        frames = convert_color_space(frames, ds.PhotometricInterpretation, "RGB")
    images = [Image.fromarray(np.asarray(f, dtype=np.uint8)) for f in frames]
    found = [ocr.identifying(image, policy) for image in images]
    if not any(found):
        return Content()  # metadata inside compressed frames: removed by the engine
    if not engine.plan.clean_pixels:
        raise DocumentRefusedError("burned_in_text", "the image shows identifying text; a "
                                   "profile with Clean Pixel Data masks it")
    masked = [mask(image, words) for image, words in zip(images, found, strict=True)]
    if any(ocr.identifying(image, policy) for image in masked):
        raise DocumentRefusedError("burned_in_text", "identifying text remains after masking")
    data = b"".join(image.tobytes() for image in masked)
    samples = 1 if masked[0].mode == "L" else 3
    elements: dict[str, Any] = {
        "PixelData": data + (b"\0" if len(data) % 2 else b""),
        "PhotometricInterpretation": "MONOCHROME2" if samples == 1 else "RGB",
        "SamplesPerPixel": samples, "BurnedInAnnotation": "NO",
        "ImageType": ["DERIVED", "PRIMARY"],
    }
    if samples == 3:
        elements["PlanarConfiguration"] = 0
    return Content(elements, ExplicitVRLittleEndian, {"pixels_cleaned": True})


def _video(ds: Dataset, policy: TextPolicy, engine: Deidentifier, limits: Limits) -> Content:
    if _syntax(ds) not in _H264:
        raise DocumentRefusedError("video_unsupported", "only MPEG-4 AVC/H.264 video instances "
                                   "are checked for burned-in text; others are refused")
    stream = b"".join(generate_frames(ds.PixelData, number_of_frames=1))
    video = clean_video(stream, policy, ocr=_ocr(), clean_pixels=engine.plan.clean_pixels,
                        limits=limits)
    from pydicom.encaps import encapsulate

    elements: dict[str, Any] = {
        "PixelData": encapsulate([video.stream + (b"\0" if len(video.stream) % 2 else b"")],
                                 has_bot=False),
        "NumberOfFrames": video.frames, "Rows": video.rows, "Columns": video.columns,
        "PhotometricInterpretation": "YBR_PARTIAL_420", "BurnedInAnnotation": "NO",
    }
    return Content(elements, UID("1.2.840.10008.1.2.4.102"),
                   document_columns("video/mp4", None, round(video.duration, 3))
                   | {"pixels_cleaned": video.masked})


def before_deid(ds: Dataset, engine: Deidentifier, limits: Limits | None = None
                ) -> Content:
    """Clean the content of an already wrapped document; the study keys of every instance.

    For an instance that is no document, the returned content changes nothing in the
    dataset and carries the keyed study keys (:mod:`lake.documents._keys`) for its row.

    Raises
    ------
    DocumentRefusedError
        When the content is refused.
    """
    raw = ds.get_item(_SOP_CLASS)  # raw bytes: converting the element costs more than this
    value = raw.value if raw is not None else b""
    sop_class = UID((value.decode("ascii", "replace") if isinstance(value, bytes)
                     else str(value)).strip("\0 "))
    is_pdf = sop_class == ENCAPSULATED_PDF or (
        "EncapsulatedDocument" in ds
        and str(ds.get("MIMETypeOfEncapsulatedDocument", "")).lower() == "application/pdf")
    keys = study_keys(ds, engine)
    content = _content(ds, engine, sop_class, is_pdf, limits or Limits())
    if content is None:
        content = Content()
    content.columns.update(keys)
    return content


def _content(ds: Dataset, engine: Deidentifier, sop_class: UID, is_pdf: bool,
             limits: Limits) -> Content | None:
    if not (is_pdf or sop_class in _VL_IMAGES or sop_class in _VIDEOS):
        return None
    # The header's identifying words, as study_from_header finds them (its study modules
    # and keyed study UID are not needed here: the instance already carries its study).
    words, digits = identifiers_of(ds, engine) if "StudyInstanceUID" in ds else ((), ())
    policy = TextPolicy.for_engine(engine, words, digits)
    if is_pdf:
        return _pdf(ds, policy, engine, limits)
    if "PixelData" not in ds:
        return None
    if sop_class in _VIDEOS:
        return _video(ds, policy, engine, limits)
    return _vl_image(ds, policy, engine)

