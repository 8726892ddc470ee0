"""The export driver shared by every format: plan, resume, run on Dask, finish with a manifest.

An export is planned from a frozen :class:`~lake.export.Cohort` read *as of* its catalog
version: one task per series, each with the output names it will write. Tasks run on
Dask (:class:`lake.compute.Runner`); each finished task is recorded in a journal in the
output folder, so an interrupted export re-run with the same arguments skips finished
series whose files are intact and redoes the rest. Outputs are written to temporary
names and renamed into place. The last step writes ``manifest.json``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from lake._errors import ExportError, IntegrityError
from lake.catalog import DataFiles, in_set, string_set
from lake.compute import AUTO, EXPORT_CROSSOVER, Runner, Workload
from lake.export._cohort import Cohort, FileRows, resolve_reading
from lake.export._manifest import (
    JOURNAL_NAME,
    MANIFEST_NAME,
    FileRecord,
    Journal,
    Skip,
    TaskResult,
    flush_written,
    read_json,
    sha256_file,
    sweep_temporaries,
    write_bytes,
    write_json,
    write_zip,
)
from lake.store import Location

if TYPE_CHECKING:
    from lake._lake import Lake

__all__ = [
    "EXPORT_FORMAT",
    "ExportResult",
    "ExportSpec",
    "InstanceItem",
    "InstanceRef",
    "ProgressCallback",
    "SeriesTask",
    "TaskPlan",
    "WriterContext",
    "number_label",
    "patient_label",
    "run_export",
    "short_hash",
]

EXPORT_FORMAT = 1
STAGING_NAME = ".export-staging"
_BIDS_LABEL = re.compile(r"^[A-Za-z0-9]{1,64}$")

ProgressCallback = Callable[[int, int], None]
"""Called as ``(series_done, series_total)`` whenever a series finishes."""

_REF_COLUMNS = (
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "PatientID",
    "SeriesNumber",
    "InstanceNumber",
    "Modality",
    "pixel_hash",
    "pixel_vr",
    "profile",
    "profile_version",
    "profile_sha256",
)


def short_hash(value: str, length: int = 12) -> str:
    """A short hex digest of a (pseudonymous) UID, for file names.

    Examples
    --------
    >>> short_hash("2.25.1")
    'f4ccd9eb6b27'
    """
    return hashlib.sha256(value.encode()).hexdigest()[:length]


def patient_label(patient_id: str | None) -> str:
    """A file-name label for a pseudonymous PatientID.

    The PatientID itself when it is 1-64 letters and digits (a BIDS label, which a
    keyed pseudonym is); otherwise ``h`` plus a short hash, so that no free text and
    no path separator ever reaches a file name.

    Examples
    --------
    >>> patient_label("9f8e7d6c5b4a3921")
    '9f8e7d6c5b4a3921'
    >>> patient_label("ANON^X")
    'h1e4b7ce5a8d6'
    """
    if patient_id and _BIDS_LABEL.match(patient_id):
        return patient_id
    return "h" + short_hash(patient_id or "", 12)


def number_label(value: int | None, width: int = 0) -> str:
    """A (Series/Instance)Number for a file name: zero-padded, ``x`` when absent.

    Examples
    --------
    >>> number_label(3, 3), number_label(None), number_label(-2)
    ('003', 'x', 'm2')
    """
    if value is None:
        return "x"
    text = str(abs(int(value))).zfill(width)
    return "m" + text if value < 0 else text


@dataclass(frozen=True)
class InstanceRef:
    """What the plan knows about one member instance (no header bytes).

    ``extra`` holds the additional catalog columns an export asked for.
    """

    series_uid: str
    sop_uid: str
    study_uid: str
    patient_id: str | None
    series_number: int | None
    instance_number: int | None
    modality: str | None
    pixel_hash: str | None
    pixel_vr: str | None
    profile: str | None
    profile_version: str | None
    profile_sha256: str | None
    header_sha256: str
    extra: dict[str, Any] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class TaskPlan:
    """One series to export: its key, output folder, and (instance, file name) pairs.

    ``names`` maps each instance to the path (relative to the export root) a writer
    should give it, or to ``""`` when the writer decides names itself (NIfTI).
    ``meta`` is JSON-serialisable and handed to the writer.
    """

    key: str
    folder: str
    instances: tuple[tuple[str, str], ...]
    meta: dict[str, Any] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class InstanceItem:
    """One instance as a writer receives it: the stored header plus where its pixels are."""

    sop_uid: str
    relpath: str
    header: bytes = field(repr=False)
    pixel_hash: str | None
    pixel_vr: str | None


@dataclass(frozen=True)
class SeriesTask:
    """A series with every instance's header, shipped to a Dask worker."""

    key: str
    folder: str
    items: tuple[InstanceItem, ...]
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class WriterContext:
    """What every worker needs, sent once per export (picklable)."""

    location: Location
    root: str
    options: dict[str, Any]
    writer: Callable[[SeriesTask, WriterContext], TaskResult]
    threads: int | None = None
    """Threads one task may use (1 on a Dask cluster, where workers already fill the CPUs)."""


