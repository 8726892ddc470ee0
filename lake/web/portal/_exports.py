"""What the portal's jobs run: a cohort (or one case of it) exported and packed as one zip."""

from __future__ import annotations

import os
import zipfile
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import anyio
from starlette.responses import FileResponse
from starlette.types import Receive, Scope, Send

from lake._errors import ExportError
from lake.catalog import ERASURES, INSTANCES
from lake.export import Cohort, export_bids, export_dicom, export_nifti, export_teaching
from lake.steward import EXPORT_MEMBERS
from lake.store._fs import PortalJobOut

if TYPE_CHECKING:
    from lake._lake import Lake
    from lake.web.portal._jobs import Job

__all__ = ["FORMATS", "export_zip", "servable", "served_zip", "zip_folder"]

Progress = Callable[[int, int], None]

FORMATS = {
    "nifti": "NIfTI + JSON sidecars (compressed .nii.gz)",
    "bids": "BIDS dataset",
    "dicom": "de-identified DICOM",
    "teaching": "teaching set (DICOM + previews + manifest)",
}


def zip_folder(folder: Path, target: Path) -> Path:
    """Pack every file below ``folder`` into ``target`` (gzip files stored, others deflated)."""
    partial = target.with_name(target.name + ".partial")
    with zipfile.ZipFile(partial, "w") as archive:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            name = path.relative_to(folder).as_posix()
            method = zipfile.ZIP_STORED if path.suffix in (".gz", ".zip") else zipfile.ZIP_DEFLATED
            archive.write(path, name, compress_type=method)
    partial.replace(target)
    return target


def export_zip(lk: Lake, cohort: Cohort, kind: str, folder: Path, progress: Progress) -> Path:
    """Export ``cohort`` as ``kind`` below ``folder``; returns the zip to download.

    Raises
    ------
    ExportError
        If the format is unknown or not available, or the export is refused.
    """
    # Its members first, before anything is read: lake.steward.forget removes the folders
    # of exports holding what it erases, and the portal serves none without this list.
    listed = folder / EXPORT_MEMBERS
    listed.with_name(listed.name + ".partial").write_text(
        "".join(m.sop_uid + "\n" for m in cohort.members))
    listed.with_name(listed.name + ".partial").replace(listed)
    # The one place an export may write inside the lake: forget reaches this folder.
    out = folder / "export"
    job_out = PortalJobOut(out)
    label = cohort.label
    if kind == "teaching":
        result = export_teaching(lk, cohort, job_out, scheduler="sync", on_progress=progress)
        if result.archive is None:
            raise ExportError("the teaching set export made no zip")
        return result.archive
    if kind == "dicom":
        result = export_dicom(lk, cohort, job_out, as_zip=True, scheduler="sync",
                              on_progress=progress)
        if result.archive is None:
            raise ExportError("the DICOM export made no zip")
        return result.archive
    if kind == "nifti":
        export_nifti(lk, cohort, job_out, compress=True, scheduler="sync", on_progress=progress)
    elif kind == "bids":
        export_bids(lk, cohort, job_out, scheduler="sync", on_progress=progress)
    else:
        raise ExportError(f"no export format {kind!r} here; choose nifti, dicom or teaching")
    return zip_folder(out, folder / f"{label}-{kind}.zip")


def servable(lk: Lake, job: Job) -> bool:
    """Whether ``job``'s zip may be served: made, not removed by ``lake forget``, and, when
    an erasure was recorded since the job started, still holding no withdrawn instance.

    ``lake forget`` removes the exports it finds below ``<lake>/portal/jobs``; a server of a
    lake on an object store keeps its jobs in a folder of its own, which forget cannot
    reach, so the server checks their members against the catalog itself after an erasure.
    """
    if not job.available:
        return False
    if not lk.tables.exists(ERASURES.name):
        return True
    times = lk.tables.dataset(ERASURES.name).to_table(columns=["erased_at"]).column(0)
    if not any(t is not None and t >= job.created_at for t in times.to_pylist()):
        return True
    try:
        listed = set((job.folder / EXPORT_MEMBERS).read_text().split())
    except FileNotFoundError:  # lake forget removed the job meanwhile
        return False
    found = lk.tables.lookup(INSTANCES, "SOPInstanceUID", sorted(listed), [])
    return len(set(found.column("SOPInstanceUID").to_pylist())) == len(listed)


def served_zip(lk: Lake, job: Job) -> FileResponse | None:
    """The response serving ``job``'s zip, or None when it is not to be served (404).

    The zip is opened first, then :func:`servable` is asked: a ``lake forget`` that
    removes the job's folder before the open, or records its erasure before the check,
    makes it a 404; one that removes the file once it is open cannot turn the download
    into a 500 (a ``FileResponse`` opened its path only while sending).
    """
    if job.result is None:
        return None
    try:
        response = _OpenedFileResponse(job.result.open("rb"), job.result.name)
    except FileNotFoundError:
        return None
    if not servable(lk, job):
        response.close()
        return None
    return response


class _OpenedFileResponse(FileResponse):
    """A :class:`FileResponse` over a file already open (``Range`` requests included)."""

    def __init__(self, file: BinaryIO, filename: str) -> None:
        self._file = file
        try:
            stat_result = os.fstat(file.fileno())
            super().__init__(file.name, filename=filename, media_type="application/zip",
                             stat_result=stat_result)
        except BaseException:
            file.close()
            raise

    def close(self) -> None:
        """Close the file (the response is not sent)."""
        self._file.close()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # never by path: a server's ``pathsend`` would open the (maybe removed) file again
        extensions = {k: v for k, v in scope.get("extensions", {}).items()
                      if k != "http.response.pathsend"}
        try:
            await super().__call__({**scope, "extensions": extensions}, receive, send)
        finally:
            self._file.close()

    @asynccontextmanager
    async def _open_file(self) -> AsyncIterator[anyio.AsyncFile[bytes]]:
        yield anyio.wrap_file(self._file)  # closed by __call__
