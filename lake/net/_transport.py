"""The lake's association server: admission before association, bounded reads, no PHI in logs.

pynetdicom's server starts an association (a thread that counts against the association
limit) for every TCP connection, before reading anything, and keeps it while waiting up to
the ACSE timeout for an A-ASSOCIATE-RQ. Ten silent connections therefore lock every
modality out. This server admits a connection first, on the connection's own thread:

1. the TLS handshake (when TLS is on) and the whole A-ASSOCIATE-RQ must arrive within
   ``request_timeout`` seconds of the connection (a trickle does not extend it), at most
   :data:`MAX_REQUEST_BYTES` long;
2. the called and calling AE titles are checked, and a refusal is answered with an
   A-ASSOCIATE-RJ without taking an association slot;
3. only then is a slot taken (or a transient "local limit exceeded" rejection sent), and
   pynetdicom's association is started with the request already read.

A connection joins the waiting ones of step 1 at once, with its arrival time, so every
one is counted. It is *in its grace* while it has sent nothing and arrived less than
:data:`FIRST_BYTES_GRACE` seconds ago; the others (it has sent bytes, or stayed silent
past the grace) are *settled*. When a connection joins while ``max_pending`` settled ones
wait, settled ones are closed until fewer than ``max_pending`` remain: the one that has
sent the fewest bytes (received or still queued in the kernel), the oldest among equals.
A connection in its grace is closed only when ``2 * max_pending`` connections wait (then
the one with the fewest bytes of all, the oldest among equals). So at most
``2 * max_pending`` connections (and their threads) wait in step 1, and a real requestor,
which sends its whole request right after connecting, is weighed with its bytes and never
closed while idle or trickling connections wait, even when a flood of reconnecting idle
peers keeps the waiting set full (without the grace, the moment between its ``connect``
and its ``send`` made it a zero-byte connection, closed by the next arrival).

Once admitted, a read or send that stalls for ``network_timeout`` seconds ends the
association (pynetdicom's own reads block, so a peer stopping mid-PDU would keep its slot
forever), and the association runs as :class:`lake.net._association.AcceptorAssociation`:
bounded reads, no polling.

Every thread that touches a peer's data (admission, the association, its DUL) runs
inside :func:`lake._capture.capture`, so pydicom's and pynetdicom's warnings and log
records, which quote received values, are counted and dropped from the first byte on.
"""

from __future__ import annotations

import array
import contextlib
import fcntl
import logging
import socket
import socketserver
import ssl
import struct
import termios
import threading
import time
from dataclasses import dataclass, fields
from typing import Any

from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.transport import RequestHandler, ThreadedAssociationServer

from lake._capture import Captured, capture
from lake.net._association import (
    MIN_PDU_LIMIT,
    STANDARD_HANDLERS,
    AcceptorAssociation,
    AssociationRequests,
    Limits,
    ReceiveBudget,
    primed_socket,
)

__all__ = [
    "FIRST_BYTES_GRACE",
    "MAX_REQUEST_BYTES",
    "AdmissionStats",
    "AssociationServer",
    "nodelay_on_open",
    "set_nodelay",
    "stall_timeout",
]

_LOG = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 1 << 20
"""The largest A-ASSOCIATE-RQ PDU accepted (real ones are a few KB; 128 contexts ~40 KB)."""

FIRST_BYTES_GRACE = 0.25
"""Seconds a new, silent connection is closed only to keep the hard bound of waiting
connections (``2 * max_pending``); its first bytes end the grace at once."""

_A_ASSOCIATE_RQ = 0x01
_PDU_TYPES = frozenset(range(0x01, 0x08))
_MIN_REQUEST_BYTES = 74  # fixed fields up to the first variable item (PS3.8 Table 9-11)


