"""Tokens, roles and scopes: every route x every kind of caller, generated from the routes.

The matrix is built from the application's own route table, so a new route is tested
(and fails the build if it is not guarded) without anyone remembering to add it here.
"""

from __future__ import annotations

import datetime as dt
import getpass
import hashlib
import json
import logging
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from starlette.routing import Mount, Route

from lake import AuthenticationError, ConfigError, ForbiddenError
from lake.access import Access, Credentials, Permission, create_token, list_tokens, revoke_token
from lake.catalog import TOKENS
from lake.web import WebConfig, check_guarded, permission_of
from tests.net_peers import stop_server
from tests.web_peers import WebLake, build_web_lake, serving

LAKE = [sys.executable, "-m", "pipelines.cli"]


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> WebLake:
    built = build_web_lake(tmp_path_factory.mktemp("access"))
    lk = built.lake
    # An expired token (written as create_token would, with a past expiry) and a revoked one.
    text = "lake_" + "e" * 16 + "_" + "x" * 43
    past = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    lk.tables.append(TOKENS, [{
        "token_id": "e" * 16, "token_sha256": hashlib.sha256(text.encode()).hexdigest(),
        "role": "steward", "cohorts": [], "note": "", "created_at": past - dt.timedelta(days=1),
        "expires_at": past, "revoked_at": None,
    }])
    built.tokens["expired"] = text
    record, revoked = create_token(lk, "steward")
    revoke_token(lk, record.token_id)
    built.tokens["revoked"] = revoked
    built.tokens["forged"] = built.tokens["steward"][:-4] + "AAAA"
    built.tokens["garbage"] = "not-a-token"
    return built


@pytest.fixture(scope="module")
def client(web: WebLake) -> Iterator[httpx.Client]:
    with serving(web) as (_server, http):
        yield http


# Who sees which cohort's data (None: no valid credential).
VISIBLE: dict[str, set[str] | None] = {
    "none": None, "garbage": None, "forged": None, "expired": None, "revoked": None,
    "steward": {"a", "b", "teach"},
    "researcher": {"a", "b", "teach"},
    "researcher:a": {"a"},
    "student": {"teach"},
    "student:teach": {"teach"},
}
ROLE = {"steward": "steward", "researcher": "researcher", "researcher:a": "researcher",
        "student": "student", "student:teach": "student"}
OBJECT_PARAMS = ("study", "series", "instance")
FILLERS = {"frames": "1", "path": "7FE00010", "file": "index.html"}


def _routes() -> list[tuple[str, str, Permission]]:
    """(path template, method, permission) of every route of the application."""
    app = create_app_for_listing()
    out = []
    for item in app.routes:
        permission = permission_of(item)
        assert permission is not None, item
        if isinstance(item, Mount):
            out.append((item.path + "/{file}", "GET", permission))
        elif isinstance(item, Route):
            for method in sorted((item.methods or {"GET"}) - {"HEAD"}):
                out.append((item.path, method, permission))
    return out


def create_app_for_listing() -> object:
    from starlette.applications import Starlette

    # The route table is the app's; building it needs no lake.
    from lake.web._app import build_routes

    routes = build_routes(WebConfig())
    check_guarded(routes)
    return Starlette(routes=routes)


ROUTES = _routes()


def _url(template: str, uids: tuple[str, str, str]) -> str:
    values = dict(zip(OBJECT_PARAMS, uids, strict=True), **FILLERS)
    return re.sub(r"\{(\w+)(?::\w+)?\}", lambda m: values[m.group(1)], template)


def _headers(web: WebLake, who: str) -> dict[str, str]:
    return {} if who == "none" else {"Authorization": f"Bearer {web.tokens[who]}"}


def test_every_route_is_in_the_matrix() -> None:
    paths = {path for path, _, _ in ROUTES}
    assert "/dicomweb/studies" in paths
    assert len(ROUTES) >= 7
    assert {p for _, _, p in ROUTES} >= {Permission.READ, Permission.PUBLIC}


def test_an_unguarded_route_is_refused() -> None:
    async def naked(request: object) -> None:
        return None

    with pytest.raises(TypeError, match="not guarded"):
        check_guarded([Route("/naked", naked)])


@pytest.mark.parametrize(("template", "method", "permission"), ROUTES,
                         ids=[f"{m} {t}" for t, m, _ in ROUTES])
