"""The C-STORE request decoded by hand (lake/net/_association.py) against pynetdicom's decoding.

A plain C-STORE-RQ command set is decoded directly, without pydicom and without
pynetdicom's validating primitive setters; these tests prove it gives what pynetdicom gives
for the same bytes, and that anything unusual is left to pynetdicom.
"""

from __future__ import annotations

import io
import random
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import UID
from pynetdicom import AE, evt
from pynetdicom.dimse_messages import C_STORE_RQ, DIMSEMessage
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.dsutils import encode
from pynetdicom.sop_class import CTImageStorage, MRImageStorage

import lake
from lake.net import DicomServer, ServerConfig
from lake.net._association import (
    AcceptorAssociation,
    StoreRequest,
    _store_primitive,
    pdv_items,
    store_request,
)

SOP_CLASSES = ("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.4",
               "1.2.840.10008.5.1.4.1.1.88.33", "1.2.840.10008.5.1.4.1.1.7")
INSTANCES = ("1.2.3", "1.2.3.4", "1.2.826.0.1.3680043.8.498.1234567890123456789",
             "2.25." + "9" * 59)  # odd and even lengths; the last is 64 characters


def _request(sop_class: str, instance: str, message_id: int = 7, priority: int = 2,
             originator: tuple[str, int] | None = None) -> C_STORE:
    primitive = C_STORE()
    primitive.MessageID = message_id
    primitive.AffectedSOPClassUID = sop_class
    primitive.AffectedSOPInstanceUID = instance
    primitive.Priority = priority
    primitive.DataSet = io.BytesIO(b"\x08\x00\x16\x00\x04\x00" + b"1.2\x00")
    if originator is not None:
        primitive.MoveOriginatorApplicationEntityTitle = originator[0]
        primitive.MoveOriginatorMessageID = originator[1]
    return primitive


def _pdvs(primitive: C_STORE, max_pdu: int = 16382) -> list[tuple[int, bytes]]:
    """The presentation data values pynetdicom sends for ``primitive``."""
    message = C_STORE_RQ()
    message.primitive_to_message(primitive)
    return [pdv for pdata in message.encode_msg(3, max_pdu)
            for pdv in pdata.presentation_data_value_list]


def _command(primitive: C_STORE) -> bytes:
    return b"".join(pdv[1:] for _, pdv in _pdvs(primitive) if pdv[0] & 1)


def _pynetdicoms(pdvs: list[tuple[int, bytes]]) -> Any:
    """The primitive pynetdicom's DIMSE provider makes of these PDVs."""
    from pynetdicom.pdu_primitives import P_DATA

    message = DIMSEMessage()
    for pdv in pdvs:
        pdata = P_DATA()
        pdata.presentation_data_value_list.append(pdv)
        if message.decode_msg(pdata):
            return message.message_to_primitive()
    raise AssertionError("message never completed")


def _same(mine: C_STORE, theirs: C_STORE) -> None:
    for name in ("MessageID", "Priority", "AffectedSOPClassUID", "AffectedSOPInstanceUID",
                 "MoveOriginatorApplicationEntityTitle", "MoveOriginatorMessageID"):
        assert getattr(mine, name) == getattr(theirs, name), name
        assert type(getattr(mine, name)) is type(getattr(theirs, name)), name
    assert mine._context_id == theirs._context_id == 3
    assert mine.is_valid_request and theirs.is_valid_request
    assert isinstance(mine.AffectedSOPClassUID, UID)


@pytest.mark.parametrize("sop_class", SOP_CLASSES)
@pytest.mark.parametrize("instance", INSTANCES)
def test_plain_request_decodes_as_pynetdicom_does(sop_class: str, instance: str) -> None:
    for message_id, priority in ((1, 2), (0, 0), (65535, 1)):
        primitive = _request(sop_class, instance, message_id, priority)
        pdvs = _pdvs(primitive)
        decoded = store_request(_command(primitive))
        assert decoded == StoreRequest(message_id, priority, sop_class, instance)
        data_set = io.BytesIO(b"".join(pdv[1:] for _, pdv in pdvs if not pdv[0] & 1))
        mine = _store_primitive(decoded, data_set, 3)
        theirs = _pynetdicoms(pdvs)
        _same(mine, theirs)
        assert mine.DataSet.getvalue() == theirs.DataSet.getvalue()


