"""Erasure: withdraw a patient, a study or a series from the lake for good (``lake forget``).

GDPR Art. 17 and the Common Rule let a patient withdraw: afterwards no byte of the withdrawn
instances may remain anywhere in the lake. :func:`forget` therefore

1. deletes their rows from the current version of ``instances`` (one commit, retried while
   other writers commit);
2. finds every data file on storage, of any version, that held one of their rows, and every
   quarantined original and spooled received instance of theirs (decrypting originals with
   the vault to read who they belong to);
3. deletes their pixel blobs unless another instance (in any version, a spool or a cohort)
   shares them; their quarantined originals, quarantine rows and spool entries;
4. withdraws them from saved cohorts (the cohort keeps the rest and counts the withdrawn;
   a cohort pinned to a version that can no longer be read is pinned to the first version
   after the erasure);
5. removes the data files that held them from every table's history and scrubs their
   traces from the Delta logs (:mod:`lake.steward._history`); the versions that read those
   files can no longer be read, and time travel to them names this erasure;
6. redacts the audit log: rows whose resource or detail names one of their UIDs, their
   pseudonym or its file-name label keep who, what and when but name ``<erased>`` instead
   (one commit), and the data files of older versions that held the unredacted rows are
   removed from its history as in step 5 (done before the instances' files are removed, so
   that a re-run after an interruption still finds the UIDs to look for);
7. removes the web portal's export jobs (zips and folders below ``<lake>/portal/jobs``)
   that hold them (:func:`portal_exports`), once nothing of theirs can be read any more;
8. records the erasure (kind, counts, when, by whom; no identifier) in ``erasures``.

Before step 1 it lays a *tombstone* for the target (:mod:`lake.catalog._tombstones`): a
keyed hash of the PatientID, StudyInstanceUID or SeriesInstanceUID as stored, never the
value itself. From then on every commit of instance rows (``lake ingest``, ``lake serve
dicom``, ``lake pull``, STOW-RS, documents) drops the target's rows and counts them as
``erased``: instances received before the erasure and still waiting in a receipt journal
(even of a server that crashed), files ingested again, a modality sending the patient
again. The tombstone is recorded before any row is deleted and followed by a commit to
``instances``, so a commit racing the erasure is judged again with it (proven by
tests/test_forget_tombstones.py). Their pixel blobs, written before the commit, are left
unreferenced and removed by ``lake gc``; their sealed originals in a receipt journal are
deleted once the next commit of that journal drops them. A tombstone is permanent: there
is no command to lift it (a patient who consents again cannot be re-admitted under the
same pseudonym).

Every step is idempotent: if the command is interrupted, running it again finishes the job.
"""

from __future__ import annotations

import datetime as dt
import getpass
import logging
import re
import shutil
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

from lake._errors import CatalogError, ConfigError
from lake.catalog import AUDIT, COHORTS, ERASURES, INSTANCES, QUARANTINE
from lake.catalog._tombstones import ERASURE_KEY, compact, laid_at, lay
from lake.catalog._tombstones import PURPOSE as TOMBSTONE_PURPOSE
from lake.export._runner import patient_label
from lake.steward._history import (
    ERASED,
    erase_files,
    live_files,
    matching_rows,
    token_pattern,
    unreadable_versions,
)

if TYPE_CHECKING:
    from lake._lake import Lake
    from lake.vault import Secret

__all__ = ["ErasurePlan", "ErasureReport", "Target", "forget", "plan_forget", "target"]

_KINDS = {"patient": "PatientID", "study": "StudyInstanceUID", "series": "SeriesInstanceUID"}
_PSEUDONYM = re.compile(r"[0-9A-Fa-f]{1,64}|[A-Za-z0-9._-]{1,64}")
_UID = re.compile(r"[0-9]+(\.[0-9]+)*")
_SCANNED = ("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID", "PatientID", "pixel_hash")
_ATTEMPTS = 5
_LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class Target:
    """What to erase: every instance whose ``column`` equals ``value`` (as stored)."""

    kind: str
    value: str

    @property
    def column(self) -> str:
        return _KINDS[self.kind]

    @property
    def predicate(self) -> str:
        return f"\"{self.column}\" = '{self.value}'"


