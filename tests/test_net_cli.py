"""``lake serve dicom`` as a process: signals, crash recovery, options, one-line errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import lake
from lake.net import DicomServer, ServerConfig
from lake.net._journal import ReceiptJournal
from tests.net_peers import dcmtk, free_port, require, stop_server, wait_port
from tests.series import write_ct_series

pytestmark = pytest.mark.network

LAKE = str(Path(sys.executable).with_name("lake"))


def _serve(lake_root: Path, vault: Path, port: int, *extra: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAKE_")}
    return subprocess.Popen(
        [LAKE, "serve", "dicom", "--lake", str(lake_root), "--vault", str(vault),
         "--port", str(port), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )


def _count(lake_root: Path) -> int:
    lk = lake.open(lake_root)
    return int(lk.sql("SELECT count(*) FROM instances").fetchall()[0][0])


def _spool_files(lake_root: Path) -> list[Path]:
    return sorted((lake_root / "spool" / "dicom-store").glob("*.json"))


def _journal_files(lake_root: Path) -> list[Path]:
    return sorted((lake_root / "spool" / "dicom-store" / "receipts").glob("*.journal"))


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_cleanly_and_commits_everything(
    lk: lake.Lake, lake_root: Path, vault_dir: Path, tmp_path: Path, signum: int
) -> None:
    require("storescu")
    write_ct_series(tmp_path / "ct", 12)
    port = free_port()
    # nothing is committed while serving: everything must come from the shutdown path
    proc = _serve(lake_root, vault_dir, port, "--commit-every", "100000",
                  "--commit-interval", "225")
    try:
        wait_port(port)
        result = dcmtk("storescu", "-aec", "LAKE", "+sd", "+r", "127.0.0.1", str(port),
                       tmp_path / "ct")
        assert result.returncode == 0, result.stderr
        assert _count(lake_root) == 0
        assert _journal_files(lake_root)  # acknowledged: durable in the receipt journal
    finally:
        _, stderr = stop_server(proc, signum=signum)
    assert proc.returncode == 0, stderr
    assert "12 stored" in stderr
    assert _count(lake_root) == 12
    assert _spool_files(lake_root) == [] and _journal_files(lake_root) == []


def test_crash_loses_nothing_acknowledged(
    lk: lake.Lake, lake_root: Path, vault_dir: Path, tmp_path: Path
) -> None:
    require("storescu")
    write_ct_series(tmp_path / "ct", 10, patient_id="CRASH-PID-42", patient_name="Crash^Carl")
    port = free_port()
    proc = _serve(lake_root, vault_dir, port, "--commit-every", "100000",
                  "--commit-interval", "225")
    try:
        wait_port(port)
        result = dcmtk("storescu", "-aec", "LAKE", "+sd", "+r", "127.0.0.1", str(port),
                       tmp_path / "ct")
        assert result.returncode == 0, result.stderr
    finally:
        proc.kill()  # no chance to commit
        proc.communicate(timeout=60)
    journaled = _journal_files(lake_root)
    assert journaled and _spool_files(lake_root) == []
    for path in journaled:  # every acknowledged instance is durable, sealed
        data = path.read_bytes()
        assert b"CRASH-PID-42" not in data and b"Crash^Carl" not in data
    receipts = ReceiptJournal(journaled[0].parent, lk.secret(vault_dir))
    originals = [original for _, original in receipts.leftovers()]
    assert len(originals) == 10 and all(b"CRASH-PID-42" in o for o in originals)
    assert _count(lake_root) == 0
    server = DicomServer(lk, lk.secret(vault_dir), ServerConfig(port=0))
    server.start()  # de-identifies and commits what the crash left, before listening
    try:
        assert server.report.recovered == 10
    finally:
        server.stop()
    assert _count(lake_root) == 10
    assert _journal_files(lake_root) == []


def test_settings_come_from_lake_json(
    lk: lake.Lake, lake_root: Path, vault_dir: Path
) -> None:
    require("echoscu")
    port = free_port()
    config = json.loads((lake_root / "lake.json").read_text())
    config["dicom"] = {"aet": "JSONLAKE", "port": port, "allow": ["FRIEND"]}
    (lake_root / "lake.json").write_text(json.dumps(config))
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAKE_")}
    proc = subprocess.Popen(
        [LAKE, "serve", "dicom", "--lake", str(lake_root), "--vault", str(vault_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        wait_port(port)
        ok = dcmtk("echoscu", "-aet", "FRIEND", "-aec", "JSONLAKE", "127.0.0.1", str(port))
        assert ok.returncode == 0, ok.stderr
        stranger = dcmtk("echoscu", "-aet", "STRANGER", "-aec", "JSONLAKE", "127.0.0.1", str(port))
        assert stranger.returncode != 0
    finally:
        proc.terminate()
        _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    assert "JSONLAKE listening" in stderr


def test_options_are_documented() -> None:
    result = subprocess.run([LAKE, "serve", "dicom", "--help"], capture_output=True, text=True,
                            check=True, env={**os.environ, "COLUMNS": "200"})
    for option in ("--aet", "--port", "--host", "--allow", "--move-dest", "--max-associations",
                   "--tls-cert", "--tls-key", "--tls-ca", "--dimse-timeout", "--acse-timeout"):
        assert option in result.stdout, option
    result = subprocess.run([LAKE, "pull", "--help"], capture_output=True, text=True,
                            check=True, env={**os.environ, "COLUMNS": "200"})
    for option in ("--from", "--query", "--via", "--dry-run"):
        assert option in result.stdout, option


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("--host", "0.0.0.0"), "--allow"),
        (("--aet", "A-VERY-LONG-AE-TITLE"), "AE title"),
        (("--move-dest", "NOPORT"), "AET=HOST:PORT"),
        (("--tls-cert", "/nonexistent.pem", "--tls-key", "/nonexistent.key"), "TLS"),
        # beyond a quarter of gc's grace, stretched (review s25, finding 1)
        (("--commit-interval", "1000"), "give at most --commit-interval 225"),
    ],
)
def test_bad_settings_are_one_line_errors(
    lk: lake.Lake, lake_root: Path, vault_dir: Path, args: tuple[str, ...], needle: str
) -> None:
    proc = _serve(lake_root, vault_dir, free_port(), *args)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 1, stderr
    assert needle in stderr
    assert "Traceback" not in stderr


def test_port_in_use_is_an_error(lk: lake.Lake, vault_dir: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    lake.init(other / "lake", vault=other / "vault")
    with DicomServer(lk, lk.secret(vault_dir), ServerConfig(port=0, workers=0)) as running:
        proc = _serve(other / "lake", other / "vault", running.port, "--workers", "0")
        _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert "cannot listen" in stderr and "Traceback" not in stderr


def test_one_server_per_lake(lk: lake.Lake, lake_root: Path, vault_dir: Path) -> None:
    with DicomServer(lk, lk.secret(vault_dir), ServerConfig(port=0, workers=0)):
        proc = _serve(lake_root, vault_dir, free_port(), "--workers", "0")
        _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert "one server per lake" in stderr and "Traceback" not in stderr