def set_nodelay(sock: socket.socket) -> None:
    """Disable Nagle's algorithm: a DIMSE exchange otherwise waits ~40 ms for delayed ACKs."""
    with contextlib.suppress(OSError):  # a closed socket: nothing to tune
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def nodelay_on_open(event: Any) -> None:
    """EVT_CONN_OPEN handler for associations the lake requests (TCP_NODELAY)."""
    sock = getattr(getattr(event.assoc.dul, "socket", None), "socket", None)
    if sock is not None:
        set_nodelay(sock)


_TCP_QUICKACK = getattr(socket, "TCP_QUICKACK", 0)


class _QuickAckSocket(socket.socket):
    """A TCP socket that acknowledges every segment at once (Linux TCP_QUICKACK).

    A peer that leaves Nagle's algorithm on (dcmtk does, unless TCP_NODELAY=1 is in its
    environment) waits for our ACK before sending the rest of a DIMSE message, and
    Linux delays that ACK by up to 40 ms. TCP_QUICKACK is not sticky, so it is set
    again before each read.
    """

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        with contextlib.suppress(OSError):
            self.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)
        return super().recv(bufsize, flags)

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        with contextlib.suppress(OSError):
            self.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)
        return super().recv_into(buffer, nbytes, flags)


def stall_timeout(sock: socket.socket, seconds: float | None) -> None:
    """Let a read or send on ``sock`` that waits ``seconds`` fail (None: wait forever).

    A Python socket with a timeout ``poll``s before every ``recv`` and ``send``, even
    with the data already there: one more system call per read and per write, each
    giving the GIL away (~5 per received instance). A plain TCP socket is made
    blocking instead, with the timeout in the kernel (``SO_RCVTIMEO``, ``SO_SNDTIMEO``):
    the socket's own ``recv_into`` and ``send`` are then one call each, and a peer that
    stalls still ends the association (the call fails with ``EAGAIN``, an ``OSError``
    like the timeout it replaces). I/O still goes through the socket object, which
    refuses it once another thread closed the socket (never a raw descriptor, which
    the system may have reused by then). A TLS socket keeps Python's timeout: its reads
    and writes may need the other direction, which the kernel timeout does not bound
    as a whole.
    """
    if seconds is None or isinstance(sock, ssl.SSLSocket) or seconds <= 0:
        sock.settimeout(seconds)
        return
    whole = int(seconds)
    timeval = struct.pack("@ll", whole, int((seconds - whole) * 1_000_000))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)
    sock.settimeout(None)


def _quickack(sock: socket.socket) -> socket.socket:
    if not _TCP_QUICKACK or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return sock
    timeout = sock.gettimeout()
    wrapped = _QuickAckSocket(sock.family, sock.type, sock.proto, fileno=sock.detach())
    wrapped.settimeout(timeout)
    return wrapped


def _associate_rj(result: int, source: int, reason: int) -> bytes:
    """An A-ASSOCIATE-RJ PDU (PS3.8 9.3.4)."""
    return struct.pack(">BBIBBBB", 0x03, 0, 4, 0, result, source, reason)


def _abort(reason: int) -> bytes:
    """An A-ABORT PDU from the service provider (PS3.8 9.3.8)."""
    return struct.pack(">BBIBBBB", 0x07, 0, 4, 0, 0, 0x02, reason)


_CALLED_AET_UNKNOWN = _associate_rj(0x01, 0x01, 0x07)
_CALLING_AET_UNKNOWN = _associate_rj(0x01, 0x01, 0x03)
_LOCAL_LIMIT = _associate_rj(0x02, 0x03, 0x02)
_ABORT_UNEXPECTED = _abort(0x02)
_ABORT_INVALID = _abort(0x06)


