"""STOW-RS answers once each instance is durable and de-identified; the catalog commit follows.

``lake serve web`` as its own process: a STOW-RS response does not wait for the catalog
commit, so another process (``lake sql``) sees the instances once the committer's
``commit_interval`` has passed, or as soon as a read through the same server committed them
(every read route commits what is pending first). A server killed (SIGKILL) after the
response and before any commit loses nothing: the restarted server commits the instances
from its receipt journal, exactly once.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

import lake
from lake.access import create_token
from tests.net_peers import stop_server
from tests.series import write_ct_series

LAKE = [sys.executable, "-m", "pipelines.cli"]
REPO = Path(__file__).resolve().parents[1]
PARTS = 'multipart/related; type="application/dicom"; boundary=XyZ'


@pytest.fixture
def stowed(tmp_path: Path) -> tuple[lake.Lake, Path, str, list[bytes]]:
    """A new lake, its vault, a steward token and four CT instances to store."""
    lk = lake.init(tmp_path / "lake", vault=tmp_path / "vault")
    _, token = create_token(lk, "steward", note="stow commit test")
    folder = tmp_path / "ct"
    write_ct_series(folder, 4, patient_id="STOW-COMMIT", patient_name="Commit^Later")
    return lk, tmp_path / "vault", token, [p.read_bytes() for p in sorted(folder.glob("*.dcm"))]


def _web_settings(lk: lake.Lake, **web: object) -> None:
    config = Path(lk.root) / "lake.json"
    settings = json.loads(config.read_text(encoding="utf-8"))
    config.write_text(json.dumps({**settings, "web": web}), encoding="utf-8")


@contextmanager
def _server(lk: lake.Lake, vault: Path) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """``lake serve web`` on a free port, and its address; killed if still running after."""
    proc = subprocess.Popen(
        [*LAKE, "serve", "web", "--lake", lk.root, "--port", "0", "--workers", "0", "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
        env=dict(os.environ, LAKE_VAULT=str(vault)),
    )
    try:
        assert proc.stderr is not None
        url = None
        while url is None:
            line = proc.stderr.readline()
            found = re.search(r"serving (https?://[^/\s]+)/dicomweb", line)
            url = found.group(1) if found else None
            if not line and proc.poll() is not None:
                raise AssertionError("the server did not start")
        yield proc, url
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=60)


def _stow(url: str, token: str, files: list[bytes]) -> set[str]:
    body = b"".join(b"--XyZ\r\nContent-Type: application/dicom\r\n\r\n" + f + b"\r\n"
                    for f in files) + b"--XyZ--\r\n"
    response = httpx.post(url + "/dicomweb/studies", content=body, timeout=120,
                          headers={"Authorization": f"Bearer {token}", "Content-Type": PARTS})
    assert response.status_code == 200, response.text
    return {item["00081155"]["Value"][0] for item in response.json()["00081199"]["Value"]}


def _in_catalog(lk: lake.Lake, sops: set[str]) -> int:
    """How many of ``sops`` another process (``lake sql``) finds in the catalog."""
    listed = "', '".join(sorted(sops))
    done = subprocess.run(
        [*LAKE, "sql", "--lake", lk.root, "--format", "json",
         f"SELECT count(*) AS n FROM instances WHERE SOPInstanceUID IN ('{listed}')"],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )
    assert done.returncode == 0, done.stderr
    return int(json.loads(done.stdout)[0]["n"])


def test_another_process_sees_stored_instances_after_the_commit_interval(
    stowed: tuple[lake.Lake, Path, str, list[bytes]],
) -> None:
    lk, vault, token, files = stowed
    _web_settings(lk, commit_interval=0.5)
    with _server(lk, vault) as (_proc, url):
        sops = _stow(url, token, files)
        assert len(sops) == len(files)
        # No read through the server: the committer alone commits them, within its interval
        # (polled; the deadline only keeps a broken committer from hanging the test).
        deadline = time.monotonic() + 120
        while _in_catalog(lk, sops) < len(sops) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _in_catalog(lk, sops) == len(sops)


def test_a_read_through_the_server_commits_what_the_response_acknowledged(
    stowed: tuple[lake.Lake, Path, str, list[bytes]],
) -> None:
    lk, vault, token, files = stowed
    _web_settings(lk, commit_interval=3600)  # the committer never runs within the test
    with _server(lk, vault) as (_proc, url):
        sops = _stow(url, token, files)
        assert _in_catalog(lk, sops) == 0  # answered before the commit
        found = httpx.get(url + "/dicomweb/instances", timeout=60,
                          headers={"Authorization": f"Bearer {token}"})
        assert found.status_code == 200
        assert {i["00080018"]["Value"][0] for i in found.json()} == sops
        assert _in_catalog(lk, sops) == len(sops)  # the read committed them, for everyone


def test_a_server_killed_after_the_response_commits_on_restart_exactly_once(
    stowed: tuple[lake.Lake, Path, str, list[bytes]],
) -> None:
    lk, vault, token, files = stowed
    _web_settings(lk, commit_interval=3600)
    with _server(lk, vault) as (proc, url):
        sops = _stow(url, token, files)
        proc.send_signal(signal.SIGKILL)  # after the response, before any commit
        assert proc.wait(timeout=60) == -signal.SIGKILL
    assert _in_catalog(lk, sops) == 0
    with _server(lk, vault) as (proc, url):  # its start commits what the journal holds
        assert _in_catalog(lk, sops) == len(sops)
        assert _stow(url, token, files) == sops  # stored again: the same instances
        stop_server(proc)
        assert proc.returncode == 0
    total = subprocess.run(
        [*LAKE, "sql", "--lake", lk.root, "--format", "json",
         "SELECT count(*) AS n, count(DISTINCT SOPInstanceUID) AS d FROM instances"],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )
    assert total.returncode == 0, total.stderr
    assert json.loads(total.stdout) == [{"n": len(files), "d": len(files)}]  # exactly once
    assert not any((Path(lk.root) / "spool" / "stow").rglob("*.journal"))
