"""Portal security: CSRF, session fixation and expiry, brute force, path traversal, the SQL
console's reach, escaping, headers, no identifier on a page, share links, the audit log."""

from __future__ import annotations

import datetime as dt
import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from lake import AuthenticationError, QueryError
from lake.access import (
    Access,
    Credentials,
    Permission,
    SessionStore,
    SignInThrottle,
    TooManyAttemptsError,
    list_users,
)
from lake.web.portal._console import run_console
from tests.portal_peers import PLANTED, PortalLake, build_portal_lake, csrf_of, sign_in
from tests.web_peers import serving

LAKE = [sys.executable, "-m", "pipelines.cli"]
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def portal(tmp_path_factory: pytest.TempPathFactory) -> PortalLake:
    return build_portal_lake(tmp_path_factory.mktemp("portal-security"))


@pytest.fixture(scope="module")
def server(portal: PortalLake) -> Iterator[str]:
    with serving(portal.web) as (running, _http):
        yield running.url


def _cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*LAKE, *args], capture_output=True, text=True, timeout=120,
                          input=stdin, cwd=ROOT)


# --- CSRF ------------------------------------------------------------------------------


def test_forms_without_the_sessions_csrf_token_are_refused(portal: PortalLake, server: str
                                                           ) -> None:
    boss = sign_in(server, "boss", portal.passwords["boss"])
    data = {"name": "mallory", "role": "steward", "password": "mallory-password-1"}
    assert boss.post("/portal/steward/users", data=data).status_code == 403
    assert boss.post("/portal/steward/users", data={**data, "csrf": "forged"}).status_code == 403
    # another session's token does not do either
    other = sign_in(server, "res", portal.passwords["res"])
    foreign = csrf_of(other.get("/portal/console").text)
    assert boss.post("/portal/steward/users", data={**data, "csrf": foreign}).status_code == 403
    assert "mallory" not in {u.name for u in list_users(portal.lake)}
    # a cross-site form cannot sign anyone in either (no double-submit cookie)
    anonymous = httpx.Client(base_url=server)
    login = {"name": "boss", "password": portal.passwords["boss"], "csrf": "x" * 43}
    assert anonymous.post("/portal/signin", data=login).status_code == 403
    # with the token, it works
    token = csrf_of(boss.get("/portal/steward/users").text)
    assert boss.post("/portal/steward/users", data={**data, "csrf": token}).status_code == 200
    assert "mallory" in {u.name for u in list_users(portal.lake)}


# --- sessions ----------------------------------------------------------------------------


def test_session_fixation_is_prevented(portal: PortalLake, server: str) -> None:
    # An attacker's own live session identifier, planted in the victim's browser...
    attacker = sign_in(server, "stu", portal.passwords["stu"])
    planted = attacker.cookies.get("lake_session")
    assert planted
    victim = httpx.Client(base_url=server, cookies={"lake_session": planted})
    csrf = csrf_of(victim.get("/portal/signin").text)
    done = victim.post("/portal/signin", data={"name": "res", "password": portal.passwords["res"],
                                               "csrf": csrf, "next": "/portal/cohorts"})
    assert done.status_code == 303
    fresh = done.cookies.get("lake_session")
    assert fresh and fresh != planted
    # ... is never promoted: it ends, and the new identifier is the victim's alone.
    assert attacker.get("/portal/teaching").status_code == 303
    victim.cookies.set("lake_session", fresh)
    assert victim.get("/portal/cohorts").status_code == 200
    cookie = done.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Path=/" in cookie
    assert "Secure" not in cookie  # plain http on loopback; see the TLS test


def test_session_cookie_is_secure_under_tls(portal: PortalLake, tmp_path: Path) -> None:
    from tests.test_web_access import _self_signed

    cert, key = _self_signed(tmp_path)
    with serving(portal.web, tls_cert=cert, tls_key=key) as (running, _http):
        client = httpx.Client(base_url=running.url, verify=False)
        csrf = csrf_of(client.get("/portal/signin").text)
        done = client.post("/portal/signin", data={"name": "stu", "csrf": csrf,
                                                   "password": portal.passwords["stu"]})
        assert done.status_code == 303
        assert "Secure" in done.headers["set-cookie"]


