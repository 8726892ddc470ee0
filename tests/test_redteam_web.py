"""Red-team findings (web): regression tests of problems fixed on main.

Each test reproduces one finding of a red-team review; it failed before the fix.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from lake.web import WebServer
from lake.web._multipart import MalformedMultipartError, MultipartReader
from tests.web_peers import WebLake, build_web_lake, serving


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> WebLake:
    return build_web_lake(tmp_path_factory.mktemp("redteam-web"), slices=2)


@pytest.fixture(scope="module")
def live(web: WebLake) -> Iterator[tuple[WebServer, httpx.Client]]:
    with serving(web) as pair:
        yield pair


def _series_seen(client: httpx.Client, token: str) -> set[str]:
    found = client.get("/dicomweb/series", headers={"Authorization": f"Bearer {token}"})
    assert found.status_code == 200, found.text
    return {item["0020000E"]["Value"][0] for item in found.json()}


def test_a_replaced_cohort_scope_applies_to_tokens_at_once(
    web: WebLake, live: tuple[WebServer, httpx.Client]
) -> None:
    """Red-team finding, now a regression test:
    ``lake cohort create NAME --replace`` at the same catalog version is ignored by
    a running server: a token scoped to NAME keeps seeing the cohort's *old* members.

    lake.web._views.Views caches scoped snapshots by (cohort name, catalog version); a
    redefinition at the same version has the same key, so the stale snapshot is served
    (until 8 other scopes evict it or the server restarts). A steward who narrows a cohort
    (a series that must not be shared) is not obeyed.
    """
    _server, client = live
    token = web.tokens["researcher:a"]
    series_a, series_b = web.uids["a"][1], web.uids["b"][1]

    def define(series: str) -> int:
        web.lake.create_cohort(
            "a",
            f"SELECT SeriesInstanceUID FROM instances WHERE SeriesInstanceUID = '{series}'",
            replace=True,
        )
        web.lake.refresh()
        return int(web.lake.cohort("a").catalog_version)

    first = define(series_a)  # the same members, frozen at the current catalog version
    assert _series_seen(client, token) == {series_a}  # the scope is now cached
    assert define(series_b) == first  # redefined, at the same catalog version
    seen = _series_seen(client, token)
    assert seen == {series_b}, (
        "the token still sees the cohort's old member series" if series_a in seen else seen
    )


@pytest.mark.slow
def test_a_connection_that_never_sends_its_request_is_closed(
    live: tuple[WebServer, httpx.Client],
) -> None:
    """Red-team finding, now a regression test:
    the web server never closes a connection that does not finish its request
    headers, so idle connections pile up without bound.

    Measured: 20,000 such connections (two client processes) exhaust the server's file
    descriptors; /healthz then times out for everyone, and asyncio logs "socket.accept()
    out of system resource" with a traceback ~9,000 times a second (376,831 lines in 40 s).
    uvicorn's h11 protocol starts no timer before the first request (timeout_keep_alive
    applies only between requests); lake.web._server passes no limit_concurrency either.
    The DICOM server has --request-timeout for exactly this.
    """
    server, _client = live
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # headers never finished
        sock.settimeout(30)
        try:
            answer = sock.recv(100)
        except TimeoutError:
            answer = None
    assert answer is not None, "the server still holds an unfinished request after 30 s"


def test_stow_multipart_reader_bounds_whitespace_after_a_boundary() -> None:
    """Red-team finding, now a regression test:
    transport padding after a multipart delimiter is buffered without bound, and
    every chunk re-scans all of it (quadratic CPU, on the event loop: MultipartReader.feed
    runs inside the async STOW handler).

    Measured: 16 MiB of spaces after ``--BB`` took 11 s to feed, the next 16 MiB 35 s, with
    all 32 MiB held in the reader; a request may be 4 GiB (max_request_bytes).
    """
    reader = MultipartReader("BB", 1 << 30)
    reader.feed(b"--BB")
    piece = b" " * (1 << 16)
    try:
        for _ in range(64):  # 4 MiB
            reader.feed(piece)
    except MalformedMultipartError:
        return  # refusing absurd padding is a fine answer
    held = len(reader._buffer)
    assert held <= 1 << 16, f"{held} bytes of padding held by the multipart reader"


def test_viewer_path_traversal_holds(web: WebLake, tmp_path: Path) -> None:
    """HELD (kept as a regression guard): encoded and raw '..' below /viewer reach nothing."""
    viewer = tmp_path / "viewer"
    viewer.mkdir()
    (viewer / "index.html").write_text("<html>viewer</html>")
    (viewer / "imaging-lake-viewer.txt").write_text("x")
    (viewer / "tables").symlink_to(Path(web.lake.location.path) / "tables")
    with serving(web, viewer_dir=viewer) as (server, _client):
        for path in (
            "/viewer/..%2flake.json",
            "/viewer/%2e%2e/lake.json",
            "/viewer/tables/instances/_delta_log/00000000000000000000.json",
        ):
            with socket.create_connection(("127.0.0.1", server.port)) as sock:
                sock.sendall(
                    f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
                )
                data = b""
                while chunk := sock.recv(65536):
                    data += chunk
            assert b"format" not in data and b"commitInfo" not in data, path
