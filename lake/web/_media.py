"""Media types: parsing ``Accept`` (PS3.18 8.7) and writing ``multipart/related`` bodies."""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

__all__ = [
    "EXPLICIT_LE",
    "MediaRange",
    "frame_media_type",
    "multipart",
    "parse_accept",
]

EXPLICIT_LE = "1.2.840.10008.1.2.1"
_PARAM = re.compile(r'\s*;\s*([!#$%&\'*+.^_`|~0-9A-Za-z-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;,\s]*)')

# Compressed transfer syntaxes and the single-frame media types PS3.18 Table 8.7.3-5 gives them.
_FRAME_TYPES = {
    "1.2.840.10008.1.2.4.50": "image/jpeg",
    "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg",
    "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls",
    "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2",
    "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.4.92": "image/jpx",
    "1.2.840.10008.1.2.4.93": "image/jpx",
    "1.2.840.10008.1.2.4.201": "image/jphc",
    "1.2.840.10008.1.2.4.202": "image/jphc",
    "1.2.840.10008.1.2.4.203": "image/jphc",
}


def frame_media_type(transfer_syntax: str) -> str:
    """The media type of one frame stored in ``transfer_syntax``."""
    return _FRAME_TYPES.get(transfer_syntax, "application/octet-stream")


@dataclass(frozen=True)
class MediaRange:
    """One item of an Accept header.

    ``type`` is the (lower-case) media type; for ``multipart/related`` the part type is
    ``part``; ``transfer_syntax`` is the parameter's value (``*``, a UID) or None.
    """

    type: str
    part: str | None = None
    transfer_syntax: str | None = None
    q: float = 1.0
    params: dict[str, str] = field(default_factory=dict)

    @property
    def inner(self) -> str:
        """The media type of the parts (or of the whole body when not multipart)."""
        return self.part if self.type == "multipart/related" and self.part else self.type


def _split(header: str) -> Iterator[str]:
    depth, start = False, 0
    for i, ch in enumerate(header):
        if ch == '"':
            depth = not depth
        elif ch == "," and not depth:
            yield header[start:i]
            start = i + 1
    yield header[start:]


def parse_accept(header: str | None) -> list[MediaRange]:
    """The media ranges of an Accept header, most preferred first (q=0 dropped).

    Examples
    --------
    >>> [r.inner for r in parse_accept('multipart/related; type="application/dicom"; '
    ...                                 'transfer-syntax=*, */*;q=0.1')]
    ['application/dicom', '*/*']
    """
    if not header or not header.strip():
        return [MediaRange("*/*")]
    ranges: list[tuple[float, int, MediaRange]] = []
    for index, item in enumerate(_split(header)):
        text = item.strip()
        if not text:
            continue
        media, _, rest = text.partition(";")
        params = {
            m.group(1).lower(): m.group(2).strip('"') for m in _PARAM.finditer(";" + rest)
        }
        try:
            q = float(params.pop("q", "1"))
        except ValueError:
            q = 1.0
        if q <= 0:
            continue
        part = params.get("type")
        ranges.append((-q, index, MediaRange(
            media.strip().lower(), part.lower() if part else None,
            params.get("transfer-syntax"), q, params,
        )))
    return [r for _, _, r in sorted(ranges)]


def multipart(parts: Iterable[tuple[str, bytes]], boundary: str) -> Iterator[bytes]:
    """The body of a ``multipart/related`` response, one part at a time."""
    for content_type, body in parts:
        yield (
            f"--{boundary}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode("ascii")
        yield body
        yield b"\r\n"
    yield f"--{boundary}--\r\n".encode("ascii")


def new_boundary() -> str:
    """A random multipart boundary (it cannot occur in the parts by chance)."""
    return "lake-" + secrets.token_hex(16)