def target(
    lake: Lake,
    secret: Secret,
    *,
    patient: str | None = None,
    study: str | None = None,
    series: str | None = None,
    original_patient_id: str | None = None,
) -> Target:
    """The :class:`Target` named by exactly one of the keyword arguments.

    ``patient`` is the PatientID as stored in the lake (the pseudonym), ``study`` and
    ``series`` the UIDs as stored; ``original_patient_id`` is resolved to the pseudonym
    with the lake's keys (what ingest stores for it under the lake's default profile).

    Raises
    ------
    ConfigError
        If not exactly one is given, or the value is malformed.
    """
    given = {
        k: v
        for k, v in (
            ("patient", patient),
            ("study", study),
            ("series", series),
            ("original_patient_id", original_patient_id),
        )
        if v is not None
    }
    if len(given) != 1:
        raise ConfigError(
            "name exactly one of patient, study, series or original_patient_id to forget"
        )
    ((kind, value),) = given.items()
    value = value.strip()
    if kind == "original_patient_id":
        if not value:
            raise ConfigError("the original patient ID is empty")
        return Target("patient", _Matcher(lake, secret).pseudonym(value))
    pattern = _PSEUDONYM if kind == "patient" else _UID
    if not pattern.fullmatch(value):
        what = "a PatientID as stored in the lake" if kind == "patient" else "a DICOM UID"
        raise ConfigError(f"the {kind} to forget must be {what}")
    return Target(kind, value)


class _Matcher:
    """Who a quarantined original belongs to, in the lake's terms (needs the vault)."""

    def __init__(self, lake: Lake, secret: Secret) -> None:
        from lake.deid import Deidentifier, load_profile
        from lake.ingest import quarantine_key

        self.engine = Deidentifier(load_profile(lake.config.default_profile), secret)
        self.key = quarantine_key(secret)

    def pseudonym(self, original: str) -> str:
        from lake.ingest._withdrawn import pseudonym

        return pseudonym(self.engine, original)

    def stored_values(self, sealed: bytes) -> dict[str, set[str]] | None:
        """PatientID, StudyInstanceUID, SeriesInstanceUID of a sealed original, as stored."""
        from lake.ingest._withdrawn import sealed_identity

        return self._values(sealed_identity(sealed, self.key))

    def received_values(self, data: bytes) -> dict[str, set[str]] | None:
        """The same of an instance as received (a receipt journal's record)."""
        from lake.ingest._withdrawn import original_identity

        return self._values(original_identity(data))

    def _values(self, original: dict[str, str] | None) -> dict[str, set[str]] | None:
        from lake.ingest._withdrawn import stored_identity

        if original is None:
            return None
        stored = stored_identity(self.engine, original)
        return {column: {value, stored[column]} for column, value in original.items()}


@dataclass
class ErasurePlan:
    """What :func:`forget` erases (a dry run shows it); counts only, no identifier."""

    target: Target
    instances: int = 0
    series: int = 0
    studies: int = 0
    blobs: int = 0
    quarantined: int = 0
    spooled: int = 0
    cohorts: int = 0
    files: int = 0
    audit_rows: int = 0
    exports: int = 0
    live_instances: int = 0
    # Private working sets (identifiers): used by forget, never shown or stored.
    _rows: dict[str, pa.Table] = field(default_factory=dict, repr=False)
    _tokens: set[str] = field(default_factory=set, repr=False)
    _blobs: set[str] = field(default_factory=set, repr=False)
    _sop_uids: set[str] = field(default_factory=set, repr=False)
    _studies: set[str] = field(default_factory=set, repr=False)  # studies that go whole
    _sealed: dict[str, str] = field(default_factory=dict, repr=False)  # sha256 -> object key
    _spool: dict[str, list[Any]] = field(default_factory=dict, repr=False)
    _cohorts: list[dict[str, Any]] = field(default_factory=list, repr=False)
    _exports: list[Path] = field(default_factory=list, repr=False)  # portal job folders


