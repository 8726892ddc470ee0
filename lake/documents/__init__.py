"""Related documents: PDF reports, photographs and scans, videos, as de-identified DICOM.

A document file is recognised by its content (:func:`sniff`), belongs to a study
(:class:`Study`: from the DICOM files beside it, or from the lake by the study's UID), is
cleaned - metadata removed, identifying text removed from a PDF's content streams or the
PDF refused, burned-in text found by OCR in pixels refused or masked - and wrapped as a
standard instance (Encapsulated PDF, VL Photographic Image, Multi-frame Secondary Capture,
Video Photographic Image) with the study's Patient and Study modules, de-identified by the
same engine as the images. What every step does and refuses: ``docs/documents.md``.

Public contract::

    kind = sniff(data[:1024])                           # DocumentKind or None
    outcome = document_outcome(kind, data, study, ctx)  # lake.ingest.Accepted or Rejected
    content = before_deid(ds, engine)                    # an already wrapped instance
"""

from lake.documents._attach import attach
from lake.documents._hook import DocumentOptions, document_options, ingest_item
from lake.documents._image import CleanedImage, clean_image
from lake.documents._ingest import Wrapped, document_outcome, wrap_document
from lake.documents._kinds import DocumentKind, sniff
from lake.documents._limits import DocumentRefusedError, Limits
from lake.documents._ocr import Ocr, OcrWord
from lake.documents._pdf import CleanedPdf, clean_pdf, pdf_words
from lake.documents._study import FolderStudies, Study, study_from_header, study_from_lake
from lake.documents._text import TextPolicy
from lake.documents._video import CleanedVideo, clean_video, h264_to_mp4
from lake.documents._wrapped import Content, before_deid

__all__ = [
    "CleanedImage",
    "CleanedPdf",
    "CleanedVideo",
    "Content",
    "DocumentKind",
    "DocumentOptions",
    "DocumentRefusedError",
    "FolderStudies",
    "Limits",
    "Ocr",
    "OcrWord",
    "Study",
    "TextPolicy",
    "Wrapped",
    "attach",
    "before_deid",
    "clean_image",
    "clean_pdf",
    "clean_video",
    "document_options",
    "document_outcome",
    "h264_to_mp4",
    "ingest_item",
    "pdf_words",
    "sniff",
    "study_from_header",
    "study_from_lake",
    "wrap_document",
]