def test_sign_out_ends_the_session(portal: PortalLake, server: str) -> None:
    client = sign_in(server, "stu", portal.passwords["stu"])
    ident = client.cookies.get("lake_session")
    csrf = csrf_of(client.get("/portal/teaching").text)
    assert client.post("/portal/signout", data={"csrf": csrf}).status_code == 303
    stale = httpx.Client(base_url=server, cookies={"lake_session": ident or ""})
    assert stale.get("/portal/teaching").status_code == 303


def test_sessions_expire_and_end_with_the_account(portal: PortalLake) -> None:
    now = [dt.datetime(2026, 1, 1, tzinfo=dt.UTC)]
    store = SessionStore(idle=dt.timedelta(minutes=30), lifetime=dt.timedelta(hours=2),
                         clock=lambda: now[0])
    ident, _ = store.create("stu", portal_role("student"), ())
    now[0] += dt.timedelta(minutes=20)
    store.get(ident)  # used: the idle time starts again
    now[0] += dt.timedelta(minutes=20)
    store.get(ident)
    now[0] += dt.timedelta(minutes=31)
    with pytest.raises(AuthenticationError):
        store.get(ident)
    ident, _ = store.create("stu", portal_role("student"), ())
    for _ in range(4):  # kept busy, it still ends at its lifetime
        now[0] += dt.timedelta(minutes=25)
        store.get(ident)
    with pytest.raises(AuthenticationError):
        now[0] += dt.timedelta(minutes=25)
        store.get(ident)
    # a removed account's sessions end on their next request
    access = Access(portal.lake)
    from lake.access import add_user, remove_user

    user = add_user(portal.lake, "temp", "student", "temporary-password")
    live, _ = access.sessions.create(user.name, user.role, user.cohorts)
    assert access.authorize(Credentials(session=live), Permission.READ).principal
    remove_user(portal.lake, "temp")
    with pytest.raises(AuthenticationError):
        access.authorize(Credentials(session=live), Permission.READ)


def portal_role(name: str):  # type: ignore[no-untyped-def]
    from lake.access import Role

    return Role(name)


def test_a_session_never_stores(portal: PortalLake, server: str) -> None:
    boss = sign_in(server, "boss", portal.passwords["boss"])
    stow = boss.post("/dicomweb/studies", content=b"x",
                     headers={"Content-Type": 'multipart/related; type="application/dicom"'})
    assert stow.status_code == 403


# --- brute force ---------------------------------------------------------------------------


def test_sign_in_attempts_are_rate_limited(portal: PortalLake) -> None:
    # A server of its own: the accounts it locks out must stay usable by the other tests.
    with serving(portal.web) as (running, _http):
        _rate_limited(portal, running.url)


def _rate_limited(portal: PortalLake, server: str) -> None:
    client = httpx.Client(base_url=server)
    for _ in range(5):
        csrf = csrf_of(client.get("/portal/signin").text)
        bad = client.post("/portal/signin", data={"name": "stu-t", "password": "wrong-guess!",
                                                  "csrf": csrf})
        assert bad.status_code == 401
        assert "wrong account name or password" in bad.text
    csrf = csrf_of(client.get("/portal/signin").text)
    locked = client.post("/portal/signin", data={"name": "stu-t", "csrf": csrf,
                                                 "password": portal.passwords["stu-t"]})
    assert locked.status_code == 429
    assert int(locked.headers["retry-after"]) > 0
    assert "lake_session" not in locked.headers.get("set-cookie", "")
    # the same for an unknown name (no hint whether an account exists)
    for _ in range(5):
        client.post("/portal/signin", data={"name": "ghost", "password": "x" * 12,
                                            "csrf": csrf})
    assert client.post("/portal/signin", data={"name": "ghost", "password": "x" * 12,
                                               "csrf": csrf}).status_code == 429


def test_throttle_per_client_address() -> None:
    now = [dt.datetime(2026, 1, 1, tzinfo=dt.UTC)]
    throttle = SignInThrottle(per_name=5, per_client=3, clock=lambda: now[0])
    for name in ("a", "b", "c"):  # a spray of names from one address
        throttle.check(name, "10.0.0.1")
        throttle.failed(name, "10.0.0.1")
    with pytest.raises(TooManyAttemptsError):
        throttle.check("d", "10.0.0.1")
    throttle.check("d", "10.0.0.2")
    now[0] += dt.timedelta(minutes=16)
    throttle.check("d", "10.0.0.1")


