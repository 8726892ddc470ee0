"""Teaching sets: one zip per cohort with de-identified DICOM, PNG previews and a manifest.

Only instances de-identified with the ``teaching`` profile, or with a built-in profile
whose manifest extends it (directly or through other profiles), may go into a teaching
set; anything else is refused with a message naming the profiles found (or, on request,
left out and listed in the export manifest).

Inside the zip, cases, studies and series are numbered (``case-001/study-01/series-01``)
in the order of their pseudonymous identifiers, so nothing in a name comes from free
text. Each series folder holds ``image-NNNN.dcm`` and ``preview.png``: the middle slice
(along the slice normal) after the modality and VOI LUTs, scaled to 8 bits. ``manifest.csv``
and ``manifest.json`` describe every series for students; ``README.txt`` explains the layout.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tomllib
from collections import defaultdict
from collections.abc import Sequence
from importlib import resources
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray
from pydicom.dataset import Dataset
from pydicom.pixels.processing import apply_color_lut, apply_modality_lut, apply_voi_lut
from pydicom.pixels.utils import pixel_array

from lake._capture import capture
from lake._errors import BlobNotFoundError, ExportError, IntegrityError
from lake.deid import list_profiles
from lake.export._cohort import Cohort, resolve
from lake.export._dicom import blob_skip, encode, load_pixels, reassemble
from lake.export._manifest import Skip, StagedFiles, TaskResult
from lake.export._runner import (
    ExportResult,
    ExportSpec,
    InstanceRef,
    ProgressCallback,
    SeriesTask,
    TaskPlan,
    WriterContext,
    patient_label,
    run_export,
)
from lake.nifti import decode_past_panic
from lake.store import BlobStore

if TYPE_CHECKING:
    from lake._lake import Lake

__all__ = [
    "TEACHING_PROFILE",
    "export_teaching",
    "preview_png",
    "teaching_layout",
    "teaching_profiles",
]

TEACHING_PROFILE = "teaching"
_DESCRIPTORS = (
    "BodyPartExamined",
    "StudyDescription",
    "SeriesDescription",
    "PatientSex",
    "PatientAge",
)
_CSV_COLUMNS = (
    "case",
    "study",
    "series",
    "folder",
    "Modality",
    *_DESCRIPTORS,
    "images",
    "preview",
)


def _parent(name: str) -> str | None:
    path = resources.files("lake.profiles").joinpath(f"{name}.toml")
    if not path.is_file():
        return None
    try:
        manifest = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError:
        return None
    parent = manifest.get("extends")
    if not isinstance(parent, str):
        return None
    return parent.removesuffix(".toml").rsplit("/", 1)[-1]


def _extends_teaching(name: str) -> bool:
    seen: set[str] = set()
    current: str | None = name
    while current is not None and current not in seen:
        if current == TEACHING_PROFILE:
            return True
        seen.add(current)
        current = _parent(current)
    return False


def teaching_profiles() -> frozenset[str]:
    """Names of the profiles acceptable for teaching sets.

    ``teaching`` itself and every built-in profile whose manifest ``extends`` it,
    directly or through other profiles.

    Raises
    ------
    ExportError
        If no ``teaching`` profile is installed.

    Examples
    --------
    >>> "teaching" in teaching_profiles()  # doctest: +SKIP
    True
    """
    names = list_profiles()
    if TEACHING_PROFILE not in names:
        raise ExportError(
            "no 'teaching' de-identification profile is installed, so no instance can be shown "
            "fit for a teaching set; install an imaging-lake that ships profiles/teaching.toml"
        )
    return frozenset(n for n in names if _extends_teaching(n))


def _selector(skip_weaker: bool) -> Any:
    def select(refs: list[InstanceRef]) -> tuple[list[InstanceRef], list[Skip]]:
        return select_teaching(refs, skip_weaker)

    return select


def select_teaching(
    refs: list[InstanceRef], skip_weaker: bool
) -> tuple[list[InstanceRef], list[Skip]]:
    """Keep the instances de-identified with a teaching profile; refuse or skip the others.

    Raises
    ------
    ExportError
        If some instances were de-identified with a weaker profile and ``skip_weaker``
        is false, or if none is left.
    """
    accepted = teaching_profiles()
    weaker = [r for r in refs if r.profile not in accepted]
    if weaker and not skip_weaker:
        found = sorted({str(r.profile) for r in weaker})
        raise ExportError(
            f"refusing the teaching set: {len(weaker)} of {len(refs)} instances were "
            f"de-identified with profile(s) {', '.join(found)}, weaker than 'teaching' "
            f"(accepted: {', '.join(sorted(accepted))}). Re-ingest the originals with "
            "profile='teaching' into a lake for teaching, or pass skip_weaker=True to leave "
            "those instances out (they are listed in manifest.json)",
            parameters=("profile", "skip_weaker"),
        )
    kept = [r for r in refs if r.profile in accepted]
    if not kept:
        raise ExportError(
            "no instance of the cohort was de-identified with the 'teaching' profile; "
            "nothing to put in a teaching set"
        )
    skips = [
        Skip(
            r.series_uid,
            r.sop_uid,
            "weaker_profile",
            f"de-identified with profile {r.profile!s}, weaker than 'teaching'",
        )
        for r in weaker
    ]
    return kept, skips


def teaching_layout(refs: Sequence[InstanceRef]) -> list[TaskPlan]:
    """``case-NNN/study-NN/series-NN/image-NNNN.dcm``, numbered by pseudonymous identifiers."""
    tree: dict[str, dict[str, dict[str, list[InstanceRef]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(list))
    )
    for ref in refs:
        tree[patient_label(ref.patient_id)][ref.study_uid][ref.series_uid].append(ref)
    plans: list[TaskPlan] = []
    for c, patient in enumerate(sorted(tree), start=1):
        studies = tree[patient]
        for s, study in enumerate(sorted(studies), start=1):
            series = studies[study]
            order = sorted(
                series,
                key=lambda uid: (
                    series[uid][0].series_number is None,
                    series[uid][0].series_number or 0,
                    uid,
                ),
            )
            for n, uid in enumerate(order, start=1):
                members = sorted(
                    series[uid],
                    key=lambda r: (r.instance_number is None, r.instance_number or 0, r.sop_uid),
                )
                case, study_label = f"case-{c:03d}", f"study-{s:02d}"
                series_label = f"series-{n:02d}"
                folder = f"{case}/{study_label}/{series_label}"
                first = members[0]
                meta: dict[str, Any] = {
                    "case": case,
                    "study": study_label,
                    "series": series_label,
                    "folder": folder,
                    "Modality": first.modality,
                    **{k: first.extra.get(k) for k in _DESCRIPTORS},
                }
                names = tuple(
                    (r.sop_uid, f"{folder}/image-{i:04d}.dcm") for i, r in enumerate(members, 1)
                )
                # A series holding several patients (a modality error, reported at ingest)
                # is one series folder per patient: its UID alone is not a unique key.
                plans.append(TaskPlan(f"{case}/{uid}", folder, names, meta))
    return plans


def _along_normal(ds: Dataset) -> float | None:
    try:
        iop = [float(v) for v in ds.ImageOrientationPatient]
        ipp = [float(v) for v in ds.ImagePositionPatient]
    except (AttributeError, TypeError, ValueError):
        return None
    if len(iop) != 6 or len(ipp) != 3:
        return None
    normal = np.cross(iop[:3], iop[3:])
    return float(np.dot(normal, ipp))


def _middle(datasets: Sequence[tuple[Dataset, bytes]]) -> tuple[Dataset, bytes, int] | None:
    images = [(ds, raw) for ds, raw in datasets if "PixelData" in ds]
    if not images:
        return None
    positions = [_along_normal(ds) for ds, _ in images]
    if all(p is not None for p in positions):
        keys = [(p, str(ds.SOPInstanceUID)) for p, (ds, _) in zip(positions, images, strict=True)]
    else:
        keys = [(float(ds.get("InstanceNumber") or 0), str(ds.SOPInstanceUID)) for ds, _ in images]
    order = sorted(range(len(images)), key=lambda i: keys[i])
    ds, raw = images[order[len(order) // 2]]
    frames = int(ds.get("NumberOfFrames") or 1)
    return ds, raw, frames // 2


def _to_uint8(values: NDArray[Any], windowed: bool) -> NDArray[np.uint8]:
    data = values.astype(np.float64)
    finite = data[np.isfinite(data)]
    if finite.size == 0:
        return np.zeros(data.shape, dtype=np.uint8)
    if windowed:
        low, high = float(finite.min()), float(finite.max())
    else:
        low, high = (float(v) for v in np.percentile(finite, [0.5, 99.5]))
    if high <= low:
        return np.zeros(data.shape, dtype=np.uint8)
    scaled = np.clip((np.nan_to_num(data, nan=low) - low) / (high - low), 0.0, 1.0)
    return np.round(scaled * 255.0).astype(np.uint8)


def _render(ds: Dataset, raw: bytes, frame: int) -> NDArray[np.uint8] | None:
    photometric = str(ds.get("PhotometricInterpretation", "")).upper()
    frames = int(ds.get("NumberOfFrames") or 1)
    arr = decode_past_panic(lambda **plugin: pixel_array(
        io.BytesIO(raw), index=frame if frames > 1 else None, **plugin))
    if photometric in ("MONOCHROME1", "MONOCHROME2"):
        windowed = ("WindowCenter" in ds and "WindowWidth" in ds) or "VOILUTSequence" in ds
        values = apply_voi_lut(apply_modality_lut(arr, ds), ds, index=0)
        image = _to_uint8(values, windowed)
        return 255 - image if photometric == "MONOCHROME1" else image
    if photometric == "PALETTE COLOR":
        return _to_uint8(apply_color_lut(arr, ds), windowed=False)
    if photometric == "RGB" or photometric.startswith("YBR"):
        if arr.dtype == np.uint8:
            return np.asarray(arr, dtype=np.uint8)
        return _to_uint8(arr, windowed=False)
    return None


def preview_png(datasets: Sequence[tuple[Dataset, bytes]], size: int = 1024) -> bytes | None:
    """A PNG of the middle slice of a series, or None when it has no displayable image.

    Parameters
    ----------
    datasets : sequence of (Dataset, bytes)
        The series' instances and their Part-10 bytes.
    size : int
        Longest side of the preview in pixels (larger images are scaled down).

    Returns
    -------
    bytes or None
        A deterministic PNG (no time stamp), 8-bit grey or RGB.
    """
    from PIL import Image

    chosen = _middle(datasets)
    if chosen is None:
        return None
    ds, raw, frame = chosen
    with capture():
        image = _render(ds, raw, frame)
    if image is None or image.ndim not in (2, 3):
        return None
    picture = Image.fromarray(np.ascontiguousarray(image))
    if max(picture.size) > size:
        picture.thumbnail((size, size), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    picture.save(out, format="PNG")
    return out.getvalue()


def write_teaching_series(task: SeriesTask, ctx: WriterContext) -> TaskResult:
    """Worker: one series' DICOM files and its preview."""
    result = TaskResult(task.key, info=dict(task.meta))
    blobs = BlobStore(ctx.location)
    with StagedFiles(ctx.root) as staged:
        written = _stage_instances(task, blobs, staged, result)
        _stage_preview(task, written, int(ctx.options["preview_size"]), staged, result)
        result.files = staged.commit()
    return result


