"""The lake's acceptor association: pynetdicom's, with bounded reads and no polling.

pynetdicom (3.0) runs two threads per association that poll: the DUL provider sleeps 1 ms
whenever it finds nothing to do, and the association reactor sleeps 1 ms on every round.
A C-STORE therefore waits up to ~1 ms for its last PDU to be noticed, ~1 ms for the
reactor to pick the message up, and ~1 ms for the response to be sent: with one
association, ~3 ms of every instance is spent asleep (an acknowledge-only handler ran
at ~270 instances/s here). Here both threads block until there is work instead:

- the DUL thread waits in ``select`` on the peer's socket *and* a wake-up socket that
  the association writes to whenever it queues a primitive to send; and a P-DATA (every
  DIMSE response) is sent by the thread that makes it when the state machine would only
  have sent it (:meth:`_DUL.send_pdu`), one hand-off between threads fewer;
- the reactor waits on an event set whenever the DIMSE provider completes a message or
  the DUL hands up a primitive (release, abort), or the DUL thread ends.
- a plain C-STORE request is served by the DUL thread that read it when the reactor would
  have served it next (the association established, nothing queued before it, the reactor
  neither serving nor paused by a handler): one hand-off between threads fewer per
  instance; otherwise it is queued.

Both still wake every :data:`_TIMER_CHECK` seconds to look at their timers (ARTIM, the
network timeout), which pynetdicom checks on each round. The state machine, the PDU
codecs and the service classes are pynetdicom's, unchanged. PDUs are read with
``recv_into`` in as few system calls as the data allows (pynetdicom reads 4 KiB at a time).
pynetdicom's standard logging handlers, which format every PDU and DIMSE message for a
debug log even when nothing logs at debug level, are not bound.

Bounds: a PDU longer than ``max(maximum PDU length, 1 MiB)`` or a command set over 64 KiB
aborts the association; a C-STORE data set is kept in a :class:`DataSetBuffer`, which
drops it as it streams when it exceeds its limit or the server's :class:`ReceiveBudget`;
any other message's data set over 16 MiB (or that limit) aborts the association.

Every thread runs inside :func:`lake._capture.capture`: what pydicom and pynetdicom warn or
log there (received values) is counted, not shown; a thread that fails ends its
association without printing its traceback.

These are contribution-quality changes to pynetdicom's DUL and reactor (same state
machine, same events, same public behaviour): the no-polling waits in particular would
make every pynetdicom user faster.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import queue
import re
import select
import socket
import ssl
import struct
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from pydicom import config as pydicom_config
from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom import _config as pynetdicom_config
from pynetdicom import evt
from pynetdicom._globals import MODE_ACCEPTOR
from pynetdicom._handlers import (
    standard_dimse_recv_handler,
    standard_dimse_sent_handler,
    standard_pdu_recv_handler,
    standard_pdu_sent_handler,
)
from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_messages import C_STORE_RQ, DIMSEMessage
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RQ, P_DATA_TF
from pynetdicom.pdu_primitives import A_ASSOCIATE, P_DATA
from pynetdicom.service_class import StorageServiceClass
from pynetdicom.sop_class import uid_to_service_class
from pynetdicom.transport import AssociationSocket

from lake._capture import Captured, capture

__all__ = [
    "MAX_COMMAND_BYTES",
    "MAX_MESSAGE_BYTES",
    "MIN_PDU_LIMIT",
    "STANDARD_HANDLERS",
    "AcceptorAssociation",
    "AssociationRequests",
    "DataSetBuffer",
    "Limits",
    "ReceiveBudget",
    "StoreRequest",
    "pdv_items",
    "store_request",
    "store_response",
]

_LOG = logging.getLogger(__name__)

MAX_COMMAND_BYTES = 1 << 16
"""The largest DIMSE command set accepted (real ones are a few hundred bytes)."""

MAX_MESSAGE_BYTES = 1 << 24
"""The largest data set of any message but a C-STORE request (query keys, N- attributes)."""

MIN_PDU_LIMIT = 1 << 20
"""PDUs up to this long are read whatever maximum we announced (peers overshoot a little)."""

_PDU_TYPES = frozenset(range(0x01, 0x08))
_ABORT = struct.pack(">BBIBBBB", 0x07, 0, 4, 0, 0, 0x02, 0x02)  # A-ABORT, unexpected PDU
_TIMER_CHECK = 0.05  # seconds a waiting thread sleeps at most before looking at its timers

STANDARD_HANDLERS = (
    (evt.EVT_DIMSE_RECV, standard_dimse_recv_handler),
    (evt.EVT_DIMSE_SENT, standard_dimse_sent_handler),
    (evt.EVT_PDU_RECV, standard_pdu_recv_handler),
    (evt.EVT_PDU_SENT, standard_pdu_sent_handler),
)
"""pynetdicom's default debug-log handlers (bound to every server and association)."""


# --- bounds -------------------------------------------------------------------------------


