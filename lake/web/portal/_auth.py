"""Signing in and out, share links, and the start page of each kind of user."""

from __future__ import annotations

import datetime as dt
import re
from typing import TYPE_CHECKING

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from lake._errors import AuthenticationError
from lake.access import (
    ROLE_PERMISSIONS,
    AuditEvent,
    Credentials,
    Grant,
    Permission,
    TooManyAttemptsError,
    event_for,
)
from lake.web._guard import SESSION_COOKIE, TOKEN_COOKIE
from lake.web.portal._render import CSRF_COOKIE, checked_form, page

if TYPE_CHECKING:
    from lake.web.portal._portal import Portal

__all__ = ["safe_next"]

_NEXT = re.compile(r"^/portal/[A-Za-z0-9._~/-]*$")
_SHARE = re.compile(r"^lake_[0-9a-f]{16}_[A-Za-z0-9_-]{43}$")


def _portal(request: Request) -> Portal:
    portal: Portal = request.app.state.portal
    return portal


def safe_next(value: str | None) -> str:
    """A page of the portal to go to after signing in (never another site)."""
    if value and _NEXT.match(value) and "//" not in value and ".." not in value:
        return value
    return "/portal/"


async def root(request: Request, grant: Grant) -> Response:
    """``/``: the portal."""
    return RedirectResponse("/portal/", status_code=303)


async def home(request: Request, grant: Grant) -> Response:
    """Each kind of user starts where their work is."""
    principal = grant.principal
    if principal is None or principal.kind == "share":
        names = sorted(c.name for c in grant.cohorts or ())
        target = f"/portal/sets/{names[0]}" if len(names) == 1 else "/portal/teaching"
        return RedirectResponse(target, status_code=303)
    allowed = ROLE_PERMISSIONS[principal.role]
    if Permission.MANAGE in allowed:
        return RedirectResponse("/portal/steward", status_code=303)
    if Permission.QUERY in allowed:
        return RedirectResponse("/portal/cohorts", status_code=303)
    return RedirectResponse("/portal/teaching", status_code=303)


async def signin_page(request: Request, grant: Grant) -> Response:
    """The sign-in form."""
    return page(request, grant, "signin.html", title="Sign in", error=None, name="",
                next=safe_next(request.query_params.get("next")))


def _client(request: Request) -> str:
    return request.client.host if request.client is not None else "unknown"


async def signin_submit(request: Request, grant: Grant) -> Response:
    """Check the password (Argon2), open a new session under a fresh identifier."""
    portal = _portal(request)
    form = await checked_form(request, grant)
    name = str(form.get("name") or "").strip().lower()[:64]
    password = str(form.get("password") or "")[:1024]
    target = safe_next(str(form.get("next") or ""))
    client = _client(request)
    known = portal.access.users.get(name) is not None
    actor = name if known else "unknown"
    try:
        portal.throttle.check(name, client)
    except TooManyAttemptsError:
        portal.record(AuditEvent("sign_in_throttled", "session", actor, None, "user",
                                 actor, "refused", "too many failed sign-ins"))
        raise
    try:
        user = await run_in_threadpool(portal.access.users.verify, name, password)
    except AuthenticationError as exc:
        portal.throttle.failed(name, client)
        portal.record(AuditEvent("sign_in_failed", "session", actor, None, "user", actor,
                                 "refused", "wrong name or password"))
        return page(request, grant, "signin.html", title="Sign in", error=str(exc), name=name,
                    next=target, status=401)
    portal.throttle.succeeded(name)
    presented = request.cookies.get(SESSION_COOKIE)
    if presented:  # never promote an identifier the browser brought (session fixation)
        portal.access.sessions.end(presented)
    ident, _ = portal.access.sessions.create(user.name, user.role, user.cohorts)
    portal.record(AuditEvent("sign_in", "session", user.name, user.role.value, "user",
                             user.name, "ok", ""))
    response = RedirectResponse(target, status_code=303)
    secure = request.url.scheme == "https"
    response.set_cookie(SESSION_COOKIE, ident, path="/", httponly=True, samesite="lax",
                        secure=secure)
    response.delete_cookie(TOKEN_COOKIE, path="/")
    response.delete_cookie(CSRF_COOKIE, path="/portal")
    return response


async def signout(request: Request, grant: Grant) -> Response:
    """End the session (or forget the share link) in this browser."""
    portal = _portal(request)
    await checked_form(request, grant)
    session = request.cookies.get(SESSION_COOKIE)
    if session:
        portal.access.sessions.end(session)
    portal.record(event_for(grant.principal, "sign_out"))
    response = RedirectResponse("/portal/signin", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    response.delete_cookie(TOKEN_COOKIE, path="/")
    return response


async def share_entry(request: Request, grant: Grant) -> Response:
    """``/portal/s/TOKEN``: a share link. Its token goes into a read-only cookie."""
    portal = _portal(request)
    text = request.path_params["token"]
    try:
        if not _SHARE.match(text):
            raise AuthenticationError("not a share link")
        shared = await run_in_threadpool(portal.access.authorize, Credentials(bearer=text),
                                         Permission.READ)
        if shared.principal is None or shared.principal.kind != "share":
            raise AuthenticationError("not a share link")
    except AuthenticationError:
        return page(request, grant, "error.html", title="Link not valid", status=401,
                    message="This share link is not valid: it expired, was revoked, or was "
                            "copied incompletely. Ask whoever sent it for a new one.")
    names = sorted(c.name for c in shared.cohorts or ())
    portal.record(event_for(shared.principal, "share_use", resource_kind="cohort",
                            resource=names[0] if names else None, detail="link opened"))
    response = RedirectResponse(f"/portal/sets/{names[0]}" if names else "/portal/",
                                status_code=303)
    session = request.cookies.get(SESSION_COOKIE)
    if session:  # the link is what this browser now sees
        portal.access.sessions.end(session)
        response.delete_cookie(SESSION_COOKIE, path="/")
    expires = shared.principal.expires_at
    age = 30 * 86400
    if expires is not None:
        age = max(0, min(age, int((expires - dt.datetime.now(dt.UTC)).total_seconds())))
    response.set_cookie(TOKEN_COOKIE, text, max_age=age, path="/", httponly=True,
                        samesite="lax", secure=request.url.scheme == "https")
    return response