@dataclass
class AdmissionStats:
    """What happened to connections before association (counts only, no identifiers).

    Attributes
    ----------
    connections : int
        TCP connections accepted.
    admitted : int
        Associations started (a slot was free).
    no_request : int
        Closed without a complete A-ASSOCIATE-RQ within the request timeout (idle, slow,
        or gone), including failed TLS handshakes.
    evicted : int
        Closed while waiting to make room (module docstring): ``max_pending`` settled
        connections, or ``2 * max_pending`` in all, were waiting and this one had sent
        the least.
    malformed : int
        Sent something other than an A-ASSOCIATE-RQ, or a malformed or oversized one.
    called_aet_refused : int
        Called an AE title other than the lake's.
    calling_aet_refused : int
        Calling AE title not in the allow-list.
    busy : int
        Refused because every association slot was taken.
    """

    connections: int = 0
    admitted: int = 0
    no_request: int = 0
    evicted: int = 0
    malformed: int = 0
    called_aet_refused: int = 0
    calling_aet_refused: int = 0
    busy: int = 0

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


class _RefusedError(Exception):
    """A connection is refused before association: ``reply`` (if any) is sent, then closed."""

    def __init__(self, counter: str, reply: bytes = b"") -> None:
        super().__init__(counter)
        self.counter = counter
        self.reply = reply


class _Waiting:
    """A connection waiting for its request: how much it has sent so far."""

    __slots__ = ("arrived", "evicted", "received", "sock")

    def __init__(self, sock: socket.socket, arrived: float) -> None:
        self.sock = sock
        self.arrived = arrived
        self.received = 0
        self.evicted = False

    def progress(self) -> int:
        """Bytes read from it plus bytes queued in the kernel (``FIONREAD``, never a wait).

        Not a ``select`` then a peek: the connection's own thread may take the queued bytes
        in between, and with a timeout set Python's ``recv`` then waits for more (for up to
        the request timeout, holding the admission lock). The queued bytes are read before
        ``received``, which the reader raises before it takes them out of the queue, so a
        sender never weighs zero.
        """
        try:
            count = array.array("i", [0])
            fcntl.ioctl(self.sock.fileno(), termios.FIONREAD, count)
        except (OSError, ValueError):
            return -1  # broken or closed: the first to go
        queued = count[0]
        if isinstance(self.sock, ssl.SSLSocket):
            queued = min(queued, 1)  # TLS records, not request bytes: "something came"
        return self.received + queued


class _Admission:
    """Waiting connections, association slots and their counts, for one server."""

    def __init__(self, slots: int, max_pending: int, request_timeout: float) -> None:
        self.request_timeout = request_timeout
        self.max_pending = max_pending
        self.stats = AdmissionStats()
        self._slots = threading.BoundedSemaphore(slots)
        self._lock = threading.Lock()
        self._waiting: list[_Waiting] = []  # oldest first
        self._closed = False

    def count(self, name: str) -> None:
        with self._lock:
            setattr(self.stats, name, getattr(self.stats, name) + 1)

    # -- waiting for the request ---------------------------------------------------------
    def wait_start(self, sock: socket.socket) -> _Waiting:
        """Join the waiting connections at once, closing others to keep the bounds.

        While ``max_pending`` settled connections wait (they sent bytes, or stayed silent
        past :data:`FIRST_BYTES_GRACE`), the settled one with the fewest bytes goes; while
        ``2 * max_pending`` wait in all, the one with the fewest bytes of all goes (a
        connection in its grace only then). The oldest goes among equals.
        """
        now = time.monotonic()
        waiting = _Waiting(sock, now)
        with self._lock:
            self.stats.connections += 1
            if self._closed:
                raise _RefusedError("no_request")
            # oldest first, so min() keeps the oldest of equals
            # (no eviction below max_pending waiting: their queued bytes are not asked)
            weighed = ([(w.progress(), w) for w in self._waiting]
                       if len(self._waiting) >= self.max_pending else [])
            while weighed:
                settled = [(p, w) for p, w in weighed
                           if p != 0 or now - w.arrived >= FIRST_BYTES_GRACE]
                if len(settled) >= self.max_pending:
                    pool = settled
                elif len(weighed) >= 2 * self.max_pending:
                    pool = weighed
                else:
                    break
                victim = min(pool, key=lambda pair: pair[0])
                weighed.remove(victim)
                self._waiting.remove(victim[1])
                victim[1].evicted = True
                _shutdown(victim[1].sock)
            self._waiting.append(waiting)
        return waiting

    def wait_end(self, waiting: _Waiting) -> bool:
        """Stop tracking; returns whether the connection was evicted meanwhile."""
        with self._lock:
            if waiting in self._waiting:
                self._waiting.remove(waiting)
            return waiting.evicted

    def close(self) -> None:
        """Close every waiting connection; refuse new ones (the server is stopping)."""
        with self._lock:
            self._closed = True
            for waiting in self._waiting:
                _shutdown(waiting.sock)
            self._waiting.clear()

    # -- slots -------------------------------------------------------------------------
    def take_slot(self) -> bool:
        return self._slots.acquire(blocking=False)

    def release_slot(self) -> None:
        self._slots.release()


