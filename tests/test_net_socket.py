"""The acceptor's socket wrapper: direct reads and writes of data already there."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from pynetdicom import AE, evt

from lake._capture import Captured
from lake.net._association import AcceptorAssociation, Limits, primed_socket

pytestmark = pytest.mark.network


class _Counting(socket.socket):
    """Counts the socket's own receive and send calls (the polling ones)."""

    calls: list[str]

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        self.calls.append("recv_into")
        return super().recv_into(buffer, nbytes, flags)

    def send(self, data: Any, flags: int = 0) -> int:
        self.calls.append("send")
        return super().send(data, flags)


@pytest.fixture
def pair() -> Iterator[tuple[Any, socket.socket, AcceptorAssociation]]:
    ours, peer = socket.socketpair()
    counting = _Counting(ours.family, ours.type, ours.proto, fileno=ours.detach())
    counting.calls = []
    counting.settimeout(5.0)  # pynetdicom's network timeout: a non-blocking descriptor
    assoc = AcceptorAssociation(AE(ae_title="LAKE"), Captured(), Limits(1 << 20, None, None))
    wrapper = primed_socket(assoc, counting, b"\x01\x02")
    yield wrapper, peer, assoc
    counting.close()
    peer.close()
    assoc.dul._wake.close()


def test_data_already_there_is_read_and_written_directly(
        pair: tuple[Any, socket.socket, AcceptorAssociation]) -> None:
    wrapper, peer, _ = pair
    payload = bytes(range(256)) * 100
    peer.sendall(payload)
    time.sleep(0.05)  # let it arrive (not a timing assertion: a late byte only waits)
    assert wrapper.recv(4) == b"\x01\x02" + payload[:2]  # the primed bytes first
    assert wrapper.recv(len(payload) - 2) == payload[2:]
    wrapper.send(b"response")
    assert peer.recv(100) == b"response"
    assert wrapper.socket.calls == []  # no poll-then-call of the socket's own methods


def test_waits_for_late_data_and_large_sends_through_the_socket(
        pair: tuple[Any, socket.socket, AcceptorAssociation]) -> None:
    wrapper, peer, assoc = pair
    assert wrapper.recv(2) == b"\x01\x02"
    later = threading.Timer(0.2, peer.sendall, args=(b"late data",))
    later.start()
    assert wrapper.recv(9) == b"late data"  # nothing there at first: the socket's wait
    assert "recv_into" in wrapper.socket.calls
    big = bytes(range(256)) * (16 << 10)  # 4 MiB: more than the socket buffer takes at once
    received = bytearray()

    def drain() -> None:
        while len(received) < len(big):
            received.extend(peer.recv(1 << 16))

    reader = threading.Thread(target=drain)
    reader.start()
    wrapper.send(big)
    reader.join(10)
    assert bytes(received) == big
    assert "send" in wrapper.socket.calls  # the rest went through the socket's own send
    assert "Evt17" not in assoc.dul.event_queue.queue  # no transport error
    peer.close()
    assert wrapper.recv(10) == b""  # the peer closed: short read, as before


def test_ready_after_select_saw_data_and_data_sent_handlers_keep_pynetdicoms_send(
        pair: tuple[Any, socket.socket, AcceptorAssociation],
        monkeypatch: pytest.MonkeyPatch) -> None:
    wrapper, peer, assoc = pair
    wrapper.recv(2)
    selects: list[int] = []
    real = __import__("select").select

    def counted(*args: Any) -> Any:
        selects.append(1)
        return real(*args)

    monkeypatch.setattr("pynetdicom.transport.select.select", counted)
    assert not wrapper.ready and len(selects) == 1  # nothing there: pynetdicom's select
    wrapper.seen_readable = True  # the DUL's select saw data
    assert wrapper.ready and len(selects) == 1  # not asked again
    assert not wrapper.ready and len(selects) == 2  # the hint is used once
    sent: list[bytes] = []
    assoc.bind(evt.EVT_DATA_SENT, lambda event: sent.append(event.data))
    wrapper.send(b"observed")
    assert sent == [b"observed"] and "send" in wrapper.socket.calls
    assert peer.recv(100) == b"observed"
