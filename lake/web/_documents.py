"""Documents over DICOMweb: an Encapsulated PDF as ``application/pdf``, a video as ``video/mp4``.

A viewer shows a wrapped document by fetching it in the form a browser opens: OHIF asks for
the Encapsulated Document's BulkDataURI (the ``/metadata`` of an Encapsulated PDF always
names one, never inline bytes) and plays a video from the instance's ``/rendered`` URL in a
``<video>`` element (which asks for byte ranges). Both come from the lake's de-identified
instance through :func:`lake.export.document_bytes`, as ``lake export documents`` writes
them: the PDF trimmed to its EncapsulatedDocumentLength, the H.264 stream in an MP4
container. The few most recently made are kept, so a video's range requests remux once.
"""

from __future__ import annotations

import io
import re
import threading
from collections import OrderedDict
from collections.abc import Sequence

from pydicom import dcmread
from starlette.requests import Request
from starlette.responses import Response

from lake._capture import capture
from lake.export import document_bytes
from lake.query import StoredInstance
from lake.web._media import MediaRange

__all__ = [
    "ENCAPSULATED_DOCUMENT",
    "DocumentCache",
    "document_kind",
    "document_response",
    "wanted_form",
]

ENCAPSULATED_DOCUMENT = "00420011"
PDF = "application/pdf"
MP4 = "video/mp4"
_ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"
# MPEG-4 AVC/H.264 transfer syntaxes (PS3.5 Table A-4): the stream goes into MP4 as it is.
_H264 = frozenset({"1.2.840.10008.1.2.4.102", "1.2.840.10008.1.2.4.103",
                   "1.2.840.10008.1.2.4.104", "1.2.840.10008.1.2.4.105",
                   "1.2.840.10008.1.2.4.106"})
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
_KEPT_BYTES = 256 * 2**20


def document_kind(item: StoredInstance) -> str | None:
    """``application/pdf``, ``video/mp4``, or None for an instance that is no document."""
    if item.sop_class_uid == _ENCAPSULATED_PDF:
        return PDF
    if item.transfer_syntax_uid in _H264:
        return MP4
    return None


def wanted_form(ranges: Sequence[MediaRange], kind: str) -> str | None:
    """How a request wants a document: ``single`` (the file itself), ``multipart`` (the file
    as the one part of ``multipart/related``), or None (it asks for something else: octets,
    an image)."""
    family = kind.split("/")[0] + "/*"
    for r in ranges:
        if r.type == kind or r.type in ("*/*", family):
            return "single"
        if r.type == "multipart/related" and r.part == kind:
            return "multipart"
        if r.type == "multipart/related" or r.type.startswith(("image/", "application/")):
            return None  # a form the caller prefers that is not the document
    return None


class DocumentCache:
    """The most recently made document files, at most ``max_bytes`` of them (thread-safe)."""

    def __init__(self, max_bytes: int = _KEPT_BYTES) -> None:
        self._max = max_bytes
        self._lock = threading.Lock()
        self._kept: OrderedDict[tuple[str, str], bytes] = OrderedDict()
        self._size = 0

    def get(self, item: StoredInstance, kind: str, instance: bytes | None = None) -> bytes:
        """The document of ``item`` as a ``kind`` file, made from ``instance`` (Part-10 bytes)
        unless kept.

        Raises
        ------
        KeyError
            If it is not kept and ``instance`` is None.
        """
        key = (item.sop_uid + "|" + (item.pixel_hash or ""), kind)
        with self._lock:
            found = self._kept.get(key)
            if found is not None:
                self._kept.move_to_end(key)
                return found
        if instance is None:
            raise KeyError(key)
        with capture():
            data = document_bytes(dcmread(io.BytesIO(instance)), kind)
        with self._lock:
            if key not in self._kept and len(data) <= self._max:
                self._kept[key] = data
                self._size += len(data)
                while self._size > self._max:
                    _, dropped = self._kept.popitem(last=False)
                    self._size -= len(dropped)
        return data


def document_response(request: Request, data: bytes, kind: str) -> Response:
    """The document, honouring one ``Range: bytes=`` range (a ``<video>`` element seeks)."""
    headers = {"Accept-Ranges": "bytes"}
    match = _RANGE.match(request.headers.get("range", "").replace(" ", ""))
    if match is None or not (match.group(1) or match.group(2)):
        return Response(data, media_type=kind, headers=headers)
    size = len(data)
    if match.group(1):
        start = int(match.group(1))
        end = min(int(match.group(2)), size - 1) if match.group(2) else size - 1
    else:  # the last N bytes
        start, end = max(0, size - int(match.group(2))), size - 1
    if start >= size or start > end:
        return Response(b"", status_code=416, headers={"Content-Range": f"bytes */{size}"})
    headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    return Response(data[start:end + 1], status_code=206, media_type=kind, headers=headers)