@dataclass(frozen=True)
class ErasureReport:
    """What :func:`forget` did (also recorded in ``erasures``)."""

    erasure_id: str
    plan: ErasurePlan
    unreadable: dict[str, list[tuple[int, int]]]
    catalog_version: int
    maintenance_failures: tuple[str, ...] = ()
    """Optional steps after the erasure that failed (the tombstones' compaction), one line
    each, naming no identifier: the erasure itself is complete and recorded."""


def _equal(column: str, value: str) -> Any:
    def match(rows: pa.Table) -> pa.Array:
        return pc.fill_null(pc.equal(rows.column(column), value), False)

    return match


def plan_forget(lake: Lake, secret: Secret, chosen: Target) -> ErasurePlan:
    """Find everything :func:`forget` would erase, changing nothing."""
    plan = ErasurePlan(chosen)
    tables = lake.tables
    everything = matching_rows(
        tables, INSTANCES, [*_SCANNED, "pixel_bytes"], lambda rows: pc.is_valid(rows.column(0))
    )
    gone_rows: list[pa.Table] = []
    kept: dict[str, set[str]] = {c: set() for c in _SCANNED}
    for path, rows in everything.items():
        mask = _equal(chosen.column, chosen.value)(rows)
        gone = rows.filter(mask)
        if gone.num_rows:
            plan._rows[path] = gone
            gone_rows.append(gone)
        rest = rows.filter(pc.invert(mask))
        for column in _SCANNED:
            kept[column].update(v for v in rest.column(column).to_pylist() if v is not None)
    gone_all = pa.concat_tables(gone_rows) if gone_rows else None
    values = {
        c: {v for v in gone_all.column(c).to_pylist() if v is not None} if gone_all else set()
        for c in _SCANNED
    }
    plan.instances = len(values["SOPInstanceUID"])
    plan.files = len(plan._rows)
    live = live_files(tables, INSTANCES)
    plan.live_instances = len(
        {
            uid
            for path, rows in plan._rows.items()
            if path in live
            for uid in rows.column("SOPInstanceUID").to_pylist()
        }
    )
    series = values["SeriesInstanceUID"] - kept["SeriesInstanceUID"]
    studies = values["StudyInstanceUID"] - kept["StudyInstanceUID"]
    patients = values["PatientID"] - kept["PatientID"]
    plan.series, plan.studies = len(series), len(studies)
    spooled_blobs = _spooled(lake, chosen, plan, kept)
    plan._sop_uids = values["SOPInstanceUID"]
    plan._studies = studies
    plan._blobs = (values["pixel_hash"] | spooled_blobs) - kept["pixel_hash"]
    plan.blobs = len(plan._blobs)
    _quarantined(lake, secret, chosen, plan)
    _spooled_rejections(lake, plan)
    plan.spooled += _idle_journals(lake, secret, chosen, drop=False)
    plan._tokens = (
        values["SOPInstanceUID"]
        | series
        | studies
        | patients
        | plan._blobs
        | {h.split(":", 1)[-1] for h in plan._blobs}
        | set(plan._sealed)
        | {chosen.value}
        | {patient_label(p) for p in patients | ({chosen.value} if chosen.kind == "patient"
                                                 else set())}
    )
    _cohorts(lake, values["SOPInstanceUID"], plan, gone_all)
    plan.audit_rows = len(_audit_naming(lake, plan._tokens))
    plan._exports = portal_exports(lake, values["SOPInstanceUID"],
                                   listed_before=_laid(lake, secret, chosen))
    plan.exports = len(plan._exports)
    return plan


EXPORT_MEMBERS = "members.sop"
"""The file naming a portal job's members (one SOPInstanceUID a line) in the job's folder.

The portal writes it before its export reads anything; :func:`forget` removes, after the
erased rows, blobs and data files are gone, every job folder whose list names an erased
instance (and every folder without one); the portal serves a job's zip only while the list
is there. So an export either listed its members before the erasure's scan (and is
removed), or read after the data was gone (and holds nothing of it). A re-run of an
interrupted erasure no longer finds the erased instances anywhere; it removes every folder
whose list names an instance the catalog no longer holds (the dry run counts those listed
before the target's tombstone was laid)."""


