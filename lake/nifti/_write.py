"""Writing NIfTI volumes: byte-deterministic ``.nii``/``.nii.gz``, sidecars, bval/bvec.

Every file is written to a temporary name in the destination folder and renamed into
place, so a reader never sees a half-written file. Output bytes depend only on the volume
and the compression level: the gzip header carries no time stamp and no file name, and the
deflate stream is cut into fixed-size blocks (pigz-style: each block primed with the last
32 KiB of its predecessor and ended with a sync flush) so the result does not depend on how
many threads compressed it.

Compression uses ``zlib-ng`` (same levels and format as zlib, several times faster); it is
imported only when compressing.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import struct
import tempfile
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any

import nibabel as nib
import numpy as np
from nibabel.arrayproxy import ArrayProxy

from lake._errors import ConfigError, ExportError
from lake.nifti._types import NiftiVolume

__all__ = ["BLOCK_SIZE", "MemoryFile", "gzip_members", "nifti_payload", "write_volume"]

#: Uncompressed bytes per deflate block; fixed so output does not depend on thread count.
BLOCK_SIZE = 1 << 20
_WINDOW = 1 << 15
_EXTENSION_FLAG = b"\x00\x00\x00\x00"
_NIFTI_OFFSET = 352


class MemoryFile(io.RawIOBase):
    """A read-only, seekable file over a byte buffer, without copying it (unlike BytesIO).

    Parameters
    ----------
    buffer : bytes-like
        The complete single-file NIfTI (header, extension flag, voxels).
    """

    def __init__(self, buffer: Any) -> None:
        super().__init__()
        self.view = memoryview(buffer).cast("B")
        self._position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, target: Any) -> int:
        out = memoryview(target).cast("B")
        n = max(0, min(len(out), len(self.view) - self._position))
        out[:n] = self.view[self._position : self._position + n]
        self._position += n
        return n

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: len(self.view)}
        self._position = max(0, base[whence] + offset)
        return self._position

    def tell(self) -> int:
        return self._position


def nifti_payload(image: nib.Nifti1Image) -> tuple[bytes, memoryview]:
    """The header block and the voxel bytes of a single-file NIfTI-1 image.

    Parameters
    ----------
    image : nibabel.Nifti1Image
        An image from :func:`lake.nifti.series_to_nifti` (its data object is a proxy over
        the encoded bytes, read without copying) or any in-memory ``Nifti1Image``.

    Returns
    -------
    tuple of (bytes, memoryview)
        352 bytes of header (with the empty extension flag) and the voxel data.
    """
    header: Any = image.header.copy()  # type: ignore[no-untyped-call]
    dataobj: Any = image.dataobj
    if isinstance(dataobj, ArrayProxy):
        header.set_slope_inter(dataobj.slope, dataobj.inter)
        fileobj = dataobj.file_like
        n_bytes = int(np.prod(dataobj.shape)) * np.dtype(dataobj.dtype).itemsize
        start = int(dataobj.offset)
        if isinstance(fileobj, MemoryFile):
            raw = fileobj.view[start : start + n_bytes]
        elif isinstance(fileobj, io.BytesIO):
            raw = fileobj.getbuffer()[start : start + n_bytes]
        else:
            unscaled = dataobj.get_unscaled()  # type: ignore[no-untyped-call]
            raw = memoryview(np.asarray(unscaled).tobytes(order="F"))
    else:
        array = np.asarray(dataobj)
        if array.dtype != header.get_data_dtype():
            array = array.astype(header.get_data_dtype())
        raw = memoryview(array.tobytes(order="F"))
    header.set_data_offset(_NIFTI_OFFSET)
    block = header.binaryblock
    return bytes(block) + _EXTENSION_FLAG, raw


def _zlib_ng() -> Any:
    try:
        from zlib_ng import zlib_ng
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise ConfigError(
            "writing .nii.gz needs the 'zlib-ng' package (pip install zlib-ng); "
            "or export uncompressed NIfTI"
        ) from exc
    return zlib_ng


def gzip_members(
    chunks: Iterable[bytes | memoryview], level: int, threads: int | None = None
) -> Iterable[bytes]:
    """Compress ``chunks`` (concatenated) into one deterministic gzip stream.

    Parameters
    ----------
    chunks : iterable of bytes-like
        The uncompressed content, in order.
    level : int
        zlib level 1 (fastest) to 9 (smallest); 0 stores.
    threads : int, optional
        Worker threads; defaults to the CPU count. Does not change the output.

    Yields
    ------
    bytes
        Pieces of the gzip file (header, deflate blocks, trailer).

    Raises
    ------
    ConfigError
        If ``level`` is out of range or zlib-ng is not installed.

    Examples
    --------
    >>> import gzip
    >>> data = b"lake" * 100_000
    >>> gzip.decompress(b"".join(gzip_members([data], 6))) == data
    True
    """
    if not 0 <= level <= 9:
        raise ConfigError(f"gzip level must be 0..9, got {level}")
    zng = _zlib_ng()
    blocks = _fixed_blocks(chunks)
    xfl = 2 if level == 9 else 4 if level == 1 else 0
    yield b"\x1f\x8b\x08\x00" + struct.pack("<I", 0) + bytes([xfl, 255])

    def deflate(job: tuple[memoryview, bytes, bool]) -> tuple[bytes, int, int]:
        data, dictionary, last = job
        if dictionary:
            compressor = zng.compressobj(level, zng.DEFLATED, -15, 9, zdict=dictionary)
        else:
            compressor = zng.compressobj(level, zng.DEFLATED, -15, 9)
        body = compressor.compress(data)
        body += compressor.flush(zng.Z_FINISH if last else zng.Z_SYNC_FLUSH)
        return body, zng.crc32(data), len(data)

    crc, size = 0, 0
    jobs = iter(_with_dictionaries(blocks))
    first = next(jobs)
    if first[2]:  # one block (most volumes of a series): no threads to start
        body, crc, size = deflate(first)
        yield body
        yield struct.pack("<II", crc & 0xFFFFFFFF, size & 0xFFFFFFFF)
        return
    jobs = itertools.chain([first], jobs)
    workers = threads or os.cpu_count() or 1
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending = []
        for job in jobs:
            pending.append(pool.submit(deflate, job))
            if len(pending) > 2 * workers:
                body, block_crc, n = pending.pop(0).result()
                crc, size = zng.crc32_combine(crc, block_crc, n), size + n
                yield body
        for future in pending:
            body, block_crc, n = future.result()
            crc, size = zng.crc32_combine(crc, block_crc, n), size + n
            yield body
    yield struct.pack("<II", crc & 0xFFFFFFFF, size & 0xFFFFFFFF)


def _fixed_blocks(chunks: Iterable[bytes | memoryview]) -> Iterable[memoryview]:
    carry = b""
    for chunk in chunks:
        view = memoryview(chunk).cast("B")
        if carry:
            need = BLOCK_SIZE - len(carry)
            carry += bytes(view[:need])
            view = view[need:]
            if len(carry) < BLOCK_SIZE:
                continue
            yield memoryview(carry)
            carry = b""
        while len(view) >= BLOCK_SIZE:
            yield view[:BLOCK_SIZE]
            view = view[BLOCK_SIZE:]
        carry = bytes(view)
    yield memoryview(carry)


def _with_dictionaries(
    blocks: Iterable[memoryview],
) -> Iterable[tuple[memoryview, bytes, bool]]:
    previous: memoryview | None = None
    dictionary = b""
    for block in blocks:
        if previous is not None:
            yield previous, dictionary, False
            dictionary = bytes(previous[-_WINDOW:])
        previous = block
    if previous is not None:
        yield previous, dictionary, True


def _atomic(path: Path, produce: Callable[[IO[bytes]], None]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(prefix=".lake-nifti-", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as out:
            produce(out)
        Path(temp).replace(path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return path


def _text_writer(text: str) -> Callable[[IO[bytes]], None]:
    data = text.encode("utf-8")

    def produce(out: IO[bytes]) -> None:
        out.write(data)

    return produce


def write_volume(
    vol: NiftiVolume,
    path_stem: str | os.PathLike[str],
    compress: bool = True,
    level: int = 6,
    *,
    threads: int | None = None,
) -> list[Path]:
    """Write one volume as ``<stem>.nii[.gz]``, ``<stem>.json`` and, for DWI, bval/bvec.

    Parameters
    ----------
    vol : NiftiVolume
        From :func:`lake.nifti.series_to_nifti`.
    path_stem : path-like
        Destination without extension; the volume's ``suffix`` is *not* appended (the
        caller decides names). Parent folders are created.
    compress : bool
        Write ``.nii.gz`` (gzip) instead of ``.nii``.
    level : int
        gzip level 1..9 (6 is gzip's and dcm2niix's default).
    threads : int, optional
        Compression threads (default: CPU count); the bytes written do not depend on it.

    Returns
    -------
    list of pathlib.Path
        The files written: image, sidecar, then ``.bval`` and ``.bvec`` when present.

    Raises
    ------
    ConfigError
        For a compression level out of range, or zlib-ng missing when compressing.
    ExportError
        If a file cannot be written.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from pydicom import dcmread
    >>> from pydicom.data import get_testdata_file
    >>> from lake.nifti import series_to_nifti
    >>> volumes, refusals = series_to_nifti([dcmread(get_testdata_file("CT_small.dcm"))])
    >>> stem = pathlib.Path(tempfile.mkdtemp()) / "ct"
    >>> [p.name for p in write_volume(volumes[0], stem, compress=True, level=6)]
    ['ct.nii.gz', 'ct.json']
    """
    if compress and not 0 <= level <= 9:
        raise ConfigError(f"gzip level must be 0..9, got {level}")
    stem = Path(path_stem)
    header, raw = nifti_payload(vol.image)
    written: list[Path] = []
    try:
        if compress:

            def produce_gz(out: IO[bytes]) -> None:
                for piece in gzip_members([header, raw], level, threads):
                    out.write(piece)

            written.append(_atomic(stem.with_name(stem.name + ".nii.gz"), produce_gz))
        else:

            def produce_nii(out: IO[bytes]) -> None:
                out.write(header)
                out.write(raw)

            written.append(_atomic(stem.with_name(stem.name + ".nii"), produce_nii))
        sidecar = json.dumps(vol.sidecar, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
        written.append(_atomic(stem.with_name(stem.name + ".json"), _text_writer(sidecar)))
        if vol.bval is not None and vol.bvec is not None:
            bval = " ".join(f"{v:g}" for v in vol.bval) + "\n"
            bvec = "".join(" ".join(f"{v:.6g}" for v in row) + "\n" for row in vol.bvec)
            written.append(_atomic(stem.with_name(stem.name + ".bval"), _text_writer(bval)))
            written.append(_atomic(stem.with_name(stem.name + ".bvec"), _text_writer(bvec)))
    except OSError as exc:
        raise ExportError(
            f"cannot write NIfTI files next to {stem.name!r} in {str(stem.parent)!r} "
            f"({exc.strerror}); check that the folder is writable and has space"
        ) from exc
    return written
