"""STOW-RS (PS3.18 10.5): instances in, through the same door as files and C-STORE.

Every part goes to :meth:`lake.ingest.Ingestor.process` (same profile, same keys, same
quarantine as ``lake ingest`` and C-STORE), after it is durable, sealed, in the receipt
journal of :class:`lake.net.Intake` (``<lake>/spool/stow``; on an object store its outcome
is spooled instead). The response does not wait for the catalog commit: the committer
commits every ``commit_interval`` seconds, and every other route of the server commits
what is pending before it reads (:meth:`Store.catch_up`, called by
:func:`lake.web._guard.route`), so a search through the same server right after the
response sees the instances. A crash loses nothing acknowledged: the next start commits
what the journal holds. A UID conflict is quarantined with its sealed
original. Limits hold while the body streams in. The response is the PS3.18 store
response; failure reasons are status codes and fixed texts (never a value from the
instance); failed instances are named by the UID the lake would have given them.
"""

from __future__ import annotations

import asyncio
import io
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from lake._capture import capture
from lake._errors import NetError
from lake.access import Grant, Permission
from lake.deid import well_formed_uids
from lake.ingest import Accepted, Ingestor
from lake.net import Intake, ReceiptJournal
from lake.web._config import WebConfig
from lake.web._errors import TooLargeError, UnavailableError, UnsupportedMediaError
from lake.web._guard import route
from lake.web._json import DICOM_JSON, base_url, json_response, retrieve_url
from lake.web._media import parse_accept
from lake.web._multipart import MultipartReader, Part

if TYPE_CHECKING:
    from starlette.routing import Route

    from lake._lake import Lake
    from lake.vault import Secret

__all__ = ["Store", "stow_routes"]

_LOG = logging.getLogger(__name__)
_DICOM = "application/dicom"
_IN_FLIGHT = 8
_IN_FLIGHT_BYTES = 256 * 2**20
# Failure reasons (PS3.4 B.2.3 / PS3.18 Table 10.5.3-2), as C-STORE answers them.
OUT_OF_RESOURCES = 0xA700
DATASET_MISMATCH = 0xA900
CANNOT_UNDERSTAND = 0xC000
REFUSED_BY_PROFILE = 0xC001
_REASONS = {
    "empty": CANNOT_UNDERSTAND, "not_dicom": CANNOT_UNDERSTAND, "unreadable": CANNOT_UNDERSTAND,
    "truncated": CANNOT_UNDERSTAND, "bad_image": CANNOT_UNDERSTAND,
    "processing_error": CANNOT_UNDERSTAND, "dicomdir": DATASET_MISMATCH,
    "missing_uid": DATASET_MISMATCH,
}


@dataclass
class StoreResult:
    """What one STOW-RS request did (de-identified UIDs only)."""

    stored: list[tuple[str, str, str, str]] = field(default_factory=list)  # class, sop, study, series
    failed: list[tuple[str | None, str | None, int]] = field(default_factory=list)