# --- path traversal in downloads -------------------------------------------------------------


@pytest.mark.parametrize("path", [
    "/portal/jobs/..%2F..%2F..%2Fetc%2Fpasswd/download",
    "/portal/jobs/../../etc/passwd",
    "/portal/sets/..%2F..%2Flake.json/download",
    "/portal/sets/teach%2F..%2F..%2Flake.json/download",
    "/portal/sets/teach/cases/0/download",
    "/portal/sets/teach/cases/99999/download",
    "/portal/sets/teach/cases/-1/download",
    "/portal/static/..%2F_portal.py",
    "/portal/static/../_portal.py",
    "/portal/steward/profiles/..%2F..%2Flake.json",
    "/portal/cohorts/..%2Fteach",
])
def test_path_traversal_is_not_found(portal: PortalLake, server: str, path: str) -> None:
    boss = sign_in(server, "boss", portal.passwords["boss"])
    response = boss.get(path)
    assert response.status_code in (400, 404), (path, response.status_code)
    assert b"lake_id" not in response.content and b"import " not in response.content
    assert b"root:" not in response.content


# --- the SQL console --------------------------------------------------------------------------


@pytest.mark.parametrize("sql", [
    "SELECT * FROM read_text('/etc/passwd')",
    "SELECT * FROM read_csv('/etc/passwd')",
    "SELECT * FROM read_parquet('{root}/tables/users/*.parquet')",
    "SELECT * FROM glob('{root}/*')",
    "COPY (SELECT 1) TO '{root}/copied.csv'",
    "ATTACH '{root}/attached.db' AS x",
    "INSTALL httpfs",
    "LOAD httpfs",
    "SET enable_external_access = true",
    "SELECT 1; SELECT * FROM read_text('/etc/passwd')",
    "SELECT * FROM users",
    "SELECT * FROM tokens",
    "SELECT * FROM audit",
    "SELECT * FROM shares",
])
def test_the_console_cannot_reach_outside_the_catalog(portal: PortalLake, server: str,
                                                       sql: str) -> None:
    root = portal.lake.location.path
    res = sign_in(server, "res", portal.passwords["res"])
    csrf = csrf_of(res.get("/portal/console").text)
    answer = res.post("/portal/console", data={"sql": sql.format(root=root), "csrf": csrf})
    assert answer.status_code == 400, answer.text[:300]
    assert "root:x" not in answer.text and "argon2" not in answer.text
    for made in ("copied.csv", "attached.db"):
        assert not (Path(root) / made).exists()
    # nor can a cohort be made from such a query
    saved = res.post("/portal/cohorts", data={"sql": sql.format(root=root), "csrf": csrf,
                                              "name": "leak"})
    assert saved.status_code == 400
    assert "leak" not in {c.name for c in _cohorts(portal)}


def _cohorts(portal: PortalLake) -> list:  # type: ignore[type-arg]
    from lake.export import list_cohorts

    return list_cohorts(portal.lake)


def test_console_limits_and_scope(portal: PortalLake) -> None:
    from lake.access import Grant

    access = Access(portal.lake)
    everything = access.authorize(Credentials(portal.web.tokens["researcher"]), Permission.QUERY)
    rows = run_console(portal.lake, everything, "SELECT * FROM range(5000)", rows=1000)
    assert len(rows.rows) == 1000 and rows.truncated
    with pytest.raises(QueryError, match="stopped"):
        run_console(portal.lake, everything,
                    "SELECT count(*) FROM range(100000000000) a, range(1000) b", seconds=0.5)
    scoped = access.authorize(Credentials(portal.web.tokens["researcher:a"]), Permission.QUERY)
    assert isinstance(scoped, Grant) and scoped.cohorts is not None
    seen = run_console(portal.lake, scoped, "SELECT DISTINCT SeriesInstanceUID FROM series")
    members = {m.series_uid for m in portal.lake.cohort("a").members}
    assert {r[0] for r in seen.rows} == members
    with pytest.raises(QueryError):
        run_console(portal.lake, scoped, "SELECT * FROM cohorts")  # other cohorts' members


