"""Re-ingest on S3 does not upload pixel blobs again (review follow-up): a reused blob old
enough to need its time refreshed for gc's grace is copied onto itself by the server
(metadata only), on a real S3-compatible server (moto_server, its own process)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

import lake
from lake.steward import gc
from lake.store import _fs, modified_at
from tests.series import write_ct_series
from tests.test_s3 import s3_endpoint, s3_env  # noqa: F401 - the moto server and bucket


def test_a_reingest_refreshes_old_blobs_without_uploading_them(
    s3_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,  # noqa: F811
) -> None:
    root = f"s3://{s3_env['BUCKET']}/lake"
    vault = tmp_path / "vault"
    lk = lake.init(root, vault=vault)
    folder = tmp_path / "ct"
    write_ct_series(folder, 6)
    assert lk.ingest([str(folder)], vault=vault, scheduler="sync").ingested == 6
    lk.refresh()
    blobs = [h for (h,) in lk.sql("SELECT pixel_hash FROM instances").fetchall()]
    stored = {h: lk.blobs.get(h) for h in blobs}
    fs = lk.location.fs
    before = {h: modified_at(fs.info(lk.blobs.path_of(h))) for h in blobs}

    # Every stored blob counts as old enough to refresh (S3 times have 1 s resolution).
    monkeypatch.setattr(_fs, "REFRESH_AFTER", 0.0)
    time.sleep(1.5)
    sent: list[tuple[str, str, int, bool]] = []

    def count(request: Any, **_kwargs: Any) -> None:
        body = request.body
        size = len(body) if isinstance(body, bytes | bytearray) else int(
            request.headers.get("Content-Length", 0) or 0)
        sent.append((request.method, request.url, size,
                     "x-amz-copy-source" in {k.lower() for k in request.headers}))

    fs.ls(s3_env["BUCKET"])  # the client exists from here on
    fs.s3.meta.events.register("before-send.s3", count)
    try:
        again = lk.ingest([str(folder)], vault=vault, scheduler="sync")
    finally:
        fs.s3.meta.events.unregister("before-send.s3", count)
    assert again.ingested == 0 and again.blobs_written == 0
    to_blobs = [s for s in sent if s[0] == "PUT" and "/lake/blobs/" in s[1]]
    assert len(to_blobs) == 6  # one refresh each ...
    assert all(copy and size == 0 for _m, _u, size, copy in to_blobs), to_blobs  # ... no body
    for h in blobs:  # their times count from the reuse (gc's grace), their bytes unchanged
        assert modified_at(fs.info(lk.blobs.path_of(h))) > before[h]
        assert lk.blobs.get(h) == stored[h]
    assert gc(lk).blobs == [] and lk.verify().ok


def _old_orphan(
    s3_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,  # noqa: F811
) -> tuple[Any, str]:
    lk = lake.init(f"s3://{s3_env['BUCKET']}/lake", vault=tmp_path / "vault")
    fs = lk.location.fs
    path = f"{s3_env['BUCKET']}/lake/blobs/ab/orphan"
    fs.pipe_file(path, b"x" * 100)
    monkeypatch.setattr(_fs, "REFRESH_AFTER", -3600.0)  # every stored file counts as old
    return fs, path


def test_a_reused_blob_that_gc_removes_before_its_refresh_is_stored_again(
    s3_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,  # noqa: F811
) -> None:
    """Review s19 S3: gc's delete landing between the reuse check and the server-side copy
    made the copy fail (FileNotFoundError) and the instance with it; its bytes are in hand."""
    fs, path = _old_orphan(s3_env, tmp_path, monkeypatch)
    real_info = fs.info

    def info_then_gc(p: str, **kw: Any) -> Any:
        found = real_info(p, **kw)
        fs.rm_file(p)  # gc's delete lands right after the reuse check
        fs.invalidate_cache(p)
        return found

    monkeypatch.setattr(fs, "info", info_then_gc)
    assert _fs.reused(fs, path, lambda: b"x" * 100)
    monkeypatch.setattr(fs, "info", real_info)
    fs.invalidate_cache(path)
    assert fs.cat_file(path) == b"x" * 100


def test_an_object_over_the_copy_limit_is_refreshed_by_writing_it(
    s3_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,  # noqa: F811
) -> None:
    """CopyObject refuses sources over 5 GiB: such an object is written again instead."""
    fs, path = _old_orphan(s3_env, tmp_path, monkeypatch)
    monkeypatch.setattr(_fs, "S3_COPY_LIMIT", 99)  # the 100-byte orphan is "over the limit"
    sent: list[tuple[str, bool]] = []

    def count(request: Any, **_kwargs: Any) -> None:
        sent.append((request.method, "x-amz-copy-source" in {k.lower() for k in request.headers}))

    fs.s3.meta.events.register("before-send.s3", count)
    try:
        assert _fs.reused(fs, path, lambda: b"y" * 100)
    finally:
        fs.s3.meta.events.unregister("before-send.s3", count)
    assert ("PUT", True) not in sent and ("PUT", False) in sent  # written, not copied
    fs.invalidate_cache(path)
    assert fs.cat_file(path) == b"y" * 100
