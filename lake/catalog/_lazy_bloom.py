"""The Bloom filters of one catalog version's data files, read on the second use of a column.

A query or lookup that pins a UID column to values opens only the files whose Bloom filters
may hold one (:class:`~lake.catalog._bloom.BloomIndex`): reading the filters costs ~0.26 s of
CPU for 200 files at 10 million instances, paid back within a few lookups, so they are read
for a column on the second call that asks for it, and a catalog or lookup opened for one
call never pays for them. Shared by :class:`lake.catalog.Catalog` (SQL) and
:class:`lake.query.InstanceLookup` (one instance by SOPInstanceUID).

This module imports neither numpy nor pyarrow (``lake sql`` without them, issue 14.1): the
filters' reader is imported when they are first read.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lake.catalog._bloom import BloomIndex

__all__ = ["LazyBlooms"]


class LazyBlooms:
    """The Bloom indexes of ``files``, one per column, each read on its column's second use.

    Thread-safe.

    Parameters
    ----------
    files : sequence of str
        Local Parquet files (the data files of one catalog version).

    Examples
    --------
    >>> blooms = LazyBlooms(files)  # doctest: +SKIP
    >>> blooms.candidates("SOPInstanceUID", ["2.25.1"]) is None  # the first use  # doctest: +SKIP
    True
    >>> blooms.candidates("SOPInstanceUID", ["2.25.1"])  # doctest: +SKIP
    ['/lake/tables/instances/part-00000-...parquet']
    """

    def __init__(self, files: Sequence[str]) -> None:
        self.files = list(files)
        self._indexes: dict[str, BloomIndex | None] = {}  # None: not read (yet)
        self._lock = threading.Lock()

    def index(self, column: str) -> BloomIndex | None:
        """The Bloom index of ``column``, if read (by the second :meth:`candidates` for it)."""
        with self._lock:
            return self._indexes.get(column)

    def candidates(self, column: str, values: Iterable[str]) -> list[str] | None:
        """The files whose Bloom filters of ``column`` may hold one of ``values`` (in the
        order of :attr:`files`), or None for every file: the first call for ``column``, or
        filters that could not be read (a file removed by a vacuum or damaged: reading the
        files says so), which the next call tries again."""
        with self._lock:
            if column not in self._indexes:
                self._indexes[column] = None
                return None
            index = self._indexes[column]
            if index is None:
                from lake.catalog._bloom import BloomIndex

                try:
                    index = BloomIndex(self.files, column)
                except (OSError, ValueError):  # (pyarrow's ArrowInvalid is a ValueError)
                    return None
                self._indexes[column] = index
        return index.candidates(values)
