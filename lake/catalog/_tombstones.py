"""Erasure tombstones: what ``lake forget`` erased stays out, whichever way it comes back.

A withdrawn patient may still be on its way in when the steward erases it (received by
``lake serve dicom`` or STOW-RS and held in a receipt journal, or in files an ingest is
reading), or be sent again later by a modality or a PACS. So an erasure leaves a
tombstone per erased PatientID, StudyInstanceUID or SeriesInstanceUID (the values as
stored in the lake), and every commit of instance rows drops the rows a tombstone
matches (:func:`lake.ingest._commit.commit_batch`, counted as ``erased``).

A tombstone is a keyed hash, HMAC-SHA256 under a key derived from the lake's secret, of
the column and the value: the lake keeps no byte of the pseudonym or UID, and without
the vault no one can test whether a given pseudonym was withdrawn.

Why a concurrent commit cannot resurrect an erased row: a commit of instance rows reads
the tombstones *after* opening the snapshot of ``instances`` it judges, and is made only
if it directly follows that snapshot (:meth:`DeltaTables.insert_new`). The erasure
records its tombstone, then makes a commit of its own to ``instances`` (:func:`lay`),
then deletes the rows. A commit that read the tombstones before the new one landed
opened its snapshot earlier still, so the erasure's commit comes after that snapshot:
either it lands first, and the commit loses its compare-and-swap and is judged again
(now with the tombstone), or the commit lands first, and the erasure's delete (made
after its own commit) removes the row.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import os
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lake.catalog._schema import INSTANCES, TOMBSTONES
from lake.catalog._tables import DeltaTables, arrow_dataset, data_files

if TYPE_CHECKING:
    from deltalake import DeltaTable

__all__ = [
    "COMPACT_AFTER",
    "ERASURE_KEY",
    "PURPOSE",
    "TOMBSTONED",
    "TombstoneCache",
    "Tombstones",
    "compact",
    "laid_at",
    "lay",
    "tombstone",
]

PURPOSE = "erasure-tombstones"
"""The purpose the tombstones' key is derived for (``Secret.derive``)."""

ERASURE_KEY = "imaging-lake.erasure"
"""Commit metadata of the erasure's own commit to ``instances`` (its erasure id)."""

TOMBSTONED = ("PatientID", "StudyInstanceUID", "SeriesInstanceUID")
"""The instance columns a tombstone may name."""


def tombstone(key: bytes, column: str, value: str) -> str:
    """The tombstone of ``column`` = ``value`` (as stored) under ``key``."""
    return hmac.new(key, f"{column}={value}".encode(), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Tombstones:
    """The tombstones of a lake at one moment, to test rows against.

    Parameters
    ----------
    key : bytes
        The tombstones' key (``secret.derive(PURPOSE)``).
    laid : frozenset of str
        The tombstones recorded.
    """

    key: bytes
    laid: frozenset[str]

    @classmethod
    def read(cls, tables: DeltaTables, key: bytes) -> Tombstones:
        """The tombstones recorded now (none if the lake has no tombstones table yet)."""
        if not tables.exists(TOMBSTONES.name):
            return cls(key, frozenset())
        return cls.of(tables.open(TOMBSTONES.name), key, tables.storage_options)

    @classmethod
    def of(
        cls, delta: DeltaTable, key: bytes, storage_options: Mapping[str, str] | None = None
    ) -> Tombstones:
        """The tombstones of the tombstones table ``delta`` at the version it is loaded at
        (remote: read with ``storage_options``), read file by file (:class:`DataFiles`: an
        Arrow dataset imports pandas, 0.2 s of CPU at an ingest's first commit)."""
        files = data_files(delta, storage_options)
        laid = frozenset(
            str(value)
            for path in files.paths
            for value in files.read(path, ["tombstone"]).column(0).to_pylist()
            if value is not None
        )
        return cls(key, laid)

    def __bool__(self) -> bool:
        return bool(self.laid)

    def erased(self, row: Mapping[str, Any]) -> bool:
        """Whether ``row`` (an instance row) belongs to something erased."""
        if not self.laid:
            return False
        return any(
            tombstone(self.key, column, str(row[column])) in self.laid
            for column in TOMBSTONED
            if row.get(column) is not None
        )


class TombstoneCache:
    """A lake's tombstones, read again only when the tombstones table has a new version.

    Every commit of instance rows tests them, on every attempt; reading the table costs
    one small data file per erasure (110 ms at 200 erasures), while learning whether it
    changed costs one listing of its log (0.4 ms: ``DeltaTable.update_incremental``), or on a
    local lake one look for its next commit file.
    The check runs at each :meth:`read`, so a read still sees every tombstone recorded
    before it began, as :meth:`Tombstones.read` does (the race argument of this module
    holds unchanged). Safe to share between threads; pickled without its cache.

    Parameters
    ----------
    key : bytes
        The tombstones' key (``secret.derive(PURPOSE)``).

    Attributes
    ----------
    loads : int
        How often the table's data was read (a new version, or a first read).
    """

    def __init__(self, key: bytes) -> None:
        self.key = key
        self.loads = 0
        self._lock = threading.Lock()
        self._uri = ""
        self._delta: DeltaTable | None = None
        self._version = -1
        self._laid = Tombstones(key, frozenset())

    def __getstate__(self) -> dict[str, Any]:
        return {"key": self.key}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["key"])  # type: ignore[misc]

    def read(self, tables: DeltaTables) -> Tombstones:
        """The tombstones recorded now (none if the lake has no tombstones table yet)."""
        with self._lock:
            uri = tables.uri(TOMBSTONES.name)
            if self._delta is None or self._uri != uri:
                if not tables.exists(TOMBSTONES.name):
                    return Tombstones(self.key, frozenset())
                self._delta, self._uri, self._version = tables.open(TOMBSTONES.name), uri, -1
            else:
                # on a local lake, only when a newer commit file exists (the kept tables'
                # rule, lake.catalog._kept_table.refreshed): one stat, not a log listing
                upcoming = tables._local_log(TOMBSTONES.name, int(self._delta.version()) + 1)
                if not upcoming or os.path.exists(upcoming):
                    self._delta.update_incremental()
            version = int(self._delta.version())
            if version != self._version:
                self._laid = Tombstones.of(self._delta, self.key, tables.storage_options)
                self._version = version
                self.loads += 1
            return self._laid