def portal_exports(
    lake: Lake, sop_uids: set[str], *, listed_before: dt.datetime | None = None
) -> list[Path]:
    """The portal's job folders (``<lake>/portal/jobs/run-*/<job>``) holding ``sop_uids``.

    Folders without a member list (a job that has not written it yet, or made by an
    earlier release) count as holding them: they are temporary, and a job whose folder
    goes fails and can be started again. With ``listed_before`` (when the erasure's
    tombstone was laid), so do folders whose list was written before then and names an
    instance no longer in the catalog: what an interrupted erasure left, whose instances
    can no longer be named.
    """
    if not lake.location.is_local or (not sop_uids and listed_before is None):
        return []
    root = Path(lake.location.path) / "portal" / "jobs"
    found = []
    older: dict[Path, set[str]] = {}
    for folder in sorted(root.glob("run-*/*")):
        if not folder.is_dir():
            continue
        members = folder / EXPORT_MEMBERS
        try:
            listed = set(members.read_text().split())
            written = dt.datetime.fromtimestamp(members.stat().st_mtime, dt.UTC)
        except FileNotFoundError:
            found.append(folder)
            continue
        if not sop_uids.isdisjoint(listed):
            found.append(folder)
        elif listed_before is not None and written < listed_before and listed:
            older[folder] = listed
    if older:
        wanted = sorted(set().union(*older.values()))
        held = lake.tables.lookup(INSTANCES, "SOPInstanceUID", wanted, [])
        present = set(held.column("SOPInstanceUID").to_pylist())
        found.extend(folder for folder, listed in older.items() if not listed <= present)
    return sorted(found)


def _laid(lake: Lake, secret: Secret, chosen: Target) -> dt.datetime | None:
    """When the target's tombstone was laid (by this run or an interrupted earlier one)."""
    return laid_at(lake.tables, secret.derive(TOMBSTONE_PURPOSE), chosen.column, chosen.value)


def _spooled(lake: Lake, chosen: Target, plan: ErasurePlan, kept: dict[str, set[str]]) -> set[str]:
    """Spooled instances of the target (and the blobs they name); blobs others name are kept."""
    from lake.ingest import Accepted
    from lake.net._spool import Spool

    blobs: set[str] = set()
    for name in _spool_names(lake):
        spool = Spool(lake.location, name)
        matched = []
        for entry in spool.entries():
            outcome = entry.outcome
            if isinstance(outcome, Accepted) and outcome.row.get(chosen.column) == chosen.value:
                matched.append(entry)
            elif isinstance(outcome, Accepted) and outcome.row.get("pixel_hash"):
                kept["pixel_hash"].add(outcome.row["pixel_hash"])
        if matched:
            plan._spool[name] = matched
            plan.spooled += len(matched)
            for entry in matched:
                outcome = entry.outcome
                if isinstance(outcome, Accepted) and outcome.row.get("pixel_hash"):
                    blobs.add(outcome.row["pixel_hash"])
    return blobs


def _spooled_rejections(lake: Lake, plan: ErasurePlan) -> None:
    """Spooled quarantine records of the target's refused files (their originals are gone)."""
    from lake.ingest import Rejected
    from lake.net._spool import Spool

    if not plan._sealed:
        return
    for name in list(_spool_names(lake)):
        spool = Spool(lake.location, name)
        matched = [
            e
            for e in spool.entries()
            if isinstance(e.outcome, Rejected)
            and e.outcome.record.get("source_sha256") in plan._sealed
        ]
        if matched:
            plan._spool.setdefault(name, []).extend(matched)
            plan.spooled += len(matched)