@pytest.mark.parametrize("who", sorted(VISIBLE))
def test_route_role_scope(
    web: WebLake, client: httpx.Client, template: str, method: str, permission: Permission,
    who: str,
) -> None:
    visible = VISIBLE[who]
    targets = ["a", "b", "teach"] if any(f"{{{p}" in template for p in OBJECT_PARAMS) else [None]
    for target in targets:
        url = _url(template, web.uids[target or "a"])
        response = client.request(method, url, headers=_headers(web, who))
        status = response.status_code
        body = response.content
        if permission is Permission.PUBLIC:
            assert status not in (401, 403), (who, url, status)
            continue
        if visible is None:
            assert status == 401, (who, url, status)
            assert response.headers["www-authenticate"].startswith("Bearer")
            continue
        if permission is Permission.STORE:
            if ROLE[who] == "steward":
                assert status not in (401, 403, 404), (who, url, status)
            else:
                assert status == 403, (who, url, status)
            continue
        assert permission is Permission.READ
        if target is None and not template.startswith("/dicomweb"):  # the viewer's entry
            assert status in (200, 303), (who, url, status)
        elif target is None:  # a search: what is outside the scope is absent from the results
            assert status == 200, (who, url, status)
            for name, uids in web.uids.items():
                assert (uids[0].encode() in body) == (name in visible), (who, url, name)
        elif target in visible:
            assert 200 <= status < 300, (who, url, status)
        else:  # outside the scope reads exactly like absent
            assert status == 404, (who, url, status)
            assert json.loads(body) == {"error": "not found"}
        assert b"PAT-" not in body


def test_bearer_query_parameter_and_cookie(web: WebLake, client: httpx.Client) -> None:
    token = web.tokens["researcher:a"]
    by_param = client.get("/dicomweb/studies", params={"token": token})
    assert by_param.status_code == 200
    assert web.uids["a"][0] in by_param.text and web.uids["b"][0] not in by_param.text
    cookie = httpx.Client(base_url=str(client.base_url), cookies={"lake_token": token})
    with cookie:
        assert cookie.get("/dicomweb/studies").status_code == 200


def test_revocation_takes_effect_on_the_next_request(web: WebLake, client: httpx.Client) -> None:
    record, text = create_token(web.lake, "researcher")
    headers = {"Authorization": f"Bearer {text}"}
    assert client.get("/dicomweb/studies", headers=headers).status_code == 200
    revoke_token(web.lake, record.token_id)
    assert client.get("/dicomweb/studies", headers=headers).status_code == 401


def _series_seen(client: httpx.Client, token: str) -> set[str]:
    found = client.get("/dicomweb/series", headers={"Authorization": f"Bearer {token}"})
    assert found.status_code == 200, found.text
    return {item["0020000E"]["Value"][0] for item in found.json()}


def test_a_redefined_cohort_applies_to_its_tokens_at_once(
    web: WebLake, client: httpx.Client
) -> None:
    """A cohort replaced at the same catalog version (red-team finding 5): a token scoped to
    it sees the new members on its next request, never the cached old ones."""
    series_a, series_b = web.uids["a"][1], web.uids["b"][1]

    def define(series: str) -> int:
        web.lake.create_cohort(
            "narrowed",
            f"SELECT SeriesInstanceUID FROM instances WHERE SeriesInstanceUID = '{series}'",
            replace=True,
        )
        return int(web.lake.cohort("narrowed").catalog_version)

    first = define(series_a)
    token = create_token(web.lake, "researcher", cohorts=["narrowed"])[1]
    assert _series_seen(client, token) == {series_a}  # the scoped snapshot is now cached
    assert define(series_b) == first  # redefined at the same catalog version
    assert _series_seen(client, token) == {series_b}
    study_a = web.uids["a"][0]
    metadata = client.get(f"/dicomweb/studies/{study_a}/metadata",
                          headers={"Authorization": f"Bearer {token}"})
    assert metadata.status_code == 404
    assert define(series_a) == first  # and back: not a stale "b" either
    assert _series_seen(client, token) == {series_a}