COMPACT_AFTER = 16
""":func:`compact` compacts the tombstones table once it has this many data files."""


def lay(
    tables: DeltaTables, key: bytes, column: str, values: Iterable[str], kind: str,
    erasure_id: str,
) -> int:
    """Record tombstones for ``column`` = each of ``values``, then commit to ``instances``.

    Idempotent (a tombstone is recorded once). The empty commit to ``instances`` that
    follows makes every commit judged against an older snapshot of ``instances`` judge
    again, with the new tombstones (see the module documentation); delete the erased
    rows only after this returns.

    Returns
    -------
    int
        The version of ``instances`` that the erasure's own commit made.
    """
    if column not in TOMBSTONED:
        raise ValueError(f"tombstones name {', '.join(TOMBSTONED)}, not {column}")
    tables.create(TOMBSTONES)
    now = dt.datetime.now(dt.UTC)
    rows = [
        {"tombstone": tombstone(key, column, value), "kind": kind, "erasure_id": erasure_id,
         "laid_at": now}
        for value in sorted(set(values))
    ]
    if rows:
        tables.insert_new(TOMBSTONES, rows, key="tombstone")
    return tables.append(INSTANCES, INSTANCES.schema.empty_table(),
                         metadata={ERASURE_KEY: erasure_id})


def laid_at(tables: DeltaTables, key: bytes, column: str, value: str) -> dt.datetime | None:
    """When the tombstone of ``column`` = ``value`` was laid (None if it was not).

    A re-run of an interrupted erasure finds the time of the first run's tombstone here: the
    lake keeps nothing else of the target that says what was there before it.
    """
    if not tables.exists(TOMBSTONES.name):
        return None
    import pyarrow.compute as pc

    laid = arrow_dataset(tables.open(TOMBSTONES.name)).to_table(
        columns=["laid_at"], filter=pc.field("tombstone") == tombstone(key, column, value))
    times = [t for t in laid.column(0).to_pylist() if t is not None]
    return min(times) if times else None


def compact(tables: DeltaTables) -> str | None:
    """One data file (and a checkpoint) for the tombstones once they span many files: each
    erasure adds a file, and a commit reads them all when the table changed.

    An optimisation only, run after an erasure's critical section (:func:`lay`, the
    deletes): a compaction that fails loses nothing, and the next erasure tries again.

    Returns
    -------
    str or None
        None once compacted (or not due); else why it failed, in one line naming the
        error's type only (another erasure committed meanwhile, storage refused it...).
    """
    if not tables.exists(TOMBSTONES.name):
        return None
    try:
        delta = tables.open(TOMBSTONES.name)
        if len(delta.file_uris()) < COMPACT_AFTER:
            return None
        delta.optimize.compact()
        delta.create_checkpoint()
    except Exception as exc:  # noqa: BLE001 - an optimisation: any failure is reported, not raised
        return (f"the tombstones table could not be compacted ({type(exc).__name__}); "
                "the next erasure tries again")
    return None