class Store:
    """The STOW-RS side of a server: its :class:`lake.net.Intake` (receipt journal,
    de-identification in ``config.workers`` processes, batched commits).

    Parameters
    ----------
    lake : Lake
        An open lake.
    secret : Secret
        The lake's secret (de-identification keys).
    config : WebConfig
        Profile, limits, commit cadence, worker processes.

    Raises
    ------
    NetError
        If a worker process cannot start.
    """

    def __init__(self, lake: Lake, secret: Secret, config: WebConfig) -> None:
        self.config = config
        self.ingestor = Ingestor(lake, secret, config.profile, source="stow")
        self.intake = Intake(self.ingestor, secret, "stow", every=config.commit_every,
                             interval=config.commit_interval, workers=config.workers)
        self.recovered = self.intake.start()

    @property
    def journal(self) -> ReceiptJournal | None:
        """The receipt journal parts are sealed into (None on an object-store lake)."""
        return self.intake.journal

    def close(self) -> None:
        """Commit everything received (raises NetError if that fails; the journal keeps it).

        Logs how many parser warnings and library log records about received data were
        suppressed (counts only: their text can quote original values), as ``lake serve
        dicom`` reports them when it stops.
        """
        self.intake.close()
        suppressed = self.intake.captured.total
        if suppressed:
            _LOG.warning("STOW-RS: %d parser warnings and library log records about received "
                         "data were suppressed (they can quote original values)", suppressed)

    def store(self, part: Part, study: str | None, result: StoreResult) -> None:
        """Make one part durable, de-identify it; record the outcome in ``result``."""
        if part.too_large:
            result.failed.append((None, None, OUT_OF_RESOURCES))
            return
        kind = part.headers.get("content-type", _DICOM).split(";")[0].strip().lower()
        if kind != _DICOM:
            self._failed(part, result, CANNOT_UNDERSTAND)
            return
        if study is not None and _identity(part.body)[2] != study:
            self._failed(part, result, DATASET_MISMATCH)
            return
        try:
            outcome = self.intake.store(part.body)  # durable (sealed), de-identified, queued
        except NetError:
            self._failed(part, result, OUT_OF_RESOURCES)
            return
        if isinstance(outcome, Accepted):
            row = outcome.row
            result.stored.append(
                (str(row["SOPClassUID"]), str(row["SOPInstanceUID"]),
                 str(row["StudyInstanceUID"]), str(row["SeriesInstanceUID"]))
            )
        else:
            reason = str(outcome.record.get("reason") or "")
            self._failed(part, result, _REASONS.get(reason, REFUSED_BY_PROFILE))

    def _failed(self, part: Part, result: StoreResult, reason: int) -> None:
        """Record a failed part, named by the UID the lake would give it (never the sender's).

        The sent identity is read only here: parsing every stored part a second time cost
        0.36 ms of CPU per 512x512 CT instance, ~10% of the server process's share.
        """
        sop_class, sop, _study = _identity(part.body)
        keyed = self.ingestor.context.engine.uid(sop) if sop else None
        result.failed.append((sop_class, keyed, reason))

    @property
    def pending(self) -> int:
        """Stored instances (acknowledged) not committed to the catalog yet."""
        return self.intake.committer.pending

    def catch_up(self) -> None:
        """Commit what is pending now, so a read sees every instance acknowledged so far.

        Instances still being de-identified were not acknowledged yet and are not waited
        for. A failed commit is logged (by its type) and left to the committer, which
        retries it: the instances stay durable in the receipt journal, and the read sees the
        catalog as committed.
        """
        try:
            self.intake.committer.flush()
        except Exception as exc:  # noqa: BLE001 - durable in the journal; the committer retries
            _LOG.error("committing stored instances before a read failed (%s); the committer "
                       "retries", type(exc).__name__)