def test_unmarking_a_teaching_set_applies_at_once(web: WebLake, client: httpx.Client) -> None:
    from lake.access import mark_teaching_set, unmark_teaching_set

    teach = web.uids["teach"][1]
    assert _series_seen(client, web.tokens["student"]) == {teach}
    unmark_teaching_set(web.lake, "teach")
    try:
        assert _series_seen(client, web.tokens["student"]) == set()
        assert _series_seen(client, web.tokens["student:teach"]) == set()
    finally:
        mark_teaching_set(web.lake, "teach")
    assert _series_seen(client, web.tokens["student:teach"]) == {teach}


def test_a_revoked_or_expired_share_link_stops_at_once(
    web: WebLake, client: httpx.Client
) -> None:
    from lake.access import create_share, revoke_share

    share, text = create_share(web.lake, "teach", created_by="test")
    assert _series_seen(client, text) == {web.uids["teach"][1]}
    revoke_share(web.lake, share.share_id)
    assert client.get("/dicomweb/series", params={"token": text}).status_code == 401
    # An expired link: its expiry is compared with the clock on every request.
    past = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)
    expired = "lake_" + "f" * 16 + "_" + "y" * 43
    web.lake.tables.append(TOKENS, [{
        "token_id": "f" * 16, "token_sha256": hashlib.sha256(expired.encode()).hexdigest(),
        "role": "student", "cohorts": ["teach"], "note": "", "created_at": past,
        "expires_at": past + dt.timedelta(seconds=1), "revoked_at": None,
    }])
    assert client.get("/dicomweb/series", params={"token": expired}).status_code == 401


def test_security_headers(web: WebLake, client: httpx.Client) -> None:
    response = client.get("/dicomweb/studies", headers=_headers(web, "steward"))
    assert response.headers["content-type"].startswith("application/dicom+json")
    assert response.headers["x-content-type-options"] == "nosniff"
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
    assert response.headers["referrer-policy"] == "no-referrer"
    assert response.headers["cache-control"] == "no-store"
    assert "server" not in response.headers


def test_authorize_directly(web: WebLake) -> None:
    access = Access(web.lake)
    with pytest.raises(AuthenticationError):
        access.authorize(Credentials(), Permission.READ)
    assert access.authorize(Credentials(), Permission.PUBLIC).principal is None
    with pytest.raises(ForbiddenError):
        access.authorize(Credentials(web.tokens["researcher"]), Permission.STORE)
    grant = access.authorize(Credentials(web.tokens["researcher:a"]), Permission.READ)
    assert grant.cohorts is not None and [c.name for c in grant.cohorts] == ["a"]
    assert grant.cohorts[0].catalog_version == web.lake.cohort("a").catalog_version
    anonymous = Access(web.lake, allow_anonymous=True)
    assert anonymous.authorize(Credentials(), Permission.READ).cohorts is None
    with pytest.raises(AuthenticationError):
        anonymous.authorize(Credentials(), Permission.STORE)


def test_student_tokens_name_only_teaching_sets(web: WebLake) -> None:
    from lake import AccessError

    with pytest.raises(AccessError, match="not teaching sets"):
        create_token(web.lake, "student", cohorts=["a"])
    with pytest.raises(AccessError, match="steward"):
        create_token(web.lake, "steward", cohorts=["a"])
    from lake.access import mark_teaching_set

    with pytest.raises(AccessError, match="teaching"):
        mark_teaching_set(web.lake, "a")


def test_config_refuses_unsafe_addresses() -> None:
    with pytest.raises(ConfigError, match="without TLS"):
        WebConfig(host="0.0.0.0")
    with pytest.raises(ConfigError, match="loopback"):
        WebConfig(host="10.1.2.3", tls_cert=Path("c"), tls_key=Path("k"), allow_anonymous=True)
    assert WebConfig(host="10.1.2.3", tls_cert=Path("c"), tls_key=Path("k")).scheme == "https"
    with pytest.raises(ConfigError, match="unknown setting"):
        WebConfig.from_settings({"prot": 1})


def test_anonymous_read_on_loopback(web: WebLake) -> None:
    with serving(web, allow_anonymous=True) as (_server, http):
        assert http.get("/dicomweb/studies").status_code == 200
        assert http.post("/dicomweb/studies", content=b"").status_code == 401


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*LAKE, *args], capture_output=True, text=True, timeout=120,
                          env=env, cwd=Path(__file__).resolve().parents[1])


