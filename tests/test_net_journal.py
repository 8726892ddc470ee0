"""The receipt journal of ``lake serve dicom``: sealed, durable, dropped once committed.

Torn and damaged segments, concurrent appenders, and a server whose de-identification fails
(the receipt stays for the next start).
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

import lake
from lake.net import DicomServer, ServerConfig
from lake.net._journal import Receipt, ReceiptJournal
from lake.vault import Secret
from tests.net_peers import dcmtk, require
from tests.series import write_ct_series

SECRET = Secret(b"k" * 32)


def _originals(n: int) -> list[bytes]:
    return [b"ORIGINAL-%04d " % i + bytes(range(256)) * (i + 1) for i in range(n)]


def test_records_are_sealed_and_go_once_committed(tmp_path: Path) -> None:
    journal = ReceiptJournal(tmp_path, SECRET)
    originals = _originals(5)
    receipts = [journal.append(data) for data in originals]
    assert receipts == [Receipt(1, i) for i in range(5)]
    (segment,) = tmp_path.glob("*.journal")
    assert b"ORIGINAL" not in segment.read_bytes()
    assert journal.pending == 5
    journal.committed(receipts[:4])
    assert segment.exists()  # one record is still waiting for its commit
    journal.committed(receipts[4:])
    assert list(tmp_path.iterdir()) == [] and journal.pending == 0
    assert journal.append(b"next") == Receipt(2, 0)  # a new segment starts afresh


def test_leftovers_of_a_crash_are_read_back_then_dropped(tmp_path: Path) -> None:
    first = ReceiptJournal(tmp_path, SECRET)
    originals = _originals(3)
    for data in originals:
        first.append(data)
    # a crash: no close, no commit
    again = ReceiptJournal(tmp_path, SECRET)
    leftovers = list(again.leftovers())
    assert [data for _, data in leftovers] == originals
    again.committed([receipt for receipt, _ in leftovers])
    assert list(tmp_path.glob("*.journal")) == []
    assert again.append(b"x").segment == 2  # never reuses a segment number


def test_a_torn_last_record_was_never_acknowledged(tmp_path: Path) -> None:
    journal = ReceiptJournal(tmp_path, SECRET)
    for data in _originals(3):
        journal.append(data)
    (segment,) = tmp_path.glob("*.journal")
    segment.write_bytes(segment.read_bytes()[:-10])  # power lost mid-append
    again = ReceiptJournal(tmp_path, SECRET)
    leftovers = list(again.leftovers())
    assert [r.record for r, _ in leftovers] == [0, 1]
    assert again.damaged == 0
    again.committed([r for r, _ in leftovers])
    assert list(tmp_path.iterdir()) == []


def test_a_damaged_record_keeps_its_segment_aside(tmp_path: Path) -> None:
    journal = ReceiptJournal(tmp_path, SECRET)
    for data in _originals(3):
        journal.append(data)
    (segment,) = tmp_path.glob("*.journal")
    data = bytearray(segment.read_bytes())
    data[40] ^= 0xFF  # inside the first record's ciphertext
    segment.write_bytes(bytes(data))
    again = ReceiptJournal(tmp_path, SECRET)
    assert list(again.leftovers()) == []
    assert again.damaged == 1
    assert [p.suffix for p in tmp_path.iterdir()] == [".damaged"]  # kept for inspection
    assert ReceiptJournal(tmp_path, SECRET).damaged == 1  # and still counted next time


def test_concurrent_appends_share_their_syncs(tmp_path: Path) -> None:
    journal = ReceiptJournal(tmp_path, SECRET)
    receipts: list[Receipt] = []
    lock = threading.Lock()

    def append(k: int) -> None:
        for i in range(50):
            receipt = journal.append(b"%d-%d" % (k, i))
            with lock:
                receipts.append(receipt)

    threads = [threading.Thread(target=append, args=(k,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(receipts)) == 200
    read = dict(ReceiptJournal(tmp_path, SECRET).leftovers())
    assert sorted(read.values()) == sorted(b"%d-%d" % (k, i) for k in range(4) for i in range(50))


@pytest.mark.network
def test_failed_deidentification_stays_for_the_next_start(
    lk: lake.Lake, vault_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    require("storescu")
    write_ct_series(tmp_path / "ct", 3)
    # de-identifying on the association's thread (workers=0), so that it can be broken here
    server = DicomServer(lk, lk.secret(vault_dir), ServerConfig(port=0, workers=0))

    def broken(data: bytes, context: object) -> object:
        raise OSError("disk trouble")  # e.g. the blob store cannot be written

    monkeypatch.setattr("lake.net._workers.process_bytes", broken)
    with server:
        stored = dcmtk("storescu", "-aec", "LAKE", "+sd", "127.0.0.1", str(server.port),
                       tmp_path / "ct")
        assert stored.returncode == 0  # durable, so acknowledged
        server.flush()
        assert server.receiver.failures == 3  # type: ignore[union-attr]
    assert lk.sql("SELECT count(*) FROM instances").fetchall() == [(0,)]
    monkeypatch.undo()
    with DicomServer(lk, lk.secret(vault_dir), ServerConfig(port=0, workers=0)) as again:
        assert again.report.recovered == 3
    lk.refresh()
    assert lk.sql("SELECT count(*) FROM instances").fetchall() == [(3,)]
    assert list((Path(lk.location.path) / "spool" / "dicom-store" / "receipts").iterdir()) == []
