"""PDF fonts as a text extractor needs them: character codes, their Unicode text and widths.

Covers simple fonts (Type1, TrueType, Type3, MMType1: one byte per code; ``/Encoding`` with
``/Differences``; ``/Widths``) and composite fonts (Type0: codes of the encoding CMap's
code space ranges, ``Identity-H/V`` two bytes; ``/W`` and ``/DW`` widths), with a
``/ToUnicode`` CMap whenever the font has one. A code that cannot be decoded becomes U+FFFD:
the word that holds it is then not in any vocabulary, so it is redacted (or the document
refused), never kept by mistake.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field

import pikepdf
import pikepdf.canvas

# pikepdf's table of Adobe glyph names (the names of the standard encodings and more).
_GLYPH_NAMES: dict[str, str] = pikepdf.canvas.CHARNAMES_TO_UNICODE  # type: ignore[attr-defined]

__all__ = ["Font", "Glyph", "load_font"]

UNKNOWN = "\ufffd"
_DEFAULT_WIDTH = 0.5  # text-space units per unit font size, when a font gives no widths
_MAX_CMAP = 4 << 20  # bytes of a CMap stream that are parsed at most


@dataclass(frozen=True)
class Glyph:
    """One character code shown by a text operator."""

    code: bytes
    text: str
    width: float  # horizontal displacement in text space per unit font size


def _glyph_name(name: str) -> str:
    """Unicode text of an Adobe glyph name (``eacute``, ``uni00E9``, ``f_f_i``...)."""
    if not name:
        return UNKNOWN
    known = _GLYPH_NAMES.get("/" + name)
    if known is not None:
        return known
    base = name.split(".", 1)[0]
    if base != name:
        return _glyph_name(base)
    if "_" in name:
        return "".join(_glyph_name(part) for part in name.split("_"))
    if re.fullmatch(r"uni([0-9A-Fa-f]{4})+", name):
        units = name[3:]
        try:
            return "".join(chr(int(units[i : i + 4], 16)) for i in range(0, len(units), 4))
        except ValueError:
            return UNKNOWN
    if re.fullmatch(r"u[0-9A-Fa-f]{4,6}", name):
        value = int(name[1:], 16)
        return chr(value) if value <= 0x10FFFF else UNKNOWN
    if len(name) == 1:
        return name
    return UNKNOWN


def _standard_table(name: str) -> list[str]:
    codec = {"/MacRomanEncoding": "mac_roman"}.get(name, "cp1252")
    table = []
    for code in range(256):
        try:
            table.append(bytes([code]).decode(codec))
        except UnicodeDecodeError:
            table.append(UNKNOWN)
    if name == "/StandardEncoding":
        table[0x27], table[0x60] = "\u2019", "\u2018"
    return table


# ---- CMaps -----------------------------------------------------------------------------

_CMAP_TOKEN = re.compile(rb"<([0-9A-Fa-f\s]*)>|\[|\]|/[^\s/<>\[\]()]+|[A-Za-z]+|-?\d+")


def _hex(data: bytes) -> bytes:
    text = re.sub(rb"\s", b"", data)
    if len(text) % 2:
        text += b"0"
    return bytes.fromhex(text.decode("ascii"))


def _utf16(data: bytes) -> str:
    return data.decode("utf-16-be", "replace") if len(data) % 2 == 0 else UNKNOWN


@dataclass
class _CMap:
    ranges: list[tuple[bytes, bytes]] = field(default_factory=list)
    chars: dict[bytes, str] = field(default_factory=dict)
    cids: dict[bytes, int] = field(default_factory=dict)


def _tokens(data: bytes) -> Iterator[tuple[str, bytes]]:
    for m in _CMAP_TOKEN.finditer(data):
        if m.group(1) is not None:
            yield "hex", _hex(m.group(1))
        else:
            token = m.group(0)
            yield ("num" if token.lstrip(b"-").isdigit() else "word"), token


def _parse_cmap(data: bytes) -> _CMap:
    cmap = _CMap()
    tokens = list(_tokens(data[:_MAX_CMAP]))
    i, n = 0, len(tokens)
    section = b""
    while i < n:
        kind, value = tokens[i]
        if kind == "word" and value.startswith(b"begin"):
            section = value[5:]
            i += 1
            continue
        if kind == "word" and value.startswith(b"end"):
            section = b""
            i += 1
            continue
        if section == b"codespacerange" and kind == "hex" and i + 1 < n:
            cmap.ranges.append((value, tokens[i + 1][1]))
            i += 2
        elif section == b"bfchar" and kind == "hex" and i + 1 < n:
            dst_kind, dst = tokens[i + 1]
            cmap.chars[value] = _utf16(dst) if dst_kind == "hex" else _glyph_name(
                dst.decode("latin-1").lstrip("/")
            )
            i += 2
        elif section == b"bfrange" and kind == "hex" and i + 2 < n:
            high = tokens[i + 1][1]
            i = _bfrange(cmap, value, high, tokens, i + 2)
        elif section in (b"cidchar", b"cidrange") and kind == "hex":
            step = 2 if section == b"cidchar" else 3
            if i + step - 1 < n and tokens[i + step - 1][0] == "num":
                first = int(tokens[i + step - 1][1])
                high = tokens[i + 1][1] if section == b"cidrange" else value
                for offset, code in enumerate(_code_range(value, high)):
                    cmap.cids[code] = first + offset
            i += step
        else:
            i += 1
    return cmap


def _code_range(low: bytes, high: bytes, limit: int = 65536) -> Iterator[bytes]:
    if len(low) != len(high) or not low:
        return
    start, end = int.from_bytes(low, "big"), int.from_bytes(high, "big")
    for value in range(start, min(end, start + limit - 1) + 1):
        yield value.to_bytes(len(low), "big")


def _bfrange(cmap: _CMap, low: bytes, high: bytes, tokens: list[tuple[str, bytes]],
             i: int) -> int:
    kind, dst = tokens[i]
    if kind == "hex":
        base = int.from_bytes(dst, "big") if dst else 0
        width = max(len(dst), 2)
        for offset, code in enumerate(_code_range(low, high)):
            cmap.chars[code] = _utf16((base + offset).to_bytes(width, "big"))
        return i + 1
    if dst == b"[":
        i += 1
        codes = _code_range(low, high)
        while i < len(tokens) and tokens[i][1] != b"]":
            following = next(codes, None)
            if following is not None and tokens[i][0] == "hex":
                cmap.chars[following] = _utf16(tokens[i][1])
            i += 1
        return i + 1
    return i + 1


# ---- fonts -----------------------------------------------------------------------------


@dataclass
class Font:
    """A font resource, ready to split strings into glyphs."""

    composite: bool
    code_lengths: tuple[int, ...]
    ranges: list[tuple[bytes, bytes]]
    to_unicode: dict[bytes, str]
    simple_table: list[str]
    widths: dict[int, float]
    default_width: float
    widths_known: bool
    cids: dict[bytes, int]

    def glyphs(self, data: bytes) -> list[Glyph]:
        """The glyphs of a string operand, in order."""
        out: list[Glyph] = []
        i, n = 0, len(data)
        while i < n:
            length = self._code_length(data, i)
            code = data[i : i + length]
            i += length
            text = self.to_unicode.get(code)
            if text is None:
                text = self.simple_table[code[0]] if not self.composite else UNKNOWN
            number = self.cids.get(code, int.from_bytes(code, "big"))
            out.append(Glyph(code, text, self.widths.get(number, self.default_width)))
        return out

    def _code_length(self, data: bytes, i: int) -> int:
        if not self.composite:
            return 1
        for length in self.code_lengths:
            code = data[i : i + length]
            if len(code) < length:
                break
            for low, high in self.ranges:
                if len(low) == length and low <= code <= high:
                    return length
        return min(2, len(data) - i)


def _stream_bytes(obj: pikepdf.Object | None) -> bytes | None:
    if isinstance(obj, pikepdf.Stream):
        try:
            return bytes(obj.read_bytes())[:_MAX_CMAP]
        except pikepdf.PdfError:
            return None
    return None


def _simple_widths(font: pikepdf.Dictionary, scale: float) -> dict[int, float]:
    widths = font.get("/Widths")
    first = font.get("/FirstChar")
    if not isinstance(widths, pikepdf.Array) or first is None:
        return {}
    out: dict[int, float] = {}
    start = int(first)
    for offset, w in enumerate(widths):
        try:
            out[start + offset] = float(w) * scale
        except (TypeError, ValueError):
            continue
    return out


def _cid_widths(descendant: pikepdf.Dictionary) -> dict[int, float]:
    spec = descendant.get("/W")
    out: dict[int, float] = {}
    if not isinstance(spec, pikepdf.Array):
        return out
    items = list(spec)
    i = 0
    while i < len(items):
        try:
            first = int(items[i])
            following = items[i + 1]
            if isinstance(following, pikepdf.Array):
                for offset, w in enumerate(following):
                    out[first + offset] = float(w) / 1000
                i += 2
            else:
                last, width = int(following), float(items[i + 2]) / 1000
                for cid in range(first, min(last, first + 65535) + 1):
                    out[cid] = width
                i += 3
        except (IndexError, TypeError, ValueError):
            break
    return out


def _encoding_table(font: pikepdf.Dictionary) -> list[str]:
    encoding = font.get("/Encoding")
    if isinstance(encoding, pikepdf.Name):
        return _standard_table(str(encoding))
    table = _standard_table("/StandardEncoding" if font.get("/Subtype") == "/Type1"
                            else "/WinAnsiEncoding")
    if isinstance(encoding, pikepdf.Dictionary):
        base = encoding.get("/BaseEncoding")
        if isinstance(base, pikepdf.Name):
            table = _standard_table(str(base))
        differences = encoding.get("/Differences")
        if isinstance(differences, pikepdf.Array):
            code = 0
            for item in differences:
                if isinstance(item, pikepdf.Name):
                    if 0 <= code < 256:
                        table[code] = _glyph_name(str(item)[1:])
                    code += 1
                else:
                    try:
                        code = int(item)
                    except (TypeError, ValueError):
                        continue
    return table


def load_font(font: pikepdf.Object) -> Font:
    """A :class:`Font` from a font resource dictionary (anything else gives a lenient font)."""
    if not isinstance(font, pikepdf.Dictionary):
        return Font(False, (1,), [], {}, _standard_table("/WinAnsiEncoding"), {},
                    _DEFAULT_WIDTH, False, {})
    to_unicode: dict[bytes, str] = {}
    ranges: list[tuple[bytes, bytes]] = []
    data = _stream_bytes(font.get("/ToUnicode"))
    if data is not None:
        parsed = _parse_cmap(data)
        to_unicode, ranges = parsed.chars, parsed.ranges
    if font.get("/Subtype") == "/Type0":
        encoding = font.get("/Encoding")
        cids: dict[bytes, int] = {}
        encoding_data = _stream_bytes(encoding)
        if encoding_data is not None:
            parsed = _parse_cmap(encoding_data)
            ranges = parsed.ranges or ranges
            cids = parsed.cids
        if not ranges:
            ranges = [(b"\x00\x00", b"\xff\xff")]
        descendants = font.get("/DescendantFonts")
        descendant = descendants[0] if isinstance(descendants, pikepdf.Array) and len(
            descendants) else pikepdf.Dictionary()
        widths = _cid_widths(descendant) if isinstance(descendant, pikepdf.Dictionary) else {}
        dw = descendant.get("/DW") if isinstance(descendant, pikepdf.Dictionary) else None
        default = float(dw) / 1000 if dw is not None else 1.0
        lengths = tuple(sorted({len(low) for low, _ in ranges})) or (2,)
        return Font(True, lengths, ranges, to_unicode, [UNKNOWN] * 256, widths, default,
                    True, cids)
    scale = 1 / 1000
    if font.get("/Subtype") == "/Type3":
        matrix = font.get("/FontMatrix")
        try:
            scale = float(matrix[0]) if isinstance(matrix, pikepdf.Array) else 0.001
        except (TypeError, ValueError):
            scale = 0.001
    widths = _simple_widths(font, scale)
    return Font(False, (1,), ranges, to_unicode, _encoding_table(font), widths,
                _DEFAULT_WIDTH if not widths else 0.0, bool(widths), {})
