"""The portal's routes x every kind of caller x scope, generated from the application's routes.

The DICOMweb matrix (tests/test_web_access.py) covers the routes of
``lake.web._app.build_routes``; this one covers every other route of the application
(the portal's), so together they cover the whole route table: a new route is tested
without being listed anywhere. Callers are portal sessions of each role and scope,
bearer tokens of each role and scope, share links, an ended session and nobody.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from starlette.routing import Mount, Route

from lake.access import Permission
from lake.web import WebConfig, create_app, permission_of
from lake.web._app import build_routes
from tests.portal_peers import PortalLake, build_portal_lake, csrf_of, sign_in
from tests.web_peers import serving


@pytest.fixture(scope="module")
def portal(tmp_path_factory: pytest.TempPathFactory) -> PortalLake:
    return build_portal_lake(tmp_path_factory.mktemp("portal-access"))


def _signature(item: object) -> list[tuple[str, str, Permission]]:
    permission = permission_of(item)  # type: ignore[arg-type]
    assert permission is not None, item
    if isinstance(item, Mount):
        return [(item.path + "/{file}", "GET", permission)]
    assert isinstance(item, Route)
    return [(item.path, m, permission) for m in sorted((item.methods or {"GET"}) - {"HEAD"})]


def _portal_routes(lake_root: Path) -> list[tuple[str, str, Permission]]:
    import lake

    app = create_app(lake.open(str(lake_root)), WebConfig())
    every = [s for item in app.routes for s in _signature(item)]
    dicomweb = {s for item in build_routes(WebConfig()) for s in _signature(item)}
    return [s for s in every if s not in dicomweb]


@pytest.fixture(scope="module")
def routes(portal: PortalLake) -> list[tuple[str, str, Permission]]:
    return _portal_routes(Path(portal.lake.location.path))


CALLERS = (
    "none", "ended",
    "session:boss", "session:res", "session:res-a", "session:stu", "session:stu-t",
    "token:steward", "token:researcher", "token:researcher:a", "token:student",
    "token:student:teach",
    "share:student:teach", "share:researcher:xss",
)
ROLE = {"boss": "steward", "res": "researcher", "res-a": "researcher", "stu": "student",
        "stu-t": "student", "steward": "steward", "researcher": "researcher",
        "researcher:a": "researcher", "student": "student", "student:teach": "student",
        "researcher:xss": "researcher"}
PERMITTED = {
    "steward": {Permission.READ, Permission.QUERY, Permission.EXPORT, Permission.MANAGE},
    "researcher": {Permission.READ, Permission.QUERY, Permission.EXPORT},
    "student": {Permission.READ},
}
SCOPE = {"boss": None, "res": None, "res-a": {"a"}, "stu": None, "stu-t": {"teach"},
         "steward": None, "researcher": None, "researcher:a": {"a"}, "student": None,
         "student:teach": {"teach"}}
EVERY_COHORT = {"a", "b", "teach", "xss"}
TEACHING = {"teach"}


def _sets_visible(caller: str) -> set[str]:
    kind, _, who = caller.partition(":")
    if kind == "share":
        return {who.split(":")[1]}
    scope = SCOPE[who]
    return set(TEACHING) if scope is None else scope & TEACHING


def _cohorts_visible(caller: str) -> set[str]:
    scope = SCOPE[caller.partition(":")[2]]
    return set(EVERY_COHORT) if scope is None else scope


@pytest.fixture(scope="module")
def clients(portal: PortalLake) -> Iterator[dict[str, httpx.Client]]:
    with serving(portal.web) as (server, _http):
        made: dict[str, httpx.Client] = {}
        for caller in CALLERS:
            kind, _, who = caller.partition(":")
            if kind == "session":
                made[caller] = sign_in(server.url, who, portal.passwords[who])
                continue
            client = httpx.Client(base_url=server.url, timeout=60)
            if kind == "token":
                client.headers["Authorization"] = f"Bearer {portal.web.tokens[who]}"
            elif kind == "share":
                client.headers["Authorization"] = f"Bearer {portal.shares[who]}"
            elif kind == "ended":
                ended = sign_in(server.url, "res", portal.passwords["res"])
                csrf = csrf_of(ended.get("/portal/signin").text)
                assert ended.post("/portal/signout", data={"csrf": csrf}).status_code == 303
                client.cookies.set("lake_session", ended.cookies.get("lake_session")
                                   or "ended-session-identifier")
            made[caller] = client
        yield made
        for client in made.values():
            client.close()


FILLERS = {"job": "0123456789abcdef", "case": "1", "token": "lake_" + "0" * 16 + "_" + "A" * 43,
           "token_id": "0123456789abcdef", "share_id": "0123456789abcdef",
           "file": "portal.css", "ident": "0" * 16}


def _url(template: str, target: str | None) -> str:
    values = dict(FILLERS)
    if template.startswith("/portal/steward/users/"):
        values["name"] = "nobody"
    elif template.startswith("/portal/steward/profiles/"):
        values["name"] = "basic"
    else:
        values["name"] = target or "a"
    return re.sub(r"\{(\w+)(?::\w+)?\}", lambda m: values[m.group(1)], template)


def _targets(template: str) -> list[str | None]:
    if "{name}" in template and template.startswith(("/portal/sets/", "/portal/cohorts/")):
        return sorted(EVERY_COHORT)
    return [None]


def _post(client: httpx.Client, url: str) -> httpx.Response:
    """A form post with the CSRF token this client's pages carry (session or cookie)."""
    csrf = csrf_of(client.get("/portal/signin").text)
    return client.post(url, data={"csrf": csrf})


