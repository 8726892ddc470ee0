"""Processing one instance: parse, check, de-identify, store pixels, build the catalog row.

This runs on Dask workers. It never raises for bad input: a file that cannot be
ingested becomes a :class:`Rejected` outcome with a reason code and a message that
holds no original value.
"""

from __future__ import annotations

import functools
import hashlib
import io
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydicom import dcmread
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.tag import BaseTag
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from lake._capture import capture
from lake._errors import DeidRefusedError, InputRefusedError
from lake.catalog._extract import dicom_values
from lake.deid import Deidentifier
from lake.ingest._dcmread import dcmread_bytes
from lake.ingest._encode import (
    JsonMemo,
    canonical_uid,
    element_value,
    encode_part10,
    header_json,
    header_text,
)
from lake.ingest._header import within
from lake.ingest._identity import identity_sha256
from lake.ingest._limits import ReadLimits, describe
from lake.ingest._nesting import deeper_than
from lake.ingest._quarantine import store_rejected
from lake.store import BlobStore, Location, blob_key

if TYPE_CHECKING:
    from lake.documents import DocumentOptions

__all__ = [
    "Accepted",
    "IngestContext",
    "Outcome",
    "Rejected",
    "accept",
    "process_bytes",
    "read_instance",
    "reject",
]

_DICOMDIR = "1.2.840.10008.1.3.10"
_PIXEL_DATA = 0x7FE00010
_PIXEL_TAGS = frozenset({0x7FE00008, 0x7FE00009, _PIXEL_DATA})  # float, double float, pixel data
_BULK_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN", "SQ"})
_HEADER_BULK_URI = "urn:imaging-lake:header_dicom"
_SOP_CLASS = 0x00080016
_MEDIA_STORAGE_SOP_CLASS = 0x00020002
_DIRECTORY_RECORDS = 0x00041220  # DirectoryRecordSequence
_ROWS = 0x00280010
_TRANSFER_SYNTAX = 0x00020010
_REQUIRED_UIDS = (("SOPInstanceUID", 0x00080018), ("SOPClassUID", _SOP_CLASS),
                  ("StudyInstanceUID", 0x0020000D), ("SeriesInstanceUID", 0x0020000E))
_UNDEFINED = 0xFFFFFFFF
# The lake's implementation (PS3.7 D.3.3.2): a UUID-derived UID (PS3.5 B.2), and a name.
IMPLEMENTATION_CLASS_UID = UID("2.25.256138820200504653945401404031685252907")
_DELIMITERS = (b"\xfe\xff\xdd\xe0\x00\x00\x00\x00", b"\xff\xfe\xe0\xdd\x00\x00\x00\x00")


@dataclass(frozen=True)
class IngestContext:
    """Everything a worker needs; pickled once per run and shipped to workers."""

    location: Location
    engine: Deidentifier
    quarantine_key: bytes = field(repr=False)
    documents: DocumentOptions | None = None
    limits: ReadLimits = field(default_factory=ReadLimits)
    json_memo: JsonMemo = field(default_factory=JsonMemo, repr=False, compare=False)
    """The header JSON entries of values seen before (:class:`JsonMemo`; emptied when
    pickled)."""


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


def _parse(data: bytes, limits: ReadLimits) -> Dataset:
    if not data:
        raise InputRefusedError("empty", "the file is empty")
    try:
        stream = within(data, limits)
        ds = dcmread_bytes(stream, data) if type(stream) is io.BytesIO else dcmread(stream)
    except InvalidDicomError:
        try:
            ds = dcmread(within(data, limits), force=True)
        except InputRefusedError:
            raise
        except RecursionError:
            raise _too_deep() from None
        except Exception as exc:  # noqa: BLE001 - any parser failure means "not DICOM"
            raise InputRefusedError("not_dicom", f"not a DICOM file ({type(exc).__name__})") from None
        if "SOPInstanceUID" not in ds or "SOPClassUID" not in ds:
            reason = "not a DICOM file (no preamble and no SOP identity)"
            raise InputRefusedError("not_dicom", reason) from None
    except InputRefusedError:
        raise
    except RecursionError:
        raise _too_deep() from None
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types on corrupt input
        reason = f"the DICOM parser failed ({type(exc).__name__})"
        raise InputRefusedError("unreadable", reason) from None
    _check_encapsulated_end(ds, data)
    return ds


def _too_deep() -> InputRefusedError:
    return InputRefusedError(
        "too_deep", "sequences are nested deeper than the parser can follow (about 150 levels)"
    )