def _identity(data: bytes) -> tuple[str | None, str | None, str | None]:
    """(SOPClassUID, SOPInstanceUID, StudyInstanceUID) as sent, or None where unreadable."""
    try:
        with capture():  # pydicom's warnings and log records quote original values
            ds = dcmread(io.BytesIO(data), stop_before_pixels=True, force=True,
                         specific_tags=["SOPClassUID", "SOPInstanceUID", "StudyInstanceUID"])
            sent = [str(ds.get(k, "")).strip()
                    for k in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID")]
        # Echoed in the response only when a UID (a "class" may hold anything).
        return tuple(  # type: ignore[return-value]
            value if value and well_formed_uids(value.encode("utf-8")) else None
            for value in sent
        )
    except Exception:  # noqa: BLE001 - anything unreadable has no identity
        return (None, None, None)


def _response_body(result: StoreResult, base: str) -> dict[str, Any]:
    ds = Dataset()
    studies = {s for _, _, s, _ in result.stored}
    if len(studies) == 1:
        ds.RetrieveURL = retrieve_url(base, next(iter(studies)))
    referenced = []
    for sop_class, sop, study, series in result.stored:
        item = Dataset()
        item.ReferencedSOPClassUID = sop_class
        item.ReferencedSOPInstanceUID = sop
        item.RetrieveURL = retrieve_url(base, study, series, sop)
        referenced.append(item)
    failed = []
    for failed_class, failed_sop, reason in result.failed:
        item = Dataset()
        item.ReferencedSOPClassUID = failed_class or ""
        item.ReferencedSOPInstanceUID = failed_sop or ""
        item.FailureReason = reason
        failed.append(item)
    if referenced:
        ds.ReferencedSOPSequence = referenced
    if failed:
        ds.FailedSOPSequence = failed
    return dict(ds.to_json_dict())


def _content_boundary(request: Request) -> str:
    ranges = parse_accept(request.headers.get("content-type") or "none/none")
    media = ranges[0]
    if len(ranges) != 1 or media.type != "multipart/related":
        raise UnsupportedMediaError(
            'STOW-RS takes multipart/related; type="application/dicom" request bodies'
        )
    if media.part not in (None, _DICOM):
        raise UnsupportedMediaError(
            'only application/dicom parts are stored (multipart/related; type="application/dicom")'
        )
    boundary = media.params.get("boundary", "")
    if not boundary:
        raise UnsupportedMediaError("the multipart Content-Type has no boundary")
    return boundary


async def stow(request: Request, grant: Grant) -> Response:
    """``POST /studies[/{study}]``: store the parts; answer with the PS3.18 store response."""
    store: Store | None = request.app.state.store
    if store is None:
        raise UnavailableError("this server was started without the vault: it cannot store")
    config: WebConfig = request.app.state.config
    boundary = _content_boundary(request)
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > config.max_request_bytes:
        raise TooLargeError(f"the request is larger than {config.max_request_bytes} bytes")
    reader = MultipartReader(boundary, config.max_instance_bytes)
    study = request.path_params.get("study")
    result = StoreResult()
    received = 0
    # Parts are de-identified and spooled several at a time while the body streams in: the CPU
    # work of one overlaps the fsyncs of others. At most _IN_FLIGHT parts and _IN_FLIGHT_BYTES
    # (or one larger part alone) are held in memory.
    room = asyncio.Condition()
    busy = [0, 0]  # parts, bytes
    tasks: list[asyncio.Task[None]] = []

    async def store_part(part: Part) -> None:
        try:
            await run_in_threadpool(store.store, part, study, result)
        finally:
            async with room:
                busy[0] -= 1
                busy[1] -= len(part.body)
                room.notify_all()

    def has_room(size: int) -> bool:
        return busy[0] == 0 or (busy[0] < _IN_FLIGHT and busy[1] + size <= _IN_FLIGHT_BYTES)

    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > config.max_request_bytes:
                raise TooLargeError(f"the request is larger than {config.max_request_bytes} bytes")
            for part in reader.feed(chunk):
                size = len(part.body)
                async with room:
                    await room.wait_for(lambda: has_room(size))  # noqa: B023 - awaited here
                    busy[0] += 1
                    busy[1] += size
                tasks.append(asyncio.create_task(store_part(part)))
        reader.finish()
    finally:
        # Every part is durable (journal) and de-identified once its task is done: the
        # response does not wait for the catalog commit (reads through this server commit
        # first; the committer commits within commit_interval).
        await asyncio.gather(*tasks)
    if not result.stored and not result.failed:
        from lake._errors import QueryError

        raise QueryError("the request holds no instance")
    status = 200 if not result.failed else (202 if result.stored else 409)
    return json_response(request, _response_body(result, base_url(request)), DICOM_JSON, status)


def stow_routes(prefix: str) -> list[Route]:
    """The STOW-RS routes below ``prefix``."""
    return [
        route(prefix + "/studies", stow, Permission.STORE, methods=("POST",), name="stow"),
        route(prefix + "/studies/{study}", stow, Permission.STORE, methods=("POST",),
              name="stow_study"),
    ]


def make_store(lake: Lake, secret: Secret | None, config: WebConfig) -> Store | None:
    """The server's store, or None without the vault."""
    return None if secret is None else Store(lake, secret, config)
