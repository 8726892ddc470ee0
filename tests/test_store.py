"""The content-addressed blob store."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lake import BlobNotFoundError, IntegrityError
from lake.store import BlobStore, atomic_write, blob_key, resolve, reused_at, write_at


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


def test_write_at_makes_a_missing_folder_once_and_leaves_no_temp_file(tmp_path: Path) -> None:
    location = resolve(tmp_path)
    target = tmp_path / "a" / "b" / "blob"
    write_at(location, str(target), b"first", fsync=False)  # the folders are made
    write_at(location, str(target), b"second")  # the folder exists: no makedirs
    assert target.read_bytes() == b"second"
    assert os.listdir(target.parent) == ["blob"]
    with pytest.raises(TypeError):
        write_at(location, str(target), object())  # type: ignore[arg-type]
    assert target.read_bytes() == b"second"
    assert os.listdir(target.parent) == ["blob"]


def test_put_new_makes_a_removed_fan_out_folder_again(store: BlobStore) -> None:
    """A blob folder emptied and removed (by gc or by hand) is made again by the next put."""
    key, written = store.put_new(b"pixels", durable=False)
    assert written
    folder = Path(store.path_of(key)).parent
    Path(store.path_of(key)).unlink()
    folder.rmdir()
    folder.parent.rmdir()
    assert store.put_new(b"pixels") == (key, True)
    assert store.get(key) == b"pixels"
    assert os.listdir(folder) == [key.split(":")[1]]


def test_reused_at_touches_a_local_file(tmp_path: Path) -> None:
    location = resolve(tmp_path)
    path = tmp_path / "blob"
    assert reused_at(location, str(path), lambda: b"") is False
    path.write_bytes(b"x")
    os.utime(path, (1_000_000, 1_000_000))
    assert reused_at(location, str(path), lambda: b"") is True
    assert path.stat().st_mtime > 1_000_000 + 3600


_PER_FILE_WORK = """
import json, sys
import lake
from lake.ingest import Ingestor
from lake.ingest._instance import process_bytes
from lake.vault import Secret
ctx = Ingestor(lake.open(sys.argv[1]), Secret(bytes(32)), "basic").context
outcomes = [process_bytes(data, ctx)
            for data in (open(sys.argv[2], "rb").read(), b"DICM" * 64)]
print(json.dumps([type(o).__name__ for o in outcomes]))
print(json.dumps(sorted(sys.modules)))
"""


def test_the_per_file_work_of_a_local_lake_loads_no_fsspec(tmp_path: Path) -> None:
    """A worker stores pixel blobs and sealed originals of a local lake without fsspec
    (issue 14.3: importing it took ~0.05 s of CPU in each worker process)."""
    import subprocess
    import sys

    from pydicom.data import get_testdata_file

    import lake

    lake.init(tmp_path / "lake", vault=tmp_path / "vault")
    proc = subprocess.run(
        [sys.executable, "-c", _PER_FILE_WORK, str(tmp_path / "lake"),
         str(get_testdata_file("CT_small.dcm"))],
        capture_output=True, text=True, check=True,
    )
    kinds, modules = (json.loads(line) for line in proc.stdout.strip().splitlines()[-2:])
    assert kinds == ["Accepted", "Rejected"]  # a blob written, an original sealed
    assert len(list(BlobStore(resolve(tmp_path / "lake")).keys())) == 1
    assert len(os.listdir(tmp_path / "lake" / "quarantine")) == 1
    assert not [m for m in modules if m == "fsspec" or m.startswith("fsspec.")]


def test_a_durable_write_syncs_its_name_and_every_folder_made_for_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """fsync of the file alone leaves its name (and new folders) to the next journal commit
    of the filesystem: after a power loss the file could be gone though written durably."""
    import lake.store._fs as fs_module
    from lake.store import Location, make_folder

    synced: list[str] = []
    real = fs_module.fsync_folder

    def recorded(folder: str | os.PathLike[str]) -> None:
        synced.append(os.fspath(folder))
        real(folder)

    monkeypatch.setattr(fs_module, "fsync_folder", recorded)
    location = Location(str(tmp_path))
    write_at(location, str(tmp_path / "a" / "b" / "f"), b"x")
    assert synced == [str(tmp_path / "a" / "b"), str(tmp_path / "a"), str(tmp_path)]
    synced.clear()
    write_at(location, str(tmp_path / "a" / "b" / "g"), b"y")  # folders exist: its name only
    assert synced == [str(tmp_path / "a" / "b")]
    synced.clear()
    write_at(location, str(tmp_path / "a" / "c" / "h"), b"z", fsync=False)  # flush() syncs
    assert synced == [] and (tmp_path / "a" / "c" / "h").read_bytes() == b"z"
    make_folder(tmp_path / "j" / "k")
    assert synced == [str(tmp_path / "j"), str(tmp_path)] and (tmp_path / "j" / "k").is_dir()


def test_a_folder_another_process_makes_meanwhile_is_synced_in_its_parent(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A blob's fan-out folder made by another writer between this writer's failed open and
    its ``mkdir``: that writer may not have synced the folder's entry yet, so this one does
    before it calls its own file durable (else a power loss could take the file's name)."""
    import lake.store._fs as fs_module
    from lake.store import Location, make_folder

    synced: list[str] = []
    real_sync, real_mkdir = fs_module.fsync_folder, os.mkdir
    raced = str(tmp_path / "a")

    def recorded(folder: str | os.PathLike[str]) -> None:
        synced.append(os.fspath(folder))
        real_sync(folder)

    def other_process_first(path: str | os.PathLike[str], mode: int = 0o777) -> None:
        if os.fspath(path) == raced and not os.path.isdir(raced):
            real_mkdir(path, mode)  # the other writer wins the race
        real_mkdir(path, mode)

    monkeypatch.setattr(fs_module, "fsync_folder", recorded)
    monkeypatch.setattr(os, "mkdir", other_process_first)
    write_at(Location(str(tmp_path)), str(tmp_path / "a" / "f"), b"x")
    assert synced == [raced, str(tmp_path)] and (tmp_path / "a" / "f").read_bytes() == b"x"
    synced.clear()
    make_folder(tmp_path / "a")  # exists: its entry is synced all the same
    assert synced == [str(tmp_path)]
