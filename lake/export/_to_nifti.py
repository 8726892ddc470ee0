"""NIfTI export of a cohort: each series through the converter in :mod:`lake.nifti`.

The converter gets each instance's acquisition parameters from the catalog (the columns of
``lake.nifti.PARAMETERS``, derived from the original header at ingest): the de-identified
instances have lost the private elements they come from.

Files are named from pseudonymous identifiers only (BIDS-like)::

    sub-<PatientID>/ses-<study hash>/<SeriesNumber>_<series hash><suffix>.nii[.gz]

where the hashes are 12 hex digits of the sha256 of the (pseudonymous) Study and Series
Instance UIDs, with a ``.json`` sidecar and, for diffusion, ``.bval``/``.bvec``.
``<suffix>`` tells the volumes of one series apart (``_e2`` second echo, ``_ph`` phase...).
What the converter refuses (gantry tilt, missing slices...) is listed under ``skipped``
in ``manifest.json``.
"""

from __future__ import annotations

import functools
import itertools
import os
import pickle
import re
import threading
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lake._capture import capture
from lake._errors import BlobNotFoundError, ConfigError, IntegrityError, LakeError
from lake.export._cohort import Cohort
from lake.export._dicom import blob_skip, load_pixels
from lake.export._manifest import FileRecord, Skip, TaskResult, sha256_file
from lake.export._runner import (
    ExportResult,
    ExportSpec,
    InstanceRef,
    ProgressCallback,
    SeriesTask,
    TaskPlan,
    WriterContext,
    number_label,
    patient_label,
    run_export,
    short_hash,
)
from lake.nifti import ACQUISITION_NAMES, acquisition_from_row
from lake.store import BlobStore

if TYPE_CHECKING:
    from lake._lake import Lake
    from lake.nifti import AcquisitionValue, ValueCache

__all__ = ["export_nifti", "nifti_layout", "write_nifti_series"]

_SUFFIX = re.compile(r"^[A-Za-z0-9_-]*$")
#: Series with at least this many instances read their blobs in threads (see below).
_THREADED_SERIES = 32
#: Entries an export's value cache holds at most before a new one is started (each value
#: under 1 KiB: a few MB at worst; a vendor repository's series adds tens to hundreds).
_CACHE_ENTRIES = 20_000


def nifti_layout(refs: Sequence[InstanceRef]) -> list[TaskPlan]:
    """``sub-<patient>/ses-<study hash>/<SeriesNumber>_<series hash>`` per series (the stem).

    Each instance's acquisition parameters are validated once per distinct row of them
    (:class:`_AcquisitionRows`): the instances of a series mostly repeat them.
    """
    validated = _AcquisitionRows()
    by_series: dict[str, list[InstanceRef]] = defaultdict(list)
    for ref in refs:
        by_series[ref.series_uid].append(ref)
    plans = []
    for key in sorted(by_series):
        members = sorted(by_series[key], key=lambda r: r.sop_uid)
        first = members[0]
        stem = (
            f"sub-{patient_label(first.patient_id)}/ses-{short_hash(first.study_uid)}/"
            f"{number_label(first.series_number)}_{short_hash(key)}"
        )
        acquisitions = {r.sop_uid: validated(r.extra) for r in members}
        plans.append(TaskPlan(key, stem, tuple((r.sop_uid, "") for r in members),
                              {"acquisitions": acquisitions}))
    return plans


