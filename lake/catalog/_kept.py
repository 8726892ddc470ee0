"""Delta snapshots kept by one :class:`~lake.catalog.DeltaTables` (one open lake) for its reads.

A Delta version never changes: its data files, and so its :class:`DataFiles`, are the same
at every read. What can change between two reads in one process is which version is the
latest (another process commits) and whether a version can still be read (an erasure or a
vacuum since); both are checked at every read, cheaply:

- the latest version: a table is opened once and brought up to date with
  ``DeltaTable.update_incremental`` (one listing of its log, ~0.1 ms, where opening it
  again costs ~1.2 ms), and opened again once a newer checkpoint exists, as the committer's
  tables are (:mod:`lake.catalog._kept_table`: a table only brought up to date grows with
  every commit it takes in, without end in a long-running server); on a local lake, only
  when the log holds a commit file after the kept version (two ``stat`` calls say it holds
  none: :meth:`KeptSnapshots._still_latest`);
- an older version: its data files are kept (the last :data:`KEPT_VERSIONS`), and the
  caller (``DeltaTables.data_files``) still checks the erasures and that every file is
  stored, at each read.

A table removed and made again by hand is noticed only when it comes back at a lower version
(its kept version's commit file is gone): nothing in the lake removes a table's folder; open the
lake again after doing so.

Safe to share between threads; pickled without what it keeps.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from lake.catalog._kept_table import KeptTable, current

if TYPE_CHECKING:
    from deltalake import DeltaTable

    from lake.catalog._tables import DataFiles

__all__ = ["KEPT_VERSIONS", "KeptSnapshots"]

KEPT_VERSIONS = 16
"""How many (table, version) data-file lists are kept: a few exports' worth."""


class KeptSnapshots:
    """The latest snapshot of each table read, and the data files of recent versions.

    Parameters
    ----------
    open_latest : callable
        ``(name) -> DeltaTable`` at its latest version (``DeltaTables.open``).
    files_of : callable
        ``(DeltaTable) -> DataFiles``.
    log_path : callable
        ``(name, version) -> str``: the local path of that version's commit file, or ``""``
        for a table on an object store.
    """

    def __init__(
        self,
        open_latest: Callable[[str], DeltaTable],
        files_of: Callable[[DeltaTable], DataFiles],
        log_path: Callable[[str, int], str],
    ) -> None:
        self._open = open_latest
        self._files_of = files_of
        self._log_path = log_path
        self._lock = threading.Lock()
        self._latest: dict[str, KeptTable] = {}
        self._files: OrderedDict[tuple[str, int], tuple[DataFiles, tuple[str, ...]]] = (
            OrderedDict()
        )
        self._derived: dict[tuple[str, str], tuple[int, Any]] = {}

    def latest(self, name: str) -> tuple[int, DataFiles]:
        """The latest version of table ``name`` now, and its data files."""
        with self._lock:
            kept = self._latest.get(name)
            if kept is None or not self._still_latest(name, int(kept.delta.version())):
                kept = self._latest[name] = current(kept, self._open, self._log_path, name)
            delta = kept.delta
            version = int(delta.version())
            return version, self._kept(name, version, delta)[0]

    def _still_latest(self, name: str, version: int) -> bool:
        """Whether ``version`` of a local table is its latest, by its log: its commit file is
        there and the next one is not (a Delta commit, and a checkpoint with it, is the
        next version's commit file). Two ``stat`` calls, where bringing the kept table up
        to date (:func:`~lake.catalog._kept_table.current`) reads the checkpoint pointer and
        lists the log (~0.5 ms of CPU). A table on an object store is brought up to date.
        It relies on what a local POSIX filesystem gives (a commit file appears whole, at
        once, to every later ``stat``; on NFS a cached negative ``stat`` may lag for the
        attribute cache's seconds, as the listing it replaces could) and on no step of the
        lake removing a table: one deleted and made again by hand at a lower version would
        go on being served from memory until the lake is opened again."""
        path = self._log_path(name, version)
        return bool(path) and os.path.exists(path) and not os.path.exists(
            self._log_path(name, version + 1))

    def holds(self, name: str) -> bool:
        """Whether the latest snapshot of table ``name`` is kept (the table existed when it
        was last read: :meth:`latest` brings it up to date, without asking whether the
        table exists)."""
        with self._lock:
            return name in self._latest

    def at(self, name: str, version: int,
           open_at: Callable[[], DeltaTable]) -> tuple[DataFiles, tuple[str, ...]]:
        """The data files of ``version`` of ``name`` and their URIs (``open_at`` opens it when
        they are not kept)."""
        with self._lock:
            kept = self._files.get((name, version))
            if kept is not None:
                self._files.move_to_end((name, version))
                return kept
        delta = open_at()
        with self._lock:
            return self._kept(name, version, delta)

    def derived(self, name: str, what: str, version: int, make: Callable[[], Any]) -> Any:
        """``make()``, computed again only when ``version`` of ``name`` is not the one the
        kept result ``what`` was made from (e.g. the erasures' records)."""
        with self._lock:
            kept = self._derived.get((name, what))
        if kept is not None and kept[0] == version:
            return kept[1]
        value = make()
        with self._lock:
            self._derived[(name, what)] = (version, value)
        return value

    def _kept(self, name: str, version: int,
              delta: DeltaTable) -> tuple[DataFiles, tuple[str, ...]]:
        key = (name, version)
        kept = self._files.get(key)
        if kept is None:
            kept = self._files[key] = (self._files_of(delta), tuple(delta.file_uris()))
            while len(self._files) > KEPT_VERSIONS:
                self._files.popitem(last=False)
        self._files.move_to_end(key)
        return kept
