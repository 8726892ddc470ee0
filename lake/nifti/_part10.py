"""A fast, read-only index of DICOM Part-10 bytes for the converter; pydicom's values.

pydicom's reader builds a :class:`~pydicom.dataset.Dataset` and a raw element for every
element of every item as it reads; for a series of a few hundred small MR instances, or one
enhanced object with tens of thousands of functional-group items, that costs more than
dcm2niix's whole conversion (docs/nifti.md, "The converter's reader"). :func:`read_part10`
only walks the bytes and indexes the elements by tag; a sequence's items are checked and
skipped by that walk and indexed when the sequence is first asked for (most never are).

Values are **converted by pydicom** (:func:`pydicom.dataelem.convert_raw_data_element`, the
function its datasets call on first access), so they have pydicom's types and meaning; this
module only finds where each value is.

Why it is kept, measured (``benchmarks/bench_nifti.py``, its ``pydicom`` column: the same
in-process export with every stored header read by :func:`pydicom.dcmread` instead; CPU
seconds, best of 3, 2 cores, load 7-11, 2026-12-06): GE 405 instances 0.24 s against 0.50 s,
Philips 707: 0.31 against 1.05, slice-timing 423: 0.22 against 0.38, Siemens XA30 enhanced
(660 functional-group items per object) 0.52 against 1.54, all uncompressed exports 1.85
against 4.08 (dcm2niix 0.54): pydicom alone would more than double the export. No pydicom
option avoids building a Dataset per item (``defer_size`` does not defer sequences,
reading 10 tags with ``specific_tags`` costs more than this whole export on XA30,
docs/nifti.md). Equality with pydicom, element by element with types, is tested on every
vendor file of ``../shared/data``, pydicom's test files and every instance the vendor
parity lakes store under each profile (``tests/test_nifti_part10.py``,
``tests/test_nifti_vendor_parity.py``).

What the converter asks of a dataset is small: ``get``, ``in``, attribute access by
keyword, item access by tag, sequences as lists of items, ``file_meta`` and the pixel data.
That is what :class:`Part10` offers, plus two short cuts for the converter's per-frame
look-ups: :meth:`Part10.item_value` (a functional-group macro's value, converted by pydicom
once per series for macro bytes that repeat) and :meth:`Part10.number` (a per-instance IS or
DS number in plain decimal notation, ``int()``/``float()`` of its text: the one value this
module reads itself). Anything unusual is read by :func:`pydicom.dcmread`
instead (:func:`read_part10` returns one or the other and the converter takes both): big
endian, deflated, non-trivial native pixel data, compressed pixel data within the header (the
lake keeps it apart: that the converter decodes from a ``Part10``, see
:func:`read_part10`), an element whose VR pydicom would
have to infer from its neighbours (implicit VR "US or SS"...), a character set declared
inside an item, damaged or truncated bytes.
"""

from __future__ import annotations

import io
import math
import re
import struct
from collections.abc import KeysView
from typing import Any, NamedTuple

from pydicom import dcmread
from pydicom.charset import convert_encodings, default_encoding
from pydicom.datadict import dictionary_VR, keyword_dict, private_dictionary_VR
from pydicom.dataelem import RawDataElement, convert_raw_data_element
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag
from pydicom.uid import UID
from pydicom.valuerep import PersonName

__all__ = ["Part10", "Part10Error", "ValueCache", "read_part10"]


class Part10Error(ValueError):
    """The bytes are not a Part-10 object this reader handles (pydicom then reads them)."""


class Element(NamedTuple):
    """An element as :meth:`Part10.get_item` gives it: raw bytes unless a sequence."""

    tag: int
    VR: str
    value: Any
    is_little_endian: bool = True


_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_LONG_LENGTH = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
_HEADER = struct.Struct("<HH2sH")
_U32 = struct.Struct("<I")
#: Every VR of PS3.5 6.2 with its 2-byte code.
_VRS = {vr.encode(): vr for vr in (
    "AE", "AS", "AT", "CS", "DA", "DS", "DT", "FD", "FL", "IS", "LO", "LT", "OB", "OD", "OF",
    "OL", "OV", "OW", "PN", "SH", "SL", "SQ", "SS", "ST", "SV", "TM", "UC", "UI", "UL", "UN",
    "UR", "US", "UT", "UV")}
#: VR code -> (VR, whether its length has 32 bits).
_EXPLICIT = {code: (vr, code in _LONG_LENGTH) for code, vr in _VRS.items()}
_NATIVE_LITTLE_ENDIAN = frozenset({"1.2.840.10008.1.2", "1.2.840.10008.1.2.1"})
_IMPLICIT = "1.2.840.10008.1.2"
_PIXEL_DATA = 0x7FE00010
_CHARACTER_SET = 0x00080005
_MISSING = object()


def _dictionary_vr(tag: int) -> str:
    try:
        return str(dictionary_VR(tag))
    except KeyError:
        return "UL" if tag & 0xFFFF == 0 else "UN"


#: Values this long or longer are converted every time (not worth hashing and keeping).
_CACHED_LENGTH = 1024
#: Values longer than this are not keys of the cache of numbers (:meth:`_Source.numbers`).
_NUMBERS_LENGTH = 256
#: Sequences longer than this are not keys of :meth:`Part10.item_value`'s cache.
_ITEM_VALUE_LENGTH = 16384
#: One IS, or one DS, value in plain decimal notation (what :meth:`Part10.number` reads).
_INTEGER = re.compile(rb" *[+-]?[0-9]+ *")
_DECIMAL = re.compile(rb" *[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)? *")
#: One valid UID (PS3.5 9.1), at most 64 characters, with its optional padding.
_UID = re.compile(rb"(?:0|[1-9][0-9]*)(?:\.(?:0|[1-9][0-9]*))*[\0 ]?")
#: Binary numeric VRs and their struct codes (what :meth:`Part10.numbers` unpacks).
_BINARY = {"US": "H", "SS": "h", "UL": "I", "SL": "i", "FL": "f", "FD": "d"}
#: Values that are never changed in place: shared between datasets as they are.
_SHAREABLE = (str, int, float, bytes, PersonName, type(None))