def _check_encapsulated_end(ds: Dataset, data: bytes) -> None:
    """Encapsulated pixel data must end with its sequence delimiter; a truncated file does not."""
    elem = ds.get_item(_PIXEL_DATA) if _PIXEL_DATA in ds else None
    if not isinstance(elem, RawDataElement) or elem.length != _UNDEFINED:
        return
    if not isinstance(elem.value, bytes):
        return
    end = elem.value_tell + len(elem.value)
    if data[end : end + 8] not in _DELIMITERS:
        raise InputRefusedError("truncated", "the file ends before its pixel data is complete")


def _check(ds: Dataset, size: int, limits: ReadLimits) -> None:
    meta = getattr(ds, "file_meta", None)
    # Element values by tag (element_value): ds.get(keyword) pays a keyword lookup and a
    # caught AttributeError per call.
    sop_class = _uid_value(ds, _SOP_CLASS) or (
        element_value(meta, _MEDIA_STORAGE_SOP_CLASS) if meta else None)
    if sop_class == _DICOMDIR or _DIRECTORY_RECORDS in ds._dict:
        raise InputRefusedError(
            "dicomdir", "a DICOMDIR index, not an instance; ingest the folder it indexes"
        )
    max_value = limits.max_value_bytes
    for elem in ds._dict.values():  # raw elements: compare the declared and read lengths
        if not isinstance(elem, RawDataElement):  # converted: no length (DataElement has none)
            continue
        length, value = elem.length, elem.value
        if not isinstance(length, int) or not isinstance(value, bytes):
            continue
        if length != _UNDEFINED and len(value) < length:
            raise InputRefusedError("truncated", "the file ends before its last element is complete")
        if len(value) > max_value and _limited(elem.tag, elem.VR):
            raise InputRefusedError(
                "value_too_long",
                f"an element value is longer than max_value_bytes ({describe(max_value)}); "
                "raise max_value_bytes to ingest it",
            )
    if deeper_than(ds, limits.max_sequence_depth):
        raise InputRefusedError(
            "too_deep",
            f"sequences nest deeper than max_sequence_depth ({limits.max_sequence_depth} "
            "levels); raise max_sequence_depth to ingest it",
        )
    pixel_bytes = sum(_value_length(ds, tag) for tag in _PIXEL_TAGS)
    if size - pixel_bytes > limits.max_header_bytes:
        raise InputRefusedError(
            "header_too_large",
            f"everything but the pixel data is larger than max_header_bytes "
            f"({describe(limits.max_header_bytes)}); raise max_header_bytes to ingest it",
        )
    if not _transfer_syntax(ds).is_transfer_syntax:
        raise InputRefusedError(
            "bad_syntax", "the file meta names a transfer syntax that is not one pydicom reads"
        )
    for keyword, tag in _REQUIRED_UIDS:
        if not _uid_value(ds, tag):
            raise InputRefusedError("missing_uid", f"the instance has no {keyword}")
    elements = ds._dict
    if _ROWS in elements and not any(tag in elements for tag in _PIXEL_TAGS):
        raise InputRefusedError("truncated", "an image without pixel data (truncated file?)")
    if _PIXEL_DATA in elements:
        _check_native_length(ds)


def _uid_value(ds: Dataset, tag: int) -> Any:
    """``ds.get(keyword)`` of a UID element, without converting a canonical raw one
    (:func:`canonical_uid`: its value is its bytes; de-identification replaces or keeps it,
    and encoding copies it, as they would the converted element)."""
    uid = canonical_uid(ds._dict.get(tag))  # type: ignore[call-overload]
    return uid if uid is not None else element_value(ds, tag)


def _value_length(ds: Dataset, tag: int) -> int:
    elem = ds._dict.get(tag)  # type: ignore[call-overload]
    value = getattr(elem, "value", None)
    return len(value) if isinstance(value, bytes) else 0


def _limited(tag: int, vr: str | None) -> bool:
    """Whether ``max_value_bytes`` applies: text and numbers, not bulk binary, sequences or
    pixel data."""
    if tag in _PIXEL_TAGS:
        return False
    if vr is None or vr == "UN":  # implicit VR, or a long value written as UN: the dictionary's
        try:
            vr = dictionary_VR(tag)
        except KeyError:
            return False
    return not any(v in _BULK_VRS for v in vr.split(" or "))  # "OB or OW", "US or SS or OW"


def read_instance(data: bytes, limits: ReadLimits | None = None) -> Dataset:
    """Parse and check one original instance as ingest does, before de-identification.

    Call it inside :func:`lake._capture.capture`: parser warnings quote original values.

    Raises
    ------
    InputRefusedError
        When ingest would quarantine the file: not DICOM, empty, truncated, a DICOMDIR,
        missing UIDs, over a bound of ``limits``, nested too deeply.
    """
    try:
        limits = limits or ReadLimits()
        ds = _parse(data, limits)
        _check(ds, len(data), limits)
    except InputRefusedError:
        raise
    except RecursionError:
        raise _too_deep() from None
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types on damaged values
        raise InputRefusedError(
            "unreadable", f"the DICOM parser failed ({type(exc).__name__})"
        ) from None
    return ds


