"""``dcmread`` of a whole file held in memory, its dataset's elements read by a tight loop.

pydicom reads a dataset one element at a time through a generator that asks the file
object for the 8 bytes of a header, then for the value, and makes each
:class:`~pydicom.dataelem.RawDataElement` through the named tuple's Python constructor:
~20 % of the per-file ingest of a CT/MR instance (issue 14.4). :func:`dcmread_bytes` reads
the top-level dataset of an explicit or implicit VR little endian file from the bytes
instead (``struct.unpack_from``, slices, the tuple made in C) and hands everything else to
pydicom's own functions in the order ``read_partial`` calls them: the preamble, the file
meta (with its conversions and log records), the command set, the transfer syntax look-up,
the dataset built from the elements, the character set, the ``FileDataset``. Like pydicom's
generator, it converts every (0008,0005) Specific Character Set it reads, not only the one
left in the dataset, so a bad one raises and an unknown term warns as with ``dcmread``. The
result is the dataset ``dcmread`` returns, element for element, with the same warnings and
log records (``tests/test_ingest_read.py`` compares them over pydicom's test files and
damaged variants).

Anything the loop does not read exactly as pydicom's generator would is read by pydicom:
another transfer syntax, a value of undefined length (sequences, encapsulated pixel data),
a VR that is not a standard one, a value or header running past the end, an item
delimiter at the top level, a first element whose VR form differs from the transfer
syntax's (pydicom warns and switches), pydicom's debugging on. The loop has no side effect
before it knows; pydicom then reads the dataset from where the loop started.

It mirrors the behaviour of pydicom's private ``read_partial``, ``read_dataset`` and
``data_element_generator`` and calls two private functions, as they are in the pydicom
versions of ``CHECKED_VERSIONS``: with any other version installed (decided once, at
import) :func:`dcmread_bytes` is plain ``dcmread``. Add a version only after reading its
``filereader`` against this module and running ``tests/test_ingest_read.py`` with it.
"""

from __future__ import annotations

import io
import struct
import zlib
from typing import Any, cast

import pydicom
import pydicom.uid as uids
from pydicom import config, filereader
from pydicom.charset import convert_encodings, default_encoding
from pydicom.config import logger
from pydicom.dataelem import (
    DataElement,
    RawDataElement,
    convert_raw_data_element,
    empty_value_for_VR,
)
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import dcmread, read_dataset, read_preamble
from pydicom.tag import BaseTag
from pydicom.valuerep import EXPLICIT_VR_LENGTH_16, EXPLICIT_VR_LENGTH_32
from pydicom.values import convert_string, converters

__all__ = ["CHECKED_VERSIONS", "dcmread_bytes"]

CHECKED_VERSIONS = frozenset({"3.0.2"})
"""The pydicom versions whose reader this module was checked against (see above)."""
_MIRRORED = pydicom.__version__ in CHECKED_VERSIONS

_EXPLICIT = struct.Struct("<HH2sH")
_IMPLICIT = struct.Struct("<HHL")
_LONG = struct.Struct("<L")
_UNDEFINED = 0xFFFFFFFF
_ITEM_END = 0xFFFEE00D
_CHARSET = 0x00080005
# The standard VRs as their two bytes, and whether a 32-bit length follows (PS3.5 7.1.2).
_SHORT = {code: code.decode(default_encoding)
          for code in (vr.encode(default_encoding) for vr in EXPLICIT_VR_LENGTH_16)}
_LONG_VRS = {code: code.decode(default_encoding)
             for code in (vr.encode(default_encoding) for vr in EXPLICIT_VR_LENGTH_32)}
_Elements = dict[BaseTag, DataElement | RawDataElement]
_new = tuple.__new__  # a RawDataElement of its nine fields, made in C (its _make is Python)