class ValueCache:
    """Values converted once and reused by the other datasets of a batch (a series, or the
    series of an export).

    The instances of one series repeat most of their values byte for byte (orientation,
    spacing, rescale, UIDs of the series and study...; 90-97 % of the values the converter
    asks for in the vendor repositories, ``benchmarks/bench_nifti.py``), and pydicom's
    conversion is most of the cost of reading them. A value is looked up by everything its
    conversion depends on: tag, VR as read, implicit or explicit VR, its bytes, the
    character sets. Text, numbers and empty values (None) are shared (they are immutable); a
    multi-valued value is handed out as a new ``MultiValue`` (or list) of the same items, so
    changing one dataset's value never changes another's. Memory: the distinct values of the batch, each
    under 1 KiB; drop the cache with the batch, or bound it by :attr:`entries`.

    Examples
    --------
    >>> from pathlib import Path
    >>> from pydicom.data import get_testdata_file
    >>> data = Path(get_testdata_file("MR_small.dcm")).read_bytes()
    >>> cache = ValueCache()
    >>> one, two = read_part10(data, cache=cache), read_part10(data, cache=cache)
    >>> one.PixelSpacing == two.PixelSpacing, one.PixelSpacing is two.PixelSpacing
    (True, False)
    >>> len(cache) > 0
    True
    """

    __slots__ = ("_layouts", "_numbers", "_shapes", "_values", "indexed_by_layout")

    def __init__(self) -> None:
        self._values: dict[tuple[object, ...], object] = {}
        # header layouts of the batch by size (see _Layout), most recent first
        self._layouts: dict[int, list[_Layout]] = {}
        # sequence items' shapes of the batch (see _ItemShape)
        self._shapes: dict[tuple[int, bool, bytes], _Shapes] = {}
        # numbers read from bytes (see _Source.numbers), by VR and bytes
        self._numbers: dict[tuple[str, bytes], list[float] | None] = {}
        #: How many headers were indexed by the layout of an earlier one (not walked).
        self.indexed_by_layout = 0

    def __len__(self) -> int:
        return len(self._values)

    @property
    def entries(self) -> int:
        """Everything kept: values, numbers, item shapes and layouts (what bounds memory)."""
        return (len(self._values) + len(self._numbers) + len(self._shapes)
                + sum(len(kept) for kept in self._layouts.values()))

    def get(self, key: tuple[object, ...]) -> object:
        """A fresh copy of the value under ``key``, ``_MISSING`` when there is none."""
        return self.copy(self._values.get(key, _MISSING))

    @staticmethod
    def copy(value: Any) -> Any:
        """``value``, or a new ``MultiValue`` (or list) of the same items when it is one."""
        if value.__class__ is MultiValue:
            clone: MultiValue[Any] = MultiValue.__new__(MultiValue)
            clone._constructor = value._constructor
            clone._list = list(value._list)
            return clone
        if value.__class__ is list:
            return list(value)
        return value

    def put(self, key: tuple[object, ...], value: object) -> object:
        """Keep ``value`` when it can be handed out again safely (see the class); the value
        for the caller (a copy of what is kept when it is multi-valued)."""
        if isinstance(value, _SHAREABLE):
            self._values[key] = value
            return value
        if isinstance(value, MultiValue | list) and all(
            isinstance(item, _SHAREABLE) for item in value
        ):
            self._values[key] = value
            return self.get(key)
        return value


def _numbers(vr: str, buffer: bytes, start: int, length: int) -> list[float] | None:
    """:meth:`Part10.numbers` of the value of VR ``vr`` at ``start`` in ``buffer``."""
    if length == 0:
        return None
    data = buffer[start : start + length]
    values: list[float]
    if vr == "DS" or vr == "IS":
        pattern = _DECIMAL if vr == "DS" else _INTEGER
        values = []
        # the value's trailing padding is not part of its last number (pydicom strips it):
        # a last number of 16 characters padded to an even length is 17 bytes
        for text in data.rstrip(b" ").split(b"\\"):
            if len(text) > 16 or not pattern.fullmatch(text):
                return None
            values.append(float(text) if vr == "DS" else float(int(text)))
    else:
        code = _BINARY.get(vr)
        if code is None or length % struct.calcsize(code):
            return None
        values = [float(v) for v in
                  struct.unpack(f"<{length // struct.calcsize(code)}{code}", data)]
    return values if all(map(math.isfinite, values)) else None


def _converted(source: _Source, tag: int, given: str | None, implicit: bool, start: int,
               length: int, encoding: str | list[str]) -> Any:
    """pydicom's value of the element ``tag`` whose value is at ``start`` (VR ``given`` as
    its reader hands it over: None when implicit), through the batch's cache (values under
    1 KiB, keyed by everything the conversion depends on)."""
    data = bytes(source.buffer[start : start + length])
    cache = source.cache
    key: tuple[object, ...] | None = None
    if cache is not None and length < _CACHED_LENGTH:
        key = (tag, given, implicit, data,
               encoding if isinstance(encoding, str) else tuple(encoding))
        value = cache.get(key)
        if value is not _MISSING:
            return value
    raw = RawDataElement(BaseTag(tag), given, length, data, start, implicit, True)
    # pydicom may warn here, as its datasets do on first access (callers silence both)
    value = convert_raw_data_element(raw, encoding=encoding).value
    if key is not None:
        assert cache is not None
        value = cache.put(key, value)
    return value


class _Source:
    """The bytes shared by one object and its items, the batch's value cache, where each
    sequence the walk has passed ends (keyed by the position of its value), and the shapes
    of the items walked (the batch's, else this object's own)."""

    __slots__ = ("buffer", "cache", "ends", "matched", "shapes")

    def __init__(self, buffer: bytes, cache: ValueCache | None = None) -> None:
        self.buffer = buffer
        self.cache = cache
        self.ends: dict[int, int] = {}
        # the shape that checked each item, by where its content starts
        self.matched: dict[int, _ItemShape] = {}
        self.shapes: dict[tuple[int, bool, bytes], _Shapes] = (
            {} if cache is None else cache._shapes)

    def numbers(self, vr: str, start: int, length: int) -> list[float] | None:
        """:func:`_numbers` of a value, kept in the batch's cache by VR and bytes (a
        per-frame macro's orientation and spacing repeat frame after frame: a look-up
        instead of parsing the text); a new list each time."""
        cache = self.cache
        if cache is None or length > _NUMBERS_LENGTH:
            return _numbers(vr, self.buffer, start, length)
        key = (vr, self.buffer[start : start + length])
        numbers = cache._numbers
        if key in numbers:
            known = numbers[key]
        else:
            known = numbers[key] = _numbers(vr, self.buffer, start, length)
        return None if known is None else list(known)


