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
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from lake.catalog._schema import INSTANCES, TOMBSTONES
from lake.catalog._tables import DeltaTables

__all__ = ["ERASURE_KEY", "PURPOSE", "TOMBSTONED", "Tombstones", "lay", "tombstone"]

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
        column = tables.dataset(TOMBSTONES.name).to_table(columns=["tombstone"]).column(0)
        return cls(key, frozenset(v for v in column.to_pylist() if v is not None))

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


