"""The same lake on a real S3-compatible server (moto in server mode, its own process, loopback)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

import lake
from tests.series import write_ct_series

MOTO = Path(sys.executable).with_name("moto_server")
LAKE = str(Path(sys.executable).with_name("lake"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    if not MOTO.exists():
        pytest.skip("moto_server is not installed")
    port = _free_port()
    proc = subprocess.Popen(
        [str(MOTO), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90  # the first start on a fresh machine imports a lot
    while True:
        try:
            urllib.request.urlopen(endpoint, timeout=2).read()  # moto answers GET / when ready
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail("moto_server did not start on loopback")
            time.sleep(0.2)
    yield endpoint
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def s3_env(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": s3_endpoint,
        "AWS_ALLOW_HTTP": "true",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    # fsspec caches filesystem instances by their arguments, not the environment: an S3
    # filesystem made for another test module's server would point at a dead endpoint.
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    import boto3

    bucket = f"lake-{os.getpid()}-{time.monotonic_ns()}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    env["BUCKET"] = bucket
    return env


def test_lake_on_s3_end_to_end(s3_env: dict[str, str], tmp_path: Path) -> None:
    root = f"s3://{s3_env['BUCKET']}/lake"
    vault = tmp_path / "vault"
    lk = lake.init(root, vault=vault)
    folder = tmp_path / "ct"
    write_ct_series(folder, 8)
    summary = lk.ingest([str(folder)], vault=vault, scheduler="sync")
    assert summary.ingested == 8
    again = lk.ingest([str(folder)], vault=vault, scheduler="sync")
    assert again.ingested == 0 and again.blobs_written == 0
    assert lk.sql("SELECT count(DISTINCT pixel_hash) FROM instances").fetchall() == [(8,)]
    import boto3

    keys = [
        o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket=s3_env["BUCKET"])["Contents"]
    ]
    assert any(k.startswith("lake/blobs/sha256/") for k in keys)
    assert any(k.startswith("lake/tables/instances/_delta_log/") for k in keys)
    assert lk.verify().ok
    assert lake.open(root).info().instances == 8


def test_a_lake_on_s3_answers_several_threads_at_once(
    s3_env: dict[str, str], tmp_path: Path
) -> None:
    """A remote lake's tables are Arrow data registered on a connection: each thread's
    connection (lake/catalog/_query.py, Catalog.connection) registers them too."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    root = f"s3://{s3_env['BUCKET']}/lake"
    vault = tmp_path / "vault"
    lk = lake.init(root, vault=vault)
    write_ct_series(tmp_path / "ct", 4)
    lk.ingest([str(tmp_path / "ct")], vault=vault, scheduler="sync")
    queries = ["SELECT count(*) FROM instances", "SELECT instance_count FROM series",
               "SELECT count(*) FROM batches", "SELECT NumberOfStudyRelatedInstances FROM studies"]
    expected = [lk.sql(q).fetchall() for q in queries]
    assert expected == [[(4,)], [(4,)], [(1,)], [(4,)]]
    lk.refresh()
    start = threading.Barrier(4)

    def work(offset: int) -> list[object]:
        start.wait()
        return [lk.sql(queries[(offset + i) % 4]).fetchall() for i in range(8)]

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(work, range(4)))
    # (was: "connection is busy"; a thread's own connection without the Arrow data: "Table
    # with name instances_delta_arrow does not exist")
    assert answers == [[expected[(t + i) % 4] for i in range(8)] for t in range(4)]


def test_cli_on_s3_with_dask_workers(s3_env: dict[str, str], tmp_path: Path) -> None:
    env = dict(
        os.environ,
        **{k: v for k, v in s3_env.items() if k != "BUCKET"},
        LAKE_ROOT=f"s3://{s3_env['BUCKET']}/lake",
        LAKE_VAULT=str(tmp_path / "vault"),
    )
    folder = tmp_path / "ct"
    write_ct_series(folder, 6)
    shutil.copy(folder / "slice0000.dcm", folder / "copy.dcm")  # a duplicate instance
    for args in (
        ["init"],
        ["ingest", "-q", "--scheduler", "processes", "--workers", "2", str(folder)],
    ):
        proc = subprocess.run([LAKE, *args], env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
    proc = subprocess.run(
        [LAKE, "sql", "SELECT count(*) AS n FROM instances", "-f", "csv"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.stdout.split() == ['"n"', "6"]