def dcmread_bytes(stream: io.BytesIO, data: bytes) -> FileDataset:
    """``dcmread(stream)`` of ``stream``, a ``BytesIO`` of ``data`` at its start.

    pydicom's ``read_partial`` step by step (``force``, ``stop_when``, ``defer_size`` and
    ``specific_tags`` left at ``dcmread``'s defaults), the dataset's elements read by
    :func:`_elements` where it can; ``dcmread`` itself with a pydicom version not in
    :data:`CHECKED_VERSIONS`.

    Raises
    ------
    Exception
        What ``dcmread`` raises for these bytes (``InvalidDicomError`` without the preamble,
        and so on): every step that can raise is pydicom's own.
    """
    if not _MIRRORED:
        return dcmread(stream)
    preamble = read_preamble(stream, False)
    file_meta = _file_meta(stream, data)
    start = stream.tell()
    command_set: Dataset | None = None
    # pydicom's read of a command set stops at a first tag of another group, having read at
    # most 12 bytes: an empty dataset, nothing logged.
    if config.debugging or len(data) - start < 12 or data[start:start + 2] == b"\x00\x00":
        command_set = filereader._read_command_set_elements(stream)
    fileobj: Any = stream
    peek = fileobj.read(1)
    if peek != b"":
        fileobj.seek(-1, 1)
    is_implicit_vr = True
    is_little_endian = True
    elements: _Elements | None = None
    transfer_syntax = file_meta.get("TransferSyntaxUID")
    if peek == b"":  # EOF
        pass
    elif transfer_syntax is None:  # issue 258 (pydicom's comment)
        group, _, vr = struct.unpack("<HH2s", fileobj.read(6))
        fileobj.seek(-6, 1)
        if vr.decode(default_encoding) in converters:
            is_implicit_vr = False
            if group >= 1024:
                is_little_endian = False
    elif transfer_syntax == uids.ImplicitVRLittleEndian:
        elements = _elements(data, fileobj.tell(), implicit=True)
    elif transfer_syntax == uids.ExplicitVRLittleEndian:
        is_implicit_vr = False
        elements = _elements(data, fileobj.tell(), implicit=False)
    elif transfer_syntax == uids.ExplicitVRBigEndian:
        is_implicit_vr = False
        is_little_endian = False
    elif transfer_syntax == uids.DeflatedExplicitVRLittleEndian:
        zipped = fileobj.read()
        name = getattr(fileobj, "name", None)
        buffer = DicomBytesIO(zlib.decompress(zipped, -zlib.MAX_WBITS))
        setattr(buffer, "name", name)  # noqa: B010 - pydicom sets it, None or not
        fileobj = buffer
        is_implicit_vr = False
    elif transfer_syntax in uids.PrivateTransferSyntaxes:
        syntax = uids.PrivateTransferSyntaxes[uids.PrivateTransferSyntaxes.index(transfer_syntax)]
        is_implicit_vr = syntax.is_implicit_VR
        is_little_endian = syntax.is_little_endian
    else:
        is_implicit_vr = False
    if elements is None:
        dataset = read_dataset(fileobj, is_implicit_vr, is_little_endian)
    else:  # read_dataset's steps after its loop
        fileobj.seek(0, io.SEEK_END)  # where pydicom's read ends
        dataset = Dataset(elements, parent_encoding=default_encoding)
        encoding: Any = default_encoding
        if _CHARSET in elements:
            charset = elements[BaseTag(_CHARSET)]
            assert isinstance(charset, RawDataElement)  # every element here is raw
            char_set = convert_raw_data_element(charset).value
            encoding = convert_encodings(char_set)
        dataset.set_original_encoding(is_implicit_vr, is_little_endian, encoding)
    if command_set:
        dataset.update(command_set)
    ds = FileDataset(fileobj, dataset, preamble, file_meta, is_implicit_vr, is_little_endian)
    ds.set_original_encoding(is_implicit_vr, is_little_endian, dataset._character_set)
    return ds


def _file_meta(stream: io.BytesIO, data: bytes) -> FileMetaDataset:
    """pydicom's ``_read_file_meta_info(stream)`` (``stream`` after the preamble), its
    elements read by :func:`_meta_elements` where it can."""
    start = stream.tell()
    found = _meta_elements(data, start)
    if found is None:
        return filereader._read_file_meta_info(stream)
    elements, end = found
    stream.seek(end)  # where pydicom's read stops: the first element of another group
    dataset = Dataset(elements, parent_encoding=default_encoding)  # read_dataset's steps
    dataset.set_original_encoding(False, True, default_encoding)  # no character set here
    file_meta = FileMetaDataset(dataset)
    file_meta.set_original_encoding(
        is_implicit_vr=False, is_little_endian=True, character_encoding=default_encoding)
    try:
        file_meta[next(iter(file_meta.elements())).tag]
    except NotImplementedError:  # pydicom reads it again as implicit VR
        stream.seek(start)
        file_meta = FileMetaDataset(read_dataset(
            stream, is_implicit_VR=True, is_little_endian=True, stop_when=_not_group_0002))
        file_meta.set_original_encoding(
            is_implicit_vr=True, is_little_endian=True, character_encoding=default_encoding)
    if "FileMetaInformationGroupLength" in file_meta:
        actual_len = stream.tell() - (start + 12)
        elem_len = file_meta.FileMetaInformationGroupLength
        if elem_len != actual_len:
            logger.info(
                "_read_file_meta_info: (0002,0000) 'File Meta Information "
                "Group Length' value doesn't match the actual File Meta "
                f"Information length ({elem_len} vs {actual_len} bytes)"
            )
    return file_meta


def _not_group_0002(tag: BaseTag, vr: str | None, length: int) -> bool:
    return tag >> 16 != 2


