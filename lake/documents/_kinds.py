"""What a file is, by its content: the document kinds the lake wraps as DICOM.

The extension is never trusted (a ``.pdf`` may be a JPEG, a scan may have no extension at
all); the first bytes are. DICOM is recognised first, because a DICOM file may carry a
TIFF header in its 128-byte preamble (dual-personality files).
"""

from __future__ import annotations

import struct
from enum import StrEnum

__all__ = ["DocumentKind", "sniff"]


class DocumentKind(StrEnum):
    """A kind of related document, named as the lake reports it (quarantine, catalog)."""

    PDF = "pdf"
    JPEG = "jpeg"
    PNG = "png"
    BMP = "bmp"
    TIFF = "tiff"
    AVI = "avi"
    MP4 = "mp4"
    MOV = "mov"

    @property
    def is_image(self) -> bool:
        """A still image (photograph, scan)."""
        return self in _IMAGES

    @property
    def is_video(self) -> bool:
        """A video container."""
        return self in _VIDEOS

    @property
    def mime_type(self) -> str:
        """The MIME type of the original file."""
        return _MIME[self]


_IMAGES = frozenset({DocumentKind.JPEG, DocumentKind.PNG, DocumentKind.BMP, DocumentKind.TIFF})
_VIDEOS = frozenset({DocumentKind.AVI, DocumentKind.MP4, DocumentKind.MOV})
_MIME = {
    DocumentKind.PDF: "application/pdf",
    DocumentKind.JPEG: "image/jpeg",
    DocumentKind.PNG: "image/png",
    DocumentKind.BMP: "image/bmp",
    DocumentKind.TIFF: "image/tiff",
    DocumentKind.AVI: "video/x-msvideo",
    DocumentKind.MP4: "video/mp4",
    DocumentKind.MOV: "video/quicktime",
}
# BITMAPCOREHEADER, BITMAPINFOHEADER, its v2/v3 extensions, OS/2 v2, BITMAPV4HEADER, V5.
_BMP_HEADER_SIZES = frozenset({12, 40, 52, 56, 64, 108, 124})
# QuickTime files written before the ISO base media format may start without 'ftyp'.
_QUICKTIME_ATOMS = frozenset({b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot"})
_QUICKTIME_BRANDS = frozenset({b"qt  "})
_PDF_WINDOW = 1024  # PDF readers accept the header anywhere in the first 1024 bytes


def _is_dicom(head: bytes) -> bool:
    return head[128:132] == b"DICM"


def _bmp(head: bytes) -> bool:
    if len(head) < 26 or head[:2] != b"BM":
        return False
    reserved = head[6:10]
    (header_size,) = struct.unpack_from("<I", head, 14)
    return reserved == b"\0\0\0\0" and header_size in _BMP_HEADER_SIZES


def _iso_media(head: bytes) -> DocumentKind | None:
    if len(head) < 12:
        return None
    box = head[4:8]
    if box == b"ftyp":
        brand = head[8:12]
        return DocumentKind.MOV if brand in _QUICKTIME_BRANDS else DocumentKind.MP4
    (size,) = struct.unpack_from(">I", head, 0)
    if box in _QUICKTIME_ATOMS and (size in (0, 1) or size >= 8):
        return DocumentKind.MOV
    return None


def sniff(head: bytes) -> DocumentKind | None:
    """The document kind of a file from its first bytes, or None (DICOM, or not a document).

    Parameters
    ----------
    head : bytes
        The start of the file; 1,024 bytes are enough (fewer may miss a PDF whose header
        follows junk).

    Returns
    -------
    DocumentKind or None
        None for DICOM files (a ``DICM`` prefix) and for everything that is none of the kinds.

    Examples
    --------
    >>> sniff(b"%PDF-1.7\\n...")
    <DocumentKind.PDF: 'pdf'>
    >>> sniff(b"\\xff\\xd8\\xff\\xe0\\x00\\x10JFIF\\x00") is DocumentKind.JPEG
    True
    >>> sniff(b"plain text") is None
    True
    """
    if _is_dicom(head):
        return None
    if head.startswith(b"\xff\xd8\xff"):
        return DocumentKind.JPEG
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return DocumentKind.PNG
    if head[:4] in (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+"):
        return DocumentKind.TIFF
    if _bmp(head):
        return DocumentKind.BMP
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return DocumentKind.AVI
    media = _iso_media(head)
    if media is not None:
        return media
    if b"%PDF-" in head[:_PDF_WINDOW]:
        return DocumentKind.PDF
    return None