def _stage_instances(
    task: SeriesTask, blobs: BlobStore, staged: StagedFiles, result: TaskResult
) -> list[tuple[Dataset, bytes]]:
    written: list[tuple[Dataset, bytes]] = []
    for item in task.items:
        try:
            ds = reassemble(item.header, load_pixels(blobs, item.pixel_hash), item.pixel_vr)
        except (BlobNotFoundError, IntegrityError) as exc:
            result.skipped.append(blob_skip(task, item, exc))
            continue
        data = encode(ds)
        staged.add(item.relpath, data)
        written.append((ds, data))
    result.info["images"] = len(written)
    return written


def _stage_preview(
    task: SeriesTask,
    written: list[tuple[Dataset, bytes]],
    size: int,
    staged: StagedFiles,
    result: TaskResult,
) -> None:
    try:
        png = preview_png(written, size)
    except Exception as exc:  # noqa: BLE001 - a preview must not sink the set; it is reported
        result.skipped.append(
            Skip(task.key, None, "preview_failed",
                 f"the preview could not be rendered ({type(exc).__name__})")
        )
        png = None
    else:
        if png is None:
            result.skipped.append(
                Skip(task.key, None, "no_preview",
                     "the series has no image with a displayable photometric interpretation")
            )
    if png is not None:
        staged.add(f"{task.folder}/preview.png", png)
        result.info["preview"] = f"{task.folder}/preview.png"
    else:
        result.info["preview"] = None


