"""Reading vendor private elements by their private creator, whatever VR the file gave them.

A private element (gggg,xxee) lives in the block ``xx`` that a private creator element
(gggg,00xx) reserves; vendors and archives move blocks around, so elements are found through
their creator, as PS3.5 7.8 prescribes. Implicit-VR files and archives that lost the
private dictionary give values as raw bytes (VR UN): they are decoded here with the VR the
vendor documents. Nothing here interprets values.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.valuerep import IS, DSfloat

__all__ = [
    "DecodeError",
    "creator_block",
    "creator_memo",
    "first_float",
    "first_int",
    "floats",
    "image_type",
    "manufacturer",
    "phase_axis",
    "private",
    "text",
]

#: Exceptions a reader of damaged or unexpected private content may meet.
DecodeError = (ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError,
               struct.error, UnicodeDecodeError, EOFError)

_BINARY = {"FD": "d", "FL": "f", "SS": "h", "US": "H", "SL": "l", "UL": "L"}
#: Text VRs a file may give a private element (its value split on backslashes).
_TEXT = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "SH", "ST", "TM",
                   "UC", "UI", "UT"})


#: Private creators found so far in this derivation, by (id of dataset, group); see
#: :func:`creator_memo`. Datasets do not change while one instance is derived.
_MEMO: ContextVar[dict[tuple[int, int], list[tuple[int, str]]] | None] = ContextVar(
    "private_creator_memo", default=None
)


@contextmanager
def creator_memo() -> Iterator[None]:
    """Remember private creators while one (unchanging) dataset is read."""
    token = _MEMO.set({})
    try:
        yield
    finally:
        _MEMO.reset(token)


def _creators(ds: Dataset, group: int) -> list[tuple[int, str]]:
    """(block, upper-case name) of every private creator of ``group`` in ``ds``."""
    memo = _MEMO.get()
    key = (id(ds), group)
    if memo is not None and key in memo:
        return memo[key]
    base = group << 16
    keys = ds.keys()  # a dict view: membership is a hash lookup
    found = []
    for tag in [base | e for e in range(0x10, 0x100) if base | e in keys]:
        # the raw element when not converted yet: a creator is matched by its ASCII name, and
        # pydicom's conversion of every creator of the group cost most of the derivation
        value = ds.get_item(tag).value
        if isinstance(value, bytes | bytearray):
            value = bytes(value).decode("latin-1", "replace")
        found.append((tag & 0xFF, str(value).strip(" \x00").upper()))
    if memo is not None:
        memo[key] = found
    return found


def creator_block(ds: Dataset, group: int, creators: Iterable[str]) -> int | None:
    """The block number reserved by a private creator containing one of ``creators``."""
    wanted = [c.upper() for c in creators]
    for block, name in sorted(_creators(ds, group)):
        if any(w in name for w in wanted):
            return block
    return None


_MANUFACTURER = 0x00080070
_IMAGE_TYPE = 0x00080008
#: Stands for "read it through pydicom" (a value the raw readers do not take on).
_CONVERT = object()


def _raw_value(ds: Dataset, tag: int, vr: str) -> Any:
    """The bytes of ``tag`` when still raw in a pydicom ``ds`` with VR ``vr`` (or implicit),
    None when absent, else ``_CONVERT``. Reading them leaves the element raw (pydicom's
    conversion of ImageType and Manufacturer was most of the derivation's time at ingest)."""
    if not isinstance(ds, Dataset):
        return _CONVERT  # lake.nifti.Part10 (an export's reader): its own conversion
    elem = ds._dict.get(tag)  # type: ignore[call-overload]
    if elem is None:
        return None
    if not isinstance(elem, RawDataElement) or elem.VR not in (vr, None):
        return _CONVERT
    return elem.value if elem.value is not None else b""


def _unpadded(value: bytes) -> bytes | None:
    """``value`` without its padding when it is exactly what pydicom writes for it once
    converted (trailing spaces and NULs off, then one space to an even length), else None.

    Only such a value may stay raw: the de-identified header copies a raw element as it is,
    and a converted one as pydicom writes it, so anything else (odd length, NULs, more than
    one trailing space) must be converted as before for the stored header to be the same.
    """
    stripped = value.rstrip(b"\x00 ")
    return stripped if value == stripped + b" " * (len(stripped) % 2) else None


def manufacturer(ds: Dataset) -> str:
    """``str(ds.get("Manufacturer") or "")``, read from the raw bytes when they are one
    printable ASCII value (the same string in every character set) padded as pydicom pads
    it (:func:`_unpadded`); converted by pydicom otherwise."""
    value = _raw_value(ds, _MANUFACTURER, "LO")
    if value is None:
        return ""
    if isinstance(value, bytes):
        stripped = _unpadded(value)
        if stripped is not None and stripped.isascii():
            text = stripped.decode("ascii")
            if text.isprintable() and "\\" not in text:
                return text
    return str(ds.get("Manufacturer") or "")


def image_type(ds: Dataset) -> Any:
    """``ds.get("ImageType")``: pydicom's CS conversion (Latin-1, trailing spaces and NULs
    off the whole value, split on backslashes) done on the raw bytes when they are padded as
    pydicom pads them (:func:`_unpadded`); converted by pydicom otherwise."""
    value = _raw_value(ds, _IMAGE_TYPE, "CS")
    if not isinstance(value, bytes):
        return ds.get("ImageType") if value is _CONVERT else None
    stripped = _unpadded(value) if value else None
    if stripped is None:
        # empty: pydicom's empty value, whatever its settings; not padded as pydicom pads:
        # converted, so that the stored header is written from the converted value as before
        return ds.get("ImageType")
    parts = stripped.decode("latin-1").split("\\")
    return parts[0] if len(parts) == 1 else parts


def _decode(value: Any, vr: str, little_endian: bool) -> Any:
    if not isinstance(value, bytes | bytearray):
        return value
    raw = bytes(value)
    if vr in _BINARY:
        code = _BINARY[vr]
        size = struct.calcsize("<" + code)  # standard sizes (native "l" is 8 bytes)
        count = len(raw) // size
        items = struct.unpack(("<" if little_endian else ">") + code * count, raw[: size * count])
        return list(items) if count != 1 else items[0]
    if vr in ("OB", "OW", "UN", "SQ"):
        return raw
    parts = raw.rstrip(b"\x00 ").decode("latin-1").split("\\")
    return parts if len(parts) != 1 else parts[0]


def private(
    ds: Dataset, group: int, creators: Iterable[str], element: int, vr: str
) -> Any:
    """The value of private element ``element`` (0x00-0xFF) of ``creators``' block, or None.

    Parameters
    ----------
    ds : Dataset
        Dataset or sequence item holding the element.
    group : int
        Odd group number.
    creators : iterable of str
        Substrings of the private creator (case-insensitive), e.g. ``"GEMS_PARM_01"``.
    element : int
        Element offset within the block (the low byte).
    vr : str
        The VR the vendor documents, used to decode raw (UN) values.
    """
    block = creator_block(ds, group, creators)
    if block is None:
        return None
    tag = (group << 16) | (block << 8) | element
    if vr == "SQ":
        elem = ds.get(tag)  # pydicom parses the items
        return None if elem is None or not elem.value else elem.value
    # The raw element when not yet converted: decoding it here, with its VR, is an order of
    # magnitude cheaper than pydicom's conversion (this runs for every ingested instance).
    elem = ds.get_item(tag)
    if elem is None or elem.value is None or elem.value in ("", b""):
        return None
    file_vr = getattr(elem, "VR", None)
    if file_vr in _BINARY or file_vr in _TEXT:
        vr = file_vr
    little = getattr(elem, "is_little_endian", None)
    if little is None:
        little = getattr(ds, "is_little_endian", True)
    return _decode(elem.value, vr, little if little is not None else True)


def _scalars(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, MultiValue | list | tuple):
        return list(value)
    if isinstance(value, str) and "\\" in value:
        return value.split("\\")
    return [value]


def floats(value: Any) -> list[float]:
    """Every number in ``value`` (a number, a DS/IS string, a list...); ``[]`` when any item
    is not a number (a damaged element then leaves only its own parameters out).

    Examples
    --------
    >>> floats("1.5\\2")
    [1.5, 2.0]
    >>> floats(["1", "n/a"])
    []
    """
    out = []
    for item in _scalars(value):
        if isinstance(item, DSfloat | IS | float | int) and not isinstance(item, bool):
            out.append(float(item))
            continue
        try:
            out.append(float(str(item).strip()))
        except (ValueError, OverflowError):
            return []
    return out


def first_float(value: Any) -> float | None:
    """The first number of ``value``, None when absent or not a number."""
    items = _scalars(value)
    if not items:
        return None
    numbers = floats(items[0])
    return numbers[0] if numbers else None


def first_int(value: Any) -> int | None:
    """The first number of ``value`` when it is an integer, else None."""
    number = first_float(value)
    if number is None or number != int(number):
        return None
    return int(number)


def text(value: Any) -> str:
    """``value`` as text (for parsing codes; never stored)."""
    if value is None:
        return ""
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("latin-1", "replace")
    if isinstance(value, MultiValue | list | tuple):
        return "\\".join(str(v) for v in value)
    return str(value)


def phase_axis(ds: Dataset) -> str:
    """InPlanePhaseEncodingDirection (ROW, COL or ""), also from MR FOV/Geometry macros."""
    value = ds.get("InPlanePhaseEncodingDirection")
    if not value:
        for groups in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
            seq = ds.get(groups)
            if not seq:
                continue
            geometry = seq[0].get("MRFOVGeometrySequence")
            if geometry:
                value = geometry[0].get("InPlanePhaseEncodingDirection")
                if value:
                    break
    axis = str(value or "").strip().upper()
    return axis[:3] if axis[:3] in ("ROW", "COL") else ""
