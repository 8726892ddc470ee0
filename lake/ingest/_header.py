"""The original header of a DICOM file on disk or in a zip, read within ingest's bounds.

Documents read the headers of the DICOM files beside them (to find their study) without
ingesting those files: only the header is wanted, so the file is never read whole. What
pydicom is given is the open file behind :class:`_Bounded`, which refuses any read that would
go past ``ReadLimits.max_header_bytes`` *before* the bytes are asked for: a value declaring
4 GiB is refused, not allocated. Pixel data is not read (``stop_before_pixels``), only regular
files are opened (non-blocking, checked on the descriptor), files and zip members larger than
``max_file_bytes`` are not opened, a deflated dataset is inflated by pydicom only once it is
known to inflate within ``max_file_bytes``, and sequences deeper than ``max_sequence_depth``
are refused before anything walks them.
"""

from __future__ import annotations

import io
import os
import struct
import zipfile
import zlib
from typing import IO

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian

from lake._errors import InputRefusedError
from lake.ingest._limits import ReadLimits, describe
from lake.ingest._nesting import LONG_VRS, deeper_than
from lake.ingest._sources import open_regular

__all__ = ["header_of_file", "header_of_member", "inflates_within", "within"]

_HEAD = 132
_DEFLATED = DeflatedExplicitVRLittleEndian.encode()
_CHUNK = 1 << 20


class _Bounded:
    """An open file as pydicom reads it, refusing reads past ``limit`` before they happen.

    pydicom asks for a value's declared length at once (``fp.read(length)``): a declared
    length past the bound is refused here, unread. It reads the rest of a deflated file with
    ``read()`` and inflates it whole: that rest is inflated here first, into nothing, and
    refused when it expands past ``inflated``.
    """

    def __init__(self, fh: IO[bytes], limit: int | None, inflated: int) -> None:
        self._fh = fh
        self._limit = limit
        self._inflated = inflated

    def read(self, size: int | None = -1) -> bytes:
        start = self._fh.tell()
        limit = self._limit
        if size is None or size < 0:
            rest = self._fh.read() if limit is None else self._fh.read(limit - start + 1)
            if limit is not None and start + len(rest) > limit:
                raise _over(limit)
            if not inflates_within(rest, self._inflated):
                raise InputRefusedError("too_large", (
                    f"the deflated dataset expands past max_file_bytes "
                    f"({describe(self._inflated)}); raise max_file_bytes to read it"))
            return rest
        if limit is not None and start + size > limit:
            raise _over(limit)
        return self._fh.read(size)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self._fh.seek(offset, whence)

    def tell(self) -> int:
        return self._fh.tell()


def within(data: bytes, limits: ReadLimits) -> io.BytesIO | _Bounded:
    """A whole file's bytes as pydicom reads them, a deflated dataset inflated only when it
    stays within ``limits.max_file_bytes`` (:class:`InputRefusedError` ``too_large``).

    Only a file naming the deflated transfer syntax is read through the check (found by a
    byte search, a fraction of a millisecond a MB): every other file is read at full speed.
    """
    stream = io.BytesIO(data)
    if data.find(_DEFLATED, 0, _meta_end(data)) < 0:
        return stream
    return _Bounded(stream, None, limits.max_file_bytes)


_META_SHORT_VRS = frozenset({b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FD", b"FL", b"IS",
                             b"LO", b"LT", b"PN", b"SH", b"SL", b"SS", b"ST", b"TM", b"UI",
                             b"UL", b"US"})  # pydicom's EXPLICIT_VR_LENGTH_16
_META_ELEMENT = struct.Struct("<H2x2sH")
_META_LONG_LENGTH = struct.Struct("<I")


