"""The mutation corpus (tests/mutants.py) through C-STORE (issue 16.6).

Every mutant's data set is sent, exactly as damaged, in the presentation context of the real
file it was made from (a network peer sends no file meta: the lake builds it from the
association). Each must be stored or refused with a reason from the fixed set, nothing may
quote a value, and the server must keep serving: the association is never dropped for a
bad data set, and an echo answers at the end. Mutants of the planted-identifier corpus check
that no token reaches a status, a quarantine reason or message, a log record or stderr.
"""

from __future__ import annotations

import logging
import os
import re
import struct
import subprocess
import sys
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pynetdicom import AE
from pynetdicom import _config as pynetdicom_config

import lake
from lake._capture import capture
from lake.net import DicomServer, ServerConfig
from lake.net._association import STANDARD_HANDLERS
from tests.deid_corpus import write_corpus
from tests.mutants import Mutant, mutants, seeds
from tests.net_peers import dcmtk, free_port, require, stop_server, wait_port

pytestmark = pytest.mark.network

_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT",
             b"UV"}
STATUSES = {0x0000, 0xA700, 0xA900, 0xC000, 0xC001}
LAKE = str(Path(sys.executable).with_name("lake"))
COMMENT = re.compile(r"quarantined: [a-z_]+|instance larger than the lake accepts")


def _data_set(data: bytes) -> bytes:
    """The bytes after the (possibly damaged) file meta: what a peer would send."""
    if data[128:132] != b"DICM":
        return data
    offset = 132
    while offset + 8 <= len(data) and data[offset:offset + 2] == b"\x02\x00":
        vr = data[offset + 4:offset + 6]
        if vr in _LONG_VRS:
            if offset + 12 > len(data):
                break
            offset += 12 + struct.unpack_from("<I", data, offset + 8)[0]
        else:
            offset += 8 + struct.unpack_from("<H", data, offset + 6)[0]
    return data[offset:]


def _context(data: bytes) -> tuple[str, str, str]:
    """SOP class, SOP instance and transfer syntax of an intact Part-10 file."""
    with warnings.catch_warnings():  # planted invalid values, on purpose
        warnings.simplefilter("ignore")
        ds = dcmread(DicomBytesIO(data), stop_before_pixels=True)
        meta = ds.file_meta
        return (str(meta.MediaStorageSOPClassUID), str(meta.MediaStorageSOPInstanceUID),
                str(meta.TransferSyntaxUID))


def _as_sent(mutant: Mutant, context: tuple[str, str, str], folder: Path) -> Path:
    """A file whose meta is the seed's intact one and whose data set is the mutant's."""
    sop_class, sop_instance, syntax = context
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = syntax
    buffer = DicomBytesIO()
    buffer.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(buffer, meta)
    path = folder / f"{mutant.name}.dcm"
    path.write_bytes(buffer.getvalue() + _data_set(mutant.data))
    return path


def _send(port: int, sources: dict[str, bytes], corpus: list[Mutant], folder: Path,
          ) -> list[tuple[int, str]]:
    """C-STORE every mutant unparsed; (status, error comment) each, reconnecting if dropped."""
    contexts = {name: _context(data) for name, data in sources.items()}
    ae = AE(ae_title="MUTANTS")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
    for sop_class, _, syntax in set(contexts.values()):
        ae.add_requested_context(sop_class, syntax)
    previous = pynetdicom_config.STORE_SEND_CHUNKED_DATASET
    pynetdicom_config.STORE_SEND_CHUNKED_DATASET = True  # the bytes go as they are
    answers: list[tuple[int, str]] = []
    assoc = None
    try:
        # the client's own logs and warnings quote what it sends: not the server's output
        with capture():
            for mutant in corpus:
                if assoc is None or not assoc.is_established:
                    answers.append((-1, "association dropped")) if assoc is not None else None
                    assoc = ae.associate("127.0.0.1", port, ae_title="LAKE")
                    assert assoc.is_established
                    for event, handler in STANDARD_HANDLERS:  # its debug logs, on its threads
                        assoc.unbind(event, handler)
                    _keep_responses(assoc)
                status = assoc.send_c_store(_as_sent(mutant, contexts[mutant.seed], folder))
                answers.append((int(status.Status), str(status.get("ErrorComment", "")))
                               if "Status" in status else (-2, "no response"))
    finally:
        pynetdicom_config.STORE_SEND_CHUNKED_DATASET = previous
        if assoc is not None and assoc.is_established:
            assoc.release()
    return answers


