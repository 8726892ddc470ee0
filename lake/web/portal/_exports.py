"""What the portal's jobs run: a cohort (or one case of it) exported and packed as one zip."""

from __future__ import annotations

import hashlib
import os
import zipfile
from collections.abc import AsyncIterator, Callable
from email.utils import formatdate
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO
from urllib.parse import quote

import anyio
import anyio.to_thread
from starlette.datastructures import Headers
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from lake._errors import ExportError
from lake.catalog import ERASURES, INSTANCES
from lake.export import Cohort, export_bids, export_dicom, export_nifti, export_teaching
from lake.steward import EXPORT_MEMBERS
from lake.store._fs import PortalJobOut

if TYPE_CHECKING:
    from lake._lake import Lake
    from lake.web.portal._jobs import Job

__all__ = ["FORMATS", "OpenedZipResponse", "export_zip", "servable", "served_zip", "zip_folder"]

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


def served_zip(lk: Lake, job: Job) -> OpenedZipResponse | None:
    """The response serving ``job``'s zip, or None when it is not to be served (404).

    The zip is opened first, then :func:`servable` is asked: a ``lake forget`` that
    removes the job's folder before the open, or records its erasure before the check,
    makes it a 404; one that removes the file once it is open cannot turn the download
    into a 500 (the response sends from the open file, never reopening its path). The file
    is closed if the check raises.
    """
    if job.result is None:
        return None
    try:
        response = OpenedZipResponse(job.result.open("rb"), job.result.name)
    except FileNotFoundError:
        return None
    try:
        if not servable(lk, job):
            response.close()
            return None
    except BaseException:
        response.close()
        raise
    return response


class OpenedZipResponse(Response):
    """A zip sent from a file already open, with single-range ``Range`` support.

    Only Starlette's public :class:`StreamingResponse` sends it: the file is read by its
    descriptor (``os.pread``), so a removal of its path after the open changes nothing.
    A ``Range`` of one byte range (``bytes=a-b``, ``bytes=a-``, ``bytes=-n``) gets a 206,
    one starting past the end a 416; a ``Range`` of several ranges, of another unit or
    malformed, and an ``If-Range`` that matches neither the ETag nor Last-Modified, get
    the whole file (RFC 9110 14.2 lets a server ignore ``Range``). The file is closed
    once sent, or by :meth:`close` when the response is not sent.
    """

    chunk_size = 64 * 1024

    def __init__(self, file: BinaryIO, filename: str) -> None:
        self._file = file
        try:
            found = os.fstat(file.fileno())
        except BaseException:
            file.close()
            raise
        self._size = found.st_size
        tag = hashlib.md5(f"{found.st_mtime}-{found.st_size}".encode(),
                          usedforsecurity=False).hexdigest()
        quoted = quote(filename)
        disposition = (f'attachment; filename="{filename}"' if quoted == filename
                       else f"attachment; filename*=utf-8''{quoted}")
        super().__init__(media_type="application/zip", headers={
            "accept-ranges": "bytes",
            "content-disposition": disposition,
            "content-length": str(found.st_size),
            "last-modified": formatdate(found.st_mtime, usegmt=True),
            "etag": f'"{tag}"',
        })

    def close(self) -> None:
        """Close the file (the response is not sent)."""
        self._file.close()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            request = Headers(scope=scope)
            headers = dict(self.headers.items())
            status, start, end = 200, 0, self._size
            wanted = request.get("range")
            if_range = request.get("if-range")
            if wanted is not None and (if_range is None
                                       or if_range in (headers["etag"], headers["last-modified"])):
                try:
                    part = _one_range(wanted, self._size)
                except _UnsatisfiableRangeError:
                    await Response(status_code=416, headers={
                        "content-range": f"bytes */{self._size}"})(scope, receive, send)
                    return
                if part is not None:
                    status, (start, end) = 206, part
                    headers["content-range"] = f"bytes {start}-{end - 1}/{self._size}"
                    headers["content-length"] = str(end - start)
            body = (_nothing() if scope.get("method", "GET").upper() == "HEAD"
                    else self._chunks(start, end))
            await StreamingResponse(body, status_code=status, headers=headers)(
                scope, receive, send)
        finally:
            self._file.close()

    async def _chunks(self, start: int, end: int) -> AsyncIterator[bytes]:
        fd = self._file.fileno()
        while start < end:
            chunk = await anyio.to_thread.run_sync(os.pread, fd,
                                                   min(self.chunk_size, end - start), start)
            if not chunk:
                raise ExportError("the zip being sent became shorter than its size")
            start += len(chunk)
            yield chunk


class _UnsatisfiableRangeError(Exception):
    """A ``Range`` whose one range starts past the end of the file (416)."""


def _one_range(value: str, size: int) -> tuple[int, int] | None:
    """``[start, end)`` of a ``Range`` header naming one byte range, else None (ignored).

    Raises
    ------
    _UnsatisfiableRangeError
        If that range starts at or past ``size`` (or is an empty suffix).
    """
    unit, _, spec = value.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    first, last = first.strip(), last.strip()
    if not dash or not _digits(first) or not _digits(last):
        return None
    if first == "":
        if last == "":
            return None
        if int(last) == 0 or size == 0:
            raise _UnsatisfiableRangeError
        return max(size - int(last), 0), size
    start = int(first)
    if last != "" and int(last) < start:
        return None
    if start >= size:
        raise _UnsatisfiableRangeError
    return start, size if last == "" else min(int(last) + 1, size)


def _digits(text: str) -> bool:
    """Whether ``text`` is empty or ASCII digits only (``str.isdigit`` also accepts ``²``, which
    ``int`` refuses: a header is decoded as Latin-1, so such a byte can arrive)."""
    return text == "" or (text.isascii() and text.isdecimal())


async def _nothing() -> AsyncIterator[bytes]:
    """No body (a ``HEAD``)."""
    empty: tuple[bytes, ...] = ()
    for chunk in empty:
        yield chunk