def test_the_portal_has_routes_of_every_permission(routes: list[tuple[str, str, Permission]]
                                                   ) -> None:
    assert len(routes) >= 30
    assert {p for _, _, p in routes} == {Permission.PUBLIC, Permission.READ, Permission.QUERY,
                                         Permission.EXPORT, Permission.MANAGE}
    assert ("/portal/signin", "POST", Permission.PUBLIC) in routes


@pytest.mark.parametrize("caller", CALLERS)
def test_portal_route_role_scope(
    portal: PortalLake, routes: list[tuple[str, str, Permission]],
    clients: dict[str, httpx.Client], caller: str,
) -> None:
    client = clients[caller]
    kind, _, who = caller.partition(":")
    checked = 0
    for template, method, permission in routes:
        if template == "/portal/signout" and kind == "session":
            continue  # would end the caller's session; sign-out has its own test
        for target in _targets(template):
            url = _url(template, target)
            response = client.get(url) if method == "GET" else _post(client, url)
            status, where = response.status_code, (caller, method, url, response.status_code)
            checked += 1
            assert status < 500, where
            assert b"PAT-" not in response.content and b"Doe" not in response.content, where
            if permission is Permission.PUBLIC:
                assert status != 403, where
                continue
            if kind in ("none", "ended"):
                if method == "GET":
                    assert status == 303, where
                    assert response.headers["location"].startswith("/portal/signin"), where
                else:
                    assert status == 401, where
                continue
            if permission not in PERMITTED[ROLE[who]] or (
                kind == "share" and permission is not Permission.READ
            ):
                assert status == 403, where
                continue
            if target is not None:
                visible = (_sets_visible(caller) if template.startswith("/portal/sets/")
                           else _cohorts_visible(caller))
                if target in visible:
                    assert status not in (401, 403, 404), where
                else:
                    assert status == 404, where
                continue
            if "{job}" in template:
                assert status == 404, where
                continue
            assert status not in (401, 403), where
    assert checked >= 40


def test_every_route_of_the_application_is_in_a_matrix(
    portal: PortalLake, routes: list[tuple[str, str, Permission]]
) -> None:
    """The DICOMweb matrix takes build_routes; this one the rest; nothing falls between."""
    import lake

    app = create_app(lake.open(portal.lake.root), WebConfig())
    every = {s for item in app.routes for s in _signature(item)}
    dicomweb = {s for item in build_routes(WebConfig()) for s in _signature(item)}
    assert every == dicomweb | set(routes)