def test_the_console_makes_a_cohort(portal: PortalLake, server: str) -> None:
    res = sign_in(server, "res", portal.passwords["res"])
    csrf = csrf_of(res.get("/portal/console").text)
    sql = "SELECT SeriesInstanceUID FROM series WHERE Modality = 'CT'"
    ran = res.post("/portal/console", data={"sql": sql, "csrf": csrf})
    assert ran.status_code == 200 and "SeriesInstanceUID" in ran.text
    saved = res.post("/portal/cohorts", data={"sql": sql, "csrf": csrf, "name": "all-ct",
                                              "description": "every CT"})
    assert saved.status_code == 303 and saved.headers["location"] == "/portal/cohorts/all-ct"
    page = res.get("/portal/cohorts/all-ct")
    assert page.status_code == 200 and "every CT" in page.text
    assert len(portal.lake.cohort("all-ct").series) == 4
    # a researcher limited to cohorts cannot make one from the whole catalog
    scoped = sign_in(server, "res-a", portal.passwords["res-a"])
    token = csrf_of(scoped.get("/portal/console").text)
    refused = scoped.post("/portal/cohorts", data={"sql": sql, "csrf": token, "name": "mine"})
    assert refused.status_code == 400


# --- pages: escaping, headers, no identifier ---------------------------------------------------


def test_planted_markup_is_shown_as_text(portal: PortalLake, server: str) -> None:
    res = sign_in(server, "res", portal.passwords["res"])
    page = res.get("/portal/cohorts/xss")
    assert page.status_code == 200
    assert "&lt;script&gt;alert(&#34;planted&#34;)&lt;/script&gt;" in page.text
    assert "<script>alert" not in page.text
    shared = httpx.Client(base_url=server, follow_redirects=False)
    opened = shared.get(f"/portal/s/{portal.shares['researcher:xss']}")
    assert opened.status_code == 303 and opened.headers["location"] == "/portal/sets/xss"
    set_page = shared.get("/portal/sets/xss")
    assert set_page.status_code == 200
    assert "&lt;script&gt;" in set_page.text and "<script>alert" not in set_page.text
    assert PLANTED.split("<")[1] not in set_page.text.replace("&lt;", "")


def test_a_set_page_shows_what_the_profile_kept(portal: PortalLake, server: str) -> None:
    """A case shows its retained patient characteristics, body part and the descriptions
    that survived de-identification (issue 12.2), escaped."""
    shared = httpx.Client(base_url=server, follow_redirects=False)
    assert shared.get(f"/portal/s/{portal.shares['researcher:xss']}").status_code == 303
    page = shared.get("/portal/sets/xss")
    assert page.status_code == 200
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", page.text))
    assert "Sex F · age 045Y" in text
    assert "CT · CHEST" in text
    assert "Study: CT THORAX" in text
    assert "CHEST CT" in text  # the planted SeriesDescription, as text
    assert "No patient characteristics retained" not in text


def test_tables_sort_and_paginate(portal: PortalLake, server: str) -> None:
    """A steward's table (tokens) sorts by a column, both ways, 25 rows a page, with links
    that keep the other parameters; bad sort/page values fall back instead of failing."""
    from lake.access import create_token

    notes = [f"pager-{i:02d}" for i in range(30)]
    for note in notes:
        create_token(portal.lake, "researcher", note=note)
    boss = sign_in(server, "boss", portal.passwords["boss"])

    def shown(query: str) -> list[str]:
        page = boss.get(f"/portal/steward/tokens?{query}")
        assert page.status_code == 200, (query, page.status_code)
        return re.findall(r"pager-\d\d", page.text)

    first = shown("sort=note&dir=asc&page=1")
    second = shown("sort=note&dir=asc&page=2")
    every = sorted(first + second)
    assert every == notes and first == sorted(first) and second == sorted(second)
    assert len(first) + len(second) == 30 and first[-1] < second[0]
    assert shown("sort=note&dir=desc&page=1")[0] == "pager-29"
    page = boss.get("/portal/steward/tokens?sort=note&dir=asc&page=1").text
    assert 'href="?sort=note&amp;dir=asc&amp;page=2"' in page or "page=2" in page
    assert shown("sort=%3Cscript%3E&dir=x&page=abc")  # falls back to the default order


def test_steward_pages_name_a_students_scope(portal: PortalLake, server: str) -> None:
    """A student account or token without cohorts sees every teaching set, and says so."""
    from lake.access import create_token

    create_token(portal.lake, "student", note="pupil-token")
    boss = sign_in(server, "boss", portal.passwords["boss"])
    users = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", boss.get("/portal/steward/users").text))
    assert re.search(r"stu student every teaching set", users), users
    tokens = boss.get("/portal/steward/tokens?sort=note&dir=desc").text
    row = next(r for r in tokens.split("<tr") if "pupil-token" in r)
    assert "every teaching set" in row


