"""Fast encoders for a de-identified dataset: Part-10 bytes and DICOM JSON.

pydicom converts every raw element to a Python value before writing or serialising
it, which costs ~20-30 us per element: more than reading the file. Most elements
of a de-identified dataset were never touched, so their encoded bytes are still
known exactly. These encoders copy such raw elements as they are and hand every
converted (changed) element to pydicom, so the output is what pydicom would write
(tests compare both on pydicom's whole test corpus).

The Part-10 encoder writes every transfer syntax itself - explicit and implicit VR little
endian, explicit VR big endian, deflated - and walks sequences itself: pydicom writes one
element at a time, never a sequence. pydicom's own writer recurses once per nesting level
and wraps an exception raised inside it once per level with the whole formatted chain
(``pydicom.tag.tag_in_exception``): a message about 2.6 times longer a level (2 GB at 14
levels). Here an exception at any depth is raised once, as it is.
"""

from __future__ import annotations

import base64
import copy
import json
import re
import struct
import zlib
from collections.abc import Callable, MutableMapping
from typing import Any

from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement, convert_raw_data_element
from pydicom.dataset import Dataset, FileMetaDataset, validate_file_meta
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import correct_ambiguous_vr, write_data_element
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian

from lake.ingest._nesting import LONG_VRS

__all__ = [
    "JsonMemo",
    "canonical_uid",
    "element_value",
    "encode_part10",
    "header_json",
    "header_text",
]

_LONG_VRS = frozenset(
    {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}
)
_UNDEFINED = 0xFFFFFFFF
_SPECIFIC_CHARACTER_SET = 0x00080005
_DEFAULT_ENCODING = "iso8859"  # pydicom's default_encoding


class _Target:
    """The encoding written: VR explicit or implicit, byte order, and its packed constants."""

    __slots__ = ("encoding", "implicit", "item", "item_end", "little", "seq_end", "tag", "ul",
                 "us")

    def __init__(self, implicit: bool, little: bool) -> None:
        order = "<" if little else ">"
        self.implicit = implicit
        self.little = little
        self.encoding = (implicit, little)  # as Dataset.original_encoding says it
        self.tag = struct.Struct(order + "HH").pack
        self.ul = struct.Struct(order + "I").pack
        self.us = struct.Struct(order + "H").pack
        self.item = self.tag(0xFFFE, 0xE000)
        self.item_end = self.tag(0xFFFE, 0xE00D) + self.ul(0)
        self.seq_end = self.tag(0xFFFE, 0xE0DD) + self.ul(0)


_EXPLICIT_LE = _Target(False, True)
_TARGETS = {(False, True): _EXPLICIT_LE, (True, True): _Target(True, True),
            (False, False): _Target(False, False)}


def encode_part10(ds: Dataset) -> bytes:
    """``ds`` as a Part-10 file (preamble, file meta, dataset) in its transfer syntax.

    The bytes ``pydicom.dcmwrite(..., enforce_file_format=True)`` writes, in every transfer
    syntax pydicom writes. Raw (unmodified) elements are copied byte for byte, also inside
    sequence items, when pydicom would copy them (the encoding and character set of their
    dataset are unchanged); every other element is written by pydicom, one at a time.
    Sequences are walked here, never by pydicom. Like dcmwrite, elements pydicom must
    convert are converted in ``ds``.

    Raises
    ------
    ValueError, TypeError, ...
        When pydicom cannot encode an element (an invalid file meta, an ambiguous VR it
        cannot resolve): raised once, whatever the depth of the element.
    """
    syntax = UID(ds.file_meta.TransferSyntaxUID)
    target = _TARGETS.get((bool(syntax.is_implicit_VR), bool(syntax.is_little_endian)))
    if target is None:
        raise ValueError("implicit VR big endian is not a valid encoding combination")
    # The file meta exactly as dcmwrite(enforce_file_format=True) prepares it.
    # A copy of its own (FileMetaDataset(ds.file_meta) would share ds.file_meta's elements).
    meta = FileMetaDataset(dict(ds.file_meta.items()))
    for meta_key, meta_tag, ds_tag in (
        ("MediaStorageSOPClassUID", 0x00020002, 0x00080016),
        ("MediaStorageSOPInstanceUID", 0x00020003, 0x00080018),
    ):
        if _same_raw_uid(ds, ds_tag, meta, meta_tag):
            continue  # nothing to set, nothing to convert
        uid = _sop_uid(ds, ds_tag)
        if uid and element_value(meta, meta_tag) != uid:
            setattr(meta, meta_key, uid)
    _validate_file_meta(meta)
    preamble = getattr(ds, "preamble", None)
    out = [preamble if preamble and len(preamble) == 128 else b"\x00" * 128, b"DICM", b""]
    # File meta: explicit VR little endian, its group length first (PS3.10 7.1).
    start = len(out)
    _write_dataset(out, meta, _EXPLICIT_LE, _DEFAULT_ENCODING, _meta_element, convert=False)
    length = sum(map(len, out[start:]))
    out[start - 1] = _GROUP_LENGTH + struct.pack("<I", length)
    # dcmwrite sets the length of Pixel Data from the transfer syntax (undefined when
    # encapsulated, PS3.5 A.4) on the converted element; so does this, on a copy.
    pixel_undefined = (
        syntax.is_compressed if syntax.is_transfer_syntax and not syntax.is_private else None
    )
    body: list[bytes] = []
    _write_dataset(body, ds, target, _DEFAULT_ENCODING, _dataset_element, pixel_undefined)
    if syntax == DeflatedExplicitVRLittleEndian:  # PS3.5 A.5, as dcmwrite deflates
        compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
        deflated = compressor.compress(b"".join(body)) + compressor.flush()
        body = [deflated, b"\x00"] if len(deflated) % 2 else [deflated]
    return b"".join(out + body)


