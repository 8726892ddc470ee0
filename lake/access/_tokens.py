"""Bearer tokens: created once, stored only as a hash, listed, revoked, verified.

A token is ``lake_<id>_<secret>``: ``id`` is 16 hex digits (public: it names the token
in listings and revocations), ``secret`` 32 random bytes (256 bits, URL-safe base64).
The ``tokens`` table keeps the sha256 of the whole text, never the text; a presented
token is looked up by its id and its hash compared in constant time. A sha256 is the
right hash for 256 random bits (password hashes such as Argon2 exist to slow down
guessing of low-entropy secrets, which these are not).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
import secrets
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa
from deltalake.exceptions import CommitFailedError

from lake._errors import AccessError, AuthenticationError, ConfigError
from lake.access._roles import Role
from lake.catalog import TOKENS, arrow_dataset

if TYPE_CHECKING:
    from lake._lake import Lake

__all__ = [
    "Token",
    "TokenBook",
    "create_token",
    "list_tokens",
    "parse_duration",
    "revoke_token",
]

_PREFIX = "lake_"
_TOKEN = re.compile(r"^lake_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$")
_ID = re.compile(r"^[0-9a-f]{16}$")
_DURATION = re.compile(r"^(\d{1,6})([mhdw])$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_RETRIES = 20


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def parse_duration(text: str) -> dt.timedelta | None:
    """``30m``, ``12h``, ``7d``, ``2w``, or ``never`` (None).

    Examples
    --------
    >>> parse_duration("7d")
    datetime.timedelta(days=7)
    >>> parse_duration("never") is None
    True

    Raises
    ------
    ConfigError
        If the text is not a duration.
    """
    clean = text.strip().lower()
    if clean == "never":
        return None
    match = _DURATION.match(clean)
    if match is None or int(match.group(1)) == 0:
        raise ConfigError(
            f"invalid duration {text!r}: use a number and a unit, e.g. 30m, 12h, 7d, 2w, or 'never'"
        )
    return dt.timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("ascii")).hexdigest()


@dataclass(frozen=True)
class Token:
    """A token as the lake records it (never the token text).

    Parameters
    ----------
    token_id : str
        Public identifier.
    role : Role
        What the token may do.
    cohorts : tuple of str
        The cohorts it is limited to; empty for the whole lake (for a student: every
        teaching set).
    note : str
        Free text.
    created_at, expires_at, revoked_at : datetime or None
        UTC times; ``expires_at`` None means never.
    """

    token_id: str
    role: Role
    cohorts: tuple[str, ...]
    note: str
    created_at: dt.datetime
    expires_at: dt.datetime | None
    revoked_at: dt.datetime | None

    def is_active(self, now: dt.datetime | None = None) -> bool:
        """Neither revoked nor expired."""
        moment = now or dt.datetime.now(dt.UTC)
        if self.revoked_at is not None:
            return False
        return self.expires_at is None or moment < self.expires_at

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready fields (what ``lake token list --format json`` prints)."""
        return {
            "id": self.token_id,
            "role": self.role.value,
            "scopes": list(self.cohorts),
            "note": self.note,
            "created": self.created_at.isoformat(),
            "expires": self.expires_at.isoformat() if self.expires_at else None,
            "revoked": self.revoked_at is not None,
            "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None,
        }


def _from_row(row: dict[str, Any]) -> Token:
    return Token(
        token_id=row["token_id"],
        role=Role(row["role"]),
        cohorts=tuple(row["cohorts"] or ()),
        note=row["note"] or "",
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        revoked_at=row["revoked_at"],
    )


def _rows(lake: Lake) -> list[dict[str, Any]]:
    if not lake.tables.exists(TOKENS.name):
        return []
    return list(arrow_dataset(lake.tables.open(TOKENS.name)).to_table().to_pylist())


