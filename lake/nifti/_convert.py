"""DICOM series to NIfTI-1: the public entry points of the converter.

:func:`series_to_nifti` is a pure function of the datasets of one series: it sorts slices
by position along the slice normal (file order and InstanceNumber do not matter), splits
echoes and complex components into separate volumes, builds 4D volumes (fMRI, DWI with FSL
bval/bvec), unpacks Siemens mosaics and enhanced multi-frame objects, and refuses, with a
reason, whatever it cannot write correctly (gantry tilt, missing slices, uneven spacing,
inconsistent 4D sets...). The result follows dcm2niix's conventions: RAS affine with
qform/sform code 1, integers kept with ``scl_slope``/``scl_inter`` (float32 only when the
rescale differs between slices), TR in ``pixdim[4]``, ``xyzt_units`` 10, a BIDS sidecar.

:func:`write_volume` writes the files, atomically and byte-deterministically.

Examples
--------
>>> from pydicom import dcmread
>>> from pydicom.data import get_testdata_file
>>> volumes, refusals = series_to_nifti([dcmread(get_testdata_file("CT_small.dcm"))])
>>> volumes[0].image.shape, refusals
((128, 128, 1), [])
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import nibabel as nib
import numpy as np
from pydicom.dataset import Dataset

from lake._errors import ExportError
from lake.nifti._geometry import fsl_bvecs
from lake.nifti._sidecar import build_sidecar
from lake.nifti._types import NiftiRefusal, NiftiVolume, RefusalReason
from lake.nifti._volume import (
    HEADER_SPACE,
    Assembled,
    Component,
    Frame,
    PixelCache,
    allocate_backed,
    assemble_mosaics,
    assemble_plain,
    assemble_stack,
    frames_of,
    is_mosaic,
)
from lake.nifti._write import MemoryFile, write_volume

__all__ = [
    "NiftiRefusal",
    "NiftiVolume",
    "RefusalReason",
    "series_to_nifti",
    "write_volume",
]

_COMPONENT_ORDER = {c: i for i, c in enumerate(Component)}
_RGB = np.dtype([("R", "u1"), ("G", "u1"), ("B", "u1")])


def series_to_nifti(
    datasets: Sequence[Dataset],
) -> tuple[list[NiftiVolume], list[NiftiRefusal]]:
    """Convert the instances of one series into NIfTI volumes.

    Parameters
    ----------
    datasets : sequence of pydicom.dataset.Dataset
        All instances of one series, in any order, with pixel data (read with
        ``pydicom.dcmread``; compressed transfer syntaxes are decoded with the installed
        pydicom/pylibjpeg plugins). The datasets are not modified.

    Returns
    -------
    volumes : list of NiftiVolume
        One per output file, ordered by component then echo; ``suffix`` tells them apart.
    refusals : list of NiftiRefusal
        What was not converted and why. A refused part never yields a volume.

    Raises
    ------
    ExportError
        If ``datasets`` is empty.

    Examples
    --------
    >>> import copy
    >>> from pydicom import dcmread
    >>> from pydicom.data import get_testdata_file
    >>> ct = dcmread(get_testdata_file("CT_small.dcm"))
    >>> series = [copy.deepcopy(ct) for _ in range(3)]
    >>> for i, (ds, z) in enumerate(zip(series, [0.0, 5.0, 15.0])):  # no slice at 10 mm
    ...     ds.SOPInstanceUID, ds.ImagePositionPatient = f"1.2.3.{i}", [0.0, 0.0, z]
    >>> volumes, refusals = series_to_nifti(series)
    >>> volumes, [r.reason_code.value for r in refusals]
    ([], ['missing_slices'])
    """
    if len(datasets) == 0:
        raise ExportError("series_to_nifti needs at least one dataset of the series")
    refusals: list[NiftiRefusal] = []
    series_uids = {str(ds.SeriesInstanceUID) for ds in datasets if "SeriesInstanceUID" in ds}
    if len(series_uids) > 1:
        return [], [
            NiftiRefusal(
                RefusalReason.MIXED_SERIES,
                f"the {len(datasets)} instances belong to {len(series_uids)} series; "
                "call series_to_nifti once per SeriesInstanceUID",
            )
        ]
    unique: list[int] = []
    seen: set[str] = set()
    for index, ds in enumerate(datasets):
        uid = str(ds.get("SOPInstanceUID", "")) or f"#{index}"
        if uid in seen:
            continue  # the same instance twice: identical content, keep one
        seen.add(uid)
        unique.append(index)
    pixels = PixelCache(datasets)
    pixel_keywords = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
    no_pixels = [i for i in unique if not any(k in datasets[i] for k in pixel_keywords)]
    if no_pixels:
        refusals.append(
            NiftiRefusal(
                RefusalReason.NO_PIXEL_DATA,
                f"{len(no_pixels)} of {len(unique)} instances have no pixel data and were "
                "left out",
            )
        )
    images = [i for i in unique if i not in set(no_pixels)]
    mosaic_frames: list[Frame] = []
    frames: list[Frame] = []
    for i in images:
        if is_mosaic(datasets[i]) and "PerFrameFunctionalGroupsSequence" not in datasets[i]:
            mosaic_frames.extend(frames_of(datasets[i], i))
        else:
            frames.extend(frames_of(datasets[i], i))
    volumes: list[NiftiVolume] = []
    if mosaic_frames:
        _convert_groups(mosaic_frames, datasets, pixels, True, volumes, refusals)
    if mosaic_frames and frames:
        refusals.append(
            NiftiRefusal(
                RefusalReason.MIXED_GEOMETRY,
                f"{len({f.source for f in frames})} instances of this mosaic series are not "
                "mosaics (derived images?) and were left out",
            )
        )
    elif frames:
        geometric = [f for f in frames if f.plane is not None]
        if len(geometric) == len(frames):
            _convert_groups(frames, datasets, pixels, False, volumes, refusals)
        elif not geometric:
            _convert_plain(frames, datasets, pixels, volumes, refusals)
        else:
            refusals.append(
                NiftiRefusal(
                    RefusalReason.MISSING_GEOMETRY,
                    f"{len(frames) - len(geometric)} of {len(frames)} frames lack "
                    "ImagePositionPatient/ImageOrientationPatient, so they cannot be placed "
                    "in the volume",
                )
            )
    return volumes, refusals


def _echo_suffixes(frames: list[Frame]) -> dict[float | None, str]:
    echoes = sorted({f.echo for f in frames if f.echo is not None})
    if len(echoes) <= 1:
        return defaultdict(str)
    numbered = all(f.echo_numbered for f in frames if f.echo is not None) and all(
        float(e).is_integer() and e > 0 for e in echoes
    )
    suffixes: dict[float | None, str] = {}
    for rank, echo in enumerate(echoes, start=1):
        suffixes[echo] = f"_e{int(echo) if numbered else rank}"
    suffixes[None] = "_e0"
    return suffixes


def _convert_groups(
    frames: list[Frame],
    datasets: Sequence[Dataset],
    pixels: PixelCache,
    mosaic: bool,
    volumes: list[NiftiVolume],
    refusals: list[NiftiRefusal],
) -> None:
    groups: dict[tuple[Component, float | None], list[Frame]] = defaultdict(list)
    for item in frames:
        groups[(item.component, item.echo)].append(item)
    by_component: dict[Component, list[Frame]] = defaultdict(list)
    for item in frames:
        by_component[item.component].append(item)
    suffix_of = {c: _echo_suffixes(fs) for c, fs in by_component.items()}
    for component, echo in sorted(
        groups, key=lambda k: (_COMPONENT_ORDER[k[0]], -1.0 if k[1] is None else k[1])
    ):
        members = groups[(component, echo)]
        multi_echo = len(suffix_of[component]) > 1
        suffix = (suffix_of[component][echo] if multi_echo else "") + component.value
        if mosaic:
            assembled = assemble_mosaics(members, datasets, pixels, suffix)
        else:
            assembled = assemble_stack(members, datasets, pixels, suffix)
        if _refused(assembled, suffix, refusals):
            continue
        assert not isinstance(assembled, NiftiRefusal)
        volumes.append(_to_volume(assembled, datasets, suffix, multi_echo))


def _refused(
    assembled: Assembled | NiftiRefusal, suffix: str, refusals: list[NiftiRefusal]
) -> bool:
    """Record why ``assembled`` cannot be written, if it cannot; True when refused."""
    if isinstance(assembled, NiftiRefusal):
        refusals.append(assembled)
        return True
    rotation = np.asarray(assembled.affine, dtype=np.float64)[:3, :3]
    if not np.all(np.isfinite(rotation)) or abs(float(np.linalg.det(rotation))) < 1e-12:
        refusals.append(
            NiftiRefusal(
                RefusalReason.INVALID_GEOMETRY,
                "pixel spacing or orientation is zero or not finite: no valid affine exists",
                suffix,
            )
        )
        return True
    return False


def _convert_plain(
    frames: list[Frame],
    datasets: Sequence[Dataset],
    pixels: PixelCache,
    volumes: list[NiftiVolume],
    refusals: list[NiftiRefusal],
) -> None:
    """Instances without patient geometry: one volume per instance, frames in file order."""
    by_source: dict[int, list[Frame]] = defaultdict(list)
    for item in frames:
        by_source[item.source].append(item)
    order = sorted(
        by_source,
        key=lambda s: (
            float(datasets[s].get("InstanceNumber") or 0),
            str(datasets[s].get("SOPInstanceUID", "")),
        ),
    )
    for rank, source in enumerate(order, start=1):
        suffix = f"_i{rank}" if len(order) > 1 else ""
        members = sorted(by_source[source], key=lambda f: f.frame or 0)
        ds = datasets[source]
        spacing = ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing")
        try:
            size = (float(spacing[0]), float(spacing[1])) if spacing else (1.0, 1.0)
        except (TypeError, ValueError, IndexError):
            size = (1.0, 1.0)
        try:
            depth = float(ds.get("SpacingBetweenSlices") or ds.get("SliceThickness") or 1.0)
        except (TypeError, ValueError):
            depth = 1.0
        assembled = assemble_plain(members, pixels, suffix, size, depth if depth > 0 else 1.0)
        if _refused(assembled, suffix, refusals):
            continue
        assert not isinstance(assembled, NiftiRefusal)
        volumes.append(_to_volume(assembled, datasets, suffix, False))


def _to_volume(
    assembled: Assembled, datasets: Sequence[Dataset], suffix: str, multi_echo: bool
) -> NiftiVolume:
    sidecar = build_sidecar(assembled, datasets, multi_echo=multi_echo)
    bits_stored = max(
        int(datasets[f.source].get("BitsStored") or 16) for v in assembled.volumes for f in v
    )
    image = _encode(assembled, sidecar, bits_stored)
    bval, bvec = _diffusion(assembled, image.affine)
    return NiftiVolume(image=image, sidecar=sidecar, suffix=suffix, bval=bval, bvec=bvec)


def _diffusion(
    assembled: Assembled, affine: np.ndarray[Any, Any]
) -> tuple[np.ndarray[Any, Any] | None, np.ndarray[Any, Any] | None]:
    firsts = [volume[0] for volume in assembled.volumes]
    bvalues = [f.bvalue for f in firsts]
    if all(b is None for b in bvalues) or max((b or 0.0) for b in bvalues) <= 0:
        return None, None
    bval = np.array([b or 0.0 for b in bvalues], dtype=np.float64)
    gradients = np.zeros((len(firsts), 3))
    for i, f in enumerate(firsts):
        if f.gradient is not None and bval[i] > 0:
            gradients[i] = f.gradient
    return bval, fsl_bvecs(np.asarray(affine, dtype=np.float64), gradients)


def _encode(assembled: Assembled, sidecar: dict[str, Any], bits_stored: int) -> nib.Nifti1Image:
    data = assembled.data
    n_t, n_z, n_y, n_x = (int(v) for v in data.shape[:4])
    rgb = data.ndim == 5
    slopes, intercepts = assembled.slopes, assembled.intercepts
    uniform = bool(np.all(slopes == slopes.flat[0]) and np.all(intercepts == intercepts.flat[0]))
    if rgb:
        if data.dtype != np.uint8:
            data = data.astype(np.uint8)
        slope, inter = 1.0, 0.0
        out_dtype: np.dtype[Any] = _RGB
    elif uniform:
        slope, inter = float(slopes.flat[0]), float(intercepts.flat[0])
        if (
            data.dtype == np.uint16
            and bits_stored < 16
            and (data.size == 0 or int(data.max()) <= np.iinfo(np.int16).max)
        ):
            data = data.view(np.int16)  # as dcm2niix: int16 is more widely supported
        elif data.dtype == np.bool_:
            data = data.astype(np.uint8)
        out_dtype = data.dtype
    else:
        # rescale in float64, then store float32 (scaling in float32 loses digits to
        # cancellation when the intercept is large)
        scaled, _ = allocate_backed(data.shape, np.dtype(np.float32))
        for t in range(n_t):
            scaled[t] = data[t] * slopes[t][:, None, None] + intercepts[t][:, None, None]
        data, slope, inter = scaled, 1.0, 0.0
        out_dtype = data.dtype
    header: Any = nib.Nifti1Header()  # type: ignore[no-untyped-call]
    header.set_data_dtype(out_dtype)
    shape = (n_x, n_y, n_z, n_t) if n_t > 1 else (n_x, n_y, n_z)
    header.set_data_shape(shape)
    affine = assembled.affine
    # code 1 (scanner anatomical) as dcm2niix; 0 when the instance had no patient geometry
    code = 1 if assembled.anatomical else 0
    header.set_qform(affine, code=code)
    header.set_sform(affine, code=code)
    header.set_xyzt_units("mm", "sec")
    tr = sidecar.get("RepetitionTime")
    header["pixdim"][4] = float(tr) if isinstance(tr, int | float) else 0.0
    header.set_slope_inter(slope, inter)
    phase = sidecar.get("InPlanePhaseEncodingDirectionDICOM")
    if phase in ("ROW", "COL"):
        header.set_dim_info(freq=1 if phase == "ROW" else 0, phase=0 if phase == "ROW" else 1,
                            slice=2)
    header["descrip"] = b"imaging-lake"
    header.set_data_offset(HEADER_SPACE)
    backing = assembled.backing
    if (
        backing is None
        or data.dtype.itemsize != assembled.data.dtype.itemsize
        or not np.shares_memory(data, backing)
    ):
        placed, backing = allocate_backed(data.shape, data.dtype)
        placed[...] = data
    block = header.binaryblock
    backing[: len(block)] = np.frombuffer(block, dtype=np.uint8)
    backing[len(block) : HEADER_SPACE] = 0
    return nib.Nifti1Image.from_stream(MemoryFile(backing))