def _student_rows(results: Sequence[TaskResult]) -> list[dict[str, Any]]:
    rows = []
    for result in results:
        info = result.info
        rows.append({column: info.get(column) for column in _CSV_COLUMNS})
    return sorted(rows, key=lambda r: str(r["folder"]))


def _readme(refs: Sequence[InstanceRef], rows: Sequence[dict[str, Any]]) -> str:
    from lake import __version__

    profiles = sorted({f"{r.profile} {r.profile_version}" for r in refs})
    cases = len({r["case"] for r in rows})
    return (
        "Teaching set\n"
        "============\n\n"
        f"{cases} case(s), {len(rows)} series, {len(refs)} image file(s).\n"
        f"De-identified with: {', '.join(profiles)} (imaging-lake {__version__}).\n\n"
        "Layout\n"
        "------\n"
        "case-NNN/study-NN/series-NN/image-NNNN.dcm   DICOM files (open with any DICOM viewer)\n"
        "case-NNN/study-NN/series-NN/preview.png      the middle slice, windowed, as a picture\n"
        "manifest.csv, manifest.json                  one row per series: modality, body part,\n"
        "                                             descriptions, number of images, preview\n\n"
        "Case numbers are arbitrary: they do not identify anyone and are not shared with\n"
        "other teaching sets.\n"
    )


