"""Storage: lake roots on any fsspec filesystem and the content-addressed blob store."""

from lake.store._blobs import BlobStore, blob_key
from lake.store._fs import (
    OWN_EXPORTS,
    REFRESH_AFTER,
    TMP_PREFIX,
    Location,
    atomic_write,
    flush,
    fsync_folder,
    make_folder,
    modified_at,
    resolve,
    reused,
    reused_at,
    write_at,
)

__all__ = [
    "OWN_EXPORTS",
    "REFRESH_AFTER",
    "TMP_PREFIX",
    "BlobStore",
    "Location",
    "atomic_write",
    "blob_key",
    "flush",
    "fsync_folder",
    "make_folder",
    "modified_at",
    "resolve",
    "reused",
    "reused_at",
    "write_at",
]
