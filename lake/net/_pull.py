"""``lake pull``: query a clinical PACS, retrieve the matches, de-identify on the way in.

The steward's filters become a Study Root C-FIND. For each matching study the
instances are listed (C-FIND at SERIES and IMAGE level) and compared with the pull
ledger, the ``pulls`` table, which records a keyed hash (HMAC with a vault key) of
each remote SOP Instance UID already pulled, never the UID itself. Only what is
missing is retrieved, with C-GET over the same association or with C-MOVE to a
temporary Storage SCP of the lake. Received instances go through the same receiver
as ``lake serve dicom`` (sealed in a receipt journal, de-identified, batched commits) and
the ledger rows are written with each commit, so an interrupted pull resumes
where it stopped. Identified query results live in memory only, for display.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import duckdb
from pydicom.dataset import Dataset
from pynetdicom import AE, AllStoragePresentationContexts, build_role, evt
from pynetdicom.association import Association
from pynetdicom.presentation import PresentationContext, build_context

from lake._capture import capture
from lake._errors import NetError
from lake.catalog import PULLS, arrow_dataset
from lake.ingest import Accepted, BatchResult, Ingestor
from lake.net._config import LOOPBACK, Peer, parse_ae_title
from lake.net._intake import Intake
from lake.net._objects import UNCOMPRESSED
from lake.net._pull_query import pull_identifier
from lake.net._receive import Acknowledge, ReceiveStats, StoreReceiver
from lake.net._server import _AssociationServer, _nodelay_on_open, quiet_identifiers
from lake.net._spool import SpoolEntry
from lake.net._uids import STUDY_ROOT_FIND, STUDY_ROOT_GET, STUDY_ROOT_MOVE
from lake.vault import Secret

if TYPE_CHECKING:
    from lake._lake import Lake

__all__ = ["PULLS", "PullSummary", "RemoteStudy", "find_studies", "pull_studies"]

# Display keys asked for at STUDY level (identified: terminal only).
STUDY_KEYS = (
    "PatientID", "PatientName", "StudyDate", "StudyTime", "AccessionNumber", "StudyDescription",
    "ModalitiesInStudy", "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances",
    "StudyInstanceUID",
)
# Compressed syntaxes proposed (one context each) so the PACS can send instances as stored.
_COMPRESSED = (
    "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57",
    "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81",
    "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.5",
)
_MAX_CONTEXTS = 127


@dataclass
class RemoteStudy:
    """A study on the remote PACS as its C-FIND answered.

    Holds identified values: show them to the steward, never store them.

    Attributes
    ----------
    study_uid : str
        The remote (identified) Study Instance UID.
    attributes : dict
        Display attributes (keyword -> text).
    """

    study_uid: str
    attributes: dict[str, str] = field(repr=False)


@dataclass
class StudyOutcome:
    """What pulling one study did (counts only)."""

    listed: int = 0
    already: int = 0
    requested: int = 0
    completed: int = 0
    failed: int = 0
    warnings: int = 0


@dataclass
class PullSummary:
    """Totals of a pull (counts only)."""

    studies: int = 0
    up_to_date: int = 0
    listed: int = 0
    already: int = 0
    requested: int = 0
    completed: int = 0
    failed: int = 0
    recovered: int = 0
    suppressed: int = 0
    """Parser warnings and library log records about the received data (counted, never shown:
    they can quote original values)."""
    received: ReceiveStats = field(default_factory=ReceiveStats)
    batches: list[BatchResult] = field(default_factory=list)

    @property
    def ingested(self) -> int:
        return sum(b.ingested for b in self.batches)

    @property
    def quarantined(self) -> int:
        return sum(b.quarantined for b in self.batches)

    def add(self, study: StudyOutcome) -> None:
        self.studies += 1
        self.up_to_date += int(study.requested == 0)
        self.listed += study.listed
        self.already += study.already
        self.requested += study.requested
        self.completed += study.completed
        self.failed += study.failed


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value)
    return str(value)


def _associate(
    ae: AE,
    peer: Peer,
    contexts: Sequence[PresentationContext],
    *,
    roles: Sequence[Any] = (),
    handlers: Sequence[Any] = (),
) -> Association:
    assoc = ae.associate(
        peer.host,
        peer.port,
        contexts=list(contexts),
        ae_title=peer.aet,
        ext_neg=list(roles) or None,
        evt_handlers=[(evt.EVT_CONN_OPEN, _nodelay_on_open), *handlers],
    )
    if assoc.is_established:
        return assoc
    if assoc.is_rejected:
        raise NetError(
            f"{peer} rejected the association; check that it knows this AE title "
            f"({ae.ae_title}) and that the called AE title is right"
        )
    raise NetError(
        f"cannot connect to {peer}, or it aborted the association request; check the host, "
        f"the port, that it is running and that it accepts AE title {ae.ae_title}"
    )


def _client_ae(calling_aet: str, *, timeout: float) -> AE:
    ae = AE(ae_title=parse_ae_title(calling_aet, "calling AE title"))
    ae.acse_timeout = timeout
    ae.dimse_timeout = timeout
    ae.network_timeout = timeout
    ae.connection_timeout = timeout
    return ae


def _find(assoc: Association, identifier: Dataset, peer: Peer) -> Iterator[Dataset]:
    for status, result in assoc.send_c_find(identifier, STUDY_ROOT_FIND):
        if not status:
            if assoc.is_aborted or assoc.acse.is_aborted():
                raise NetError(
                    f"{peer} aborted the association at the C-FIND; check that it allows "
                    f"queries from AE title {assoc.requestor.ae_title}"
                )
            raise NetError(f"{peer} did not answer the C-FIND within the timeout")
        code = int(status.Status)
        if code in (0xFF00, 0xFF01):
            if result is not None:
                yield result
        elif code != 0x0000:
            raise NetError(f"{peer} refused the C-FIND (status 0x{code:04X})")


def find_studies(
    peer: Peer,
    filters: Sequence[str],
    *,
    calling_aet: str = "LAKE",
    timeout: float = 60.0,
    all_studies: bool = False,
) -> list[RemoteStudy]:
    """Query ``peer`` at STUDY level with ``KEYWORD=VALUE`` filters.

    Parameters
    ----------
    peer : Peer
        The remote PACS.
    filters : sequence of str
        ``--query`` texts: DICOM matching (wildcards, ranges, lists).
    calling_aet : str
        The lake's AE title as the PACS knows it.
    timeout : float
        Seconds for association and DIMSE messages.
    all_studies : bool
        Allow a query that matches every study of the PACS (refused otherwise).

    Returns
    -------
    list of RemoteStudy
        Identified: display them, never store them.

    Raises
    ------
    NetError
        If the PACS cannot be reached or refuses the query.
    QueryError
        If a filter names an unknown keyword or holds a malformed value, or nothing
        restricts the query and ``all_studies`` is false (checked before connecting;
        see :func:`pull_identifier`).
    """
    quiet_identifiers()
    identifier = pull_identifier(filters, all_studies=all_studies)
    for keyword in STUDY_KEYS:
        if keyword not in identifier:
            setattr(identifier, keyword, "")
    ae = _client_ae(calling_aet, timeout=timeout)
    assoc = _associate(ae, peer, [build_context(STUDY_ROOT_FIND)])
    try:
        studies = []
        for result in _find(assoc, identifier, peer):
            uid = _text(result.get("StudyInstanceUID"))
            if not uid:
                continue
            attrs = {k: _text(result.get(k)) for k in STUDY_KEYS if k != "StudyInstanceUID"}
            studies.append(RemoteStudy(uid, attrs))
    finally:
        assoc.release()
    return studies


class _Ledger:
    """The ``pulls`` table: keyed hashes of remote SOP Instance UIDs already pulled."""

    def __init__(self, lake: Lake, secret: Secret, peer: Peer) -> None:
        self.lake = lake
        self.peer = peer
        self._key = secret.derive("net-pull")
        lake.tables.create(PULLS)

    def key(self, uid: str) -> str:
        return hmac.new(self._key, uid.encode(), hashlib.sha256).hexdigest()

    def known(self, keys: Sequence[str]) -> set[str]:
        if not keys:
            return set()
        dataset = arrow_dataset(self.lake.tables.open(PULLS.name))
        con = duckdb.connect()
        try:
            con.register("pulls", dataset)
            rows = con.execute(
                "SELECT DISTINCT remote_key FROM pulls WHERE remote_key IN "
                "(SELECT unnest(?::VARCHAR[]))",
                [list(keys)],
            ).fetchall()
        finally:
            con.close()
        return {r[0] for r in rows}

    def record(self, entries: Sequence[SpoolEntry], batch: BatchResult) -> None:
        now = dt.datetime.now(dt.UTC)
        rows = [
            {
                "remote_key": e.tag,
                "peer": self.peer.aet,
                "outcome": "stored" if isinstance(e.outcome, Accepted) else "quarantined",
                "batch_id": batch.batch_id,
                "pulled_at": now,
            }
            for e in entries
            if e.tag
        ]
        if rows:
            self.lake.tables.append(PULLS, rows)


@dataclass
class _Instance:
    series_uid: str
    sop_uid: str
    sop_class: str
    key: str


def _list_instances(
    assoc: Association, peer: Peer, study_uid: str, ledger: _Ledger
) -> list[_Instance]:
    query = Dataset()
    query.QueryRetrieveLevel = "SERIES"
    query.StudyInstanceUID = study_uid
    query.SeriesInstanceUID = ""
    series = [_text(r.get("SeriesInstanceUID")) for r in _find(assoc, query, peer)]
    out: list[_Instance] = []
    for series_uid in sorted(s for s in series if s):
        query = Dataset()
        query.QueryRetrieveLevel = "IMAGE"
        query.StudyInstanceUID = study_uid
        query.SeriesInstanceUID = series_uid
        query.SOPInstanceUID = ""
        query.SOPClassUID = ""
        for result in _find(assoc, query, peer):
            sop = _text(result.get("SOPInstanceUID"))
            if sop:
                out.append(_Instance(series_uid, sop, _text(result.get("SOPClassUID")),
                                     ledger.key(sop)))
    return out


def _retrieve_identifiers(
    study_uid: str, instances: Sequence[_Instance], missing: Sequence[_Instance]
) -> list[Dataset]:
    """As few identifiers as cover exactly the missing instances."""
    if len(missing) == len(instances):
        ds = Dataset()
        ds.QueryRetrieveLevel = "STUDY"
        ds.StudyInstanceUID = study_uid
        return [ds]
    by_series: dict[str, list[_Instance]] = {}
    for inst in instances:
        by_series.setdefault(inst.series_uid, []).append(inst)
    wanted: dict[str, list[_Instance]] = {}
    for inst in missing:
        wanted.setdefault(inst.series_uid, []).append(inst)
    out = []
    for series_uid, items in wanted.items():
        ds = Dataset()
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        if len(items) == len(by_series[series_uid]):
            ds.QueryRetrieveLevel = "SERIES"
            out.append(ds)
            continue
        for inst in items:  # one request per instance: PACS support for UID lists varies
            one = Dataset()
            one.QueryRetrieveLevel = "IMAGE"
            one.StudyInstanceUID = study_uid
            one.SeriesInstanceUID = series_uid
            one.SOPInstanceUID = inst.sop_uid
            out.append(one)
    return out


def _storage_contexts(sop_classes: Sequence[str], budget: int) -> list[PresentationContext]:
    classes = sorted({c for c in sop_classes if c})
    if not classes:
        return []
    contexts = [build_context(c, list(UNCOMPRESSED)) for c in classes]
    if len(contexts) > budget:
        raise NetError(
            f"the study holds {len(classes)} SOP classes; a C-GET association fits {budget}: "
            "use via='move'", parameters=("via",)
        )
    for syntax in _COMPRESSED:
        if len(contexts) + len(classes) > budget:
            break
        contexts.extend(build_context(c, [syntax]) for c in classes)
    return contexts


def _tally(status: Dataset | None, outcome: StudyOutcome, peer: Peer, op: str) -> None:
    if status is None or "Status" not in status:
        raise NetError(f"{peer} did not answer the {op} (timeout or aborted association)")
    code = int(status.Status)
    outcome.completed += int(status.get("NumberOfCompletedSuboperations") or 0)
    outcome.failed += int(status.get("NumberOfFailedSuboperations") or 0)
    outcome.warnings += int(status.get("NumberOfWarningSuboperations") or 0)
    if code == 0xA801:
        raise NetError(
            f"{peer} does not know the move destination; add this lake's AE title, host and "
            "port to the PACS's modalities, or use via='get'", parameters=("via",)
        )
    if code not in (0x0000, 0xB000, 0xA702, 0xFE00) and (code & 0xF000) != 0xA000:
        hint = ""
        if op == "C-MOVE" and not outcome.completed:
            hint = (
                "; check that the PACS knows this lake's AE title as a move destination "
                "(host and port), or use via='get'"
            )
        raise NetError(f"{peer} refused the {op} (status 0x{code:04X}){hint}",
                       parameters=("via",) if hint else ())


def _final(responses: Iterator[tuple[Dataset, Dataset | None]]) -> Dataset | None:
    last: Dataset | None = None
    for status, _identifier in responses:
        if not status:
            return None
        last = status
        if int(status.Status) not in (0xFF00, 0xFF01):
            return status
    return last


ProgressCallback = Callable[[int, int, int], None]
"""Called as ``(study_index, instances_done, instances_to_fetch)``."""


def pull_studies(
    lake: Lake,
    secret: Secret,
    peer: Peer,
    studies: Sequence[RemoteStudy],
    *,
    via: str = "get",
    calling_aet: str = "LAKE",
    listen: tuple[str, int] = (LOOPBACK, 11112),
    profile: str | None = None,
    timeout: float = 120.0,
    commit_every: int = 500,
    on_progress: ProgressCallback | None = None,
) -> PullSummary:
    """Retrieve ``studies`` from ``peer`` into ``lake``; only what was not pulled before.

    Parameters
    ----------
    lake : Lake
        The lake.
    secret : Secret
        Its secret (de-identification and ledger keys).
    peer : Peer
        The remote PACS.
    studies : sequence of RemoteStudy
        From :func:`find_studies`.
    via : {"get", "move"}
        C-GET over the query association, or C-MOVE to a Storage SCP this call
        runs at ``listen`` with AE title ``calling_aet`` (the PACS must know it).
    calling_aet : str
        The lake's AE title.
    listen : (str, int)
        Address of the temporary Storage SCP for ``via="move"``.
    profile : str, optional
        De-identification profile (the lake's default when omitted).
    timeout : float
        Seconds for association and DIMSE messages.
    commit_every : int
        Instances per catalog commit (every study is committed when it completes).
    on_progress : callable, optional
        ``(study_index, done, total)`` after each received instance.

    Returns
    -------
    PullSummary

    Raises
    ------
    NetError
        If the PACS cannot be reached, refuses a request, or (move) the listening
        port is taken.
    """
    if via not in ("get", "move"):
        raise NetError("invalid via: it must be 'get' or 'move'")
    quiet_identifiers()
    ingestor = Ingestor(lake, secret, profile, source="pull")
    ledger = _Ledger(lake, secret, peer)
    # each study is committed when it completes; every instance is journaled until then
    intake = Intake(ingestor, secret, "pull", every=commit_every, interval=3600.0,
                    on_committed=ledger.record)
    summary = PullSummary()
    summary.recovered = intake.start()
    receiver = StoreReceiver(intake, max_instance_bytes=2**31, acknowledge=Acknowledge.OUTCOME)
    summary.received = receiver.stats
    progress = _Progress(on_progress)

    def on_store(event: Any) -> Dataset | int:
        uid = str(event.request.AffectedSOPInstanceUID or "")
        status = receiver.handle(event, tag=ledger.key(uid) if uid else None)
        progress.advance()
        return status

    ae = _client_ae(calling_aet, timeout=timeout)
    scp: _AssociationServer | None = None
    if via == "move":
        scp = _start_move_scp(calling_aet, listen, peer, on_store, timeout)
    try:
        for index, study in enumerate(studies):
            # The PACS's C-FIND responses (series, instances) are parsed on this thread:
            # pydicom quotes their invalid values (an original UID) in warnings, counted,
            # never shown. The scope ends before the commit: what the catalog's libraries
            # warn about is not about received data, and is shown as usual.
            with capture(into=intake.captured):
                outcome = _pull_study(ae, peer, study, ledger, via, calling_aet, on_store,
                                      progress, index)
            intake.flush()
            summary.add(outcome)
    finally:
        if scp is not None:
            scp.shutdown()
        receiver.close()
        intake.close()
        summary.batches = list(intake.batches)
        summary.suppressed = intake.captured.total
    return summary


class _Progress:
    def __init__(self, callback: ProgressCallback | None) -> None:
        self.callback = callback
        self.lock = threading.Lock()
        self.study = 0
        self.done = 0
        self.total = 0

    def begin(self, study: int, total: int) -> None:
        with self.lock:
            self.study, self.done, self.total = study, 0, total
        if self.callback is not None:
            self.callback(study, 0, total)

    def advance(self) -> None:
        with self.lock:
            self.done += 1
            args = (self.study, self.done, self.total)
        if self.callback is not None:
            self.callback(*args)


def _start_move_scp(
    aet: str,
    listen: tuple[str, int],
    peer: Peer,
    on_store: Callable[[Any], Dataset | int],
    timeout: float,
) -> _AssociationServer:
    ae = AE(ae_title=parse_ae_title(aet, "calling AE title"))
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.require_calling_aet = [peer.aet]
    for cx in AllStoragePresentationContexts:
        syntaxes = [*UNCOMPRESSED, *_COMPRESSED, "1.2.840.10008.1.2.1.99"]
        ae.add_supported_context(str(cx.abstract_syntax), syntaxes)
    try:
        server = cast(_AssociationServer, ae.make_server(
            listen, evt_handlers=[(evt.EVT_C_STORE, on_store)], server_class=_AssociationServer
        ))
    except OSError as exc:
        raise NetError(
            f"cannot listen on {listen[0]}:{listen[1]} for C-MOVE ({exc.strerror or exc}); "
            "stop the DICOM server on that port, listen on another port (listen=), or use "
            "via='get'", parameters=("listen", "via")
        ) from None
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                              name="lake-pull-scp", daemon=True)
    thread.start()
    return server


def _pull_study(
    ae: AE,
    peer: Peer,
    study: RemoteStudy,
    ledger: _Ledger,
    via: str,
    calling_aet: str,
    on_store: Callable[[Any], Dataset | int],
    progress: _Progress,
    index: int,
) -> StudyOutcome:
    outcome = StudyOutcome()
    assoc = _associate(ae, peer, [build_context(STUDY_ROOT_FIND)])
    try:
        instances = _list_instances(assoc, peer, study.study_uid, ledger)
    finally:
        assoc.release()
    outcome.listed = len(instances)
    known = ledger.known([i.key for i in instances])
    missing = [i for i in instances if i.key not in known]
    outcome.already = len(instances) - len(missing)
    outcome.requested = len(missing)
    progress.begin(index, len(missing))
    if not missing:
        return outcome
    identifiers = _retrieve_identifiers(study.study_uid, instances, missing)
    if via == "get":
        storage = _storage_contexts([i.sop_class for i in missing], _MAX_CONTEXTS - 1)
        classes = sorted({str(cx.abstract_syntax) for cx in storage})
        roles = [build_role(c, scp_role=True) for c in classes]
        assoc = _associate(
            ae, peer, [build_context(STUDY_ROOT_GET), *storage],
            roles=roles, handlers=[(evt.EVT_C_STORE, on_store)],
        )
        try:
            for identifier in identifiers:
                responses = assoc.send_c_get(identifier, STUDY_ROOT_GET)
                final = _final(responses)
                _tally(final, outcome, peer, "C-GET")
        finally:
            if assoc.is_established:
                assoc.release()
    else:
        assoc = _associate(ae, peer, [build_context(STUDY_ROOT_MOVE)])
        try:
            for identifier in identifiers:
                final = _final(assoc.send_c_move(identifier, calling_aet,
                                                 STUDY_ROOT_MOVE))
                _tally(final, outcome, peer, "C-MOVE")
        finally:
            if assoc.is_established:
                assoc.release()
    return outcome