_PLAIN_UID = re.compile(rb"[0-9.]+")
# Elements validate_file_meta(enforce_standard=True) fills in when absent or empty (version,
# implementation) or refuses without (SOP class and instance, transfer syntax).
_META_FILLED = (0x00020001, 0x00020012, 0x00020002, 0x00020003, 0x00020010)
_META_VERSION_NAME = 0x00020013


def _validate_file_meta(meta: FileMetaDataset) -> None:
    """``validate_file_meta(meta, enforce_standard=True)``, by tag.

    pydicom's looks each element up by keyword (~40-80 us a file); this checks the same
    elements the same way (converted, ``is_empty``) and hands the meta to pydicom whenever
    pydicom would change it or raise.
    """
    elements = meta._dict
    if (
        all(tag >> 16 == 2 for tag in elements)
        and all(tag in elements and _filled(meta, tag) for tag in _META_FILLED)
        and _META_VERSION_NAME in elements
    ):
        return
    validate_file_meta(meta, enforce_standard=True)


def _same_raw_uid(ds: Dataset, tag: int, meta: FileMetaDataset, meta_tag: int) -> bool:
    """Whether the elements ``tag`` of ``ds`` and ``meta_tag`` of ``meta`` are both raw UIDs
    as pydicom writes them (:func:`canonical_uid`) and equal: converted, they compare equal,
    and written, converted or not, they are the same bytes."""
    uid = canonical_uid(ds._dict.get(tag))  # type: ignore[call-overload]
    return uid is not None and canonical_uid(meta._dict.get(meta_tag)) == uid  # type: ignore[call-overload]


def _filled(meta: FileMetaDataset, tag: int) -> bool:
    """``not meta[tag].is_empty``; a raw UID as pydicom writes it, or raw OB bytes of even
    length, are known to have a value without converting them (written raw or converted,
    they are the same bytes)."""
    elem = meta._dict[tag]  # type: ignore[index]
    if isinstance(elem, RawDataElement) and (
        canonical_uid(elem) is not None
        or (elem.VR == "OB" and isinstance(elem.value, bytes) and elem.value
            and not len(elem.value) % 2)
    ):
        return True
    return not meta[tag].is_empty


def element_value(ds: Dataset, tag: int, default: Any = None) -> Any:
    """``ds.get(keyword, default)`` for the keyword of ``tag``: the element's value,
    converted as pydicom converts it, or ``default`` when absent.

    Without the keyword lookup and the attribute miss (an AttributeError made and caught)
    that ``Dataset.get`` pays on every call.
    """
    if tag not in ds._dict:
        return default
    try:
        return ds[tag].value
    except AttributeError:  # as Dataset.get, which catches it around the conversion too
        return default


def _sop_uid(ds: Dataset, tag: int) -> Any:
    """A UI element's value as ``ds.get`` gives it (a UID, or a list of them).

    ``dcmwrite`` converts these elements in place (and so writes them re-encoded); so does
    this, but leaves a raw element raw when its bytes are already what pydicom would write.
    """
    elem = ds.get_item(tag)
    if elem is None:
        return None
    uid = canonical_uid(elem)
    if uid is not None:
        return UID(uid)
    return ds[tag].value


def canonical_uid(elem: Any) -> str | None:
    """The UID of a raw UI element whose bytes are exactly what pydicom writes for it
    (digits and dots, one NUL to an even length): converting it gives this value, and
    writing it back the same bytes, so it may stay raw. ``None`` for any other element."""
    if (
        isinstance(elem, RawDataElement)
        and isinstance(elem.value, bytes)
        and elem.VR in ("UI", None)  # None: implicit VR, UI by the dictionary
    ):
        uid = elem.value[:-1] if elem.value.endswith(b"\x00") else elem.value
        if _PLAIN_UID.fullmatch(uid) and elem.value == uid + b"\x00" * (len(uid) % 2):
            return uid.decode("ascii")
    return None


_GROUP_LENGTH = b"\x02\x00\x00\x00UL\x04\x00"  # (0002,0000) UL, 4 bytes


def _meta_element(tag: int) -> bool:
    return tag != 0x00020000  # written first, with the length of the others