def _shutdown(sock: socket.socket) -> None:
    # Wakes the thread blocked reading it; that thread closes it.
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def _read_exactly(sock: socket.socket, n: int, deadline: float, waiting: _Waiting) -> bytes:
    data = bytearray()
    while len(data) < n:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        sock.settimeout(remaining)
        want = min(n - len(data), 65536)
        if isinstance(sock, ssl.SSLSocket):
            chunk = sock.recv(want)
            waiting.received += len(chunk)
        else:
            # Count the bytes before taking them out of the kernel's queue: eviction weighs
            # received plus queued bytes, and must never see a sender at zero in between.
            peeked = sock.recv(want, socket.MSG_PEEK)
            waiting.received += len(peeked)
            chunk = sock.recv(len(peeked)) if peeked else b""
        if not chunk:
            raise ConnectionError
        data += chunk
    return bytes(data)


def _read_request(sock: socket.socket, deadline: float, waiting: _Waiting) -> bytes:
    """The A-ASSOCIATE-RQ PDU, whole, or :class:`_RefusedError`."""
    header = _read_exactly(sock, 6, deadline, waiting)
    pdu_type, length = header[0], struct.unpack(">I", header[2:6])[0]
    if pdu_type != _A_ASSOCIATE_RQ:
        # PS3.8 state Sta2: an unexpected PDU is answered with an A-ABORT, an A-ABORT with nothing
        reply = b"" if pdu_type == 0x07 else (
            _ABORT_UNEXPECTED if pdu_type in _PDU_TYPES else _ABORT_INVALID)
        raise _RefusedError("malformed", reply)
    if not _MIN_REQUEST_BYTES - 6 <= length <= MAX_REQUEST_BYTES:
        raise _RefusedError("malformed", _ABORT_INVALID)
    return header + _read_exactly(sock, length, deadline, waiting)


def _ae_title(field: bytes) -> str:
    return field.decode("ascii", "replace").strip(" \x00")