def test_padding_is_stripped_as_pydicom_strips_it() -> None:
    # a UID padded with a space (not the standard NUL) by some peers: pydicom strips both
    primitive = _request(SOP_CLASSES[0], "1.2.3")
    command = _command(primitive)
    padded = command.replace(b"\x00\x00\x10\x06\x00\x00\x001.2.3\x00",
                             b"\x00\x00\x10\x06\x00\x00\x001.2.3 ")
    assert padded != command
    decoded = store_request(padded)
    assert decoded is not None and decoded.sop_instance_uid == "1.2.3"


@pytest.mark.parametrize("unusual", [
    "move originator", "leading zero", "65 characters", "letters", "empty uid",
    "priority 3", "no data set", "no group length", "wrong group length", "c-echo",
    "truncated", "trailing bytes", "extra element",
])
def test_unusual_requests_are_left_to_pynetdicom(unusual: str) -> None:
    plain = _request(SOP_CLASSES[0], "1.2.3.4")
    command = _command(plain)
    if unusual == "move originator":
        command = _command(_request(SOP_CLASSES[0], "1.2.3.4", originator=("MOVER", 5)))
    elif unusual == "leading zero":  # non-conformant: pynetdicom warns about it
        command = command.replace(b"1.2.3.4\x00", b"1.02.3.4")
    elif unusual == "65 characters":
        command = _command(_request(SOP_CLASSES[0], "1.2.3.4")).replace(
            b"1.2.3.4\x00", b"2.25." + b"1" * 60 + b"\x00")  # lengths now wrong too
    elif unusual == "letters":
        command = command.replace(b"1.2.3.4\x00", b"1.2.3.a\x00")
    elif unusual == "empty uid":
        command = command.replace(b"\x00\x00\x10\x08\x00\x00\x001.2.3.4\x00",
                                  b"\x00\x00\x10\x08\x00\x00\x00" + b"\x00" * 8)
    elif unusual == "priority 3":
        command = command.replace(b"\x00\x00\x00\x07\x02\x00\x00\x00\x02\x00",
                                  b"\x00\x00\x00\x07\x02\x00\x00\x00\x03\x00")
    elif unusual == "no data set":
        command = command.replace(b"\x00\x00\x00\x08\x02\x00\x00\x00\x01\x00",
                                  b"\x00\x00\x00\x08\x02\x00\x00\x00\x01\x01")
    elif unusual == "no group length":
        command = command[12:]
    elif unusual == "wrong group length":
        command = command[:8] + struct.pack("<I", len(command) - 11) + command[12:]
    elif unusual == "c-echo":
        echo = C_ECHO()
        echo.MessageID = 1
        echo.AffectedSOPClassUID = "1.2.840.10008.1.1"
        from pynetdicom.dimse_messages import C_ECHO_RQ

        message = C_ECHO_RQ()
        message.primitive_to_message(echo)
        command = encode(message.command_set, True, True)
    elif unusual == "truncated":
        command = command[:-3]
    elif unusual == "trailing bytes":
        command = command + b"\x00\x00"
    elif unusual == "extra element":  # (0000,0800) then an unexpected (0000,0900)
        command = command + struct.pack("<HHIH", 0, 0x0900, 2, 0)
    assert command != _command(plain)
    assert store_request(command) is None


@pytest.mark.filterwarnings("ignore:Invalid value for VR")  # mutated values, on purpose
def test_random_mutations_never_disagree_with_pynetdicom() -> None:
    """Any mutation of a plain command set either falls back or decodes as pynetdicom does."""
    from pynetdicom.dsutils import decode

    rng = random.Random(1414)
    base = _command(_request(SOP_CLASSES[1], "1.2.826.0.1.3680043.2.1125.1", 513, 1))
    decoded_some = 0
    for _ in range(3000):
        command = bytearray(base)
        for _ in range(rng.randint(1, 3)):
            position = rng.randrange(len(command))
            command[position] = rng.choice((0x00, 0x20, 0x2E, 0x30, 0x31, 0x39, 0x41,
                                            rng.randrange(256)))
        mine = store_request(bytes(command))
        if mine is None:
            continue
        decoded_some += 1
        theirs = decode(io.BytesIO(bytes(command)), True, True)
        assert theirs.CommandField == 0x0001 and theirs.CommandDataSetType != 0x0101
        assert mine == StoreRequest(theirs.MessageID, theirs.Priority,
                                    str(theirs.AffectedSOPClassUID),
                                    str(theirs.AffectedSOPInstanceUID))
    assert decoded_some > 100  # mutations of values that stay plain were decoded here


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch, lk: lake.Lake,
           vault_dir: Path) -> Iterator[tuple[DicomServer, list[str]]]:
    """A server (no worker processes) recording which way each C-STORE was served."""
    ways: list[str] = []
    own, theirs = AcceptorAssociation._serve_store, AcceptorAssociation._serve_request

    def serve_store(self: AcceptorAssociation, *args: Any) -> None:
        ways.append("lake" if threading.current_thread() is self.dul else "lake, reactor")
        own(self, *args)

    def serve_request(self: AcceptorAssociation, *args: Any) -> None:
        ways.append("pynetdicom")
        theirs(self, *args)

    monkeypatch.setattr(AcceptorAssociation, "_serve_store", serve_store)
    monkeypatch.setattr(AcceptorAssociation, "_serve_request", serve_request)
    config = ServerConfig(port=0, workers=0, acknowledge="outcome")
    with DicomServer(lk, lk.secret(vault_dir), config) as srv:
        yield srv, ways


