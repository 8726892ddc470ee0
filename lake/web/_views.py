"""What a grant can see: the catalog snapshot for a request's scope."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import TYPE_CHECKING

from lake.access import Grant
from lake.query import Snapshot, SnapshotCache

if TYPE_CHECKING:
    from lake._lake import Lake

__all__ = ["Views"]

_SCOPED_KEPT = 8


class Views:
    """Catalog snapshots by scope: the newest catalog, or a grant's pinned cohorts.

    An unscoped grant reads the newest catalog version (followed incrementally). A
    grant limited to cohorts reads a snapshot holding only their members, each at its
    cohort's catalog version; the most recently used few are kept, keyed by what defines
    the scope (:attr:`lake.access.Grant.scope_key`: names, versions and member
    fingerprints), so a cohort redefined at the same catalog version is not served from
    its old snapshot.

    Parameters
    ----------
    lake : Lake
        An open lake.
    """

    def __init__(self, lake: Lake) -> None:
        self._lake = lake
        self._current = SnapshotCache(lake.tables)
        self._lock = threading.Lock()
        self._scoped: OrderedDict[tuple[tuple[str, int, str], ...], Snapshot] = OrderedDict()

    def snapshot(self, grant: Grant) -> Snapshot:
        """The snapshot holding exactly what ``grant`` may see."""
        key = grant.scope_key
        if key is None or grant.cohorts is None:
            return self._current.current()
        with self._lock:
            found = self._scoped.get(key)
            if found is not None:
                self._scoped.move_to_end(key)
                return found
            views = sorted(grant.cohorts, key=lambda v: v.catalog_version)
            newest = views[-1].catalog_version if views else self._lake.version
            made = Snapshot(
                self._lake.tables, newest, members=[(v.catalog_version, v.members) for v in views]
            )
            self._scoped[key] = made
            while len(self._scoped) > _SCOPED_KEPT:
                # Not closed here: a request may still be reading it; its connection closes
                # when the last reference goes.
                self._scoped.popitem(last=False)
            return made

    def close(self) -> None:
        self._current.close()
        with self._lock:
            for snap in self._scoped.values():
                snap.close()
            self._scoped.clear()
