"""``lake demo`` ends with the portal: a teaching set, an account per role, how to open it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import lake
from lake.web import WebConfig, WebServer
from tests.portal_peers import sign_in

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def test_the_demo_prints_how_to_open_the_portal(tmp_path: Path) -> None:
    root, vault = tmp_path / "lake", tmp_path / "vault"
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "demo", "--lake", str(root), "--vault",
         str(vault), "--scheduler", "sync"],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    assert f"lake serve web --lake {root} --vault {vault}" in proc.stdout
    assert "http://127.0.0.1:8080/portal/" in proc.stdout
    accounts = dict(re.findall(r"^\s+(?:steward|researcher|student)\s+(\S+)\s+(\S+)$",
                               proc.stdout, flags=re.M))
    assert set(accounts) == {"demo-steward", "demo-researcher", "demo-student"}
    lk = lake.open(str(root))
    with WebServer(lk, WebConfig(port=0), lk.secret(str(vault))) as server:
        student = sign_in(server.url, "demo-student", accounts["demo-student"])
        page = student.get("/portal/sets/demo-teaching")
        assert page.status_code == 200
        assert page.text.count("Download case 00") == 3
        researcher = sign_in(server.url, "demo-researcher", accounts["demo-researcher"])
        assert researcher.get("/portal/cohorts/demo-ct-mr").status_code == 200
        steward = sign_in(server.url, "demo-steward", accounts["demo-steward"])
        assert steward.get("/portal/steward/quarantine").status_code == 200
    # a second run keeps the lake and gives new passwords
    again = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "demo", "--lake", str(root), "--vault",
         str(vault), "--scheduler", "sync"],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )
    assert again.returncode == 0, again.stderr
    assert accounts["demo-student"] not in again.stdout
