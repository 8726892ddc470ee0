"""An incremental ``multipart/related`` reader (RFC 2046/2387) with size limits.

Bytes are fed as they arrive; complete parts come out. A part larger than the limit is
not buffered: its bytes are counted and dropped and it comes out marked too large.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lake._errors import LakeError

__all__ = ["MalformedMultipartError", "MultipartReader", "Part"]

_MAX_HEADERS = 16 * 1024
_MAX_PADDING = 1024  # transport padding after a delimiter
_MAX_PREAMBLE = 64 * 1024  # bytes before the first delimiter


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
        self._skipped = 0  # bytes of the current preamble/padding/headers already looked at
        self.done = False

    def feed(self, data: bytes) -> list[Part]:
        """Add bytes; the parts completed by them.

        Work and memory are linear in the bytes fed: every piece of the grammar that is
        buffered (preamble, transport padding after a delimiter, a part's headers) is bounded,
        and nothing is scanned twice.

        Raises
        ------
        MalformedMultipartError
            If the bytes cannot be part of a well-formed message, or a preamble, a
            delimiter's transport padding or a part's headers are longer than any client
            sends.
        """
        self._buffer += data
        out: list[Part] = []
        while True:
            if self._state == "preamble":
                index = self._buffer.find(self._delimiter)
                if index < 0:
                    keep = len(self._delimiter) - 1
                    self._skipped += max(0, len(self._buffer) - keep)
                    if self._skipped > _MAX_PREAMBLE:
                        raise MalformedMultipartError(
                            "no multipart boundary within the first "
                            f"{_MAX_PREAMBLE // 1024} KiB of the body")
                    self._buffer = self._buffer[-keep:]
                    return out
                self._buffer = self._buffer[index + len(self._delimiter):]
                self._state, self._skipped = "after", 0
            elif self._state == "after":
                # Transport padding (RFC 2046 5.1.1: linear white space) before the CRLF or the
                # closing "--": dropped as it arrives, at most _MAX_PADDING bytes.
                stripped = self._buffer.lstrip(b" \t")
                self._skipped += len(self._buffer) - len(stripped)
                self._buffer = stripped
                if self._skipped > _MAX_PADDING:
                    raise MalformedMultipartError("a multipart boundary is followed by more than "
                                                  f"{_MAX_PADDING} bytes of padding")
                if len(stripped) < 2:
                    return out
                if stripped.startswith(b"--"):
                    self._state, self.done, self._buffer = "epilogue", True, b""
                    return out
                if not stripped.startswith(b"\r\n"):
                    raise MalformedMultipartError("a multipart boundary is not followed by CRLF")
                self._buffer = stripped[2:]
                self._state, self._skipped = "headers", 0
            elif self._state == "headers":
                if self._buffer.startswith(b"\r\n"):
                    index, skip = 0, 2
                else:
                    # Search only what was not searched before (minus an end split in two).
                    index = self._buffer.find(b"\r\n\r\n", max(0, self._skipped - 3))
                    skip = 4
                if index < 0:
                    if len(self._buffer) > _MAX_HEADERS:
                        raise MalformedMultipartError("a part's headers are too long")
                    self._skipped = len(self._buffer)
                    return out
                self._part = Part(headers=_headers(self._buffer[:index]))
                self._chunks = []
                self._buffer = self._buffer[index + skip:]
                self._state, self._skipped = "body", 0
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
