"""Hostile and broken peers: the server answers correctly, keeps serving, leaks nothing partial.

Malformed and truncated PDUs are written on raw sockets; aborted transfers, unknown SOP
classes and broken datasets come from pynetdicom used as a client at the DIMSE level.
"""

from __future__ import annotations

import contextlib
import io
import socket
import struct
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, build_context
from pynetdicom import _config as pynetdicom_config
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode

import lake
from lake.net import DicomServer, ServerConfig
from tests.net_peers import associate_rq, dcmtk, read_pdu, require
from tests.series import write_ct_series

pytestmark = pytest.mark.network

CT = "1.2.840.10008.5.1.4.1.1.2"


@pytest.fixture
def server(lk: lake.Lake, vault_dir: Path) -> Iterator[DicomServer]:
    require("echoscu", "storescu")
    config = ServerConfig(port=0, workers=0, commit_interval=0.2, max_associations=3, acse_timeout=2,
                          max_instance_bytes=2_000_000)
    srv = DicomServer(lk, lk.secret(vault_dir), config)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop(grace=2)


def _alive(srv: DicomServer) -> None:
    result = dcmtk("echoscu", "-aec", "LAKE", "127.0.0.1", str(srv.port))
    assert result.returncode == 0, result.stderr


def _rows(srv: DicomServer, lk: lake.Lake) -> int:
    srv.flush()
    lk.refresh()
    return int(lk.sql("SELECT count(*) FROM instances").fetchall()[0][0])


def _raw(srv: DicomServer, payload: bytes, *, read: bool = True) -> bytes:
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as sock:
        sock.sendall(payload)
        if not read:
            return b""
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except (TimeoutError, ConnectionResetError):
            pass
        return b"".join(chunks)


