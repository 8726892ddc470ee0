"""The portal's zip download: sent from the file opened before the check, by public
Starlette API only, with single-range ``Range`` support (review s20 S5, S12)."""

from __future__ import annotations

import io
import socket
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any, BinaryIO

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from lake.web.portal import _exports


def _zip_bytes(text: str) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("a.txt", text * 50)
    return buffer.getvalue()


@contextmanager
def _client(respond: Callable[[], Response]) -> Iterator[httpx.Client]:
    """A live uvicorn on a free loopback port serving ``respond()`` at ``/z``."""
    async def endpoint(request: Request) -> Response:
        return respond()

    app = Starlette(routes=[Route("/z", endpoint)])
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]})
    thread.start()
    try:
        while not server.started and thread.is_alive():
            time.sleep(0.01)
        port = sock.getsockname()[1]
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            yield client
    finally:
        server.should_exit = True
        thread.join()
        sock.close()


def _job(path: Path) -> Any:
    return SimpleNamespace(result=path, available=True)


def test_the_zip_is_sent_from_the_open_file_even_once_its_path_names_another(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """S5: with a Starlette whose FileResponse opens the path itself (1.7.0, inside the
    declared range), the old override was never called and this sent the new file."""
    path = tmp_path / "cohort-nifti.zip"
    first, other = _zip_bytes("first"), _zip_bytes("other file")
    monkeypatch.setattr(_exports, "servable", lambda lk, job: True)

    def respond_then_replace() -> Response:
        path.write_bytes(first)
        response = _exports.served_zip(None, _job(path))  # type: ignore[arg-type]
        assert response is not None
        path.unlink()  # lake forget, once the zip is open
        path.write_bytes(other)
        return response

    with _client(respond_then_replace) as client:
        whole = client.get("/z")
        assert whole.status_code == 200 and whole.content == first
        assert whole.headers["content-type"] == "application/zip"
        assert whole.headers["content-disposition"] == 'attachment; filename="cohort-nifti.zip"'
        part = client.get("/z", headers={"Range": "bytes=0-9"})
        assert part.status_code == 206 and part.content == first[:10]


def _opened(tmp_path: Path, data: bytes) -> tuple[list[BinaryIO], Callable[[], Response]]:
    path = tmp_path / "x.zip"
    path.write_bytes(data)
    opened: list[BinaryIO] = []

    def respond() -> Response:
        opened.append(path.open("rb"))
        return _exports.OpenedZipResponse(opened[-1], path.name)

    return opened, respond


def test_ranges_one_range_is_206_several_or_stale_if_range_the_whole_zip(
    tmp_path: Path
) -> None:
    data = _zip_bytes("ranges")
    size = len(data)
    opened, respond = _opened(tmp_path, data)
    with _client(respond) as client:
        etag = client.get("/z").headers["etag"]
        for header, status, body, sent in [
            ("bytes=2-5", 206, data[2:6], f"bytes 2-5/{size}"),
            ("bytes=3-", 206, data[3:], f"bytes 3-{size - 1}/{size}"),
            ("bytes=-4", 206, data[-4:], f"bytes {size - 4}-{size - 1}/{size}"),
            (f"bytes=10-{size * 2}", 206, data[10:], f"bytes 10-{size - 1}/{size}"),
            ("bytes=0-1,4-5", 200, data, None),     # several ranges: the whole zip
            ("bytes=x-y", 200, data, None),         # malformed: ignored
            ("items=0-3", 200, data, None),         # another unit: ignored
            ("bytes=5-2", 200, data, None),         # last before first: ignored
        ]:
            got = client.get("/z", headers={"Range": header})
            assert (got.status_code, got.content) == (status, body), header
            assert got.headers["content-length"] == str(len(body))
            assert got.headers.get("content-range") == sent, header
        for header in (f"bytes={size}-", "bytes=-0"):
            got = client.get("/z", headers={"Range": header})
            assert got.status_code == 416 and got.headers["content-range"] == f"bytes */{size}"
        fresh = client.get("/z", headers={"Range": "bytes=0-3", "If-Range": etag})
        assert (fresh.status_code, fresh.content) == (206, data[:4])
        stale = client.get("/z", headers={"Range": "bytes=0-3", "If-Range": '"other"'})
        assert (stale.status_code, stale.content) == (200, data)
        head = client.head("/z")
        assert head.status_code == 200 and head.content == b""
        assert head.headers["content-length"] == str(size)
        assert head.headers["accept-ranges"] == "bytes"
    assert opened and all(f.closed for f in opened)  # every response closed its file


def test_a_response_not_sent_closes_its_file(tmp_path: Path) -> None:
    opened, respond = _opened(tmp_path, b"PK")
    response = respond()
    assert isinstance(response, _exports.OpenedZipResponse)
    response.close()
    assert opened[0].closed


def test_served_zip_closes_the_zip_when_the_check_raises(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """S12: a CatalogError/OSError from servable() left the opened zip to the GC."""
    path = tmp_path / "x.zip"
    path.write_bytes(b"PK")
    opened: list[BinaryIO] = []

    class Result:
        name = path.name

        def open(self, mode: str) -> BinaryIO:
            opened.append(path.open("rb"))
            return opened[-1]

    def broken(lk: object, job: object) -> bool:
        raise OSError("the erasures table cannot be read")

    monkeypatch.setattr(_exports, "servable", broken)
    with pytest.raises(OSError, match="erasures"):
        _exports.served_zip(None, SimpleNamespace(result=Result()))  # type: ignore[arg-type]
    assert len(opened) == 1 and opened[0].closed


@pytest.mark.parametrize("value", ["bytes=\u00b2-", "bytes=0-\u00b9", "bytes=-\u00b3", "bytes=\u0663-"])
def test_a_range_of_digits_int_refuses_is_ignored(value: str) -> None:
    # Superscript digits (Latin-1 bytes 0xB2, 0xB3, 0xB9) and other Unicode digits pass
    # str.isdigit but not int(): such a Range is ignored (the whole zip), never a 500.
    from lake.web.portal._exports import _one_range

    assert _one_range(value, 100) is None
    assert _one_range("bytes=2-", 100) == (2, 100)
