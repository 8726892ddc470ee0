"""Documents export: the de-identified PDF, JPEG, PNG, TIFF and MP4 out of their DICOM wrapping.

One more :class:`~lake.export._runner.ExportSpec` adapter: the cohort's document instances
(rows with ``document_mime_type``) are written as the files a person opens - the
Encapsulated PDF's document, a VL Photographic Image's JPEG stream as it is stored (or its
decoded pixels as PNG), a multi-page scan as a multi-page TIFF, a video's H.264 stream in an
MP4 container - laid out ``<patient>/<study>/<series>/<instance>.<ext>`` from pseudonymous
identifiers only; ``documents.json`` lists each file with its UIDs and MIME type. Other
instances of the cohort are skipped (``not_a_document``).
"""

from __future__ import annotations

import io
import json
import os
from collections import defaultdict
from collections.abc import Sequence
from fractions import Fraction
from typing import TYPE_CHECKING, Any

from PIL import Image
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames

from lake._errors import BlobNotFoundError, IntegrityError
from lake.export._cohort import Cohort
from lake.export._dicom import blob_skip, load_pixels, reassemble
from lake.export._manifest import Skip, StagedFiles, TaskResult
from lake.export._runner import (
    ExportResult,
    ExportSpec,
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
from lake.nifti import decode_past_panic
from lake.store import BlobStore

if TYPE_CHECKING:
    from lake._lake import Lake

__all__ = ["document_bytes", "export_documents"]

_MIME = "document_mime_type"
_EXTENSIONS = {"application/pdf": "pdf", "image/jpeg": "jpg", "image/png": "png",
               "image/tiff": "tif", "video/mp4": "mp4"}
_LISTING = "documents.json"


def _select(refs: list[InstanceRef]) -> tuple[list[InstanceRef], list[Skip]]:
    kept = [r for r in refs if r.extra.get(_MIME) in _EXTENSIONS]
    skipped = [Skip(r.series_uid, r.sop_uid, "not_a_document",
                    "not a wrapped document (export it as DICOM)")
               for r in refs if r.extra.get(_MIME) not in _EXTENSIONS]
    return kept, skipped


def _layout(refs: Sequence[InstanceRef]) -> list[TaskPlan]:
    by_series: dict[str, list[InstanceRef]] = defaultdict(list)
    for ref in refs:
        by_series[ref.series_uid].append(ref)
    plans = []
    for key in sorted(by_series):
        members = sorted(by_series[key], key=lambda r: r.sop_uid)
        first = members[0]
        folder = "/".join([patient_label(first.patient_id), short_hash(first.study_uid),
                           f"{number_label(first.series_number)}_{short_hash(key)}"])
        names = tuple(
            (r.sop_uid, f"{folder}/{number_label(r.instance_number, 5)}_{short_hash(r.sop_uid)}"
                        f".{_EXTENSIONS[str(r.extra[_MIME])]}")
            for r in members)
        mimes = {r.sop_uid: str(r.extra[_MIME]) for r in members}
        plans.append(TaskPlan(key, folder, names, {"mimes": mimes}))
    return plans


def _png(frame: Any) -> bytes:
    out = io.BytesIO()
    Image.fromarray(frame).save(out, "PNG")
    return out.getvalue()


def document_bytes(ds: Dataset, mime: str) -> bytes:
    """The document held by a reassembled instance, as a file of type ``mime``."""
    if mime == "application/pdf":
        data = bytes(ds.EncapsulatedDocument)
        length = ds.get("EncapsulatedDocumentLength")
        return data[: int(length)] if length else data
    if mime == "video/mp4":
        from lake.documents import h264_to_mp4

        stream = b"".join(generate_frames(ds.PixelData, number_of_frames=1))
        fps = Fraction(1000) / Fraction(str(ds.FrameTime)).limit_denominator(1_000_000)
        return h264_to_mp4(stream, fps)
    if mime == "image/jpeg":
        return next(generate_frames(ds.PixelData, number_of_frames=1))
    from pydicom.pixels.utils import pixel_array

    frames = decode_past_panic(pixel_array, ds)
    if mime == "image/png":
        return _png(frames)
    pages = [Image.fromarray(f) for f in (frames if int(ds.get("NumberOfFrames", 1)) > 1
                                          else [frames])]
    out = io.BytesIO()
    pages[0].save(out, "TIFF", save_all=True, append_images=pages[1:], compression="tiff_deflate")
    return out.getvalue()


def _write(task: SeriesTask, ctx: WriterContext) -> TaskResult:
    result = TaskResult(task.key)
    blobs = BlobStore(ctx.location)
    mimes = task.meta["mimes"]
    with StagedFiles(ctx.root) as staged:
        for item in task.items:
            try:
                pixels = load_pixels(blobs, item.pixel_hash)
            except (BlobNotFoundError, IntegrityError) as exc:
                result.skipped.append(blob_skip(task, item, exc))
                continue
            ds = reassemble(item.header, pixels, item.pixel_vr)
            try:
                data = document_bytes(ds, mimes[item.sop_uid])
            except Exception as exc:  # noqa: BLE001 - one unreadable document is a skip
                result.skipped.append(Skip(task.key, item.sop_uid, "document_unreadable",
                                           f"the document cannot be unwrapped "
                                           f"({type(exc).__name__})"))
                continue
            staged.add(item.relpath, data)
        result.files = staged.commit()
    return result


def export_documents(
    lake: Lake,
    cohort_or_sql: Cohort | str,
    out: str | os.PathLike[str],
    *,
    scheduler: str = "auto",
    workers: int | None = None,
    on_progress: ProgressCallback | None = None,
) -> ExportResult:
    """Export a cohort's documents unwrapped: PDF, JPEG, PNG, TIFF and MP4 files.

    Resumable and reproducible like every export (see :func:`lake.export.export_dicom`);
    ``manifest.json`` holds each file's sha256, ``documents.json`` what each file is.

    Examples
    --------
    >>> from lake.export import export_documents  # doctest: +SKIP
    >>> export_documents(lk, "SELECT SOPInstanceUID FROM instances "
    ...                  "WHERE document_mime_type IS NOT NULL", "/exports/docs")  # doctest: +SKIP
    """
    from lake.export._cohort import resolve

    cohort = resolve(lake, cohort_or_sql)

    def listing(refs: Sequence[InstanceRef], results: Sequence[TaskResult]) -> dict[str, bytes]:
        names = {sop: name for plan in _layout(refs) for sop, name in plan.instances}
        written = {f.path for r in results for f in r.files}
        entries = [{"path": names[r.sop_uid], "SOPInstanceUID": r.sop_uid,
                    "SeriesInstanceUID": r.series_uid, "StudyInstanceUID": r.study_uid,
                    "PatientID": r.patient_id, "mime_type": r.extra[_MIME],
                    "pages": r.extra.get("document_pages"),
                    "duration": r.extra.get("document_duration")}
                   for r in refs if names.get(r.sop_uid) in written]
        entries.sort(key=lambda e: str(e["path"]))
        return {_LISTING: json.dumps(entries, indent=1, sort_keys=True).encode()}

    spec = ExportSpec(
        kind="documents",
        options={},
        layout=_layout,
        writer=_write,
        select=_select,
        columns=(_MIME, "document_pages", "document_duration"),
        extras=listing,
    )
    return run_export(lake, cohort, out, spec, scheduler=scheduler, workers=workers,
                      on_progress=on_progress)