class ReceiveBudget:
    """Bytes of received data sets a server holds at once, all associations together.

    A data set takes its bytes as they arrive and gives them back once handled (or
    dropped, or its association gone), so the server's memory for instances in flight
    stays under ``limit`` whatever the number of peers.

    Parameters
    ----------
    limit : int
        The budget in bytes.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0
        self._lock = threading.Lock()

    def take(self, n: int) -> bool:
        with self._lock:
            if self.held + n > self.limit:
                return False
            self.held += n
            return True

    def give_back(self, holder: list[int]) -> None:
        with self._lock:
            self.held -= holder[0]
            holder[0] = 0


class DataSetBuffer(io.BytesIO):
    """The data set of a DIMSE message being received, kept only within its limits.

    Beyond ``limit`` bytes, or when the server's :class:`ReceiveBudget` is spent, what
    was kept is freed and the rest is only counted: memory stays bounded however large
    the data set and however many peers send at once.

    Parameters
    ----------
    limit : int, optional
        The largest data set kept.
    budget : ReceiveBudget, optional
        Shared by the server's associations.

    Attributes
    ----------
    size : int
        Bytes received for the data set, kept or not.
    overflow : str or None
        ``"too_large"`` (over ``limit``) or ``"busy"`` (the budget was spent): the
        content is gone. None while it is kept whole.
    """

    def __init__(self, limit: int | None, budget: ReceiveBudget | None = None) -> None:
        super().__init__()
        self.limit = limit
        self.size = 0
        self.overflow: str | None = None
        self._budget = budget
        self._held = [0]
        if budget is not None:  # whatever happens to the buffer, its bytes go back
            weakref.finalize(self, budget.give_back, self._held)

    @property
    def overflowed(self) -> bool:
        return self.overflow is not None

    def write(self, data: Any) -> int:
        n = len(data)
        self.size += n
        if self.overflow is not None:
            return n
        if self.limit is not None and self.size > self.limit:
            self._drop("too_large")
            return n
        if self._budget is not None:
            if not self._budget.take(n):
                self._drop("busy")
                return n
            self._held[0] += n
        return super().write(data)

    def release(self) -> None:
        """Give the bytes back to the budget (the data set was handled); idempotent."""
        if self._budget is not None:
            self._budget.give_back(self._held)

    def _drop(self, reason: str) -> None:
        self.overflow = reason
        self.seek(0)
        self.truncate()
        self.release()


@dataclass(frozen=True)
class Limits:
    """What an association may send us.

    Attributes
    ----------
    max_pdu : int
        Longer PDUs abort the association.
    dataset : int or None
        C-STORE data sets beyond this are dropped while they stream (no limit: None).
    budget : ReceiveBudget or None
        The server's budget for data sets in flight.
    """

    max_pdu: int
    dataset: int | None
    budget: ReceiveBudget | None


# --- association requests, decoded once ------------------------------------------------


class _DecodedRequest(A_ASSOCIATE_RQ):
    """A decoded A-ASSOCIATE-RQ whose primitive is built once and handed out as copies.

    pynetdicom decodes the PDU (2.5-2.9 ms of CPU for storescu's 128 presentation
    contexts here) and builds its primitive in the state machine's AE-6 (1.7-2.0 ms),
    validating every UID both times. Both are pure functions of the PDU's bytes, so a
    request seen before is neither decoded nor converted again: :meth:`to_primitive`
    gives a copy of the first conversion whose lists, presentation contexts and user
    information items are the association's own (nothing it changes reaches the cache),
    holding the same, already validated UID objects.
    """

    _template: A_ASSOCIATE

    def to_primitive(self) -> A_ASSOCIATE:
        template = self._template
        primitive = copy.copy(template)
        primitive._user_information = [copy.copy(i) for i in template.user_information]
        contexts = []
        for cx in template.presentation_context_definition_list:
            context = copy.copy(cx)
            context._transfer_syntax = list(cx._transfer_syntax)
            contexts.append(context)
        primitive._presentation_context_definition_list = contexts
        primitive._presentation_context_definition_results_list = []
        return primitive


class AssociationRequests:
    """What a server decoded and encoded lately to set up associations (one server's).

    A modality or a sending script proposes the same request on every association
    (storescu: 128 storage contexts, ~9.6 KB) and gets the same answer. pynetdicom
    decodes the request and builds its primitive (~4.7 ms of CPU here), then builds the
    A-ASSOCIATE-AC PDU from the accept primitive (~3 ms), validating every UID each
    time: half of the ~16 ms of CPU the server spent per association. Both are pure
    functions, of the request's bytes and of the accept primitive's values, so each is
    done by pynetdicom the first time and taken from here after: :meth:`decode` (the
    request, :class:`_DecodedRequest`) and :meth:`accept` (the encoded A-ASSOCIATE-AC).
    What pydicom or pynetdicom warn or log while doing it (counted by
    :mod:`lake._capture`) is counted the first time only.

    Parameters
    ----------
    entries : int
        Distinct requests, and distinct answers, kept (the least recently used dropped).
    max_bytes : int
        Longer requests are decoded every time, never kept.
    """

    def __init__(self, entries: int = 32, max_bytes: int = 1 << 16) -> None:
        self.entries = entries
        self.max_bytes = max_bytes
        self.decoded = 0
        """Requests decoded, and answers encoded, by pynetdicom (not found here)."""
        self.reused = 0
        """Requests and answers taken from here."""
        self._lock = threading.Lock()
        self._kept: OrderedDict[Any, Any] = OrderedDict()

    def _get(self, key: Any) -> Any:
        with self._lock:
            found = self._kept.get(key)
            if found is not None:
                self._kept.move_to_end(key)
                self.reused += 1
            return found

    def _keep(self, key: Any, value: Any) -> None:
        with self._lock:
            self.decoded += 1
            if key is not None and self.entries > 0:
                self._kept[key] = value
                while len(self._kept) > self.entries:
                    self._kept.popitem(last=False)

    def decode(self, data: bytes | bytearray) -> A_ASSOCIATE_RQ:
        """The decoded PDU of ``data`` (a whole A-ASSOCIATE-RQ, header included).

        Raises
        ------
        Exception
            Whatever pynetdicom's decoding raises for an invalid PDU (nothing is kept).
        """
        key = ("rq", bytes(data))
        request = self._get(key)
        if request is not None:
            return cast(A_ASSOCIATE_RQ, request)
        request = _DecodedRequest()
        request.decode(key[1])
        request._template = A_ASSOCIATE_RQ.to_primitive(request)
        self._keep(key if len(data) <= self.max_bytes else None, request)
        return request

    def accept(self, primitive: A_ASSOCIATE) -> bytes:
        """The A-ASSOCIATE-AC PDU pynetdicom encodes for ``primitive`` (an accept), as bytes.

        Kept by every value the PDU is made of (AE titles, application context, each
        result context, each user information item); a primitive holding anything else
        than plain values there is encoded every time.
        """
        key = _accept_key(primitive)
        encoded = self._get(key) if key is not None else None
        if encoded is None:
            encoded = bytes(A_ASSOCIATE_AC(primitive).encode())
            self._keep(key, encoded)
        return cast(bytes, encoded)


_PLAIN = (str, bytes, int, float, type(None))  # bool is an int


def _values(item: object) -> tuple[Any, ...] | None:
    """``item``'s type and attributes as a hashable key; None if one is not a plain value."""
    values: list[tuple[str, Any]] = []
    for name, value in sorted(vars(item).items()):
        if isinstance(value, list):
            if not all(isinstance(v, _PLAIN) for v in value):
                return None
            value = ("list", *value)
        elif not isinstance(value, _PLAIN):
            return None
        values.append((name, value))
    return (type(item).__qualname__, *values)


def _accept_key(primitive: A_ASSOCIATE) -> tuple[Any, ...] | None:
    contexts = tuple(_values(cx) for cx in primitive.presentation_context_definition_results_list)
    items = tuple(_values(item) for item in primitive.user_information)
    if None in contexts or None in items:
        return None
    return ("ac", primitive.called_ae_title, primitive.calling_ae_title,
            str(primitive.application_context_name), primitive.result, contexts, items)


# --- waking instead of polling ------------------------------------------------------------


class _NotifyingQueue(queue.Queue[Any]):
    """A queue that calls ``notify`` after each put (wakes the thread that consumes it)."""

    def __init__(self, notify: Callable[[], None]) -> None:
        super().__init__()
        self._notify = notify

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        self._notify()


class _WakeSocket:
    """A socket pair: writing to one end makes ``select`` on the other return.

    Only written to while its thread is (about to be) waiting: the waiter sets
    :attr:`waiting` *before* its last look at its queues, so a put either is seen by that
    look or finds ``waiting`` set and wakes it. Python socket objects refuse I/O once
    closed, so a late :meth:`set` from another thread can never write into an unrelated
    file that reused the descriptor.
    """

    def __init__(self) -> None:
        self.reader, self._writer = socket.socketpair()
        self.reader.setblocking(False)
        self._writer.setblocking(False)
        self.waiting = False

    def set(self) -> None:
        if not self.waiting:
            return
        with contextlib.suppress(OSError):  # full (already awake) or closed
            self._writer.send(b"\0")

    def drain(self) -> None:
        with contextlib.suppress(OSError):
            while self.reader.recv(4096):
                pass

    def close(self) -> None:
        self.reader.close()
        self._writer.close()


# --- the association's threads ----------------------------------------------------------


class _PrimedSocket(AssociationSocket):
    """pynetdicom's socket wrapper: replays the already read A-ASSOCIATE-RQ, reads whole."""

    def __init__(self, assoc: Association, client_socket: socket.socket, primed: bytes) -> None:
        super().__init__(assoc, client_socket=client_socket)
        self._primed = bytearray(primed)

    @property
    def ready(self) -> bool:
        return bool(self._primed) or super().ready

    def recv(self, nr_bytes: int) -> bytearray:
        """Exactly ``nr_bytes`` (fewer only if the peer closed): primed bytes, then the socket.

        Raises
        ------
        OSError
            On a reset or a stall longer than the socket's timeout.
        """
        out = bytearray(nr_bytes)
        view = memoryview(out)
        got = min(len(self._primed), nr_bytes)
        if got:
            view[:got] = self._primed[:got]
            del self._primed[:got]
        sock = self.socket
        while got < nr_bytes and sock is not None:
            n = sock.recv_into(view[got:])
            if not n:
                break
            got += n
        view.release()
        if got < nr_bytes:
            del out[got:]  # the peer closed
        return out


class _ReceivedMessage(DIMSEMessage):
    """A DIMSE message being received, as pynetdicom's ``DIMSEMessage()`` starts it, but
    its empty command set (a pydicom data set) made only if something reads it.

    Decoding the command replaces it before anything reads it (pynetdicom's
    ``decode_msg`` sets the decoded one, then the message's class; the lake's plain
    C-STORE path never reads it), and building it took ~20 us of the server's CPU per
    received message here. Once set or made, it is an ordinary attribute, which stays
    when decoding changes the message's class.
    """

    def __init__(self, data_set: DataSetBuffer) -> None:
        # what DIMSEMessage.__init__ sets for a message of no type yet, but the command set
        self.context_id = None
        self.encoded_command_set = io.BytesIO()
        self.data_set = data_set
        self._data_set_path = None
        self._data_set_file = None

    @property
    def command_set(self) -> Dataset:
        found = self.__dict__.get("command_set")
        if found is None:
            found = self.__dict__["command_set"] = Dataset()
        return cast(Dataset, found)

    @command_set.setter
    def command_set(self, value: Dataset) -> None:
        self.__dict__["command_set"] = value


class _DIMSE(DIMSEServiceProvider):
    """pynetdicom's DIMSE provider: bounded reassembly, completed messages wake the reactor."""

    def __init__(self, assoc: AcceptorAssociation, limits: Limits) -> None:
        super().__init__(assoc)
        self._limits = limits
        self.msg_queue = _NotifyingQueue(assoc.wake.set)
        self._store: StoreRequest | None = None  # a decoded request waiting for its data set

    def receive_primitive(self, primitive: P_DATA) -> None:
        # One PDV at a time, so that every limit is checked before pynetdicom keeps the bytes.
        for item in primitive.presentation_data_value_list:
            message = self.message
            if message is None:
                message = self.message = _ReceivedMessage(
                    DataSetBuffer(self._limits.dataset, self._limits.budget))
            data = item[1]
            if data[0] & 1:
                too_long = message.encoded_command_set.tell() + len(data) > MAX_COMMAND_BYTES
            else:
                # a C-STORE data set over its limit is dropped by the buffer, as it streams;
                # any other message that large has no business here: the association goes
                buffer = cast(DataSetBuffer, message.data_set)
                limit = min(MAX_MESSAGE_BYTES, buffer.limit or MAX_MESSAGE_BYTES)
                too_long = (not isinstance(message, C_STORE_RQ)
                            and buffer.size + len(data) - 1 > limit)
            if too_long:
                _LOG.info("aborting an association: a DIMSE message over the size limit")
                self.message = None
                self._store = None
                self.dul.event_queue.put("Evt19")  # invalid PDU: A-ABORT, association ends
                return
            if self._receive_store(message, item[0], data):
                continue
            single = P_DATA()
            # the item as decoded by pynetdicom; its setter would re-check it ([ID, PDV] lists)
            single._presentation_data_value_list = [item]
            super().receive_primitive(single)

    def _receive_store(self, message: DIMSEMessage, context_id: int, data: bytes) -> bool:
        """A plain C-STORE request's fragment, taken here; False: pynetdicom's way.

        A command set that :func:`store_request` decodes (in one fragment, nothing bound to
        ``EVT_DIMSE_RECV``) leaves the message as pynetdicom's decoding would (a
        ``C_STORE_RQ`` holding its encoded command set and context) but without the pydicom
        data set of the command; its data set fragments are kept in the same buffer, and
        the last one queues a :class:`C_STORE` primitive built from the decoded values
        (:func:`_store_primitive`) instead of pynetdicom's ``message_to_primitive``.
        Anything else goes pynetdicom's way; a command fragment arriving while a decoded
        request waits for its data set first gets the pydicom command set pynetdicom
        would have made, then goes pynetdicom's way too.
        """
        request = self._store
        if data[0] & 1:  # a command fragment
            if request is not None:  # not plain after all: pynetdicom's state, its way
                message.command_set = _decode_command(message.encoded_command_set)
                self._store = None
                return False
            if (
                not data[0] & 2  # more command fragments to come
                or message.encoded_command_set.tell()
                or self.assoc.get_handlers(evt.EVT_DIMSE_RECV)
                or pynetdicom_config.STORE_RECV_CHUNKED_DATASET
            ):
                return False
            request = store_request(data[1:])
            if request is None:
                return False
            message.encoded_command_set.write(data[1:])
            message.context_id = context_id
            message.__class__ = C_STORE_RQ
            self._store = request
            return True
        if request is None:
            return False
        buffer = cast(io.BytesIO, message.data_set)
        buffer.write(data[1:])
        if data[0] & 2:  # the data set's last fragment
            context = cast(int, message.context_id)
            primitive = _store_primitive(request, buffer, context)
            self._store = None
            self.message = None
            if not cast(AcceptorAssociation, self.assoc).serve_store_now(primitive, context):
                self.msg_queue.put((context, primitive))
        return True

    def send_msg(self, primitive: Any, context_id: int) -> None:
        """pynetdicom's, with a C-STORE response encoded straight from the primitive.

        pynetdicom turns every response primitive into a DIMSE message, a pydicom data
        set of its command set, encodes that (twice: once to learn the group length) and
        splits it into P-DATA: ~0.4 ms of CPU per C-STORE here, the largest part of the
        server's own work per instance. A C-STORE response without an error comment or
        offending element is encoded directly (:func:`store_response`, byte for byte
        pynetdicom's). Anything else, or when a handler is bound to ``EVT_DIMSE_SENT``
        (it expects the message object), goes pynetdicom's way.
        """
        command = store_response(primitive)
        if command is None or not self.send_command(command, context_id):
            super().send_msg(primitive, context_id)

    def send_command(self, command: bytes, context_id: int) -> bool:
        """Send an encoded command set (no data set) as one P-DATA; False if it cannot be
        sent that way (a handler bound to ``EVT_DIMSE_SENT``, a PDU too small)."""
        if (
            self.assoc.get_handlers(evt.EVT_DIMSE_SENT)
            or (self.maximum_pdu_size and len(command) + 6 > self.maximum_pdu_size)
        ):
            return False
        pdata = P_DATA()
        pdata.presentation_data_value_list.append((context_id, b"\x03" + command))
        self.dul.send_pdu(pdata)
        return True


_IMPLICIT = struct.Struct("<HHI")
_US = struct.Struct("<HHIH")
_STORE_RSP_FIELD = 0x8001
_NO_DATA_SET = 0x0101


def store_response(primitive: Any) -> bytes | None:
    """The encoded command set of a C-STORE response, or None if it is not a plain one.

    Implicit VR little endian (PS3.7 6.3.1), the elements of PS3.7 Table 9.3-2 that
    pynetdicom sends for a response with no error comment or offending element: group
    length, Affected SOP Class UID, Command Field, Message ID Being Responded To,
    Command Data Set Type (none), Status, Affected SOP Instance UID. UIDs are padded
    with a NUL to an even length.
    """
    if (
        type(primitive) is not C_STORE
        or primitive.MessageIDBeingRespondedTo is None
        or primitive.Status is None
        or primitive.ErrorComment is not None
        or primitive.OffendingElement is not None
        or primitive.AffectedSOPClassUID is None
        or primitive.AffectedSOPInstanceUID is None
    ):
        return None
    return _store_response(str(primitive.AffectedSOPClassUID),
                           str(primitive.AffectedSOPInstanceUID),
                           int(primitive.MessageIDBeingRespondedTo), int(primitive.Status))


def _store_response(sop_class_uid: str, sop_instance_uid: str, message_id: int,
                    status: int) -> bytes:
    sop_class = sop_class_uid.encode("ascii")
    sop_instance = sop_instance_uid.encode("ascii")
    if len(sop_class) % 2:
        sop_class += b"\x00"
    if len(sop_instance) % 2:
        sop_instance += b"\x00"
    body = b"".join((
        _IMPLICIT.pack(0x0000, 0x0002, len(sop_class)), sop_class,
        _US.pack(0x0000, 0x0100, 2, _STORE_RSP_FIELD),
        _US.pack(0x0000, 0x0120, 2, message_id),
        _US.pack(0x0000, 0x0800, 2, _NO_DATA_SET),
        _US.pack(0x0000, 0x0900, 2, status),
        _IMPLICIT.pack(0x0000, 0x1000, len(sop_instance)), sop_instance,
    ))
    return _IMPLICIT.pack(0x0000, 0x0000, 4) + struct.pack("<I", len(body)) + body


@dataclass(frozen=True, slots=True)
class StoreRequest:
    """The command of a plain C-STORE request, as decoded by :func:`store_request`."""

    message_id: int
    priority: int
    sop_class_uid: str
    sop_instance_uid: str


# A conformant UID (PS3.5 9.1): components of digits without a leading zero, dot-separated.
_CONFORMANT_UID = re.compile(rb"(?:0|[1-9][0-9]*)(?:\.(?:0|[1-9][0-9]*))*")
_STORE_RQ_ELEMENTS = (0x0000, 0x0002, 0x0100, 0x0110, 0x0700, 0x0800, 0x1000)
_STORE_RQ_FIELD = 0x0001
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")


def store_request(command: bytes | memoryview) -> StoreRequest | None:
    """The command set of a plain C-STORE request with a data set, or None if it is not one.

    Implicit VR little endian (PS3.7 6.3.1), exactly the elements of PS3.7 Table 9.3-1
    that every storage SCU sends, in order: Command Group Length (equal to what follows),
    Affected SOP Class UID, Command Field (C-STORE-RQ), Message ID, Priority (0-2), Command
    Data Set Type (a data set follows), Affected SOP Instance UID; both UIDs conformant
    (PS3.5 9.1) and 1-64 characters once trailing NULs and spaces are stripped, as pydicom
    strips them. The values are pynetdicom's for the same bytes (decoded by pydicom into a
    command data set, then set on a validated :class:`C_STORE`), without building either:
    ~0.2 ms of the server's CPU per instance here. Anything else (a Move Originator, other
    or missing elements, another order, odd lengths of fixed-length values, a UID that
    pynetdicom would warn about or refuse) returns None: pynetdicom decodes it, and warns,
    refuses or aborts as it always has.
    """
    end = len(command)
    offset = 0
    values: list[bytes] = []
    for expected in _STORE_RQ_ELEMENTS:
        if end - offset < 8:
            return None
        group, element, length = _IMPLICIT.unpack_from(command, offset)
        offset += 8
        if group != 0 or element != expected or length > end - offset:
            return None
        values.append(bytes(command[offset:offset + length]))
        offset += length
    length_value, sop_class, field, message_id, priority, data_set_type, sop_instance = values
    if (
        offset != end
        or len(length_value) != 4 or _U32.unpack(length_value)[0] != end - 12
        or any(len(v) != 2 for v in (field, message_id, priority, data_set_type))
        or _U16.unpack(field)[0] != _STORE_RQ_FIELD
        or _U16.unpack(data_set_type)[0] == _NO_DATA_SET
        or _U16.unpack(priority)[0] > 2
    ):
        return None
    uids = []
    for value in (sop_class, sop_instance):
        value = value.rstrip(b"\x00 ")
        if not 0 < len(value) <= 64 or _CONFORMANT_UID.fullmatch(value) is None:
            return None
        uids.append(value.decode("ascii"))
    return StoreRequest(_U16.unpack(message_id)[0], _U16.unpack(priority)[0], *uids)


class _StoreRequestPrimitive(C_STORE):
    """A C-STORE request built from :class:`StoreRequest` (served by the lake's own path)."""


def _store_primitive(request: StoreRequest, data_set: io.BytesIO,
                     context_id: int) -> C_STORE:
    """The request primitive pynetdicom would make, without re-validating what
    :func:`store_request` checked (its setters validate each UID again)."""
    primitive = _StoreRequestPrimitive()
    primitive._message_id = request.message_id
    primitive._priority = request.priority
    primitive._affected_sop_class_uid = UID(request.sop_class_uid, pydicom_config.IGNORE)
    primitive._affected_sop_instance_uid = UID(request.sop_instance_uid,
                                               pydicom_config.IGNORE)
    primitive.DataSet = data_set
    primitive._context_id = context_id
    return primitive


def _decode_command(encoded: io.BytesIO) -> Any:
    """The command set as pynetdicom decodes it (a pydicom data set)."""
    from pynetdicom.dsutils import decode

    return decode(encoded, True, True)


class _DUL(DULServiceProvider):
    """pynetdicom's DUL provider, waiting in ``select`` instead of polling (module docstring)."""

    def __init__(self, assoc: AcceptorAssociation, limits: Limits,
                 requests: AssociationRequests | None = None) -> None:
        self._limits = limits
        self._requests = requests
        super().__init__(assoc)
        self._wake = _WakeSocket()
        self._send_lock = threading.Lock()
        self._queued_data = 0  # P-DATA primitives queued for the DUL thread, not yet sent
        self.to_provider_queue = _NotifyingQueue(self._wake.set)
        self.to_user_queue = _NotifyingQueue(assoc.wake.set)

    def run_reactor(self) -> None:
        assoc = cast(AcceptorAssociation, self.assoc)
        with capture(into=assoc.captured):
            try:
                self._react()
            except Exception as exc:  # noqa: BLE001 - see _end_on_error
                _end_on_error(assoc, exc)
            finally:
                self._wake.close()
                assoc.wake.set()  # the reactor notices the DUL is gone at once

    def _react(self) -> None:
        # pynetdicom's DULServiceProvider.run_reactor, with _wait() for its 1 ms sleep
        self._idle_timer.start()
        ready = self.assoc._dul_ready
        while True:
            if not ready.is_set():
                ready.set()
            if self._kill_thread:
                return
            if self.artim_timer.expired:
                self.event_queue.put("Evt18")
            if self._process_recv_primitive():  # a primitive to encode and send
                pass
            elif self._is_transport_event():  # a PDU received and decoded
                self._idle_timer.restart()
            try:
                event = self.event_queue.get(block=False)
            except queue.Empty:
                self._wait()
                continue
            if event == "Evt7" and self._accept():
                continue
            self.state_machine.do_action(event)

    def _accept(self) -> bool:
        """AE-7 with the A-ASSOCIATE-AC from the server's requests; False: the state machine's way.

        In Sta3 the local user's accept (Evt7) sends the A-ASSOCIATE-AC PDU made from the
        primitive and moves to Sta6 (PS3.8 9.2, AE-7). When nothing is bound to the
        events that show sent PDUs and transitions, this does that with the encoded PDU
        that :meth:`AssociationRequests.accept` gives (pynetdicom's bytes for these
        values), without building the PDU's objects and validating every UID again.
        """
        if (
            self._requests is None
            or self.state_machine.current_state != "Sta3"
            or not self.to_provider_queue.queue
            or any(self.assoc.get_handlers(e) for e in _SENT_EVENTS)
        ):
            return False
        primitive = self.to_provider_queue.queue[0]
        if not isinstance(primitive, A_ASSOCIATE) or primitive.result != 0x00:
            return False
        self.to_provider_queue.get(False)
        encoded = self._requests.accept(primitive)
        with self._send_lock:
            if self.socket is not None:
                self.socket.send(encoded)  # closed: it queues Evt17, as pynetdicom's _send
        self.state_machine.transition("Sta6")
        return True

    def _wait(self) -> None:
        """Until the peer sends, a primitive is queued to send, or timers need a look."""
        sock = self.socket.socket if self.socket is not None else None
        watched: list[Any] = [self._wake.reader]
        if sock is not None and sock.fileno() >= 0:
            if isinstance(sock, ssl.SSLSocket) and sock.pending():
                return  # decrypted bytes already buffered: select would not see them
            watched.append(sock)
        self._wake.waiting = True
        readable: list[Any] = []
        try:
            if self.to_provider_queue.queue or self.event_queue.queue or self._kill_thread:
                return  # came while we were getting ready to wait
            with contextlib.suppress(OSError, ValueError):  # closed meanwhile: next round
                readable = select.select(watched, [], [], _TIMER_CHECK)[0]
        finally:
            self._wake.waiting = False
        if self._wake.reader in readable:  # else nothing to drain: no failing recv per wait
            self._wake.drain()  # (a wake-up written after select returned wakes the next)

    def send_pdu(self, primitive: Any) -> None:
        """Queue ``primitive`` for the DUL thread, or send a P-DATA at once when that is the same.

        In the data transfer state (Sta6) a P-DATA request is sent as a P-DATA-TF PDU and
        the state stays Sta6 (PS3.8 DT-1), so when nothing is queued before it the calling
        thread sends it itself, as the DUL thread would have. That saves a hand-off
        between threads for every response (a wake-up that waits for the scheduler on a
        busy machine). Anything else, or a P-DATA with others queued before it, goes
        through the state machine as usual. Sends are serialised by :attr:`_send_lock`.
        """
        if isinstance(primitive, P_DATA):
            with self._send_lock:
                if not self._queued_data and self.state_machine.current_state == "Sta6":
                    sock = self.socket
                    if sock is not None:
                        sock.send(P_DATA_TF(primitive).encode())  # closed: it queues Evt17
                        return
                self._queued_data += 1
        super().send_pdu(primitive)

    def _send(self, pdu: Any) -> None:
        with self._send_lock:
            super()._send(pdu)
            if isinstance(pdu, P_DATA_TF):
                self._queued_data -= 1

    def kill_dul(self) -> None:
        self._kill_thread = True
        self._wake.set()

    def stop_dul(self) -> bool:
        if self.state_machine.current_state == "Sta1":
            self.kill_dul()
            if threading.current_thread() is not self:
                self.join()
            return True
        return False

    def _read_pdu_data(self) -> None:
        # pynetdicom's reader, with the PDU length bounded before anything is read.
        sock = cast(AssociationSocket, self.socket)
        try:
            header = sock.recv(6)
        except OSError:
            self.event_queue.put("Evt17")  # transport closed
            return
        if len(header) < 6:
            self.event_queue.put("Evt17")
            return
        pdu_type, length = header[0], struct.unpack(">I", header[2:6])[0]
        if pdu_type not in _PDU_TYPES or length > self._limits.max_pdu:
            _LOG.info("aborting an association: invalid or oversized PDU")
            self.event_queue.put("Evt19")
            return
        try:
            body = sock.recv(length)
        except OSError:
            self.event_queue.put("Evt17")
            return
        if len(body) != length:
            self.event_queue.put("Evt17")
            return
        if pdu_type == 0x04 and self._receive_data(body):
            return
        try:
            pdu, event = self._decode_pdu(header + body)
        except Exception:  # noqa: BLE001 - any decoding failure: an invalid PDU
            self.event_queue.put("Evt19")
            return
        self.event_queue.put(event)
        self._recv_pdu.put(pdu)


    def _decode_pdu(self, bytestream: bytearray) -> tuple[Any, str]:
        """pynetdicom's, but an A-ASSOCIATE-RQ comes from the server's :class:`AssociationRequests`.

        Only when nothing is bound to the events that show received bytes and PDUs (which
        would each want the PDU decoded anew); the event is the state machine's Evt6.
        """
        if (
            self._requests is None
            or bytestream[:1] != b"\x01"
            or any(self.assoc.get_handlers(e) for e in _DECODE_EVENTS)
        ):
            return cast(tuple[Any, str], super()._decode_pdu(bytestream))
        return self._requests.decode(bytestream), "Evt6"

    def _receive_data(self, body: bytearray) -> bool:
        """A P-DATA-TF PDU handed to the DIMSE provider at once; False: the state machine's way.

        In the data transfer state (Sta6) a P-DATA-TF PDU (Evt10) leads to DT-2, which hands
        its presentation data values to the DIMSE provider as a P-DATA indication and stays
        in Sta6 (PS3.8 9.2). When nothing is queued before it (no event or PDU waiting for
        the state machine) and nothing is bound to the events that show PDUs and
        transitions, this does that directly: the PDVs are split here (:func:`pdv_items`)
        instead of through pynetdicom's PDU object, the event queue and the state machine,
        a third of the DUL thread's work per received PDU. A PDU whose items do not add up
        exactly goes pynetdicom's way (which aborts the association on it).
        """
        if (
            self.state_machine.current_state != "Sta6"
            or self.event_queue.queue
            or self._recv_pdu.queue
            or any(self.assoc.get_handlers(e) for e in _PDU_EVENTS)
        ):
            return False
        items = pdv_items(body)
        if items is None:
            return False
        primitive = P_DATA()
        # as pynetdicom's to_primitive() makes it; its setter would re-check the list
        primitive._presentation_data_value_list = items
        self.assoc.dimse.receive_primitive(primitive)
        return True


_PDU_EVENTS = (evt.EVT_DATA_RECV, evt.EVT_PDU_RECV, evt.EVT_FSM_TRANSITION)
_DECODE_EVENTS = (evt.EVT_DATA_RECV, evt.EVT_PDU_RECV)
_SENT_EVENTS = (evt.EVT_DATA_SENT, evt.EVT_PDU_SENT, evt.EVT_FSM_TRANSITION)
_ITEM = struct.Struct(">IB")


def pdv_items(body: bytes | bytearray) -> list[tuple[int, bytes]] | None:
    """The presentation data values of a P-DATA-TF PDU's body (after its 6-byte header).

    ``[(context ID, message control header + fragment), ...]``, what pynetdicom's
    ``P_DATA_TF.decode`` and ``to_primitive`` give (PS3.8 9.3.5.1); None unless every
    item holds at least its control header and the items fill the body exactly.
    """
    items: list[tuple[int, bytes]] = []
    offset, end = 0, len(body)
    with memoryview(body) as view:
        while offset < end:
            if end - offset < 6:
                return None
            length, context_id = _ITEM.unpack_from(body, offset)
            if length < 2 or length > end - offset - 4:
                return None
            items.append((context_id, bytes(view[offset + 5:offset + 4 + length])))
            offset += 4 + length
    return items or None


class AcceptorAssociation(Association):
    """An acceptor association: bounded reads, no polling, threads inside a capture scope.

    Parameters
    ----------
    ae : ApplicationEntity
        The server's AE.
    captured : Captured
        Counts what pydicom and pynetdicom warn or log on the association's threads.
    limits : Limits
        What the peer may send.
    requests : AssociationRequests, optional
        The server's requests decoded lately (else each is decoded by pynetdicom).
    """

    def __init__(self, ae: Any, captured: Captured, limits: Limits,
                 requests: AssociationRequests | None = None) -> None:
        super().__init__(ae, MODE_ACCEPTOR)
        self.captured = captured
        self.wake = threading.Event()
        self._serving = threading.Lock()  # held while a received message is served
        self.dul = _DUL(self, limits, requests)
        # pynetdicom set the AE's timeouts on the DUL it made (ARTIM: ACSE timeout; idle:
        # network timeout); the new one has pynetdicom's defaults until set again
        self.acse_timeout = self.acse_timeout
        self.network_timeout = self.network_timeout
        self.dimse = _DIMSE(self, limits)
        for event, handler in STANDARD_HANDLERS:
            self.unbind(event, handler)

    def run_reactor(self) -> None:
        with capture(into=self.captured):
            try:
                super().run_reactor()
            except Exception as exc:  # noqa: BLE001 - see _end_on_error
                _end_on_error(self, exc)

    def kill(self) -> None:
        self.wake.set()
        super().kill()

    def _run_reactor(self) -> None:
        # pynetdicom's Association._run_reactor, waiting on self.wake for its 1 ms sleep
        self._is_paused = False
        while not self._kill:
            self._is_paused = True
            self._reactor_checkpoint.wait()
            self._is_paused = False
            self.wake.wait(_TIMER_CHECK)
            self.wake.clear()  # before looking: what comes after sets it again
            with self._serving:  # taken before the queue is read: messages served in order
                context_id, msg = self.dimse.get_msg(block=False)
                if isinstance(msg, _StoreRequestPrimitive):
                    self._serve_store(msg, cast(int, context_id))
                elif msg:
                    self._serve_request(msg, cast(int, context_id))
            if self.is_established and self.acse.is_release_requested():
                self.acse.send_release(is_response=True)
                self.is_released = True
                self.is_established = False
                evt.trigger(self, evt.EVT_RELEASED, {})
                self.kill()
                return
            if self.acse.is_aborted():
                self.dul.receive_pdu(wait=False)  # so EVT_ACSE_RECV fires, as in pynetdicom
                self.is_aborted = True
                self.is_established = False
                evt.trigger(self, evt.EVT_ABORTED, {})
                self.kill()
                return
            if not self.dul.is_alive():
                self.kill()
                return
            if self.dul.idle_timer_expired():
                if self.network_timeout_response == "A-RELEASE":
                    self._is_paused = True
                    self._reactor_checkpoint.wait()
                    self.release()
                    self._is_paused = False
                else:
                    self.abort()
                self.kill()
                return


    def serve_store_now(self, request: C_STORE, context_id: int) -> bool:
        """Serve a decoded C-STORE request on the calling (DUL) thread; False: queue it.

        pynetdicom queues every received message for the reactor thread, which serves
        it: one hand-off between threads per instance (a wake-up and, on a busy machine,
        a wait for the scheduler). The DUL thread serves a plain C-STORE request itself
        when that changes nothing but the thread: the association is established (the
        reactor serves nothing before), nothing is queued before it, the reactor is not
        serving a message (:attr:`_serving`, which the reactor holds from reading the
        queue to the end of serving), and no thread of the association has paused the
        reactor to read the queue itself (a handler sending requests over this
        association). Meanwhile the DUL thread reads nothing more from the peer, which
        waits for the response anyway (storage SCUs send one request at a time unless
        asynchronous operations were negotiated, and then the next ones wait in the
        socket, as they would in the queue).

        Established, because the A-ASSOCIATE-AC goes out (sent by the DUL thread) before
        the association thread marks the association established (pynetdicom's ACSE:
        the accept is queued, ``EVT_ACCEPTED`` triggered, then ``is_established`` set),
        so a peer's first request can arrive in between. Served then, its response was
        dropped (nothing is answered on an association not established) and the peer
        waited for it until the network timeout aborted the association. It is queued
        instead, and the reactor, which starts once the association is established,
        serves it.
        """
        if (
            not self.is_established
            or not self._reactor_checkpoint.is_set()
            or not self._serving.acquire(blocking=False)
        ):
            return False
        try:
            if self.dimse.msg_queue.queue or not self._reactor_checkpoint.is_set():
                return False
            self._serve_store(request, context_id)
            return True
        finally:
            self._serving.release()

    def _serve_store(self, request: C_STORE, context_id: int) -> None:
        """pynetdicom's ``_serve_request`` and Storage SCP for a decoded C-STORE request.

        The same steps (the service class chosen by SOP Class, the context looked up,
        ``EVT_C_STORE`` triggered with the request and context, the handler's status
        validated and sent; an exception in the handler answered 0xC211), with a success
        answered by :func:`_store_response` straight from the request's values: no response
        primitive whose setters validate both UIDs again. Anything that is not a plain
        success, and any request pynetdicom would not give to its Storage SCP, goes
        pynetdicom's way.
        """
        class_uid = cast(UID, request.AffectedSOPClassUID)
        extended = self.acceptor.accepted_common_extended.get(class_uid)
        if extended is not None:
            class_uid = extended[0]
        if pynetdicom_config.UNRESTRICTED_STORAGE_SERVICE:
            class_uid = UID("1.2.840.10008.5.1.4.1.1.1")
        context = self._accepted_cx.get(context_id)
        if (
            self._sent_release
            or context is None
            or uid_to_service_class(class_uid) is not StorageServiceClass
        ):
            self._serve_request(request, context_id)
            return
        self.dimse.cancel_req = {}
        self._is_paused = True
        try:
            status = evt.trigger(self, evt.EVT_C_STORE,
                                 {"request": request, "context": context.as_tuple})
        except Exception as exc:  # noqa: BLE001 - pynetdicom's attempt(): logged, answered
            _SERVICE_LOG.error("Exception in handler bound to 'evt.EVT_C_STORE'")
            _SERVICE_LOG.exception(exc)
            response = _store_response_primitive(request)
            response.Status = 0xC211
            self.dimse.send_msg(response, context_id)
            return
        finally:
            self._is_paused = False
            self.dimse.cancel_req = {}
        if not self.is_established:
            return
        if type(status) is int and status == 0x0000 and cast(_DIMSE, self.dimse).send_command(
            _store_response(cast(UID, request.AffectedSOPClassUID),
                            cast(UID, request.AffectedSOPInstanceUID),
                            cast(int, request.MessageID), status),
            context_id,
        ):
            return
        response = StorageServiceClass(self).validate_status(
            cast(int | Dataset, status), _store_response_primitive(request))
        self.dimse.send_msg(response, context_id)


_SERVICE_LOG = logging.getLogger("pynetdicom.service_class")


def _store_response_primitive(request: C_STORE) -> C_STORE:
    """pynetdicom's Storage SCP's response to ``request``, before its status."""
    response = C_STORE()
    response.MessageID = request.MessageID
    response.MessageIDBeingRespondedTo = request.MessageID
    response.AffectedSOPInstanceUID = request.AffectedSOPInstanceUID
    response.AffectedSOPClassUID = request.AffectedSOPClassUID
    return response


def _end_on_error(assoc: Association, exc: Exception) -> None:
    """End an association whose thread failed, without the thread's traceback.

    An exception escaping a thread is printed to stderr with its message, which may quote
    a received value; pynetdicom catches only some of them. The association is aborted
    and its socket closed; the error is logged by type only.
    """
    _LOG.error("an association failed with an internal error (%s); aborting it",
               type(exc).__name__)
    assoc.is_aborted = True
    assoc.is_established = False
    assoc._kill = True
    assoc.dul.kill_dul()
    sock = getattr(assoc.dul.socket, "socket", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.sendall(_ABORT)
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def primed_socket(assoc: Association, sock: socket.socket, request: bytes) -> AssociationSocket:
    """pynetdicom's socket wrapper for ``sock``, replaying ``request`` (already read) first."""
    return _PrimedSocket(assoc, sock, request)
