"""Expanding ingest sources (files, folders, zip archives) into items to read, within bounds.

Only regular files are read: FIFOs, devices and sockets are skipped and counted (opening a FIFO
would wait for a writer forever, a device never ends). Symbolic links to regular files are
followed; links to folders are not, unless asked (then each folder is walked once, so a link
cycle ends). Whatever could not be walked is counted per source argument in a
:class:`SourceReport`, never named: source paths often hold a patient's name.

Zip archives are read member by member; archives inside archives are read to
``ReadLimits.max_zip_depth``. A member whose declared sizes break a bound is not read but
becomes an item the worker quarantines with the reason. Members of a nested archive are read
here, in the driver (the nested archive is spooled to an anonymous temporary file, never a
named one), and travel to the workers as bytes.
"""

from __future__ import annotations

import heapq
import lzma
import operator
import os
import shutil
import stat
import tempfile
import zipfile
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from lake._errors import IngestError, InputRefusedError
from lake.ingest._limits import ReadLimits, describe

__all__ = [
    "ZIP_ERRORS",
    "Archives",
    "NotRegularFileError",
    "SourceItem",
    "SourceReport",
    "count_items",
    "iter_items",
    "open_regular",
    "read_file",
    "read_item",
    "read_member",
]

ZIP_ERRORS: tuple[type[Exception], ...] = (
    zipfile.BadZipFile,  # a bad CRC, header or directory
    zipfile.LargeZipFile,
    zlib.error,  # damaged deflate data
    lzma.LZMAError,
    EOFError,  # a truncated member
    NotImplementedError,  # a compression method zipfile does not implement
    RuntimeError,  # an encrypted member
    ValueError,
    KeyError,
)
"""What reading a damaged archive or member raises, besides OSError (bz2 raises OSError)."""

_READ_ERRORS: tuple[type[Exception], ...] = (OSError, *ZIP_ERRORS)

_SPOOL_IN_MEMORY = 64 * 1024 * 1024  # a nested archive larger than this spools to disk


@dataclass(frozen=True)
class SourceItem:
    """One file to read: a path, a member of the zip archive at that path, or bytes read already.

    Attributes
    ----------
    path : str
        The file, or the archive on disk that holds the member.
    member : str, optional
        The member's name in the archive at ``path`` (for a nested archive, the names joined
        by ``/``; only for reading, never shown).
    data : bytes, optional
        The content, when it was read while walking (members of nested archives).
    refused : tuple of str, optional
        ``(reason, message)`` when the item breaks a bound: it is quarantined unread.
    size : int, optional
        The declared size of a refused item.
    """

    path: str
    member: str | None = None
    data: bytes | None = field(default=None, repr=False, compare=False)
    refused: tuple[str, str] | None = None
    size: int | None = None


@dataclass
class SourceReport:
    """What walking the sources did not read, counted (never named).

    Attributes
    ----------
    skipped : Counter
        Files skipped by kind: ``not_regular`` (FIFO, device, socket) here; the ingest run adds
        the kinds that are plainly not medical images (``text``, ``json``, ``nifti``).
    missing : dict
        Per source argument (1-based position), what may hide files that were not read:
        ``unreadable_dir`` (cannot be listed), ``symlinked_dir`` (a link to a folder, not
        followed), ``broken_link`` (a link to nothing).
    """

    skipped: Counter[str] = field(default_factory=Counter)
    missing: dict[int, Counter[str]] = field(default_factory=dict)

    def _missed(self, position: int, what: str) -> None:
        self.missing.setdefault(position, Counter())[what] += 1

    @property
    def incomplete(self) -> bool:
        """True when files below some source may not have been read."""
        return any(sum(c.values()) for c in self.missing.values())


class NotRegularFileError(OSError):
    """The path is not a regular file (a FIFO, device or socket): it is skipped, not read."""


def _is_zip_name(name: str) -> bool:
    return name.lower().endswith(".zip")


