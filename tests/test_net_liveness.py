"""The DICOM server keeps serving an allowed modality under a flood of idle and slow peers.

Issue 16.3: connections hold no association slot until their A-ASSOCIATE-RQ is in and
screened; unknown calling AEs are refused without one; a peer stalling mid-PDU loses its
slot after the network timeout. The modality is real dcmtk (echoscu, storescu); the hostile
peers are raw sockets (tests/net_peers.py: Flood). Outcomes are counted; the only time
bounds are generous liveness timeouts on the dcmtk runs.
"""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import lake
from lake.net import DicomServer, ServerConfig, TLSConfig
from lake.net import _transport as transport
from lake.net._transport import AssociationServer
from tests.net_peers import associate_rq, dcmtk, make_certificates, read_pdu, require
from tests.series import write_ct_series

pytestmark = pytest.mark.network

ROOT = Path(__file__).resolve().parents[1]
MODALITY = "MODALITY"
LIVENESS = 60  # seconds any one dcmtk run may take before the test fails


def _echo(port: int, *extra: str) -> int:
    result = dcmtk("echoscu", *extra, "-aet", MODALITY, "-aec", "LAKE", "127.0.0.1", str(port),
                   timeout=LIVENESS)
    return result.returncode


def _store(port: int, folder: Path) -> int:
    result = dcmtk("storescu", "-aet", MODALITY, "-aec", "LAKE", "+sd", "127.0.0.1", str(port),
                   folder, timeout=LIVENESS)
    assert result.returncode == 0, result.stderr
    return result.returncode


def _eventually(condition: object, timeout: float = LIVENESS) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(condition) and condition():
            return True
        time.sleep(0.05)
    return False