class _RequestHandler(RequestHandler):
    """Admits a connection (see the module docstring), then runs its association here.

    Also skips pynetdicom's per-association deep copy of every supported context (~180,
    each with its transfer syntaxes; ~100 ms of CPU here): negotiation only reads them,
    and the lake's EVT_REQUESTED handler replaces, never mutates, the ones it reorders.
    """

    server: AssociationServer

    def handle(self) -> None:
        server = self.server
        with capture(into=server.captured):
            admitted = self._admit(server)
            if admitted is None:
                return
            sock, request = admitted
            try:
                assoc = self._association(sock, request)
                evt.trigger(assoc, evt.EVT_CONN_OPEN, {"address": self.client_address})
                assoc.start()
                assoc.join()
            finally:
                server.admission.release_slot()

    def _admit(self, server: AssociationServer) -> tuple[socket.socket, bytes] | None:
        admission = server.admission
        sock = raw = self.request
        assert isinstance(raw, socket.socket)
        deadline = time.monotonic() + admission.request_timeout
        try:
            waiting = admission.wait_start(raw)
        except _RefusedError as closing:
            admission.count(closing.counter)
            _close(raw)
            return None
        try:
            if server.ssl_context is not None:
                sock = _handshake(server.ssl_context, waiting, deadline)
            request = _read_request(sock, deadline, waiting)
            refusal = _screen(server, request)
        except _RefusedError as malformed:
            refusal = malformed
        except OSError:  # timeout, reset, eviction, failed TLS handshake
            evicted = admission.wait_end(waiting)
            admission.count("evicted" if evicted else "no_request")
            _close(sock)
            return None
        if admission.wait_end(waiting):  # closed to make room while we read it
            admission.count("evicted")
            _close(sock)
            return None
        if refusal is None and not admission.take_slot():
            refusal = _RefusedError("busy", _LOCAL_LIMIT)
        if refusal is not None:
            admission.count(refusal.counter)
            _LOG.info("connection refused before association: %s", refusal.counter)
            _reply_and_close(sock, refusal.reply)
            return None
        admission.count("admitted")
        # Admitted: a read or send that stalls this long ends the association (pynetdicom's
        # own reads block forever, so a peer stopping mid-PDU would keep its slot).
        stall_timeout(sock, server.ae.network_timeout)
        return sock, request

    def _association(self, sock: socket.socket, request: bytes) -> Association:
        server = self.server
        assoc = AcceptorAssociation(self.ae, server.captured, server.limits(),
                                    server.requests)
        assoc._server = server
        assoc.name = f"AcceptorThread@{time.strftime('%Y%m%d%H%M%S')}"
        assoc.set_socket(primed_socket(assoc, sock, request))
        assoc.acceptor.maximum_length = self.ae.maximum_pdu_size
        assoc.acceptor.ae_title = server.ae_title
        assoc.acceptor.address_info = self.local
        assoc.acceptor.implementation_class_uid = self.ae.implementation_class_uid
        assoc.acceptor.implementation_version_name = self.ae.implementation_version_name
        assoc.acceptor.supported_contexts = list(server.contexts)
        assoc.requestor.address_info = self.remote
        handlers: dict[Any, Any] = server._handlers
        for event, bound in handlers.items():
            if event.is_intervention and bound:
                assoc.bind(event, *bound)
            elif isinstance(event, evt.NotificationEvent):
                for handler, args in bound:
                    assoc.bind(event, handler, args)
        return assoc


def _screen(server: AssociationServer, request: bytes) -> _RefusedError | None:
    """Check the called and calling AE titles of an A-ASSOCIATE-RQ (PS3.8 Table 9-11)."""
    called, calling = _ae_title(request[10:26]), _ae_title(request[26:42])
    if server.ae.require_called_aet and called != server.ae_title.strip():
        return _RefusedError("called_aet_refused", _CALLED_AET_UNKNOWN)
    allowed = [a.strip() for a in server.ae.require_calling_aet]
    if allowed and calling not in allowed:
        return _RefusedError("calling_aet_refused", _CALLING_AET_UNKNOWN)
    return None


def _handshake(context: ssl.SSLContext, waiting: _Waiting, deadline: float) -> ssl.SSLSocket:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError
    waiting.sock.settimeout(remaining)
    # wrap_socket detaches the plain socket: from now on the TLS one is what eviction closes
    tls = context.wrap_socket(waiting.sock, server_side=True, do_handshake_on_connect=False)
    waiting.sock = tls
    tls.do_handshake()
    return tls


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.close()


def _reply_and_close(sock: socket.socket, reply: bytes) -> None:
    with contextlib.suppress(OSError):
        if reply:
            sock.settimeout(2.0)
            sock.sendall(reply)
        sock.shutdown(socket.SHUT_WR)
    _close(sock)


