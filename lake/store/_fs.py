"""fsspec helpers: resolve a lake root and write files atomically on any filesystem."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import stat
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # fsspec is imported when a root is first resolved (issue 14.1)
    import fsspec

__all__ = [
    "OWN_EXPORTS",
    "REFRESH_AFTER",
    "Location",
    "PortalJobOut",
    "atomic_write",
    "flush",
    "fsync_folder",
    "make_folder",
    "modified_at",
    "resolve",
    "reused",
    "reused_at",
    "write_at",
]


@dataclass(frozen=True)
class Location:
    """A filesystem plus a root path on it; picklable so Dask workers can use it.

    Parameters
    ----------
    url : str
        The root as the user gave it, normalised: an absolute local path or an
        fsspec URL such as ``s3://bucket/lake``.
    storage_options : dict
        Options passed to fsspec (credentials, endpoint) for remote roots.
    """

    url: str
    storage_options: tuple[tuple[str, Any], ...] = ()

    @cached_property
    def _resolved(self) -> tuple[fsspec.AbstractFileSystem, str]:
        # Resolved once per Location (it is on the per-file hot path of ingest).
        import fsspec

        fs, path = fsspec.core.url_to_fs(self.url, **dict(self.storage_options))
        return fs, str(path)

    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        return self._resolved[0]

    @property
    def path(self) -> str:
        if self.url.startswith("/"):  # a local folder: fsspec's path for it, without fsspec
            return self.url.rstrip("/") or "/"
        return self._resolved[1]

    @property
    def is_local(self) -> bool:
        # An absolute path (resolve() makes every local root one) is a local folder: known
        # without importing fsspec, which `lake sql` then never needs (issue 14.1).
        if self.url.startswith("/"):
            return True
        from fsspec.implementations.local import LocalFileSystem

        return isinstance(self.fs, LocalFileSystem)

    def join(self, *parts: str) -> str:
        """The filesystem path of ``parts`` below the root."""
        return "/".join([self.path.rstrip("/"), *parts])

    def url_of(self, *parts: str) -> str:
        """A URL (for deltalake and fsspec) of ``parts`` below the root."""
        return "/".join([self.url.rstrip("/"), *parts])

    def refuse_inside(self, out: str | os.PathLike[str]) -> None:
        """Refuse an output folder ``out`` (a parameter of that name) inside this lake's folder.

        Files written there are no part of the catalog: ``lake forget`` would not reach
        them, ``lake gc`` and ``lake verify`` would meet them. The only exception is a web
        portal job's folder, exactly where ``lake forget`` looks for them
        (``<lake>/``:data:`OWN_EXPORTS```/run-*/<job>/...``), given as a :class:`PortalJobOut`
        (the portal's exports pass one, never a user's).

        Paths are compared resolved (symbolic links followed), and ``out``'s existing
        folders (itself, then its parents) also by identity (``st_dev``, ``st_ino``) with
        the lake's folder and the folders up to two levels below it (``blobs/sha256``,
        ``tables/instances``), symbolic links to folders followed, so another name for
        them (a bind mount) and the target of a lake folder that is a link (``blobs`` on
        another disk) are refused too. Not deeper: another name for a folder three or more
        levels down (a bind mount of ``tables/instances/_delta_log`` or of a blob fan-out
        folder) is not recognised, nor a link or mount swapped in after the check.

        Raises
        ------
        ConfigError
            If ``out`` is the lake's folder or inside it.
        """
        if not self.is_local:
            return
        from pathlib import Path

        from lake._errors import ConfigError

        root = Path(self.path).resolve()
        folder = Path(out).resolve()
        jobs = (root / OWN_EXPORTS).resolve()
        if isinstance(out, PortalJobOut) and folder.is_relative_to(jobs):
            parts = folder.relative_to(jobs).parts
            if len(parts) >= 2 and parts[0].startswith("run-"):
                return
        if folder.is_relative_to(root) or _same_folder_as_lake(root, folder):
            raise ConfigError(
                "out= is inside the lake's folder, where files are no part of the catalog "
                "(erasure and gc would not know them); choose a folder outside the lake",
                parameters=("out",)
            )


def _same_folder_as_lake(root: os.PathLike[str], folder: os.PathLike[str]) -> bool:
    """Whether ``folder`` or an existing parent is, by identity, the lake's folder or one
    of the folders up to two levels below it, symbolic links followed (what
    :meth:`Location.refuse_inside` adds; the depth bounds the scan, links included)."""
    from pathlib import Path

    lake_folders = {_identity(root)}
    level = [os.fspath(root)]
    for _ in range(2):
        below: list[str] = []
        for parent in level:
            with contextlib.suppress(OSError), os.scandir(parent) as entries:
                below.extend(e.path for e in entries if e.is_dir())  # links followed
        lake_folders.update(_identity(path) for path in below)
        level = below
    lake_folders.discard(None)
    path = Path(folder)
    return any(_identity(p) in lake_folders for p in (path, *path.parents))


def _identity(path: str | os.PathLike[str]) -> tuple[int, int] | None:
    """``(st_dev, st_ino)`` of an existing folder, else None."""
    try:
        found = os.stat(path)
    except OSError:
        return None
    return (found.st_dev, found.st_ino) if stat.S_ISDIR(found.st_mode) else None


OWN_EXPORTS = "portal/jobs"
"""Where, below a local lake's root, the lake's own servers export (the portal's jobs)."""

TMP_PREFIX = ".tmp-"
"""The start of the name a file written locally by :func:`write_at` has until it is renamed
(a leftover of an interrupted write: gc's ``temporary``, the receive spool skips it)."""


class PortalJobOut(os.PathLike[str]):
    """The output folder of a web portal job (``<lake>/portal/jobs/run-*/<job>/...``).

    Private to the portal: an export given one may write below the lake's folder, where
    ``lake forget`` reaches it (:meth:`Location.refuse_inside`); any other ``out`` there is
    refused.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)

    def __fspath__(self) -> str:
        return self.path

    def __repr__(self) -> str:
        return f"PortalJobOut({self.path!r})"


def resolve(
    root: str | os.PathLike[str], storage_options: dict[str, Any] | None = None
) -> Location:
    """Normalise a lake root given as a path or an fsspec URL."""
    text = os.fspath(root)
    if "://" not in text:
        text = os.path.abspath(os.path.expanduser(text))
    return Location(text, tuple(sorted((storage_options or {}).items())))


def atomic_write(
    fs: fsspec.AbstractFileSystem, path: str, data: bytes, *, fsync: bool = True
) -> None:
    """Write ``data`` so that ``path`` never holds partial content.

    On a local filesystem the bytes go to a temporary file in the same folder,
    are flushed to disk (unless ``fsync`` is false: then the caller must call
    :func:`flush` before anything depends on the file surviving a power loss), and
    are renamed into place. Object stores publish an object only once its upload
    completes, so a single put is already atomic and durable.
    """
    from fsspec.implementations.local import LocalFileSystem

    if isinstance(fs, LocalFileSystem):
        _write_local(path, data, fsync)
    else:
        fs.pipe_file(path, data)


def write_at(location: Location, path: str, data: bytes, *, fsync: bool = True) -> None:
    """:func:`atomic_write` of ``path`` on ``location``'s filesystem.

    On a local lake without fsspec: a worker that only stores files (pixel blobs, sealed
    originals) then never imports it (~0.05 s of CPU per worker process, issue 14.3).

    Parameters
    ----------
    location : Location
        The lake root whose filesystem holds ``path``.
    path : str
        Where the file goes (a local path on a local lake, the fsspec path otherwise).
    data : bytes
        Its whole content.
    fsync : bool, default True
        Make the content, its name and any folder made for it durable before returning;
        without, :func:`flush` does (a batch's many files, one sync).
    """
    if location.is_local:
        _write_local(path, data, fsync)
    else:
        atomic_write(location.fs, path, data, fsync=fsync)


def _write_local(path: str, data: bytes, fsync: bool) -> None:
    """The local case of :func:`atomic_write`: a temporary file in ``path``'s folder, renamed.

    The folder is made only when the temporary file cannot be created for want of it (the
    blob store's fan-out folders, on first use): an existing folder costs no system call
    more than the file (``os.makedirs`` of an existing folder made three). With ``fsync``
    the file's name (its folder) and every folder made for it (their parents; also one
    another process made at the same moment, which that process may not have synced yet)
    are synced after the rename: a power loss cannot take back the name of a file written durably.
    Like every file written with ``fsync=False``, a new folder is made durable by
    :func:`flush`. The file is written through its descriptor (``open(tmp, "wb")``'s flags
    and mode, without the buffered file object: a pixel blob is written whole at once).
    """
    folder = os.path.dirname(path)
    tmp = os.path.join(folder, f"{TMP_PREFIX}{os.urandom(16).hex()}")
    made: list[str] = []
    try:
        fd = os.open(tmp, _NEW_FILE, 0o666)
    except FileNotFoundError:
        made = _made_folders(folder)
        fd = os.open(tmp, _NEW_FILE, 0o666)
    try:
        try:
            view = memoryview(data)
            while view:  # a regular file takes all of it at once, up to ~2 GiB a call
                view = view[os.write(fd, view):]
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if fsync:
        fsync_folder(folder)
        for new_folder in made:  # deepest first: each new folder's entry in its parent
            fsync_folder(os.path.dirname(new_folder))


_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC  # open(path, "wb")'s flags


def make_folder(folder: str | os.PathLike[str]) -> None:
    """Make a local ``folder`` and its missing parents, durably: each new folder's entry in
    its parent is synced, an existing ``folder``'s too (its maker may not have synced it):
    a receipt journal's folder must survive a power loss with the receipts acknowledged in
    it.

    Parameters
    ----------
    folder : str or path-like
        The local folder; nothing is done if it exists.
    """
    for new_folder in _made_folders(os.fspath(folder)):
        fsync_folder(os.path.dirname(new_folder))


def _made_folders(folder: str) -> list[str]:
    """Make ``folder`` and its missing parents; the folders whose entries the caller must
    sync in their parents to make them durable, deepest first.

    ``mkdir`` is tried first, a parent only when it is missing (as ``os.makedirs(folder,
    exist_ok=True)``, without its existence checks: a new blob fan-out folder under an
    existing one is one system call, not four). A folder found existing is listed too:
    another process may have made it a moment ago and not yet synced its parent, and a
    file written durably in it must not lose its name to a power loss (one ``fsync`` of
    the parent; a blob write tries ``mkdir`` only after its folder was found missing). A
    file in the way raises FileExistsError. Not covered: a folder another process made
    whose entry it has not synced yet, found here by a file ``open`` that succeeds (no
    ``mkdir`` is tried): a power loss may then take this file's name with the folder until
    that process's own durable write (or :func:`flush`) syncs the folder's parent.
    """
    pending = [folder]
    made: list[str] = []
    while pending:
        current = pending[-1]
        try:
            os.mkdir(current)
        except FileNotFoundError:
            parent = os.path.dirname(current)
            if not parent or parent == current:
                raise
            pending.append(parent)  # made first
            continue
        except FileExistsError:
            if not os.path.isdir(current):
                raise
        made.append(current)
        pending.pop()
    return made[::-1]


def fsync_folder(folder: str | os.PathLike[str]) -> None:
    """Make the entries of a local ``folder`` (names of files renamed or made in it) durable.

    Parameters
    ----------
    folder : str or path-like
        An existing local folder.
    """
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


REFRESH_AFTER = 600.0
"""Seconds after which a reused file's time is refreshed where that means rewriting it."""


def modified_at(info: Mapping[str, Any]) -> float:
    """A file's modification time (POSIX seconds) from fsspec's ``info``; now if unknown."""
    for key in ("mtime", "LastModified", "last_modified", "modified", "created"):
        value = info.get(key)
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, dt.datetime):
            return value.timestamp()
    return time.time()  # unknown: treated as new (never taken for an old orphan)


def reused(fs: fsspec.AbstractFileSystem, path: str, content: Callable[[], bytes]) -> bool:
    """Whether ``path`` exists; if it does, it is marked as used now (for garbage collection).

    A content-addressed file (a pixel blob, a sealed original) that a batch finds already
    stored may be an orphan older than gc's grace period, which protects the files of
    batches in flight; its time must count from this reuse. On a local filesystem it is
    touched. Where that is not possible (an object store cannot touch an object; another
    account's file) and the file is older than :data:`REFRESH_AFTER`, it is refreshed: on
    S3 by a copy onto itself made by the server (no byte uploaded), elsewhere by writing
    ``content()`` (the same content, or equivalent) again in its place. :func:`lake.steward.gc`
    checks a file's time again just before removing it.
    """
    from fsspec.implementations.local import LocalFileSystem

    if isinstance(fs, LocalFileSystem):
        touched = _touched(path)
        if touched is not None:
            return touched  # else not ours to touch: rewritten below if old
    try:
        info = fs.info(path)
    except FileNotFoundError:
        return False
    if modified_at(info) < time.time() - REFRESH_AFTER:
        try:
            _refresh(fs, path, content, info.get("size"))
        except FileNotFoundError:
            # gc removed the old orphan between the check and the refresh: the bytes are in
            # hand, so the file is stored again (what a batch that found nothing does).
            atomic_write(fs, path, content())
    return True


def reused_at(location: Location, path: str, content: Callable[[], bytes]) -> bool:
    """:func:`reused` of ``path`` on ``location``'s filesystem; on a local lake, a file that
    is absent or touched is known without fsspec (see :func:`write_at`).

    Parameters
    ----------
    location : Location
        The lake root whose filesystem holds ``path``.
    path : str
        The content-addressed file.
    content : callable
        Its content, called only if the file must be written again to refresh its time.

    Returns
    -------
    bool
        Whether the file exists (and is now marked as used).
    """
    if location.is_local:
        touched = _touched(path)
        if touched is not None:
            return touched
    return reused(location.fs, path, content)


def _touched(path: str) -> bool | None:
    """Touch a local file: False if absent, True if touched, None if not ours to touch."""
    try:
        os.utime(path)
    except FileNotFoundError:
        return False
    except PermissionError:
        return None
    return True


REUSED_METADATA = "lake-reused"
"""User metadata (``x-amz-meta-lake-reused``, POSIX seconds) set when S3 refreshes a reused
object by copying it onto itself."""


S3_COPY_LIMIT = 5 * 2**30
"""The largest object S3's CopyObject copies in one request (bytes); larger ones are
refreshed by writing them again."""


def _refresh(
    fs: fsspec.AbstractFileSystem, path: str, content: Callable[[], bytes], size: object
) -> None:
    """Make ``path``'s modification time now, without uploading it again where possible.

    On S3 the object is copied onto itself by the server with one changed metadata field
    (CopyObject, ``MetadataDirective=REPLACE``): a new ``LastModified``, the same bytes and
    ETag, and no byte of it sent again (a re-ingest of a whole lake used to upload every
    pixel blob again). Elsewhere, and for an object of ``size`` over CopyObject's limit
    (:data:`S3_COPY_LIMIT`), ``content()`` is written in its place. Raises
    FileNotFoundError if the file is gone (removed by gc since it was found).
    """
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
    small = isinstance(size, int) and size <= S3_COPY_LIMIT
    if "s3" in protocols and small:
        fs.setxattr(path, **{REUSED_METADATA: str(int(time.time()))})
        fs.invalidate_cache(path)
    else:
        atomic_write(fs, path, content())


def flush(location: Location) -> None:
    """Make every file written with ``fsync=False`` durable (one ``sync`` for a whole batch)."""
    if location.is_local:
        os.sync()
