"""Processing one instance: parse, check, de-identify, store pixels, build the catalog row.

This runs on Dask workers. It never raises for bad input: a file that cannot be
ingested becomes a :class:`Rejected` outcome with a reason code and a message that
holds no original value.
"""

from __future__ import annotations

import io
import json
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydicom import dcmread
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from lake._errors import DeidRefusedError
from lake.catalog import dicom_values
from lake.deid import Deidentifier
from lake.ingest._encode import encode_part10, header_json
from lake.ingest._lenient import lenient_pydicom
from lake.ingest._quarantine import store_rejected
from lake.store import BlobStore, Location, blob_key

if TYPE_CHECKING:
    from lake.documents import DocumentOptions

__all__ = ["Accepted", "IngestContext", "Outcome", "Rejected", "process_bytes"]

_DICOMDIR = "1.2.840.10008.1.3.10"
_PIXEL_DATA = 0x7FE00010
_HEADER_BULK_URI = "urn:imaging-lake:header_dicom"
_UNDEFINED = 0xFFFFFFFF
_DELIMITERS = (b"\xfe\xff\xdd\xe0\x00\x00\x00\x00", b"\xff\xfe\xe0\xdd\x00\x00\x00\x00")


@dataclass(frozen=True)
class IngestContext:
    """Everything a worker needs; pickled once per run and shipped to workers."""

    location: Location
    engine: Deidentifier
    quarantine_key: bytes = field(repr=False)
    documents: DocumentOptions | None = None


@dataclass
class Accepted:
    """An instance ready to commit."""

    row: dict[str, Any]
    actions: Counter[str]
    blob_written: bool
    bytes_in: int


@dataclass
class Rejected:
    """A file that was quarantined."""

    record: dict[str, Any]
    bytes_in: int


Outcome = Accepted | Rejected