def _idle_journals(lake: Lake, secret: Secret, chosen: Target, *, drop: bool) -> int:
    """Records of ``chosen`` in the receipt journals of front doors that are not running.

    A server that crashed holding received instances keeps them (sealed) in its journal
    until it starts again. When no process holds a journal, its records of ``chosen`` are
    counted and, with ``drop``, removed: the other records are appended again (durable),
    then every old record is released, which deletes the old segments. A crash in between
    leaves both copies of a kept record: its recovery commits the one instance once (a
    duplicate is no second row). A running server's journal is left to it: the tombstone
    drops those rows when it commits, and their records with them.
    """
    if not lake.location.is_local:
        return 0
    from lake.net import ReceiptJournal

    root = Path(lake.location.path) / "spool"
    folders = sorted(p for p in root.glob("*/receipts*") if p.is_dir()) if root.is_dir() else []
    matcher: _Matcher | None = None
    found = 0
    for folder in folders:
        journal = ReceiptJournal(folder, secret)
        if not journal.try_lock():
            continue  # a running front door's own
        try:
            records = list(journal.leftovers())
            if not records:
                continue
            matcher = matcher or _Matcher(lake, secret)
            gone = set()
            for receipt, data in records:
                values = matcher.received_values(data)
                if values is not None and chosen.value in values.get(chosen.column, set()):
                    gone.add(str(receipt))
            found += len(gone)
            if drop and gone:
                for receipt, data in records:
                    if str(receipt) not in gone:
                        journal.append(data)
                journal.committed([receipt for receipt, _data in records])
        finally:
            journal.close()
    return found


def _spool_names(lake: Lake) -> list[str]:
    try:
        paths = lake.location.fs.ls(lake.location.join("spool"), detail=False)
    except FileNotFoundError:
        return []
    return [str(p).rsplit("/", 1)[-1] for p in paths]


def _quarantined(lake: Lake, secret: Secret, chosen: Target, plan: ErasurePlan) -> None:
    fs = lake.location.fs
    folder = lake.location.join("quarantine")
    try:
        paths = [str(p) for p in fs.ls(folder, detail=False) if str(p).endswith(".sealed")]
    except FileNotFoundError:
        return
    matcher = _Matcher(lake, secret)
    for path in paths:
        with fs.open(path, "rb") as fh:
            values = matcher.stored_values(fh.read())
        if values is not None and chosen.value in values.get(chosen.column, set()):
            name = path.rsplit("/", 1)[-1]
            plan._sealed[name[: -len(".sealed")]] = f"quarantine/{name}"
    plan.quarantined = len(plan._sealed)


def _cohorts(lake: Lake, sop_uids: set[str], plan: ErasurePlan, gone: pa.Table | None) -> None:
    if not sop_uids or not lake.tables.exists(COHORTS.name):
        return
    current = lake.tables.dataset(COHORTS.name).to_table().to_pylist()
    sizes: dict[str, int] = {}
    if gone is not None:
        for uid, size in zip(
            gone.column("SOPInstanceUID").to_pylist(),
            gone.column("pixel_bytes").to_pylist(),
            strict=True,
        ):
            sizes[uid] = int(size or 0)
    for row in current:
        members = row["members"] or []
        kept = [m for m in members if m["SOPInstanceUID"] not in sop_uids]
        if len(kept) == len(members):
            continue
        withdrawn = [m for m in members if m["SOPInstanceUID"] in sop_uids]
        updated = dict(row)
        updated["members"] = kept
        updated["series"] = sorted({m["SeriesInstanceUID"] for m in kept})
        updated["series_count"] = len(updated["series"])
        updated["instance_count"] = len(kept)
        updated["pixel_bytes"] = max(
            0,
            int(row["pixel_bytes"] or 0)
            - sum(sizes.get(m["SOPInstanceUID"], 0) for m in withdrawn),
        )
        updated["withdrawn"] = int(row.get("withdrawn") or 0) + len(withdrawn)
        plan._cohorts.append(updated)
    plan.cohorts = len(plan._cohorts)