def _listing(folder: str) -> tuple[str, list[os.DirEntry[str]]]:
    """The entries of ``folder``: the names of its plain regular files, sorted and joined by
    NUL (no file name holds one), and its other entries (folders, links, special files), sorted.

    The walk holds a folder's listing while the ingest reads the folder's files, and the
    ingest's forked workers inherit whatever it holds when they start (docs/ingest.md,
    "Memory"). One entry object per file cost ~270 bytes (tracemalloc: 13 MB for a folder of 50,000
    files, counted in every process); the joined names cost a byte per character of a name
    (2-4 bytes per character once one name in the folder is outside Latin-1).
    """
    names: list[str] = []
    others: list[os.DirEntry[str]] = []
    with os.scandir(folder) as it:
        for entry in it:
            try:
                plain = entry.is_file(follow_symlinks=False)  # False for a link
            except OSError:
                plain = False  # classified (and its error raised) in order, as any other
            if plain:
                names.append(entry.name)
            else:
                others.append(entry)
    names.sort()
    others.sort(key=lambda e: e.name)
    return "\0".join(names), others


def _in_order(
    files: str, others: list[os.DirEntry[str]]
) -> Iterator[tuple[str, os.DirEntry[str] | None]]:
    """A :func:`_listing` in name order: ``(name, None)`` for a plain file, else the entry."""
    plain = ((name, None) for name in _split(files))
    entries = ((entry.name, entry) for entry in others)
    return heapq.merge(plain, entries, key=operator.itemgetter(0))


def _split(joined: str) -> Iterator[str]:
    """The names joined in ``joined`` by NUL, one at a time (never all at once)."""
    start = 0
    while start < len(joined):
        end = joined.find("\0", start)
        end = len(joined) if end < 0 else end
        yield joined[start:end]
        start = end + 1


