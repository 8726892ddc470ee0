"""Every front door and the maintenance commands writing one lake at once (issue 16.1: "any
number of ingests, the DICOM receiver, STOW and maintenance commands").

tests/test_concurrent_writers.py runs ingests with compaction, and ingests with the DICOM
receiver and compaction; here STOW-RS ('lake serve web'), C-STORE ('lake serve dicom'), two
file ingests, 'lake compact', 'lake gc' and 'lake vacuum' run at once over overlapping
instances: every instance exactly once, every writer exits 0, verify clean.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

import lake
from lake.access import create_token
from tests.net_peers import dcmtk, free_port, require, stop_server, wait_port
from tests.series import write_ct_series

LAKE = str(Path(sys.executable).with_name("lake"))
MULTIPART = 'multipart/related; type="application/dicom"; boundary=XyZ'

pytestmark = [pytest.mark.network, pytest.mark.slow]


def _web_address(proc: subprocess.Popen[str]) -> str:
    assert proc.stderr is not None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        found = re.search(r"serving (https?://[^/\s]+)/dicomweb", line)
        if found:
            return found.group(1)
        if not line and proc.poll() is not None:
            break
    raise AssertionError("lake serve web did not start")


def test_stow_cstore_ingests_and_maintenance_at_once(
    lk: lake.Lake, lake_root: Path, vault_dir: Path, tmp_path: Path
) -> None:
    require("storescu")
    for s in range(3):
        write_ct_series(tmp_path / "in" / f"s{s}", 8, patient_id=f"DOORS-{s}")
    _, token = create_token(lk, "steward")
    env = dict(os.environ, LAKE_ROOT=str(lake_root), LAKE_VAULT=str(vault_dir))
    port = free_port()
    dicom = subprocess.Popen(
        [LAKE, "serve", "dicom", "--port", str(port), "--commit-every", "3",
         "--commit-interval", "0.5"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    web = subprocess.Popen(
        [LAKE, "serve", "web", "--port", "0"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    others: list[subprocess.Popen[str]] = []
    try:
        wait_port(port, timeout=120)
        url = _web_address(web)
        others = [
            subprocess.Popen(
                [LAKE, "ingest", "-q", "--scheduler", "sync", "--batch-size", str(b),
                 str(tmp_path / "in" / a), str(tmp_path / "in" / c)],
                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            )
            for b, a, c in ((2, "s0", "s1"), (5, "s2", "s0"))
        ]
        for args in (["compact"], ["gc"], ["vacuum", "--retain", "0"]):
            others.append(subprocess.Popen([LAKE, *args], env=env, stdout=subprocess.DEVNULL,
                                           stderr=subprocess.PIPE, text=True))
        stored = dcmtk("storescu", "-aec", "LAKE", "+sd", "+r", "127.0.0.1", str(port),
                       tmp_path / "in" / "s2")
        assert stored.returncode == 0, stored.stderr
        with httpx.Client(base_url=url, timeout=120) as http:
            for path in sorted((tmp_path / "in" / "s1").glob("*.dcm")):  # one STOW each
                body = (b"--XyZ\r\nContent-Type: application/dicom\r\n\r\n" + path.read_bytes()
                        + b"\r\n--XyZ--\r\n")
                response = http.post("/dicomweb/studies", content=body, headers={
                    "Authorization": f"Bearer {token}", "Content-Type": MULTIPART})
                assert response.status_code == 200, response.text[:500]
        for proc in others:
            _, err = proc.communicate(timeout=300)
            assert proc.returncode == 0, (proc.args[1:2], err[-2000:])
    finally:
        for proc in others:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        stopped = [(server, stop_server(server)[1]) for server in (web, dicom)]  # both, then check
        for server, err in stopped:
            assert server.returncode == 0, err[-2000:]
    lk.refresh()
    assert lk.sql(
        "SELECT count(*), count(DISTINCT SOPInstanceUID) FROM instances"
    ).fetchall() == [(24, 24)]
    report = lk.verify()
    assert report.ok and not report.completed_batches and not report.missing_batches, report