@pytest.mark.parametrize("kind", ["dicom", "bids"])
def test_dicom_and_bids_exports_run_and_download(portal: PortalLake, server: str,
                                                 kind: str) -> None:
    """The cohort page's other export formats (the browser test downloads NIfTI): the job
    reports progress, finishes and its zip downloads, holding the cohort de-identified."""
    import io
    import time
    import zipfile

    res = sign_in(server, "res", portal.passwords["res"])
    form = res.get("/portal/cohorts/a")
    started = res.post("/portal/cohorts/a/exports",
                       data={"csrf": csrf_of(form.text), "format": kind})
    assert started.status_code == 303
    job = started.headers["location"]
    deadline = time.monotonic() + 120
    status = res.get(f"{job}/status").json()
    while status["state"] not in ("done", "failed") and time.monotonic() < deadline:
        time.sleep(0.3)
        status = res.get(f"{job}/status").json()
    assert status["state"] == "done", status
    zipped = res.get(f"{job}/download")
    assert zipped.status_code == 200 and zipped.headers["content-type"] == "application/zip"
    names = zipfile.ZipFile(io.BytesIO(zipped.content)).namelist()
    if kind == "dicom":
        assert status["done"] == status["total"] == 1  # one series
        assert len([n for n in names if n.endswith(".dcm")]) == 3
    else:
        assert "dataset_description.json" in names  # CT is not BIDS: an empty dataset
    assert b"PAT-A" not in zipped.content
    other = sign_in(server, "res-a", portal.passwords["res-a"])  # another account
    assert other.get(f"{job}/download").status_code == 404


def _pages(client: httpx.Client, start: list[str]) -> dict[str, httpx.Response]:
    """Every portal page reachable by GET links from ``start`` (one level deep)."""
    seen: dict[str, httpx.Response] = {}
    todo = list(start)
    while todo and len(seen) < 60:
        path = todo.pop(0)
        if path in seen:
            continue
        response = client.get(path)
        seen[path] = response
        if len(start) and path in start:
            for link in re.findall(r'href="(/portal/[^"?#]*)"', response.text):
                if ("download" not in link and "/static/" not in link and "/s/" not in link
                        and link != "/portal/" and link not in seen):
                    todo.append(link)
    return seen


def test_every_page_is_safe(portal: PortalLake, server: str) -> None:
    for name, start in (("boss", ["/portal/steward", "/portal/cohorts", "/portal/teaching"]),
                        ("stu", ["/portal/teaching", "/portal/sets/teach"])):
        client = sign_in(server, name, portal.passwords[name])
        pages = _pages(client, start)
        assert len(pages) >= len(start)
        for path, response in pages.items():
            assert response.status_code == 200, (name, path, response.status_code)
            headers = response.headers
            csp = headers["content-security-policy"]
            assert "script-src 'self'" in csp and "unsafe-inline" not in csp, path
            assert "frame-ancestors 'none'" in csp and "default-src 'none'" in csp
            assert headers["x-content-type-options"] == "nosniff"
            assert headers["x-frame-options"] == "DENY"
            assert headers["cache-control"] == "no-store"
            html = response.text
            assert not re.search(r"<script(?![^>]*\bsrc=)", html), path  # no inline script
            assert " style=" not in html and "<style" not in html, path
            assert not re.search(r"<[^>]+\son[a-z]+=", html), path  # no inline handlers
            for planted in ("PAT-", "Doe", "Jane", "Xavier"):
                assert planted not in html, (path, planted)


# --- share links --------------------------------------------------------------------------------