class Part10:
    """A dataset indexed from Part-10 bytes: values converted by pydicom on first access.

    Only reading is supported. Values are what pydicom's datasets give (the same function
    converts them): ``DSfloat``, ``IS``, ``MultiValue``, ``PersonName``... ; a sequence is
    a list of :class:`Part10` items.
    """

    __slots__ = ("_base", "_elements", "_encodings", "_parent", "_shape", "_source", "_values",
                 "file_meta", "is_implicit_VR", "is_little_endian")

    def __init__(self, elements: dict[int, Any], source: _Source, implicit: bool,
                 parent: Part10 | None = None) -> None:
        # tag -> (VR, start, length) of a value, ("SQ", start, length, implicit) of a
        # sequence not read yet, ("SQ", items) once read
        self._elements = elements
        self._attach(source, implicit, parent, None, 0)

    @classmethod
    def shaped(cls, shape: _ItemShape, base: int, source: _Source, implicit: bool,
               parent: Part10) -> Part10:
        """The item checked by ``shape`` whose content starts at ``base``: indexed as the
        shape's first item (:meth:`_ItemShape.index_at`) when its index is first needed,
        not before (the converter reads a frame's per-frame values where the shape
        located them, :meth:`item_numbers`, so most such items are never indexed)."""
        item = cls.__new__(cls)  # _elements left unset: __getattr__ makes it
        item._attach(source, implicit, parent, shape, base)
        return item

    def _attach(self, source: _Source, implicit: bool, parent: Part10 | None,
                shape: _ItemShape | None, base: int) -> None:
        """Every attribute but the index: what ``__init__`` and :meth:`shaped` share."""
        self._source = source
        self._values: dict[int, Any] = {}
        self._parent = parent
        self._encodings: str | list[str] | None = None
        self.file_meta: Part10 | None = None
        self.is_implicit_VR = implicit
        self.is_little_endian = True
        # the shape that checked this item, and where its content starts (see _ItemShape)
        self._shape = shape
        self._base = base

    # ----------------------------------------------------------------- mapping protocol

    @staticmethod
    def _tag(key: Any) -> int | None:
        if isinstance(key, str):
            return keyword_dict.get(key)
        if isinstance(key, tuple):
            return (int(key[0]) << 16) | int(key[1])
        return int(key)

    def __contains__(self, key: Any) -> bool:
        tag = self._tag(key)
        return tag is not None and tag in self._elements

    def __len__(self) -> int:
        return len(self._elements)

    def keys(self) -> KeysView[int]:
        """The tags present, as numbers."""
        return self._elements.keys()

    def get(self, key: Any, default: Any = None) -> Any:
        """The value of a keyword or tag, ``default`` when absent."""
        tag = keyword_dict.get(key) if key.__class__ is str else self._tag(key)
        value = self._values.get(tag, _MISSING)  # type: ignore[arg-type]
        if value is not _MISSING:
            return value
        if tag is None or tag not in self._elements:
            return default
        return self._value(tag)

    def __getattr__(self, name: str) -> Any:
        if name == "_elements":
            # an item checked by a shape is indexed on first need (see _sequence_walk)
            elements = self._elements = self._shape.index_at(self._base)  # type: ignore[union-attr]
            return elements
        tag = keyword_dict.get(name)
        if tag is None or tag not in self._elements:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        return self._value(tag)

    def __getitem__(self, key: Any) -> Element:
        element = self.get_item(key)
        if element is None:
            raise KeyError(key)
        if element.VR != "SQ":
            tag = self._tag(key)
            assert tag is not None
            return element._replace(value=self._value(tag))
        return element

    def get_item(self, key: Any) -> Element | None:
        """The raw element (bytes, or the items of a sequence), None when absent."""
        tag = self._tag(key)
        entry = None if tag is None else self._elements.get(tag)
        if entry is None or tag is None:
            return None
        if entry[0] == "SQ":
            return Element(tag, "SQ", self._items(tag, entry))
        vr, start, length = entry
        if start < 0:  # a value set in memory (pixel data)
            return Element(tag, vr, self._values[tag])
        return Element(tag, vr, self._source.buffer[start : start + length])

    def item_value(self, sequence: str, keyword: str) -> Any:
        """The value of ``keyword`` in the first item of the sequence ``sequence``; None when
        either is absent or the value is empty (what the converter asks of a frame's
        functional groups, frame after frame).

        The same as ``self.get(sequence)[0].get(keyword)`` (or None), but the value is
        converted once per batch for a sequence whose bytes, syntax and inherited character
        sets were seen before (the :class:`ValueCache` holds it, and hands out copies of
        multi-valued ones); the items are then not indexed at all. In an item checked by a
        shape, the value is converted where the shape's first item held it (as the item
        holding it converts it: same bytes, VR, syntax and inherited character sets).
        """
        where = self._located(sequence, keyword)
        if where is not None:
            if not where:
                return None
            vr, start, length, implicit = where
            value = _converted(self._source, keyword_dict[keyword], None if implicit else vr,
                               implicit, self._base + start, length, self._character_sets())
            return None if value is None or value == "" else value
        held = self._sequence_bytes(sequence)
        if held is None:
            return None
        cache = self._source.cache
        if cache is None or not held:
            return self._first_item_value(sequence, keyword)
        encoding = self._character_sets()
        key = ("item value", *held, keyword,
               encoding if isinstance(encoding, str) else tuple(encoding))
        value = cache.get(key)
        if value is not _MISSING:
            return value
        value = self._first_item_value(sequence, keyword)
        cache.put(key, ValueCache.copy(value))
        return value

    def _first_item_value(self, sequence: str, keyword: str) -> Any:
        items = self.get(sequence)
        if items is None or len(items) == 0:
            return None
        value = items[0].get(keyword)
        return None if value is None or value == "" else value

    def number(self, keyword: str) -> float | None:
        """``float(self.get(keyword))`` for a single IS or DS value in plain decimal
        notation, read from its bytes without pydicom; None for anything else (absent,
        empty, multi-valued, another VR or notation, longer than 16 bytes), which the caller
        then asks :meth:`get` for.

        Per-instance numbers (InstanceNumber, TriggerTime...) repeat nowhere in a series,
        so the :class:`ValueCache` never has them: this is the converter's cheap way to
        them. pydicom's IS is ``int()`` of the same text and its DS ``float()`` of it (both
        read surrounding spaces the same way), so the number is the one its value gives.
        """
        tag = keyword_dict.get(keyword)
        entry = None if tag is None else self._elements.get(tag)
        if entry is None or len(entry) != 3:
            return None
        vr, start, length = entry
        if start < 0 or length > 16:
            return None
        data = bytes(self._source.buffer[start : start + length])
        if vr == "IS":
            return float(int(data)) if _INTEGER.fullmatch(data) else None
        if vr == "DS":
            return float(data) if _DECIMAL.fullmatch(data) else None
        return None

    def numbers(self, keyword: str) -> list[float] | None:
        """The values of ``keyword`` as floats, read from its bytes without pydicom, when
        they are IS or DS text in plain decimal notation (as :meth:`number`, each at most 16
        bytes without the value's trailing padding) or binary US, SS, UL, SL, FL or FD
        values, and all finite; None for anything else (absent, empty, another VR or
        notation), which the caller then asks :meth:`get` for.

        ``float(v)`` of each of pydicom's values, in order: its IS is ``int()`` of the
        text, its DS ``float()`` of it, its binary numbers are ``struct``'s. A single value
        gives a list of one (pydicom gives the value itself).
        """
        tag = keyword_dict.get(keyword)
        entry = None if tag is None else self._elements.get(tag)
        if entry is None or len(entry) != 3:
            return None
        vr, start, length = entry
        if start < 0:
            return None
        # through the batch's cache: the instances of a series repeat their orientation,
        # spacing and rescale byte for byte (and an fMRI series its positions)
        return self._source.numbers(vr, start, length)

    def uid(self, keyword: str) -> str | None:
        """``str(self.get(keyword))`` for a UI value that is one valid UID (digits and
        dots, no leading zeros, at most 64 characters), read from its bytes without
        pydicom; None for anything else, which the caller then asks :meth:`get` for.

        Per-instance UIDs (SOPInstanceUID) repeat nowhere in a series: the converter's
        cheap way to them. pydicom's UID is the text without its trailing null or space,
        and such a UID passes its validation silently.
        """
        tag = keyword_dict.get(keyword)
        entry = None if tag is None else self._elements.get(tag)
        if entry is None or len(entry) != 3 or entry[0] != "UI":
            return None
        _, start, length = entry
        if start < 0 or not 0 < length <= 64:
            return None
        data = self._source.buffer[start : start + length]
        if not _UID.fullmatch(data):
            return None
        return data.rstrip(b"\0 ").decode("ascii")

    def item_numbers(self, sequence: str, keyword: str) -> list[float] | None:
        """:meth:`numbers` of ``keyword`` in the first item of ``sequence`` (None when
        either is absent, or as :meth:`numbers`): what ``item_value`` gives, as floats.

        Kept in the batch's :class:`ValueCache` under the sequence's bytes, as
        :meth:`item_value` keeps values (then the items are not indexed); on a miss the
        first item is indexed and its bytes read, never converted by pydicom. In an item
        checked by a shape (:class:`_ItemShape`: a per-frame item like many before it),
        the value is read where the first item of that shape held it.
        """
        shape = self._shape
        if shape is not None:  # self._located, inlined: asked for every frame
            located = shape.located
            asked = (sequence, keyword)
            where = located[asked] if asked in located else self._located(sequence, keyword)
            if where is not None:
                if not where:
                    return None
                return self._source.numbers(where[0], self._base + where[1], where[2])
        held = self._sequence_bytes(sequence)
        if held is None:
            return None
        cache = self._source.cache
        key: tuple[object, ...] | None = None
        if cache is not None and held:
            key = ("item numbers", *held, keyword)
            known = cache.get(key)
            if isinstance(known, list):
                return known
        items = self.get(sequence)
        if not isinstance(items, list) or not items or not isinstance(items[0], Part10):
            return None
        values = items[0].numbers(keyword)
        if key is not None and values is not None:
            assert cache is not None
            cache.put(key, values)  # kept as it is: hand out a copy
            return list(values)
        return values

    def raw_key(self, tags: tuple[int, ...]) -> tuple[object, ...] | None:
        """Everything pydicom's values of the top-level elements ``tags`` depend on (none of
        them text with character sets, which are not part of it): whether the dataset is
        implicit VR, and each element's VR and bytes (None when absent); of a value set in
        memory (the pixel data), its VR, type and length. Two datasets with the same key
        have the same values of those elements (values set in memory: of the same type and
        length). None when one of them is a sequence or longer than 1 KiB in the bytes (the
        caller then reads the values).
        """
        elements, buffer = self._elements, self._source.buffer
        key: list[object] = [self.is_implicit_VR]
        for tag in tags:
            entry = elements.get(tag)
            if entry is None:
                key.append(None)
                continue
            if len(entry) != 3:
                return None
            vr, start, length = entry
            if start < 0:
                value = self._values[tag]
                key.append((vr, value.__class__, len(value)))
            elif length > _CACHED_LENGTH:
                return None
            else:
                key.append((vr, buffer[start : start + length]))
        return tuple(key)

    def _located(self, sequence: str, keyword: str) -> _Located:
        """:meth:`_locate`, once per shape; None in an item no shape checked."""
        shape = self._shape
        if shape is None:
            return None
        located = shape.located
        if (sequence, keyword) in located:
            return located[(sequence, keyword)]
        where = located[(sequence, keyword)] = self._locate(sequence, keyword)
        return where

    def _locate(self, sequence: str, keyword: str) -> _Located:
        """Where :meth:`item_numbers` and :meth:`item_value` read ``keyword`` of the first
        item of ``sequence`` in this item, relative to its content: (VR, start, length,
        whether that item is implicit VR); ``()`` when either is absent (or the sequence has
        no item); None when the general path must answer (another character set in the
        item, a sequence, a value set in memory).
        The same for every item of this item's shape: the walk puts every element of them
        at the same place (the same header bytes)."""
        tag = keyword_dict.get(sequence)
        entry = None if tag is None else self._elements.get(tag)
        if entry is None:
            return ()
        if entry[0] != "SQ":
            return None
        items = self.get(sequence)
        if not items:
            return ()
        first = items[0]
        if _CHARACTER_SET in first._elements:
            return None  # its own character sets: values are converted in the item
        found = first._elements.get(keyword_dict.get(keyword, -1))
        if found is None:
            return ()
        if len(found) != 3 or found[1] < 0:
            return None
        return found[0], found[1] - self._base, found[2], first.is_implicit_VR

    def _sequence_bytes(self, sequence: str) -> tuple[bytes, bool, bool] | tuple[()] | None:
        """What the batch's :class:`ValueCache` keys values of the sequence ``sequence`` by:
        its value's bytes, whether it is implicit VR and whether its length is undefined;
        None when it is absent, ``()`` when it is too long to be a key or its end is not
        known (its values are then read from its items)."""
        tag = keyword_dict.get(sequence)
        entry = None if tag is None else self._elements.get(tag)
        if entry is None:
            return None
        stop = self._source.ends.get(entry[1]) if len(entry) == 4 else None
        if stop is None or stop - entry[1] > _ITEM_VALUE_LENGTH:
            return ()
        _, start, length, implicit = entry
        return bytes(self._source.buffer[start:stop]), implicit, length == _UNDEFINED

    def set_pixel_data(self, pixels: bytes, vr: str = "OW") -> None:
        """Attach the pixel data (stored apart from the header in the lake)."""
        self._elements[_PIXEL_DATA] = (vr, -1, len(pixels))
        self._values[_PIXEL_DATA] = pixels

    # ----------------------------------------------------------------- conversion

    def _value(self, tag: int) -> Any:
        if tag in self._values:
            return self._values[tag]
        entry = self._elements[tag]
        if entry[0] == "SQ":
            return self._items(tag, entry)
        vr, start, length = entry
        # The VR as pydicom's reader would hand it over: None when implicit (pydicom looks it
        # up), a private element's from pydicom's private dictionary when its creator is known
        given: str | None = None if self.is_implicit_VR else vr
        if tag >> 16 & 1 and given in (None, "UN"):
            given = self._private_vr(tag) or given
        encoding = default_encoding if tag == _CHARACTER_SET else self._character_sets()
        value = _converted(self._source, tag, given, self.is_implicit_VR, start, length,
                           encoding)
        self._values[tag] = value
        return value

    def _items(self, tag: int, entry: tuple[Any, ...]) -> list[Part10]:
        """The items of the sequence ``tag``, read on first access (the walk that indexed
        this dataset only checked and skipped them)."""
        if len(entry) == 2:
            items: list[Part10] = entry[1]
            return items
        _, start, length, implicit = entry
        items = _read_items(self._source, start, length, implicit, self)
        self._elements[tag] = ("SQ", items)
        self._values[tag] = items  # get() answers from here next time
        return items

    def _character_sets(self) -> str | list[str]:
        """As pydicom's reader: this dataset's Specific Character Set, else its parent's."""
        if self._encodings is None:
            shape = self._shape  # an item of a shape has its tags: not indexed for this
            if _CHARACTER_SET in (self._elements if shape is None else shape.tags):
                self._encodings = convert_encodings(self._value(_CHARACTER_SET))
            else:
                self._encodings = (default_encoding if self._parent is None
                                   else self._parent._character_sets())
        return self._encodings

    def _private_vr(self, tag: int) -> str | None:
        element = tag & 0xFFFF
        if element < 0x1000:
            return "LO" if 0x10 <= element <= 0xFF else None  # a private creator
        creator = self.get((tag >> 16, element >> 8))
        if not isinstance(creator, str) or not creator:
            return None
        try:
            return str(private_dictionary_VR(tag, creator))
        except KeyError:
            return None

    def __repr__(self) -> str:
        return f"<Part10 with {len(self._elements)} elements>"


