"""Erasure reaches the receipt journal (issue 15.1: "their spool and quarantine entries are gone").

Found by review: since C-STORE (and STOW-RS) make each received instance durable in the
receipt journal (``<lake>/spool/dicom-store/receipts/*.journal``, the identified original
sealed) instead of a spool file, ``lake forget`` no longer sees instances received and not yet
committed. A patient withdrawn while a server holds such records (or after it crashed with
them) is answered "nothing to erase", and comes back into the lake when the next server
start commits the journal. Fixed by erasure tombstones (lake.catalog._tombstones): the
next commit of the journal drops the withdrawn patient's instances and counts them erased.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import lake
from lake.net import DicomServer, ServerConfig
from tests.net_peers import dcmtk, free_port, require, wait_port
from tests.series import write_ct_series

LAKE = str(Path(sys.executable).with_name("lake"))

pytestmark = pytest.mark.network


def test_a_withdrawn_patient_in_the_receipt_journal_does_not_come_back(
    lk: lake.Lake, lake_root: Path, vault_dir: Path, tmp_path: Path
) -> None:
    require("storescu")
    write_ct_series(tmp_path / "in", 3, patient_id="WITHDRAWN-7", patient_name="Gone^Greta")
    write_ct_series(tmp_path / "in" / "kept", 2, patient_id="KEPT-8", patient_name="Kept^Karl")
    env = dict(os.environ, LAKE_ROOT=str(lake_root), LAKE_VAULT=str(vault_dir))
    port = free_port()
    server = subprocess.Popen(
        [LAKE, "serve", "dicom", "--port", str(port), "--commit-every", "100000",
         "--commit-interval", "225"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_port(port, timeout=120)
        stored = dcmtk("storescu", "-aec", "LAKE", "+sd", "+r", "127.0.0.1", str(port),
                       tmp_path / "in")
        assert stored.returncode == 0, stored.stderr
    finally:
        server.kill()  # acknowledged, durable in the journal, not committed
        server.wait()
    assert list((lake_root / "spool").rglob("*.journal"))
    forget = subprocess.run([LAKE, "forget", "--original-patient-id", "WITHDRAWN-7", "--yes"],
                            env=env, capture_output=True, text=True)
    assert forget.returncode == 0, forget.stderr
    # No byte of the withdrawn patient stays in the stopped server's journal, even sealed:
    # its records are gone, the other patient's are kept (and durable) for the next start.
    from lake.net import ReceiptJournal

    held = [data for folder in (lake_root / "spool").glob("*/receipts*")
            for _receipt, data in ReceiptJournal(folder, lk.secret(vault_dir)).leftovers()]
    assert len(held) == 2 and not any(b"WITHDRAWN-7" in data for data in held)
    assert all(b"KEPT-8" in data for data in held)
    restarted = DicomServer(lk, lk.secret(vault_dir), ServerConfig(port=0))
    restarted.start()  # commits what the journal holds
    restarted.stop()
    lk.refresh()
    assert lk.sql("SELECT count(*) FROM instances").fetchall() == [(2,)]
