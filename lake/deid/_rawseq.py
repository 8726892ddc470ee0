"""A fast path for sequences still in their raw bytes (explicit VR little endian).

pydicom parses a sequence into Dataset objects when it is first accessed; for sequences of
many small items (SourceImageSequence of 60 references, per-frame groups) that parsing and
the re-encoding cost more than the rest of the de-identification. When every element inside
a raw sequence needs only what this module can do on bytes (keep, remove, keyed UID, dummy,
zero-length or fixed value, walk a nested sequence) or what the engine does to one value
(:data:`VALUE_CODES`: date shifts and checks, text cleaning, pseudonyms, AE titles, given
as a callback), the sequence is rewritten directly; so is a private element where the plan
removes them all (``basic``: removed). Anything else (a private element otherwise, an
element without a dictionary entry, a value of VR UN, an odd encoding, a parse anomaly)
makes :func:`rewrite_sequence` return None and
the engine takes the general path: the fast path can only be faster, never different
(``tests/test_deid_engine.py`` compares both on every file it can find).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from struct import Struct

from lake.deid import _plan as _p
from lake.deid._uids import well_formed_uids
from lake.deid._values import decode, dummy_bytes

__all__ = ["VALUE_CODES", "ValueFunction", "encode_element", "encode_items", "rewrite_sequence",
           "scan_values"]

_HEADER = Struct("<HHI")
_SHORT = Struct("<HH2sH")
_LONG = Struct("<HH2s2xI")
_U32 = Struct("<I")
_U16 = Struct("<H")
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN",
                       b"UR", b"UT", b"UV"})
_UNDEFINED = 0xFFFFFFFF

_DROPPED = _p.Op(_p.REMOVE, "X", "")  # a private element where the plan drops them all

VALUE_CODES = frozenset({_p.PSEUDONYM, _p.CLEAN_TEXT, _p.AE_PSEUDO, _p.SHIFT_DA, _p.SHIFT_DT,
                         _p.CHECK_DA, _p.CHECK_DT, _p.CHECK_TM, _p.CHECK_AS, _p.CHECK_TZ})
"""Codes whose new value the engine computes from the old one (:data:`ValueFunction`)."""

ValueFunction = Callable[[_p.Op, str, bytes, Counter[str]], "bytes | bool | None"]
"""``(op, vr, value, actions) -> new value``: unpadded bytes, True (unchanged) or None
(removed); the action taken is counted in ``actions``."""


# The rewriter and the scanner below each parse item and element headers inline: calling a
# shared parser per item and per element made de-identification of vendor files with long
# reference sequences 5-12% slower (measured), on the path that exists only to be fast.


class _NotFastError(Exception):
    """The fast path does not apply; the caller takes the general path."""


class _Rewriter:
    def __init__(self, data: bytes, tables: tuple[Mapping[int, _p.Op], ...],
                 uid: Callable[[str], str], encodings: list[str],
                 value: ValueFunction | None, drop_private: bool) -> None:
        self.data = data
        self.value = value
        self.drop_private = drop_private
        self.tables = tables
        self.uid = uid
        self.encodings = encodings
        self.actions: Counter[str] = Counter()

    def sequence(self, pos: int, end: int | None, mode: int) -> tuple[bytes, int]:
        """Items from ``pos`` to ``end`` (or to a sequence delimiter): (new bytes, next pos)."""
        data = self.data
        out = bytearray()
        while True:
            if end is not None and pos == end:
                return bytes(out), pos
            if pos + 8 > len(data) or (end is not None and pos + 8 > end):
                raise _NotFastError
            group, element, length = _HEADER.unpack_from(data, pos)
            pos += 8
            if group != 0xFFFE:
                raise _NotFastError
            if element == 0xE0DD and end is None:
                return bytes(out), pos
            if element != 0xE000:
                raise _NotFastError
            item_end = None if length == _UNDEFINED else pos + length
            body, pos = self.item(pos, item_end, mode)
            out += _HEADER.pack(0xFFFE, 0xE000, len(body))
            out += body

    def item(self, pos: int, end: int | None, mode: int) -> tuple[bytes, int]:
        data = self.data
        table = self.tables[mode]
        out = bytearray()
        while True:
            if end is not None and pos == end:
                return bytes(out), pos
            if pos + 8 > len(data) or (end is not None and pos + 8 > end):
                raise _NotFastError
            group, element, vr, short = _SHORT.unpack_from(data, pos)
            if group == 0xFFFE and element == 0xE00D and end is None:
                return bytes(out), pos + 8
            tag = (group << 16) | element
            if vr in _LONG_VRS:
                (length,) = _U32.unpack_from(data, pos + 8)
                start = pos + 12
            elif vr.isalpha() and vr.isupper():
                length, start = short, pos + 8
            else:
                raise _NotFastError
            op = table.get(tag)
            if group & 1:
                if op is not None or not self.drop_private or length == _UNDEFINED:
                    raise _NotFastError  # a private element the general path must judge
                # The plan removes every private element: removed below (bounds checked,
                # one X each, creators included), as the general path's walk removes it.
                op = _DROPPED
            elif op is None:
                raise _NotFastError  # masked or unknown: the general path knows
            code = op.code
            if length == _UNDEFINED:
                if vr != b"SQ" or code not in (_p.RECURSE, _p.REMOVE):
                    raise _NotFastError
                nested, after = self.sequence(start, None, self._child(op, mode))
                if code == _p.REMOVE:
                    self.actions["X"] += 1
                else:
                    out += _LONG.pack(group, element, b"SQ", len(nested)) + nested
                    self._count(op)
                pos = after
                continue
            after = start + length
            if after > len(data) or (end is not None and after > end):
                raise _NotFastError
            if code == _p.K_SILENT and vr != b"SQ":
                out += data[pos:after]
            elif (code == _p.KEEP and vr != b"SQ") or (
                code == _p.CHECK_UI and vr == b"UI" and well_formed_uids(data[start:after])
            ):
                out += data[pos:after]
                self._count(op)
            elif code == _p.REMOVE:
                self.actions["X"] += 1
            elif code == _p.UID and vr == b"UI":
                out += self._uid(group, element, data[start:after])
            elif code in (_p.DUMMY, _p.BLANK, _p.LITERAL) and vr not in (b"SQ", b"UN"):
                out += self._replace(op, group, element, vr, data[start:after])
            elif vr == b"SQ" and (code == _p.BLANK or (code == _p.DUMMY and not length)):
                # As the general path: blanked to an empty sequence; an empty one stays.
                self.actions["Z"] += 1
                out += _LONG.pack(group, element, b"SQ", 0)
            elif code == _p.RECURSE and vr == b"SQ":
                nested, _ = self.sequence(start, after, self._child(op, mode))
                out += _LONG.pack(group, element, b"SQ", len(nested)) + nested
                self._count(op)
            elif code in VALUE_CODES and self.value is not None and vr not in (b"SQ", b"UN"):
                new = self.value(op, vr.decode(), data[start:after], self.actions)
                if new is True:
                    out += data[pos:after]
                elif isinstance(new, bytes):  # None: removed
                    out += encode_element(group, element, vr, new)
            else:
                raise _NotFastError
            pos = after

    @staticmethod
    def _child(op: _p.Op, mode: int) -> int:
        return mode if op.mode == _p.INHERIT else op.mode

    def _count(self, op: _p.Op) -> None:
        if op.letter:
            self.actions[op.letter] += 1

    def _replace(self, op: _p.Op, group: int, element: int, vr: bytes, value: bytes) -> bytes:
        """Dummy, zero-length or fixed value, exactly as the general path writes them."""
        if op.code == _p.BLANK or (op.code == _p.DUMMY and not value.strip(b"\0 ")):
            self.actions["Z"] += 1
            new = b"" if op.code == _p.BLANK else value
        else:
            self.actions["D"] += 1
            new = op.literal if op.code == _p.LITERAL else dummy_bytes(vr.decode())
        return encode_element(group, element, vr, new)

    def _uid(self, group: int, element: int, value: bytes) -> bytes:
        text = decode(value, self.encodings).rstrip("\0 ")
        if not text.strip("\0 "):
            self.actions["Z"] += 1
            return _SHORT.pack(group, element, b"UI", len(value)) + value
        new = "\\".join(self.uid(v.strip("\0 ")) if v.strip("\0 ") else ""
                        for v in text.split("\\")).encode("ascii")
        if len(new) % 2:
            new += b"\0"
        self.actions["U"] += 1
        return _SHORT.pack(group, element, b"UI", len(new)) + new


def encode_element(group: int, element: int, vr: bytes, value: bytes) -> bytes:
    """One element, explicit VR little endian, its value padded as the engine pads it."""
    if len(value) % 2:
        value += b"\0" if vr == b"UI" else b" "
    if vr in _LONG_VRS:
        return _LONG.pack(group, element, vr, len(value)) + value
    return _SHORT.pack(group, element, vr, len(value)) + value


def encode_items(items: list[bytes]) -> bytes:
    """Items (their encoded elements) as a sequence value with defined lengths."""
    return b"".join(_HEADER.pack(0xFFFE, 0xE000, len(body)) + body for body in items)


def rewrite_sequence(
    data: bytes,
    tables: tuple[Mapping[int, _p.Op], ...],
    mode: int,
    uid: Callable[[str], str],
    encodings: list[str],
    value: ValueFunction | None = None,
    *,
    drop_private: bool = False,
) -> tuple[bytes, Counter[str]] | None:
    """The items of a defined-length raw sequence, de-identified, or None.

    Parameters
    ----------
    data : bytes
        The raw value (items) of a sequence encoded explicit VR little endian.
    tables : tuple of Mapping
        The plan's per-mode operation tables.
    mode : int
        The walk mode of the items.
    uid : callable
        The engine's keyed UID function.
    encodings : list of str
        The dataset's character sets (to read UIDs exactly as the general path does).
    value : callable, optional
        The engine's new value for the codes of :data:`VALUE_CODES`; without it, an element
        with such a code makes the sequence take the general path.
    drop_private : bool, default False
        Whether the plan removes every private element (no safe private attribute, private
        elements removed): then a private element of defined length is removed here, with
        the general path's action (``X``); otherwise it sends the sequence there.

    Returns
    -------
    (bytes, Counter) or None
        The new value (items with defined lengths) and the actions taken, or None when
        some element needs the general path.
    """
    rewriter = _Rewriter(data, tables, uid, encodings, value, drop_private)
    try:
        out, _ = rewriter.sequence(0, len(data), mode)
    except _NotFastError:
        return None
    return out, rewriter.actions


def _scan_items(data: bytes, pos: int, end: int | None, wanted: frozenset[int],
                sequences: frozenset[int], found: list[tuple[int, bytes]]) -> int:
    while True:
        if end is not None and pos == end:
            return pos
        if pos + 8 > len(data) or (end is not None and pos + 8 > end):
            raise _NotFastError
        group, element, length = _HEADER.unpack_from(data, pos)
        pos += 8
        if group != 0xFFFE:
            raise _NotFastError
        if element == 0xE0DD and end is None:
            return pos
        if element != 0xE000:
            raise _NotFastError
        pos = _scan_item(data, pos, None if length == _UNDEFINED else pos + length, wanted,
                         sequences, found)


def _scan_item(data: bytes, pos: int, end: int | None, wanted: frozenset[int],
               sequences: frozenset[int], found: list[tuple[int, bytes]]) -> int:
    while True:
        if end is not None and pos == end:
            return pos
        if pos + 8 > len(data) or (end is not None and pos + 8 > end):
            raise _NotFastError
        group, element, vr, short = _SHORT.unpack_from(data, pos)
        if group == 0xFFFE and element == 0xE00D and end is None:
            return pos + 8
        if vr in _LONG_VRS:
            (length,) = _U32.unpack_from(data, pos + 8)
            start = pos + 12
        elif vr.isalpha() and vr.isupper():
            length, start = short, pos + 8
        else:
            raise _NotFastError
        tag = (group << 16) | element
        if length == _UNDEFINED:
            if vr != b"SQ" or tag not in sequences:
                raise _NotFastError
            pos = _scan_items(data, start, None, wanted, sequences, found)
            continue
        after = start + length
        if after > len(data) or (end is not None and after > end):
            raise _NotFastError
        if vr == b"SQ":
            if tag in sequences:  # as the general path: dictionary sequences only
                _scan_items(data, start, after, wanted, sequences, found)
        elif tag in wanted:
            found.append((tag, data[start:after]))
        pos = after


def scan_values(
    data: bytes, wanted: frozenset[int], sequences: frozenset[int]
) -> list[tuple[int, bytes]] | None:
    """The tags and raw values of the ``wanted`` tags at any depth of a raw sequence, or None.

    Read-only: used to collect identifying words before cleaning text, without parsing
    the sequence into datasets. None on any parse anomaly (the caller parses instead).
    """
    found: list[tuple[int, bytes]] = []
    try:
        _scan_items(data, 0, len(data), wanted, sequences, found)
    except _NotFastError:
        return None
    return found
