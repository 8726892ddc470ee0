"""DICOM export: Part-10 files reassembled from the stored header and the pixel blob.

The catalog keeps each de-identified instance as its exact Part-10 bytes without
PixelData (``header_dicom``) plus a content-addressed pixel blob. Putting the blob back
as (7FE0,0010) gives the instance as it was after de-identification, element for
element. Files are laid out ``<patient>/<study>/<series>/<instance>.dcm`` with names
made only of pseudonymous identifiers (see :func:`dicom_layout`).
"""

from __future__ import annotations

import io
import os
import struct
from collections import defaultdict
from collections.abc import Sequence
from typing import TYPE_CHECKING

from pydicom import dcmread, dcmwrite
from pydicom.dataset import Dataset
from pydicom.uid import UID

from lake._capture import capture
from lake._errors import BlobNotFoundError, IntegrityError
from lake.export._cohort import Cohort
from lake.export._manifest import Skip, StagedFiles, TaskResult
from lake.export._runner import (
    ExportResult,
    ExportSpec,
    InstanceItem,
    InstanceRef,
    ProgressCallback,
    SeriesTask,
    TaskPlan,
    WriterContext,
    number_label,
    patient_label,
    run_export,
    short_hash,
)
from lake.store import BlobStore, blob_key

if TYPE_CHECKING:
    from lake._lake import Lake

__all__ = [
    "blob_skip",
    "dicom_layout",
    "encode",
    "export_dicom",
    "instance_bytes",
    "item_bytes",
    "load_pixels",
    "reassemble",
    "write_dicom_series",
]

_PIXEL_DATA = 0x7FE00010


def load_pixels(blobs: BlobStore, pixel_hash: str | None) -> bytes | None:
    """The pixel blob ``pixel_hash``, re-hashed against its key.

    Raises
    ------
    BlobNotFoundError
        If the blob is absent.
    IntegrityError
        If its content no longer hashes to its key.
    """
    if pixel_hash is None:
        return None
    data = blobs.get(pixel_hash)
    if blob_key(data) != pixel_hash:
        raise IntegrityError(f"blob {pixel_hash} is corrupt; run Lake.verify()",
                             functions=("Lake.verify",))
    return data


def reassemble(header: bytes, pixels: bytes | None, pixel_vr: str | None) -> Dataset:
    """The de-identified instance from its stored header and pixel value.

    Parameters
    ----------
    header : bytes
        ``header_dicom``: the Part-10 bytes without PixelData.
    pixels : bytes or None
        The pixel blob's content; None for an instance without pixel data.
    pixel_vr : str or None
        ``OB`` or ``OW``.

    Returns
    -------
    pydicom.dataset.Dataset
        With file meta; encapsulated pixel data is marked undefined length.
    """
    with capture():
        # Parser warnings could quote values; the header is de-identified, but stay quiet.
        ds = dcmread(io.BytesIO(header))
    if pixels is not None:
        ds.add_new(_PIXEL_DATA, pixel_vr or "OB", pixels)
        syntax = UID(ds.file_meta.get("TransferSyntaxUID", ""))
        if syntax and syntax.is_encapsulated:
            ds[_PIXEL_DATA].is_undefined_length = True
    return ds


def encode(ds: Dataset) -> bytes:
    """The Part-10 bytes of a dataset from :func:`reassemble`."""
    out = io.BytesIO()
    with capture():
        dcmwrite(out, ds, enforce_file_format=True)
    return out.getvalue()


def _pixel_element(pixels: bytes, vr: str, syntax: UID) -> bytes | None:
    """(7FE0,0010) encoded as pydicom's ``dcmwrite`` encodes it, or None when unsure."""
    if len(pixels) % 2 or vr not in ("OB", "OW") or syntax.is_deflated:
        return None
    order = "<" if syntax.is_little_endian else ">"
    tag = struct.pack(f"{order}HH", 0x7FE0, 0x0010)
    if syntax.is_encapsulated:
        if not syntax.is_little_endian or syntax.is_implicit_VR:
            return None
        return b"".join(
            (tag, vr.encode(), b"\0\0", struct.pack("<I", 0xFFFFFFFF), pixels,
             struct.pack("<HHI", 0xFFFE, 0xE0DD, 0))
        )
    length = struct.pack(f"{order}I", len(pixels))
    if syntax.is_implicit_VR:
        return b"".join((tag, length, pixels))
    return b"".join((tag, vr.encode(), b"\0\0", length, pixels))


def instance_bytes(header: bytes, pixels: bytes | None, pixel_vr: str | None) -> bytes:
    """The Part-10 bytes of a reassembled instance (see :func:`reassemble`).

    The same bytes as ``encode(reassemble(...))``, produced without re-encoding the header:
    the stored header is already the instance's exact Part-10 encoding without PixelData,
    so when no element follows (7FE0,0010) the pixel element is appended to it. Deflated
    transfer syntaxes and trailing elements take the re-encoding path.

    Examples
    --------
    >>> import io
    >>> from pydicom import dcmread, dcmwrite
    >>> from pydicom.data import get_testdata_file
    >>> ds = dcmread(get_testdata_file("CT_small.dcm"))
    >>> pixels, vr = ds.PixelData, ds["PixelData"].VR
    >>> del ds.PixelData
    >>> header = io.BytesIO()
    >>> dcmwrite(header, ds, enforce_file_format=True)
    >>> dcmread(io.BytesIO(instance_bytes(header.getvalue(), pixels, vr))).PixelData == pixels
    True
    """
    if pixels is None:
        return encode(reassemble(header, None, None))
    with capture():
        ds = dcmread(io.BytesIO(header))
    syntax = UID(ds.file_meta.get("TransferSyntaxUID", ""))
    # keys(), not iteration: iterating a Dataset would decode every raw element.
    trailing = any(int(tag) > _PIXEL_DATA for tag in ds.keys())  # noqa: SIM118
    element = None if trailing or not syntax else _pixel_element(pixels, pixel_vr or "OB", syntax)
    if element is None:
        return encode(reassemble(header, pixels, pixel_vr))
    return header + element


