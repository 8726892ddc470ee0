"""What a file holds, from its bytes: DICOM, plainly not a medical image, or to be tried.

Ingest tries every file as DICOM unless it is *plainly* something else, decided from content,
never from a name. The test is conservative by construction: an instance the lake can ingest
always holds a zero byte (the tag of SOP Class UID, (0008,0016), is ``08 00 16 00`` or
``00 08 00 16``, and ingest refuses an instance without it), so a file without any zero byte
cannot be one; text (notes, README, CSV, JSON, scripts) has none. NIfTI images are recognised
by their header, gzipped or not.

Documents (PDF, photographs, scans, videos) are never called plainly not medical: they are
:attr:`ContentKind.UNKNOWN` here, and :func:`lake.documents.sniff` is the classifier of
documents. Every picture and video format holds zero bytes in its header; a PDF may hold none,
so a file with a PDF header is never text.
"""

from __future__ import annotations

import enum
import zlib

__all__ = ["NOT_MEDICAL", "ContentKind", "sniff"]


class ContentKind(enum.StrEnum):
    """What a file holds."""

    DICOM = "dicom"
    """A DICOM Part-10 file (``DICM`` after the 128-byte preamble)."""
    UNKNOWN = "unknown"
    """Anything else (DICOM without a preamble, a document...): tried."""
    TEXT = "text"
    """Text without a zero byte: notes, README, CSV, scripts (JSON has its own kind)."""
    JSON = "json"
    NIFTI = "nifti"
    """A NIfTI-1 or NIfTI-2 image, gzipped or not."""


NOT_MEDICAL = frozenset({ContentKind.TEXT, ContentKind.JSON, ContentKind.NIFTI})
"""Kinds that file ingest skips and counts (``strict`` quarantines them instead)."""

_NIFTI1_MAGICS = (b"n+1\0", b"ni1\0")
_NIFTI2_MAGICS = (b"n+2\0", b"ni2\0")
_GZIP = b"\x1f\x8b"
_NIFTI_HEADER = 544  # NIfTI-2's header; NIfTI-1's is 348
_PDF_WINDOW = 1024  # PDF readers accept the header anywhere in the first 1,024 bytes


def _nifti(head: bytes) -> bool:
    if len(head) >= 348 and head[344:348] in _NIFTI1_MAGICS:
        return head[:4] in (b"\x5c\x01\x00\x00", b"\x00\x00\x01\x5c")  # sizeof_hdr 348
    if len(head) >= 12 and head[4:8] in _NIFTI2_MAGICS:
        return head[:4] in (b"\x1c\x02\x00\x00", b"\x00\x00\x02\x1c")  # sizeof_hdr 540
    return False


def _gunzipped_head(data: bytes) -> bytes:
    """The first bytes of a gzip stream's content (b'' when it is not one)."""
    try:
        return zlib.decompressobj(wbits=31).decompress(data[:65536], _NIFTI_HEADER)
    except zlib.error:
        return b""


def _text(data: bytes) -> ContentKind | None:
    if not data or b"\0" in data or b"%PDF-" in data[:_PDF_WINDOW]:
        return None
    first = data.lstrip(b"\xef\xbb\xbf \t\r\n")[:1]  # after a UTF-8 byte order mark, blanks
    return ContentKind.JSON if first in (b"{", b"[") else ContentKind.TEXT


def sniff(data: bytes) -> ContentKind:
    """The kind of content in ``data`` (a whole file).

    Examples
    --------
    >>> sniff(b"Patient was scanned twice.\\n")
    <ContentKind.TEXT: 'text'>
    >>> sniff(bytes(128) + b"DICM" + bytes(64))
    <ContentKind.DICOM: 'dicom'>
    >>> sniff(b"\\x08\\x00\\x05\\x00CS\\x0a\\x00ISO_IR 100")
    <ContentKind.UNKNOWN: 'unknown'>
    """
    if data[128:132] == b"DICM":
        return ContentKind.DICOM  # even when the preamble makes it look like something else
    if _nifti(data) or (data[:2] == _GZIP and _nifti(_gunzipped_head(data))):
        return ContentKind.NIFTI
    return _text(data) or ContentKind.UNKNOWN
