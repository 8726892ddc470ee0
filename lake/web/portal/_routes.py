"""Every route of the portal, each built with :func:`lake.web.route` and one permission."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from starlette.routing import BaseRoute
from starlette.staticfiles import StaticFiles

from lake.access import Permission
from lake.web._guard import mount, route
from lake.web.portal import _auth, _research, _sets, _steward

__all__ = ["portal_routes"]

_GET = ("GET",)
_POST = ("POST",)


def portal_routes() -> list[BaseRoute]:
    """The portal's routes (mounted by :func:`lake.web.create_app`)."""
    P, R, Q, E, M = (Permission.PUBLIC, Permission.READ, Permission.QUERY, Permission.EXPORT,
                     Permission.MANAGE)
    static = Path(str(resources.files("lake.web.portal").joinpath("static")))
    table: list[tuple[str, object, Permission, tuple[str, ...]]] = [
        ("/", _auth.root, P, _GET),
        ("/portal/", _auth.home, R, _GET),
        ("/portal/signin", _auth.signin_page, P, _GET),
        ("/portal/signin", _auth.signin_submit, P, _POST),
        ("/portal/signout", _auth.signout, P, _POST),
        ("/portal/s/{token}", _auth.share_entry, P, _GET),
        ("/portal/teaching", _sets.sets_page, R, _GET),
        ("/portal/sets/{name}", _sets.set_page, R, _GET),
        ("/portal/sets/{name}/download", _sets.set_download, R, _GET),
        ("/portal/sets/{name}/cases/{case:int}/download", _sets.case_download, R, _GET),
        ("/portal/jobs/{job}", _research.job_page, R, _GET),
        ("/portal/jobs/{job}/status", _research.job_status, R, _GET),
        ("/portal/jobs/{job}/download", _research.job_download, R, _GET),
        ("/portal/cohorts", _research.cohorts_page, Q, _GET),
        ("/portal/cohorts", _research.cohort_create, Q, _POST),
        ("/portal/cohorts/{name}", _research.cohort_page, Q, _GET),
        ("/portal/cohorts/{name}/exports", _research.export_start, E, _POST),
        ("/portal/console", _research.console_page, Q, _GET),
        ("/portal/console", _research.console_run, Q, _POST),
        ("/portal/exports", _research.exports_page, E, _GET),
        ("/portal/steward", _steward.overview_page, M, _GET),
        ("/portal/steward/batches", _steward.batches_page, M, _GET),
        ("/portal/steward/quarantine", _steward.quarantine_page, M, _GET),
        ("/portal/steward/quarantine/{ident}", _steward.quarantine_review, M, _POST),
        ("/portal/steward/users", _steward.users_page, M, _GET),
        ("/portal/steward/users", _steward.user_add, M, _POST),
        ("/portal/steward/users/{name}/remove", _steward.user_remove, M, _POST),
        ("/portal/steward/users/{name}/password", _steward.user_password, M, _POST),
        ("/portal/steward/tokens", _steward.tokens_page, M, _GET),
        ("/portal/steward/tokens", _steward.token_create, M, _POST),
        ("/portal/steward/tokens/{token_id}/revoke", _steward.token_revoke, M, _POST),
        ("/portal/steward/shares", _steward.shares_page, M, _GET),
        ("/portal/steward/shares", _steward.share_create, M, _POST),
        ("/portal/steward/shares/{share_id}/revoke", _steward.share_revoke, M, _POST),
        ("/portal/steward/profiles", _steward.profiles_page, M, _GET),
        ("/portal/steward/profiles/diff", _steward.profile_diff_page, M, _GET),
        ("/portal/steward/profiles/{name}", _steward.profile_page, M, _GET),
        ("/portal/steward/audit", _steward.audit_page, M, _GET),
    ]
    routes: list[BaseRoute] = []
    for path, endpoint, permission, methods in table:
        name = f"portal_{endpoint.__name__}"  # type: ignore[attr-defined]
        routes.append(route(path, endpoint, permission, methods=methods, name=name))  # type: ignore[arg-type]
    routes.append(mount("/portal/static", StaticFiles(directory=static), Permission.PUBLIC,
                        name="portal_static"))
    return routes
