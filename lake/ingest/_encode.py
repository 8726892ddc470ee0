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
import struct
from collections.abc import Callable
from typing import Any

from pydicom import dcmwrite
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset, validate_file_meta
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element, write_file_meta_info
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

    Raw (unmodified) elements are copied byte for byte; modified ones are encoded by
    pydicom. Big-endian and deflated syntaxes are written entirely by pydicom.
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
    meta = FileMetaDataset(ds.file_meta)  # a shallow copy: elements are replaced, never mutated
    for meta_key, ds_key in (
        ("MediaStorageSOPClassUID", "SOPClassUID"),
        ("MediaStorageSOPInstanceUID", "SOPInstanceUID"),
    ):
        if ds.get(ds_key) and meta.get(meta_key) != ds.get(ds_key):
            setattr(meta, meta_key, ds.get(ds_key))
    validate_file_meta(meta, enforce_standard=True)
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = False
    preamble = getattr(ds, "preamble", None)
    fp.write((preamble if preamble and len(preamble) == 128 else b"\x00" * 128) + b"DICM")
    write_file_meta_info(fp, meta, enforce_standard=True)
    fp.is_implicit_VR = implicit
    encodings = ds.get("SpecificCharacterSet") or "iso8859"
    pack_tag = struct.Struct("<HH").pack
    for tag in sorted(ds.keys()):
        if tag.group == 2 or tag.element == 0:  # file meta; retired group lengths (PS3.5 7.2)
            continue
        elem = ds.get_item(tag)
        if isinstance(elem, RawDataElement) and isinstance(elem.value, bytes):
            value = elem.value
            undefined = elem.length == _UNDEFINED
            if implicit:
                fp.write(pack_tag(tag.group, tag.elem))
                fp.write(struct.pack("<I", _UNDEFINED if undefined else len(value)))
            elif elem.VR:
                vr = str(elem.VR)
                if vr in _LONG_VRS:
                    fp.write(pack_tag(tag.group, tag.elem) + vr.encode() + b"\x00\x00")
                    fp.write(struct.pack("<I", _UNDEFINED if undefined else len(value)))
                elif len(value) <= 0xFFFF and not undefined:
                    fp.write(pack_tag(tag.group, tag.elem) + vr.encode())
                    fp.write(struct.pack("<H", len(value)))
                else:
                    write_data_element(fp, ds[tag], encodings)
                    continue
            else:
                write_data_element(fp, ds[tag], encodings)
                continue
            fp.write(value)
            if undefined:
                fp.write(_SEQ_DELIMITER)
        else:
            write_data_element(fp, ds[tag], encodings)
    return bytes(fp.getvalue())


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
    out: dict[str, Any] = {}
    inline_limit = (bulk_data_threshold // 4) * 3
    for tag in sorted(ds.keys()):
        elem = ds.get_item(tag)
        key = f"{int(tag):08X}"
        if not (isinstance(elem, RawDataElement) and isinstance(elem.value, bytes)):
            out[key] = ds[tag].to_json_dict(bulk_uri, bulk_data_threshold)
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