class AssociationServer(ThreadedAssociationServer):
    """pynetdicom's threaded server with admission before association (module docstring).

    Also: TCP_NODELAY and quick ACKs on accepted sockets, the TLS handshake on the
    connection's thread (never in the accept loop), a listen backlog of 128, and no
    traceback printed for a failed connection (an exception text may quote a value).

    Attributes
    ----------
    admission : _Admission
        Slots (``ae.maximum_associations``), waiting connections and their counts.
    captured : Captured
        What pydicom and pynetdicom warned or logged on the server's threads (counts).
    requests : AssociationRequests
        The A-ASSOCIATE-RQ PDUs decoded lately: a request seen before is not decoded again.
    """

    request_queue_size = 128
    daemon_threads = True  # stop() ends associations itself; server_close never waits
    block_on_close = False
    request_timeout: float = 5.0
    max_pending: int = 64

    def __init__(self, ae: Any, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("request_handler", _RequestHandler)
        self.captured = Captured()
        self.requests = AssociationRequests()
        self.admission = _Admission(ae.maximum_associations, self.max_pending,
                                    self.request_timeout)
        super().__init__(ae, *args, **kwargs)
        for event, handler in STANDARD_HANDLERS:  # debug-log formatting of every PDU
            self.unbind(event, handler)

    max_dataset_bytes: int | None = None
    budget: ReceiveBudget | None = None

    def configure(
        self, *, request_timeout: float | None = None, max_pending: int | None = None,
        max_dataset_bytes: int | None = None, budget_bytes: int | None = None,
    ) -> None:
        """Set the limits (before serving).

        Parameters
        ----------
        request_timeout : float, optional
            Seconds for the TLS handshake plus the A-ASSOCIATE-RQ.
        max_pending : int, optional
            Settled connections that may wait for their request at once (twice as many
            in all, counting new silent ones in their grace: module docstring).
        max_dataset_bytes : int, optional
            C-STORE data sets beyond this are dropped while they stream
            (:attr:`DataSetBuffer.overflow` ``"too_large"``).
        budget_bytes : int, optional
            Data set bytes held at once by all associations; beyond it arriving data sets
            are dropped while they stream (:attr:`DataSetBuffer.overflow` ``"busy"``).
        """
        if request_timeout is not None:
            self.admission.request_timeout = request_timeout
        if max_pending is not None:
            self.admission.max_pending = max_pending
        if max_dataset_bytes is not None:
            self.max_dataset_bytes = max_dataset_bytes
        if budget_bytes is not None:
            self.budget = ReceiveBudget(budget_bytes)

    def limits(self) -> Limits:
        return Limits(
            max_pdu=max(int(self.ae.maximum_pdu_size or 0), MIN_PDU_LIMIT),
            dataset=self.max_dataset_bytes,
            budget=self.budget,
        )

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        assert self.socket is not None
        client, address = self.socket.accept()
        set_nodelay(client)
        if self.ssl_context is None:
            client = _quickack(client)
        return client, address

    def service_actions(self) -> None:
        """Nothing between requests (pynetdicom's runs a full ``gc.collect()`` every 60th).

        pynetdicom's server collects garbage itself every 60 rounds of ``serve_forever``
        (every 12 s idle at our 0.2 s poll interval, sooner while connections arrive),
        because ended associations' threads were not collected at once. With the lake's
        catalog, pyarrow and pydicom loaded, one full collection held the GIL for tens
        to hundreds of milliseconds: 20 % of the server's GIL-holding samples in a py-spy
        profile of 1,560 received instances, stalling every association meanwhile.
        Python's own cyclic collector frees ended associations (reference cycles
        between association, DUL and DIMSE provider) on its usual schedule.
        """

    def handle_error(self, request: Any, client_address: Any) -> None:
        # socketserver prints the traceback to stderr; its text may quote a received value.
        _LOG.error("a connection failed with an internal error")

    def shutdown(self) -> None:
        # Made with AE.make_server, so not registered in the AE's own server list.
        self.admission.close()
        socketserver.BaseServer.shutdown(self)  # stop serve_forever
        self.server_close()