def forget(lake: Lake, secret: Secret, chosen: Target, *, by: str | None = None) -> ErasureReport:
    """Erase ``chosen`` from the lake for good; see the module documentation.

    Raises
    ------
    CatalogError
        If rows of the target keep being committed while it runs (stop the inflow and
        re-run), or the logs cannot be scrubbed.
    """
    tables = lake.tables
    erasure_id = uuid.uuid4().hex
    plan = plan_forget(lake, secret, chosen)
    # First the tombstone (and the erasure's commit to instances), then the deletes: no
    # commit can add a row of the target from here on (lake.catalog._tombstones).
    lay(tables, secret.derive(TOMBSTONE_PURPOSE), chosen.column, [chosen.value],
        chosen.kind, erasure_id)
    if chosen.kind == "patient" and plan._studies:
        # The patient's studies too: sent again under a corrected Patient ID (a new
        # pseudonym), they keep their keyed Study Instance UIDs.
        lay(tables, secret.derive(TOMBSTONE_PURPOSE), "StudyInstanceUID", plan._studies,
            "study", erasure_id)
    for _ in range(_ATTEMPTS):
        tables.delete(INSTANCES, chosen.predicate)
        # Then a commit to cohorts, before the plan reads them: a cohort saved on a snapshot
        # of cohorts older than this commit lands before it (and this plan withdraws its
        # members), or loses its compare-and-swap and runs its query again on the catalog
        # after the delete (lake.export.create_cohort).
        if tables.exists(COHORTS.name):
            tables.append(COHORTS, COHORTS.schema.empty_table(),
                          metadata={ERASURE_KEY: erasure_id})
        plan = plan_forget(lake, secret, chosen)
        if plan.live_instances == 0:
            break
    else:
        raise CatalogError(
            "instances of what is being forgotten keep arriving (an ingest or a DICOM sender "
            "is adding them); stop sending them and re-run lake.steward.forget()",
            functions=("lake.steward.forget",)
        )
    tokens = frozenset(plan._tokens)
    _delete_blobs(lake, plan)
    for name, entries in plan._spool.items():
        from lake.net._spool import Spool

        Spool(lake.location, name).remove(entries)
    _idle_journals(lake, secret, chosen, drop=True)
    _withdraw_from_cohorts(lake, plan, tokens)
    # Before the instances' files go: a re-run after an interruption finds the UIDs there.
    _redact_audit(lake, tokens)
    unreadable: dict[str, list[tuple[int, int]]] = {}
    if plan._sealed:
        listed = ", ".join(f"'{sha}'" for sha in sorted(plan._sealed))
        tables.delete(QUARANTINE, f"source_sha256 IN ({listed})")
        held = matching_rows(
            tables,
            QUARANTINE,
            ["source_sha256"],
            lambda rows: pc.is_in(rows.column(0), value_set=pa.array(sorted(plan._sealed))),
        )
        erase_files(tables, QUARANTINE, held, tokens)
        for object_key in plan._sealed.values():
            path = lake.location.join(object_key)
            if lake.location.fs.exists(path):
                lake.location.fs.rm_file(path)
    erase_files(tables, INSTANCES, plan._rows, tokens)
    # Last, when nothing of theirs can be read any more: the portal's exports holding them,
    # and, on a re-run that no longer finds the instances, those an earlier run left (also
    # one listed after that run laid the tombstone, before the rows went: so up to now).
    for folder in portal_exports(lake, plan._sop_uids, listed_before=dt.datetime.now(dt.UTC)):
        _remove_tree(folder)
    for table in (INSTANCES, QUARANTINE, COHORTS, AUDIT):
        if tables.exists(table.name):
            unreadable[table.name] = unreadable_versions(tables, table)
    version = int(tables.open(INSTANCES.name).version())
    tables.append(
        ERASURES,
        [
            {
                "erasure_id": erasure_id,
                "erased_at": dt.datetime.now(dt.UTC),
                "erased_by": by or _account(),
                "kind": chosen.kind,
                "instances": plan.instances,
                "series": plan.series,
                "studies": plan.studies,
                "blobs": plan.blobs,
                "quarantined": plan.quarantined,
                "spooled": plan.spooled,
                "cohorts": plan.cohorts,
                "files": plan.files,
                "unreadable": [
                    {"table": name, "first": first, "last": last}
                    for name, spans in sorted(unreadable.items())
                    for first, last in spans
                ],
                "catalog_version": version,
            }
        ],
    )
    # An optimisation, outside the erasure's critical section: a failure loses nothing.
    failures = tuple(reason for reason in (compact(tables),) if reason is not None)
    for reason in failures:
        _LOG.warning("%s", reason)
    lake.refresh()
    return ErasureReport(erasure_id, plan, unreadable, version, failures)