# --------------------------------------------------------------------------- parsing
#
# A sequence is not read when the dataset holding it is indexed: the walk checks its items
# as it skips them (so bytes that would fail later fail now, and pydicom reads them
# instead), records where it ends, and leaves it to be read on first access. Most items are
# never asked for (an XA30 export indexes 11,653 of 33,580 items), and
# items of a sequence that is read are indexed without walking their own sequences again.

#: Item and delimiter tags as one little-endian 32-bit number (element << 16 | group).
_ITEM_LE, _ITEM_END_LE, _SEQUENCE_END_LE = 0xE000FFFE, 0xE00DFFFE, 0xE0DDFFFE
_ITEM_HEADER = struct.Struct("<II")


def _walk(source: _Source, pos: int, end: int, implicit: bool, in_item: bool,
          elements: dict[int, Any] | None) -> int:
    """Walk the elements from ``pos`` to ``end`` (or past an item delimiter); where the walk
    stopped. Indexes them into ``elements`` unless it is None (then only checks)."""
    buffer = source.buffer
    ends = source.ends
    unpack_header, unpack_u32, explicit = _HEADER.unpack_from, _U32.unpack_from, _EXPLICIT
    while pos < end:
        if pos + 8 > end:
            raise Part10Error("truncated element header")
        group, number, vr_bytes, short = unpack_header(buffer, pos)
        if implicit or group == 0xFFFE:
            tag = (group << 16) | number
            if tag == _ITEM_END:
                if not in_item:
                    raise Part10Error("item delimiter outside an item")
                return pos + 8
            length = unpack_u32(buffer, pos + 4)[0]
            vr = _dictionary_vr(tag)
            pos += 8
            if tag == _PIXEL_DATA:
                vr = "OW"  # PS3.5 A.1, as pydicom settles it
            elif " or " in vr:
                # pydicom settles "US or SS", "OB or OW"... from other elements, possibly
                # of enclosing datasets: left to pydicom
                raise Part10Error("a VR to infer from other elements")
        else:
            known = explicit.get(vr_bytes)
            if known is None:
                raise Part10Error(f"unknown VR {vr_bytes!r}")
            vr, long = known
            if not long:
                # the commonest case, taken first: a 16-bit length is never undefined, and
                # SQ and UN have 32-bit lengths
                pos += 8
                if pos + short > end:
                    raise Part10Error("element runs past the end")
                if elements is not None:
                    elements[(group << 16) | number] = (vr, pos, short)
                pos += short
                continue
            tag = (group << 16) | number
            if pos + 12 > end:
                raise Part10Error("truncated element header")
            length = unpack_u32(buffer, pos + 8)[0]
            pos += 12
            if vr == "UN" and not group & 1 and " or " in _dictionary_vr(tag):
                raise Part10Error("a VR to infer from other elements")
        if vr == "SQ" or (length == _UNDEFINED and vr == "UN"):
            # an undefined-length UN is a sequence in implicit VR little endian (PS3.5 6.2.2)
            inner = implicit or vr == "UN"
            stop = ends.get(pos)
            if stop is None:
                stop = _skip_sequence(source, pos, length, inner)
            if elements is not None:
                elements[tag] = ("SQ", pos, length, inner)
            pos = stop
            continue
        if length == _UNDEFINED:
            raise Part10Error("undefined length outside a sequence (encapsulated data)")
        if pos + length > end:
            raise Part10Error("element runs past the end")
        if elements is not None:
            elements[tag] = (vr, pos, length)
        pos += length
    if in_item and end == len(buffer):
        raise Part10Error("item without its delimiter")
    return pos


