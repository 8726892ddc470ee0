"""SIGKILL of ``lake serve dicom`` at random moments while a modality stores (issue 15.5 names
ingest, export, compact, gc, forget *and* serve dicom; tests/test_crash_safety.py covers the
first five, tests/test_net_cli.py kills the server only after every store was acknowledged).

Each round (seeded) a peer stores instances one by one while the server is killed at a random
moment - mid-association, mid-commit, between commits. Then: the lake verifies clean with no
partial file, and once a new server has started (it commits what the crash left in its
receipt journal) every instance the peer saw acknowledged is in the lake; sending everything
again ends with every instance exactly once.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from pydicom import dcmread
from pynetdicom import AE

import lake
from lake._capture import capture
from lake.ingest import Ingestor
from tests.net_peers import free_port, stop_server, wait_port
from tests.series import write_ct_series
from tests.test_crash_safety import _consistent

LAKE = str(Path(sys.executable).with_name("lake"))
SEEDS = [int(s) for s in os.environ.get("LAKE_CRASH_SEEDS", "11,12").split(",")]
CT = "1.2.840.10008.5.1.4.1.1.2"

pytestmark = [pytest.mark.network, pytest.mark.slow]


def _serve(env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [LAKE, "serve", "dicom", "--port", str(port), "--commit-every", "3",
         "--commit-interval", "0.3"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def _store(port: int, paths: list[Path], stop: threading.Event,
           acked: threading.Semaphore | None = None) -> list[str]:
    """C-STORE ``paths`` one by one; the original SOP Instance UIDs acknowledged as stored
    (``acked`` is released once per acknowledgement)."""
    ae = AE(ae_title="MODALITY")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 20
    ae.add_requested_context(CT, "1.2.840.10008.1.2.1")
    acknowledged: list[str] = []
    with capture():  # the client's own logs quote what it sends
        assoc = ae.associate("127.0.0.1", port, ae_title="LAKE")
        try:
            for path in paths:
                if stop.is_set() or not assoc.is_established:
                    break
                ds = dcmread(path)
                try:
                    status = assoc.send_c_store(ds)
                except RuntimeError:  # the association went between the check and the send
                    break
                if "Status" in status and int(status.Status) == 0x0000:
                    acknowledged.append(str(ds.SOPInstanceUID))
                    if acked is not None:
                        acked.release()
        finally:
            if assoc.is_established:
                assoc.release()
    return acknowledged


def _graceful(env: dict[str, str]) -> None:
    """A new server: it commits what the crash left, then stops cleanly."""
    port = free_port()
    server = _serve(env, port)
    try:
        wait_port(port, timeout=120)
    finally:
        stop_server(server)
    assert server.returncode == 0


def test_kills_of_the_dicom_server_lose_nothing_acknowledged(
    lk: lake.Lake, lake_root: Path, vault_dir: Path, tmp_path: Path
) -> None:
    paths: list[Path] = []
    env = dict(os.environ, LAKE_ROOT=str(lake_root), LAKE_VAULT=str(vault_dir))
    keyed = Ingestor(lk, lk.secret(vault_dir)).context.engine.uid
    killed_rounds = 0
    pool = ThreadPoolExecutor(1)  # the modality
    for seed in SEEDS:
        rng = random.Random(seed)
        order = [p for s in range(2) for p in write_ct_series(
            tmp_path / "in" / f"{seed}-{s}", 6, patient_id=f"SRV-{seed}-{s}")]
        rng.shuffle(order)  # new instances each round, interleaved
        paths += order
        port = free_port()
        server = _serve(env, port)
        stop = threading.Event()
        try:
            wait_port(port, timeout=120)
            acked = threading.Semaphore(0)
            sender = pool.submit(_store, port, order, stop, acked)
            # A random moment in the stream: after k acknowledgements and a random delay
            # (some commits done, some instances received and not yet committed).
            for _ in range(rng.randint(1, len(order) - 4)):
                assert acked.acquire(timeout=120)
            time.sleep(rng.uniform(0.0, 0.5))
            killed_rounds += server.poll() is None
            server.send_signal(signal.SIGKILL)
            server.wait(timeout=60)
            stop.set()
            acknowledged = sender.result(timeout=120)
        finally:
            if server.poll() is None:
                server.kill()
                server.wait()
        assert acknowledged, f"seed {seed}: nothing acknowledged before the kill"
        _consistent(lk, lake_root)  # verify clean and no partial data file, before recovery
        _graceful(env)
        lk.refresh()
        stored = {uid for (uid,) in lk.sql("SELECT SOPInstanceUID FROM instances").fetchall()}
        lost = [uid for uid in acknowledged if keyed(uid) not in stored]
        assert lost == [], f"seed {seed}: {len(lost)} of {len(acknowledged)} acknowledged lost"
        total, distinct = _consistent(lk, lake_root)
        assert total == distinct, f"seed {seed}: duplicates"
    pool.shutdown()
    assert killed_rounds == len(SEEDS)  # every round really killed a running server

    # Everything again, to a server that is not killed: exactly once.
    port = free_port()
    server = _serve(env, port)
    try:
        wait_port(port, timeout=120)
        acknowledged = _store(port, paths, threading.Event())
        assert len(acknowledged) == len(paths)
    finally:
        stop_server(server)
    assert server.returncode == 0
    assert _consistent(lk, lake_root) == (len(paths), len(paths))
