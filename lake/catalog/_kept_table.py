"""A Delta table kept open from one use to the next and brought up to date, not opened again.

Opening a Delta table replays its log from the last checkpoint (up to 99 commit files); a
table kept from the previous use is brought up to date with ``update_incremental``, which
reads only the commits made since. But a table brought up to date that way grows with every
commit it takes in (deltalake 1.6: +0.1 MB of memory and more CPU per commit, without end), so
it is opened again once a newer checkpoint exists (``_delta_log/_last_checkpoint``: the open
then reads that checkpoint and the few commits after it), or, on an object store, after
:data:`REOPEN_AFTER` versions. It is opened again too when its commit file is gone (the table
was removed and made again, at a lower version) or when deltalake cannot bring it up to date
(the log changed under it); a table that cannot be opened then raises at that open.

Used by the committer (:mod:`lake.catalog._committer`) and the readers' latest snapshots
(:mod:`lake.catalog._kept`). Not thread-safe: a kept table is used by one caller at a time.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from deltalake.exceptions import DeltaError

if TYPE_CHECKING:
    import pyarrow as pa
    from deltalake import DeltaTable

__all__ = ["REOPEN_AFTER", "KeptTable", "KeyRanges", "current", "opened", "refreshed"]

REOPEN_AFTER = 100
"""Versions a kept table is brought up to date across before it is opened again, where its
checkpoints cannot be watched (delta-rs writes one every 100 commits by default)."""

LogPath = Callable[[str, int], str]
"""``(name, version) -> str``: the local path of that version's commit file, or ``""`` for a
table on an object store."""


Bounds = tuple["str | None", "str | None"]
"""A data file's (minimum, maximum) of a key column; ``None`` where not known."""


class KeyRanges:
    """The key ranges of a kept table's data files, by key column, kept between commits.

    A commit judges its keys against the files whose range may hold one
    (:func:`lake.catalog._keys.in_key_range`); the ranges are in the Delta log, but
    reading them (``DeltaTable.get_add_actions``) walks every file's statistics (~2.5 ms of
    CPU a commit, growing with the files: ``batches`` gains one a commit). A writer learns
    them once from the log, then adds the range of each file it writes itself from the rows
    it wrote (:meth:`wrote`: their exact minimum and maximum, within the log's, which may be
    cut to a prefix); a file it has not learnt (another writer's) makes it read the log
    again. Not thread-safe: used by the one commit that took the kept table.
    """

    def __init__(self) -> None:
        self._known: dict[str, dict[str, Bounds]] = {}

    def of(self, key: str, paths: Sequence[str],
           logged: Callable[[], Mapping[str, Bounds]]) -> Mapping[str, Bounds]:
        """The ranges of ``key`` for (at least) ``paths``: those known, or ``logged()`` (the
        log's, by path) when one of ``paths`` is not known, kept in their place."""
        known = self._known.get(key)
        if known is None or any(path not in known for path in paths):
            known = self._known[key] = dict(logged())
        elif len(known) > 2 * len(paths) + 16:  # files removed meanwhile: forget them
            known = self._known[key] = {path: known[path] for path in paths}
        return known

    def wrote(self, key: str, path: str, values: pa.ChunkedArray) -> None:
        """Data file ``path`` was written holding exactly ``values`` in column ``key``."""
        import pyarrow.compute as pc

        known = self._known.get(key)
        if known is None:
            return  # nothing learnt yet: the next judgement reads the log
        bounds = pc.min_max(values)
        known[path] = (bounds["min"].as_py(), bounds["max"].as_py())


@dataclass(frozen=True)
class KeptTable:
    """A table kept open (made by :func:`opened`).

    Attributes
    ----------
    delta : DeltaTable
        The table, brought up to date by :func:`refreshed`.
    opened_at : int
        The version it was opened at.
    checkpoint : str
        The table's ``_last_checkpoint`` when it was opened (``""`` on an object store, or
        before the first checkpoint).
    ranges : KeyRanges
        Its data files' key ranges, as its commits learnt them.
    """

    delta: DeltaTable
    opened_at: int
    checkpoint: str
    ranges: KeyRanges = field(default_factory=KeyRanges, compare=False, repr=False)


def opened(open_latest: Callable[[str], DeltaTable], log_path: LogPath, name: str) -> KeptTable:
    """Table ``name`` opened at its latest version by ``open_latest``, to be kept."""
    delta = open_latest(name)
    version = int(delta.version())
    path = log_path(name, version)
    return KeptTable(delta, version, _checkpoint(path) if path else "")


def refreshed(kept: KeptTable, log_path: LogPath, name: str) -> KeptTable | None:
    """``kept`` brought up to date, or ``None`` when it is to be opened again (see the module).

    On a local lake a table whose next commit file does not exist is up to date as it is:
    Delta numbers commits one after the other and publishes each commit file whole (delta-rs
    renames it into place without replacing), so no commit was made since its version.
    ``update_incremental`` is then not called (~1 ms of CPU: it lists the log); a commit
    landing after this check is one landing just after the update would have returned, and a
    writer's compare-and-swap catches it as before.
    """
    version = int(kept.delta.version())
    path = log_path(name, version)
    if path and (not os.path.exists(path)  # the table was made again, at a lower version
                 or _checkpoint(path) != kept.checkpoint):  # cheap to open, and bounded
        return None
    if path and not os.path.exists(log_path(name, version + 1)):
        return kept  # nothing committed since
    try:
        kept.delta.update_incremental()
    except (DeltaError, OSError):  # the log changed under it (the open raises if it is gone)
        return None
    if not path and int(kept.delta.version()) - kept.opened_at >= REOPEN_AFTER:
        return None
    return kept


def current(kept: KeptTable | None, open_latest: Callable[[str], DeltaTable], log_path: LogPath,
            name: str) -> KeptTable:
    """Table ``name`` at its latest version: ``kept`` brought up to date (:func:`refreshed`),
    or opened by ``open_latest`` (:func:`opened`) when none is kept or it is to be opened
    again."""
    fresh = None if kept is None else refreshed(kept, log_path, name)
    return opened(open_latest, log_path, name) if fresh is None else fresh


def _checkpoint(log_file: str) -> str:
    """The content of the ``_last_checkpoint`` file beside the commit file ``log_file``
    (``""`` when the table has no checkpoint yet)."""
    try:
        with open(os.path.join(os.path.dirname(log_file), "_last_checkpoint")) as fh:
            return fh.read()
    except FileNotFoundError:
        return ""
