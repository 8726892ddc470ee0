"""UID conflicts from the network keep their sealed original (issue 10.6), and the public
:class:`lake.net.Intake` every front door receives through (C-STORE, pull, STOW-RS).

A different object reusing a SOP Instance UID is quarantined as ``uid_conflict``; the receipt
journal still holds the instance as received when its batch commits, so the original is
sealed into quarantine, as ``lake ingest`` does with the file.
"""

from __future__ import annotations

import copy
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file

import lake
from lake.ingest import UID_CONFLICT, Ingestor, decrypt, quarantine_key
from lake.net import DicomServer, Intake, ServerConfig
from lake.net._journal import ReceiptJournal
from tests.net_peers import dcmtk, require

LAKE = str(Path(sys.executable).with_name("lake"))


def _pixels(data: bytes) -> tuple[int, bytes]:
    """What tells the 12-bit variants apart: signedness and pixel values."""
    ds = dcmread(io.BytesIO(data), force=True)
    return int(ds.PixelRepresentation), bytes(ds.PixelData)


def _ct(slice_location: float | None = None) -> bytes:
    ds = dcmread(str(get_testdata_file("CT_small.dcm")))
    if slice_location is not None:
        ds = copy.deepcopy(ds)
        ds.SliceLocation = slice_location  # survives de-identification: another object
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.mark.network
def test_cstore_conflicts_are_quarantined_with_their_sealed_originals(
    lk: lake.Lake, vault_dir: Path, lake_root: Path, shared_data: Path, tmp_path: Path
) -> None:
    """dcm_qa_12bit: three different objects (signed/unsigned, two pixel patterns) with one
    SOP Instance UID, sent by storescu: one kept, two quarantined as uid_conflict, each
    with its original sealed, readable by ``lake quarantine show`` and ``export``."""
    require("storescu")
    folder = shared_data / "vendors" / "dcm_qa_12bit" / "In"
    pixels = {_pixels(p.read_bytes()) for p in folder.glob("*.dcm")}
    assert len(pixels) == 3
    with DicomServer(lk, lk.secret(vault_dir), ServerConfig(port=0)) as server:  # 2 workers
        sent = dcmtk("storescu", "-aec", "LAKE", "+sd", "127.0.0.1", str(server.port), folder)
        assert sent.returncode == 0, sent.stderr
        server.flush()
    lk.refresh()
    assert lk.sql("SELECT count(*) FROM instances").fetchall() == [(1,)]
    rows = lk.sql("SELECT reason, message, object_key FROM quarantine").fetchall()
    assert [r[0] for r in rows] == [UID_CONFLICT, UID_CONFLICT]
    assert all(key and "not kept" not in message for _, message, key in rows)
    key = quarantine_key(lk.secret(vault_dir))
    sealed = [decrypt((lake_root / r[2]).read_bytes(), key) for r in rows]
    sealed_pixels = {_pixels(data) for data in sealed}
    assert len(sealed_pixels) == 2 and sealed_pixels < pixels  # two different originals
    assert list((lake_root / "spool" / "dicom-store" / "receipts").glob("*.journal")) == []

    env = dict(os.environ, LAKE_ROOT=str(lake_root), LAKE_VAULT=str(vault_dir))

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([LAKE, *args], env=env, capture_output=True, text=True, check=False)

    listed = cli("quarantine", "list", "--format", "json")
    assert listed.returncode == 0, listed.stderr
    entries = json.loads(listed.stdout)
    assert sorted(e["reason"] for e in entries) == [UID_CONFLICT, UID_CONFLICT]
    assert all(e["sealed"] for e in entries)
    exported: set[tuple[int, bytes]] = set()
    for entry in entries:
        shown = cli("quarantine", "show", entry["id"])
        assert shown.returncode == 0, shown.stderr
        assert UID_CONFLICT in shown.stdout and "SOPInstanceUID" in shown.stdout
        out = tmp_path / "exported" / entry["id"][:12]
        written = cli("quarantine", "export", entry["id"], "--out", str(out))
        assert written.returncode == 0, written.stderr
        (path,) = out.iterdir()
        exported.add(_pixels(path.read_bytes()))
    assert exported == sealed_pixels


def test_an_intake_seals_the_original_of_a_conflict(lk: lake.Lake, vault_dir: Path) -> None:
    """The STOW-RS way: ``store`` returns once durable and de-identified; the commit seals a
    conflicting original read back from the journal."""
    secret = lk.secret(vault_dir)
    intake = Intake(Ingestor(lk, secret, source="stow"), secret, "stow", interval=3600)
    assert intake.start() == 0
    try:
        first, other = _ct(), _ct(slice_location=12.5)
        intake.store(first)
        intake.store(other)
        (batch,) = intake.flush()
    finally:
        intake.close()
    assert (batch.ingested, batch.conflicts, batch.quarantined) == (1, 1, 1)
    lk.refresh()
    ((object_key,),) = lk.sql("SELECT object_key FROM quarantine").fetchall()
    sealed = decrypt((Path(lk.location.path) / object_key).read_bytes(), quarantine_key(secret))
    assert sealed == other  # the instance exactly as received


def test_intakes_of_one_front_door_run_side_by_side_and_recover_crashed_journals(
    lk: lake.Lake, vault_dir: Path
) -> None:
    """Not exclusive (STOW-RS, pull): a second process takes a journal of its own; what a
    crashed process left in a journal nobody holds is committed by the next start."""
    secret = lk.secret(vault_dir)
    receipts = Path(lk.location.path) / "spool" / "stow"
    crashed = ReceiptJournal(receipts / "receipts-3", secret, prewritten=0)
    crashed.append(_ct(slice_location=1.0))  # acknowledged, then the process died
    crashed.append(_ct(slice_location=1.0))  # the same instance again: a duplicate
    crashed.append(_ct(slice_location=2.0))  # another object, same UID: a conflict

    def intake() -> Intake:
        return Intake(Ingestor(lk, secret, source="stow"), secret, "stow", interval=3600)

    first, second = intake(), intake()
    assert first.start() == 0  # takes receipts; receipts-2 is absent, so the scan stops there
    try:
        assert first.journal is not None and first.journal.folder.name == "receipts"
        assert second.start() == 3  # receipts is held: takes receipts-2, commits receipts-3's
        assert second.journal is not None and second.journal.folder.name == "receipts-2"
        second.store(_ct(slice_location=3.0))  # the same UID again: another conflict
        first.store(_ct(slice_location=1.0))  # a duplicate
        second.flush()
        first.flush()
    finally:
        second.close()
        first.close()
    third = intake()
    assert third.start() == 0
    third.close()
    assert list(receipts.rglob("*.journal")) == []
    lk.refresh()
    assert lk.sql("SELECT count(*) FROM instances").fetchall() == [(1,)]
    reasons = lk.sql("SELECT reason, object_key IS NOT NULL FROM quarantine").fetchall()
    assert reasons == [(UID_CONFLICT, True), (UID_CONFLICT, True)]
    batches = lk.sql("SELECT sum(files_seen), sum(ingested), sum(duplicates), sum(quarantined) "
                     "FROM batches").fetchall()
    assert batches == [(5, 1, 2, 2)]
