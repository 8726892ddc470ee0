"""Fast encoders for a de-identified dataset: Part-10 bytes and DICOM JSON.

pydicom converts every raw element to a Python value before writing or serialising
it, which costs ~20-30 us per element: more than reading the file. Most elements
of a de-identified dataset were never touched, so their encoded bytes are still
known exactly. These encoders copy such raw elements as they are and hand every
converted (changed) element to pydicom, so the output is what pydicom would write
(tests compare both on pydicom's whole test corpus).
"""

from __future__ import annotations

import base64
import copy
import re
import struct
from collections.abc import Callable
from typing import Any

from pydicom import dcmwrite
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement, convert_raw_data_element
from pydicom.dataset import Dataset, FileMetaDataset, validate_file_meta
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element, write_dataset
from pydicom.sequence import Sequence
from pydicom.uid import UID

__all__ = ["encode_part10", "header_json"]

_LONG_VRS = frozenset(
    {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}
)
_UNDEFINED = 0xFFFFFFFF
_SEQ_DELIMITER = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"


def _fallback(ds: Dataset) -> bytes:
    out = DicomBytesIO()
    dcmwrite(out, ds, enforce_file_format=True)
    return out.getvalue()


def encode_part10(ds: Dataset) -> bytes:
    """``ds`` as a Part-10 file (preamble, file meta, dataset) in its transfer syntax.

    Raw (unmodified) elements are copied byte for byte, also inside sequence items;
    modified ones are encoded by pydicom. Big-endian and deflated syntaxes are written
    entirely by pydicom.
    """
    syntax = UID(ds.file_meta.TransferSyntaxUID)
    if syntax.is_deflated or not syntax.is_little_endian or ds.is_little_endian is False:
        return _fallback(ds)
    implicit = bool(syntax.is_implicit_VR)
    if ds.original_encoding[0] is not None and ds.original_encoding[0] != implicit:
        return _fallback(ds)
    if ds.original_character_set != ds._character_set:
        return _fallback(ds)
    # The file meta exactly as dcmwrite(enforce_file_format=True) prepares it.
    # A copy of its own (FileMetaDataset(ds.file_meta) would share ds.file_meta's elements).
    meta = FileMetaDataset(dict(ds.file_meta.items()))
    for meta_key, ds_tag in (
        ("MediaStorageSOPClassUID", 0x00080016),
        ("MediaStorageSOPInstanceUID", 0x00080018),
    ):
        uid = _sop_uid(ds, ds_tag)
        if uid and meta.get(meta_key) != uid:
            setattr(meta, meta_key, uid)
    validate_file_meta(meta, enforce_standard=True)
    preamble = getattr(ds, "preamble", None)
    out = [preamble if preamble and len(preamble) == 128 else b"\x00" * 128, b"DICM", b""]
    # File meta: explicit VR little endian, its group length first (PS3.10 7.1).
    start = len(out)
    _write_elements(out, meta, False, "iso8859", _meta_element)
    length = sum(map(len, out[start:]))
    out[start - 1] = _GROUP_LENGTH + struct.pack("<I", length)
    encodings = ds.get("SpecificCharacterSet") or "iso8859"
    # dcmwrite sets the length of Pixel Data from the transfer syntax (undefined when
    # encapsulated, PS3.5 A.4) on the converted element; so does this, on a copy.
    pixel_undefined = (
        syntax.is_compressed if syntax.is_transfer_syntax and not syntax.is_private else None
    )
    _write_elements(out, ds, implicit, encodings, _dataset_element, pixel_undefined)
    return b"".join(out)


_PLAIN_UID = re.compile(rb"[0-9.]+")


def _sop_uid(ds: Dataset, tag: int) -> Any:
    """A UI element's value as ``ds.get`` gives it (a UID, or a list of them).

    ``dcmwrite`` converts these elements in place (and so writes them re-encoded); so does
    this, but leaves a raw element raw when its bytes are already what pydicom would write.
    """
    elem = ds.get_item(tag)
    if elem is None:
        return None
    if (
        isinstance(elem, RawDataElement)
        and isinstance(elem.value, bytes)
        and elem.VR in ("UI", None)  # None: implicit VR, UI by the dictionary
    ):
        uid = elem.value[:-1] if elem.value.endswith(b"\x00") else elem.value
        if _PLAIN_UID.fullmatch(uid) and elem.value == uid + b"\x00" * (len(uid) % 2):
            return UID(uid.decode("ascii"))
    return ds[tag].value


_GROUP_LENGTH = b"\x02\x00\x00\x00UL\x04\x00"  # (0002,0000) UL, 4 bytes
_ITEM = b"\xfe\xff\x00\xe0"
_ITEM_DELIMITER = b"\xfe\xff\x0d\xe0\x00\x00\x00\x00"
_pack_tag = struct.Struct("<HH").pack
_pack_ul = struct.Struct("<I").pack
_pack_us = struct.Struct("<H").pack


def _meta_element(tag: int) -> bool:
    return tag != 0x00020000  # written first, with the length of the others