def _meta_end(data: bytes) -> int:
    """Where the file meta group that pydicom reads ends (the transfer syntax is in it), so
    the search for the deflated syntax stops there instead of running through the pixel data
    (~0.17 ms a 0.9 MB file); the whole length unless the file has the preamble and its meta
    elements are explicit VR little endian of known VRs and defined lengths, as pydicom then
    reads them one after the other (otherwise pydicom may read them another way)."""
    size = len(data)
    if data[128:132] != b"DICM":
        return size
    pos = 132
    while pos + 8 <= size:
        group, vr, length = _META_ELEMENT.unpack_from(data, pos)
        if group != 2:
            return pos
        if vr in LONG_VRS:
            if pos + 12 > size:
                return size
            (length,) = _META_LONG_LENGTH.unpack_from(data, pos + 8)
            if length == 0xFFFFFFFF:
                return size
            pos += 12 + length
        elif vr in _META_SHORT_VRS:
            pos += 8 + length
        else:
            return size
    return size


def _over(limit: int) -> InputRefusedError:
    return InputRefusedError("header_too_large", (
        f"everything but the pixel data is larger than max_header_bytes ({describe(limit)}); "
        "raise max_header_bytes to read it"))


def inflates_within(data: bytes, limit: int) -> bool:
    """Whether the raw deflate stream ``data`` inflates to at most ``limit`` bytes.

    Inflated a chunk at a time into nothing: memory stays at one chunk whatever the ratio.
    A damaged stream is left for the parser to refuse.
    """
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    total = 0
    pending = data
    try:
        while pending and not inflater.eof:
            total += len(inflater.decompress(pending, _CHUNK))
            if total > limit:
                return False
            pending = inflater.unconsumed_tail
    except zlib.error:
        return True
    return True


def _read_header(fh: IO[bytes], limits: ReadLimits) -> Dataset:
    if fh.read(_HEAD)[128:] != b"DICM":
        raise InputRefusedError("not_dicom", "not a DICOM Part-10 file (no DICM after the preamble)")
    fh.seek(0)
    bounded = _Bounded(fh, limits.max_header_bytes, limits.max_file_bytes)
    try:
        ds = dcmread(bounded, stop_before_pixels=True)
    except InputRefusedError:
        raise
    except RecursionError:
        raise InputRefusedError("too_deep", "sequences are nested deeper than the parser can "
                                            "follow") from None
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types on damaged files
        raise InputRefusedError(
            "unreadable", f"the DICOM parser failed ({type(exc).__name__})") from None
    if deeper_than(ds, limits.max_sequence_depth):
        raise InputRefusedError("too_deep", (
            f"sequences nest deeper than max_sequence_depth ({limits.max_sequence_depth} "
            "levels); raise max_sequence_depth to read it"))
    return ds


def header_of_file(path: str, limits: ReadLimits) -> Dataset:
    """The header (everything before Pixel Data) of the DICOM Part-10 file at ``path``.

    Raises
    ------
    NotRegularFileError
        If ``path`` is not a regular file (checked on the open file: no FIFO is waited for).
    InputRefusedError
        If the file is over a bound of ``limits``, is not DICOM or cannot be parsed.
    OSError
        If it cannot be read.
    """
    with open_regular(path) as fh:
        if os.fstat(fh.fileno()).st_size > limits.max_file_bytes:
            raise InputRefusedError("too_large", (
                f"the file is larger than max_file_bytes ({describe(limits.max_file_bytes)})"))
        return _read_header(fh, limits)


def header_of_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo,
                     limits: ReadLimits) -> Dataset:
    """The header of the DICOM Part-10 zip member ``info`` of ``archive``.

    Raises
    ------
    InputRefusedError
        If the member's declared sizes or its content break a bound of ``limits``, or it is
        not DICOM or cannot be parsed.
    OSError, zipfile.BadZipFile, zlib.error ...
        If it cannot be decompressed (see :data:`lake.ingest._sources.ZIP_ERRORS`).
    """
    problem = limits.zip_member_problem(info.file_size, info.compress_size)
    if problem is not None:
        raise InputRefusedError(*problem)
    with archive.open(info) as fh:
        return _read_header(fh, limits)