def _sequence_walk(source: _Source, pos: int, length: int, implicit: bool,
                   parent: Part10 | None) -> tuple[list[Part10], int]:
    """Walk the items of a sequence whose value starts at ``pos``; (its items, indexed
    when ``parent`` is given, else none; where it ends)."""
    buffer = source.buffer
    end = len(buffer) if length == _UNDEFINED else pos + length
    if end > len(buffer):
        raise Part10Error("sequence runs past the end")
    items: list[Part10] = []
    unpack_item = _ITEM_HEADER.unpack_from
    matched = source.matched
    while pos < end:
        if pos + 8 > end:
            raise Part10Error("truncated item")
        tag, item_length = unpack_item(buffer, pos)
        pos += 8
        if tag == _SEQUENCE_END_LE:
            return items, pos
        if tag != _ITEM_LE:
            raise Part10Error("not an item in a sequence")
        if parent is None:
            # checked: by a shape of an earlier item when one fits, else walked
            pos = _check_item(source, pos, end, item_length, implicit)
            continue
        # indexed (every item is checked first): as its shape indexed the item it was made
        # from, else by the walk (which does not enter its sequences again)
        shape = matched.get(pos)
        if shape is not None:
            items.append(Part10.shaped(shape, pos, source, implicit, parent))
            pos += shape.size
            continue
        elements: dict[int, Any] = {}
        if item_length == _UNDEFINED:
            pos = _walk(source, pos, len(buffer), implicit, True, elements)
        else:
            _walk(source, pos, pos + item_length, implicit, False, elements)
            pos += item_length
        items.append(Part10(elements, source, implicit, parent))
    if length == _UNDEFINED:
        raise Part10Error("sequence without its delimiter")
    return items, end


#: Where a value of a shape's items is (see Part10._locate).
_Located = tuple[str, int, int, bool] | tuple[()] | None
#: How many shapes are kept per item key (a per-frame item's shapes differ in the lengths
#: of a few values: positions, times).
_SHAPES_PER_KEY = 8
#: Items longer than this get no shape (one object's private blocks: hundreds of kilobytes
#: that do not repeat, whose shape would cost more to make and compare than walking them).
_SHAPE_BYTES = 16384
#: How many more shapes than items indexed by them are made for a key before it is only
#: walked (items whose shapes rarely repeat: making a shape costs about three walks).
_SHAPE_MISSES = 2


class _Shapes:
    """The shapes of the items of one key (item length, syntax, first 8 bytes), most
    recent first, with how many were made and how many items they indexed."""

    __slots__ = ("hits", "made", "shapes")

    def __init__(self) -> None:
        self.shapes: list[_ItemShape] = []
        self.made = 0
        self.hits = 0

    def remember(self, source: _Source, start: int, stop: int, implicit: bool,
                 undefined: bool) -> None:
        """Keep the shape of the item the walk has just checked (content from ``start`` to
        ``stop``, its delimiter included when its length is ``undefined``), first."""
        self.made += 1
        if stop - start > _SHAPE_BYTES:
            return
        shape = _ItemShape.of(source, start, stop, implicit, undefined)
        if shape is not None:
            source.matched[start] = shape
            self.shapes.insert(0, shape)
            del self.shapes[_SHAPES_PER_KEY:]