def _dataset_element(tag: int) -> bool:
    # file meta is written apart; group lengths are retired (PS3.5 7.2), as dcmwrite skips them
    return tag >> 16 != 2 and (tag & 0xFFFF != 0 or tag >> 16 <= 6)


def _item_element(tag: int) -> bool:
    return tag & 0xFFFF != 0 or tag >> 16 <= 6  # as pydicom's write_dataset


def _header(tag: int, vr: str | None, length: int, implicit: bool) -> bytes | None:
    """Tag, VR and length as pydicom writes them; ``None`` where pydicom must decide.

    That is an explicit VR element without a VR, or a short-VR value over 64 KB (or of
    undefined length), which pydicom writes as UN.
    """
    if implicit:
        return _pack_tag(tag >> 16, tag & 0xFFFF) + _pack_ul(length)
    if not vr:
        return None
    if vr in _LONG_VRS:
        return _pack_tag(tag >> 16, tag & 0xFFFF) + vr.encode() + b"\x00\x00" + _pack_ul(length)
    if length <= 0xFFFF:
        return _pack_tag(tag >> 16, tag & 0xFFFF) + vr.encode() + _pack_us(length)
    return None


def _tag_order(item: tuple[Any, Any]) -> int:
    return int(item[0])


def _write_elements(
    out: list[bytes],
    ds: Dataset,
    implicit: bool,
    encodings: Any,
    wanted: Callable[[int], bool],
    pixel_undefined: bool | None = None,
) -> None:
    """Append the encoded elements of ``ds``, in tag order, to ``out``.

    ``pixel_undefined``: at the top level, the length dcmwrite gives Pixel Data (undefined
    when True); ``None`` leaves it as it is.
    """
    for tag, elem in sorted(ds.items(), key=_tag_order):
        if not wanted(tag):
            continue
        if tag == 0x7FE00010 and pixel_undefined is not None:
            out.append(_pixel_data(ds, implicit, encodings, pixel_undefined))
            continue
        if isinstance(elem, RawDataElement) and isinstance(elem.value, bytes):
            value = elem.value
            undefined = elem.length == _UNDEFINED
            head = _header(tag, elem.VR, _UNDEFINED if undefined else len(value), implicit)
            if head is None:
                out.append(_pydicom_element(ds, tag, implicit, encodings))
                continue
            out += (head, value, _SEQ_DELIMITER) if undefined else (head, value)
        elif isinstance(elem, DataElement) and elem.VR == "SQ" and isinstance(elem.value, Sequence):
            _write_sequence(out, tag, elem, implicit, encodings)
        elif (
            isinstance(elem, DataElement)
            and (simple := _simple_value(elem)) is not None
            and (head := _header(tag, elem.VR, len(simple), implicit)) is not None
        ):
            out += (head, simple)
        else:
            out.append(_pydicom_element(ds, tag, implicit, encodings))


_STRING_VRS = frozenset({"AE", "AS", "CS", "UI"})  # pydicom's write_string
_TEXT_STRING_VRS = frozenset({"SH", "LO"})  # pydicom's write_text: ASCII is ASCII in any charset


def _simple_value(elem: DataElement) -> bytes | None:
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
            return _pack_us(value)
        if vr == "UL" and 0 <= value <= 0xFFFFFFFF:
            return _pack_ul(value)
    elif kind is bytes and vr == "OB":
        data = bytes(value)
        return data + b"\x00" if len(data) % 2 else data
    return None


def _pydicom_element(ds: Dataset, tag: int, implicit: bool, encodings: Any) -> bytes:
    """One element written by pydicom as write_dataset writes it (raw elements stay raw)."""
    elem = ds.get_item(tag)
    if isinstance(elem, RawDataElement) and elem.VR is None and not implicit:
        elem = ds[tag]  # no VR to write: pydicom's dictionary gives it (dcmwrite would refuse)
    return _written(elem, implicit, encodings)


def _written(elem: DataElement | RawDataElement, implicit: bool, encodings: Any) -> bytes:
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = implicit
    write_data_element(fp, elem, encodings)
    return bytes(fp.getvalue())


def _pixel_data(ds: Dataset, implicit: bool, encodings: Any, undefined: bool) -> bytes:
    """Pixel Data as dcmwrite writes it: converted, its length set by the transfer syntax."""
    elem = ds.get_item(0x7FE00010)  # a deferred value is read now
    if isinstance(elem, RawDataElement):
        elem = convert_raw_data_element(elem, encoding=encodings, ds=ds)
    else:
        elem = copy.copy(elem)
    elem.is_undefined_length = undefined
    return _written(elem, implicit, encodings)


def _plain(ds: Dataset) -> bool:
    """True when pydicom would write ``ds`` element by element as it is.

    An item built in memory (no original encoding) is re-encoded by pydicom: ambiguous
    VRs corrected, raw elements converted. With neither at any depth, that is a no-op.
    """
    for elem in ds.values():
        if not isinstance(elem, DataElement) or " or " in elem.VR:
            return False
        if (
            elem.VR == "SQ"
            and isinstance(elem.value, Sequence)
            and not all(_plain(item) for item in elem.value)
        ):
            return False
    return True