def _keep_responses(assoc: Any) -> None:
    """Work around a race of pynetdicom's requestor (pydicom/pynetdicom#875).

    ``send_c_store`` pauses the association's reactor by clearing a checkpoint, then
    waits until the reactor says it is paused; but the reactor sets ``_is_paused`` just
    before it waits at the checkpoint, so it can pass it, and a response arriving at
    once (the lake answers in well under a millisecond) is taken by the reactor as an
    "unexpected C-STORE service message" and dropped: the sender waits out its DIMSE
    timeout. Here a response the reactor takes goes back to the queue the sender reads.
    """
    serve = assoc._serve_request

    def serve_or_return(msg: Any, context_id: int) -> None:
        if msg.is_valid_response:
            assoc.dimse.msg_queue.put((context_id, msg))
            return
        serve(msg, context_id)

    assoc._serve_request = serve_or_return


@pytest.mark.parametrize("acknowledge", ["outcome", "receipt"])
def test_every_mutant_is_stored_or_refused_with_a_reason(
    lk: lake.Lake, vault_dir: Path, tmp_path: Path, acknowledge: str
) -> None:
    require("echoscu")
    count = 300 if acknowledge == "outcome" else 100
    corpus = list(mutants(count, seed=3))
    sources = seeds()
    config = ServerConfig(port=0, workers=0, acknowledge=acknowledge, commit_interval=0.2)
    with DicomServer(lk, lk.secret(vault_dir), config) as server:
        answers = _send(server.port, sources, corpus, tmp_path)
        echo = dcmtk("echoscu", "-aec", "LAKE", "127.0.0.1", str(server.port))
        server.flush()
        stats = server.receiver.stats
    assert echo.returncode == 0, echo.stderr  # still serving
    assert len(answers) == count  # no association was dropped, every mutant was answered
    assert {status for status, _ in answers} <= STATUSES
    assert all(COMMENT.fullmatch(comment) for status, comment in answers if comment)
    by_status = Counter(status for status, _ in answers)
    if acknowledge == "outcome":  # refusals reported to the sender, each with its reason
        assert by_status[0x0000] > 0 and by_status[0xC000] > 0
    else:  # acknowledged once durable, refused (quarantined) afterwards
        assert set(by_status) <= {0x0000, 0xA700}
    assert stats.received == count
    assert stats.accepted + stats.quarantined + stats.too_large == count
    assert stats.quarantined > count / 5
    lk.refresh()
    reasons = lk.sql("SELECT reason, message FROM quarantine").fetchall()
    assert reasons and all(reason and message for reason, message in reasons)
    assert lk.verify().ok


def test_mutants_of_planted_identifiers_leak_nothing(
    lk: lake.Lake, vault_dir: Path, tmp_path: Path,
    caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str],
) -> None:
    folder = tmp_path / "planted"
    tokens = write_corpus(folder, 1)
    sources = {p.stem: p.read_bytes() for p in sorted(folder.rglob("*.dcm"))}
    corpus = list(mutants(90, seed=5, sources=sources))
    caplog.set_level(logging.DEBUG)  # every library record would be shown
    config = ServerConfig(port=0, workers=0, acknowledge="outcome", commit_interval=0.2)
    with DicomServer(lk, lk.secret(vault_dir), config) as server:
        answers = _send(server.port, sources, corpus, tmp_path)
        server.flush()
    assert len(answers) == len(corpus)
    lk.refresh()
    quarantine = repr(lk.sql("SELECT reason, message FROM quarantine").fetchall())
    records = "\n".join(f"{r.threadName} {r.name} {r.getMessage()}" for r in caplog.records)
    out, err = capfd.readouterr()
    texts = {"statuses": repr(answers), "quarantine": quarantine, "log records": records,
             "stderr": err, "stdout": out}
    leaks = {where: sorted(t for t in tokens if t in text) for where, text in texts.items()}
    assert all(found == [] for found in leaks.values()), [
        line for line in records.splitlines() if any(t in line for t in tokens)][:5]


