"""Share links: a read-only capability for one cohort or teaching set, made by a steward.

A share link is a token (:mod:`lake.access._tokens`: stored only as a hash, expiring,
revocable, listed by ``lake token list`` too) scoped to one cohort, plus a row of the
``shares`` table saying it is a link. The authorisation function treats a link's token
as a ``share`` principal: it may read and download within its cohort and nothing else
(no exports, no SQL, no storing), whatever its role. Revoking the token ends the link.
"""

from __future__ import annotations

import datetime as dt
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lake._errors import AccessError
from lake.access._roles import Role
from lake.access._tokens import Token, create_token, list_tokens, revoke_token
from lake.catalog import SHARES, arrow_dataset

if TYPE_CHECKING:
    from lake._lake import Lake

__all__ = ["Share", "ShareBook", "create_share", "list_shares", "revoke_share"]


@dataclass(frozen=True)
class Share:
    """A share link as the lake records it (never its token).

    Parameters
    ----------
    token : Token
        The link's token record (id, expiry, revocation).
    cohort : str
        What it opens.
    role : Role
        ``student`` or ``researcher``: whose view of the cohort it gives.
    created_by : str
        Who made it.
    """

    token: Token
    cohort: str
    role: Role
    created_by: str

    @property
    def share_id(self) -> str:
        return self.token.token_id

    def state(self, now: dt.datetime | None = None) -> str:
        """``active``, ``expired`` or ``revoked``."""
        if self.token.revoked_at is not None:
            return "revoked"
        return "active" if self.token.is_active(now) else "expired"


def create_share(
    lake: Lake,
    cohort: str,
    *,
    role: Role | str = Role.STUDENT,
    expires_in: dt.timedelta | None = dt.timedelta(days=30),
    created_by: str,
) -> tuple[Share, str]:
    """Make a share link for ``cohort``; returns its record and its token (shown once).

    Parameters
    ----------
    lake : Lake
        An open lake.
    cohort : str
        A saved cohort (for ``student`` links: a teaching set).
    role : Role or str
        ``student`` (teaching sets only) or ``researcher``.
    expires_in : timedelta or None
        Lifetime (None: until revoked).
    created_by : str
        Who makes it (for the record).

    Raises
    ------
    AccessError
        If the role is ``steward``, the cohort does not exist, or a student link names a
        cohort that is not a teaching set.
    """
    the_role = Role(role)
    if the_role is Role.STEWARD:
        raise AccessError("a share link gives a student's or a researcher's view of one "
                          "cohort; use role='student' or role='researcher'",
                          parameters=("role",))
    token, text = create_token(lake, the_role, cohorts=[cohort], expires_in=expires_in,
                               note=f"share link: {cohort}")
    lake.tables.create(SHARES)
    lake.tables.append(SHARES, [{
        "token_id": token.token_id, "cohort": cohort, "role": the_role.value,
        "created_by": created_by, "created_at": token.created_at,
    }])
    return Share(token, cohort, the_role, created_by), text


def list_shares(lake: Lake) -> list[Share]:
    """Every share link ever made (expired and revoked ones too), oldest first."""
    if not lake.tables.exists(SHARES.name):
        return []
    rows = arrow_dataset(lake.tables.open(SHARES.name)).to_table().to_pylist()
    tokens = {t.token_id: t for t in list_tokens(lake)}
    shares = [Share(tokens[r["token_id"]], r["cohort"], Role(r["role"]), r["created_by"] or "")
              for r in rows if r["token_id"] in tokens]
    return sorted(shares, key=lambda s: (s.token.created_at, s.share_id))


def revoke_share(lake: Lake, share_id: str) -> Share:
    """Revoke a share link now (idempotent).

    Raises
    ------
    AccessError
        If there is no share link with that id.
    """
    known = {s.share_id: s for s in list_shares(lake)}
    clean = share_id.strip().lower()
    if clean not in known:
        raise AccessError(f"no share link with id {share_id!r}; lake.access.list_shares() "
                          "shows the ids", functions=("lake.access.list_shares",))
    token = revoke_token(lake, clean)
    old = known[clean]
    return Share(token, old.cohort, old.role, old.created_by)


class ShareBook:
    """Which token ids are share links.

    Whether a token is a link never changes once its creator has it (:func:`create_share`
    writes the ``shares`` row before returning the token), so each answer is kept and the
    table is read again only for a token id not seen before.

    Parameters
    ----------
    lake : Lake
        An open lake.
    """

    def __init__(self, lake: Lake) -> None:
        self._lock = threading.Lock()
        lake.tables.create(SHARES)
        self._delta = lake.tables.open(SHARES.name)
        self._version = -1
        self._ids: frozenset[str] = frozenset()
        self._known: dict[str, bool] = {}

    def is_share(self, token_id: str) -> bool:
        """Whether ``token_id`` is the token of a share link."""
        with self._lock:
            known = self._known.get(token_id)
            if known is not None:
                return known
            self._delta.update_incremental()
            version = int(self._delta.version())
            if version != self._version:
                table = arrow_dataset(self._delta).to_table(columns=["token_id"])
                self._ids = frozenset(table.column("token_id").to_pylist())
                self._version = version
            if len(self._known) > 100_000:
                self._known.clear()
            self._known[token_id] = token_id in self._ids
            return self._known[token_id]
