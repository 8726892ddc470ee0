"""Every route passes the one authorisation function: the guarded route types.

A route is made with :func:`route` (or :func:`mount` for a sub-application such as the
viewer's static files) and declares one :class:`~lake.access.Permission`. Before the
endpoint runs, the request's credentials go to :meth:`lake.access.Access.authorize`;
the endpoint receives the resulting :class:`~lake.access.Grant` and can see nothing
else. :func:`check_guarded` refuses to build an application holding any route that
was not made here, so a new route cannot skip the check.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import HTTPConnection, Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from lake.access import Access, Credentials, Grant, Permission

if TYPE_CHECKING:
    from lake.web._stow import Store

__all__ = [
    "SESSION_COOKIE",
    "TOKEN_COOKIE",
    "Endpoint",
    "check_guarded",
    "credentials_of",
    "mount",
    "permission_of",
    "route",
]

TOKEN_COOKIE = "lake_token"
"""Cookie the viewer's page sets from its ``token`` link parameter (read requests only)."""
SESSION_COOKIE = "lake_session"
"""The portal's session cookie (lake.web.portal)."""

_SAFE_METHODS = frozenset({"GET", "HEAD"})

Endpoint = Callable[[Request, Grant], Awaitable[Response]]


def credentials_of(conn: HTTPConnection) -> Credentials:
    """The credentials a request presents.

    ``Authorization: Bearer TOKEN`` first, then the ``token`` query parameter (viewer
    links), then the portal's session cookie, then, for GET and HEAD only, the viewer's
    cookie (a cookie never authorises a write, so a cross-site form cannot store anything).
    """
    header = conn.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return Credentials(bearer=value.strip())
    query = conn.query_params.get("token")
    if query:
        return Credentials(bearer=query)
    session = conn.cookies.get(SESSION_COOKIE)
    if session:  # a portal sign-in; it never stores (Access.authorize), its forms carry CSRF
        return Credentials(session=session)
    if conn.scope.get("method", "GET") in _SAFE_METHODS:
        cookie = conn.cookies.get(TOKEN_COOKIE)
        if cookie:
            return Credentials(bearer=cookie)
    return Credentials()


async def read_your_writes(conn: HTTPConnection) -> None:
    """Commit what this server's STOW-RS has stored and not yet committed.

    Every route but STOW-RS itself calls it before its endpoint (the one hook), so what a
    STOW-RS response acknowledged is in the catalog any route of the same server reads.
    Nothing pending (the usual case) costs one lock, on the event loop.
    """
    store: Store | None = getattr(conn.app.state, "store", None)
    if store is not None and store.pending:
        await run_in_threadpool(store.catch_up)


async def _authorize(conn: HTTPConnection, permission: Permission) -> Grant:
    access: Access = conn.app.state.access
    return await run_in_threadpool(access.authorize, credentials_of(conn), permission)


def route(
    path: str,
    endpoint: Endpoint,
    permission: Permission,
    *,
    methods: Sequence[str] = ("GET",),
    name: str | None = None,
) -> Route:
    """A route whose endpoint runs only after :meth:`Access.authorize` granted ``permission``.

    Except for STOW-RS (``Permission.STORE``), the endpoint runs after
    :func:`read_your_writes`: it reads a catalog holding every instance stored so far.
    """
    reads = permission is not Permission.STORE

    async def guarded(request: Request) -> Response:
        grant = await _authorize(request, permission)
        request.state.grant = grant  # for the audit of token use (lake.web.portal)
        if reads:
            await read_your_writes(request)
        return await endpoint(request, grant)

    guarded.__name__ = endpoint.__name__
    made = Route(path, guarded, methods=list(methods), name=name or endpoint.__name__)
    made.permission = permission  # type: ignore[attr-defined]
    return made


class _GuardedApp:
    """An ASGI app that authorises every HTTP request before passing it on."""

    def __init__(self, app: ASGIApp, permission: Permission) -> None:
        self.app = app
        self.permission = permission

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await _authorize(HTTPConnection(scope), self.permission)
        await self.app(scope, receive, send)


def mount(path: str, app: ASGIApp, permission: Permission, *, name: str | None = None) -> Mount:
    """A mounted sub-application, every request to it authorised for ``permission``."""
    made = Mount(path, app=_GuardedApp(app, permission), name=name)
    made.permission = permission  # type: ignore[attr-defined]
    return made


def permission_of(item: BaseRoute) -> Permission | None:
    """The permission a route declares (None: not made by :func:`route`/:func:`mount`)."""
    value: Any = getattr(item, "permission", None)
    return value if isinstance(value, Permission) else None


def check_guarded(routes: Sequence[BaseRoute]) -> None:
    """Refuse routes that do not pass the authorisation function.

    Raises
    ------
    TypeError
        If a route was not made by :func:`route` or :func:`mount`.
    """
    for item in routes:
        if permission_of(item) is None:
            raise TypeError(
                f"route {getattr(item, 'path', item)!r} is not guarded: build it with "
                "lake.web._guard.route() or mount() and give it a Permission"
            )