def test_share_link_from_the_command_line_until_revoked(portal: PortalLake, server: str) -> None:
    root = portal.lake.root
    made = _cli("share", "create", "teach", "--role", "student", "--expires", "7d",
                "--base-url", server, "--lake", root)
    assert made.returncode == 0, made.stderr
    url = made.stdout.strip().splitlines()[-1]
    assert re.fullmatch(re.escape(server) + r"/portal/s/lake_[0-9a-f]{16}_[A-Za-z0-9_-]{43}", url)
    share_id = url.rsplit("/", 1)[1].split("_")[1]
    listed = json.loads(_cli("share", "list", "--format", "json", "--lake", root).stdout)
    mine = next(s for s in listed if s["id"] == share_id)
    assert mine["cohort"] == "teach" and mine["state"] == "active"
    assert url.rsplit("/", 1)[1] not in json.dumps(listed)
    reader = httpx.Client(timeout=60)
    opened = reader.get(url)
    assert opened.status_code == 303 and opened.headers["location"] == "/portal/sets/teach"
    cookie = opened.headers["set-cookie"]
    assert "lake_token=" in cookie and "HttpOnly" in cookie
    page = reader.get(server + "/portal/sets/teach")
    assert page.status_code == 200 and "case-001" in page.text
    # read only: a share link may not open researchers' pages, nor post anything
    assert reader.get(server + "/portal/cohorts").status_code == 403
    assert reader.get(server + "/portal/sets/xss").status_code == 404
    assert _cli("share", "revoke", share_id, "--lake", root).returncode == 0
    assert reader.get(server + "/portal/sets/teach").status_code == 303  # to sign in
    again = httpx.get(url, timeout=60)
    assert again.status_code == 401 and "not valid" in again.text
    bad = _cli("share", "create", "a", "--role", "student", "--lake", root)
    assert bad.returncode == 1 and "teaching" in bad.stderr and "Traceback" not in bad.stderr


# --- accounts from the command line ---------------------------------------------------------------


def test_users_commands(portal: PortalLake, server: str) -> None:
    root = portal.lake.root
    password = "a long enough passphrase"
    added = _cli("users", "add", "newbie", "--role", "researcher", "--password-stdin",
                 "--lake", root, stdin=password + "\n")
    assert added.returncode == 0, added.stderr
    listed = json.loads(_cli("users", "list", "--format", "json", "--lake", root).stdout)
    assert {"name": "newbie", "role": "researcher"}.items() <= next(
        u for u in listed if u["name"] == "newbie").items()
    table = portal.lake.tables.dataset("users").to_table().to_pylist()
    row = next(r for r in table if r["name"] == "newbie")
    assert row["password_hash"].startswith("$argon2id$")
    assert password not in json.dumps(table, default=str)
    assert sign_in(server, "newbie", password).get("/portal/cohorts").status_code == 200
    short = _cli("users", "add", "shorty", "--role", "student", "--password-stdin",
                 "--lake", root, stdin="short\n")
    assert short.returncode == 1 and "too short" in short.stderr
    pupil = _cli("users", "add", "pupil", "--role", "student", "--password-stdin",
                 "--lake", root, stdin=password + "\n")
    assert pupil.returncode == 0, pupil.stderr
    assert "sees every teaching set" in pupil.stdout and "whole lake" not in pupil.stdout
    assert _cli("users", "remove", "pupil", "--lake", root).returncode == 0
    assert _cli("users", "remove", "newbie", "--lake", root).returncode == 0
    gone = _cli("users", "remove", "newbie", "--lake", root)
    assert gone.returncode == 1 and "no account" in gone.stderr


# --- the audit log ---------------------------------------------------------------------------------


def test_the_audit_log_records_sign_ins_downloads_shares_and_token_use(
    portal: PortalLake, server: str
) -> None:
    stu = sign_in(server, "stu", portal.passwords["stu"])
    study, _series, _ = portal.web.uids["teach"]
    token = {"Authorization": f"Bearer {portal.web.tokens['researcher']}"}
    assert httpx.get(f"{server}/dicomweb/studies/{study}/series", headers=token).status_code == 200
    bad = httpx.Client(base_url=server)
    csrf = csrf_of(bad.get("/portal/signin").text)
    bad.post("/portal/signin", data={"name": "boss", "password": "not-it-at-all", "csrf": csrf})
    _cli("share", "create", "teach", "--role", "student", "--lake", portal.lake.root)
    job = stu.get("/portal/sets/teach/download")
    assert job.status_code == 303
    for _ in range(600):  # the set's zip is made in the background
        status = stu.get(job.headers["location"] + "/status").json()
        if status["state"] in ("done", "failed"):
            break
        time.sleep(0.2)
    assert status["state"] == "done", status
    zipped = stu.get(job.headers["location"] + "/download")
    assert zipped.status_code == 200 and zipped.content[:2] == b"PK"
    boss = sign_in(server, "boss", portal.passwords["boss"])
    page = boss.get("/portal/steward/audit")  # flushes the server's log
    assert page.status_code == 200
    queried = _cli("sql", "--lake", portal.lake.root, "--format", "json",
                   "SELECT actor_kind, actor, action, resource_kind, resource, outcome FROM audit")
    assert queried.returncode == 0, queried.stderr
    rows = json.loads(queried.stdout)
    actions = {(r["action"], r["actor"]) for r in rows}
    assert ("sign_in", "stu") in actions and ("sign_in_failed", "boss") in actions
    assert any(a == "share_created" for a, _ in actions)
    assert any(r["action"] == "download" and r["actor"] == "stu" for r in rows)
    uses = [r for r in rows if r["action"] == "token_use"]
    assert any(r["resource"] == study and r["resource_kind"] == "study" for r in uses)
    dumped = json.dumps(rows)
    for planted in ("PAT-", "Doe", "not-it-at-all", portal.web.tokens["researcher"]):
        assert planted not in dumped