def teaching_extras(
    refs: Sequence[InstanceRef], results: Sequence[TaskResult]
) -> dict[str, bytes]:
    """The student manifest (CSV and JSON) and README of a teaching zip."""
    rows = _student_rows(results)
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(_CSV_COLUMNS), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if v is None else v for k, v in row.items()})
    document = {"series": rows}
    return {
        "manifest.csv": text.getvalue().encode(),
        "manifest.json": (json.dumps(document, indent=2, sort_keys=True) + "\n").encode(),
        "README.txt": _readme(refs, rows).encode(),
    }


def export_teaching(
    lake: Lake,
    cohort_or_sql: Cohort | str,
    out: str | os.PathLike[str],
    *,
    skip_weaker: bool = False,
    preview_size: int = 1024,
    compresslevel: int = 6,
    scheduler: str = "auto",
    workers: int | None = None,
    on_progress: ProgressCallback | None = None,
) -> ExportResult:
    """Export a cohort as a teaching set: ``<out>/<cohort>-teaching.zip`` plus ``manifest.json``.

    Parameters
    ----------
    lake : Lake
        An open lake.
    cohort_or_sql : Cohort or str
        A cohort, a saved cohort's name, or a one-off SQL query.
    out : path
        A new or empty folder (or that of an interrupted run of the same export).
    skip_weaker : bool
        Leave out (and list) instances de-identified with a profile weaker than
        ``teaching`` instead of refusing the whole set.
    preview_size : int
        Longest side of each PNG preview.
    compresslevel : int
        Deflate level of the zip.
    scheduler, workers, on_progress
        As for :func:`lake.export.export_dicom`.

    Returns
    -------
    ExportResult

    Raises
    ------
    ExportError
        If instances were de-identified with a weaker profile (and ``skip_weaker`` is
        false), no ``teaching`` profile is installed, or ``out`` holds something else.

    Examples
    --------
    >>> from lake.export import export_teaching  # doctest: +SKIP
    >>> export_teaching(lk, "chest-teaching", "/exports/teaching")  # doctest: +SKIP
    """
    if preview_size < 16:
        raise ExportError(f"preview size must be at least 16 pixels, got {preview_size}")
    cohort = resolve(lake, cohort_or_sql)
    spec = ExportSpec(
        kind="teaching",
        options={"preview_size": preview_size, "compresslevel": compresslevel,
                 "skip_weaker": skip_weaker},
        layout=teaching_layout,
        writer=write_teaching_series,
        select=_selector(skip_weaker),
        columns=_DESCRIPTORS,
        archive=f"{cohort.label}-teaching.zip",
        compresslevel=compresslevel,
        extras=teaching_extras,
    )
    return run_export(
        lake, cohort, out, spec, scheduler=scheduler, workers=workers, on_progress=on_progress
    )