def _associate(srv: DicomServer, *contexts: str, aet: str = "ROBUST") -> object:
    ae = AE(ae_title=aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    assoc = ae.associate("127.0.0.1", srv.port, [build_context(c, ExplicitVRLittleEndian)
                                                 for c in contexts], ae_title="LAKE")
    return assoc


def _encoded(ds: Dataset) -> bytes:
    data = encode(ds, False, True)  # explicit VR little endian, like the context
    assert data is not None
    return data


def _ct(**changes: object) -> Dataset:
    ds = dcmread(get_testdata_file("CT_small.dcm"))
    ds.SOPInstanceUID = generate_uid()
    with warnings.catch_warnings():  # the tests write invalid values on purpose
        warnings.simplefilter("ignore")
        for keyword, value in changes.items():
            setattr(ds, keyword, value)
    return ds


def _send_raw_store(assoc: object, sop_uid: str, dataset: bytes, folder: Path) -> int:
    """A C-STORE whose dataset bytes are whatever we say (sent unparsed); returns the status."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CT
    with warnings.catch_warnings():  # an invalid UID, on purpose
        warnings.simplefilter("ignore")
        meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buffer = DicomBytesIO()
    buffer.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(buffer, meta)
    path = folder / f"raw-{generate_uid()}.dcm"
    path.write_bytes(buffer.getvalue() + dataset)
    with warnings.catch_warnings():  # the client reads the invalid UID back
        warnings.simplefilter("ignore")
        status = assoc.send_c_store(path)  # type: ignore[attr-defined]
    assert "Status" in status, "no C-STORE response"
    return int(status.Status)


@pytest.fixture(autouse=True)
def _send_files_unparsed(monkeypatch: pytest.MonkeyPatch) -> None:
    # pynetdicom streams a file's dataset bytes as they are, so broken data reaches the server
    monkeypatch.setattr(pynetdicom_config, "STORE_SEND_CHUNKED_DATASET", True)


# --- malformed and truncated PDUs ---------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        b"GET / HTTP/1.1\r\nHost: lake\r\n\r\n",  # not DICOM at all
        bytes(range(256)) * 4,  # noise
        b"\x01\x00" + struct.pack(">I", 1_000_000) + b"\x00\x01",  # A-ASSOCIATE-RQ, truncated
        b"\x01\x00" + struct.pack(">I", 4) + b"\x00\x01\x00\x00",  # A-ASSOCIATE-RQ, nonsense
        b"\x04\x00" + struct.pack(">I", 6) + b"\x00\x00\x00\x02\x01\x03",  # P-DATA before assoc
        b"\x07\x00" + struct.pack(">I", 4) + b"\x00\x00\x00\x00",  # A-ABORT out of the blue
    ],
    ids=["http", "noise", "truncated-rq", "bad-rq", "pdata-first", "abort-first"],
)
def test_malformed_pdus(server: DicomServer, lk: lake.Lake, payload: bytes) -> None:
    answer = _raw(server, payload, read=payload[:1] != b"\x01" or len(payload) < 20)
    # the server either answers with an A-ABORT / A-ASSOCIATE-RJ or just closes
    assert answer[:1] in (b"", b"\x03", b"\x07")
    _alive(server)
    assert _rows(server, lk) == 0


def test_silent_connection_is_dropped(server: DicomServer) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
        # closed by the server's ACSE timeout (2 s here); our own timeout would raise instead
        assert sock.recv(1024) == b""
    _alive(server)


# --- associations ---------------------------------------------------------------------------


def test_too_many_associations(server: DicomServer) -> None:
    held = [_associate(server, "1.2.840.10008.1.1") for _ in range(3)]
    try:
        assert all(a.is_established for a in held)  # type: ignore[attr-defined]
        result = dcmtk("echoscu", "-aec", "LAKE", "127.0.0.1", str(server.port))
        assert result.returncode != 0
        assert "Local Limit Exceeded" in result.stderr
    finally:
        for assoc in held:
            assoc.release()  # type: ignore[attr-defined]
    deadline = time.monotonic() + 10
    while server._server is not None and len(server._server.active_associations) >= 3:
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    _alive(server)


def test_unknown_sop_class_is_rejected(server: DicomServer, tmp_path: Path) -> None:
    assoc = _associate(server, "1.2.3.4.5.6.7.8.9", "1.2.840.10008.1.1")
    try:
        assert assoc.is_established  # type: ignore[attr-defined]
        rejected = assoc.rejected_contexts  # type: ignore[attr-defined]
        assert [cx.abstract_syntax for cx in rejected] == ["1.2.3.4.5.6.7.8.9"]
        assert rejected[0].result == 0x03  # abstract syntax not supported
    finally:
        assoc.release()  # type: ignore[attr-defined]
    ds = _ct(SOPClassUID="1.2.3.4.5.6.7.8.9")
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.save_as(tmp_path / "odd.dcm", enforce_file_format=True)
    result = dcmtk("storescu", "-aec", "LAKE", "127.0.0.1", str(server.port), tmp_path / "odd.dcm")
    assert "No presentation context" in result.stderr or result.returncode != 0
    _alive(server)


# --- aborted and broken transfers ---------------------------------------------------------


def test_abort_mid_transfer_leaves_nothing(server: DicomServer, lk: lake.Lake) -> None:
    ds = _ct()
    assoc = _associate(server, CT)
    assert assoc.is_established  # type: ignore[attr-defined]
    primitive = C_STORE()
    primitive.MessageID = 1
    primitive.AffectedSOPClassUID = CT
    primitive.AffectedSOPInstanceUID = ds.SOPInstanceUID
    primitive.Priority = 2
    primitive.DataSet = io.BytesIO(_encoded(ds))
    message = C_STORE_RQ()
    message.primitive_to_message(primitive)
    cx_id = assoc.accepted_contexts[0].context_id  # type: ignore[attr-defined]
    fragments = list(message.encode_msg(cx_id, 4096))
    assert len(fragments) > 4
    for fragment in fragments[: len(fragments) // 2]:  # command plus half the dataset
        assoc.dul.send_pdu(fragment)  # type: ignore[attr-defined]
    assoc.abort()  # type: ignore[attr-defined]
    _alive(server)
    assert _rows(server, lk) == 0
    assert server.receiver.stats.received == 0
    assert len(server.spool) == 0


@pytest.mark.parametrize("acknowledge", ["outcome", "receipt"])
def test_truncated_and_garbage_datasets(
    lk: lake.Lake, vault_dir: Path, tmp_path: Path, acknowledge: str
) -> None:
    config = ServerConfig(port=0, workers=0, commit_interval=0.2, acknowledge=acknowledge)
    with DicomServer(lk, lk.secret(vault_dir), config) as server:
        assoc = _associate(server, CT)
        try:
            full = _encoded(_ct())
            no_uids = _ct()
            del no_uids.SOPInstanceUID, no_uids.StudyInstanceUID
            statuses = [
                _send_raw_store(assoc, generate_uid(), data, tmp_path)
                for data in (full[: len(full) // 2], b"\x00" * 7, b"", _encoded(no_uids), full)
            ]
        finally:
            assoc.release()  # type: ignore[attr-defined]
        if acknowledge == "outcome":  # truncated, not DICOM (x2), no SOP identity, still serving
            assert statuses[0] == 0xC000 and statuses[3:] == [0xA900, 0x0000]
            assert set(statuses[1:3]) <= {0xA900, 0xC000}
        else:  # durable on receipt: answered at once, refused later (quarantined)
            assert statuses == [0x0000] * 5
        assert _rows(server, lk) == 1
    reasons = sorted(r for (r,) in lk.sql("SELECT reason FROM quarantine").fetchall())
    assert len(reasons) == 4


def test_oversized_dataset_is_refused(
    server: DicomServer, lk: lake.Lake, tmp_path: Path
) -> None:
    big = _ct()
    big.Rows = big.Columns = 2048
    big.PixelData = b"\x00\x01" * (2048 * 2048)  # 8 MiB, 4x the 2,000,000-byte limit
    assoc = _associate(server, CT)
    try:
        assert _send_raw_store(assoc, big.SOPInstanceUID, _encoded(big), tmp_path) == 0xA700
        assert _send_raw_store(assoc, generate_uid(), _encoded(_ct()), tmp_path) == 0x0000
    finally:
        assoc.release()  # type: ignore[attr-defined]
    assert _rows(server, lk) == 1
    stats = server.receiver.stats
    assert (stats.too_large, stats.accepted) == (1, 1)
    assert stats.bytes_in > 8 * 2**20  # every byte was counted as it streamed in...
    budget = server._server.budget if server._server is not None else None
    assert budget is not None and budget.held == 0  # ...and none is held now
    assert lk.sql("SELECT count(*) FROM quarantine").fetchall() == [(0,)]


# --- path-like UIDs ------------------------------------------------------------------------


# The test itself builds and encodes datasets with invalid UIDs: pydicom warns in this thread.
@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_path_like_uids(server: DicomServer, lk: lake.Lake, tmp_path: Path) -> None:
    before = sorted(p for p in tmp_path.parent.iterdir())
    evil = "../../../../../../tmp/evil"
    ds = _ct(StudyInstanceUID="../../etc", SeriesInstanceUID="..\\..", SOPInstanceUID=evil)
    assoc = _associate(server, CT)
    try:
        status = _send_raw_store(assoc, evil, _encoded(ds), tmp_path)
    finally:
        assoc.release()  # type: ignore[attr-defined]
    assert status in (0x0000, 0xA900, 0xC000)
    assert not Path("/tmp/evil").exists()
    assert sorted(p for p in tmp_path.parent.iterdir()) == before
    rows = lk.sql("SELECT SOPInstanceUID, StudyInstanceUID FROM instances").fetchall() if (
        _rows(server, lk)) else []
    for sop, study in rows:
        assert ".." not in sop and ".." not in study and "/" not in sop
    out = tmp_path / "f"
    out.mkdir()
    result = dcmtk("findscu", "-S", "-aec", "LAKE", "-X", "-od", out, "-k",
                   "QueryRetrieveLevel=STUDY", "-k", "StudyInstanceUID=../../etc",
                   "127.0.0.1", str(server.port))
    assert result.returncode == 0 and list(out.iterdir()) == []
    get_out = tmp_path / "g"
    get_out.mkdir()
    result = dcmtk("getscu", "-S", "-aec", "LAKE", "-od", get_out, "-k",
                   "QueryRetrieveLevel=IMAGE", "-k", "StudyInstanceUID=../../etc",
                   "-k", "SeriesInstanceUID=..", "-k", f"SOPInstanceUID={evil}",
                   "127.0.0.1", str(server.port))
    assert list(get_out.iterdir()) == []
    _alive(server)


def test_concurrent_stores_all_land(server: DicomServer, lk: lake.Lake, tmp_path: Path) -> None:
    import subprocess

    folders = [write_ct_series(tmp_path / f"s{i}", 8, patient_id=f"C{i}") for i in range(3)]
    procs = [
        subprocess.Popen(["storescu", "-aec", "LAKE", "+sd", "127.0.0.1", str(server.port),
                          str(paths[0].parent)], stderr=subprocess.PIPE, text=True)
        for paths in folders
    ]
    for proc in procs:
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, stderr
    assert _rows(server, lk) == 24


# --- bounded reads (issue 16.3: nothing a peer sends is held without a bound) -------------


def _pdata(context_id: int, control: int, payload: bytes) -> bytes:
    """A P-DATA-TF PDU with one PDV (PS3.8 9.3.5)."""
    item = struct.pack(">IBB", len(payload) + 2, context_id, control) + payload
    return struct.pack(">BBI", 0x04, 0, len(item)) + item


def _raw_association(srv: DicomServer, *contexts: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", srv.port), timeout=30)
    sock.sendall(associate_rq("ROBUST", "LAKE", *contexts))
    assert read_pdu(sock)[:1] == b"\x02"  # A-ASSOCIATE-AC
    return sock


def _aborted(sock: socket.socket) -> bool:
    """The server sent an A-ABORT (or just closed), before anything else."""
    try:
        answer = read_pdu(sock)
    except ConnectionResetError:
        return True
    return answer[:1] in (b"", b"\x07")


def test_pdu_longer_than_the_limit_aborts(server: DicomServer) -> None:
    with _raw_association(server) as sock:
        # announces 64 MiB (our maximum is far smaller); nothing is buffered for it
        sock.sendall(struct.pack(">BBI", 0x04, 0, 64 << 20) + bytes(4096))
        assert _aborted(sock)
    _alive(server)


def test_command_set_over_the_limit_aborts(server: DicomServer) -> None:
    with _raw_association(server) as sock:
        with contextlib.suppress(OSError):  # the server may close while we still send
            for _ in range(8):  # 8 x 16 KiB command fragments, never the last one
                sock.sendall(_pdata(1, 0x01, bytes(16_000)))
        assert _aborted(sock)
    _alive(server)


def test_query_identifier_over_the_limit_aborts(server: DicomServer) -> None:
    study_root_find = "1.2.840.10008.5.1.4.1.2.2.1"
    assoc = _associate(server, study_root_find)
    assert assoc.is_established  # type: ignore[attr-defined]
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.add_new(0x00091010, "OB", b"x" * 3_000_000)  # over min(16 MiB, the 2 MB instance limit)
    answers = list(assoc.send_c_find(ds, study_root_find))  # type: ignore[attr-defined]
    assert all("Status" not in status for status, _ in answers)  # no answer: aborted
    deadline = time.monotonic() + 30  # the client's reactor notices the A-ABORT once resumed
    while not assoc.is_aborted and time.monotonic() < deadline:  # type: ignore[attr-defined]
        time.sleep(0.05)
    assert assoc.is_aborted  # type: ignore[attr-defined]
    _alive(server)


def test_busy_budget_refuses_then_recovers(lk: lake.Lake, vault_dir: Path, tmp_path: Path) -> None:
    """An instance arriving while the receive budget is spent is refused, transiently."""
    config = ServerConfig(port=0, workers=0, max_instance_bytes=1_000_000, receive_memory_bytes=1_000_000)
    with DicomServer(lk, lk.secret(vault_dir), config) as srv:
        assert srv._server is not None and srv._server.budget is not None
        budget = srv._server.budget
        assert budget.take(990_000)  # another association holds most of it
        assoc = _associate(srv, CT)
        try:
            assert _send_raw_store(assoc, generate_uid(), _encoded(_ct()), tmp_path) == 0xA700
            budget.give_back([990_000])
            assert _send_raw_store(assoc, generate_uid(), _encoded(_ct()), tmp_path) == 0x0000
        finally:
            assoc.release()  # type: ignore[attr-defined]
        assert (srv.receiver.stats.busy, srv.receiver.stats.accepted) == (1, 1)
        assert budget.held == 0
