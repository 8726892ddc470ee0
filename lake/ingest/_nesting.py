"""How deep sequences nest in a dataset, found without recursion and before anything recurses.

pydicom parses and walks nested sequences recursively: past about 250 levels its reader raises
RecursionError (its writer, which also wraps an error once per level, is never given a
sequence: ``lake/ingest/_encode.py``). Ingest therefore refuses a dataset whose sequences nest
deeper than ``ReadLimits.max_sequence_depth`` before de-identifying it.

Sequences still in their raw bytes are scanned with an explicit stack; a sequence or item whose
defined length is too short to hold the remaining levels (16 bytes a level at least) is skipped
unread, so the scan costs little beyond very long sequences.
"""

from __future__ import annotations

import struct

from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset

__all__ = ["deeper_than"]

_UNDEFINED = 0xFFFFFFFF
_ITEM = 0xFFFEE000
_ITEM_END = 0xFFFEE00D
_SEQUENCE_END = 0xFFFEE0DD
_LEVEL = 16  # an item header (8 bytes) and the header of the sequence inside it (8 or 12)
LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN",
                      b"UR", b"UT", b"UV"})  # pydicom's EXPLICIT_VR_LENGTH_32


class _TooDeepError(Exception):
    """The limit is exceeded (unwinds the scan)."""


def _is_sequence(tag: int, vr: bytes | None, length: int, data: bytes, at: int,
                 little: bool) -> bool:
    if vr is not None and vr != b"UN":
        return vr == b"SQ"
    if length == _UNDEFINED:
        return True  # pydicom reads an undefined-length UN or implicit element as a sequence
    try:
        if dictionary_VR(tag) == "SQ":
            return True
    except KeyError:
        pass
    if length >= 8 and at + 4 <= len(data):  # items inside: read as one by the lenient
        group, element = struct.unpack_from("<HH" if little else ">HH", data, at)
        return bool((group << 16 | element) == _ITEM)
    return False


def _scan(data: bytes, depth: int, limit: int, implicit: bool, little: bool) -> None:
    """Raise _TooDeepError when the sequence value ``data`` (at nesting ``depth``) nests too deep."""
    header = struct.Struct("<HHI" if little else ">HHI")
    short = struct.Struct("<HH2sH" if little else ">HH2sH")
    u32 = struct.Struct("<I" if little else ">I")
    # Frames: (kind, end or None for undefined length, depth, implicit VR). Kind "s": items of
    # a sequence, kind "i": elements of an item. What a UN element holds is implicit VR.
    stack: list[tuple[str, int | None, int, bool]] = [("s", len(data), depth, implicit)]
    pos = 0
    size = len(data)
    while stack:
        kind, end, level, implicit = stack[-1]
        if end is not None and pos >= end:
            stack.pop()
            continue
        if pos + 8 > size:
            return  # truncated: the parser will say so
        group, element, length = header.unpack_from(data, pos)
        tag = group << 16 | element
        if kind == "s":
            if tag == _SEQUENCE_END:
                pos += 8
                stack.pop()
                continue
            if tag != _ITEM:
                return  # not an item: the parser will refuse or skip it
            pos += 8
            if length == _UNDEFINED:
                stack.append(("i", None, level, implicit))
            elif length < _LEVEL * (limit - level):
                pos += length  # too short to nest past the limit
            else:
                stack.append(("i", pos + length, level, implicit))
            continue
        if tag == _ITEM_END:
            pos += 8
            stack.pop()
            continue
        vr: bytes | None = None
        value_at = pos + 8
        if not implicit:
            _g, _e, vr, short_length = short.unpack_from(data, pos)
            if vr in LONG_VRS:
                if pos + 12 > size:
                    return
                length = u32.unpack_from(data, pos + 8)[0]
                value_at = pos + 12
            else:
                length = short_length
        if _is_sequence(tag, vr, length, data, value_at, little):
            if level + 1 > limit:
                raise _TooDeepError
            inner = implicit or vr == b"UN"
            if length == _UNDEFINED:
                stack.append(("s", None, level + 1, inner))
                pos = value_at
                continue
            if length >= _LEVEL * (limit - level - 1):
                stack.append(("s", value_at + length, level + 1, inner))
                pos = value_at
                continue
        if length == _UNDEFINED:
            return  # an undefined-length value that is not a sequence: leave it to the parser
        pos = value_at + length


def _raw_sequence(elem: RawDataElement) -> bool:
    if elem.VR is not None and elem.VR != "UN":
        return bool(elem.VR == "SQ")
    value = elem.value or b""
    return _is_sequence(int(elem.tag), None if elem.VR is None else b"UN", elem.length, value, 0,
                        elem.is_little_endian)


def deeper_than(ds: Dataset, limit: int) -> bool:
    """Whether sequences in ``ds`` nest more than ``limit`` levels (a top-level sequence is 1).

    Parsed sequences are walked; sequences still in their raw bytes are scanned.
    """
    stack: list[tuple[Dataset, int]] = [(ds, 0)]
    try:
        while stack:
            current, level = stack.pop()
            room = _LEVEL * (limit - level - 1)  # a raw value shorter than this nests too little
            for elem in current._dict.values():
                if isinstance(elem, RawDataElement):
                    value = elem.value
                    if not isinstance(value, bytes) or len(value) < room:
                        continue
                    if not _raw_sequence(elem):
                        continue
                    if level + 1 > limit:
                        return True
                    _scan(value, level + 1, limit, elem.is_implicit_VR or elem.VR == "UN",
                          elem.is_little_endian)
                elif isinstance(elem, DataElement) and elem.VR == "SQ":
                    if level + 1 > limit:
                        return True
                    stack.extend((item, level + 1) for item in elem.value)
    except _TooDeepError:
        return True
    return False