def _meta_elements(data: bytes, pos: int) -> tuple[_Elements, int] | None:
    """The file meta elements from ``pos`` as pydicom's ``read_dataset`` makes them (explicit
    VR little endian, group 2), and where its read stops; ``None``: pydicom must read them
    (as :func:`_elements`; also a first element of another group or without a VR)."""
    if config.debugging:
        return None
    end = len(data)
    if pos + 8 > end or data[pos:pos + 2] != b"\x02\x00":
        return None
    first, second = data[pos + 4], data[pos + 5]
    if not (0x40 < first < 0x5B and 0x40 < second < 0x5B):  # _is_implicit_vr
        return None
    elements: _Elements = {}
    new, short, long_vrs = _new, _SHORT, _LONG_VRS
    unpack = _EXPLICIT.unpack_from
    unpack_long = _LONG.unpack_from
    while pos + 8 <= end:
        group, element, code, length = unpack(data, pos)
        vr = short.get(code)
        if vr is not None:
            at = pos + 8
        else:
            vr = long_vrs.get(code)
            if vr is None or pos + 12 > end:
                return None
            (length,) = unpack_long(data, pos + 8)
            at = pos + 12
        if group != 2:  # pydicom stops here (stop_when), and goes back to the header
            if group == 0xFFFE and element == 0xE00D:  # it stops after it, not back
                return None
            return (elements, pos) if elements else None
        if length == _UNDEFINED:
            return None
        next_pos = at + length
        if next_pos > end:
            return None
        value = data[at:next_pos] if length else empty_value_for_VR(vr, raw=True)
        key = BaseTag(group << 16 | element)
        elements[key] = new(RawDataElement, (key, vr, length, value, at, False, True, True, False))
        pos = next_pos
    return elements, end  # fewer than 8 bytes left: read, and the read ends


def _elements(data: bytes, pos: int, *, implicit: bool) -> _Elements | None:
    """The top-level elements from ``pos`` to the end, as pydicom's ``read_dataset`` makes
    them (``None``: pydicom must read them, see the module docstring)."""
    if config.debugging:  # pydicom logs each element
        return None
    end = len(data)
    if pos + 6 <= end:  # read_dataset's _is_implicit_vr: the first element's VR form
        first, second = data[pos + 4], data[pos + 5]
        if (not (0x40 < first < 0x5B and 0x40 < second < 0x5B)) != implicit:
            return None
    elements: _Elements = {}
    charsets: list[object] = []  # every (0008,0005) value read, in order
    new, short, long_vrs = _new, _SHORT, _LONG_VRS
    if implicit:
        unpack = _IMPLICIT.unpack_from
        while pos + 8 <= end:
            group, element, length = unpack(data, pos)
            tag = group << 16 | element
            if length == _UNDEFINED or tag == _ITEM_END:
                return None
            at = pos + 8
            pos = at + length
            if pos > end:
                return None
            value = data[at:pos] if length else empty_value_for_VR(None, raw=True)
            if tag == _CHARSET:
                charsets.append(value)
            key = BaseTag(tag)
            elements[key] = new(RawDataElement, (key, None, length, value, at, True, True, True, False))
        _convert_charsets(charsets)
        return elements
    unpack = _EXPLICIT.unpack_from
    unpack_long = _LONG.unpack_from
    while pos + 8 <= end:
        group, element, code, length = unpack(data, pos)
        tag = group << 16 | element
        vr = short.get(code)
        if vr is not None:
            at = pos + 8
        else:
            vr = long_vrs.get(code)
            if vr is None or pos + 12 > end:
                return None
            (length,) = unpack_long(data, pos + 8)
            at = pos + 12
        if length == _UNDEFINED or tag == _ITEM_END:
            return None
        pos = at + length
        if pos > end:
            return None
        value = data[at:pos] if length else empty_value_for_VR(vr, raw=True)
        if tag == _CHARSET:
            charsets.append(value)
        key = BaseTag(tag)
        elements[key] = new(RawDataElement, (key, vr, length, value, at, False, True, True, False))
    _convert_charsets(charsets)
    return elements


def _convert_charsets(values: list[object]) -> None:
    """What pydicom's ``data_element_generator`` does on reading each (0008,0005) value:
    convert it, which raises (a value that is no codec name: ``ValueError``; an unknown term
    in pydicom's ``RAISE`` mode: ``LookupError``) or warns (an unknown or misspelt term) as
    it would. Done once the loop has read the whole dataset, in the order read: pydicom does
    nothing else between them that warns, logs or raises (and ``read_dataset`` catches
    neither exception), so the outcome is the same; a loop that gives up has converted
    nothing, and pydicom's own read converts them."""
    for value in values:
        convert_encodings(convert_string(cast(bytes, value) or b"", True))  # as pydicom casts
