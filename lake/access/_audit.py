"""The audit log: who did what, when, in the append-only ``audit`` Delta table.

Every sign-in (and failed one), download, export, share link, token use and account
change is one row. Resources are named by cohort names, ids and the lake's
pseudonymous UIDs, never by a value a request carried that the lake does not hold.
Rows are only appended (query them with ``lake sql "SELECT * FROM audit ORDER BY at DESC"``),
never deleted; the one update is an erasure's (:func:`lake.steward.forget`): the rows naming
what it withdraws keep who, what and when, and name ``<erased>`` instead, in every version.

:class:`AuditLog` buffers events for a server and appends them in one commit at
most every second (a busy viewer makes many requests), from a thread of its own;
:meth:`AuditLog.flush` writes at once and :meth:`AuditLog.close` writes what is left.
Commands write their few events directly with :func:`record_events`.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lake.catalog import AUDIT

if TYPE_CHECKING:
    from lake._lake import Lake
    from lake.access._authorize import Principal

__all__ = ["AuditEvent", "AuditLog", "event_for", "record_events"]

_LOG = logging.getLogger("lake.access.audit")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True)
class AuditEvent:
    """One row of the audit log (see the ``audit`` table in ``docs/catalog.md``)."""

    action: str
    actor_kind: str
    actor: str
    role: str | None = None
    resource_kind: str | None = None
    resource: str | None = None
    outcome: str = "ok"
    detail: str = ""
    at: dt.datetime = field(default_factory=_now)
    event_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def row(self) -> dict[str, Any]:
        return {
            "event_id": self.event_id, "at": self.at, "actor_kind": self.actor_kind,
            "actor": self.actor, "role": self.role, "action": self.action,
            "resource_kind": self.resource_kind, "resource": self.resource,
            "outcome": self.outcome, "detail": self.detail,
        }


def event_for(
    principal: Principal | None,
    action: str,
    *,
    resource_kind: str | None = None,
    resource: str | None = None,
    outcome: str = "ok",
    detail: str = "",
) -> AuditEvent:
    """An event whose actor is ``principal`` (None: anonymous)."""
    if principal is None:
        return AuditEvent(action, "anonymous", "anonymous", None, resource_kind, resource,
                          outcome, detail)
    return AuditEvent(action, principal.kind, principal.id, principal.role.value,
                      resource_kind, resource, outcome, detail)


def record_events(lake: Lake, events: Sequence[AuditEvent]) -> None:
    """Append ``events`` to the audit table now, in one commit."""
    if not events:
        return
    lake.tables.create(AUDIT)
    lake.tables.append(AUDIT, [e.row() for e in events])


class AuditLog:
    """A buffered audit writer for a server.

    Parameters
    ----------
    lake : Lake
        An open lake.
    interval : float
        Seconds between commits of buffered events.
    """

    def __init__(self, lake: Lake, *, interval: float = 1.0) -> None:
        self._lake = lake
        self._interval = interval
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._pending: list[AuditEvent] = []
        self._wake = threading.Event()
        self._closed = False
        self._thread: threading.Thread | None = None

    def record(self, event: AuditEvent) -> None:
        """Queue ``event``; it is written within about ``interval`` seconds."""
        with self._lock:
            if self._closed:
                record_events(self._lake, [event])
                return
            self._pending.append(event)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="lake-audit", daemon=True)
                self._thread.start()

    def flush(self) -> None:
        """Write every queued event now."""
        with self._write_lock:
            with self._lock:
                events, self._pending = self._pending, []
            try:
                record_events(self._lake, events)
            except BaseException:  # kept for the next attempt, never dropped
                with self._lock:
                    self._pending[:0] = events
                raise

    def _run(self) -> None:
        while not self._wake.wait(self._interval):
            try:
                self.flush()
            except Exception as exc:  # noqa: BLE001 - the writer must outlive a failed commit
                _LOG.error("the audit log could not be written (%s); retrying",
                           type(exc).__name__)

    def close(self) -> None:
        """Write what is queued and stop the writer thread."""
        with self._lock:
            self._closed = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
        self.flush()