@dataclass(frozen=True)
class ExportSpec:
    """One export format: how to lay out, select, write and finish.

    Parameters
    ----------
    kind : str
        ``dicom``, ``nifti`` or ``teaching``.
    options : dict
        JSON-serialisable options; they are part of the plan identity and the manifest.
    layout : callable
        ``(refs) -> list[TaskPlan]``, pure and deterministic.
    writer : callable
        Module-level ``(SeriesTask, WriterContext) -> TaskResult``; runs on workers.
    select : callable, optional
        ``(refs) -> (kept refs, skips)``; may raise to refuse the export.
    columns : tuple of str
        Extra ``instances`` columns to load into :attr:`InstanceRef.extra`.
    optional_columns : tuple of str
        More such columns, loaded when the catalog version has them (a lake made before
        they were added lacks them).
    archive : str, optional
        When set, outputs are gathered into this zip in the output folder.
    compresslevel : int
        Deflate level of the archive.
    extras : callable, optional
        ``(refs, results) -> {name: bytes}``: files added at the end (inside the archive
        when there is one).
    details : callable, optional
        ``(refs, results) -> dict``: format-specific facts, stored in the manifest under
        the export's ``kind``.
    flushes : bool
        Whether ``writer`` forces the files it returns to disk itself (:class:`StagedFiles`).
        When it does not, they are forced to disk, all together in parallel threads, before
        ``manifest.json`` (the export's acknowledgement) lists them.
    """

    kind: str
    options: dict[str, Any]
    layout: Callable[[Sequence[InstanceRef]], list[TaskPlan]]
    writer: Callable[[SeriesTask, WriterContext], TaskResult]
    select: Callable[[list[InstanceRef]], tuple[list[InstanceRef], list[Skip]]] | None = None
    columns: tuple[str, ...] = ()
    optional_columns: tuple[str, ...] = ()
    archive: str | None = None
    compresslevel: int = 6
    extras: Callable[[Sequence[InstanceRef], Sequence[TaskResult]], dict[str, bytes]] | None = None
    details: Callable[[Sequence[InstanceRef], Sequence[TaskResult]], dict[str, Any]] | None = None
    flushes: bool = True