# --- quarantine review -------------------------------------------------------------------------


def _quarantined(portal: PortalLake, tmp_path: Path, count: int, patient_id: str,
                 patient_name: str) -> list:  # type: ignore[type-arg]
    """``count`` CT files of one patient with truncated pixel data, ingested: their
    quarantine entries (sealed), none of the earlier ones."""
    from lake.ingest import ingest
    from lake.steward import list_quarantine
    from tests.series import ct_series

    folder = tmp_path / "refused"
    folder.mkdir()
    for i, ds in enumerate(ct_series(count, patient_id=patient_id, patient_name=patient_name)):
        path = folder / f"{i}.dcm"
        ds.save_as(path, enforce_file_format=True)
        path.write_bytes(path.read_bytes()[:-4000])  # truncated pixel data
    before = {e.id for e in list_quarantine(portal.lake) if e.sealed}
    ingest(portal.lake, [str(folder)], portal.lake.secret(portal.web.vault), scheduler="sync")
    refused = [e for e in list_quarantine(portal.lake) if e.sealed and e.id not in before]
    assert len(refused) == count
    return refused


def test_quarantine_review_releases_and_purges_without_showing_originals(
    portal: PortalLake, server: str, tmp_path: Path
) -> None:
    from lake.steward import list_quarantine

    refused = _quarantined(portal, tmp_path, 2, "PAT-Q", "Doe^Quentin")
    boss = sign_in(server, "boss", portal.passwords["boss"])
    page = boss.get("/portal/steward/quarantine")
    assert page.status_code == 200 and refused[0].id[:16] in page.text
    assert "PAT-Q" not in page.text and "Quentin" not in page.text
    csrf = csrf_of(page.text)
    kept = boss.post(f"/portal/steward/quarantine/{refused[0].id}",
                     data={"csrf": csrf, "action": "release", "profile": "basic"})
    assert kept.status_code == 200 and "quarantined" in kept.text  # still truncated
    gone = boss.post(f"/portal/steward/quarantine/{refused[1].id}",
                     data={"csrf": csrf, "action": "purge"})
    assert gone.status_code == 200 and "purged" in gone.text
    assert {e.id for e in list_quarantine(portal.lake)} >= {refused[0].id}
    assert refused[1].id not in {e.id for e in list_quarantine(portal.lake)}
    forged = boss.post(f"/portal/steward/quarantine/{refused[0].id}", data={"action": "purge"})
    assert forged.status_code == 403
    assert "Quentin" not in kept.text + gone.text


def test_concurrent_purges_do_not_freeze_the_server(
    portal: PortalLake, server: str, tmp_path: Path
) -> None:
    """Review F10: the purge held the portal's catalog lock on the event loop across an
    await, so a second purge blocked the loop (and every request) for good."""
    from concurrent.futures import ThreadPoolExecutor

    from lake.steward import list_quarantine

    refused = _quarantined(portal, tmp_path, 4, "PAT-P", "Doe^Purge")
    stewards = [sign_in(server, "boss", portal.passwords["boss"]) for _ in refused]
    csrfs = [csrf_of(c.get("/portal/steward/quarantine").text) for c in stewards]

    def purge(i: int) -> int:
        return stewards[i].post(f"/portal/steward/quarantine/{refused[i].id}",
                                data={"csrf": csrfs[i], "action": "purge"},
                                timeout=30).status_code

    with ThreadPoolExecutor(len(refused)) as pool:
        statuses = list(pool.map(purge, range(len(refused))))
    assert statuses == [200] * len(refused)  # before: every POST timed out
    assert httpx.get(server + "/portal/signin", timeout=60).status_code == 200
    assert not {e.id for e in refused} & {e.id for e in list_quarantine(portal.lake)}