def test_token_commands(web: WebLake) -> None:
    root = web.lake.root
    made = _cli("token", "create", "--role", "researcher", "--cohort", "a", "--expires", "7d",
                "--note", "notebook", "--lake", root)
    assert made.returncode == 0, made.stderr
    text = made.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"lake_[0-9a-f]{16}_[A-Za-z0-9_-]{43}", text)
    token_id = text.split("_")[1]
    listed = json.loads(_cli("token", "list", "--format", "json", "--lake", root).stdout)
    mine = next(t for t in listed if t["id"] == token_id)
    assert mine["role"] == "researcher" and mine["scopes"] == ["a"] and not mine["revoked"]
    assert mine["expires"] is not None
    assert text not in json.dumps(listed)  # never the token itself
    table = web.lake.tables.dataset("tokens").to_table().to_pylist()
    assert text not in repr(table)
    assert _cli("token", "revoke", token_id, "--lake", root).returncode == 0
    assert next(t for t in list_tokens(web.lake) if t.token_id == token_id).revoked_at
    bad = _cli("token", "create", "--role", "student", "--cohort", "a", "--lake", root)
    assert bad.returncode == 1 and "teaching" in bad.stderr and "Traceback" not in bad.stderr
    unknown = _cli("token", "revoke", "0123456789abcdef", "--lake", root)
    assert unknown.returncode == 1 and "no token" in unknown.stderr


def test_token_commands_are_audited(web: WebLake) -> None:
    """``lake token create``/``revoke`` write the audit rows the portal writes for the same
    actions: who (the account running the command), what, the token's id and role; never
    the token."""
    root = web.lake.root
    made = _cli("token", "create", "--role", "researcher", "--note", "audited", "--lake", root)
    assert made.returncode == 0, made.stderr
    text = made.stdout.strip().splitlines()[-1]
    token_id = text.split("_")[1]
    assert _cli("token", "revoke", token_id, "--lake", root).returncode == 0
    web.lake.refresh()
    rows = web.lake.tables.dataset("audit").to_table().to_pylist()
    mine = sorted((r["action"], r["actor_kind"], r["actor"], r["role"], r["resource_kind"],
                   r["detail"], r["outcome"]) for r in rows if r["resource"] == token_id)
    assert mine == [("token_created", "system", getpass.getuser(), None, "token", "researcher",
                     "ok"),
                    ("token_revoked", "system", getpass.getuser(), None, "token", "", "ok")]
    assert text not in repr(rows) and text.rsplit("_", 1)[1] not in repr(rows)
    refused = _cli("token", "create", "--role", "student", "--cohort", "a", "--lake", root)
    assert refused.returncode == 1
    web.lake.refresh()
    after = web.lake.tables.dataset("audit").to_table().to_pylist()
    assert len(after) == len(rows)  # a refused token is no token: nothing recorded


def _serve(web: WebLake, *args: str) -> subprocess.Popen[str]:
    env = dict(os.environ, LAKE_VAULT=str(web.vault))
    return subprocess.Popen(
        [*LAKE, "serve", "web", "--lake", web.lake.root, "--port", "0", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        cwd=Path(__file__).resolve().parents[1],
    )


def _address(proc: subprocess.Popen[str]) -> str:
    assert proc.stderr is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        found = re.search(r"serving (https?://[^/\s]+)/dicomweb", line)
        if found:
            return found.group(1)
        if not line and proc.poll() is not None:
            break
    raise AssertionError("the server did not start")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_serve_web_stops_cleanly(web: WebLake, sig: signal.Signals) -> None:
    proc = _serve(web)
    try:
        url = _address(proc)
        ok = httpx.get(url + "/dicomweb/studies", headers=_headers(web, "steward"), timeout=30)
        assert ok.status_code == 200
    finally:
        _, stderr = stop_server(proc, signum=sig, timeout=60)
    assert proc.returncode == 0, stderr[-2000:]
    assert "Traceback" not in stderr and "stopped" in stderr
    assert web.tokens["steward"] not in stderr


def test_serve_web_refuses_a_public_address_without_tls(web: WebLake) -> None:
    proc = _serve(web, "--host", "0.0.0.0")
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert "without TLS" in stderr and "Traceback" not in stderr


def test_serve_web_reads_its_settings_from_lake_json(web: WebLake) -> None:
    """The "web" section of lake.json is what 'lake serve web' uses (flags override it)."""
    config = Path(web.lake.root) / "lake.json"
    original = config.read_text(encoding="utf-8")
    settings = json.loads(original)
    try:
        config.write_text(json.dumps({**settings, "web": {"host": "0.0.0.0"}}), encoding="utf-8")
        refused = _serve(web)
        _, stderr = refused.communicate(timeout=60)
        assert refused.returncode == 1 and "without TLS" in stderr
        config.write_text(json.dumps({**settings, "web": {"allow_anonymous": True}}),
                          encoding="utf-8")
        proc = _serve(web)
        try:
            url = _address(proc)
            assert httpx.get(url + "/dicomweb/studies", timeout=30).status_code == 200
        finally:
            stop_server(proc, timeout=60)
        assert proc.returncode == 0
        proc = _serve(web, "--no-anonymous")  # a flag overrides lake.json
        try:
            url = _address(proc)
            assert httpx.get(url + "/dicomweb/studies", timeout=30).status_code == 401
        finally:
            stop_server(proc, timeout=60)
        assert proc.returncode == 0
    finally:
        config.write_text(original, encoding="utf-8")


def test_serve_web_with_tls(web: WebLake, tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    proc = _serve(web, "--tls-cert", str(cert), "--tls-key", str(key))
    try:
        url = _address(proc)
        assert url.startswith("https://")
        response = httpx.get(url + "/dicomweb/studies", headers=_headers(web, "steward"),
                             verify=False, timeout=30)
        assert response.status_code == 200
        assert response.headers["strict-transport-security"]
    finally:
        stop_server(proc, timeout=60)
    assert proc.returncode == 0


def _self_signed(folder: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1)).not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ))
    return cert_path, key_path


