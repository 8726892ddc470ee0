"""The lake on the web: DICOMweb (QIDO-RS, WADO-RS, STOW-RS) and the OHIF viewer.

One ASGI application (Starlette on uvicorn). Every route passes the one authorisation
function, :meth:`lake.access.Access.authorize`; see ``docs/web.md``.

Examples
--------
>>> import lake  # doctest: +SKIP
>>> from lake.web import WebConfig, WebServer
>>> lk = lake.open("/data/lake")  # doctest: +SKIP
>>> with WebServer(lk, WebConfig(port=8080), lk.secret()) as server:  # doctest: +SKIP
...     print(server.url + "/dicomweb/studies")
"""

from lake.web._app import PREFIX, create_app
from lake.web._config import WebConfig, is_loopback
from lake.web._guard import check_guarded, credentials_of, mount, permission_of, route
from lake.web._server import WebServer

__all__ = [
    "PREFIX",
    "WebConfig",
    "WebServer",
    "check_guarded",
    "create_app",
    "credentials_of",
    "is_loopback",
    "mount",
    "permission_of",
    "route",
]