def _check_native_length(ds: Dataset) -> None:
    syntax = _transfer_syntax(ds)
    if syntax.is_encapsulated or syntax.is_deflated:
        return
    try:
        frames = int(element_value(ds, 0x00280008) or 1)  # NumberOfFrames
        expected = (
            int(_required(ds, _ROWS))
            * int(_required(ds, 0x00280011))  # Columns
            * int(_unsigned_short(ds, 0x00280002, 1))  # SamplesPerPixel
            * int(_required(ds, 0x00280100))  # BitsAllocated
            * frames
        ) // 8
    except (AttributeError, TypeError, ValueError):
        raise InputRefusedError("bad_image", "pixel module attributes are missing or malformed") from None
    if len(_pixel_data(ds)[0]) < expected:
        raise InputRefusedError("truncated", "pixel data is shorter than Rows x Columns x frames")


def _pixel_data(ds: Dataset) -> tuple[Any, Any]:
    """The value and VR of Pixel Data (present) as ``ds[tag]`` gives them; a raw OB or OW
    value is those bytes already, and is left raw (encoding copies it, storing removes it)."""
    elem = ds._dict[_PIXEL_DATA]  # type: ignore[index]
    if not (isinstance(elem, RawDataElement) and elem.VR in ("OB", "OW")
            and isinstance(elem.value, bytes)):
        elem = ds[_PIXEL_DATA]
    return elem.value, elem.VR


def _required(ds: Dataset, tag: int) -> Any:
    """``getattr(ds, keyword)`` of a US element: the value, AttributeError when absent."""
    if tag not in ds._dict:
        raise AttributeError(f"no element {tag:08X}")
    return _unsigned_short(ds, tag)


def _unsigned_short(ds: Dataset, tag: int, default: Any = None) -> Any:
    """:func:`element_value` of a US element; one raw explicit VR little endian value is
    read from its two bytes, and the element left raw (converting it gives the same number,
    and writing or serialising it the same bytes and JSON; the checks run on every file)."""
    elem = ds._dict.get(tag)  # type: ignore[call-overload]
    if (
        isinstance(elem, RawDataElement)
        and elem.VR == "US"
        and elem.is_little_endian
        and isinstance(elem.value, bytes)
        and len(elem.value) == 2
    ):
        return elem.value[0] | elem.value[1] << 8
    return element_value(ds, tag, default)


def _transfer_syntax(ds: Dataset) -> UID:
    meta = getattr(ds, "file_meta", None)
    syntax = element_value(meta, 0x00020010) if meta is not None else None  # TransferSyntaxUID
    if syntax:
        return syntax if isinstance(syntax, UID) else UID(syntax)  # UID() validates again
    return ImplicitVRLittleEndian if ds.is_implicit_VR else ExplicitVRLittleEndian


def _ensure_meta(ds: Dataset) -> None:
    """The file meta the lake writes: the sender's implementation never travels (the
    de-identification profile removed it, and a site recipe cannot keep it).

    The lake's implementation elements are set raw, as the bytes pydicom writes for them
    (:func:`_implementation`): converted elements cost a validation of the value each, and
    every file has them. A transfer syntax already held (converted) is not set again.
    """
    syntax = _transfer_syntax(ds)
    if not isinstance(getattr(ds, "file_meta", None), FileMetaDataset):
        ds.file_meta = FileMetaDataset()
    meta = ds.file_meta
    held = meta._dict.get(_TRANSFER_SYNTAX)  # type: ignore[call-overload]
    if not (isinstance(held, DataElement) and held.value is syntax):
        _set(meta, _TRANSFER_SYNTAX, "UI", syntax)  # MediaStorage* by encode_part10
    elements = meta._dict
    for elem in _implementation():
        elements[elem.tag] = elem


@functools.cache
def _implementation() -> tuple[RawDataElement, RawDataElement]:
    """ImplementationClassUID and ImplementationVersionName as raw explicit VR little endian
    elements: their values padded as pydicom pads a UI and an SH value (immutable, shared;
    converting one replaces it in its dataset, never changes it)."""
    from lake import __version__  # lake/__init__ imports this module before defining it

    version = f"IMAGINGLAKE_{__version__}"[:16].encode("ascii")
    uid = IMPLEMENTATION_CLASS_UID.encode("ascii")
    return (_raw(0x00020012, "UI", uid + b"\0" * (len(uid) % 2)),
            _raw(0x00020013, "SH", version + b" " * (len(version) % 2)))


def _raw(tag: int, vr: str, value: bytes) -> RawDataElement:
    return RawDataElement(BaseTag(tag), vr, len(value), value, 0, False, True)