class _AcquisitionRows:
    """:func:`lake.nifti.acquisition_from_row` of catalog rows, computed once per distinct
    row (as a mapping: instances with equal values share one, which the converter only
    reads). Rows are told apart by their column names and the pickle of their values, which
    holds each value's type and exact bits (``-0.0`` is not ``0.0``, ``1`` not ``1.0``), so
    equal keys are equal inputs of a pure function: the result is the one each row would
    get on its own (``tests/test_export_nifti.py``). A plan of dcm_qa_philips (707
    instances) has 18 distinct rows, dcm_qa_stc 151 of 423."""

    def __init__(self) -> None:
        self._seen: dict[tuple[tuple[str, ...], bytes], Mapping[str, AcquisitionValue]] = {}

    def __call__(self, row: Mapping[str, Any]) -> Mapping[str, AcquisitionValue]:
        key = (tuple(row), pickle.dumps(tuple(row.values()), protocol=pickle.HIGHEST_PROTOCOL))
        found = self._seen.get(key)
        if found is None:
            found = self._seen[key] = acquisition_from_row(row)
        return found


class _SeriesWriter:
    """:func:`write_nifti_series` with one :class:`lake.nifti.ValueCache` per export and
    thread, shared by the series it converts: the series of an export repeat most of their
    sidecar values byte for byte (manufacturer, model, field strength, sequence names...),
    converted by pydicom once per export instead of once per series. Values are looked up
    by their tag, VR, bytes and character sets, so a series gets the values it would get
    with a cache of its own. Bounded (``_CACHE_ENTRIES``, then a new cache); a worker that
    receives the writer (pickled) starts with an empty one."""

    def __init__(self) -> None:
        self._local = threading.local()

    def __getstate__(self) -> dict[str, Any]:
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._local = threading.local()

    def __call__(self, task: SeriesTask, ctx: WriterContext) -> TaskResult:
        from lake.nifti import ValueCache

        cache: ValueCache | None = getattr(self._local, "cache", None)
        if cache is None or cache.entries > _CACHE_ENTRIES:
            cache = self._local.cache = ValueCache()
        return write_nifti_series(task, ctx, cache)


def _verified_blob(blobs: BlobStore, pixel_hash: str | None) -> bytes | LakeError | None:
    """The pixel blob checked against its hash, or why it cannot be had."""
    try:
        return load_pixels(blobs, pixel_hash)
    except (BlobNotFoundError, IntegrityError) as exc:
        return exc