def _write_sequence(
    out: list[bytes], tag: int, elem: DataElement, implicit: bool, encodings: Any
) -> None:
    """A sequence as pydicom writes it, its items' raw elements copied."""
    items: list[bytes] = []
    for item in elem.value:
        items.append(_ITEM)
        undefined_item = getattr(item, "is_undefined_length_sequence_item", False)
        items.append(b"\xff\xff\xff\xff" if undefined_item else b"")
        start = len(items)
        item_encodings = item.get("SpecificCharacterSet", encodings)
        if _plain(item) or (
            item.original_encoding == (implicit, True)
            and item.original_character_set == item._character_set
        ):
            _write_elements(items, item, implicit, item_encodings, _item_element)
        else:  # pydicom re-encodes (ambiguous VRs, character set): let it
            fp = DicomBytesIO()
            fp.is_little_endian = True
            fp.is_implicit_VR = implicit
            write_dataset(fp, item, encodings)
            items.append(bytes(fp.getvalue()))
        if undefined_item:
            items.append(_ITEM_DELIMITER)
        else:
            items[start - 1] = _pack_ul(sum(map(len, items[start:])))
    undefined = elem.is_undefined_length
    length = _UNDEFINED if undefined else sum(map(len, items))
    out.append(_header(tag, "SQ", length, implicit) or b"")  # SQ: a 32-bit length, always
    out.extend(items)
    if undefined:
        out.append(_SEQ_DELIMITER)


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
    value = ds.get("SpecificCharacterSet", "")
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


def header_json(
    ds: Dataset, bulk_data_threshold: int, bulk_uri: Callable[[Any], str]
) -> dict[str, Any]:
    """``ds.to_json_dict(bulk_data_threshold, bulk_uri)``, without converting raw elements.

    Elements of VRs whose JSON form needs pydicom's value model (SQ, PN, AT) and
    every already-converted element are serialised by pydicom itself.
    """
    codec = _charset(ds)
    if codec is None or ds.is_little_endian is False or ds.original_encoding[1] is False:
        return ds.to_json_dict(bulk_data_threshold, bulk_uri)
    return _json_dataset(ds, codec, bulk_data_threshold, bulk_uri)


def _json_dataset(
    ds: Dataset, codec: str, bulk_data_threshold: int, bulk_uri: Callable[[Any], str]
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    inline_limit = (bulk_data_threshold // 4) * 3
    for tag in sorted(ds.keys()):
        elem = ds.get_item(tag)
        key = f"{int(tag):08X}"
        raw = isinstance(elem, RawDataElement) and isinstance(elem.value, bytes)
        if not raw or elem.VR == "SQ":
            converted = ds[tag]
            if converted.VR == "SQ" and isinstance(converted.value, Sequence):
                # Items of the same dataset: their raw elements take this fast path too
                # (pydicom would convert every element of every item).
                out[key] = {"vr": "SQ", "Value": [
                    _json_item(item, codec, bulk_data_threshold, bulk_uri)
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
        vr = str(vr)
        value = elem.value
        entry: dict[str, Any] = {"vr": vr}
        try:
            if vr in _TEXT_VRS or vr in _SINGLE_TEXT_VRS or vr in ("DS", "IS"):
                values = _text_values(value, vr, codec)
                if values is not None:
                    entry["Value"] = values
            elif vr in _NUMBER_FORMATS:
                fmt = _NUMBER_FORMATS[vr]
                size = struct.calcsize(fmt)
                if value and len(value) % size == 0:
                    entry["Value"] = list(struct.unpack(f"<{len(value) // size}{fmt}", value))
                elif value:
                    raise ValueError("length is not a multiple of the value size")
            elif vr in _BINARY_VRS:
                if value:
                    if len(value) > inline_limit:
                        entry["BulkDataURI"] = bulk_uri(elem)
                    else:
                        entry["InlineBinary"] = base64.b64encode(value).decode()
            else:
                entry = ds[tag].to_json_dict(bulk_uri, bulk_data_threshold)
        except (UnicodeDecodeError, ValueError, struct.error):
            entry = ds[tag].to_json_dict(bulk_uri, bulk_data_threshold)
        out[key] = entry
    return out


def _json_item(
    item: Dataset, codec: str, bulk_data_threshold: int, bulk_uri: Callable[[Any], str]
) -> dict[str, Any]:
    """A sequence item as DICOM JSON: the fast path when it was read like its parent (same
    byte order and VR form; a character set of its own, which the standard allows, or an
    encoding pydicom did not record sends it to pydicom)."""
    encoding = getattr(item, "original_encoding", (None, None))
    if (
        "SpecificCharacterSet" in item
        or getattr(item, "is_little_endian", None) is False
        or encoding[1] is False
        or encoding[0] is None
    ):
        result: dict[str, Any] = item.to_json_dict(bulk_data_threshold, bulk_uri)
        return result
    return _json_dataset(item, codec, bulk_data_threshold, bulk_uri)