class _Walk:
    def __init__(self, limits: ReadLimits, report: SourceReport, follow_symlinks: bool,
                 read_nested: bool) -> None:
        self.limits = limits
        self.report = report
        self.follow_symlinks = follow_symlinks
        self.read_nested = read_nested

    def source(self, path: Path, position: int) -> Iterator[SourceItem]:
        try:
            st = path.stat()
        except OSError:
            self.report._missed(position, "broken_link")
            return
        if stat.S_ISDIR(st.st_mode):
            yield from self.folder(path, position, st)
        elif stat.S_ISREG(st.st_mode):
            yield from self.file(str(path))
        else:
            self.report.skipped["not_regular"] += 1

    def folder(self, root: Path, position: int, st: os.stat_result) -> Iterator[SourceItem]:
        seen = {(st.st_dev, st.st_ino)}
        stack = [str(root)]
        while stack:
            folder = stack.pop()
            try:
                files, others = _listing(folder)
            except OSError:
                self.report._missed(position, "unreadable_dir")
                continue
            folders: list[str] = []
            for name, entry in _in_order(files, others):
                kind = "file" if entry is None else self._kind(entry, seen)
                if kind == "file":  # a str: a Path cost 60 % of the walk's CPU a file
                    yield from self.file(os.path.join(folder, name))
                elif kind == "folder":
                    folders.append(os.path.join(folder, name))
                elif kind == "not_regular":
                    self.report.skipped["not_regular"] += 1
                elif kind is not None:
                    self.report._missed(position, kind)
            stack.extend(reversed(folders))

    def _kind(self, entry: os.DirEntry[str], seen: set[tuple[int, int]]) -> str | None:
        """``file``, ``folder``, ``not_regular``, a kind of miss, or None (a folder seen)."""
        if entry.is_symlink():
            try:
                st = entry.stat()
            except OSError:
                return "broken_link"
            if stat.S_ISDIR(st.st_mode):
                if not self.follow_symlinks:
                    return "symlinked_dir"
                return self._unseen(st, seen)
            return "file" if stat.S_ISREG(st.st_mode) else "not_regular"
        if entry.is_dir(follow_symlinks=False):
            if not self.follow_symlinks:
                return "folder"
            return self._unseen(entry.stat(follow_symlinks=False), seen)
        return "file" if entry.is_file(follow_symlinks=False) else "not_regular"

    @staticmethod
    def _unseen(st: os.stat_result, seen: set[tuple[int, int]]) -> str | None:
        key = (st.st_dev, st.st_ino)
        if key in seen:
            return None  # already walked (or being walked): a link cycle or a second link
        seen.add(key)
        return "folder"

    def file(self, path: str) -> Iterator[SourceItem]:
        if _is_zip_name(path) and zipfile.is_zipfile(path):
            yield from self.archive_on_disk(path)
        else:
            yield SourceItem(path)

    def archive_on_disk(self, path: str) -> Iterator[SourceItem]:
        budget = [self.limits.max_archive_bytes]
        try:
            archive = zipfile.ZipFile(path)
        except _READ_ERRORS:
            yield SourceItem(path, refused=_bad_archive())
            return
        with archive:
            yield from self.members(archive, path, None, 1, budget)

    def members(self, archive: zipfile.ZipFile, path: str, prefix: str | None, depth: int,
                budget: list[int]) -> Iterator[SourceItem]:
        """Items for the members of ``archive`` (on disk when ``prefix`` is None, else nested)."""
        for info in archive.infolist():
            if info.is_dir():
                continue
            name = info.filename if prefix is None else f"{prefix}/{info.filename}"
            nested = _is_zip_name(info.filename)
            problem = self.limits.zip_member_problem(info.file_size, info.compress_size)
            if problem is None and not nested and info.file_size > budget[0]:
                problem = "archive_too_large", (
                    "the archive expands beyond max_archive_bytes "
                    f"({describe(self.limits.max_archive_bytes)}) in total; this member was "
                    "not read"
                )
            if problem is not None:
                yield SourceItem(path, name, refused=problem, size=info.file_size)
                continue
            if nested:
                if depth >= self.limits.max_zip_depth:
                    yield SourceItem(path, name, size=info.file_size, refused=(
                        "zip_too_deep",
                        f"an archive nested deeper than max_zip_depth ({self.limits.max_zip_depth})"
                        " archives; it was not read",
                    ))
                else:
                    yield from self.nested(archive, info, path, name, depth + 1, budget)
                continue
            budget[0] -= info.file_size  # what the members of nested archives hold counts once
            if prefix is None:
                yield SourceItem(path, name)
            elif not self.read_nested:
                yield SourceItem(path, name, data=b"")
            else:
                yield self._read_member(archive, info, path, name)

    def _read_member(self, archive: zipfile.ZipFile, info: zipfile.ZipInfo, path: str,
                     name: str) -> SourceItem:
        try:
            return SourceItem(path, name, data=read_member(archive, info, self.limits))
        except InputRefusedError as exc:
            return SourceItem(path, name, refused=(exc.reason, exc.message), size=info.file_size)
        except _READ_ERRORS as exc:
            return SourceItem(path, name, refused=_bad_member(exc), size=info.file_size)

    def nested(self, outer: zipfile.ZipFile, info: zipfile.ZipInfo, path: str, name: str,
               depth: int, budget: list[int]) -> Iterator[SourceItem]:
        with ExitStack() as stack:
            spool: IO[bytes] = stack.enter_context(
                tempfile.SpooledTemporaryFile(max_size=_SPOOL_IN_MEMORY)
            )
            try:
                with outer.open(info) as member:
                    shutil.copyfileobj(member, spool, 1024 * 1024)
            except _READ_ERRORS as exc:
                yield SourceItem(path, name, refused=_bad_member(exc), size=info.file_size)
                return
            spool.seek(0)
            try:
                inner = stack.enter_context(zipfile.ZipFile(spool))
            except _READ_ERRORS:
                # Named .zip but not an archive: read it as the file it is.
                budget[0] -= info.file_size
                spool.seek(0)
                data = spool.read() if self.read_nested else b""
                yield SourceItem(path, name, data=data)
                return
            yield from self.members(inner, path, name, depth, budget)


def _bad_archive() -> tuple[str, str]:
    return "bad_zip", "the zip archive's directory cannot be read (damaged or truncated archive)"


def _bad_member(exc: BaseException) -> tuple[str, str]:
    return "bad_zip_member", (
        f"the zip member cannot be decompressed ({type(exc).__name__}); the other members are read"
    )


def _positions(sources: Iterable[str | os.PathLike[str]]) -> list[Path]:
    checked = [Path(s) for s in sources]
    for position, path in enumerate(checked, start=1):
        if not path.exists():
            raise IngestError(f"source argument {position} does not exist; check the path")
    return checked


