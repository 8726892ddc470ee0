"""A content-addressed blob store on any fsspec filesystem.

Blobs are addressed ``sha256:<64 hex>`` and laid out with a two-level fan-out,
``blobs/sha256/ab/cd/abcd...``, so no folder grows past 65,536 entries. A blob is
written once; writing content that is already present is a no-op.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass

from lake._errors import BlobNotFoundError, IntegrityError
from lake.store._fs import Location, atomic_write, reused_at, write_at

__all__ = ["BlobStore", "blob_key"]

_KEY = re.compile(r"^sha256:([0-9a-f]{64})$")


def blob_key(data: bytes | memoryview) -> str:
    """The content address of ``data``: ``sha256:<hex>``."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _hex_of(key: str) -> str:
    match = _KEY.match(key)
    if match is None:
        raise BlobNotFoundError(f"not a blob key: {key!r}; keys look like 'sha256:<64 hex digits>'")
    return match.group(1)


@dataclass(frozen=True)
class BlobStore:
    """Content-addressed storage below ``<lake>/blobs``.

    Parameters
    ----------
    location : Location
        The lake root.

    Examples
    --------
    >>> import tempfile
    >>> from lake.store import BlobStore, resolve
    >>> store = BlobStore(resolve(tempfile.mkdtemp()))
    >>> key = store.put(b"pixels")
    >>> store.get(key)
    b'pixels'
    """

    location: Location

    def path_of(self, key: str) -> str:
        """The filesystem path that holds blob ``key``."""
        hexdigest = _hex_of(key)
        return self.location.join("blobs", "sha256", hexdigest[:2], hexdigest[2:4], hexdigest)

    def put(self, data: bytes | memoryview, key: str | None = None) -> str:
        """Store ``data`` once and return its key.

        Parameters
        ----------
        data : bytes
            The content.
        key : str, optional
            The key if the caller already hashed ``data``; it is trusted.

        Returns
        -------
        str
            ``sha256:<hex>``.
        """
        key = key or blob_key(data)
        path = self.path_of(key)
        fs = self.location.fs
        if not fs.exists(path):
            atomic_write(fs, path, bytes(data))
        return key

    def put_new(
        self, data: bytes | memoryview, key: str | None = None, *, durable: bool = True
    ) -> tuple[str, bool]:
        """Like :meth:`put`, also telling whether the blob was newly written.

        A blob already stored is marked as used now (:func:`lake.store.reused`), so that
        :func:`lake.steward.gc` does not take it for an old orphan while the batch reusing
        it is in flight.

        With ``durable=False`` the blob is not fsync'd: the caller batches that with
        :func:`lake.store.flush` before committing rows that reference it.
        """
        key = key or blob_key(data)
        path = self.path_of(key)
        # refreshed: gc's grace counts from now
        if reused_at(self.location, path, lambda: bytes(data)):
            return key, False
        write_at(self.location, path, bytes(data), fsync=durable)
        return key, True

    def get(self, key: str) -> bytes:
        """The content of blob ``key``.

        Raises
        ------
        BlobNotFoundError
            If the blob is absent.
        """
        path = self.path_of(key)
        try:
            if self.location.is_local:  # without importing fsspec (issue 14.2)
                with open(path, "rb") as fh:
                    data: bytes = fh.read()
            else:
                data = self.location.fs.cat_file(path)
        except FileNotFoundError:
            raise BlobNotFoundError(
                f"blob {key} is missing from the store; run Lake.verify() to list affected rows",
                functions=("Lake.verify",)
            ) from None
        return data

    def exists(self, key: str) -> bool:
        """Whether blob ``key`` is present."""
        return bool(self.location.fs.exists(self.path_of(key)))

    def size(self, key: str) -> int:
        """The size in bytes of blob ``key``."""
        try:
            return int(self.location.fs.size(self.path_of(key)))
        except FileNotFoundError:
            raise BlobNotFoundError(f"blob {key} is missing from the store") from None

    def keys(self) -> Iterator[str]:
        """Every key in the store (walks the fan-out folders)."""
        root = self.location.join("blobs", "sha256")
        fs = self.location.fs
        if not fs.exists(root):
            return
        for path in fs.find(root):
            name = path.rsplit("/", 1)[-1]
            if _KEY.match("sha256:" + name):
                yield "sha256:" + name

    def check(self, key: str) -> None:
        """Re-hash blob ``key``.

        Raises
        ------
        IntegrityError
            If its content does not hash to its key.
        BlobNotFoundError
            If it is absent.
        """
        digest = hashlib.sha256()
        path = self.path_of(key)
        try:
            with self.location.fs.open(path, "rb") as fh:
                while chunk := fh.read(1 << 20):
                    digest.update(chunk)
        except FileNotFoundError:
            raise BlobNotFoundError(f"blob {key} is missing from the store") from None
        if "sha256:" + digest.hexdigest() != key:
            raise IntegrityError(f"blob {key} is corrupt: its content hashes to a different key")