# -- connections that never finish their request (red-team finding 6) -------------------------


def _closed_by_server(sockets: list[socket.socket], within: float) -> list[socket.socket]:
    """The sockets the server has not closed after ``within`` seconds (a generous bound)."""
    open_ = {s.fileno(): s for s in sockets}
    deadline = time.monotonic() + within
    while open_ and time.monotonic() < deadline:
        readable, _, _ = select.select(list(open_.values()), [], [], 0.5)
        for sock in readable:
            try:
                data = sock.recv(4096)
            except OSError:  # reset: closed too
                data = b""
            if not data or b"503" in data:
                open_.pop(sock.fileno())
    return list(open_.values())


def test_a_connection_that_never_finishes_its_request_is_closed(web: WebLake) -> None:
    with serving(web, request_timeout=1) as (server, http):
        sock = socket.create_connection(("127.0.0.1", server.port))
        try:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # headers never finished
            assert _closed_by_server([sock], within=30) == []
        finally:
            sock.close()
        assert http.get("/healthz").status_code == 200


def test_an_idle_flood_leaves_authorised_clients_answered_and_the_log_small(
    web: WebLake, caplog: pytest.LogCaptureFixture
) -> None:
    """Idle and trickling connections beyond the cap: the server evicts the idle ones, closes
    the rest at their deadline, answers a token holder throughout, and logs a few lines."""
    caplog.set_level(logging.INFO, logger="lake.web")
    flood: list[socket.socket] = []
    with serving(web, request_timeout=2, max_connections=100) as (server, http):
        headers = _headers(web, "researcher")
        try:
            for number in range(400):  # 4x the cap, sending nothing or half a request line
                sock = socket.create_connection(("127.0.0.1", server.port))
                if number % 2:
                    sock.sendall(b"GET /dicomweb/stu")
                flood.append(sock)
                if number % 100 == 99:  # answered while the flood holds its connections
                    assert http.get("/dicomweb/studies", headers=headers).status_code == 200
            trickle = socket.create_connection(("127.0.0.1", server.port))
            flood.append(trickle)
            for byte in b"GET /healthz HTTP/1.1\r\nX-Slow: " + b"a" * 12:  # a byte every 0.25 s
                try:
                    trickle.sendall(bytes([byte]))
                except OSError:  # closed by the server: what should happen
                    break
                time.sleep(0.25)
            assert _closed_by_server(flood, within=60) == []
            assert http.get("/dicomweb/studies", headers=headers).status_code == 200
        finally:
            for sock in flood:
                sock.close()
        assert server.guard.evicted >= 300 - 5 and server.guard.closed_idle >= 1
    lines = [r for r in caplog.records if r.name.startswith("lake.web.connections")]
    assert 0 < len(lines) <= 30, len(lines)
    assert not any(r.exc_info for r in caplog.records)