def _set(ds: Dataset, tag: int, vr: str, value: Any) -> None:
    """``setattr(ds, keyword, value)`` for the keyword of ``tag`` (of dictionary VR ``vr``):
    the steps of ``Dataset.__setattr__``, without its keyword and tag lookups."""
    if tag in ds._dict:
        elem = ds[tag]
        elem.value = value
    else:
        elem = DataElement(tag, vr, value)
    ds[tag] = elem


def _bulk_uri(_elem: Any) -> str:
    return _HEADER_BULK_URI


def accept(ds: Dataset, ctx: IngestContext, actions: Counter[str], bytes_in: int, *,
           pixels_cleaned: bool = False, columns: Mapping[str, Any] | None = None) -> Accepted:
    """The outcome of a de-identified instance: its pixel data stored, its catalog row built.

    The one row-building path of every front door (files, C-STORE, STOW-RS, documents).

    Parameters
    ----------
    ds : Dataset
        The de-identified instance. Its Pixel Data is stored as a blob and removed from it.
    ctx : IngestContext
        The lake, the engine (its profile is recorded in the row).
    actions : Counter
        The de-identification action codes taken (counts, no values).
    bytes_in : int
        Size of the original input.
    pixels_cleaned : bool
        Whether burned-in regions were masked.
    columns : mapping, optional
        The lake's own columns known to the caller (document, acquisition), set last.

    Returns
    -------
    Accepted

    Raises
    ------
    Exception
        Whatever encoding or storing raises; callers quarantine the input (:func:`reject`).
    """
    _ensure_meta(ds)
    pixel_hash: str | None = None
    pixel_vr: str | None = None
    pixel_len = 0
    blob_written = False
    if _PIXEL_DATA in ds._dict:
        pixels, pixel_vr = _pixel_data(ds)
        pixel_len = len(pixels)
        pixel_hash, blob_written = BlobStore(ctx.location).put_new(
            pixels, blob_key(pixels), durable=False
        )
        del ds[_PIXEL_DATA]
    header = encode_part10(ds)
    as_json = header_json(ds, 4096, _bulk_uri, ctx.json_memo)
    if pixel_hash is not None:
        as_json["7FE00010"] = {"vr": pixel_vr, "BulkDataURI": pixel_hash}
    row = dicom_values(as_json, str(element_value(ds.file_meta, _TRANSFER_SYNTAX)))
    text = header_text(as_json)  # json.dumps(as_json, separators=(",", ":"), sort_keys=True)
    row.update(
        pixel_hash=pixel_hash,
        pixel_vr=pixel_vr,
        pixel_bytes=pixel_len,
        size_bytes=len(header) + pixel_len,
        header_json=text,
        header_dicom=header,
        # Hashed here, on the worker, not by the committing driver (one process for all).
        identity_sha256=identity_sha256(text),
        header_sha256=hashlib.sha256(header).hexdigest(),
        profile=ctx.engine.profile.name,
        profile_version=ctx.engine.profile.version,
        profile_sha256=ctx.engine.profile.sha256,
        pixels_cleaned=pixels_cleaned,
    )
    if columns:
        row.update(columns)
    return Accepted(row, actions, blob_written, bytes_in)


def reject(ctx: IngestContext, data: bytes, reason: str, message: str) -> Rejected:
    """Quarantine ``data``: the original sealed, a record with ``reason`` and ``message``."""
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
    # Warnings and log records of the parser quote original values: captured (counted, never
    # shown) for this thread while it works; lake._capture says why not catch_warnings.
    with capture():
        return _process(data, ctx)


def _process(data: bytes, ctx: IngestContext) -> Outcome:
    try:
        ds = read_instance(data, ctx.limits)
        from lake.nifti import derive_acquisition  # what private elements hold, as numbers

        acquisition = derive_acquisition(ds)  # before de-identification removes them
        try:
            from lake.documents import before_deid  # documents already wrapped: their content

            content = before_deid(ds, ctx.engine)
            result = ctx.engine.apply(ds)
        except DeidRefusedError as exc:
            raise InputRefusedError(exc.reason, str(exc)) from None
        if content is not None:
            content.restore(ds)
        columns = dict(content.columns) if content is not None else {}
        columns.update(acquisition)
        return accept(ds, ctx, Counter(result.actions), len(data),
                      pixels_cleaned=bool(getattr(result, "pixels_cleaned", False)),
                      columns=columns)
    except InputRefusedError as rejection:
        return reject(ctx, data, rejection.reason, rejection.message)
    except RecursionError:
        too_deep = _too_deep()
        return reject(ctx, data, too_deep.reason, too_deep.message)
    except Exception as exc:  # noqa: BLE001 - one bad file must not sink the batch
        return reject(
            ctx,
            data,
            "processing_error",
            f"processing failed ({type(exc).__name__}); the original is kept sealed for review",
        )
