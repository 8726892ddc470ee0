"""An incremental ``multipart/related`` reader (RFC 2046/2387) with size limits.

Bytes are fed as they arrive; complete parts come out. A part larger than the limit is
not buffered: its bytes are counted and dropped and it comes out marked too large.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lake._errors import LakeError

__all__ = ["MalformedMultipartError", "MultipartReader", "Part"]

_MAX_HEADERS = 16 * 1024


class MalformedMultipartError(LakeError, ValueError):
    """The body is not a well-formed multipart message (HTTP 400)."""


@dataclass
class Part:
    """One body part: its headers (lower-case names), its bytes, or the fact it was too large."""

    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    size: int = 0
    too_large: bool = False


class MultipartReader:
    """Feed bytes with :meth:`feed`; call :meth:`finish` at the end of the body.

    Parameters
    ----------
    boundary : str
        The boundary parameter of the Content-Type.
    max_part_bytes : int
        Larger parts are dropped (marked ``too_large``).
    """

    def __init__(self, boundary: str, max_part_bytes: int) -> None:
        if not boundary or len(boundary) > 200:
            raise MalformedMultipartError("the multipart boundary is missing or too long")
        self._delimiter = b"\r\n--" + boundary.encode("latin-1")
        self._buffer = b"\r\n"  # so the first boundary looks like every other delimiter
        self._state = "preamble"
        self._max = max_part_bytes
        self._part = Part()
        self._chunks: list[bytes] = []
        self.done = False

    def feed(self, data: bytes) -> list[Part]:
        """Add bytes; the parts completed by them.

        Raises
        ------
        MalformedMultipartError
            If the bytes cannot be part of a well-formed message.
        """
        self._buffer += data
        out: list[Part] = []
        while True:
            if self._state == "preamble":
                index = self._buffer.find(self._delimiter)
                if index < 0:
                    self._buffer = self._buffer[-len(self._delimiter):]
                    return out
                self._buffer = self._buffer[index + len(self._delimiter):]
                self._state = "after"
            elif self._state == "after":
                stripped = self._buffer.lstrip(b" \t")
                if len(stripped) < 2:
                    return out
                if stripped.startswith(b"--"):
                    self._state, self.done, self._buffer = "epilogue", True, b""
                    return out
                if not stripped.startswith(b"\r\n"):
                    raise MalformedMultipartError("a multipart boundary is not followed by CRLF")
                self._buffer = stripped[2:]
                self._state = "headers"
            elif self._state == "headers":
                index = self._buffer.find(b"\r\n\r\n")
                if self._buffer.startswith(b"\r\n"):
                    index, skip = 0, 2
                else:
                    skip = 4
                if index < 0:
                    if len(self._buffer) > _MAX_HEADERS:
                        raise MalformedMultipartError("a part's headers are too long")
                    return out
                self._part = Part(headers=_headers(self._buffer[:index]))
                self._chunks = []
                self._buffer = self._buffer[index + skip:]
                self._state = "body"
            elif self._state == "body":
                index = self._buffer.find(self._delimiter)
                if index < 0:
                    keep = len(self._delimiter) - 1
                    if len(self._buffer) > keep:
                        self._take(self._buffer[:-keep])
                        self._buffer = self._buffer[-keep:]
                    return out
                self._take(self._buffer[:index])
                self._buffer = self._buffer[index + len(self._delimiter):]
                if not self._part.too_large:
                    self._part.body = b"".join(self._chunks)
                self._chunks = []
                out.append(self._part)
                self._state = "after"
            else:  # epilogue: ignored
                self._buffer = b""
                return out

    def _take(self, data: bytes) -> None:
        self._part.size += len(data)
        if self._part.too_large:
            return
        if self._part.size > self._max:
            self._part.too_large = True
            self._chunks = []
            return
        self._chunks.append(data)

    def finish(self) -> None:
        """Check the message ended with its closing boundary.

        Raises
        ------
        MalformedMultipartError
            If the body ended early.
        """
        if not self.done:
            raise MalformedMultipartError(
                "the multipart body ended before its closing boundary; nothing after the last "
                "complete part was stored"
            )


def _headers(block: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in block.decode("latin-1").split("\r\n"):
        if not line.strip():
            continue
        name, sep, value = line.partition(":")
        if not sep or not name.strip():
            raise MalformedMultipartError("a part header is not 'Name: value'")
        out[name.strip().lower()] = value.strip()
    return out