def _remove_tree(folder: Path) -> None:
    """Remove ``folder``, also while a job still writes to it (bounded).

    Raises
    ------
    CatalogError
        If it cannot be removed (a job keeps writing, or storage refuses); re-running
        forget removes it.
    """
    for _ in range(_ATTEMPTS):
        try:
            shutil.rmtree(folder)
        except OSError:  # an entry went meanwhile, or ENOTEMPTY while a job adds one: again
            continue
        if not folder.exists():
            return
    if folder.exists():
        raise CatalogError(
            "a web portal export of what is being forgotten keeps being written; stop the "
            "web server and re-run lake.steward.forget()",
            functions=("lake.steward.forget",)
        )


def _account() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _delete_blobs(lake: Lake, plan: ErasurePlan) -> None:
    for key in sorted(plan._blobs):
        path = lake.blobs.path_of(key)
        if lake.location.fs.exists(path):
            lake.location.fs.rm_file(path)


def _withdraw_from_cohorts(lake: Lake, plan: ErasurePlan, tokens: frozenset[str]) -> None:
    tables = lake.tables
    if not tables.exists(COHORTS.name):
        return
    unreadable = _spans_after_erasure(lake, plan)
    names = _finder(tokens)
    withdrawn = {str(row["name"]) for row in plan._cohorts}
    # Besides the cohorts that held what is erased: those pinned to a version that will
    # read a removed file (moved to the first version after it: their members are there)
    # and those whose query or description names what is erased.
    touched = [
        row for row in tables.dataset(COHORTS.name).to_table(
            columns=["name", "catalog_version", *_COHORT_TEXT]).to_pylist()
        if str(row["name"]) not in withdrawn and (
            _pin(int(row["catalog_version"]), unreadable) is not None
            or any(isinstance(row[c], str) and names(row[c]) for c in _COHORT_TEXT))
    ]
    if plan._cohorts or touched:
        rows = []
        for row in [*plan._cohorts, *_full_rows(lake, {str(r["name"]) for r in touched})]:
            updated = dict(row)
            updated["query"] = _redacted(str(row["query"] or ""), tokens)
            updated["description"] = _redacted(str(row["description"] or ""), tokens)
            updated["catalog_version"] = _pin(int(row["catalog_version"]), unreadable) or int(
                row["catalog_version"])
            rows.append(updated)
        listed = ", ".join("'" + str(r["name"]).replace("'", "''") + "'" for r in rows)
        tables.replace_where(COHORTS, rows, f"name IN ({listed})")
    held = matching_rows(tables, COHORTS, ["members", *_COHORT_TEXT],
                         _holding(plan._sop_uids, names))
    erase_files(tables, COHORTS, held, tokens)


_COHORT_TEXT = ("query", "description")


def _pin(version: int, unreadable: list[tuple[int, int]]) -> int | None:
    """The first version after the unreadable spans holding ``version`` (None: none does)."""
    moved = version
    while ends := [last for first, last in unreadable if first <= moved <= last]:
        moved = max(ends) + 1
    return moved if moved != version else None


def _full_rows(lake: Lake, names: set[str]) -> list[dict[str, Any]]:
    if not names:
        return []
    return [row for row in lake.tables.dataset(COHORTS.name).to_table().to_pylist()
            if row["name"] in names]


def _holding(uids: set[str], names: Callable[[str], bool]) -> Any:
    """Which cohort rows hold one of ``uids`` or name an erased identifier in their text."""
    def match(rows: pa.Table) -> pa.Array:
        texts = zip(*(rows.column(c).to_pylist() for c in _COHORT_TEXT), strict=True)
        flags = [
            any(m["SOPInstanceUID"] in uids for m in members or [])
            or any(isinstance(v, str) and names(v) for v in text)
            for members, text in zip(rows.column("members").to_pylist(), texts, strict=True)
        ]
        return pa.array(flags, pa.bool_())

    return match