def _dataset_element(tag: int) -> bool:
    # file meta is written apart; group lengths are retired (PS3.5 7.2), as dcmwrite skips them
    return tag >> 16 != 2 and (tag & 0xFFFF != 0 or tag >> 16 <= 6)


def _item_element(tag: int) -> bool:
    return tag & 0xFFFF != 0 or tag >> 16 <= 6  # as pydicom's write_dataset


def _header(tag: int, vr: str | None, length: int, target: _Target) -> bytes | None:
    """Tag, VR and length as pydicom writes them; ``None`` where pydicom must decide.

    That is an explicit VR element without a VR, or a short-VR value over 64 KB (or of
    undefined length), which pydicom writes as UN.
    """
    if target.implicit:
        return target.tag(tag >> 16, tag & 0xFFFF) + target.ul(length)
    if not vr:
        return None
    if vr in _LONG_VRS:
        return target.tag(tag >> 16, tag & 0xFFFF) + vr.encode() + b"\x00\x00" + target.ul(length)
    if length <= 0xFFFF:
        return target.tag(tag >> 16, tag & 0xFFFF) + vr.encode() + target.us(length)
    return None


def _first(item: tuple[int, Any]) -> int:
    return item[0]


def _converts(ds: Dataset, target: _Target) -> bool:
    """Whether pydicom's ``write_dataset`` converts the elements of ``ds`` before writing.

    It does when the dataset was read in another encoding (or built in memory) or its
    character set changed: ambiguous VRs are corrected and raw elements converted. Where
    nothing is raw or ambiguous at any depth that changes nothing, and is skipped.
    """
    return (
        ds.original_encoding != target.encoding
        or ds.original_character_set != ds._character_set
    ) and not _plain(ds)


def _write_dataset(
    out: list[bytes],
    ds: Dataset,
    target: _Target,
    parent_encodings: Any,
    wanted: Callable[[int], bool],
    pixel_undefined: bool | None = None,
    *,
    convert: bool | None = None,
) -> None:
    """Append the encoded elements of ``ds``, in tag order, to ``out``, as pydicom's
    ``write_dataset`` writes them.

    ``pixel_undefined``: at the top level, the length dcmwrite gives Pixel Data (undefined
    when True); ``None`` leaves it as it is. ``convert``: whether elements are converted
    first (default: as pydicom decides, :func:`_converts`).
    """
    if convert is None:
        convert = _converts(ds, target)
    if convert:
        if pixel_undefined is not None and 0x7FE00010 in ds:
            ds[0x7FE00010].is_undefined_length = pixel_undefined  # converted, as dcmwrite does
        correct_ambiguous_vr(ds, target.little)  # as write_dataset; no wrapping of errors
    encodings = element_value(ds, _SPECIFIC_CHARACTER_SET, parent_encodings)
    implicit = target.implicit
    pack_tag, pack_ul, pack_us = target.tag, target.ul, target.us
    pixels = pixel_undefined is not None
    # Plain int tags: pydicom's BaseTag compares in Python, ints in C (the hot loop).
    for tag, elem in sorted([(int(t), e) for t, e in ds.items()], key=_first):
        if not wanted(tag):
            continue
        if pixels and tag == 0x7FE00010:
            out.append(_pixel_data(ds, target, encodings, bool(pixel_undefined)))
            continue
        if isinstance(elem, RawDataElement):
            if convert:
                elem = ds[tag]
            else:
                value = elem.value
                if value is None:
                    if not elem.length and elem.VR in _EMPTY_AS_NONE:  # an empty number
                        out.append(pack_tag(tag >> 16, tag & 0xFFFF) + elem.VR.encode() +
                                   pack_us(0))
                        continue
                    elem = ds.get_item(tag)  # a deferred value is read now
                    value = elem.value
                if (
                    isinstance(value, bytes)
                    and isinstance(elem, RawDataElement)
                    and (elem.VR == "SQ" or elem.VR is None)
                    and value.startswith(target.item)  # items (implicit VR: maybe a sequence)
                    and _odd_inside(value, target)
                ):
                    elem = ds[tag]  # converted: its items are walked, their odd values padded
                elif isinstance(value, bytes) and isinstance(elem, RawDataElement):
                    vr = elem.VR
                    # Tag, VR and length as pydicom writes them (_header, inlined here).
                    undefined = elem.length == _UNDEFINED
                    if len(value) % 2 and not undefined:  # received odd: made even (_even)
                        value = _even(tag, vr, value)
                        elem = elem._replace(value=value, length=len(value))
                    length = _UNDEFINED if undefined else len(value)
                    if implicit:
                        head = pack_tag(tag >> 16, tag & 0xFFFF) + pack_ul(length)
                    elif not vr:
                        head = None
                    elif vr in _LONG_VRS:
                        head = pack_tag(tag >> 16, tag & 0xFFFF) + vr.encode() + b"\x00\x00" + \
                            pack_ul(length)
                    elif length <= 0xFFFF:
                        head = pack_tag(tag >> 16, tag & 0xFFFF) + vr.encode() + pack_us(length)
                    else:
                        head = None
                    if head is not None:
                        out += (head, value, target.seq_end) if undefined else (head, value)
                        continue
                    if vr is None and not implicit:
                        elem = ds[tag]  # no VR to write: pydicom's dictionary gives it
        if isinstance(elem, DataElement) and elem.VR == "SQ" and isinstance(elem.value, Sequence):
            _write_sequence(out, tag, elem, target, encodings)
        elif (
            isinstance(elem, DataElement)
            and (simple := _simple_value(elem, target)) is not None
            and (head := _header(tag, elem.VR, len(simple), target)) is not None
        ):
            out += (head, simple)
        else:
            out.append(_written(elem, target, encodings))


