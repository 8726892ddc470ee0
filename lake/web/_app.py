"""The ASGI application: DICOMweb below ``/dicomweb``, the viewer below ``/viewer``.

Every route is guarded (:mod:`lake.web._guard`). Library errors become HTTP statuses
here and only here; error bodies are fixed texts from the library (never a value from
a request or an instance). Every response carries security headers; the access log
records method, path, status and time, never query strings (they may hold a token).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lake._errors import (
    AuthenticationError,
    BlobNotFoundError,
    ConfigError,
    ForbiddenError,
    IntegrityError,
    LakeError,
    QueryError,
)
from lake.access import Access, Grant, Permission
from lake.web._config import WebConfig
from lake.web._documents import DocumentCache
from lake.web._errors import (
    NotAcceptableError,
    NotFoundError,
    TooLargeError,
    UnavailableError,
    UnsupportedMediaError,
)
from lake.web._guard import check_guarded, mount, route
from lake.web._json import base_url, json_response
from lake.web._multipart import MalformedMultipartError
from lake.web._qido import qido_routes
from lake.web._stow import make_store, stow_routes
from lake.web._viewer import SpaFiles, viewer_entry, viewer_missing, viewer_ready
from lake.web._views import Views
from lake.web._wado import wado_routes
from lake.web.portal import (
    PORTAL_CSP,
    AuditRequests,
    Portal,
    is_portal_path,
    portal_error,
    portal_routes,
)

if TYPE_CHECKING:
    from lake._lake import Lake
    from lake.vault import Secret

__all__ = ["ACCESS_LOG", "PREFIX", "create_app"]

PREFIX = "/dicomweb"
ACCESS_LOG = logging.getLogger("lake.web.access")

_API_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
_VIEWER_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline' 'unsafe-eval' 'wasm-unsafe-eval' blob:; "
    "worker-src 'self' blob:; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
    "font-src 'self' data:; connect-src 'self' data: blob:; frame-ancestors 'none'; "
    "base-uri 'self'; form-action 'self'"
)


_STATUS: tuple[tuple[type[Exception], int], ...] = (
    (AuthenticationError, 401),
    (ForbiddenError, 403),
    (NotFoundError, 404),
    (NotAcceptableError, 406),
    (TooLargeError, 413),
    (UnsupportedMediaError, 415),
    (QueryError, 400),
    (MalformedMultipartError, 400),
    (ConfigError, 400),
    (UnavailableError, 503),
    (BlobNotFoundError, 500),
    (IntegrityError, 500),
)


def status_of(exc: Exception) -> int:
    """The HTTP status for a library error."""
    for kind, status in _STATUS:
        if isinstance(exc, kind):
            return status
    return 500


async def _lake_error(request: Request, exc: Exception) -> Response:
    status = status_of(exc)
    if is_portal_path(request.url.path):  # the portal's pages answer with HTML
        return await portal_error(request, exc, status)
    message = str(exc) if status < 500 or isinstance(exc, LakeError) else "internal error"
    if status == 404:
        message = "not found"  # the same words whether absent or outside the caller's scope
    response = json_response(request, {"error": message}, status=status)
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="imaging-lake"'
    return response


class SecurityHeaders:
    """Adds CSP, nosniff, no-referrer and no-store to every response; logs each request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        path: str = scope.get("path", "")
        csp = _VIEWER_CSP if path.startswith("/viewer") else _API_CSP
        if is_portal_path(path):
            csp = PORTAL_CSP
        status = 0

        async def send_with_headers(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = [(k, v) for k, v in message.get("headers", [])
                           if k.lower() not in _OURS]
                headers += [
                    (b"content-security-policy", csp.encode()),
                    (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"no-referrer"),
                    (b"x-frame-options", b"DENY"),
                    (b"cross-origin-opener-policy", b"same-origin"),
                ]
                if not path.startswith("/viewer") or path.endswith((".html", "/")):
                    headers.append((b"cache-control", b"no-store"))
                if scope.get("scheme") == "https":
                    headers.append((b"strict-transport-security", b"max-age=31536000"))
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        except ClientDisconnect:  # the client left (or stalled and was closed): nobody to answer
            status = status or 499
        except Exception as exc:  # noqa: BLE001 - no traceback (it could quote a value) in logs
            logging.getLogger("lake.web").error(
                "internal error %s on %s %s", type(exc).__name__, scope.get("method"),
                getattr(scope.get("route"), "path", None) or "(no route)",
            )
            if status == 0:
                await send_with_headers({
                    "type": "http.response.start", "status": 500,
                    "headers": [(b"content-type", b"application/json")],
                })
                await send({"type": "http.response.body", "body": b'{"error":"internal error"}'})
        finally:
            # The route's template, never the path: a path may hold a sender's own (identified)
            # UIDs, as in STOW-RS /studies/{study}, and query strings may hold tokens.
            matched = getattr(scope.get("route"), "path", None) or "(no route)"
            ACCESS_LOG.info(
                "%s %s %d %.1f ms", scope.get("method"), matched, status,
                (time.perf_counter() - started) * 1000,
            )


class SlashRedirect:
    """Starlette's trailing-slash redirect (``/studies/`` -> ``/studies``, ``/portal`` ->
    ``/portal/``) with a relative ``Location`` (the path below ``public_url``): Starlette builds
    an absolute one from the request's Host header, which a client (or a proxy) chooses."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        if scope["type"] == "http" and path != "/":
            routes = scope["app"].router.routes
            if not any(r.matches(scope)[0] is not Match.NONE for r in routes):
                other = dict(scope, path=path.rstrip("/") if path.endswith("/") else path + "/")
                if any(r.matches(other)[0] is not Match.NONE for r in routes):
                    prefix = urlsplit(base_url(Request(scope))).path
                    query = scope.get("query_string", b"").decode("latin-1")
                    location = urlunsplit(("", "", prefix + "/" + other["path"].lstrip("/"),
                                           query, ""))
                    await RedirectResponse(location, status_code=307)(scope, receive, send)
                    return
        await self.app(scope, receive, send)


_OURS = frozenset({
    b"content-security-policy", b"x-content-type-options", b"referrer-policy",
    b"x-frame-options", b"cross-origin-opener-policy", b"strict-transport-security",
})


async def _ping(request: Request, grant: Grant) -> Response:
    """Liveness: answers without touching the catalog."""
    return json_response(request, {"status": "ok"})


def build_routes(config: WebConfig, viewer_dir: Path | None = None) -> list[BaseRoute]:
    """Every route of the application (each guarded)."""
    routes: list[BaseRoute] = [route("/healthz", _ping, Permission.PUBLIC)]
    routes += qido_routes(PREFIX)
    routes += wado_routes(PREFIX)
    routes += stow_routes(PREFIX)
    routes.append(route("/viewer", viewer_entry, Permission.READ))
    files: ASGIApp = (
        SpaFiles(directory=viewer_dir, html=True, check_dir=False) if viewer_ready(viewer_dir) else
        viewer_missing
    )
    routes.append(mount("/viewer", files, Permission.PUBLIC, name="viewer"))
    return routes


def default_viewer_dir(lake: Lake, config: WebConfig) -> Path | None:
    """The configured viewer folder, else ``<lake>/viewer`` for a local lake."""
    if config.viewer_dir is not None:
        return config.viewer_dir
    return Path(lake.location.path) / "viewer" if lake.location.is_local else None


def create_app(
    lake: Lake,
    config: WebConfig | None = None,
    *,
    secret: Secret | None = None,
    extra_routes: Sequence[BaseRoute] = (),
) -> Starlette:
    """The web application for ``lake``.

    Parameters
    ----------
    lake : Lake
        An open lake.
    config : WebConfig, optional
        Settings (defaults: loopback, no anonymous access).
    secret : Secret, optional
        The lake's secret; needed to store (STOW-RS). Without it the store routes
        answer 503.
    extra_routes : sequence of BaseRoute
        More routes (the portal's), each made with :func:`lake.web._guard.route`.

    Raises
    ------
    TypeError
        If a route is not guarded.
    """
    settings = config or WebConfig()
    routes = (build_routes(settings, default_viewer_dir(lake, settings)) + portal_routes()
              + list(extra_routes))
    check_guarded(routes)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        app.state.store = await run_in_threadpool(make_store, lake, secret, settings)
        try:
            yield
        finally:
            if app.state.store is not None:
                await run_in_threadpool(app.state.store.close)
            await run_in_threadpool(app.state.portal.close)
            app.state.views.close()

    app = Starlette(
        routes=routes,
        exception_handlers={LakeError: _lake_error},
        lifespan=lifespan,
    )
    app.router.redirect_slashes = False  # SlashRedirect does it without the Host header
    app.state.lake = lake
    app.state.config = settings
    app.state.base_url = settings.public_url  # WebServer sets its bound address otherwise
    app.state.documents = DocumentCache()
    app.state.store = None  # made at start-up (it recovers the spool and starts committing)
    app.state.access = Access(lake, allow_anonymous=settings.allow_anonymous)
    app.state.views = Views(lake)
    app.state.portal = Portal(lake, app.state.access, app.state.views, secret=secret)
    app.add_middleware(AuditRequests)
    app.add_middleware(SlashRedirect)
    app.add_middleware(SecurityHeaders)
    return app