def _spans_after_erasure(lake: Lake, plan: ErasurePlan) -> list[tuple[int, int]]:
    """The instances versions that will be unreadable once the plan's files are gone."""
    from lake.steward._history import log_actions

    files = set(plan._rows)
    added: dict[str, int] = {}
    spans: list[tuple[int, int]] = []
    for version, action in log_actions(lake.tables, INSTANCES):
        add, remove = action.get("add"), action.get("remove")
        if isinstance(add, dict):
            added.setdefault(str(add["path"]), version)
        if isinstance(remove, dict) and str(remove["path"]) in files:
            start = added.get(str(remove["path"]))
            if start is not None:
                spans.append((start, version - 1))
    return spans


_AUDIT_TEXT = ("resource", "detail")
_RUN = re.compile(r"[0-9A-Za-z.]+")


def _finder(tokens: Iterable[str]) -> Callable[[str], bool]:
    """Whether a text names one of ``tokens`` as :func:`token_pattern` finds them.

    A big alternation of UIDs is slow in :mod:`re` (5,000 UIDs: 85 us a text), and the
    audit log may hold millions of rows. A token found as a whole is bounded by characters
    that are not letters, digits or dots, so each of its runs of those characters is a whole
    run of the text: a text is a candidate only when one of its runs is the longest run of
    a token (a set lookup), and only candidates are searched with the pattern.
    """
    chosen = {t for t in tokens if t}
    exact = token_pattern(chosen)
    keys = {max(_RUN.findall(t), key=len) for t in chosen if _RUN.search(t)}
    runless = token_pattern(t for t in chosen if not _RUN.search(t))

    def names(text: str) -> bool:
        if runless.search(text):
            return True
        return (any(run in keys for run in _RUN.findall(text))
                and exact.search(text) is not None)

    return names


def _naming(names: Callable[[str], bool]) -> Any:
    """Which audit rows name an erased identifier in their resource or detail."""
    def match(rows: pa.Table) -> pa.Array:
        flags = [
            any(isinstance(v, str) and names(v) for v in values)
            for values in zip(*(rows.column(c).to_pylist() for c in _AUDIT_TEXT), strict=True)
        ]
        return pa.array(flags, pa.bool_())

    return match


def _current_audit(lake: Lake, tokens: Iterable[str], columns: list[str]) -> list[pa.Table]:
    """The rows (``columns``) of the current audit table that name one of ``tokens``."""
    tables = lake.tables
    if not tables.exists(AUDIT.name):
        return []
    live = live_files(tables, AUDIT)
    return list(matching_rows(tables, AUDIT, columns, _naming(_finder(tokens)),
                              files=sorted(live)).values())


def _audit_naming(lake: Lake, tokens: Iterable[str]) -> list[str]:
    """The event ids of the current audit rows that name one of ``tokens``."""
    columns = ["event_id", *_AUDIT_TEXT]
    return [e for rows in _current_audit(lake, tokens, columns)
            for e in rows.column("event_id").to_pylist()]


def _redact_audit(lake: Lake, tokens: frozenset[str]) -> None:
    """Audit rows naming what is erased name ``<erased>`` instead, in every version."""
    tables = lake.tables
    if not tables.exists(AUDIT.name):
        return
    pattern = token_pattern(tokens)
    for attempt in range(_ATTEMPTS + 1):
        rows = [row for held in _current_audit(lake, tokens, AUDIT.schema.names)
                for row in held.to_pylist()]
        if not rows:
            break
        if attempt == _ATTEMPTS:
            raise CatalogError(
                "audit rows naming what is being forgotten keep arriving (a web server is "
                "serving it); stop the server and re-run lake.steward.forget()",
                functions=("lake.steward.forget",)
            )
        listed = ", ".join("'" + str(r["event_id"]).replace("'", "''") + "'" for r in rows)
        for row in rows:
            for column in _AUDIT_TEXT:
                if isinstance(row[column], str):
                    row[column] = pattern.sub(ERASED, row[column])
        tables.replace_where(AUDIT, rows, f"event_id IN ({listed})")
    held = matching_rows(tables, AUDIT, list(_AUDIT_TEXT), _naming(_finder(tokens)))
    erase_files(tables, AUDIT, held, tokens)


def _redacted(text: str, tokens: Iterable[str]) -> str:
    from lake.steward._history import token_pattern

    return token_pattern(tokens).sub(ERASED, text)