def iter_items(
    sources: Iterable[str | os.PathLike[str]],
    *,
    limits: ReadLimits | None = None,
    report: SourceReport | None = None,
    follow_symlinks: bool = False,
) -> Iterator[SourceItem]:
    """Every file below ``sources``, lazily, in a stable order.

    Parameters
    ----------
    sources : iterable of path
        Files, folders (recursive) and ``.zip`` archives.
    limits : ReadLimits, optional
        Bounds on archives (defaults: :class:`ReadLimits`).
    report : SourceReport, optional
        Receives the counts of what was skipped or could not be walked.
    follow_symlinks : bool
        Walk links to folders (each folder once); by default they are counted as missing.

    Raises
    ------
    IngestError
        If a source does not exist (named by its position, never its path).
    """
    walk = _Walk(limits or ReadLimits(), report or SourceReport(), follow_symlinks, True)
    for position, path in enumerate(_positions(sources), start=1):
        yield from walk.source(path, position)


def count_items(
    sources: Iterable[str | os.PathLike[str]],
    *,
    limits: ReadLimits | None = None,
    follow_symlinks: bool = False,
) -> int:
    """How many items :func:`iter_items` yields, without reading members of nested archives."""
    walk = _Walk(limits or ReadLimits(), SourceReport(), follow_symlinks, False)
    return sum(1 for p, path in enumerate(_positions(sources), 1) for _ in walk.source(path, p))


def open_regular(path: str) -> IO[bytes]:
    """The regular file at ``path``, open for reading.

    Opened non-blocking and checked on the descriptor, so a FIFO put in its place is never
    waited for.

    Raises
    ------
    NotRegularFileError
        If ``path`` is not a regular file.
    OSError
        If it cannot be opened.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    fh = open(fd, "rb", closefd=True)  # noqa: SIM115 - returned to the caller, who closes it
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        fh.close()
        raise NotRegularFileError("not a regular file")
    return fh


def read_file(path: str, max_bytes: int) -> bytes:
    """The bytes of the regular file at ``path``, at most ``max_bytes`` of them.

    Raises
    ------
    NotRegularFileError
        If ``path`` is not a regular file (checked on the open file: no FIFO is waited for).
    InputRefusedError
        If the file is larger than ``max_bytes``.
    OSError
        If it cannot be read.
    """
    with open_regular(path) as fh:
        size = os.fstat(fh.fileno()).st_size
        if size > max_bytes:
            raise InputRefusedError("too_large", _too_large("file", max_bytes))
        data = fh.read(size + 1)
        if len(data) > size:  # growing while read
            data += fh.read(max_bytes + 1 - len(data))
        if len(data) > max_bytes:
            raise InputRefusedError("too_large", _too_large("file", max_bytes))
        return data


def _too_large(what: str, max_bytes: int) -> str:
    return (
        f"the {what} is larger than max_file_bytes ({describe(max_bytes)}); it was not read "
        "(raise max_file_bytes to ingest it)"
    )


def read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, limits: ReadLimits) -> bytes:
    """The bytes of one zip member, refusing one whose sizes break ``limits``.

    zipfile never returns more than the member's declared size, which is checked first.

    Raises
    ------
    InputRefusedError
        If the member breaks a bound.
    OSError, zipfile.BadZipFile, zlib.error ...
        If it cannot be decompressed (see :data:`ZIP_ERRORS`).
    """
    problem = limits.zip_member_problem(info.file_size, info.compress_size)
    if problem is not None:
        raise InputRefusedError(*problem)
    with archive.open(info) as member:
        data = member.read(limits.max_file_bytes + 1)
    if len(data) > limits.max_file_bytes:
        raise InputRefusedError("too_large", _too_large("zip member", limits.max_file_bytes))
    return data


class Archives:
    """Zip archives opened by one task, each once (reading a member reopens nothing)."""

    def __init__(self) -> None:
        self._open: dict[str, zipfile.ZipFile] = {}

    def __enter__(self) -> Archives:
        return self

    def __exit__(self, *_exc: object) -> None:
        for archive in self._open.values():
            archive.close()
        self._open.clear()

    def get(self, path: str) -> zipfile.ZipFile:
        archive = self._open.get(path)
        if archive is None:
            archive = self._open[path] = zipfile.ZipFile(path)
        return archive


def read_item(item: SourceItem, limits: ReadLimits, archives: Archives) -> bytes:
    """The bytes of ``item``, within ``limits``.

    Raises
    ------
    NotRegularFileError, InputRefusedError, OSError, or one of :data:`ZIP_ERRORS`
    """
    if item.data is not None:
        return item.data
    if item.member is None:
        return read_file(item.path, limits.max_file_bytes)
    archive = archives.get(item.path)
    return read_member(archive, archive.getinfo(item.member), limits)
