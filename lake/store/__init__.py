"""Storage: lake roots on any fsspec filesystem and the content-addressed blob store."""

from lake.store._blobs import BlobStore, blob_key
from lake.store._fs import Location, atomic_write, flush, resolve, reused

__all__ = ["BlobStore", "Location", "atomic_write", "blob_key", "flush", "resolve", "reused"]
