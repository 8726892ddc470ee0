"""The receipt journal of ``lake serve dicom``: sealed, durable, dropped once committed.

Torn and damaged segments, concurrent appenders, and a server whose de-identification fails
(the receipt stays for the next start).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

import lake
from lake.net import DicomServer, ServerConfig
from lake.net._journal import Receipt, ReceiptJournal
from lake.vault import Secret
from tests.net_peers import dcmtk, require
from tests.series import write_ct_series

SECRET = Secret(b"k" * 32)
PREWRITTEN = 1 << 20


@pytest.fixture(params=[0, PREWRITTEN], ids=["plain", "prewritten"])
def prewritten(request: pytest.FixtureRequest) -> int:
    return int(request.param)


def _journal(folder: Path, prewritten: int) -> ReceiptJournal:
    """A journal whose next records go to one segment: plain, or prewritten and ready."""
    journal = ReceiptJournal(folder, SECRET, prewritten=prewritten)
    if prewritten:
        journal.start()
        deadline = time.monotonic() + 60
        while journal._spare is None:  # the preparer writes the zeros in the background
            assert time.monotonic() < deadline
            time.sleep(0.01)
    return journal


def _halt(journal: ReceiptJournal) -> None:
    """As if the process died: the preparer stops, nothing is cleaned up."""
    with journal._lock:
        journal._stopping = True
        journal._lock.notify_all()
    if journal._preparer is not None:
        journal._preparer.join()


def _records(path: Path) -> list[tuple[int, int]]:
    """(offset, length) of every record of a segment (prewritten zeros end it)."""
    data, offset, out = path.read_bytes(), 0, []
    while offset + 4 <= len(data) and (length := int.from_bytes(data[offset:offset + 4], "big")):
        out.append((offset, 4 + length))
        offset += 4 + length
    return out


def _originals(n: int) -> list[bytes]:
    return [b"ORIGINAL-%04d " % i + bytes(range(256)) * (i + 1) for i in range(n)]


def test_records_are_sealed_and_go_once_committed(tmp_path: Path, prewritten: int) -> None:
    journal = _journal(tmp_path, prewritten)
    originals = _originals(5)
    receipts = [journal.append(data) for data in originals]
    (segment,) = {r.segment for r in receipts}
    assert [r.record for r in receipts] == list(range(5))
    path = tmp_path / f"{segment:012d}.journal"
    assert len(_records(path)) == 5
    assert all(b"ORIGINAL" not in p.read_bytes() for p in tmp_path.iterdir())
    assert journal.pending == 5
    journal.committed(receipts[:4])
    assert path.exists()  # one record is still waiting for its commit
    journal.committed(receipts[4:])
    assert not path.exists() and journal.pending == 0
    after = journal.append(b"next")
    assert after.segment > segment  # a new segment starts afresh
    journal.committed([after])
    journal.close()  # the unused spare goes too
    assert list(tmp_path.iterdir()) == []


def test_leftovers_of_a_crash_are_read_back_then_dropped(
    tmp_path: Path, prewritten: int
) -> None:
    first = _journal(tmp_path, prewritten)
    originals = _originals(3)
    for data in originals:
        first.append(data)
    _halt(first)  # a crash: no close, no commit
    again = ReceiptJournal(tmp_path, SECRET, prewritten=prewritten)
    leftovers = list(again.leftovers())
    assert [data for _, data in leftovers] == originals
    again.committed([receipt for receipt, _ in leftovers])
    assert list(tmp_path.glob("*.journal")) == []  # spares left by the crash went too
    assert again.append(b"x").segment > max(r.segment for r, _ in leftovers)  # never reused
    again.close()


def test_a_torn_last_record_was_never_acknowledged(tmp_path: Path, prewritten: int) -> None:
    journal = _journal(tmp_path, prewritten)
    receipts = [journal.append(data) for data in _originals(3)]
    _halt(journal)
    path = tmp_path / f"{receipts[-1].segment:012d}.journal"
    offset, length = _records(path)[-1]
    data = bytearray(path.read_bytes())
    data[offset + length - 10 : offset + length] = bytes(10)  # power lost mid-write
    path.write_bytes(bytes(data) if prewritten else bytes(data[: offset + length - 10]))
    again = ReceiptJournal(tmp_path, SECRET, prewritten=prewritten)
    leftovers = list(again.leftovers())
    assert [r.record for r, _ in leftovers] == [0, 1]
    assert again.damaged == 0
    again.committed([r for r, _ in leftovers])
    assert list(tmp_path.glob("*.journal")) == []


def test_a_damaged_record_keeps_its_segment_aside(tmp_path: Path, prewritten: int) -> None:
    journal = _journal(tmp_path, prewritten)
    receipts = [journal.append(data) for data in _originals(3)]
    _halt(journal)
    path = tmp_path / f"{receipts[0].segment:012d}.journal"
    data = bytearray(path.read_bytes())
    data[40] ^= 0xFF  # inside the first record's ciphertext
    path.write_bytes(bytes(data))
    again = ReceiptJournal(tmp_path, SECRET, prewritten=prewritten)
    assert list(again.leftovers()) == []
    assert again.damaged == 1
    assert [p.suffix for p in tmp_path.glob("*.damaged")] == [".damaged"]  # kept to inspect
    assert ReceiptJournal(tmp_path, SECRET).damaged == 1  # and still counted next time


def test_concurrent_appends_share_their_syncs(tmp_path: Path, prewritten: int) -> None:
    journal = _journal(tmp_path, prewritten)
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
    _halt(journal)
    read = dict(ReceiptJournal(tmp_path, SECRET, prewritten=0).leftovers())
    assert sorted(read.values()) == sorted(b"%d-%d" % (k, i) for k in range(4) for i in range(50))


def test_a_large_record_outgrows_the_prewritten_part(tmp_path: Path) -> None:
    journal = _journal(tmp_path, PREWRITTEN)
    big = bytes(range(256)) * (3 * PREWRITTEN // 256)  # three times the prewritten zeros
    receipts = [journal.append(b"small"), journal.append(big), journal.append(b"after")]
    _halt(journal)
    read = dict(ReceiptJournal(tmp_path, SECRET).leftovers())
    assert [read[r] for r in receipts] == [b"small", big, b"after"]


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
    assert list((Path(lk.location.path) / "spool" / "dicom-store" / "receipts").glob("*.journal")) == []