def test_a_session_sees_dicomweb_within_its_scope(portal: PortalLake, server: str) -> None:
    """Thumbnails and the viewer read DICOMweb with the session: its scope applies."""
    student = sign_in(server, "stu-t", portal.passwords["stu-t"])
    studies = student.get("/dicomweb/studies")
    assert studies.status_code == 200
    teach, other = portal.web.uids["teach"], portal.web.uids["a"]
    assert teach[0] in studies.text and other[0] not in studies.text
    assert student.get(f"/dicomweb/studies/{teach[0]}/series/{teach[1]}/thumbnail"
                       ).status_code == 200
    assert student.get(f"/dicomweb/studies/{other[0]}/metadata").status_code == 404
    viewer = student.get(f"/viewer?StudyInstanceUIDs={teach[0]}")
    assert viewer.status_code == 303
    assert "lake_token" not in viewer.headers.get("set-cookie", "")  # no token in play


def test_a_steward_sets_a_password_and_the_old_sessions_end(portal: PortalLake, server: str
                                                           ) -> None:
    from lake.access import add_user

    add_user(portal.lake, "changer", "student", "first-password-1")
    old = sign_in(server, "changer", "first-password-1")
    assert old.get("/portal/teaching").status_code == 200
    boss = sign_in(server, "boss", portal.passwords["boss"])
    csrf = csrf_of(boss.get("/portal/steward/users").text)
    done = boss.post("/portal/steward/users/changer/password",
                     data={"csrf": csrf, "password": "second-password-2"})
    assert done.status_code == 303
    assert old.get("/portal/teaching").status_code == 303  # signed out
    assert sign_in(server, "changer", "second-password-2").get("/portal/teaching"
                                                               ).status_code == 200


def test_a_student_sees_what_the_teaching_profile_keeps(tmp_path: Path) -> None:
    """Issue 12.2 under the built-in ``teaching`` profile itself (the only profile a teaching
    set may hold): a case shows the patient's sex, age and weight, the body part and the
    descriptions that name no one, and nothing that identifies."""
    import lake
    from lake.access import add_user, mark_teaching_set
    from lake.ingest import ingest
    from tests.series import ct_series
    from tests.web_peers import WebLake

    lk = lake.init(tmp_path / "lake", vault=tmp_path / "vault")
    folder = tmp_path / "in"
    folder.mkdir()
    for i, ds in enumerate(ct_series(3, patient_id="TKN-ID-77", patient_name="Smithers^Quill")):
        ds.PatientSex, ds.PatientAge, ds.PatientWeight = "M", "061Y", 82
        ds.BodyPartExamined = "CHEST"
        ds.StudyDescription = "CT THORAX WITH CONTRAST"
        ds.SeriesDescription = "AXIAL LUNG Smithers"
        ds.save_as(folder / f"{i}.dcm", enforce_file_format=True)
    ingest(lk, [str(folder)], lk.secret(tmp_path / "vault"), profile="teaching",
           scheduler="sync")
    lk.refresh()
    lk.create_cohort("anatomy", "SELECT SeriesInstanceUID FROM series")
    mark_teaching_set(lk, "anatomy")
    password = "a-student-password-1"
    add_user(lk, "pupil", "student", password)
    with serving(WebLake(lk, tmp_path / "vault")) as (running, _http):
        student = sign_in(running.url, "pupil", password)
        page = student.get("/portal/sets/anatomy")
    assert page.status_code == 200
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", page.text))
    assert "Sex M · age 061Y" in text
    assert "82" in text  # the weight
    assert "CT · CHEST" in text
    assert "Study: CT THORAX WITH CONTRAST" in text
    assert "AXIAL LUNG" in text  # the description, cleaned of the name
    assert "No patient characteristics retained" not in text
    for planted in ("Smithers", "Quill", "TKN-ID-77"):
        assert planted not in page.text