_SPACE_PADDED = frozenset(
    {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UR",
     "UT"}
)
_NUL_PADDED = frozenset({"UI", "OB", "UN"})


def _even(tag: int, vr: str | None, value: bytes) -> bytes:
    """A raw value received with an odd length, padded to even as PS3.5 6.2 and 7.1.1 say.

    Every value has an even length: text with a trailing space, UIDs, OB and UN with a
    trailing NUL. pydicom pads what it converts and writes, but copies raw values as they
    are, so a value received odd (a Modality ``CTX``) was stored and served odd, which
    dcmtk and dciodvfy flag. Readers strip the padding (pydicom reads the same value); the
    DICOM JSON (``header_json``, ``identity_sha256``) is made from the dataset, not from these
    bytes, and does not change. A number VR of odd length (``US`` in 3 bytes) is malformed
    whatever is appended: it is written as received. A VR unknown to the dictionary (an
    implicit VR private element) is UN.
    """
    if vr is None:
        try:
            vr = dictionary_VR(tag)
        except KeyError:
            vr = "UN"
    if vr in _SPACE_PADDED:
        return value + b" "
    if vr in _NUL_PADDED:
        return value + b"\x00"
    return value


_WALK = {little: (struct.Struct(order + "HHI"), struct.Struct(order + "HH2sH"),
                  struct.Struct(order + "I"))
         for little, order in ((True, "<"), (False, ">"))}
"""By byte order: an implicit VR element's (or an item's) tag and length, an explicit VR
element's tag, VR and short length, a long length."""


def _odd_inside(value: bytes, target: _Target) -> bool:
    """Whether a raw sequence's value holds a value of odd length at some depth (:func:`_even`).

    A raw sequence is copied byte for byte, its items unread; one whose bytes hold an
    odd-length value is converted instead and its items written element by element, so
    the value is padded. The bytes are walked, not parsed into datasets (almost every
    sequence holds none): one unpacking an element. In implicit VR a value that starts with
    an item, or of undefined length, is taken for a sequence and walked (as pydicom takes
    an undefined length; no dictionary look-up per element): were it not one, the walk finds
    nothing, or an "odd value" that has pydicom convert the sequence and write what it is.
    ``False`` where the walk is unsure (bytes that end early, an undefined-length value other
    than a sequence in explicit VR): those bytes stay as they are.
    """
    implicit_head, explicit_head, long_length = _WALK[target.little]
    item = target.item
    pos, end = 0, len(value)
    try:
        if target.implicit:
            while pos < end:
                group, _, length = implicit_head.unpack_from(value, pos)
                pos += 8
                if group == 0xFFFE or length == _UNDEFINED:
                    continue  # an item or a delimiter, or a sequence: what is inside follows
                if length % 2:
                    return True
                if not value.startswith(item, pos):  # a sequence's items follow, or a value
                    pos += length
            return False
        while pos < end:
            group, _, code, length = explicit_head.unpack_from(value, pos)
            pos += 8
            if group == 0xFFFE:  # an item or a delimiter: what is inside follows
                continue
            if code in LONG_VRS:
                (length,) = long_length.unpack_from(value, pos)
                pos += 4
                if code == b"SQ" and length == _UNDEFINED:
                    continue  # its items follow
                if length == _UNDEFINED:
                    return False  # encapsulated, or a sequence as UN: not walked
                if code == b"SQ" and not length % 2:
                    continue  # its items follow
            if length % 2:
                return True
            pos += length
    except struct.error:
        return False
    return False


_EMPTY_AS_NONE = frozenset({"DS", "IS", "US", "UL", "SS", "SL", "FL", "FD"})
"""Number VRs whose empty raw value pydicom reads as ``None`` (``empty_value_for_VR(vr,
raw=True)``), with an explicit VR. Converted, such an element is empty: pydicom writes its
header with a length of 0 and serialises it as ``{"vr": vr}``; neither needs converting it."""


def _empty_number(elem: Any) -> bool:
    """Whether ``elem`` is a raw element of :data:`_EMPTY_AS_NONE` read empty (not deferred:
    a deferred value has its length)."""
    return (isinstance(elem, RawDataElement) and elem.value is None and not elem.length
            and elem.VR in _EMPTY_AS_NONE)


_STRING_VRS = frozenset({"AE", "AS", "CS", "UI"})  # pydicom's write_string
_TEXT_STRING_VRS = frozenset({"SH", "LO"})  # pydicom's write_text: ASCII is ASCII in any charset