class _InputError(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def _parse(data: bytes) -> Dataset:
    if not data:
        raise _InputError("empty", "the file is empty")
    try:
        ds = dcmread(io.BytesIO(data))
    except InvalidDicomError:
        try:
            ds = dcmread(io.BytesIO(data), force=True)
        except Exception as exc:  # noqa: BLE001 - any parser failure means "not DICOM"
            raise _InputError("not_dicom", f"not a DICOM file ({type(exc).__name__})") from None
        if "SOPInstanceUID" not in ds or "SOPClassUID" not in ds:
            reason = "not a DICOM file (no preamble and no SOP identity)"
            raise _InputError("not_dicom", reason) from None
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types on corrupt input
        reason = f"the DICOM parser failed ({type(exc).__name__})"
        raise _InputError("unreadable", reason) from None
    _check_encapsulated_end(ds, data)
    return ds


def _check_encapsulated_end(ds: Dataset, data: bytes) -> None:
    """Encapsulated pixel data must end with its sequence delimiter; a truncated file does not."""
    elem = ds.get_item(_PIXEL_DATA) if _PIXEL_DATA in ds else None
    if not isinstance(elem, RawDataElement) or elem.length != _UNDEFINED:
        return
    if not isinstance(elem.value, bytes):
        return
    end = elem.value_tell + len(elem.value)
    if data[end : end + 8] not in _DELIMITERS:
        raise _InputError("truncated", "the file ends before its pixel data is complete")


def _check(ds: Dataset) -> None:
    meta = getattr(ds, "file_meta", None)
    sop_class = ds.get("SOPClassUID") or (meta.get("MediaStorageSOPClassUID") if meta else None)
    if sop_class == _DICOMDIR or "DirectoryRecordSequence" in ds:
        raise _InputError(
            "dicomdir", "a DICOMDIR index, not an instance; ingest the folder it indexes"
        )
    for elem in ds._dict.values():  # raw elements: compare the declared and read lengths
        length = getattr(elem, "length", None)
        value = getattr(elem, "value", None)
        if (
            isinstance(length, int)
            and length != _UNDEFINED
            and isinstance(value, bytes)
            and len(value) < length
        ):
            raise _InputError("truncated", "the file ends before its last element is complete")
    for keyword in ("SOPInstanceUID", "SOPClassUID", "StudyInstanceUID", "SeriesInstanceUID"):
        if not ds.get(keyword):
            raise _InputError("missing_uid", f"the instance has no {keyword}")
    pixel_keywords = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
    if "Rows" in ds and not any(k in ds for k in pixel_keywords):
        raise _InputError("truncated", "an image without pixel data (truncated file?)")
    if "PixelData" in ds:
        _check_native_length(ds)


def _check_native_length(ds: Dataset) -> None:
    syntax = _transfer_syntax(ds)
    if syntax.is_encapsulated or syntax.is_deflated:
        return
    try:
        frames = int(ds.get("NumberOfFrames") or 1)
        expected = (
            int(ds.Rows)
            * int(ds.Columns)
            * int(ds.get("SamplesPerPixel", 1))
            * int(ds.BitsAllocated)
            * frames
        ) // 8
    except (AttributeError, TypeError, ValueError):
        raise _InputError("bad_image", "pixel module attributes are missing or malformed") from None
    if len(ds.PixelData) < expected:
        raise _InputError("truncated", "pixel data is shorter than Rows x Columns x frames")


def _transfer_syntax(ds: Dataset) -> UID:
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if syntax:
        return UID(syntax)
    return ImplicitVRLittleEndian if ds.is_implicit_VR else ExplicitVRLittleEndian


def _ensure_meta(ds: Dataset) -> None:
    syntax = _transfer_syntax(ds)
    if not isinstance(getattr(ds, "file_meta", None), FileMetaDataset):
        ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax  # MediaStorage* are set by encode_part10


def _bulk_uri(_elem: Any) -> str:
    return _HEADER_BULK_URI


def _reject(ctx: IngestContext, data: bytes, reason: str, message: str) -> Rejected:
    digest, object_key = store_rejected(ctx.location, data, ctx.quarantine_key)
    record = {
        "source_sha256": digest,
        "size_bytes": len(data),
        "reason": reason,
        "message": message,
        "object_key": object_key,
    }
    return Rejected(record, len(data))


def process_bytes(data: bytes, ctx: IngestContext) -> Outcome:
    """Ingest one file's bytes up to (not including) the catalog commit.

    Parameters
    ----------
    data : bytes
        The original (identified) file content. It is never stored in clear.
    ctx : IngestContext
        The lake, the compiled de-identification engine and the quarantine key.

    Returns
    -------
    Accepted or Rejected
    """
    # Warnings from the DICOM parser quote original values: they must never reach a log.
    with lenient_pydicom():
        return _process(data, ctx)


def _process(data: bytes, ctx: IngestContext) -> Outcome:
    try:
        ds = _parse(data)
        _check(ds)
        try:
            from lake.documents import before_deid  # documents already wrapped: their content

            content = before_deid(ds, ctx.engine)
            result = ctx.engine.apply(ds)
        except DeidRefusedError as exc:
            raise _InputError(exc.reason, str(exc)) from None
        if content is not None:
            content.restore(ds)
        _ensure_meta(ds)
        pixel_hash: str | None = None
        pixel_vr: str | None = None
        pixel_len = 0
        blob_written = False
        if _PIXEL_DATA in ds:
            elem = ds[_PIXEL_DATA]
            pixels: bytes = elem.value
            pixel_vr = elem.VR
            pixel_len = len(pixels)
            pixel_hash, blob_written = BlobStore(ctx.location).put_new(
                pixels, blob_key(pixels), durable=False
            )
            del ds[_PIXEL_DATA]
        header = encode_part10(ds)
        as_json = header_json(ds, 4096, _bulk_uri)
        if pixel_hash is not None:
            as_json["7FE00010"] = {"vr": pixel_vr, "BulkDataURI": pixel_hash}
        row = dicom_values(as_json, str(ds.file_meta.TransferSyntaxUID))
    except _InputError as rejection:
        return _reject(ctx, data, rejection.reason, rejection.message)
    except Exception as exc:  # noqa: BLE001 - one bad file must not sink the batch
        return _reject(
            ctx,
            data,
            "processing_error",
            f"processing failed ({type(exc).__name__}); the original is kept sealed for review",
        )
    row.update(
        pixel_hash=pixel_hash,
        pixel_vr=pixel_vr,
        pixel_bytes=pixel_len,
        size_bytes=len(header) + pixel_len,
        header_json=json.dumps(as_json, separators=(",", ":"), sort_keys=True),
        header_dicom=header,
        profile=ctx.engine.profile.name,
        profile_version=ctx.engine.profile.version,
        profile_sha256=ctx.engine.profile.sha256,
        pixels_cleaned=bool(getattr(result, "pixels_cleaned", False)),
    )
    if content is not None:
        row.update(content.columns)
    return Accepted(row, Counter(result.actions), blob_written, len(data))
