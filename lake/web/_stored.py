"""Reading stored instances for WADO-RS: exact bytes, converted bytes, frames, bulk data.

The bytes served "as stored" are those of ``lake export dicom``: the stored header plus
the pixel blob (:func:`lake.export.instance_bytes`), the blob re-hashed against its key.
Conversions are lossless only: to Explicit VR Little Endian, decoding compressed pixel
data with pydicom's pixel handlers.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from typing import Any

from pydicom import dcmread, dcmwrite
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.uid import UID

from lake._capture import capture
from lake._errors import IntegrityError
from lake.export import instance_bytes
from lake.nifti import decode_past_panic
from lake.query import Snapshot, StoredInstance
from lake.store import BlobStore, blob_key
from lake.web._errors import NotAcceptableError, NotFoundError
from lake.web._media import EXPLICIT_LE

__all__ = [
    "as_explicit_le",
    "frames_of",
    "load_bytes",
    "locate",
    "pixels_of",
    "with_headers",
]

_CHUNK = 64


def locate(
    snapshot: Snapshot, study: str, series: str | None = None, instance: str | None = None
) -> list[StoredInstance]:
    """The instances a WADO-RS path names, within the caller's snapshot.

    Raises
    ------
    NotFoundError
        If there is none (absent, or outside the caller's scope: the same answer).
    """
    found = snapshot.locate(study, series, instance)
    if not found:
        raise NotFoundError("not found")
    return found


def with_headers(
    snapshot: Snapshot, items: Sequence[StoredInstance], column: str
) -> Iterator[tuple[StoredInstance, Any]]:
    """Each item with its stored ``header_dicom`` or ``header_json``, fetched in chunks."""
    for start in range(0, len(items), _CHUNK):
        chunk = items[start : start + _CHUNK]
        found = snapshot.headers([i.sop_uid for i in chunk], column)
        for item in chunk:
            if item.sop_uid not in found:
                raise IntegrityError("an instance of the catalog has no stored header; "
                                     "run 'lake verify'")
            yield item, found[item.sop_uid]


def pixels_of(blobs: BlobStore, item: StoredInstance) -> bytes | None:
    """The instance's pixel blob, re-hashed against its key.

    Raises
    ------
    IntegrityError
        If the blob no longer matches its key.
    BlobNotFoundError
        If it is missing.
    """
    if item.pixel_hash is None:
        return None
    data = blobs.get(item.pixel_hash)
    if blob_key(data) != item.pixel_hash:
        raise IntegrityError(f"blob {item.pixel_hash} is corrupt; run 'lake verify'")
    return data


def load_bytes(blobs: BlobStore, item: StoredInstance, header: bytes) -> bytes:
    """The instance's Part-10 bytes as stored (what ``lake export dicom`` writes)."""
    return instance_bytes(header, pixels_of(blobs, item), item.pixel_vr)


def _read(data: bytes) -> Dataset:
    with capture():
        return dcmread(io.BytesIO(data))


def as_explicit_le(data: bytes) -> bytes:
    """The instance converted to Explicit VR Little Endian (pixels decoded when compressed).

    Raises
    ------
    NotAcceptableError
        If the conversion is not possible (a codec failed, big endian pixel data).
    """
    ds = _read(data)
    syntax = UID(ds.file_meta.TransferSyntaxUID)
    if syntax == EXPLICIT_LE:
        return data
    try:
        with capture():
            if syntax.is_compressed:
                decode_past_panic(ds.decompress)
            elif not syntax.is_little_endian:
                raise ValueError("big endian")
            else:
                ds.file_meta.TransferSyntaxUID = UID(EXPLICIT_LE)
            out = io.BytesIO()
            dcmwrite(out, ds, enforce_file_format=True)
            return out.getvalue()
    except Exception as exc:  # noqa: BLE001 - codecs fail in many types
        raise NotAcceptableError(
            f"an instance stored as {syntax.name} cannot be converted to Explicit VR Little "
            f"Endian ({type(exc).__name__}); ask for transfer-syntax=*"
        ) from None


def _frame_length(item: StoredInstance) -> int:
    bits = int(item.bits_allocated or 0)
    size = int(item.rows or 0) * int(item.columns or 0) * int(item.samples_per_pixel or 1) * bits
    if bits % 8 or size == 0:
        raise NotAcceptableError("frames of this instance cannot be cut from its pixel data")
    return size // 8


def frames_of(
    item: StoredInstance, pixels: bytes, numbers: Sequence[int]
) -> list[bytes]:
    """Frames ``numbers`` (1-based) of pixel data as stored.

    Raises
    ------
    NotFoundError
        If a number is not a frame of the instance.
    """
    count = int(item.frames or 1)
    if any(n < 1 or n > count for n in numbers):
        raise NotFoundError("not found")
    syntax = UID(item.transfer_syntax_uid)
    if syntax.is_encapsulated:
        with capture():
            every = [bytes(f) for f in generate_frames(pixels, number_of_frames=count)]
        return [every[n - 1] for n in numbers]
    length = _frame_length(item)
    return [pixels[(n - 1) * length : n * length] for n in numbers]


def decoded_pixels(data: bytes) -> tuple[Dataset, bytes]:
    """The instance with its pixel data decoded (Explicit VR Little Endian) and those pixels.

    Raises
    ------
    NotAcceptableError
        If decoding fails.
    """
    converted = as_explicit_le(data)
    ds = _read(converted)
    return ds, bytes(ds.PixelData)