def _simple_value(elem: DataElement, target: _Target) -> bytes | None:
    """The bytes pydicom writes for a converted element with a short VR and a plain value.

    Handles single ASCII strings, ``US``/``UL`` integers and ``OB`` bytes, the kinds of
    elements the engine and the file meta convert; ``None`` sends the element to pydicom.
    """
    if elem.is_undefined_length:  # encapsulated pixel data
        return None
    vr = elem.VR
    value = elem.value
    kind = type(value)
    if kind is str or kind is UID:
        if (vr in _STRING_VRS or vr in _TEXT_STRING_VRS) and value.isascii():
            data = str(value).encode("ascii")
            if len(data) % 2:
                data += b"\x00" if vr == "UI" else b" "
            return data
    elif kind is int:
        if vr == "US" and 0 <= value <= 0xFFFF:
            return target.us(value)
        if vr == "UL" and 0 <= value <= 0xFFFFFFFF:
            return target.ul(value)
    elif kind is bytes and vr == "OB":
        data = bytes(value)
        return data + b"\x00" if len(data) % 2 else data
    return None


def _written(elem: DataElement | RawDataElement, target: _Target, encodings: Any) -> bytes:
    """One element that is not a sequence, written by pydicom's ``write_data_element``."""
    fp = DicomBytesIO()
    fp.is_little_endian = target.little
    fp.is_implicit_VR = target.implicit
    write_data_element(fp, elem, encodings)
    return bytes(fp.getvalue())


def _pixel_data(ds: Dataset, target: _Target, encodings: Any, undefined: bool) -> bytes:
    """Pixel Data as dcmwrite writes it: converted, its length set by the transfer syntax."""
    elem = ds.get_item(0x7FE00010)  # a deferred value is read now
    if isinstance(elem, RawDataElement):
        elem = convert_raw_data_element(elem, encoding=encodings, ds=ds)
    else:
        elem = copy.copy(elem)
    elem.is_undefined_length = undefined
    return _written(elem, target, encodings)


def _plain(ds: Dataset) -> bool:
    """True when pydicom would write ``ds`` element by element as it is.

    An item built in memory (no original encoding) is re-encoded by pydicom: ambiguous
    VRs corrected, raw elements converted. With neither at any depth, that is a no-op.
    """
    stack = [ds]
    while stack:
        for elem in stack.pop().values():
            if not isinstance(elem, DataElement) or " or " in elem.VR:
                return False
            if elem.VR == "SQ" and isinstance(elem.value, Sequence):
                stack.extend(elem.value)
    return True


def _write_sequence(
    out: list[bytes], tag: int, elem: DataElement, target: _Target, encodings: Any
) -> None:
    """A sequence as pydicom writes it; each item written as a dataset of its own."""
    items: list[bytes] = []
    for item in elem.value:
        items.append(target.item)
        undefined_item = getattr(item, "is_undefined_length_sequence_item", False)
        items.append(b"\xff\xff\xff\xff" if undefined_item else b"")
        start = len(items)
        _write_dataset(items, item, target, encodings, _item_element)
        if undefined_item:
            items.append(target.item_end)
        else:
            items[start - 1] = target.ul(sum(map(len, items[start:])))
    undefined = elem.is_undefined_length
    length = _UNDEFINED if undefined else sum(map(len, items))
    out.append(_header(tag, "SQ", length, target) or b"")  # SQ: a 32-bit length, always
    out.extend(items)
    if undefined:
        out.append(target.seq_end)


_TEXT_VRS = frozenset({"AE", "AS", "CS", "DA", "DT", "LO", "SH", "TM", "UC", "UI"})
_SINGLE_TEXT_VRS = frozenset({"LT", "ST", "UT", "UR"})
_BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW"})
_NUMBER_FORMATS = {
    "US": "H",
    "SS": "h",
    "UL": "I",
    "SL": "i",
    "FL": "f",
    "FD": "d",
    "UV": "Q",
    "SV": "q",
}
_SAFE_CHARSETS = {"": "ascii", "ISO_IR 6": "ascii", "ISO_IR 100": "latin-1", "ISO_IR 192": "utf-8"}


def _charset(ds: Dataset) -> str | None:
    value = element_value(ds, _SPECIFIC_CHARACTER_SET, "")
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        return None
    return _SAFE_CHARSETS.get(str(value).strip())


def _text_values(raw: bytes, vr: str, codec: str) -> list[Any] | None:
    text = raw.decode(codec, errors="strict")
    if vr in _SINGLE_TEXT_VRS:
        text = text.rstrip("\x00 ")
        return [text] if text else None
    stripped = text.rstrip("\x00 ")
    if not stripped:
        return None
    values: list[Any] = stripped.split("\\")
    if vr == "DS":
        return [float(v) if v.strip() else None for v in values]
    if vr == "IS":
        return [int(float(v)) if v.strip() else None for v in values]
    if vr == "UI":
        return [v.rstrip("\x00 ") for v in values]
    return values