@dataclass(frozen=True)
class ExportResult:
    """What an export produced.

    Attributes
    ----------
    out : Path
        The output folder.
    manifest : dict
        The content of ``manifest.json``.
    written : int
        Series exported by this run (at least one file written).
    resumed : int
        Series found finished (and intact) from an interrupted earlier run.
    skipped_series : int
        Series of the cohort of which nothing was written (every instance skipped; see
        :attr:`skipped` for why). Not counted in ``written``.
    up_to_date : bool
        The folder already held this exact export, verified intact; nothing was written.
    """

    out: Path
    manifest: dict[str, Any]
    written: int = 0
    resumed: int = 0
    up_to_date: bool = False
    skipped_series: int = 0

    @property
    def files(self) -> list[FileRecord]:
        """Every exported file (archive members when the export is a zip)."""
        return [FileRecord(**f) for f in self.manifest["files"]]

    @property
    def skipped(self) -> list[Skip]:
        """What was not exported, and why."""
        return [Skip(**s) for s in self.manifest["skipped"]]

    @property
    def archive(self) -> Path | None:
        """The zip, for archive exports."""
        entry = self.manifest.get("archive")
        return self.out / entry["path"] if entry else None


def _run_task(task: SeriesTask, ctx: WriterContext) -> TaskResult:
    return ctx.writer(task, ctx)


def _member_rows(
    lake: Lake, version: int, wanted: Sequence[str], columns: Sequence[str],
    files: DataFiles | None = None,
) -> Iterator[pa.Table]:
    """The rows of ``wanted`` SOPInstanceUIDs at ``version``, one table per data file.

    Reads the key column of each data file first and the requested columns only from
    files holding members. Filtering happens after reading: pushing string filters into
    the Delta scan fails on files whose strings are stored as ``string_view``.
    ``files`` are the ``instances`` table's at ``version`` when the caller has them.
    """
    if files is None:
        files = lake.tables.data_files("instances", version)
    members = string_set(set(wanted))
    names = list(dict.fromkeys(["SOPInstanceUID", *columns]))
    for path in files.paths:
        mask = in_set(files.read(path, ["SOPInstanceUID"]).column(0), members)
        if mask.true_count:
            yield files.read(path, names).filter(mask)


@dataclass(frozen=True)
class _MemberFiles:
    """The data files holding a cohort's member rows, each with its mask of member rows and
    the members it holds: found once (reading every file's key column), then read for the
    plan and again for the headers of the series still to do, without looking for the
    members a second time.

    A version of one data file of one row group (a small lake) is read once, for every
    column asked of :meth:`find`: its member rows are kept and :meth:`rows` answers from
    them (reading the one file three times for key, plan and headers cost ~0.8 ms of CPU
    each, most of a small export's reads). Read here (not from a cohort resolution's
    rows), they are kept as Python values (:meth:`DataFiles.values`) and chosen in Python,
    so that an export of a saved cohort imports no ``pyarrow.compute`` (~0.03 s of CPU,
    issue 14.2). A larger file keeps being read per purpose: an export finished or resumed
    then reads no header it does not need."""

    files: DataFiles
    masks: tuple[tuple[str, pa.BooleanArray, pa.Array], ...]
    kept: pa.Table | None = None
    values: dict[str, list[Any]] | None = None
    """The member rows' columns of the one data file, as Python values (see above)."""

    @classmethod
    def find(cls, files: DataFiles, wanted: Sequence[str],
             columns: Sequence[str] = (), read: FileRows | None = None) -> _MemberFiles:
        """The files holding ``wanted``; the member rows' ``columns`` kept when there is one
        file of one row group. ``read``: that file's rows, read already (by the cohort's
        resolution, :func:`lake.export._cohort.resolve_reading`), used when they hold every
        column asked."""
        once = bool(columns) and len(files.paths) == 1 and (
            files.footer(files.paths[0]).num_row_groups == 1)
        names = list(dict.fromkeys(["SOPInstanceUID", *columns])) if once else ["SOPInstanceUID"]
        if read is not None and (files.paths != (read.path,)
                                 or not set(names) <= set(read.table.column_names)):
            read = None
        if once and read is None and not _zoned(files, names):
            every = files.values(files.paths[0], names)
            members = set(wanted)
            held = [i for i, sop in enumerate(every["SOPInstanceUID"]) if sop in members]
            return cls(files, (), None, {n: [every[n][i] for i in held] for n in names})
        members = string_set(set(wanted))
        masks = []
        kept = None
        for path in files.paths:
            table = files.read(path, names) if read is None else read.table.select(names)
            mask = in_set(table.column(0), members)
            if once:
                kept = table.filter(mask)
            if mask.true_count:
                masks.append((path, mask, table.column(0).filter(mask).combine_chunks()))
        return cls(files, tuple(masks), kept)

    def rows(
        self, columns: Sequence[str], only: Collection[str] | None = None
    ) -> Iterator[dict[str, list[Any]]]:
        """``SOPInstanceUID`` and ``columns`` of the member rows, one mapping of column name
        to Python values per data file holding any (``Table.to_pylist`` column by column).

        With ``only``, of those members alone: a file holding none of them is not read."""
        names = list(dict.fromkeys(["SOPInstanceUID", *columns]))
        if self.values is not None:
            yield from self._values_rows(names, only)
            return
        chosen = None if only is None else string_set(set(only))
        kept = self.kept if self.kept is not None and set(names) <= set(
            self.kept.column_names) else None
        for path, mask, members in self.masks:
            if chosen is not None and not in_set(members, chosen).true_count:
                continue
            table = (kept.select(names) if kept is not None
                     else self.files.read(path, names).filter(mask))
            if chosen is not None:
                table = table.filter(in_set(table.column(0), chosen))
            yield {name: table.column(name).to_pylist() for name in names}

    def _values_rows(self, names: Sequence[str],
                     only: Collection[str] | None) -> Iterator[dict[str, list[Any]]]:
        """:meth:`rows` from :attr:`values` (a column not kept: the file read again for it)."""
        assert self.values is not None
        held = self.values
        if not set(names) <= held.keys():
            every = self.files.values(self.files.paths[0], names)
            members = set(held["SOPInstanceUID"])
            at = [i for i, sop in enumerate(every["SOPInstanceUID"]) if sop in members]
            held = {n: [every[n][i] for i in at] for n in names}
        sops = held["SOPInstanceUID"]
        chosen = range(len(sops)) if only is None else [
            i for i, sop in enumerate(sops) if sop in only]
        if chosen:
            yield {name: [held[name][i] for i in chosen] for name in names}