def create_token(
    lake: Lake,
    role: Role | str,
    *,
    cohorts: Sequence[str] = (),
    expires_in: dt.timedelta | None = dt.timedelta(days=30),
    note: str = "",
) -> tuple[Token, str]:
    """Create a token; returns its record and its text (the only time the text exists).

    Parameters
    ----------
    lake : Lake
        An open lake.
    role : Role or str
        ``steward``, ``researcher`` or ``student``.
    cohorts : sequence of str
        Limit the token to these saved cohorts (each pinned to its catalog version). A
        student token may name only teaching sets; without names it sees every one.
    expires_in : timedelta or None
        Lifetime (None: never expires).
    note : str
        Free text to recognise the token by (no patient data belongs here).

    Raises
    ------
    AccessError
        If a cohort does not exist, a student token names a cohort that is not a
        teaching set, or a steward token names cohorts (stewards see the whole lake).
    """
    from lake.access._teaching import teaching_sets
    from lake.export import load_cohort

    the_role = Role(role)
    names = tuple(sorted(set(cohorts)))
    if the_role is Role.STEWARD and names:
        raise AccessError("a steward token sees the whole lake; give cohorts= only to "
                          "researcher and student tokens", parameters=("cohorts",))
    for name in names:
        load_cohort(lake, name)  # raises when it does not exist
    if the_role is Role.STUDENT:
        allowed = set(teaching_sets(lake))
        outside = [n for n in names if n not in allowed]
        if outside:
            raise AccessError(
                f"cohort(s) {', '.join(outside)} are not teaching sets; a student token may name "
                "only teaching sets (make one with lake.access.mark_teaching_set())",
                functions=("lake.access.mark_teaching_set",)
            )
    if expires_in is not None and expires_in <= dt.timedelta(0):
        raise ConfigError("a token's lifetime must be positive")
    token_id = secrets.token_hex(8)
    text = f"{_PREFIX}{token_id}_{secrets.token_urlsafe(32)}"
    now = _now()
    token = Token(token_id, the_role, names, note, now,
                  None if expires_in is None else now + expires_in, None)
    row = {
        "token_id": token_id, "token_sha256": _digest(text), "role": the_role.value,
        "cohorts": list(names), "note": note, "created_at": now,
        "expires_at": token.expires_at, "revoked_at": None,
    }
    lake.tables.create(TOKENS)
    lake.tables.append(TOKENS, [row])
    return token, text


def list_tokens(lake: Lake) -> list[Token]:
    """Every token ever created (revoked and expired ones too), oldest first."""
    return sorted((_from_row(r) for r in _rows(lake)), key=lambda t: (t.created_at, t.token_id))


def revoke_token(lake: Lake, token_id: str) -> Token:
    """Revoke a token now (idempotent: a revoked token keeps its first revocation time).

    Raises
    ------
    AccessError
        If there is no token with that id.
    """
    clean = token_id.strip().lower()
    known = {t.token_id: t for t in list_tokens(lake)} if _ID.match(clean) else {}
    if clean not in known:
        raise AccessError(f"no token with id {token_id!r}; lake.access.list_tokens() shows "
                          "the ids", functions=("lake.access.list_tokens",))
    if known[clean].revoked_at is not None:
        return known[clean]
    for attempt in range(_RETRIES):
        try:
            lake.tables.open(TOKENS.name).update(
                predicate=f"token_id = '{clean}' AND revoked_at IS NULL",
                new_values={"revoked_at": _now()},
            )
            break
        except CommitFailedError:
            time.sleep(0.05 * (attempt + 1))
    else:
        raise AccessError(f"could not revoke token {clean} (concurrent writers); retry")
    return {t.token_id: t for t in list_tokens(lake)}[clean]


class TokenBook:
    """Verifies presented tokens against the ``tokens`` table (for a long-running server).

    The table is re-read only when its Delta version changes (checked on every call,
    well under a millisecond), so a revocation takes effect on the next request.

    Parameters
    ----------
    lake : Lake
        An open lake.
    """

    def __init__(self, lake: Lake) -> None:
        self._lake = lake
        self._lock = threading.Lock()
        lake.tables.create(TOKENS)
        self._delta = lake.tables.open(TOKENS.name)
        self._version = -1
        self._by_id: dict[str, tuple[str, Token]] = {}

    def _refresh(self) -> None:
        self._delta.update_incremental()
        version = int(self._delta.version())
        if version == self._version:
            return
        table: pa.Table = arrow_dataset(self._delta).to_table()
        self._by_id = {r["token_id"]: (r["token_sha256"], _from_row(r)) for r in table.to_pylist()}
        self._version = version

    def verify(self, text: str) -> Token:
        """The active token whose text is ``text``.

        Raises
        ------
        AuthenticationError
            If the text is not a token of this lake, or the token expired or was revoked
            (one message for all, so a caller learns nothing about which).
        """
        match = _TOKEN.match(text.strip())
        with self._lock:
            self._refresh()
            entry = self._by_id.get(match.group(1)) if match else None
        digest = _digest(text.strip()) if match else ""
        stored, token = entry if entry else ("0" * 64, None)
        same = hmac.compare_digest(digest.encode(), stored.encode())
        if not same or token is None or not token.is_active():
            raise AuthenticationError("the token is invalid, expired or revoked")
        return token