_PN_GROUPS = ("Alphabetic", "Ideographic", "Phonetic")


def _person_names(raw: bytes, codec: str) -> list[dict[str, str]] | None:
    """A raw PN value as pydicom's ``to_json_dict`` gives it (``[]``: no value); ``None``
    where pydicom decides: code extensions (ESC), bytes the codec refuses, or an empty
    name among several (pydicom raises on it)."""
    stripped = raw.rstrip(b"\x00 ")  # convert_PN
    if b"\x1b" in stripped:
        return None
    names = stripped.decode(codec, errors="strict").split("\\")
    values: list[dict[str, str]] = []
    for name in names:
        groups = name.split("=")
        while groups and not groups[-1]:  # PersonName drops empty trailing groups
            groups.pop()
        if not groups:
            if len(names) > 1:
                return None
            return []  # one empty name: no value (VM 0)
        values.append(dict(zip(_PN_GROUPS, groups, strict=False)))
    return values


class JsonMemo:
    """The DICOM JSON entries of raw text and number values already made, by VR, bytes and
    character set (:func:`header_json`), and the JSON keys of tags.

    Most values repeat from instance to instance (a series' and a study's, a scanner's:
    89-98 % of the raw values of the bench corpora and the shared vendor data), and their
    entry is a function of those three alone. Entries are shared between the headers made
    with one memo: read-only (the header JSON is serialised and typed, never changed).
    Bounded: emptied when full (``size`` entries) and when pickled (a new worker starts
    empty). Only values of de-identified datasets are held.
    """

    __slots__ = ("entries", "keys", "size")

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self.entries: dict[tuple[str, bytes, str], dict[str, Any]] = {}
        self.keys: dict[int, str] = {}

    def __reduce__(self) -> tuple[type[JsonMemo], tuple[int]]:
        return type(self), (self.size,)

    def entry(self, vr: str, value: bytes, codec: str) -> dict[str, Any] | None:
        """:func:`_raw_entry` of a text, person name or number value (not bulk: its entry
        depends on the threshold and the URI function); ``None`` as it gives it."""
        key = (vr, value, codec)
        found = self.entries.get(key)
        if found is None:
            made = _raw_entry(vr, value, codec, 0, _no_uri, None)
            if made is None:
                return None
            found = _Entry(made)
            found.text = _dumps(made)
            entries = self.entries
            if len(entries) >= self.size:
                entries.clear()
            entries[key] = found
        return found

    def key(self, tag: int) -> str:
        """The DICOM JSON key of ``tag``: eight upper-case hexadecimal digits."""
        found = self.keys.get(tag)
        if found is None:
            keys = self.keys
            if len(keys) >= self.size:
                keys.clear()
            found = keys[tag] = f"{tag:08X}"
        return found


class _Entry(dict[str, Any]):
    """A memoised entry and its JSON text (:func:`header_text`): a dict to every reader."""

    __slots__ = ("text",)
    text: str


_dumps = json.JSONEncoder(separators=(",", ":"), sort_keys=True).encode
"""``json.dumps(value, separators=(",", ":"), sort_keys=True)``: the header's JSON text."""


def header_text(header: dict[str, Any]) -> str:
    """``json.dumps(header, separators=(",", ":"), sort_keys=True)``: the header JSON's text.

    The same characters: keys in order, each entry as that encoder writes it; the text of
    an entry from a :class:`JsonMemo` was written once, when it was made.
    """
    parts = []
    for key in sorted(header):
        entry = header[key]
        text = entry.text if type(entry) is _Entry else _dumps(entry)
        name = f'"{key}"' if key.isascii() and key.isalnum() else _dumps(key)
        parts.append(f"{name}:{text}")
    return "{" + ",".join(parts) + "}"


_MEMO_VALUE_BYTES = 256
"""Values longer than this are not memoised (a text of many kilobytes rarely repeats)."""


def _no_uri(_elem: Any) -> str:
    raise AssertionError("a memoised value is never bulk data")  # pragma: no cover


def header_json(
    ds: Dataset, bulk_data_threshold: int, bulk_uri: Callable[[Any], str],
    memo: JsonMemo | None = None,
) -> dict[str, Any]:
    """``ds.to_json_dict(bulk_data_threshold, bulk_uri)``, without converting raw elements.

    Elements of VRs whose JSON form needs pydicom's value model (SQ, AT, a PN with code
    extensions) and every already-converted element are serialised by pydicom itself.
    With ``memo``, the entries of raw text and number values come from it (made once; the
    result's entries may then be shared with other results of the same memo: read them,
    never change them).
    """
    codec = _charset(ds)
    if codec is None or ds.is_little_endian is False or ds.original_encoding[1] is False:
        return ds.to_json_dict(bulk_data_threshold, bulk_uri)
    return _json_dataset(ds, codec, bulk_data_threshold, bulk_uri, memo or JsonMemo(0))