class _ItemShape:
    """Where every element, item and delimiter header of one sequence item sits, to check
    the next item of the same shape with one ``struct`` call instead of a walk.

    The items of a sequence often repeat their structure with other values (an enhanced
    object's per-frame functional groups: the same macros, tags, VRs and lengths, frame
    after frame; their lengths are undefined, so no length tells where an item ends before
    it is walked). A shape records, relative to the start of an item's content, the
    header bytes (tag, VR, length: 8 or 12) of every element, nested item and delimiter the
    walk read, the item's size, and where each nested sequence, at every depth, ends.
    Another item (same item length, syntax and first 8 bytes: the key) whose header bytes
    at those offsets unpack to the same numbers and that fits before the end of its
    sequence is what the walk would make of it: every decision of the walk (VR, length,
    where the next header is, every error it raises) depends on those bytes and on bounds
    that the fit implies. Anything else is walked. Items are indexed by the walk, as
    before (checked first, their sequences are not entered again).
    """

    __slots__ = ("ends", "headers", "index", "located", "size", "tags", "unpack")

    def __init__(self, unpack: Any, headers: tuple[int, ...], size: int,
                 ends: tuple[tuple[int, int], ...],
                 index: tuple[tuple[int, str, int, int, bool | None], ...]) -> None:
        self.unpack = unpack
        self.headers = headers
        self.size = size
        self.ends = ends
        self.index = index
        #: The tags of its items (what their index holds).
        self.tags = frozenset(entry[0] for entry in index)
        #: (sequence, keyword) -> where Part10.item_numbers reads it (see Part10._locate)
        self.located: dict[tuple[str, str], _Located] = {}

    def index_at(self, pos: int) -> dict[int, Any]:
        """The index the walk makes of the item of this shape whose content is at
        ``pos``: the walk's index of the item the shape was made from, moved."""
        return {tag: (vr, pos + start, length) if inner is None
                else ("SQ", pos + start, length, inner)
                for tag, vr, start, length, inner in self.index}

    def apply(self, source: _Source, pos: int) -> None:
        """Record where the nested sequences of the item at ``pos`` end, as the walk
        does."""
        ends = source.ends
        for start, stop in self.ends:
            ends[pos + start] = pos + stop

    @classmethod
    def of(cls, source: _Source, start: int, stop: int, implicit: bool,
           undefined: bool) -> _ItemShape | None:
        """The shape of the item the walk has just checked (see :meth:`_Shapes.remember`);
        None when it has none."""
        buffer = source.buffer
        headers: list[tuple[int, int]] = []
        sequences: list[tuple[int, int]] = []
        if _headers_of(buffer, start, stop, implicit, headers, sequences) != stop:
            return None  # not where the walk ended: no shape (never seen)
        ends = source.ends
        if any(ends.get(begin) != end for begin, end in sequences):
            return None  # nor other sequences than the walk's
        parts = ["<"]
        position = start
        for header, size in headers:
            if header > position:
                parts.append(f"{header - position}x")
            parts.append("Q" if size == 8 else "QI")
            position = header + size
        unpack = struct.Struct("".join(parts)).unpack_from
        elements: dict[int, Any] = {}
        # the item's index as the walk makes it (its sequences are in ends: not entered)
        _walk(source, start, len(buffer) if undefined else stop, implicit, undefined,
              elements)
        index = tuple((tag, entry[0], entry[1] - start, entry[2],
                       entry[3] if entry[0] == "SQ" else None)
                      for tag, entry in elements.items())
        return cls(unpack, unpack(buffer, start), stop - start,
                   tuple((begin - start, end - start) for begin, end in sequences), index)


def _headers_of(buffer: bytes, pos: int, end: int, implicit: bool,
                headers: list[tuple[int, int]], sequences: list[tuple[int, int]]) -> int:
    """The headers the walk reads from ``pos`` to ``end`` (or past an item delimiter) of
    bytes it has checked, as (position, size), and the (start, end) of every sequence at
    every depth; where it stopped. The walk's steps without its checks (:func:`_walk`)."""
    unpack_header, unpack_u32, unpack_item = (_HEADER.unpack_from, _U32.unpack_from,
                                              _ITEM_HEADER.unpack_from)
    while pos < end:
        group, number, vr_bytes, short = unpack_header(buffer, pos)
        if implicit or group == 0xFFFE:
            tag = (group << 16) | number
            headers.append((pos, 8))
            if tag == _ITEM_END:
                return pos + 8
            length = unpack_u32(buffer, pos + 4)[0]
            vr = "OW" if tag == _PIXEL_DATA else _dictionary_vr(tag)
            pos += 8
        else:
            vr, long = _EXPLICIT[vr_bytes]
            if not long:
                headers.append((pos, 8))
                pos += 8 + short
                continue
            length = unpack_u32(buffer, pos + 8)[0]
            headers.append((pos, 12))
            pos += 12
        if vr == "SQ" or (length == _UNDEFINED and vr == "UN"):
            inner = implicit or vr == "UN"
            begin = pos
            stop = len(buffer) if length == _UNDEFINED else pos + length
            while pos < stop:
                tag, item_length = unpack_item(buffer, pos)
                headers.append((pos, 8))
                pos += 8
                if tag == _SEQUENCE_END_LE:
                    break
                if item_length == _UNDEFINED:
                    pos = _headers_of(buffer, pos, len(buffer), inner, headers, sequences)
                else:
                    _headers_of(buffer, pos, pos + item_length, inner, headers, sequences)
                    pos += item_length
            else:
                pos = stop
            sequences.append((begin, pos))
            continue
        pos += length
    return pos


def _check_item(source: _Source, pos: int, end: int, item_length: int,
                implicit: bool) -> int:
    """Check the item whose content starts at ``pos`` (its sequence ends at ``end``); where
    it ends. By a shape of an earlier item of its key when one fits, else by the walk
    (which makes a shape when the key comes again)."""
    buffer = source.buffer
    key = (item_length, implicit, buffer[pos : pos + 8])
    known = source.shapes.get(key)
    if known is not None:
        for shape in known.shapes:
            stop = pos + shape.size
            if stop <= end and shape.unpack(buffer, pos) == shape.headers:
                shape.apply(source, pos)
                source.matched[pos] = shape
                known.hits += 1
                return stop
    if item_length == _UNDEFINED:
        stop = _walk(source, pos, len(buffer), implicit, True, None)
    else:
        _walk(source, pos, pos + item_length, implicit, False, None)
        stop = pos + item_length
    if known is None:
        source.shapes[key] = _Shapes()  # seen once: a shape is made if the key comes again
    elif known.made <= known.hits + _SHAPE_MISSES:
        known.remember(source, pos, stop, implicit, item_length == _UNDEFINED)
    return stop


