"""The portal's state in a running server, its error pages and the audit of token use."""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lake._errors import AccessError, ExportError, LakeError, ProfileError
from lake.access import (
    Access,
    AuditEvent,
    AuditLog,
    Grant,
    Permission,
    SignInThrottle,
    TooManyAttemptsError,
    event_for,
)
from lake.web._guard import SESSION_COOKIE
from lake.web.portal._jobs import Job, JobRunner
from lake.web.portal._render import environment, page

if TYPE_CHECKING:
    from jinja2 import Environment

    from lake._lake import Lake
    from lake.vault import Secret
    from lake.web._views import Views

__all__ = ["PORTAL", "PORTAL_CSP", "AuditRequests", "Portal", "is_portal_path", "portal_error"]

PORTAL = "/portal"
PORTAL_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
_LOG = logging.getLogger("lake.web")
_UID_PARAMS = ("study", "series", "instance")


def is_portal_path(path: str) -> bool:
    """Whether ``path`` is one of the portal's pages (HTML errors, the portal's CSP)."""
    return path == "/" or path == PORTAL or path.startswith(PORTAL + "/")


class Portal:
    """What the portal's pages share in one server.

    Parameters
    ----------
    lake : Lake
        An open lake.
    access : Access
        The server's authorisation function (and its sessions).
    views : Views
        The catalog views by scope (shared with DICOMweb).
    secret : Secret, optional
        The lake's secret (releasing quarantined files needs it).
    workers : int
        Export jobs running at once.
    """

    def __init__(self, lake: Lake, access: Access, views: Views, *,
                 secret: Secret | None = None, workers: int = 2) -> None:
        self.lake = lake
        self.secret = secret
        # Reads need no lock (each thread queries the Lake's catalogs on a connection of its
        # own). This one keeps the portal's writes apart from each other and from saving a
        # cohort: purge and release change the lake and end in Lake.refresh(), which closes
        # every catalog, so a cohort being saved (several queries on them) would fail midway.
        self.catalog_lock = threading.Lock()
        self.access = access
        self.views = views
        self.templates: Environment = environment()
        self.throttle = SignInThrottle()
        self.audit = AuditLog(lake)
        if lake.location.is_local:
            self.folder = Path(lake.location.path) / "portal"
            self._temporary = False
        else:
            self.folder = Path(tempfile.mkdtemp(prefix="lake-portal-"))
            self._temporary = True
        self.jobs = JobRunner(self.folder / "jobs", workers=workers, on_finish=self._finished)

    def record(self, event: AuditEvent) -> None:
        """Add ``event`` to the audit log."""
        self.audit.record(event)

    def _finished(self, job: Job) -> None:
        actor = job.owner.split(":", 1) if job.owner else ["system", "portal"]
        action = "export_finished" if job.state == "done" else "export_failed"
        self.record(AuditEvent(action, actor[0], actor[-1], None, "export", job.job_id,
                               "ok" if job.state == "done" else "failed",
                               f"{job.kind} of {job.cohort}"))

    def close(self) -> None:
        """Stop the jobs and write the audit log."""
        self.jobs.close()
        self.audit.close()
        if self._temporary:
            shutil.rmtree(self.folder, ignore_errors=True)


async def portal_error(request: Request, exc: Exception, status: int) -> Response:
    """An error page (a sign-in redirect for 401) instead of the API's JSON."""
    if isinstance(exc, TooManyAttemptsError):
        status = 429
    elif status == 500 and isinstance(exc, AccessError | ExportError | ProfileError):
        status = 400  # a form naming an account, cohort or profile that is not there
    if status == 401 and request.method in ("GET", "HEAD"):
        target = request.url.path
        response: Response = RedirectResponse(
            "/portal/signin" + (f"?next={target}" if target.startswith(PORTAL + "/") else ""),
            status_code=303,
        )
        if request.cookies.get(SESSION_COOKIE):
            response.delete_cookie(SESSION_COOKIE, path="/")
        return response
    grant = Grant(None, Permission.PUBLIC, None)
    if status == 404:
        message = "There is nothing here, or it is not yours to see."
    elif isinstance(exc, LakeError) and status < 500:
        message = str(exc)
    else:
        message = "Something went wrong on the server. Try again, or tell a steward."
    titles = {400: "Not understood", 401: "Sign in needed", 403: "Not allowed",
              404: "Not found", 429: "Too many attempts"}
    response = page(request, grant, "error.html", title=titles.get(status, "Error"),
                    status=status, message=message)
    if isinstance(exc, TooManyAttemptsError):
        response.headers["Retry-After"] = str(exc.retry_after)
    return response


class AuditRequests:
    """Writes a ``token_use`` or ``share_use`` audit row for every request made with a token.

    The resource is the study, series or instance of the route when a read succeeded
    (a UID the lake holds, so pseudonymous); otherwise only the route template and
    status are kept (a path may hold a UID the lake does not hold).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 0

        async def watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            self._record(scope, status)

    @staticmethod
    def _record(scope: Scope, status: int) -> None:
        grant = (scope.get("state") or {}).get("grant")
        portal: Portal | None = getattr(scope["app"].state, "portal", None)
        if not isinstance(grant, Grant) or portal is None or grant.principal is None:
            return
        if grant.principal.kind not in ("token", "share"):
            return
        route = getattr(scope.get("route"), "path", None) or "(no route)"
        params: dict[str, Any] = scope.get("path_params") or {}
        kind, resource = None, None
        # Only a read that succeeded names a UID the lake holds (a STOW-RS path holds the
        # sender's own, identified, study UID).
        if 200 <= status < 300 and scope.get("method") in ("GET", "HEAD"):
            for name in reversed(_UID_PARAMS):
                if isinstance(params.get(name), str):
                    kind, resource = name, params[name]
                    break
        try:
            portal.record(event_for(
                grant.principal, f"{grant.principal.kind}_use", resource_kind=kind,
                resource=resource, outcome="ok" if status < 400 else "refused",
                detail=f"{scope.get('method')} {route} {status}",
            ))
        except LakeError as exc:  # the audit log never breaks a response
            _LOG.error("audit event not recorded (%s)", type(exc).__name__)