def _json_dataset(
    ds: Dataset, codec: str, bulk_data_threshold: int, bulk_uri: Callable[[Any], str],
    memo: JsonMemo,
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    inline_limit = (bulk_data_threshold // 4) * 3
    entries, keys = memo.entries, memo.keys  # JsonMemo.entry and .key, inlined: the hot loop
    # Read as ds.get_item gives them (a deferred value, None, is converted below by ds[tag]).
    elements: MutableMapping[Any, Any] = ds._dict
    for tag in sorted(elements, key=int):  # ints compare in C, pydicom's BaseTag in Python
        elem = elements[tag]
        number = int(tag)
        key = keys.get(number) or memo.key(number)
        raw = isinstance(elem, RawDataElement) and isinstance(elem.value, bytes)
        if not raw and _empty_number(elem):
            out[key] = {"vr": elem.VR}  # converted: an empty value, no "Value"
            continue
        if raw and elem.VR == "SQ" and elem.is_little_endian and not elem.is_implicit_VR:
            items = _raw_sequence(elem.value, codec, inline_limit, bulk_uri, memo)
            if items is not None:
                out[key] = {"vr": "SQ", "Value": items}
                continue
        if not raw or elem.VR == "SQ":
            converted = ds[tag]
            if converted.VR == "SQ" and isinstance(converted.value, Sequence):
                # Items of the same dataset: their raw elements take this fast path too
                # (pydicom would convert every element of every item).
                out[key] = {"vr": "SQ", "Value": [
                    _json_item(item, codec, bulk_data_threshold, bulk_uri, memo)
                    for item in converted.value
                ]}
            else:
                out[key] = converted.to_json_dict(bulk_uri, bulk_data_threshold)
            continue
        vr = elem.VR
        if vr is None:
            try:
                vr = dictionary_VR(tag)
            except KeyError:
                vr = "UN"
        value = elem.value
        if vr in _BINARY_VRS or len(value) > _MEMO_VALUE_BYTES:
            entry = _raw_entry(str(vr), value, codec, inline_limit, bulk_uri, elem)
        else:
            entry = entries.get((vr, value, codec)) or memo.entry(vr, value, codec)
        out[key] = (
            entry if entry is not None else ds[tag].to_json_dict(bulk_uri, bulk_data_threshold)
        )
    return out


def _raw_entry(
    vr: str, value: bytes, codec: str, inline_limit: int, bulk_uri: Callable[[Any], str],
    elem: Any,
) -> dict[str, Any] | None:
    """The DICOM JSON of a raw little endian value as pydicom makes it; ``None`` where
    pydicom's value model is needed (AT, UN, a PN with code extensions, ...) or the value
    does not parse. ``elem`` is what ``bulk_uri`` is called with (or a function making it)."""
    entry: dict[str, Any] = {"vr": vr}
    try:
        if vr in _TEXT_VRS or vr in _SINGLE_TEXT_VRS or vr in ("DS", "IS"):
            values = _text_values(value, vr, codec)
            if values is not None:
                entry["Value"] = values
        elif vr == "PN":
            names = _person_names(value, codec)
            if names is None:
                return None
            if names:
                entry["Value"] = names
        elif vr in _NUMBER_FORMATS:
            fmt = _NUMBER_FORMATS[vr]
            size = struct.calcsize(fmt)
            if value and len(value) % size == 0:
                entry["Value"] = list(struct.unpack(f"<{len(value) // size}{fmt}", value))
            elif value:
                return None  # length is not a multiple of the value size
        elif vr in _BINARY_VRS:
            if value:
                if len(value) > inline_limit:
                    entry["BulkDataURI"] = bulk_uri(elem() if callable(elem) else elem)
                else:
                    entry["InlineBinary"] = base64.b64encode(value).decode()
        else:
            return None
    except (UnicodeDecodeError, ValueError, struct.error):
        return None
    return entry


class _NotPlainError(Exception):
    """A sequence that :func:`_raw_sequence` leaves to pydicom."""


_ITEM_HEADER = struct.Struct("<HHI")
_ELEMENT_HEADER = struct.Struct("<HH2sH")
_LONG_LENGTH = struct.Struct("<I")
_EXPLICIT_VRS = frozenset(
    _LONG_VRS | {"AE", "AS", "AT", "CS", "DA", "DS", "DT", "FD", "FL", "IS", "LO", "LT", "PN",
                 "SH", "SL", "SS", "ST", "TM", "UI", "UL", "US"}
)
_ITEM_TAG = 0xFFFEE000
_ITEM_END_TAG = 0xFFFEE00D
_SEQUENCE_END_TAG = 0xFFFEE0DD


def _raw_sequence(
    data: bytes, codec: str, inline_limit: int, bulk_uri: Callable[[Any], str],
    memo: JsonMemo | None = None,
) -> list[dict[str, Any]] | None:
    """The items of a raw explicit VR little endian sequence value as DICOM JSON, read
    straight from its bytes: what converting it with pydicom and serialising its items
    (:func:`_json_item`) gives, without building a Dataset per item.

    ``None`` (pydicom decides) for anything but plain items of plain elements: an item of
    its own character set, an element whose JSON needs pydicom's value model (AT, UN, a PN
    with code extensions, an undefined-length value other than a sequence), an unknown VR
    (pydicom may take it for implicit VR), a delimiter where pydicom would stop early, a
    value that does not parse, or bytes that end early.
    """
    try:
        items, _ = _read_items(data, 0, len(data), codec, inline_limit, bulk_uri,
                               memo or JsonMemo(0))
    except (_NotPlainError, struct.error, UnicodeDecodeError):
        return None
    return items


def _read_items(
    data: bytes, pos: int, end: int | None, codec: str, inline_limit: int,
    bulk_uri: Callable[[Any], str], memo: JsonMemo,
) -> tuple[list[dict[str, Any]], int]:
    """Items from ``pos`` up to ``end`` (``None``: up to the sequence delimiter)."""
    items: list[dict[str, Any]] = []
    limit = len(data) if end is None else end
    while end is None or pos < end:
        if pos + 8 > limit:
            raise _NotPlainError
        group, element, length = _ITEM_HEADER.unpack_from(data, pos)
        pos += 8
        tag = group << 16 | element
        if tag == _SEQUENCE_END_TAG and end is None:
            return items, pos
        if tag != _ITEM_TAG:
            raise _NotPlainError
        if length == _UNDEFINED:
            item, pos = _read_item(data, pos, None, limit, codec, inline_limit, bulk_uri,
                                   memo)
        else:
            if pos + length > limit:
                raise _NotPlainError
            item, pos = _read_item(data, pos, pos + length, limit, codec, inline_limit,
                                   bulk_uri, memo)
        items.append(item)
    if pos != end:
        raise _NotPlainError
    return items, pos


def _read_item(
    data: bytes, pos: int, end: int | None, limit: int, codec: str, inline_limit: int,
    bulk_uri: Callable[[Any], str], memo: JsonMemo,
) -> tuple[dict[str, Any], int]:
    """One item's elements as DICOM JSON, from ``pos`` up to ``end`` (``None``: up to the
    item delimiter, within ``limit``)."""
    entries: dict[int, dict[str, Any]] = {}
    stop = limit if end is None else end
    while end is None or pos < end:
        if pos + 8 > stop:
            raise _NotPlainError
        group, element, vr_bytes, length = _ELEMENT_HEADER.unpack_from(data, pos)
        tag = group << 16 | element
        if tag == _ITEM_END_TAG and end is None:
            return _sorted_entries(entries), pos + 8
        vr = vr_bytes.decode("ascii")
        if group == 0xFFFE or vr not in _EXPLICIT_VRS or tag == _SPECIFIC_CHARACTER_SET:
            raise _NotPlainError
        pos += 8
        if vr in _LONG_VRS:
            if pos + 4 > stop:
                raise _NotPlainError
            (length,) = _LONG_LENGTH.unpack_from(data, pos)
            pos += 4
        if length == _UNDEFINED:
            if vr != "SQ":
                raise _NotPlainError
            items, pos = _read_items(data, pos, None, codec, inline_limit, bulk_uri, memo)
            entries[tag] = {"vr": "SQ", "Value": items}
            continue
        if pos + length > stop:
            raise _NotPlainError
        value = data[pos:pos + length]
        start, pos = pos, pos + length
        if vr == "SQ":
            entries[tag] = {"vr": "SQ", "Value": _read_items(
                value, 0, length, codec, inline_limit, bulk_uri, memo)[0]}
            continue
        if vr in _BINARY_VRS or length > _MEMO_VALUE_BYTES:
            entry = _raw_entry(vr, value, codec, inline_limit, bulk_uri,
                               lambda t=tag, v=vr, b=value, s=start: RawDataElement(
                                   BaseTag(t), v, len(b), b, s, False, True))
        else:
            entry = memo.entry(vr, value, codec)
        if entry is None:
            raise _NotPlainError
        entries[tag] = entry
    if pos != end:
        raise _NotPlainError
    return _sorted_entries(entries), pos


def _sorted_entries(entries: dict[int, dict[str, Any]]) -> dict[str, Any]:
    return {f"{tag:08X}": entries[tag] for tag in sorted(entries)}


def _json_item(
    item: Dataset, codec: str, bulk_data_threshold: int, bulk_uri: Callable[[Any], str],
    memo: JsonMemo,
) -> dict[str, Any]:
    """A sequence item as DICOM JSON: the fast path when it was read like its parent (same
    byte order and VR form; a character set of its own, which the standard allows, or an
    encoding pydicom did not record sends it to pydicom)."""
    encoding = getattr(item, "original_encoding", (None, None))
    if (
        _SPECIFIC_CHARACTER_SET in item._dict
        or getattr(item, "is_little_endian", None) is False
        or encoding[1] is False
        or encoding[0] is None
    ):
        result: dict[str, Any] = item.to_json_dict(bulk_data_threshold, bulk_uri)
        return result
    return _json_dataset(item, codec, bulk_data_threshold, bulk_uri, memo)