def _skip_sequence(source: _Source, pos: int, length: int, implicit: bool) -> int:
    """Check the items of the sequence whose value starts at ``pos``; where it ends."""
    stop = _sequence_walk(source, pos, length, implicit, None)[1]
    source.ends[pos] = stop
    return stop


def _read_items(source: _Source, pos: int, length: int, implicit: bool,
                parent: Part10) -> list[Part10]:
    """The items of a sequence already checked by the walk, indexed."""
    return _sequence_walk(source, pos, length, implicit, parent)[0]


def _file_meta(source: _Source) -> tuple[Part10, int]:
    buffer = source.buffer
    if len(buffer) < 132 or buffer[128:132] != b"DICM":
        raise Part10Error("no DICM prefix")
    pos = 132
    elements: dict[int, Any] = {}
    while pos + 8 <= len(buffer):
        group = struct.unpack_from("<H", buffer, pos)[0]
        if group != 0x0002:
            break
        pos = _walk(source, pos, _meta_end(buffer, pos), False, False, elements)
    return Part10(elements, source, False), pos


def _meta_end(buffer: bytes, pos: int) -> int:
    """The end of the one file-meta element at ``pos`` (parsed one by one: the group's
    length element is not trusted)."""
    vr = buffer[pos + 4 : pos + 6]
    if vr in _LONG_LENGTH:
        return pos + 12 + int(_U32.unpack_from(buffer, pos + 8)[0])
    return pos + 8 + int(struct.unpack_from("<H", buffer, pos + 6)[0])


#: How many header layouts a ValueCache keeps per header size (a series has a few).
_LAYOUTS_PER_SIZE = 4


class _Layout:
    """Where every top-level element of one header sits, to index the next header of the
    series with one ``struct`` call instead of a Python step per element.

    The instances of a series mostly have the same elements with the same lengths (78-91 %
    of the stored headers of the vendor repositories have the layout of the previous
    instance; the others differ in one or two lengths: a UID, a position). A layout records
    the file meta and the dataset's index (``{tag: (VR, start, length)}``) as the walk made
    them, and the 8 or 12 bytes of every element's header (tag, VR, length) at its offset.
    Another header of the same size whose element headers unpack to the same numbers, with
    the same DICM prefix and transfer syntax, is indexed by the walk into the same
    dictionaries: the walk's every decision (VR, length, where the next element starts,
    every error it raises) depends on those bytes alone, except what a sequence holds, so
    each top-level sequence is checked by the walk as before (:func:`_skip_sequence`) and
    must end where the layout's did. Anything else differs: the full walk, as before.
    """

    __slots__ = ("elements", "headers", "implicit", "meta", "sequences", "syntax", "unpack")

    def __init__(self, unpack: struct.Struct, headers: tuple[int, ...], syntax: tuple[int, bytes],
                 meta: dict[int, Any], elements: dict[int, Any], implicit: bool,
                 sequences: tuple[tuple[int, int, bool, int], ...]) -> None:
        self.unpack = unpack
        self.headers = headers
        self.syntax = syntax
        self.meta = meta
        self.elements = elements
        self.implicit = implicit
        self.sequences = sequences

    def apply(self, source: _Source) -> Part10 | None:
        """The dataset indexed from ``source`` by this layout; None when it does not fit."""
        buffer = source.buffer
        start, syntax = self.syntax
        if (buffer[128:132] != b"DICM" or buffer[start : start + len(syntax)] != syntax
                or self.unpack.unpack_from(buffer, 132) != self.headers):
            return None
        for pos, length, inner, stop in self.sequences:
            if _skip_sequence(source, pos, length, inner) != stop:
                return None
        meta = Part10(dict(self.meta), source, False)
        ds = Part10(dict(self.elements), source, self.implicit)
        ds.file_meta = meta
        return ds

    @classmethod
    def remember(cls, cache: ValueCache, source: _Source, meta: Part10, ds: Part10) -> None:
        """Keep the layout of a header the walk has just indexed (when it has one: every
        byte after the preamble covered once, in order, no sequence in the file meta)."""
        syntax_entry = meta._elements.get(0x00020010)
        if syntax_entry is None or len(syntax_entry) != 3:
            return
        buffer = source.buffer
        spans: list[tuple[int, int, int]] = []  # header start, header size, end
        for entry in meta._elements.values():
            if entry[0] == "SQ":
                return
            vr, start, length = entry
            size = 12 if vr.encode() in _LONG_LENGTH else 8
            spans.append((start - size, size, start + length))
        sequences = []
        for entry in ds._elements.values():
            if entry[0] == "SQ":
                _, start, length, inner = entry
                stop = source.ends.get(start)
                if stop is None:
                    return
                size = 8 if ds.is_implicit_VR else 12
                spans.append((start - size, size, stop))
                sequences.append((start, length, inner, stop))
            else:
                vr, start, length = entry
                if start < 0:
                    return
                size = 8 if ds.is_implicit_VR or vr.encode() not in _LONG_LENGTH else 12
                spans.append((start - size, size, start + length))
        spans.sort()
        parts = ["<"]
        position = 132
        for header, size, end in spans:
            if header != position or end < header + size:
                return  # a tag twice, or bytes no element covers
            parts.append("Q" if size == 8 else "QI")
            if end > header + size:
                parts.append(f"{end - header - size}x")
            position = end
        if position != len(buffer):
            return
        unpack = struct.Struct("".join(parts))
        _, start, length = syntax_entry
        layout = cls(unpack, unpack.unpack_from(buffer, 132),
                     (start, bytes(buffer[start : start + length])), meta._elements,
                     ds._elements.copy(), ds.is_implicit_VR, tuple(sequences))
        known = cache._layouts.setdefault(len(buffer), [])
        known.insert(0, layout)
        del known[_LAYOUTS_PER_SIZE:]


def parse_part10(data: bytes, cache: ValueCache | None = None) -> Part10:
    """Index Part-10 bytes in (explicit or implicit VR) little endian (values converted
    through ``cache`` when given).

    Raises
    ------
    Part10Error
        For anything else: big endian, deflated, damaged or truncated bytes.
    """
    source = _Source(data, cache)
    if cache is not None:
        for layout in cache._layouts.get(len(data), ()):
            known = layout.apply(source)
            if known is not None:
                cache.indexed_by_layout += 1
                return known
    meta, pos = _file_meta(source)
    syntax = meta.get("TransferSyntaxUID")
    if not isinstance(syntax, str) or not syntax:
        raise Part10Error("no transfer syntax")
    if syntax in ("1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"):
        raise Part10Error("big endian or deflated")
    implicit = syntax == _IMPLICIT
    elements: dict[int, Any] = {}
    _walk(source, pos, len(data), implicit, False, elements)
    ds = Part10(elements, source, implicit)
    ds.file_meta = meta
    if cache is not None:
        _Layout.remember(cache, source, meta, ds)
    return ds


