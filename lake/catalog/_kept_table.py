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
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from deltalake.exceptions import DeltaError

if TYPE_CHECKING:
    from deltalake import DeltaTable

__all__ = ["REOPEN_AFTER", "KeptTable", "current", "opened", "refreshed"]

REOPEN_AFTER = 100
"""Versions a kept table is brought up to date across before it is opened again, where its
checkpoints cannot be watched (delta-rs writes one every 100 commits by default)."""

LogPath = Callable[[str, int], str]
"""``(name, version) -> str``: the local path of that version's commit file, or ``""`` for a
table on an object store."""


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
    """

    delta: DeltaTable
    opened_at: int
    checkpoint: str


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