def item_bytes(item: InstanceItem, blobs: BlobStore) -> bytes:
    """The Part-10 bytes of one task item (pixels fetched and verified)."""
    return instance_bytes(item.header, load_pixels(blobs, item.pixel_hash), item.pixel_vr)


def blob_skip(task: SeriesTask, item: InstanceItem, exc: Exception) -> Skip:
    """The skip record for an instance whose pixel blob is missing or corrupt."""
    missing = isinstance(exc, BlobNotFoundError)
    return Skip(
        task.key,
        item.sop_uid,
        "blob_missing" if missing else "blob_corrupt",
        f"pixel blob {item.pixel_hash} is {'missing' if missing else 'corrupt'}; verify the lake",
    )


def _instance_name(ref: InstanceRef) -> str:
    return f"{number_label(ref.instance_number, 5)}_{short_hash(ref.sop_uid)}.dcm"


def dicom_layout(refs: Sequence[InstanceRef]) -> list[TaskPlan]:
    """``<patient>/<study>/<series>/<instance>.dcm`` from pseudonymous identifiers only.

    * patient: the pseudonymous PatientID (see :func:`patient_label`);
    * study: a 12-hex hash of the StudyInstanceUID;
    * series: ``<SeriesNumber>_<hash of SeriesInstanceUID>``;
    * instance: ``<InstanceNumber, 5 digits>_<hash of SOPInstanceUID>.dcm``.
    """
    by_series: dict[str, list[InstanceRef]] = defaultdict(list)
    for ref in refs:
        by_series[ref.series_uid].append(ref)
    plans = []
    for key in sorted(by_series):
        members = by_series[key]
        first = members[0]
        folder = "/".join(
            [
                patient_label(first.patient_id),
                short_hash(first.study_uid),
                f"{number_label(first.series_number)}_{short_hash(key)}",
            ]
        )
        members.sort(key=lambda r: (r.instance_number is None, r.instance_number or 0, r.sop_uid))
        names = tuple(
            (r.sop_uid, f"{folder}/{_instance_name(r)}")
            for r in members
        )
        plans.append(TaskPlan(key, folder, names))
    return plans


def write_dicom_series(task: SeriesTask, ctx: WriterContext) -> TaskResult:
    """Worker: write every instance of one series as a Part-10 file."""
    result = TaskResult(task.key)
    blobs = BlobStore(ctx.location)
    with StagedFiles(ctx.root) as staged:
        for item in task.items:
            try:
                data = item_bytes(item, blobs)
            except (BlobNotFoundError, IntegrityError) as exc:
                result.skipped.append(blob_skip(task, item, exc))
                continue
            staged.add(item.relpath, data)
        result.files = staged.commit()
    return result


def export_dicom(
    lake: Lake,
    cohort_or_sql: Cohort | str,
    out: str | os.PathLike[str],
    *,
    as_zip: bool = False,
    compresslevel: int = 6,
    scheduler: str = "auto",
    workers: int | None = None,
    on_progress: ProgressCallback | None = None,
) -> ExportResult:
    """Export a cohort as de-identified DICOM Part-10 files.

    Each file equals, element for element, the instance as it was ingested after
    de-identification. Re-running the same export gives byte-identical files; an
    interrupted export re-run with the same arguments finishes what is missing.

    Parameters
    ----------
    lake : Lake
        An open lake.
    cohort_or_sql : Cohort or str
        A cohort, the name of a saved cohort, or a one-off SQL query returning
        ``SeriesInstanceUID`` (or ``SOPInstanceUID``).
    out : path
        A new or empty folder (or the folder of an interrupted run of the same export).
    as_zip : bool
        Gather the files into ``<cohort>-dicom.zip`` (sorted entries, fixed timestamps).
    compresslevel : int
        Deflate level of the zip (0-9).
    scheduler : str
        Where to run: ``"auto"`` (in this process for small jobs), ``"sync"``,
        ``"processes"``, ``"threads"`` or a scheduler address (see :class:`lake.compute.Runner`).
    workers : int, optional
        Local workers.
    on_progress : callable, optional
        ``(series_done, series_total)``.

    Returns
    -------
    ExportResult
        ``manifest`` holds per-file sha256 and what was skipped (missing or corrupt blobs).

    Raises
    ------
    ExportError
        If ``out`` holds something else.
    IntegrityError
        If the catalog no longer matches a saved cohort.

    Examples
    --------
    >>> import lake  # doctest: +SKIP
    >>> from lake.export import export_dicom  # doctest: +SKIP
    >>> lk = lake.open("/data/lake")  # doctest: +SKIP
    >>> export_dicom(lk, "ct-chest", "/exports/ct", as_zip=True)  # doctest: +SKIP
    """
    from lake.export._cohort import resolve

    cohort = resolve(lake, cohort_or_sql)
    spec = ExportSpec(
        kind="dicom",
        options={"zip": as_zip, "compresslevel": compresslevel if as_zip else None},
        layout=dicom_layout,
        writer=write_dicom_series,
        archive=f"{cohort.label}-dicom.zip" if as_zip else None,
        compresslevel=compresslevel,
    )
    return run_export(
        lake, cohort, out, spec, scheduler=scheduler, workers=workers, on_progress=on_progress
    )