def _simple_pixels(ds: Part10, pixels: bytes | None) -> bool:
    """Whether the converter reads these pixels without pydicom's decoders."""
    if pixels is None:
        return True
    syntax = ds.file_meta.get("TransferSyntaxUID") if ds.file_meta is not None else None
    samples = ds.get("SamplesPerPixel") or 1
    if syntax not in _NATIVE_LITTLE_ENDIAN or samples not in (1, 3):
        return False
    allocated = ds.get("BitsAllocated")
    if allocated not in (8, 16, 32) or "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
        return False
    if samples == 3 and (allocated != 8 or ds.get("PlanarConfiguration") not in (0, 1, None)
                         or str(ds.get("PhotometricInterpretation", "")).upper() != "RGB"):
        return False
    rows, cols = ds.get("Rows"), ds.get("Columns")
    frames = ds.get("NumberOfFrames")
    if not isinstance(rows, int) or not isinstance(cols, int):
        return False
    count = frames if isinstance(frames, int) and frames > 1 else 1
    expected = rows * cols * count * samples * allocated // 8
    return len(pixels) in (expected, expected + 1)


#: Pixel Data, Float and Double Float Pixel Data, Extended Offset Table (and its lengths).
_OTHER_PIXEL_ELEMENTS = (0x7FE00008, 0x7FE00009, 0x7FE00001, 0x7FE00002)


def _encapsulated_apart(ds: Part10, pixels: bytes | None) -> bool:
    """Whether ``pixels``, kept apart from the header ``ds``, are encapsulated (compressed)
    Pixel Data: the converter gives them to pydicom's decoders with the Image Pixel values
    read from ``ds``, as pydicom reads them from its own dataset (``_volume._decode``).
    Not with a float pixel element or an Extended Offset Table in the header."""
    if pixels is None or any(tag in ds._elements for tag in _OTHER_PIXEL_ELEMENTS):
        return False
    syntax = ds.file_meta.get("TransferSyntaxUID") if ds.file_meta is not None else None
    if syntax in _NATIVE_LITTLE_ENDIAN:
        return False  # what UID(syntax).is_encapsulated says, without making and checking it
    return isinstance(syntax, str) and UID(syntax).is_encapsulated


#: Every top-level element :func:`_encapsulated_apart` and :func:`_simple_pixels` read
#: (none of them text with character sets), for :func:`_pixel_verdict`'s key.
_PIXEL_CHECK_TAGS = (
    0x00280002, 0x00280004, 0x00280006, 0x00280008, 0x00280010, 0x00280011, 0x00280100,
    *_OTHER_PIXEL_ELEMENTS,
)
_TRANSFER_SYNTAX_TAG = (0x00020010,)


def _pixel_verdict(ds: Part10, pixels: bytes, cache: ValueCache | None) -> tuple[bool, bool]:
    """``(_encapsulated_apart(ds, pixels), encapsulated or _simple_pixels(ds, pixels))`` of
    pixel data kept apart, through the batch's cache: both are functions of the values of
    ``_PIXEL_CHECK_TAGS`` (which of them are present), the transfer syntax and the length of
    ``pixels``, and :meth:`Part10.raw_key` of those elements is everything their values
    depend on. The instances of a series mostly share one format: their checks are made
    once per batch (each was eight conversions through the cache and, for a native
    syntax, a pydicom ``UID`` made and validated per instance)."""
    key: tuple[object, ...] | None = None
    meta = ds.file_meta
    if cache is not None and meta is not None:
        layout = ds.raw_key(_PIXEL_CHECK_TAGS)
        syntax = meta.raw_key(_TRANSFER_SYNTAX_TAG)
        if layout is not None and syntax is not None:
            key = ("pixel verdict", layout, syntax, len(pixels))
            known = cache._values.get(key)
            if known is not None:
                return known  # type: ignore[return-value]
    encapsulated = _encapsulated_apart(ds, pixels)
    verdict = (encapsulated, encapsulated or _simple_pixels(ds, pixels))
    if key is not None:
        assert cache is not None
        cache._values[key] = verdict
    return verdict


def read_part10(data: bytes, pixels: bytes | None = None,
                pixel_vr: str | None = None, *, cache: ValueCache | None = None
                ) -> Part10 | Dataset:
    """A dataset for the converter from Part-10 bytes (and the pixel data kept apart).

    The fast :class:`Part10` reader when it applies (little endian, greyscale or RGB native
    pixels, or compressed pixels given apart: the converter decodes them with pydicom's
    decoders from the Image Pixel values of the ``Part10``, as from pydicom's dataset),
    else :func:`pydicom.dcmread`.

    Parameters
    ----------
    data : bytes
        A Part-10 object, usually without its pixel data.
    pixels : bytes, optional
        The value of PixelData when ``data`` lacks it.
    pixel_vr : str, optional
        ``OB`` or ``OW`` (default ``OW``).
    cache : ValueCache, optional
        Shared by the reads of one series: a value its instances repeat is converted once
        (the result is the same, only faster).

    Returns
    -------
    Part10 or pydicom.dataset.Dataset

    Warns
    -----
    UserWarning
        What pydicom warns about bytes it reads itself (damaged or unusual ones); such
        warnings can quote values, so callers holding sensitive data scope them (the lake's
        exports read inside ``lake._capture.capture()``).

    Examples
    --------
    >>> from pydicom.data import get_testdata_file
    >>> from pathlib import Path
    >>> ds = read_part10(Path(get_testdata_file("MR_small.dcm")).read_bytes())
    >>> type(ds).__name__, ds.Rows, ds.PixelSpacing, ds.get("ImageType")
    ('Part10', 64, [0.3125, 0.3125], ['DERIVED', 'SECONDARY', 'OTHER'])
    """
    try:
        ds = parse_part10(data, cache)
        # pixels twice (in the header and apart): pydicom sorts it out
        apart = not (pixels is not None and _PIXEL_DATA in ds)
        if apart and pixels is not None:
            encapsulated, simple = _pixel_verdict(ds, pixels, cache)
        else:
            encapsulated = apart and _encapsulated_apart(ds, pixels)
            simple = apart and (encapsulated or _simple_pixels(
                ds, pixels if pixels is not None else ds.get("PixelData")))
    except (struct.error, ValueError, LookupError):  # Part10Error is a ValueError
        simple = False
    if not simple:
        return _pydicom(data, pixels, pixel_vr)
    if pixels is not None:
        # the VRs _pydicom gives the pixel data by default
        ds.set_pixel_data(pixels, pixel_vr or ("OB" if encapsulated else "OW"))
    return ds


def _pydicom(data: bytes, pixels: bytes | None, pixel_vr: str | None) -> Dataset:
    # pydicom's parser warnings can quote values: callers scope them (the lake's exports read
    # inside lake._capture.capture()); this package depends on nothing of the lake but errors
    ds = dcmread(io.BytesIO(data))
    if pixels is not None:
        ds.add_new(_PIXEL_DATA, pixel_vr or "OB", pixels)
        syntax = UID(ds.file_meta.get("TransferSyntaxUID", ""))
        if syntax and syntax.is_encapsulated:
            ds[_PIXEL_DATA].is_undefined_length = True
    return ds
