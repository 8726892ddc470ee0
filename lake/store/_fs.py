"""fsspec helpers: resolve a lake root and write files atomically on any filesystem."""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # fsspec is imported when a root is first resolved (issue 14.1)
    import fsspec

__all__ = ["Location", "atomic_write", "flush", "resolve", "reused"]


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
        return self._resolved[1]

    @property
    def is_local(self) -> bool:
        from fsspec.implementations.local import LocalFileSystem

        return isinstance(self.fs, LocalFileSystem)

    def join(self, *parts: str) -> str:
        """The filesystem path of ``parts`` below the root."""
        return "/".join([self.path.rstrip("/"), *parts])

    def url_of(self, *parts: str) -> str:
        """A URL (for deltalake and fsspec) of ``parts`` below the root."""
        return "/".join([self.url.rstrip("/"), *parts])


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
        folder = os.path.dirname(path)
        os.makedirs(folder, exist_ok=True)
        tmp = os.path.join(folder, f".tmp-{uuid.uuid4().hex}")
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
                if fsync:
                    fh.flush()
                    os.fsync(fh.fileno())
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    else:
        fs.pipe_file(path, data)


def reused(fs: fsspec.AbstractFileSystem, path: str) -> bool:
    """Whether ``path`` exists; if it does, it is marked as used now (for garbage collection).

    A content-addressed file (a pixel blob, a sealed original) that a batch finds already
    stored may be an orphan older than gc's grace period, which protects the files of
    batches in flight. On a local filesystem its modification time is set to now, so the
    grace counts from this reuse (and gc, which checks a file's time again just before
    removing it, keeps it). Where that is not permitted (another account's file) or not
    possible (an object store cannot touch an object without rewriting it), the file is
    only reported present: an orphan reused there is kept only if the batch commits before
    gc reads the references (see :func:`lake.steward.gc`).
    """
    from fsspec.implementations.local import LocalFileSystem

    if isinstance(fs, LocalFileSystem):
        try:
            os.utime(path)
        except FileNotFoundError:
            return False
        except PermissionError:
            return True
        return True
    return bool(fs.exists(path))


def flush(location: Location) -> None:
    """Make every file written with ``fsync=False`` durable (one ``sync`` for a whole batch)."""
    if location.is_local:
        os.sync()
