"""The one authorisation function: credentials + permission -> a grant, or an error.

Every web route calls :meth:`Access.authorize` with what the request presented and the
one :class:`Permission` the route declares. The grant says who is asking and what
data they may see: the whole lake, or a set of cohorts, each pinned to the catalog
version it was frozen at and limited to its members.

Ways of presenting credentials are tried in a fixed order inside :meth:`Access.principal`;
the web portal's sessions and share links are added there as further
:class:`Credentials` fields mapped to a :class:`Principal`, and everything downstream
(roles, permissions, scopes) stays the same.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import threading
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

from lake._errors import AuthenticationError, ExportError, ForbiddenError
from lake.access._roles import ROLE_PERMISSIONS, Permission, Role
from lake.access._sessions import SessionStore
from lake.access._shares import ShareBook
from lake.access._teaching import is_teaching_material, teaching_sets
from lake.access._tokens import TokenBook
from lake.access._users import UserBook
from lake.catalog import COHORTS, TEACHING_SETS

if TYPE_CHECKING:
    from deltalake import DeltaTable

    from lake._lake import Lake

__all__ = ["Access", "CohortView", "Credentials", "Grant", "Principal"]


@dataclass(frozen=True)
class Credentials:
    """What a request presented (the web layer fills this in; nothing else reads requests).

    Parameters
    ----------
    bearer : str, optional
        A token (``Authorization: Bearer``, the ``token`` query parameter or the
        viewer's cookie); a share link's token too.
    session : str, optional
        A portal session identifier (its cookie), when no token was presented.
    """

    bearer: str | None = None
    session: str | None = None


@dataclass(frozen=True)
class Principal:
    """Who is asking.

    Parameters
    ----------
    kind : str
        ``token``, ``share`` (a share link's token), ``session`` (a portal account) or
        ``anonymous``.
    id : str
        The token id (never the token), the account name, or ``anonymous``.
    role : Role
        Its role.
    cohorts : tuple of str
        The cohorts it is limited to; empty for the whole lake (a student: every
        teaching set).
    expires_at : datetime, optional
        When the credential stops working.
    """

    kind: str
    id: str
    role: Role
    cohorts: tuple[str, ...] = ()
    expires_at: dt.datetime | None = None


@dataclass(frozen=True)
class CohortView:
    """One cohort a grant may see: its catalog version and member instances."""

    name: str
    catalog_version: int
    members: frozenset[str]

    @cached_property
    def fingerprint(self) -> str:
        """sha256 of the sorted member UIDs: what defines the scope, whatever its name.

        A cohort redefined (``replace``) at the same catalog version keeps its name and
        version but not its members, so anything cached per scope is keyed by this.
        """
        digest = hashlib.sha256()
        for uid in sorted(self.members):
            digest.update(uid.encode("ascii", "replace") + b"\n")
        return digest.hexdigest()


@dataclass(frozen=True)
class Grant:
    """The result of :meth:`Access.authorize`.

    Parameters
    ----------
    principal : Principal, optional
        Who asked (None for a public route asked without credentials).
    permission : Permission
        What was granted.
    cohorts : tuple of CohortView, optional
        None: the whole, current catalog. Otherwise only these members, each read at its
        cohort's catalog version (an empty tuple sees nothing).
    """

    principal: Principal | None
    permission: Permission
    cohorts: tuple[CohortView, ...] | None

    @property
    def scope_key(self) -> tuple[tuple[str, int, str], ...] | None:
        """A hashable summary of the scope (cache key for scoped catalog views).

        Each cohort is named by its catalog version and the fingerprint of its members, so
        two definitions of one cohort never share a key.
        """
        if self.cohorts is None:
            return None
        return tuple(sorted((c.name, c.catalog_version, c.fingerprint) for c in self.cohorts))


_ANONYMOUS = Principal("anonymous", "anonymous", Role.RESEARCHER)

# What each kind of principal may do at most, whatever its role: a share link only reads
# (and downloads) its cohort; a browser session never stores (STOW-RS needs a token).
_KIND_LIMITS: dict[str, frozenset[Permission]] = {
    "share": frozenset({Permission.PUBLIC, Permission.READ}),
    "session": frozenset(Permission) - {Permission.STORE},
}


class Access:
    """Authentication and authorisation for one lake.

    Parameters
    ----------
    lake : Lake
        An open lake.
    allow_anonymous : bool
        Requests without credentials may read the whole lake (never store). The web
        server allows this only on a loopback address.
    """

    def __init__(self, lake: Lake, *, allow_anonymous: bool = False) -> None:
        self._lake = lake
        self.allow_anonymous = allow_anonymous
        self._tokens = TokenBook(lake)
        # The portal's ways of signing in (lake.web.portal): accounts, their sessions,
        # share links.
        self.users = UserBook(lake)
        self.sessions = SessionStore()
        self._shares = ShareBook(lake)
        self._lock = threading.Lock()
        self._versions: tuple[int, int] = (-1, -1)
        self._views: dict[str, CohortView | None] = {}
        self._teaching: frozenset[str] = frozenset()
        self._deltas: dict[str, DeltaTable] = {}

    def principal(self, credentials: Credentials) -> Principal | None:
        """Who presented ``credentials`` (None: nothing was presented).

        Raises
        ------
        AuthenticationError
            If a credential was presented and is invalid, expired or revoked.
        """
        if credentials.bearer:
            token = self._tokens.verify(credentials.bearer)
            kind = "share" if self._shares.is_share(token.token_id) else "token"
            return Principal(kind, token.token_id, token.role, token.cohorts, token.expires_at)
        if credentials.session:
            return self._session_principal(credentials.session)
        return None

    def _session_principal(self, ident: str) -> Principal:
        """The account a portal session belongs to, as it is now.

        Raises
        ------
        AuthenticationError
            If the session ended, or its account was removed, changed role or scope, or
            had its password changed since the sign-in.
        """
        session = self.sessions.get(ident)
        user = self.users.get(session.user)
        if (user is None or user.role is not session.role or user.cohorts != session.cohorts
                or user.password_changed_at > session.created_at):
            self.sessions.end(ident)
            raise AuthenticationError("the session ended: sign in again")
        expires = session.expires_at(self.sessions.idle, self.sessions.lifetime)
        return Principal("session", user.name, user.role, user.cohorts, expires)

    def authorize(self, credentials: Credentials, permission: Permission) -> Grant:
        """Decide a request: the ONE function every web route passes.

        Parameters
        ----------
        credentials : Credentials
            What the request presented.
        permission : Permission
            What the route needs.

        Returns
        -------
        Grant
            Who is asking and which data they may see.

        Raises
        ------
        AuthenticationError
            No credentials (and the route is not public, and anonymous access is off),
            or invalid, expired or revoked ones: HTTP 401.
        ForbiddenError
            The role lacks the permission: HTTP 403. (Data outside a scope is not an
            error here: it is simply not in the grant's view, so it reads as absent, 404.)
        """
        if permission is Permission.PUBLIC:  # never refused, even with a stale credential
            return Grant(None, permission, None)
        principal = self.principal(credentials)
        if principal is None:
            if self.allow_anonymous and permission is Permission.READ:
                principal = _ANONYMOUS
            else:
                raise AuthenticationError(
                    "credentials needed: send 'Authorization: Bearer TOKEN' "
                    "(a steward makes tokens)"
                )
        if permission not in ROLE_PERMISSIONS[principal.role]:
            raise ForbiddenError(f"a {principal.role.value} may not do this ({permission.value})")
        if permission not in _KIND_LIMITS.get(principal.kind, frozenset(Permission)):
            raise ForbiddenError(f"a {principal.kind} credential may not do this "
                                 f"({permission.value})")
        return Grant(principal, permission, self._scope(principal))

    # -- scopes -----------------------------------------------------------------------

    def _scope(self, principal: Principal) -> tuple[CohortView, ...] | None:
        if principal.role is Role.STEWARD:
            return None
        if principal.role is Role.RESEARCHER and not principal.cohorts:
            return None
        with self._lock:
            self._refresh()
            names = principal.cohorts
            if principal.role is Role.STUDENT:
                names = tuple(n for n in (names or sorted(self._teaching)) if n in self._teaching)
            views = [self._view(name, principal.role is Role.STUDENT) for name in names]
        return tuple(v for v in views if v is not None)

    def _table_version(self, name: str) -> int:
        """The table's newest version (-1 while it does not exist): one log listing."""
        delta = self._deltas.get(name)
        if delta is None:
            tables = self._lake.tables
            if not tables.exists(name):
                return -1
            delta = self._deltas[name] = tables.open(name)
        delta.update_incremental()
        return int(delta.version())

    def _refresh(self) -> None:
        versions = (self._table_version(COHORTS.name), self._table_version(TEACHING_SETS.name))
        if versions != self._versions:
            self._views.clear()
            self._teaching = frozenset(teaching_sets(self._lake))
            self._versions = versions

    def _view(self, name: str, teaching: bool) -> CohortView | None:
        key = f"{int(teaching)}:{name}"
        if key not in self._views:
            from lake.export import load_cohort

            try:
                cohort = load_cohort(self._lake, name)
            except ExportError:  # the cohort was removed: its scope sees nothing
                self._views[key] = None
                return None
            if teaching and not is_teaching_material(cohort):
                self._views[key] = None
            else:
                self._views[key] = CohortView(
                    name, cohort.catalog_version, frozenset(m.sop_uid for m in cohort.members)
                )
        return self._views[key]
