"""The content-addressed blob store."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lake import BlobNotFoundError, IntegrityError
from lake.store import BlobStore, atomic_write, blob_key, resolve


@pytest.fixture
def store(tmp_path: Path) -> BlobStore:
    return BlobStore(resolve(tmp_path / "lake"))


@settings(max_examples=60, deadline=None)
@given(data=st.binary(max_size=4096))
def test_put_get_round_trip(tmp_path_factory: pytest.TempPathFactory, data: bytes) -> None:
    store = BlobStore(resolve(tmp_path_factory.mktemp("blobs")))
    key = store.put(data)
    assert key == "sha256:" + hashlib.sha256(data).hexdigest()
    assert store.get(key) == data
    assert store.put(data) == key  # idempotent
    assert list(store.keys()) == [key]
    store.check(key)


@settings(max_examples=30, deadline=None)
@given(chunks=st.lists(st.binary(min_size=1, max_size=64), min_size=1, max_size=20))
def test_identical_content_is_stored_once(
    tmp_path_factory: pytest.TempPathFactory, chunks: list[bytes]
) -> None:
    store = BlobStore(resolve(tmp_path_factory.mktemp("blobs")))
    keys = [store.put(c) for c in chunks + chunks]
    assert set(store.keys()) == set(keys)
    assert len(set(store.keys())) == len(set(chunks))


def test_fan_out_layout(store: BlobStore) -> None:
    key = store.put(b"pixels")
    hexdigest = key.split(":")[1]
    path = Path(store.path_of(key))
    assert path.parts[-4:] == ("sha256", hexdigest[:2], hexdigest[2:4], hexdigest)
    assert path.read_bytes() == b"pixels"


def test_put_new_reports_whether_written(store: BlobStore) -> None:
    assert store.put_new(b"a")[1] is True
    assert store.put_new(b"a")[1] is False


def test_missing_blob_raises_with_advice(store: BlobStore) -> None:
    with pytest.raises(BlobNotFoundError, match=r"run Lake\.verify\(\)"):
        store.get(blob_key(b"never stored"))


def test_malformed_key_is_rejected(store: BlobStore) -> None:
    with pytest.raises(BlobNotFoundError, match="not a blob key"):
        store.get("md5:abc")
    with pytest.raises(BlobNotFoundError):
        store.path_of("sha256:../../etc/passwd")


def test_check_detects_corruption(store: BlobStore) -> None:
    key = store.put(b"original pixel data")
    Path(store.path_of(key)).write_bytes(b"flipped pixel data!")
    with pytest.raises(IntegrityError, match="corrupt"):
        store.check(key)


def test_atomic_write_leaves_no_temp_files_and_never_partial(tmp_path: Path) -> None:
    fs = resolve(tmp_path).fs
    target = str(tmp_path / "a" / "b")
    atomic_write(fs, target, b"x" * 1000)
    atomic_write(fs, target, b"y" * 10)
    assert Path(target).read_bytes() == b"y" * 10
    assert os.listdir(tmp_path / "a") == ["b"]


def test_atomic_write_failure_keeps_old_content(tmp_path: Path) -> None:
    fs = resolve(tmp_path).fs
    target = tmp_path / "blob"
    atomic_write(fs, str(target), b"old")

    with pytest.raises(TypeError):
        atomic_write(fs, str(target), object())  # type: ignore[arg-type]
    assert target.read_bytes() == b"old"
    assert sorted(os.listdir(tmp_path)) == ["blob"]