def test_both_ways_store_and_answer_alike(served: tuple[DicomServer, list[str]],
                                          lk: lake.Lake) -> None:
    srv, ways = served
    ct = dcmread(get_testdata_file("CT_small.dcm"))
    mr = dcmread(get_testdata_file("MR_small.dcm"))
    ae = AE(ae_title="PROBE")
    ae.add_requested_context(CTImageStorage, ct.file_meta.TransferSyntaxUID)
    ae.add_requested_context(MRImageStorage, mr.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", srv.port, ae_title="LAKE")
    assert assoc.is_established
    try:
        plain = assoc.send_c_store(ct)  # decoded by the lake
        moved = assoc.send_c_store(mr, originator_aet="MOVER", originator_id=9)  # pynetdicom
        again = assoc.send_c_store(ct)  # a duplicate: refused the same way either path
    finally:
        assoc.release()
    # plain ones served by the DUL thread that read them (no hand-off to the reactor)
    assert ways == ["lake", "pynetdicom", "lake"]
    assert plain.Status == moved.Status == 0x0000
    assert again.Status == 0x0000
    srv.flush()
    lk.refresh()
    assert lk.sql("SELECT count(*) FROM instances").fetchall() == [(2,)]
    assert srv.receiver.stats.received == 3


@pytest.mark.parametrize("max_pdu", [0, 16382, 1 << 20])  # 0: unlimited, one PDV per set
def test_pdv_items_are_pynetdicoms(max_pdu: int) -> None:
    """P-DATA-TF bodies split by hand give pynetdicom's presentation data values."""
    from pynetdicom.pdu import P_DATA_TF
    from pynetdicom.pdu_primitives import P_DATA

    primitive = _request(SOP_CLASSES[0], "1.2.3.45")
    primitive.DataSet = io.BytesIO(bytes(range(256)) * 150 + b"\x01")  # odd length
    message = C_STORE_RQ()
    message.primitive_to_message(primitive)
    bodies = []
    for pdata in message.encode_msg(5, max_pdu):
        bodies.append(P_DATA_TF(pdata).encode())
    several = P_DATA()  # PDVs of two contexts in one PDU, as a peer may send them
    several.presentation_data_value_list = [[1, b"\x03abc"], [3, b"\x00d"], [3, b"\x02"]]
    bodies.append(P_DATA_TF(several).encode())
    for encoded in bodies:
        pdu = P_DATA_TF()
        pdu.decode(encoded)
        theirs = pdu.to_primitive().presentation_data_value_list
        assert pdv_items(bytearray(encoded[6:])) == [(c, bytes(d)) for c, d in theirs]


@pytest.mark.parametrize("body", [
    b"",  # no item
    b"\x00\x00\x00\x01\x01",  # an item without its control header
    b"\x00\x00\x00\x05\x01\x03ab",  # longer than the body
    b"\x00\x00\x00\x03\x01\x03a\x00",  # a stray byte after the last item
])
def test_malformed_pdu_bodies_are_left_to_pynetdicom(body: bytes) -> None:
    assert pdv_items(bytearray(body)) is None


def test_store_is_served_on_the_dul_thread_only_when_nothing_else_could_be_first() -> None:
    # the DUL thread serves a plain request itself only when the reactor would have
    # served it next: established, nothing queued, the reactor not serving, not paused
    from lake._capture import Captured
    from lake.net._association import Limits

    assoc = AcceptorAssociation(AE(ae_title="LAKE"), Captured(), Limits(1 << 20, None, None))
    served: list[int] = []
    assoc._serve_store = lambda request, context_id: served.append(context_id)  # type: ignore[method-assign]
    assert not assoc.serve_store_now(cast(Any, "request"), -1)  # not established yet
    assoc.is_established = True
    assert assoc.serve_store_now(cast(Any, "request"), 1)
    assoc.dimse.msg_queue.queue.append((3, "queued before"))
    assert not assoc.serve_store_now(cast(Any, "request"), 3)
    assoc.dimse.msg_queue.queue.clear()
    assoc._reactor_checkpoint.clear()  # a handler sending over the association reads the queue
    assert not assoc.serve_store_now(cast(Any, "request"), 5)
    assoc._reactor_checkpoint.set()
    with assoc._serving:  # the reactor is serving a message
        assert not assoc.serve_store_now(cast(Any, "request"), 7)
    assert assoc.serve_store_now(cast(Any, "request"), 9)
    assert served == [1, 9]
    assoc.dul._wake.close()


def test_the_dul_thread_drains_its_wake_up_socket_only_when_woken(
        served: tuple[DicomServer, list[str]], monkeypatch: pytest.MonkeyPatch) -> None:
    # a drain is a recv that fails when nothing was written: it used to follow every wait
    from lake.net._association import _WakeSocket

    srv, ways = served
    drains: list[int] = []
    drain = _WakeSocket.drain

    def counted(self: _WakeSocket) -> None:
        drains.append(1)
        drain(self)

    monkeypatch.setattr(_WakeSocket, "drain", counted)
    ct = dcmread(get_testdata_file("CT_small.dcm"))
    ae = AE(ae_title="PROBE")
    ae.add_requested_context(CTImageStorage, ct.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", srv.port, ae_title="LAKE")
    assert assoc.is_established
    try:
        statuses = [assoc.send_c_store(ct).Status for _ in range(12)]
    finally:
        assoc.release()
    assert statuses == [0x0000] * 12 and ways == ["lake"] * 12
    assert len(drains) < 6  # the release's wake-ups, not one per request


def _storescu_like_request(calling: str = "STORESCU") -> bytes:
    """An A-ASSOCIATE-RQ as storage SCUs send it: ~120 storage contexts, a role item."""
    from pynetdicom import StoragePresentationContexts
    from pynetdicom.pdu import A_ASSOCIATE_RQ
    from pynetdicom.pdu_primitives import (
        A_ASSOCIATE,
        ImplementationClassUIDNotification,
        ImplementationVersionNameNotification,
        MaximumLengthNotification,
        SCP_SCU_RoleSelectionNegotiation,
    )
    from pynetdicom.presentation import build_context

    primitive = A_ASSOCIATE()
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    primitive.calling_ae_title = calling
    primitive.called_ae_title = "LAKE"
    contexts = []
    for index, cx in enumerate(StoragePresentationContexts):
        context = build_context(cx.abstract_syntax, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
        context.context_id = 2 * index + 1
        contexts.append(context)
    primitive.presentation_context_definition_list = contexts
    length = MaximumLengthNotification()
    length.maximum_length_received = 16384
    implementation = ImplementationClassUIDNotification()
    implementation.implementation_class_uid = "1.2.276.0.7230010.3.0.3.6.7"
    version = ImplementationVersionNameNotification()
    version.implementation_version_name = "OFFIS_DCMTK_367"
    role = SCP_SCU_RoleSelectionNegotiation()
    role.sop_class_uid = CTImageStorage
    role.scu_role, role.scp_role = True, False
    primitive.user_information = [length, implementation, version, role]
    return cast(bytes, A_ASSOCIATE_RQ(primitive).encode())


def _facts(primitive: Any) -> tuple[Any, ...]:
    """Everything an acceptor reads from an A-ASSOCIATE request primitive, as values."""
    contexts = tuple(
        (cx.context_id, str(cx.abstract_syntax), tuple(str(t) for t in cx.transfer_syntax),
         cx.scu_role, cx.scp_role, cx.result)
        for cx in primitive.presentation_context_definition_list)
    items = tuple((type(i).__name__, tuple(sorted((k, str(v)) for k, v in vars(i).items())))
                  for i in primitive.user_information)
    return (primitive.calling_ae_title, primitive.called_ae_title,
            str(primitive.application_context_name), primitive.result,
            primitive.presentation_context_definition_results_list, contexts, items)


def test_a_request_seen_before_gives_pynetdicoms_primitive_as_a_copy() -> None:
    from pynetdicom.pdu import A_ASSOCIATE_RQ

    from lake.net._association import AssociationRequests

    data = _storescu_like_request()
    theirs = A_ASSOCIATE_RQ()
    theirs.decode(data)
    expected = _facts(theirs.to_primitive())
    assert len(expected[5]) > 100
    requests = AssociationRequests()
    first = requests.decode(data)
    assert first.protocol_version == theirs.protocol_version
    mine = first.to_primitive()
    assert _facts(mine) == expected
    # what one association changes in its primitive never reaches the next one
    mine.presentation_context_definition_list[0].transfer_syntax.append("1.2.840.10008.1.2.2")
    mine.presentation_context_definition_list[1].scu_role = True
    mine.user_information.pop()
    mine.user_information[0].maximum_length_received = 1
    mine.calling_ae_title = "SOMEONE"
    mine.presentation_context_definition_list.pop()
    again = requests.decode(bytearray(data))  # the same bytes, as the DUL reads them
    assert again is first
    assert _facts(again.to_primitive()) == expected
    assert (requests.decoded, requests.reused) == (1, 1)
    other = requests.decode(_storescu_like_request("OTHER"))  # different bytes: decoded
    assert other.to_primitive().calling_ae_title == "OTHER"
    assert (requests.decoded, requests.reused) == (2, 1)


def test_requests_kept_are_bounded() -> None:
    from lake.net._association import AssociationRequests

    requests = AssociationRequests(entries=2, max_bytes=20_000)
    for name in ("A", "B", "C", "A"):  # A dropped when C came: decoded again
        requests.decode(_storescu_like_request(name))
    assert (requests.decoded, requests.reused) == (4, 0)
    requests.decode(_storescu_like_request("A"))
    assert requests.reused == 1
    big = AssociationRequests(max_bytes=100)  # longer requests are never kept
    for _ in range(2):
        big.decode(_storescu_like_request())
    assert (big.decoded, big.reused) == (2, 0)
    with pytest.raises(Exception):  # noqa: B017 - pynetdicom's own error for a bad PDU
        requests.decode(b"\x01\x00\x00\x00\x00\x04\x00\x01\x00\x00")


def test_associations_with_the_same_request_decode_and_answer_it_once(
        served: tuple[DicomServer, list[str]], lk: lake.Lake) -> None:
    srv, ways = served
    assert srv._server is not None
    requests = srv._server.requests
    ct = dcmread(get_testdata_file("CT_small.dcm"))
    statuses = []
    for _ in range(3):
        ae = AE(ae_title="PROBE")
        ae.add_requested_context(CTImageStorage, ct.file_meta.TransferSyntaxUID)
        ae.add_requested_context(MRImageStorage)
        assoc = ae.associate("127.0.0.1", srv.port, ae_title="LAKE")
        assert assoc.is_established
        assert [cx.abstract_syntax for cx in assoc.accepted_contexts] == [CTImageStorage,
                                                                          MRImageStorage]
        try:
            statuses.append(assoc.send_c_store(ct).Status)
        finally:
            assoc.release()
    assert statuses == [0x0000] * 3 and ways == ["lake"] * 3
    assert (requests.decoded, requests.reused) == (2, 4)  # the request and the answer


def _accept_primitive(max_length: int = 1 << 20) -> Any:
    """An accept as pynetdicom's acceptor makes it for a storescu-like request."""
    from pynetdicom import StoragePresentationContexts
    from pynetdicom.pdu import A_ASSOCIATE_RQ
    from pynetdicom.pdu_primitives import (
        A_ASSOCIATE,
        ImplementationClassUIDNotification,
        ImplementationVersionNameNotification,
        MaximumLengthNotification,
    )
    from pynetdicom.presentation import build_context, negotiate_as_acceptor

    request = A_ASSOCIATE_RQ()
    request.decode(_storescu_like_request())
    rq = request.to_primitive()
    ours = [build_context(cx.abstract_syntax, ["1.2.840.10008.1.2.1"])
            for cx in StoragePresentationContexts[:100]]  # some are rejected
    results, _ = negotiate_as_acceptor(rq.presentation_context_definition_list, ours, {})
    primitive = A_ASSOCIATE()
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    primitive.calling_ae_title = rq.calling_ae_title
    primitive.called_ae_title = rq.called_ae_title
    primitive.result, primitive.result_source = 0x00, 0x01
    primitive.presentation_context_definition_results_list = results
    length = MaximumLengthNotification()
    length.maximum_length_received = max_length
    implementation = ImplementationClassUIDNotification()
    implementation.implementation_class_uid = "1.2.826.0.1.3680043.9.3811.3.0.4"
    version = ImplementationVersionNameNotification()
    version.implementation_version_name = "PYNETDICOM_304"
    primitive.user_information = [length, implementation, version]
    return primitive


def test_an_answer_given_before_is_pynetdicoms_encoding() -> None:
    from pynetdicom.pdu import A_ASSOCIATE_AC

    from lake.net._association import AssociationRequests, _accept_key

    requests = AssociationRequests()
    primitive = _accept_primitive()
    theirs = A_ASSOCIATE_AC(primitive).encode()
    assert requests.accept(primitive) == theirs
    assert requests.accept(_accept_primitive()) == theirs  # equal values: kept
    assert (requests.decoded, requests.reused) == (1, 1)
    other = _accept_primitive(16384)  # any value differing: encoded anew
    assert requests.accept(other) == A_ASSOCIATE_AC(other).encode() != theirs
    rejected = _accept_primitive()
    results = rejected.presentation_context_definition_results_list
    assert {cx.result for cx in results} == {0x00, 0x03}  # accepted and rejected ones
    next(cx for cx in results if cx.result == 0x00).result = 0x03
    assert requests.accept(rejected) == A_ASSOCIATE_AC(rejected).encode() != theirs
    assert (requests.decoded, requests.reused) == (3, 1)
    odd = _accept_primitive()
    odd.user_information[0]._lake_note = [object()]  # not a plain value  # type: ignore[attr-defined]
    assert _accept_key(odd) is None  # encoded every time, never kept


def test_a_handler_on_sent_pdus_sees_the_answer_made_by_pynetdicom(
        served: tuple[DicomServer, list[str]]) -> None:
    from pynetdicom import evt
    from pynetdicom.pdu import A_ASSOCIATE_AC

    srv, _ = served
    assert srv._server is not None
    seen: list[str] = []
    srv._server.bind(evt.EVT_PDU_SENT, lambda event: seen.append(type(event.pdu).__name__))
    ae = AE(ae_title="PROBE")
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", srv.port, ae_title="LAKE")
    assert assoc.is_established
    assoc.release()
    assert A_ASSOCIATE_AC.__name__ in seen
    assert srv._server.requests.reused == 0


def test_a_store_arriving_before_the_association_is_established_is_answered(
        served: tuple[DicomServer, list[str]], monkeypatch: pytest.MonkeyPatch) -> None:
    # The DUL thread sends the A-ASSOCIATE-AC as soon as the association thread queues it;
    # that thread marks the association established only after (pynetdicom's ACSE: send
    # the accept, EVT_ACCEPTED, is_established). A peer's first C-STORE can arrive in
    # between: it used to be served there by the DUL thread and its response dropped
    # (not established), the peer waiting until the network timeout aborted the
    # association (~1 % of storescu associations under load). Forced here: the
    # EVT_ACCEPTED handler holds the association thread until the request was served,
    # or queued for the reactor.
    srv, ways = served
    assert srv._server is not None
    served_store = AcceptorAssociation._serve_store  # the fixture's recording one
    done: list[str] = []

    def serve_store(self: AcceptorAssociation, *args: Any) -> None:
        served_store(self, *args)
        done.append("served")

    def hold(event: Any) -> None:
        for _ in range(3000):  # at most ~30 s: a guard against hanging, never reached
            if done or event.assoc.dimse.msg_queue.queue:
                return
            time.sleep(0.01)

    monkeypatch.setattr(AcceptorAssociation, "_serve_store", serve_store)
    srv._server.bind(evt.EVT_ACCEPTED, hold)
    ct = dcmread(get_testdata_file("CT_small.dcm"))
    ae = AE(ae_title="PROBE")
    ae.dimse_timeout = 10  # no answer: pynetdicom gives up after this and aborts
    ae.add_requested_context(CTImageStorage, ct.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", srv.port, ae_title="LAKE")
    assert assoc.is_established
    try:
        first = assoc.send_c_store(ct)
        assert "Status" in first, "the first C-STORE was never answered"
        second = assoc.send_c_store(ct)
    finally:
        assoc.release()
    assert first.Status == second.Status == 0x0000
    # the first waited in the queue for the reactor; the next came once established
    assert ways == ["lake, reactor", "lake"]