def _zoned(files: DataFiles, names: Sequence[str]) -> bool:
    """Whether a column of ``names`` is a time-zone-aware timestamp (its Python values, read
    by :meth:`DataFiles.values`, would carry another ``tzinfo`` object than
    ``Table.to_pylist`` gives)."""
    return any(pa.types.is_timestamp(t) and t.tz is not None
               for t in (files.schema.field(n).type for n in names))


def _load_refs(cohort: Cohort, columns: Sequence[str], files: DataFiles,
               read: FileRows | None = None) -> tuple[list[InstanceRef], _MemberFiles]:
    wanted = [m.sop_uid for m in cohort.members]
    names = list(dict.fromkeys([*_REF_COLUMNS, *columns]))
    # (the headers too, for _tasks, where the version is one file: read once, with the
    # cohort's members when its resolution read them from that file: ``read``)
    located = _MemberFiles.find(files, wanted, [*names, "header_dicom"], read)
    found = list(located.rows(names))
    # column by column (Table.to_pylist builds a dict per row in Python: a tenth of a small
    # export's CPU with the NIfTI columns), then one tuple per row
    values = {name: [v for batch in found for v in batch[name]] for name in names}
    at = {sop: i for i, sop in enumerate(values["SOPInstanceUID"])}
    missing = sum(1 for sop in wanted if sop not in at)
    if missing or len(values["SOPInstanceUID"]) != len(at):
        raise IntegrityError(
            f"{missing} member instance(s) of the cohort are absent from (or duplicated in) "
            f"catalog version {cohort.catalog_version}; the catalog was rewritten since the "
            "cohort was saved. Re-create the cohort with replace=True", parameters=("replace",)
        )
    fixed = list(zip(*(values[c] for c in _REF_COLUMNS), strict=True))
    extras = list(zip(*(values[c] for c in columns), strict=True)) if columns else None
    refs: list[InstanceRef] = []
    changed = 0
    for member in cohort.members:
        i = at[member.sop_uid]
        (series_uid, _sop, study_uid, patient_id, series_number, instance_number, modality,
         pixel_hash, pixel_vr, profile, profile_version, profile_sha256) = fixed[i]
        changed += pixel_hash != member.pixel_hash
        refs.append(
            InstanceRef(
                series_uid=series_uid,
                sop_uid=member.sop_uid,
                study_uid=study_uid,
                patient_id=patient_id,
                series_number=series_number,
                instance_number=instance_number,
                modality=modality,
                pixel_hash=pixel_hash,
                pixel_vr=pixel_vr,
                profile=profile,
                profile_version=profile_version,
                profile_sha256=profile_sha256,
                header_sha256=member.header_sha256,
                extra={} if extras is None else dict(zip(columns, extras[i], strict=False)),  # one length
            )
        )
    if changed:
        raise IntegrityError(
            f"{changed} member instance(s) of the cohort point to different pixel blobs in catalog "
            f"version {cohort.catalog_version} than when the cohort was saved; re-create it"
        )
    return refs, located