@contextlib.contextmanager
def _flood(port: int, **workers: int) -> Iterator[dict[str, int]]:
    """The hostile peers, from their own process (the slow-client script of net_peers)."""
    args = [f"--{kind}={n}" for kind, n in workers.items()]
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.net_peers", "flood", str(port), *args],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT,
    )
    outcomes: dict[str, int] = {}
    try:
        assert proc.stdout is not None and proc.stdin is not None
        assert proc.stdout.readline().strip() == "ready"
        yield outcomes
        proc.stdin.close()
        outcomes.update(json.loads(proc.stdout.read()))
        assert proc.wait(timeout=LIVENESS) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_flood_never_locks_out_the_allowed_modality(
    lk: lake.Lake, vault_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    require("echoscu", "storescu")
    monkeypatch.setattr(AssociationServer, "max_pending", 16)
    folder = write_ct_series(tmp_path / "ct", 4)[0].parent
    config = ServerConfig(port=0, workers=0, allow=(MODALITY,), max_associations=2, request_timeout=1.0,
                          commit_interval=0.2)
    rounds = 3
    with DicomServer(lk, lk.secret(vault_dir), config) as server:
        # more idle connections than may wait (16): the server closes some to make room
        with _flood(server.port, idle=24, trickle=4, intruders=2) as outcomes:
            codes = [(_echo(server.port), _store(server.port, folder)) for _ in range(rounds)]
            stats = server.report.admission
            assert _eventually(lambda: stats.no_request >= 4)  # the tricklers timed out
        server.flush()
    assert codes == [(0, 0)] * rounds
    # counted outcomes: only the modality's associations were admitted
    assert stats.admitted == 2 * rounds
    assert stats.busy == 0
    assert stats.evicted > 0
    assert outcomes.get("trickle completed", 0) == 0
    assert outcomes["trickle closed"] >= 4 and outcomes["idle closed"] >= 24
    # every intruder was refused: with the RJ, or closed before its request was read
    assert outcomes.get("intruder accepted", 0) == outcomes.get("intruder other", 0) == 0
    rejected = outcomes["intruder rejected"]
    assert 0 < rejected <= stats.calling_aet_refused <= rejected + 2, (outcomes, stats)
    lk.refresh()
    assert lk.sql("SELECT count(*) FROM instances").fetchall() == [(4,)]


def test_stalled_association_gives_its_slot_back(lk: lake.Lake, vault_dir: Path) -> None:
    """An admitted peer that stops mid-PDU is dropped after the network timeout."""
    require("echoscu")
    config = ServerConfig(port=0, workers=0, allow=(MODALITY,), max_associations=1, network_timeout=2)
    with DicomServer(lk, lk.secret(vault_dir), config) as server, \
            socket.create_connection(("127.0.0.1", server.port), timeout=LIVENESS) as stall:
        stall.sendall(associate_rq(MODALITY))
        assert read_pdu(stall)[:1] == b"\x02"  # A-ASSOCIATE-AC: it holds the only slot
        # a P-DATA-TF announcing 16,000 bytes, of which 10 come
        stall.sendall(struct.pack(">BBI", 0x04, 0, 16_000) + bytes(10))
        assert _eventually(lambda: _echo(server.port) == 0)
        assert stall.recv(65536) in (b"", *[bytes([0x07])])  # closed (or aborted) by the lake


def test_an_idle_association_is_aborted_after_the_network_timeout_configured(
        lk: lake.Lake, vault_dir: Path) -> None:
    """Whole PDUs, then silence: the association's idle timer is the configured network
    timeout (it was pynetdicom's default, 60 s, whatever --network-timeout said)."""
    config = ServerConfig(port=0, workers=0, allow=(MODALITY,), network_timeout=1)
    with DicomServer(lk, lk.secret(vault_dir), config) as server, \
            socket.create_connection(("127.0.0.1", server.port), timeout=30) as idle:
        idle.sendall(associate_rq(MODALITY))
        assert read_pdu(idle)[:1] == b"\x02"  # A-ASSOCIATE-AC, then nothing more is sent
        # the lake aborts it (A-ABORT) and closes it; 30 s is only a guard against 60 s
        assert read_pdu(idle)[:1] == b"\x07"


def test_the_association_timers_are_the_servers() -> None:
    from pynetdicom import AE

    from lake._capture import Captured
    from lake.net._association import AcceptorAssociation, Limits

    ae = AE(ae_title="LAKE")
    ae.acse_timeout, ae.network_timeout = 3, 7
    assoc = AcceptorAssociation(ae, Captured(), Limits(1 << 20, None, None))
    assert assoc.dul.artim_timer.timeout == 3  # ARTIM: the ACSE timeout
    assert assoc.dul._idle_timer.timeout == 7  # idle: the network timeout
    assoc.dul._wake.close()


def test_an_admitted_socket_times_out_in_the_kernel_not_by_polling() -> None:
    """Blocking, with SO_RCVTIMEO/SO_SNDTIMEO: one system call per read or send, and a
    read that waits past the timeout still fails (an OSError, like Python's timeout)."""
    here, peer = socket.socketpair()
    with here, peer:
        transport.stall_timeout(here, 0.25)
        assert here.gettimeout() is None  # no poll before each recv/send
        for option in (socket.SO_RCVTIMEO, socket.SO_SNDTIMEO):  # kernel ticks: ~0.25 s
            seconds, micro = struct.unpack("@ll", here.getsockopt(socket.SOL_SOCKET, option, 16))
            assert seconds == 0 and 240_000 <= micro <= 260_000
        peer.sendall(b"abc")
        assert here.recv(3) == b"abc"
        with pytest.raises(OSError):  # nothing comes: the kernel ends the wait
            here.recv(1)
        transport.stall_timeout(here, None)  # no network timeout: blocking, as pynetdicom's
        assert here.gettimeout() is None


def test_idle_tls_connections_do_not_block_the_handshake_of_others(
    lk: lake.Lake, vault_dir: Path, tmp_path: Path
) -> None:
    """The TLS handshake runs on the connection's thread, never in the accept loop."""
    require("echoscu")
    certs = make_certificates(tmp_path / "tls")
    config = ServerConfig(port=0, workers=0, allow=(MODALITY,), request_timeout=2,
                          tls=TLSConfig(certs.server_cert, certs.server_key))
    with DicomServer(lk, lk.secret(vault_dir), config) as server:
        idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(5)]
        try:
            assert _echo(server.port, "+tla", "+cf", str(certs.ca)) == 0
            stats = server.report.admission
            assert _eventually(lambda: stats.no_request >= 5)
            assert stats.admitted == 1
        finally:
            for sock in idle:
                sock.close()


def test_unknown_calling_aet_is_refused_without_a_slot(lk: lake.Lake, vault_dir: Path) -> None:
    config = ServerConfig(port=0, workers=0, allow=(MODALITY,), max_associations=1)
    with DicomServer(lk, lk.secret(vault_dir), config) as server, \
            socket.create_connection(("127.0.0.1", server.port), timeout=LIVENESS) as held:
        held.sendall(associate_rq(MODALITY))
        assert read_pdu(held)[:1] == b"\x02"  # the only slot is taken
        answers = []
        for calling, called in (("INTRUDER", "LAKE"), (MODALITY, "NOTLAKE"), (MODALITY, "LAKE")):
            with socket.create_connection(("127.0.0.1", server.port), timeout=LIVENESS) as sock:
                sock.sendall(associate_rq(calling, called))
                answers.append(read_pdu(sock)[6:10])
        stats = server.report.admission
    # A-ASSOCIATE-RJ result/source/reason: calling AE unknown and called AE unknown are
    # permanent (checked before any slot), the allowed AE gets "local limit exceeded"
    assert answers == [b"\x00\x01\x01\x03", b"\x00\x01\x01\x07", b"\x00\x02\x03\x02"]
    assert (stats.calling_aet_refused, stats.called_aet_refused, stats.busy) == (1, 1, 1)