def test_lake_serve_dicom_keeps_serving_and_loses_nothing_acknowledged(
    lk: lake.Lake, lake_root: Path, vault_dir: Path, tmp_path: Path
) -> None:
    """The command as shipped (two worker processes, acknowledged on receipt): mutants of
    the planted-identifier and pydicom corpora by raw pynetdicom stores, then the intact
    planted files by dcmtk's storescu. Every store answered, echo after, no token in the
    server's stdout/stderr, ``lake verify`` clean, and every acknowledged instance counted
    in exactly one committed batch (stored, duplicate or quarantined)."""
    require("storescu", "echoscu")
    planted = tmp_path / "planted"
    tokens = write_corpus(planted, 1)
    sources = {p.stem: p.read_bytes() for p in sorted(planted.rglob("*.dcm"))}
    everything = {**sources, **seeds()}
    # the lake keeps one quarantine row per distinct original: each data set is sent once
    # (a mutation may leave it as it was: storescu sends the intact planted ones)
    intact = {(name, _data_set(data)) for name, data in sources.items()}
    distinct = {(m.seed, _data_set(m.data)): m for m in
                [*mutants(60, seed=11, sources=sources), *mutants(60, seed=12)]}
    corpus = [m for key, m in distinct.items() if key not in intact]
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAKE_")}
    env.update(LAKE_ROOT=str(lake_root), LAKE_VAULT=str(vault_dir))
    server = subprocess.Popen([LAKE, "serve", "dicom", "--port", str(port),
                               "--commit-interval", "0.2"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        wait_port(port, timeout=120)  # two worker processes warm up first
        answers = _send(port, everything, corpus, tmp_path)
        sent = dcmtk("storescu", "-aec", "LAKE", "+sd", "+r", "127.0.0.1", str(port), planted)
        echo = dcmtk("echoscu", "-aec", "LAKE", "127.0.0.1", str(port))
    finally:
        out, err = stop_server(server)
    assert server.returncode == 0, err[-2000:]
    assert sent.returncode == 0, sent.stderr
    assert echo.returncode == 0, echo.stderr  # still serving
    assert len(answers) == len(corpus)  # no association dropped
    assert {status for status, _ in answers} <= {0x0000, 0xA700}
    acknowledged = sum(1 for status, _ in answers if status == 0) + len(sources)
    leaks = sorted(t for t in tokens if t in out or t in err)
    assert leaks == [], [line for line in err.splitlines() if any(t in line for t in leaks)][:5]
    assert f"received {len(corpus) + len(sources)}:" in err

    verify = subprocess.run([LAKE, "verify"], env=env, capture_output=True, text=True)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    lk.refresh()
    ((seen, ingested, duplicates, quarantined),) = lk.sql(
        "SELECT sum(files_seen), sum(ingested), sum(duplicates), sum(quarantined) "
        "FROM batches WHERE source = 'dicom-store'").fetchall()
    assert seen == acknowledged == ingested + duplicates + quarantined
    assert lk.sql("SELECT count(*) FROM instances").fetchall() == [(ingested,)]
    assert lk.sql("SELECT count(*) FROM quarantine").fetchall() == [(quarantined,)]
    assert list((lake_root / "spool" / "dicom-store" / "receipts").glob("*.journal")) == []
