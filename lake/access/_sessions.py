"""Portal sessions (server-side, in memory) and the sign-in throttle.

A session is made only by a successful sign-in, under a fresh random identifier (256
bits): an identifier a browser presented before signing in is never promoted, so a
planted cookie cannot fix a victim's session. The store keeps only the sha256 of each
identifier. Sessions end after an idle time and an absolute lifetime, when the
account is removed or its password changes, and when the server stops.

The throttle counts failed sign-ins per account name and per client address in a
sliding window; past the limit, sign-ins are refused (even with the right password)
until the window has moved on.
"""

from __future__ import annotations

import collections
import datetime as dt
import hashlib
import hmac
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace

from lake._errors import AuthenticationError
from lake.access._roles import Role

__all__ = ["Session", "SessionStore", "SignInThrottle", "TooManyAttemptsError"]

Clock = Callable[[], dt.datetime]


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "replace")).hexdigest()


class TooManyAttemptsError(AuthenticationError):
    """Too many failed sign-ins for this account or address (HTTP 429).

    Parameters
    ----------
    retry_after : int
        Seconds until a sign-in is accepted again.
    """

    def __init__(self, retry_after: int) -> None:
        super().__init__(
            "too many failed sign-ins: wait a few minutes and try again, or ask a steward"
        )
        self.retry_after = retry_after


@dataclass(frozen=True)
class Session:
    """A signed-in account.

    Parameters
    ----------
    user : str
        The account name.
    role : Role
        Its role when it signed in (checked against the account on every request).
    cohorts : tuple of str
        Its cohort scope.
    csrf : str
        The token every form of this session must send back.
    created_at, seen_at : datetime
        When it signed in and was last used.
    """

    user: str
    role: Role
    cohorts: tuple[str, ...]
    csrf: str
    created_at: dt.datetime
    seen_at: dt.datetime

    def expires_at(self, idle: dt.timedelta, lifetime: dt.timedelta) -> dt.datetime:
        """When it ends if unused."""
        return min(self.seen_at + idle, self.created_at + lifetime)


class SessionStore:
    """Server-side sessions of one web server.

    Parameters
    ----------
    idle : timedelta
        A session unused this long ends.
    lifetime : timedelta
        A session ends this long after sign-in, used or not.
    limit : int
        At most this many sessions; the least recently used go first.
    clock : callable, optional
        The current UTC time (tests move it).
    """

    def __init__(
        self,
        *,
        idle: dt.timedelta = dt.timedelta(hours=1),
        lifetime: dt.timedelta = dt.timedelta(hours=12),
        limit: int = 10_000,
        clock: Clock | None = None,
    ) -> None:
        self.idle = idle
        self.lifetime = lifetime
        self._limit = limit
        self._clock = clock or _utcnow
        self._lock = threading.Lock()
        self._sessions: collections.OrderedDict[str, Session] = collections.OrderedDict()

    def create(self, user: str, role: Role, cohorts: tuple[str, ...]) -> tuple[str, Session]:
        """A new session: its identifier (for the cookie; not kept) and the session."""
        ident = secrets.token_urlsafe(32)
        now = self._clock()
        session = Session(user, role, cohorts, secrets.token_urlsafe(32), now, now)
        with self._lock:
            self._sessions[_digest(ident)] = session
            while len(self._sessions) > self._limit:
                self._sessions.popitem(last=False)
        return ident, session

    def get(self, ident: str) -> Session:
        """The live session ``ident`` names (its last use is now).

        Raises
        ------
        AuthenticationError
            If there is no such session, or it expired.
        """
        key = _digest(ident)
        now = self._clock()
        with self._lock:
            session = self._sessions.get(key)
            if session is not None and now >= session.expires_at(self.idle, self.lifetime):
                del self._sessions[key]
                session = None
            if session is None:
                raise AuthenticationError("the session ended: sign in again")
            session = replace(session, seen_at=now)
            self._sessions[key] = session
            self._sessions.move_to_end(key)
        return session

    def end(self, ident: str) -> None:
        """Sign out (nothing happens for an unknown identifier)."""
        with self._lock:
            self._sessions.pop(_digest(ident), None)

    def end_user(self, user: str) -> int:
        """End every session of ``user``; returns how many ended."""
        with self._lock:
            keys = [k for k, s in self._sessions.items() if s.user == user]
            for key in keys:
                del self._sessions[key]
        return len(keys)

    def csrf_of(self, ident: str) -> str | None:
        """The CSRF token of session ``ident`` (None: no such session)."""
        with self._lock:
            session = self._sessions.get(_digest(ident))
        return session.csrf if session is not None else None

    def check_csrf(self, ident: str, token: str) -> bool:
        """Whether ``token`` is the CSRF token of session ``ident`` (constant time)."""
        with self._lock:
            session = self._sessions.get(_digest(ident))
        return session is not None and hmac.compare_digest(session.csrf.encode(),
                                                           token.encode("utf-8", "replace"))

    def __len__(self) -> int:
        with self._lock:
            return len(self._sessions)


class SignInThrottle:
    """Failed sign-ins per account name and per client address, in a sliding window.

    Parameters
    ----------
    per_name : int
        Failures allowed per account name within ``window``.
    per_client : int
        Failures allowed per client address within ``window``.
    window : timedelta
        How far back failures count.
    clock : callable, optional
        The current UTC time.
    """

    def __init__(
        self,
        *,
        per_name: int = 5,
        per_client: int = 20,
        window: dt.timedelta = dt.timedelta(minutes=15),
        clock: Clock | None = None,
    ) -> None:
        self._limits = {"name": per_name, "client": per_client}
        self._window = window
        self._clock = clock or _utcnow
        self._lock = threading.Lock()
        self._failures: dict[tuple[str, str], collections.deque[dt.datetime]] = {}

    def _keys(self, name: str, client: str) -> list[tuple[str, str]]:
        return [("name", _digest(name.strip().lower())), ("client", client)]

    def _prune(self, key: tuple[str, str], now: dt.datetime) -> collections.deque[dt.datetime]:
        times = self._failures.setdefault(key, collections.deque())
        while times and now - times[0] >= self._window:
            times.popleft()
        return times

    def check(self, name: str, client: str) -> None:
        """Refuse a sign-in attempt while the name or address is over its limit.

        Raises
        ------
        TooManyAttemptsError
            With the seconds to wait.
        """
        now = self._clock()
        with self._lock:
            for key in self._keys(name, client):
                times = self._prune(key, now)
                if len(times) >= self._limits[key[0]]:
                    wait = (times[0] + self._window - now).total_seconds()
                    raise TooManyAttemptsError(max(1, int(wait) + 1))
                if not times:
                    del self._failures[key]

    def failed(self, name: str, client: str) -> None:
        """Count a failed attempt."""
        now = self._clock()
        with self._lock:
            for key in self._keys(name, client):
                self._prune(key, now).append(now)
            if len(self._failures) > 100_000:  # bounded memory under a spray of names
                oldest = sorted(self._failures,
                                key=lambda k: self._failures[k][-1] if self._failures[k] else now)
                for key in oldest[: len(oldest) // 2]:
                    del self._failures[key]

    def succeeded(self, name: str) -> None:
        """Forget the failures of an account name after a successful sign-in."""
        with self._lock:
            self._failures.pop(("name", _digest(name.strip().lower())), None)