@pytest.mark.parametrize(
    "payload",
    [
        struct.pack(">BBI", 0x01, 0, 1 << 30),  # an A-ASSOCIATE-RQ claiming 1 GiB
        struct.pack(">BBI", 0x04, 0, 6) + bytes(6),  # P-DATA before association
        struct.pack(">BBI", 0x09, 0, 4) + bytes(4),  # no such PDU type
    ],
    ids=["huge-rq", "pdata-first", "unknown-type"],
)
def test_not_a_request_is_refused_at_once(
    lk: lake.Lake, vault_dir: Path, payload: bytes
) -> None:
    with DicomServer(lk, lk.secret(vault_dir), ServerConfig(port=0, workers=0)) as server, \
            socket.create_connection(("127.0.0.1", server.port), timeout=LIVENESS) as sock:
        sock.sendall(payload)
        answer = read_pdu(sock)
        assert answer[:1] == b"\x07"  # A-ABORT
        assert sock.recv(1) == b""
        assert server.report.admission.malformed == 1


def test_a_requestor_slow_to_send_is_not_closed_for_a_newcomer(
    lk: lake.Lake, vault_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A peer's first bytes may come a moment after its connect (a loaded machine).

    The waiting set is full of tricklers (1 byte each); the requestor connects, an idle peer
    connects, then the requestor sends its whole request. Joining with zero bytes, it was the
    one closed for the idle peer (CI saw an echoscu refused so under a flood); it joins with
    its bytes and is admitted (one trickler was closed to make room for it).
    """
    monkeypatch.setattr(AssociationServer, "max_pending", 4)
    config = ServerConfig(port=0, workers=0, allow=(MODALITY,), request_timeout=30)
    request = associate_rq(MODALITY)
    with DicomServer(lk, lk.secret(vault_dir), config) as server, contextlib.ExitStack() as stack:
        def connect() -> socket.socket:
            sock = stack.enter_context(socket.create_connection(("127.0.0.1", server.port)))
            sock.settimeout(LIVENESS)
            return sock

        stats = server.report.admission
        for _ in range(4):
            connect().sendall(request[:1])
        assert _eventually(lambda: stats.connections == 4)
        requestor = connect()
        idle = connect()
        time.sleep(0.05)  # the requestor's moment between connect and send
        requestor.sendall(request)
        assert read_pdu(requestor)[:1] == b"\x02"  # A-ASSOCIATE-AC
        assert _eventually(lambda: stats.connections == 6)  # the idle peer joined too
        assert (stats.admitted, stats.evicted) == (1, 1)
        assert idle.fileno() >= 0


def test_a_burst_of_silent_connections_is_bounded_at_once(
    lk: lake.Lake, vault_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Connections in their grace count: a burst never holds more than 2 x max_pending.

    With a 30 s grace, a server that kept new silent connections out of the waiting set
    for their grace held all 40 (a thread and a socket each) for 30 s; they join at once
    and the oldest silent ones are closed beyond the hard bound (2 x 4).
    """
    monkeypatch.setattr(transport, "FIRST_BYTES_GRACE", 30.0)
    monkeypatch.setattr(AssociationServer, "max_pending", 4)
    cap, burst = 2 * 4, 40
    config = ServerConfig(port=0, workers=0, allow=(MODALITY,), request_timeout=60)

    def waiting_threads() -> int:
        return sum("process_request_thread" in t.name for t in threading.enumerate())

    with DicomServer(lk, lk.secret(vault_dir), config) as server, contextlib.ExitStack() as stack:
        peers = [stack.enter_context(socket.create_connection(("127.0.0.1", server.port)))
                 for _ in range(burst)]
        stats = server.report.admission
        assert _eventually(lambda: stats.connections == burst, timeout=10), stats
        assert _eventually(lambda: stats.evicted >= burst - cap and waiting_threads() <= cap,
                           timeout=10), (stats, waiting_threads())
        assert stats.no_request == stats.admitted == 0
        closed = 0
        for peer in peers:
            peer.settimeout(0)
            with contextlib.suppress(BlockingIOError):
                closed += peer.recv(1) == b""
        assert closed == stats.evicted