def _plan_id(spec: ExportSpec, cohort: Cohort, refs: Sequence[InstanceRef]) -> str:
    identity = {
        "format": EXPORT_FORMAT,
        "kind": spec.kind,
        "options": spec.options,
        "catalog_version": cohort.catalog_version,
        "query": cohort.query,
        "members": [[r.sop_uid, r.pixel_hash, r.header_sha256] for r in refs],
    }
    raw = json.dumps(identity, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(raw).hexdigest()


def _check_plans(plans: Sequence[TaskPlan]) -> None:
    keys = [p.key for p in plans]
    paths = [name for p in plans for _, name in p.instances if name]
    if len(set(keys)) != len(keys) or len(set(paths)) != len(paths):
        raise ExportError(
            "two outputs of this export would share a file name (a short-hash collision); "
            "please report it"
        )


def _intact(root: Path, record: FileRecord) -> bool:
    path = root / record.path
    if not path.is_file() or path.stat().st_size != record.size:
        return False
    return sha256_file(path) == record.sha256


def _verify_finished(out: Path, manifest: dict[str, Any]) -> bool:
    archive = manifest.get("archive")
    if archive:
        return _intact(out, FileRecord(**archive))
    return all(_intact(out, FileRecord(**f)) for f in manifest["files"])


def _finished(out: Path, plan_id: str) -> dict[str, Any] | None:
    """The manifest of an identical finished export in ``out``, or None when there is none."""
    path = out / MANIFEST_NAME
    if not path.exists():
        return None
    manifest = read_json(path)
    if not isinstance(manifest, dict) or manifest.get("plan_id") != plan_id:
        raise ExportError(
            "the output folder (out=) holds a finished export of a different cohort, catalog "
            "version or options; choose another folder", parameters=("out",)
        )
    if not _verify_finished(out, manifest):
        raise ExportError(
            "the output folder (out=) holds this export, but some of its files are missing or "
            "were changed since; delete the folder and export again", parameters=("out",)
        )
    return manifest


def _tasks(
    cohort: Cohort,
    refs: Sequence[InstanceRef],
    plans: Sequence[TaskPlan],
    located: _MemberFiles,
) -> Iterator[SeriesTask]:
    """Stream the todo series with their headers, verified against the cohort's hashes.

    ``located`` holds every member's row; only the files holding members of todo series are
    read, and only those members' headers are converted: the members of series finished by
    an earlier run, or not selected, are passed over unread."""
    by_sop = {r.sop_uid: r for r in refs}
    owner: dict[str, TaskPlan] = {}
    for plan in plans:
        for sop, _ in plan.instances:
            owner[sop] = plan
    if not owner:
        return
    pending: dict[str, dict[str, bytes]] = {}
    for batch in located.rows(["header_dicom"], only=owner):
        for sop, header in zip(batch["SOPInstanceUID"], batch["header_dicom"], strict=True):
            ref = by_sop[sop]
            if hashlib.sha256(header).hexdigest() != ref.header_sha256:
                raise IntegrityError(
                    f"the stored header of a cohort member differs from when the cohort was saved "
                    f"(catalog version {cohort.catalog_version}); run Lake.verify()",
                    functions=("Lake.verify",)
                )
            plan = owner[sop]
            headers = pending.setdefault(plan.key, {})
            headers[sop] = header
            if len(headers) == len(plan.instances):
                del pending[plan.key]
                items = tuple(
                    InstanceItem(s, name, headers[s], by_sop[s].pixel_hash, by_sop[s].pixel_vr)
                    for s, name in plan.instances
                )
                yield SeriesTask(plan.key, plan.folder, items, plan.meta)
    if pending:
        raise IntegrityError(
            f"{sum(len(v) for v in pending.values())} cohort instance header(s) could not be read "
            f"from catalog version {cohort.catalog_version}; run Lake.verify()",
            functions=("Lake.verify",)
        )


def _profiles(refs: Sequence[InstanceRef]) -> list[dict[str, Any]]:
    counts = Counter((r.profile, r.profile_version, r.profile_sha256) for r in refs)
    return [
        {"name": name, "version": version, "sha256": digest, "instances": n}
        for (name, version, digest), n in sorted(counts.items(), key=lambda kv: str(kv[0]))
    ]


def _manifest(
    spec: ExportSpec,
    cohort: Cohort,
    refs: Sequence[InstanceRef],
    plan_id: str,
    files: Sequence[FileRecord],
    skipped: Sequence[Skip],
    archive: FileRecord | None,
    exported_series: int,
) -> dict[str, Any]:
    from lake import __version__

    return {
        "format": EXPORT_FORMAT,
        "kind": spec.kind,
        "lake_version": __version__,
        "catalog_version": cohort.catalog_version,
        "query": cohort.query,
        "cohort": {
            "name": cohort.name,
            "description": cohort.description,
            "created_at": cohort.created_at.isoformat() if cohort.created_at else None,
            "series": len(cohort.series),
            "instances": len(cohort.members),
            "withdrawn": cohort.withdrawn,
        },
        "options": spec.options,
        "plan_id": plan_id,
        "profiles": _profiles(refs),
        "counts": {
            "series_exported": exported_series,
            "instances_planned": len(refs),
            "files": len(files),
            "skipped": len(skipped),
        },
        "archive": None if archive is None else {
            "path": archive.path, "sha256": archive.sha256, "size": archive.size
        },
        "files": [{"path": f.path, "sha256": f.sha256, "size": f.size} for f in files],
        "skipped": sorted(
            (
                {"series": s.series, "instance": s.instance, "reason": s.reason,
                 "message": s.message}
                for s in skipped
            ),
            key=lambda s: (s["series"], s["instance"] or "", s["reason"]),
        ),
    }


def _prepare_out(out: Path, journal: Journal) -> None:
    if out.exists() and not out.is_dir():
        raise ExportError("out= names a file, not a folder; give a new or empty folder",
                          parameters=("out",))
    if out.is_dir() and not journal.path.exists() and any(out.iterdir()):
        raise ExportError(
            "the output folder (out=) is not empty and holds no export; give a new or empty "
            "folder", parameters=("out",)
        )
    out.mkdir(parents=True, exist_ok=True)


def run_export(
    lake: Lake,
    cohort_or_sql: Cohort | str,
    out: str | os.PathLike[str],
    spec: ExportSpec,
    *,
    scheduler: str = AUTO,
    workers: int | None = None,
    on_progress: ProgressCallback | None = None,
) -> ExportResult:
    """Plan and run (or resume) one export; see :func:`lake.export.export_dicom`.

    Raises
    ------
    ExportError
        If the output folder holds something else, or the export is refused.
    IntegrityError
        If the catalog or blobs no longer match the cohort.
    """
    lake.location.refuse_inside(out)
    # (a one-off query on a small lake reads its one data file once, for members and rows)
    cohort, read = resolve_reading(
        lake, cohort_or_sql,
        [*_REF_COLUMNS, *spec.columns, *spec.optional_columns, "header_dicom"])
    # the instances table at the cohort's version, opened once for the whole export
    instances = lake.tables.data_files("instances", cohort.catalog_version)
    stored = set(instances.schema.names)
    columns = [*spec.columns, *(c for c in spec.optional_columns if c in stored)]
    refs, located = _load_refs(cohort, columns, instances, read)
    skipped: list[Skip] = []
    if spec.select is not None:
        refs, skipped = spec.select(refs)
    plans = spec.layout(refs)
    _check_plans(plans)
    plan_id = _plan_id(spec, cohort, refs)
    out_dir = Path(out)
    root = out_dir / STAGING_NAME if spec.archive else out_dir
    journal = Journal(out_dir / JOURNAL_NAME)

    finished = _finished(out_dir, plan_id) if out_dir.is_dir() else None
    if finished is not None:
        journal.remove()
        if spec.archive and root.exists():
            shutil.rmtree(root)
        return ExportResult(out_dir, finished, up_to_date=True)

    _prepare_out(out_dir, journal)
    earlier = journal.read(plan_id)
    sweep_temporaries(out_dir)
    journal.start(plan_id, spec.kind)
    results = {k: r for k, r in earlier.items() if all(_intact(root, f) for f in r.files)}
    resumed = len(results)
    total = len(plans)
    if on_progress is not None:
        on_progress(len(results), total)
    todo = [p for p in plans if p.key not in results]
    if todo:
        count = sum(len(p.instances) for p in todo)
        nbytes = cohort.pixel_bytes * count // max(1, len(cohort.members))
        runner = Runner(scheduler, workers, Workload(count, nbytes, EXPORT_CROSSOVER))
        threads = None if runner.scheduler == "sync" else 1
        context = WriterContext(lake.location, str(root), dict(spec.options), spec.writer, threads)
        with runner:
            tasks = _tasks(cohort, refs, todo, located)
            for result in runner.map(_run_task, tasks, context):
                journal.add(result)
                results[result.key] = result
                if on_progress is not None:
                    on_progress(len(results), total)

    ordered = [results[p.key] for p in plans]
    files = [f for r in ordered for f in r.files]
    skipped += [s for r in ordered for s in r.skipped]
    extras = spec.extras(refs, ordered) if spec.extras is not None else {}
    archive: FileRecord | None = None
    if spec.archive:
        entries: list[tuple[str, Path | bytes]] = [(f.path, root / f.path) for f in files]
        entries += list(extras.items())
        files += [FileRecord(n, hashlib.sha256(d).hexdigest(), len(d)) for n, d in extras.items()]
        archive = write_zip(out_dir / spec.archive, entries, spec.compresslevel)
    else:
        files += [write_bytes(out_dir, name, data) for name, data in sorted(extras.items())]
    files.sort(key=lambda f: f.path)
    if not spec.flushes and not spec.archive:
        flush_written([out_dir / f.path for f in files], out_dir)
    exported = sum(1 for r in ordered if r.files)
    manifest = _manifest(spec, cohort, refs, plan_id, files, skipped, archive, exported)
    manifest["counts"]["series_skipped"] = len(plans) - exported
    if spec.details is not None:
        manifest[spec.kind] = spec.details(refs, ordered)
    write_json(out_dir / MANIFEST_NAME, manifest)
    journal.remove()
    if spec.archive and root.exists():
        shutil.rmtree(root)
    now = [results[p.key] for p in todo]
    return ExportResult(
        out_dir,
        manifest,
        written=sum(1 for r in now if r.files),
        resumed=resumed,
        skipped_series=len(plans) - exported,
    )