def write_nifti_series(task: SeriesTask, ctx: WriterContext,
                       cache: ValueCache | None = None) -> TaskResult:
    """Worker: convert one series and write its volumes.

    ``cache`` holds the values already converted (by other series of the export); by
    default the series gets one of its own.

    Pixel blobs are read and re-hashed, and outputs hashed for the manifest, in threads
    beside the conversion (file reads and sha256 release the GIL) when the task may use more
    than one (``ctx.threads``; one on a Dask cluster, whose workers already fill the CPUs)
    and the series has at least ``_THREADED_SERIES`` instances (starting threads costs more
    than it saves on a few: dcm_qa's one-to-ten-mosaic series, measured with py-spy).
    """
    workers = ctx.threads or min(4, os.cpu_count() or 1)
    if workers < 2 or len(task.items) < _THREADED_SERIES:
        return _write_series(task, ctx, cache, None, 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return _write_series(task, ctx, cache, pool, workers)


def _write_series(task: SeriesTask, ctx: WriterContext, cache: ValueCache | None,
                  pool: ThreadPoolExecutor | None, workers: int) -> TaskResult:
    from lake.nifti import ValueCache, read_part10, series_to_nifti, write_volume

    result = TaskResult(task.key)
    blobs = BlobStore(ctx.location)
    # validated by acquisition_from_row when the plan was made (nifti_layout)
    stored = task.meta.get("acquisitions", {})
    if cache is None:
        cache = ValueCache()  # the instances of a series repeat most values: converted once
    datasets = []
    acquisitions = []
    verified = functools.partial(_verified_blob, blobs)
    hashes = [item.pixel_hash for item in task.items]
    if pool is None:
        pixels: Iterable[bytes | LakeError | None] = map(verified, hashes)
    else:
        # a few chunks per thread, not a future per instance (its locks cost more than a
        # small blob's read)
        size = max(1, len(hashes) // (4 * workers))
        chunks = [hashes[i : i + size] for i in range(0, len(hashes), size)]
        pixels = itertools.chain.from_iterable(
            pool.map(lambda chunk: [verified(h) for h in chunk], chunks)
        )
    # the converter's fast reader (pydicom for what it does not handle), quiet: one scope
    # for the series (the blobs, read here or in threads, warn about nothing)
    with capture():
        for item, blob in zip(task.items, pixels, strict=True):
            if isinstance(blob, LakeError):
                result.skipped.append(blob_skip(task, item, blob))
                continue
            datasets.append(read_part10(item.header, blob, item.pixel_vr, cache=cache))
            acquisitions.append(stored.get(item.sop_uid, {}))
    if not datasets:
        return result
    root = Path(ctx.root)
    with capture():
        try:
            volumes, refusals = series_to_nifti(datasets, acquisitions)
        except Exception as exc:  # noqa: BLE001 - one series must not sink the export; reported
            result.skipped.append(
                Skip(task.key, None, "converter_error",
                     f"the NIfTI converter failed on this series ({type(exc).__name__})")
            )
            return result
    for refusal in refusals:
        part = f" (part {refusal.suffix})" if refusal.suffix else ""
        result.skipped.append(
            Skip(task.key, None, refusal.reason_code.value, refusal.message + part)
        )
    written: list[tuple[Path, Future[str] | str]] = []
    for volume in volumes:
        if not _SUFFIX.match(volume.suffix):
            raise IntegrityError("the NIfTI converter returned an unsafe file-name suffix")
        stem = root / f"{task.folder}{volume.suffix}"
        paths = write_volume(
            volume,
            stem,
            compress=bool(ctx.options["compress"]),
            level=int(ctx.options["level"] or 6),
            threads=ctx.threads,
        )
        written += [(path, sha256_file(path) if pool is None else pool.submit(sha256_file, path))
                    for path in paths]
    for path, digest in written:
        relative = path.relative_to(root).as_posix()
        result.files.append(FileRecord(relative, digest if isinstance(digest, str)
                                       else digest.result(), path.stat().st_size))
    return result


def export_nifti(
    lake: Lake,
    cohort_or_sql: Cohort | str,
    out: str | os.PathLike[str],
    *,
    compress: bool = False,
    level: int = 6,
    scheduler: str = "auto",
    workers: int | None = None,
    on_progress: ProgressCallback | None = None,
) -> ExportResult:
    """Export a cohort as NIfTI-1 volumes with JSON sidecars (one or more per series).

    Parameters
    ----------
    lake : Lake
        An open lake.
    cohort_or_sql : Cohort or str
        A cohort, a saved cohort's name, or a one-off SQL query.
    out : path
        A new or empty folder (or that of an interrupted run of the same export).
    compress : bool
        Write ``.nii.gz`` instead of ``.nii``.
    level : int
        gzip level 1-9 when compressing (output bytes depend only on the level).
    scheduler, workers, on_progress
        As for :func:`lake.export.export_dicom`.

    Returns
    -------
    ExportResult
        Series (or parts) the converter refused are in ``skipped`` with its reason code.

    Raises
    ------
    ConfigError
        For a compression level outside 1-9.
    ExportError
        If ``out`` holds something else.

    Examples
    --------
    >>> from lake.export import export_nifti  # doctest: +SKIP
    >>> export_nifti(lk, "mr-brain", "/exports/mr", compress=True, level=6)  # doctest: +SKIP
    """
    if compress and not 1 <= level <= 9:
        raise ConfigError(f"gzip level must be 1..9, got {level}")
    spec = ExportSpec(
        kind="nifti",
        options={"compress": compress, "level": level if compress else None},
        layout=nifti_layout,
        writer=_SeriesWriter(),
        optional_columns=ACQUISITION_NAMES,
        flushes=False,  # lake.nifti.write_volume renames its files into place, unflushed
    )
    return run_export(
        lake, cohort_or_sql, out, spec, scheduler=scheduler, workers=workers, on_progress=on_progress
    )
