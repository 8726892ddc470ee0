"""The web portal for the lake's three kinds of users, served by ``lake serve web`` at /portal.

Students browse and download the teaching sets shared with them and open cases in the
viewer; researchers see their cohorts, make new ones in a read-only SQL console and
export them in the background; stewards review batches and quarantine and manage
accounts, tokens, share links, profiles and the audit log. Server-rendered HTML
(Jinja2, autoescaped) with a little JavaScript from static files; every route passes
the one authorisation function (:meth:`lake.access.Access.authorize`) like DICOMweb's.
See ``docs/portal.md``.
"""

from lake.web.portal._portal import (
    PORTAL,
    PORTAL_CSP,
    AuditRequests,
    Portal,
    is_portal_path,
    portal_error,
)
from lake.web.portal._routes import portal_routes
from lake.web.portal._steward import SHARE_PATH, share_url

__all__ = [
    "PORTAL",
    "PORTAL_CSP",
    "SHARE_PATH",
    "AuditRequests",
    "Portal",
    "is_portal_path",
    "portal_error",
    "portal_routes",
    "share_url",
]
