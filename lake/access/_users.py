"""Portal accounts: a name, a role, optional cohort scopes and an Argon2 password hash.

Accounts live in the ``users`` table. Passwords are hashed with Argon2id
(:mod:`argon2`, RFC 9106 parameters) and never stored or logged in clear.
:class:`UserBook` verifies sign-ins for a long-running server: it re-reads the table
only when its Delta version changes, so an account removed (or a password changed)
with ``lake users`` stops working on the next request.
"""

from __future__ import annotations

import datetime as dt
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from deltalake.exceptions import CommitFailedError

from lake._errors import AccessError, AuthenticationError, ConfigError
from lake.access._roles import Role
from lake.catalog import USERS, arrow_dataset

if TYPE_CHECKING:
    from lake._lake import Lake

__all__ = [
    "MIN_PASSWORD_LENGTH",
    "User",
    "UserBook",
    "add_user",
    "list_users",
    "remove_user",
    "set_password",
]

MIN_PASSWORD_LENGTH = 10
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_RETRIES = 20
_HASHER = PasswordHasher()
# Verified when the name is unknown, so a wrong name costs as long as a wrong password.
_DUMMY_HASH = _HASHER.hash("imaging-lake: no such account")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


@dataclass(frozen=True)
class User:
    """A portal account as the lake records it (never the password).

    Parameters
    ----------
    name : str
        Account name.
    role : Role
        What the account may do.
    cohorts : tuple of str
        The cohorts it is limited to; empty for the whole lake (a student: every
        teaching set).
    created_at, password_changed_at : datetime
        UTC times.
    """

    name: str
    role: Role
    cohorts: tuple[str, ...]
    created_at: dt.datetime
    password_changed_at: dt.datetime

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready fields (what ``lake users list --format json`` prints)."""
        return {
            "name": self.name,
            "role": self.role.value,
            "scopes": list(self.cohorts),
            "created": self.created_at.isoformat(),
            "password_changed": self.password_changed_at.isoformat(),
        }


def _check_name(name: str) -> str:
    clean = name.strip()
    if not _NAME.match(clean):
        raise AccessError(
            f"invalid account name {name!r}: use 1-64 lower-case letters, digits, '.', '_' or "
            "'-', starting with a letter or digit"
        )
    return clean


def _check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ConfigError(
            f"the password is too short: use at least {MIN_PASSWORD_LENGTH} characters "
            "(a passphrase of several words is easiest to remember)"
        )
    if len(password) > 1024:
        raise ConfigError("the password is too long: use at most 1024 characters")


def _rows(lake: Lake) -> list[dict[str, Any]]:
    if not lake.tables.exists(USERS.name):
        return []
    return list(arrow_dataset(lake.tables.open(USERS.name)).to_table().to_pylist())


def _from_row(row: dict[str, Any]) -> User:
    return User(
        name=row["name"],
        role=Role(row["role"]),
        cohorts=tuple(row["cohorts"] or ()),
        created_at=row["created_at"],
        password_changed_at=row["password_changed_at"] or row["created_at"],
    )


def _active(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["name"]: r for r in rows if r["removed_at"] is None}


def _check_scope(lake: Lake, role: Role, cohorts: Sequence[str]) -> tuple[str, ...]:
    from lake.access._teaching import teaching_sets
    from lake.export import load_cohort

    names = tuple(sorted(set(cohorts)))
    if role is Role.STEWARD and names:
        raise AccessError("a steward sees the whole lake; give cohorts only to researchers "
                          "and students")
    for name in names:
        load_cohort(lake, name)  # raises when it does not exist
    if role is Role.STUDENT:
        outside = sorted(set(names) - set(teaching_sets(lake)))
        if outside:
            raise AccessError(
                f"cohort(s) {', '.join(outside)} are not teaching sets; a student may be given "
                "only teaching sets (make one with lake.access.mark_teaching_set())",
                functions=("lake.access.mark_teaching_set",)
            )
    return names


def add_user(
    lake: Lake,
    name: str,
    role: Role | str,
    password: str,
    *,
    cohorts: Sequence[str] = (),
) -> User:
    """Add a portal account.

    Parameters
    ----------
    lake : Lake
        An open lake.
    name : str
        1-64 lower-case letters, digits, ``.``, ``_``, ``-``.
    role : Role or str
        ``steward``, ``researcher`` or ``student``.
    password : str
        At least :data:`MIN_PASSWORD_LENGTH` characters; stored only as an Argon2id hash.
    cohorts : sequence of str
        Limit a researcher or student to these saved cohorts (a student: teaching sets).

    Raises
    ------
    AccessError
        If the name is invalid or taken, or the scope is not allowed for the role.
    ConfigError
        If the password is too short.
    """
    clean = _check_name(name)
    the_role = Role(role)
    _check_password(password)
    names = _check_scope(lake, the_role, cohorts)
    if clean in _active(_rows(lake)):
        raise AccessError(f"an account named {clean!r} exists already "
                          "(lake.access.list_users())", functions=("lake.access.list_users",))
    now = _now()
    row = {
        "name": clean, "role": the_role.value, "cohorts": list(names),
        "password_hash": _HASHER.hash(password), "created_at": now,
        "password_changed_at": now, "removed_at": None,
    }
    lake.tables.create(USERS)
    lake.tables.append(USERS, [row])
    return _from_row(row)


def list_users(lake: Lake) -> list[User]:
    """The active accounts, by name."""
    return sorted((_from_row(r) for r in _active(_rows(lake)).values()), key=lambda u: u.name)


def _update(lake: Lake, name: str, values: dict[str, Any], what: str) -> None:
    for attempt in range(_RETRIES):
        try:
            lake.tables.open(USERS.name).update(
                predicate=f"name = '{name}' AND removed_at IS NULL", new_values=values
            )
            return
        except CommitFailedError:
            time.sleep(0.05 * (attempt + 1))
    raise AccessError(f"could not {what} {name!r} (concurrent writers); retry")


def _existing(lake: Lake, name: str) -> str:
    clean = _check_name(name)
    if clean not in _active(_rows(lake)):
        raise AccessError(f"no account named {name!r}; lake.access.list_users() shows them",
                          functions=("lake.access.list_users",))
    return clean


def remove_user(lake: Lake, name: str) -> None:
    """Remove an account; its sessions end on their next request.

    Raises
    ------
    AccessError
        If there is no such account.
    """
    clean = _existing(lake, name)
    _update(lake, clean, {"removed_at": _now()}, "remove")


def set_password(lake: Lake, name: str, password: str) -> None:
    """Give an account a new password; sessions signed in before it end.

    Raises
    ------
    AccessError
        If there is no such account.
    ConfigError
        If the password is too short.
    """
    clean = _existing(lake, name)
    _check_password(password)
    _update(lake, clean, {"password_hash": _HASHER.hash(password),
                          "password_changed_at": dt.datetime.now(dt.UTC)},
            "set the password of")


class UserBook:
    """Verifies passwords and looks accounts up for a long-running server.

    Parameters
    ----------
    lake : Lake
        An open lake.
    """

    def __init__(self, lake: Lake) -> None:
        self._lake = lake
        self._lock = threading.Lock()
        lake.tables.create(USERS)
        self._delta = lake.tables.open(USERS.name)
        self._version = -1
        self._by_name: dict[str, tuple[str, User]] = {}

    def _refresh(self) -> None:
        self._delta.update_incremental()
        version = int(self._delta.version())
        if version == self._version:
            return
        rows = arrow_dataset(self._delta).to_table().to_pylist()
        self._by_name = {n: (r["password_hash"], _from_row(r)) for n, r in _active(rows).items()}
        self._version = version

    def get(self, name: str) -> User | None:
        """The active account ``name``, or None."""
        with self._lock:
            self._refresh()
            entry = self._by_name.get(name)
        return entry[1] if entry else None

    def verify(self, name: str, password: str) -> User:
        """The account whose name and password these are.

        Takes as long for an unknown name as for a wrong password (an Argon2
        verification either way).

        Raises
        ------
        AuthenticationError
            If the name is unknown or the password wrong (one message for both).
        """
        with self._lock:
            self._refresh()
            entry = self._by_name.get(name.strip()) if len(name) <= 64 else None
        stored, user = entry if entry else (_DUMMY_HASH, None)
        try:
            _HASHER.verify(stored, password[:1024])
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            user = None
        if user is None:
            raise AuthenticationError("wrong account name or password")
        return user
