"""What one :class:`~lake.catalog.DeltaTables` keeps from one commit to the next.

Every commit of a batch (``DeltaTables.insert_new``: judge the keys, write the rows, summarise
the new file) used to open each table it wrote afresh and to make a DuckDB database of its own
for each query. Both cost more than the work of a small commit, and both grew the process:

- Opening a Delta table replays its log from the last checkpoint (up to 99 commit files,
  read concurrently on delta-rs's tokio blocking threads: ~28 ms of CPU at 50 commits past a
  checkpoint, and the blocking pool grew with the files read at once, to ~85 threads). A table
  kept from the previous commit is brought up to date instead, and opened again at a newer
  checkpoint (:mod:`lake.catalog._kept_table`).
- ``duckdb.connect()`` makes a whole database (~19 ms of CPU) and its closing frees it; a
  cursor of a database kept here costs microseconds.

A kept table is used by one commit at a time: :meth:`Committer.table` takes it out and
:meth:`Committer.keep` puts it back after a successful commit (or a judgement that commits
nothing); a commit that fails keeps
nothing, and the next one opens the table again. The table a commit judges is the one it
writes through, so the compare-and-swap of ``insert_new`` is unchanged: deltalake commits
at the version the table object was brought to. Readers never see these objects (they use
:class:`~lake.catalog._kept.KeptSnapshots`).

Safe to share between threads; a pickled ``DeltaTables`` keeps none of it.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from lake.catalog._duckdb import connect
from lake.catalog._kept_table import KeptTable, current

if TYPE_CHECKING:
    import duckdb
    from deltalake import DeltaTable

__all__ = ["Committer", "Writing"]

Writing = KeptTable
"""A table taken for one commit (:meth:`Committer.table`): commit through its ``delta``."""


def _database() -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB database for a writer's small queries, without threads of its own.

    One worker thread (the caller's: ``threads = 1``), beside the ingest workers; and no
    asynchronous I/O threads (``async_threads``: DuckDB 2 starts eight per database, which
    a kept database would hold for the process's life; these queries read local files).
    """
    database = connect()
    database.execute("SET threads = 1")
    if database.execute("SELECT count(*) FROM duckdb_settings() WHERE name = 'async_threads'"
                        ).fetchall() == [(1,)]:  # (DuckDB 2 on)
        database.execute("SET async_threads = 0")
    return database


class Committer:
    """The tables a writer commits through and the DuckDB database its commits query.

    Parameters
    ----------
    open_latest : callable
        ``(name) -> DeltaTable`` at its latest version (``DeltaTables._opened``).
    log_path : callable
        ``(name, version) -> str``: the local path of that version's commit file, or ``""``
        for a table on an object store.
    """

    def __init__(
        self, open_latest: Callable[[str], DeltaTable], log_path: Callable[[str, int], str]
    ) -> None:
        self._open = open_latest
        self._log_path = log_path
        self._lock = threading.Lock()
        self._idle: dict[str, Writing] = {}
        self._database: duckdb.DuckDBPyConnection | None = None

    def table(self, name: str) -> Writing:
        """Table ``name`` at its latest version, for one commit: the kept one brought up to
        date, or opened (none kept, a newer checkpoint, the table made again)."""
        with self._lock:
            kept = self._idle.pop(name, None)
        return current(kept, self._open, self._log_path, name)

    def keep(self, name: str, writing: Writing) -> None:
        """Keep ``writing`` (taken from :meth:`table`, committed through) for the next commit."""
        with self._lock:
            self._idle[name] = writing

    @contextlib.contextmanager
    def cursor(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A cursor of this writer's DuckDB database (in memory, one thread, no progress bar),
        closed after use; the database is made at the first call."""
        with self._lock:
            if self._database is None:
                self._database = _database()
            cursor = self._database.cursor()
        try:
            yield cursor
        finally:
            cursor.close()

