"""Rendering portal pages: Jinja2 with autoescape, CSRF tokens, sortable paginated tables.

Every value reaches a page through a Jinja2 template with autoescaping on, so text
from the catalog (a SeriesDescription holding ``<script>``) is shown as text. Pages
load only the portal's own stylesheet and script (``/portal/static``): the
Content-Security-Policy forbids inline scripts and styles.
"""

from __future__ import annotations

import hmac
import math
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from jinja2 import Environment, PackageLoader, StrictUndefined
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from lake._errors import ForbiddenError
from lake.access import ROLE_PERMISSIONS, Grant, Permission, Principal, scope_words
from lake.web._guard import SESSION_COOKIE

if TYPE_CHECKING:
    from lake.web.portal._portal import Portal

__all__ = [
    "CSRF_COOKIE",
    "Column",
    "CsrfError",
    "TableView",
    "checked_form",
    "environment",
    "page",
    "table_view",
]

CSRF_COOKIE = "lake_csrf"
PAGE_SIZE = 25


class CsrfError(ForbiddenError):
    """A form came without this session's CSRF token (HTTP 403)."""


def environment() -> Environment:
    """The portal's Jinja2 environment (autoescape on for every template)."""
    env = Environment(
        loader=PackageLoader("lake.web.portal", "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["bytes"] = _human_bytes
    env.filters["when"] = _when
    env.filters["scope"] = lambda who: scope_words(who.role, who.cohorts)
    return env


def _human_bytes(value: Any) -> str:
    number = float(value or 0)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if number < 1000 or unit == "TB":
            return f"{number:.0f} {unit}" if unit == "B" else f"{number:.1f} {unit}"
        number /= 1000
    return f"{number:.1f} TB"


def _when(value: Any) -> str:
    if value is None:
        return "-"
    text = value.isoformat(sep=" ", timespec="seconds") if hasattr(value, "isoformat") else str(value)
    return str(text).replace("+00:00", " UTC")


# --- CSRF ----------------------------------------------------------------------------


def _portal(request: Request) -> Portal:
    portal: Portal = request.app.state.portal
    return portal


def csrf_token(request: Request, grant: Grant) -> tuple[str, str | None]:
    """The CSRF token for this request's forms, and a new cookie value to set (if any).

    A live session has its own token (the synchronizer pattern); a visitor without one
    (the sign-in form, a share link) gets a random double-submit cookie.
    """
    session = request.cookies.get(SESSION_COOKIE)
    token = _portal(request).access.sessions.csrf_of(session) if session else None
    if token:
        return token, None
    cookie = request.cookies.get(CSRF_COOKIE)
    if cookie and 20 <= len(cookie) <= 100:
        return cookie, None
    fresh = secrets.token_urlsafe(32)
    return fresh, fresh


async def checked_form(request: Request, grant: Grant) -> FormData:
    """The request's form, once its CSRF token is checked.

    Raises
    ------
    CsrfError
        If the token is missing or is not this session's (or this browser's cookie's).
    """
    form = await request.form(max_files=0, max_fields=64, max_part_size=256 * 1024)
    sent = form.get("csrf")
    token = sent if isinstance(sent, str) else ""
    session = request.cookies.get(SESSION_COOKIE)
    sessions = _portal(request).access.sessions
    if session and sessions.csrf_of(session) is not None:
        ok = bool(token) and sessions.check_csrf(session, token)
    else:
        cookie = request.cookies.get(CSRF_COOKIE) or ""
        ok = bool(token) and bool(cookie) and hmac.compare_digest(cookie.encode(), token.encode())
    if not ok:
        raise CsrfError("the form is out of date or did not come from this site: "
                        "reload the page and send it again")
    return form


# --- pages ---------------------------------------------------------------------------


@dataclass(frozen=True)
class NavItem:
    href: str
    label: str
    key: str


def navigation(principal: Principal | None) -> list[NavItem]:
    """The menu for ``principal``: only what its role (and credential kind) may open."""
    if principal is None:
        return []
    allowed = ROLE_PERMISSIONS[principal.role]
    items = [NavItem("/portal/teaching", "Teaching sets", "teaching")]
    if principal.kind == "share":
        return [NavItem("/portal/", "Shared with you", "home")]
    if Permission.QUERY in allowed:
        items += [NavItem("/portal/cohorts", "Cohorts", "cohorts"),
                  NavItem("/portal/console", "SQL console", "console"),
                  NavItem("/portal/exports", "Exports", "exports")]
    if Permission.MANAGE in allowed:
        items.append(NavItem("/portal/steward", "Steward", "steward"))
    return items


def page(
    request: Request,
    grant: Grant,
    template: str,
    *,
    title: str,
    section: str = "",
    status: int = 200,
    **context: Any,
) -> Response:
    """Render ``template`` as a full page for ``grant``'s principal."""
    portal = _portal(request)
    token, new_cookie = csrf_token(request, grant)
    principal = grant.principal
    html = portal.templates.get_template(template).render(
        title=title,
        section=section,
        principal=principal,
        nav=navigation(principal),
        csrf=token,
        request_path=request.url.path,
        **context,
    )
    response = HTMLResponse(html, status_code=status)
    if new_cookie:
        response.set_cookie(CSRF_COOKIE, new_cookie, path="/portal", httponly=True,
                            samesite="strict", secure=request.url.scheme == "https")
    return response


# --- tables --------------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    """A table column: its key in the rows, its heading, whether it sorts as a number."""

    key: str
    label: str
    sortable: bool = True


@dataclass(frozen=True)
class TableView:
    """One page of a sorted table, with the links to sort and page it."""

    columns: tuple[Column, ...]
    rows: list[dict[str, Any]]
    sort: str
    descending: bool
    page: int
    pages: int
    total: int
    prefix: str
    params: tuple[tuple[str, str], ...]

    def link(self, **changes: Any) -> str:
        """The query string of this table with ``changes`` (sort, dir, page)."""
        values = dict(self.params)
        for name, value in changes.items():
            values[f"{self.prefix}{name}"] = str(value)
        return "?" + urlencode(values)

    def sort_link(self, key: str) -> str:
        descending = not self.descending if key == self.sort else False
        return self.link(sort=key, dir="desc" if descending else "asc", page=1)

    def aria_sort(self, key: str) -> str:
        if key != self.sort:
            return "none"
        return "descending" if self.descending else "ascending"


def _sort_key(value: Any) -> tuple[int, Any]:
    if value is None:
        return (2, "")
    if isinstance(value, bool | int | float):
        return (0, value)
    if isinstance(value, list | tuple):
        return (1, ", ".join(str(v) for v in value))
    return (1, str(value).lower() if isinstance(value, str) else value)


def table_view(
    request: Request,
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[Column],
    *,
    default_sort: str,
    descending: bool = False,
    prefix: str = "",
    page_size: int = PAGE_SIZE,
    key: Callable[[Any], Any] = _sort_key,
) -> TableView:
    """Sort ``rows`` by the request's ``sort``/``dir`` and cut out its ``page``."""
    query = request.query_params
    keys = {c.key for c in columns if c.sortable}
    sort = query.get(f"{prefix}sort", default_sort)
    if sort not in keys:
        sort = default_sort
    desc = query.get(f"{prefix}dir", "desc" if descending else "asc") == "desc"
    ordered = sorted(rows, key=lambda r: key(r.get(sort)), reverse=desc)
    pages = max(1, math.ceil(len(ordered) / page_size))
    try:
        number = min(max(1, int(query.get(f"{prefix}page", "1"))), pages)
    except ValueError:
        number = 1
    chunk = [dict(r) for r in ordered[(number - 1) * page_size: number * page_size]]
    params = tuple((k, v) for k, v in query.multi_items() if k != "token")
    return TableView(tuple(columns), chunk, sort, desc, number, pages, len(ordered), prefix,
                     params)


def notebook(code: str) -> str:
    """Python for a notebook, as shown in a page's 'in a notebook' box."""
    return code.strip() + "\n"


def query_string(**values: Any) -> str:
    """``?a=1&b=2`` for the non-empty values."""
    return "?" + urlencode({k: v for k, v in values.items() if v not in (None, "")})
