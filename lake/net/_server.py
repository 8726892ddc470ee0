"""``lake serve dicom``: the lake as a DICOM node (pynetdicom).

C-ECHO; C-STORE of every storage SOP class in the common transfer syntaxes
(de-identified on the way in, acknowledged once durable in the spool, committed
in batches); C-FIND, C-GET and C-MOVE for the Patient Root and Study Root models,
answered from the newest catalog version.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom import _config as pynetdicom_config
from pynetdicom.presentation import PresentationContext

from lake._capture import Captured
from lake._errors import LakeError, NetError, QueryError
from lake.ingest import Ingestor
from lake.net._association import MIN_PDU_LIMIT
from lake.net._config import BUSY_STRETCH, ServerConfig
from lake.net._intake import Intake
from lake.net._objects import (
    RequestorSyntaxes,
    contexts_for,
    load_instance,
    prepare_for,
)
from lake.net._receive import Acknowledge, ReceiveStats, StoreReceiver
from lake.net._transport import AdmissionStats, AssociationServer, nodelay_on_open, set_nodelay
from lake.net._uids import (
    PATIENT_ROOT_FIND,
    PATIENT_ROOT_GET,
    PATIENT_ROOT_MOVE,
    STUDY_ROOT_FIND,
    STUDY_ROOT_GET,
    STUDY_ROOT_MOVE,
    VERIFICATION,
)
from lake.query import Level, RetrieveItem, Snapshot, SnapshotCache, parse_identifier
from lake.vault import Secret

if TYPE_CHECKING:
    from lake._lake import Lake

__all__ = ["DicomServer", "ServerReport", "quiet_identifiers", "set_nodelay"]

_LOG = logging.getLogger(__name__)

_FIND = {
    PATIENT_ROOT_FIND: (
        Level.PATIENT, Level.STUDY, Level.SERIES, Level.IMAGE,
    ),
    STUDY_ROOT_FIND: (Level.STUDY, Level.SERIES, Level.IMAGE),
}
_PATIENT_LEVELS = _FIND[PATIENT_ROOT_FIND]
_STUDY_LEVELS = _FIND[STUDY_ROOT_FIND]
_GET = {
    PATIENT_ROOT_GET: _PATIENT_LEVELS,
    STUDY_ROOT_GET: _STUDY_LEVELS,
}
_MOVE = {
    PATIENT_ROOT_MOVE: _PATIENT_LEVELS,
    STUDY_ROOT_MOVE: _STUDY_LEVELS,
}
_LEVELS = {**_FIND, **_GET, **_MOVE}

# Uncompressed first (the usual preference), then every compressed syntax pydicom knows.
STORE_TRANSFER_SYNTAXES: tuple[str, ...] = tuple(ALL_TRANSFER_SYNTAXES)
_HEADER_CHUNK = 64
_PENDING = 0xFF00
# Responses waiting in pynetdicom's send queue: it takes every response the handler yields
# without back-pressure, so a fast C-FIND would queue all its matches in memory before the
# peer's C-CANCEL is even read. The handler waits while this many are queued.
_MAX_QUEUED_RESPONSES = 32
_CANCEL = 0xFE00
_IDENTIFIER_MISMATCH = 0xA900
_UNABLE = 0xC000


def quiet_identifiers() -> None:
    """Stop pynetdicom from logging query identifiers and responses (they hold PHI).

    Process-wide (pynetdicom's own settings), for the lake's requestor side. The server
    does not need it: whatever pynetdicom logs on the server's threads is dropped.
    """
    pynetdicom_config.LOG_REQUEST_IDENTIFIERS = False
    pynetdicom_config.LOG_RESPONSE_IDENTIFIERS = False


# Names used by lake.net._pull.
_AssociationServer = AssociationServer
_nodelay_on_open = nodelay_on_open


def _wait_for_peer(event: Any) -> None:
    """Wait while the association's send queue is full (memory stays bounded, cancels land)."""
    assoc = event.assoc
    queue = assoc.dul.to_provider_queue
    while (
        queue.qsize() > _MAX_QUEUED_RESPONSES
        and assoc.is_established
        and not event.is_cancelled
    ):
        time.sleep(0.001)


@dataclass
class ServerReport:
    """What a server did, for the CLI (no identifiers)."""

    recovered: int = 0
    received: ReceiveStats = field(default_factory=ReceiveStats)
    committed_batches: int = 0
    committed_instances: int = 0
    aborted_associations: int = 0
    admission: AdmissionStats = field(default_factory=AdmissionStats)
    """Connections refused or dropped before association, and why."""
    captured: Captured = field(default_factory=Captured)
    """pydicom/pynetdicom warnings and log records dropped (they may quote received values)."""


class DicomServer:
    """The lake's DICOM node.

    Parameters
    ----------
    lake : Lake
        An open lake.
    secret : Secret
        The lake's secret (de-identification keys).
    config : ServerConfig
        AE title, address, allow-list, move destinations, limits, TLS.

    Examples
    --------
    >>> server = DicomServer(lk, lk.secret(vault), ServerConfig(port=0))  # doctest: +SKIP
    >>> server.start()  # doctest: +SKIP
    >>> server.port  # doctest: +SKIP
    40123
    >>> server.stop()  # doctest: +SKIP
    """

    def __init__(self, lake: Lake, secret: Secret, config: ServerConfig) -> None:
        self.lake = lake
        self.config = config
        self.ingestor = Ingestor(lake, secret, config.profile, source="dicom-store")
        self.captured = Captured()
        # one server per lake: its receipt journal is exclusive (lake/net/_intake.py)
        self.intake = Intake(
            self.ingestor, secret, "dicom-store", every=config.commit_every,
            interval=config.commit_interval, busy_interval=config.commit_interval * BUSY_STRETCH,
            workers=config.workers, exclusive=True,
            captured=self.captured,
        )
        self.spool = self.intake.spool
        self.receiver = StoreReceiver(self.intake, config.max_instance_bytes,
                                      acknowledge=Acknowledge(config.acknowledge))
        self.committer = self.intake.committer
        self.report = ServerReport(received=self.receiver.stats, captured=self.captured)
        self._cache = SnapshotCache(lake.tables)
        self._server: _AssociationServer | None = None
        self._thread: threading.Thread | None = None
        self._syntaxes = RequestorSyntaxes()
        self._ae = self._make_ae()

    # -- set-up ----------------------------------------------------------------------
    def _make_ae(self) -> AE:
        cfg = self.config
        ae = AE(ae_title=cfg.aet)
        ae.maximum_associations = cfg.max_associations
        ae.acse_timeout = cfg.acse_timeout
        ae.dimse_timeout = cfg.dimse_timeout
        ae.network_timeout = cfg.network_timeout
        ae.connection_timeout = cfg.acse_timeout
        ae.require_called_aet = True
        # Peers send PDUs up to the length we announce (pynetdicom's default: 16 KiB): a
        # 25 KB instance came in two data PDUs, each decoded and dispatched through the
        # state machine. Up to 1 MiB most instances take one; reads were already bounded
        # at that length.
        ae.maximum_pdu_size = MIN_PDU_LIMIT
        if cfg.allow:
            ae.require_calling_aet = list(cfg.allow)
        ae.add_supported_context(VERIFICATION)
        for model in _LEVELS:
            ae.add_supported_context(model)
        for cx in AllStoragePresentationContexts:
            # Both roles: Storage SCP for C-STORE, Storage SCU over a C-GET association.
            ae.add_supported_context(
                str(cx.abstract_syntax), list(STORE_TRANSFER_SYNTAXES), scu_role=True, scp_role=True
            )
        # C-MOVE sub-associations request the contexts computed per move.
        return ae

    def _handlers(self) -> list[Any]:
        return [
            (evt.EVT_REQUESTED, self._syntaxes),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_C_FIND, self._on_find),
            (evt.EVT_C_GET, self._on_get),
            (evt.EVT_C_MOVE, self._on_move),
        ]

    @property
    def port(self) -> int:
        """The TCP port listened on (useful with ``port=0``)."""
        if self._server is None:
            raise NetError("the server is not running; call start() first")
        return int(self._server.server_address[1])

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> None:
        """Commit any spool left by a crash, then listen.

        Raises
        ------
        NetError
            If the address is in use or cannot be bound.
        ConfigError
            If the TLS files are unusable.
        """
        if self._server is not None:
            return
        # TLS files first: unusable ones fail before workers spawn or the journal is taken
        ssl_context = self.config.tls.server_context() if self.config.tls else None
        self.report.recovered = self.intake.start()  # what a crash left: committed now
        try:
            server = cast(_AssociationServer, self._ae.make_server(
                (self.config.host, self.config.port),
                ssl_context=ssl_context,
                evt_handlers=self._handlers(),
                server_class=_AssociationServer,
            ))
        except OSError as exc:
            self.intake.close()  # frees the journal for a server that can listen
            raise NetError(
                f"cannot listen on {self.config.host}:{self.config.port} ({exc.strerror or exc}); "
                "choose another port (port=) or stop the process using it", parameters=("port",)
            ) from None
        server.configure(
            request_timeout=self.config.request_timeout,
            max_dataset_bytes=self.config.max_instance_bytes,
            budget_bytes=max(self.config.receive_memory_bytes, self.config.max_instance_bytes),
        )
        self.report.admission = server.admission.stats
        server.captured = self.captured
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.2},
            name=f"lake-dicom-{self.config.aet}", daemon=True,
        )
        self._thread.start()

    def stop(self, grace: float = 10.0) -> ServerReport:
        """Stop listening, let associations finish (abort them after ``grace`` s), commit all.

        Nothing acknowledged is lost: every success status was sent after the
        instance was durable (in the receipt journal, or the spool), and everything is
        de-identified and committed here (or, if that fails, on the next start).

        Raises
        ------
        NetError
            If the final commit fails.
        """
        server, self._server = self._server, None
        if server is None:
            return self.report
        server.shutdown()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        deadline = time.monotonic() + grace
        for assoc in list(server.active_associations):
            assoc.join(timeout=max(0.0, deadline - time.monotonic()))
        for assoc in server.active_associations:
            self.report.aborted_associations += 1
            assoc.abort()
        self.receiver.close()
        try:
            self.intake.close()
        finally:
            self._cache.close()
        batches = self.committer.batches
        self.report.committed_batches = len(batches)
        self.report.committed_instances = sum(b.ingested for b in batches)
        return self.report

    def flush(self) -> None:
        """De-identify everything received so far and commit it now (tests, benchmarks).

        Raises
        ------
        LakeError
            If the commit fails (everything stays durable; it is retried).
        """
        self.intake.flush()

    def __enter__(self) -> DicomServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- handlers ----------------------------------------------------------------------
    @staticmethod
    def _on_echo(event: Any) -> int:
        return 0x0000

    def _on_store(self, event: Any) -> Dataset | int:
        return self.receiver.handle(event)

    def _snapshot(self) -> Snapshot:
        return self._cache.current()

    def _on_find(self, event: Any) -> Iterator[tuple[int | Dataset, Dataset | None]]:
        levels = _LEVELS[UID(event.request.AffectedSOPClassUID)]
        try:
            level, keys = parse_identifier(event.identifier, levels)
            matches = self._snapshot().find(level, keys)
        except QueryError as exc:
            yield _error(_IDENTIFIER_MISMATCH, str(exc)), None
            return
        except LakeError as exc:
            _LOG.error("C-FIND failed: %s", exc)
            yield _error(_UNABLE, "the catalog cannot be read"), None
            return
        requested = {k.keyword for k in keys}
        for ds in matches:
            _wait_for_peer(event)
            if event.is_cancelled:
                yield _CANCEL, None
                return
            if "RetrieveAETitle" in requested:
                ds.RetrieveAETitle = self.config.aet
            if "InstanceAvailability" in requested:
                ds.InstanceAvailability = "ONLINE"
            _charset(ds)
            yield _PENDING, ds

    def _select(self, event: Any) -> tuple[Snapshot, list[RetrieveItem]]:
        levels = _LEVELS[UID(event.request.AffectedSOPClassUID)]
        level, keys = parse_identifier(event.identifier, levels)
        snapshot = self._snapshot()
        return snapshot, snapshot.retrieve(level, keys)

    def _datasets(
        self,
        event: Any,
        snapshot: Snapshot,
        items: Sequence[RetrieveItem],
        accepted: _Accepted,
    ) -> Iterator[tuple[int, Dataset | None]]:
        for start in range(0, len(items), _HEADER_CHUNK):
            chunk = items[start : start + _HEADER_CHUNK]
            headers = snapshot.headers([i.sop_instance_uid for i in chunk], "header_dicom")
            for item in chunk:
                if event.is_cancelled:
                    yield _CANCEL, None
                    return
                yield _PENDING, self._prepare(item, headers.get(item.sop_instance_uid), accepted)

    def _prepare(self, item: RetrieveItem, header: bytes | None, accepted: _Accepted) -> Dataset:
        try:
            if header is None:
                raise NetError("the instance is no longer in the catalog")
            ds = load_instance(header, item, self.lake.blobs)
            return prepare_for(ds, accepted.contexts)
        except LakeError as exc:
            _LOG.warning("instance not sent: %s", exc)
            return _unsendable(item)

    def _on_get(self, event: Any) -> Iterator[int | tuple[int | Dataset, Dataset | None]]:
        try:
            snapshot, items = self._select(event)
        except QueryError as exc:
            yield 1
            yield _error(_IDENTIFIER_MISMATCH, str(exc)), None
            return
        except LakeError as exc:
            _LOG.error("C-GET failed: %s", exc)
            yield 1
            yield _error(_UNABLE, "the catalog cannot be read"), None
            return
        yield len(items)
        accepted = _Accepted([cx for cx in event.assoc.accepted_contexts if cx.as_scu])
        yield from self._datasets(event, snapshot, items, accepted)

    def _on_move(self, event: Any) -> Iterator[Any]:
        destination_aet = str(event.move_destination or "").strip()
        peer = self.config.move_destinations.get(destination_aet)
        if peer is None:
            yield None, None  # Failure: move destination unknown (0xA801)
            return
        try:
            snapshot, items = self._select(event)
            contexts = contexts_for(items)
        except QueryError as exc:
            yield peer.host, peer.port
            yield 1
            yield _error(_IDENTIFIER_MISMATCH, str(exc)), None
            return
        except LakeError as exc:
            _LOG.error("C-MOVE failed: %s", exc)
            yield peer.host, peer.port
            yield 1
            yield _error(_UNABLE, "the request cannot be served"), None
            return
        accepted = _Accepted([])

        def on_accepted(accept_event: Any) -> None:
            accepted.contexts = [cx for cx in accept_event.assoc.accepted_contexts if cx.as_scu]

        yield peer.host, peer.port, {
            "contexts": contexts,
            "evt_handlers": [(evt.EVT_CONN_OPEN, _nodelay_on_open),
                             (evt.EVT_ACCEPTED, on_accepted)],
        }
        yield len(items)
        yield from self._datasets(event, snapshot, items, accepted)


@dataclass
class _Accepted:
    """The presentation contexts of the association sub-operations go over."""

    contexts: list[PresentationContext]


def _error(status: int, comment: str) -> Dataset:
    ds = Dataset()
    ds.Status = status
    ds.ErrorComment = comment[:64]
    return ds


def _unsendable(item: RetrieveItem) -> Dataset:
    # No file meta: pynetdicom's send fails, counting a failed sub-operation and listing
    # the (de-identified) SOP Instance UID in FailedSOPInstanceUIDList.
    ds = Dataset()
    ds.SOPClassUID = item.sop_class_uid
    ds.SOPInstanceUID = item.sop_instance_uid
    return ds


def _charset(ds: Dataset) -> None:
    for elem in ds:
        value = elem.value
        texts = value if isinstance(value, list | tuple) else [value]
        if any(isinstance(t, str) and not t.isascii() for t in texts):
            ds.SpecificCharacterSet = "ISO_IR 192"
            return
