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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, cast

import nibabel as nib
import numpy as np
from pydicom.dataset import Dataset

from lake._errors import ExportError
from lake.nifti._derive import derive_acquisition, vendor_of
from lake.nifti._diffusion import diffusion_table
from lake.nifti._geometry import Plane
from lake.nifti._parameters import AcquisitionValue
from lake.nifti._part10 import Part10
from lake.nifti._private import phase_axis as read_phase_axis
from lake.nifti._sidecar import VolumeContext, build_sidecar
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
    instance_order,
    instance_uid,
    is_mosaic,
    uid_of,
)
from lake.nifti._write import MemoryFile, write_volume

__all__ = [
    "NiftiRefusal",
    "NiftiVolume",
    "RefusalReason",
    "series_to_nifti",
    "write_volume",
]

#: nibabel's orientation helpers are untyped.
_ORIENTATIONS: Any = nib.orientations
_COMPONENT_ORDER = {c: i for i, c in enumerate(Component)}
_COMPONENT_NAMES = {
    Component.MAGNITUDE: "magnitude",
    Component.PHASE: "phase",
    Component.REAL: "real",
    Component.IMAGINARY: "imaginary",
}
_RGB = np.dtype([("R", "u1"), ("G", "u1"), ("B", "u1")])


def series_to_nifti(
    datasets: Sequence[Dataset | Part10],
    acquisitions: Sequence[Mapping[str, AcquisitionValue]] | None = None,
) -> tuple[list[NiftiVolume], list[NiftiRefusal]]:
    """Convert the instances of one series into NIfTI volumes.

    Parameters
    ----------
    datasets : sequence of pydicom.dataset.Dataset or Part10
        All instances of one series, in any order, with pixel data (read with
        ``pydicom.dcmread`` or :func:`read_part10`; compressed transfer syntaxes are decoded
        with the installed pydicom/pylibjpeg plugins). The datasets are not modified.
    acquisitions : sequence of mapping, optional
        The acquisition parameters of each dataset (:func:`derive_acquisition` of its
        original header), aligned with ``datasets``. A de-identified copy has lost the
        private elements most of them come from, so the lake passes what it derived at
        ingest. Omitted, they are derived from ``datasets`` (original files).

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
    # Part10 answers every Dataset method the converter calls, with pydicom's values
    # (tests/test_nifti_part10.py): the converter is typed against Dataset alone
    datasets = cast("Sequence[Dataset]", datasets)
    if acquisitions is None:
        acquisitions = [derive_acquisition(ds) for ds in datasets]
    elif len(acquisitions) != len(datasets):
        raise ExportError(
            f"series_to_nifti got {len(acquisitions)} acquisitions for {len(datasets)} "
            "datasets; pass one mapping per dataset, in the same order"
        )
    refusals: list[NiftiRefusal] = []
    series_uids = {uid_of(ds, "SeriesInstanceUID") for ds in datasets
                   if "SeriesInstanceUID" in ds}
    if len(series_uids) > 1:
        return [], [
            NiftiRefusal(
                RefusalReason.MIXED_SERIES,
                f"the {len(datasets)} instances belong to {len(series_uids)} series; "
                "call series_to_nifti once per SeriesInstanceUID",
            )
        ]
    numbers = {_series_number(ds) for ds in datasets}
    if len(numbers) > 1:
        return _split_by_series_number(datasets, acquisitions, numbers)
    unique: list[int] = []
    seen: set[str] = set()
    for index, ds in enumerate(datasets):
        uid = instance_uid(ds) or f"#{index}"
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
    left_out = set(no_pixels)
    images = [i for i in unique if i not in left_out]
    mosaic_frames: list[Frame] = []
    frames: list[Frame] = []
    planes: dict[tuple[Any, ...], Plane] = {}
    rescales: dict[bytes, tuple[float | None, float | None]] = {}
    for i in images:
        mosaic = is_mosaic(datasets[i], acquisitions[i])
        described = frames_of(datasets[i], i, acquisitions[i], mosaic, planes, rescales)
        if mosaic and "PerFrameFunctionalGroupsSequence" not in datasets[i]:
            mosaic_frames.extend(described)
        else:
            frames.extend(described)
    series = _Series(datasets, acquisitions, pixels, vendor_of(datasets[images[0]])
                     if images else None)
    volumes: list[NiftiVolume] = []
    if mosaic_frames:
        _convert_groups(mosaic_frames, series, True, volumes, refusals)
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
            _convert_groups(frames, series, False, volumes, refusals)
        elif not geometric:
            _convert_plain(frames, series, volumes, refusals)
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


def _series_number(ds: Dataset | Part10) -> int | None:
    if isinstance(ds, Part10):
        number = ds.number("SeriesNumber")  # a plain IS: int() of its text, as pydicom's
        if number is not None:
            return int(number)
    value = ds.get("SeriesNumber")
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _split_by_series_number(
    datasets: Sequence[Dataset],
    acquisitions: Sequence[Mapping[str, AcquisitionValue]],
    numbers: set[int | None],
) -> tuple[list[NiftiVolume], list[NiftiRefusal]]:
    """One SeriesInstanceUID holding several SeriesNumbers: converted apart, as dcm2niix
    does, each part suffixed ``_s<SeriesNumber>`` (``_sx`` when it has none)."""
    volumes: list[NiftiVolume] = []
    refusals: list[NiftiRefusal] = []
    for number in sorted(numbers, key=lambda n: (n is None, n or 0)):
        label = "x" if number is None else (str(number) if number >= 0 else f"m{-number}")
        part = [i for i, ds in enumerate(datasets) if _series_number(ds) == number]
        got, refused = series_to_nifti([datasets[i] for i in part],
                                       [acquisitions[i] for i in part])
        volumes += [replace(v, suffix=f"_s{label}{v.suffix}") for v in got]
        refusals += [replace(r, suffix=f"_s{label}{r.suffix}") for r in refused]
    return volumes, refusals


@dataclass(frozen=True)
class _Series:
    """The inputs every part of one conversion shares."""

    datasets: Sequence[Dataset]
    acquisitions: Sequence[Mapping[str, Any]]
    pixels: PixelCache
    vendor: str | None


def _echo_numbers(frames: list[Frame], datasets: Sequence[Dataset]) -> dict[float | None, int]:
    """Echo number of each echo key: EchoNumbers when every frame has one, else the order of
    first appearance (instance number, frame), as dcm2niix numbers echoes it meets."""
    keys = {f.echo for f in frames if f.echo is not None}
    numbered = all(f.echo_numbered for f in frames if f.echo is not None) and all(
        float(e).is_integer() and e > 0 for e in keys
    )
    if numbered:
        return {e: int(e) for e in keys if e is not None}
    appearance = sorted(
        frames,
        key=lambda f: (instance_order(datasets[f.source]), f.source, f.frame or 0),
    )
    numbers: dict[float | None, int] = {}
    for item in appearance:
        if item.echo is not None and item.echo not in numbers:
            numbers[item.echo] = len(numbers) + 1
    return numbers


def _component_suffix(component: Component, field_map: bool) -> str:
    if field_map:
        return "_fieldmaphz"
    return component.value


def _convert_groups(
    frames: list[Frame],
    series: _Series,
    mosaic: bool,
    volumes: list[NiftiVolume],
    refusals: list[NiftiRefusal],
) -> None:
    datasets = series.datasets
    groups: dict[tuple[Component, bool, float | None], list[Frame]] = defaultdict(list)
    for item in frames:
        groups[(item.component, item.field_map_hz, item.echo)].append(item)
    numbers = _echo_numbers(frames, datasets)
    multi_echo = len(numbers) > 1
    components_of: dict[int, set[Component]] = defaultdict(set)
    for item in frames:
        components_of[item.source].add(item.component)
    for component, field_map, echo in sorted(
        groups,
        key=lambda k: (_COMPONENT_ORDER[k[0]], k[1], numbers.get(k[2], 0)),
    ):
        members = groups[(component, field_map, echo)]
        number = numbers.get(echo)
        write_echo = number is not None and (multi_echo or number > 1)
        suffix = (f"_e{number}" if write_echo else "") + _component_suffix(component, field_map)
        if mosaic:
            assembled = assemble_mosaics(members, datasets, series.acquisitions, series.pixels,
                                         suffix)
        else:
            assembled = assemble_stack(members, datasets, series.pixels, suffix)
        if _refused(assembled, suffix, refusals):
            continue
        assert not isinstance(assembled, NiftiRefusal)
        context = VolumeContext(
            acquisitions=series.acquisitions,
            vendor=series.vendor,
            echo_number=number if write_echo else None,
            component=_COMPONENT_NAMES[component],
            field_map_hz=field_map,
            single_component=all(len(components_of[f.source]) == 1 for f in members),
        )
        volumes.append(_to_volume(assembled, series, suffix, context))


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
    series: _Series,
    volumes: list[NiftiVolume],
    refusals: list[NiftiRefusal],
) -> None:
    """Instances without patient geometry: one volume per instance, frames in file order."""
    datasets, pixels = series.datasets, series.pixels
    by_source: dict[int, list[Frame]] = defaultdict(list)
    for item in frames:
        by_source[item.source].append(item)
    order = sorted(
        by_source,
        key=lambda s: (
            instance_order(datasets[s]),
            instance_uid(datasets[s]),
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
        context = VolumeContext(series.acquisitions, series.vendor, None,
                                _COMPONENT_NAMES[members[0].component], False, True)
        volumes.append(_to_volume(assembled, series, suffix, context))


def _to_volume(
    assembled: Assembled, series: _Series, suffix: str, context: VolumeContext
) -> NiftiVolume:
    datasets = series.datasets
    first = datasets[assembled.volumes[0][0].source]
    plane = assembled.volumes[0][0].plane
    if plane is None and assembled.mosaic:
        plane = _mosaic_plane(assembled, first)
    table = diffusion_table(
        assembled.volumes, series.acquisitions, series.vendor, assembled.affine, plane,
        read_phase_axis(first), len({f.source for v in assembled.volumes for f in v}),
    )
    if table is not None and len(table.keep) < len(assembled.volumes):
        assembled = _keep_volumes(assembled, table.keep)
    sidecar = build_sidecar(assembled, datasets, context)
    if _is_3d_acquisition(first) and len(assembled.volumes) == 1 \
            and len(assembled.volumes[0]) > 1:
        assembled = _closest_canonical(assembled)
    bits_stored = max(
        int(datasets[f.source].get("BitsStored") or 16) for v in assembled.volumes for f in v
    )
    image = _encode(assembled, sidecar, bits_stored)
    if table is None:
        return NiftiVolume(image=image, sidecar=sidecar, suffix=suffix)
    return NiftiVolume(image=image, sidecar=sidecar, suffix=suffix, bval=table.bval,
                       bvec=table.bvec)


def _is_3d_acquisition(ds: Dataset) -> bool:
    return str(ds.get("MRAcquisitionType") or "").upper() == "3D"


def _closest_canonical(assembled: Assembled) -> Assembled:
    """A 3D acquisition reoriented to the closest RAS voxel order, as dcm2niix does.

    Left as it is when the rescale differs between slices (it would have to follow them).
    """
    slopes, intercepts = assembled.slopes, assembled.intercepts
    if not (np.all(slopes == slopes.flat[0]) and np.all(intercepts == intercepts.flat[0])):
        return assembled
    affine = np.asarray(assembled.affine, dtype=np.float64)
    orientation = _ORIENTATIONS.io_orientation(affine)
    if np.array_equal(orientation, [[0, 1], [1, 1], [2, 1]]):
        return assembled
    volume = assembled.data[0]
    xyz = np.transpose(volume, (2, 1, 0, *range(3, volume.ndim)))
    turned = _ORIENTATIONS.apply_orientation(xyz, orientation)
    new_affine = affine @ _ORIENTATIONS.inv_ornt_aff(orientation, xyz.shape[:3])
    zyx = np.transpose(turned, (2, 1, 0, *range(3, turned.ndim)))
    data, backing = allocate_backed((1, *zyx.shape), assembled.data.dtype)
    data[0] = zyx
    n_z = int(zyx.shape[0])
    return Assembled(
        new_affine, data, np.full((1, n_z), slopes.flat[0]),
        np.full((1, n_z), intercepts.flat[0]), assembled.volumes,
        mosaic=assembled.mosaic, slice_thickness_fallback=assembled.slice_thickness_fallback,
        anatomical=assembled.anatomical, backing=backing, reoriented=True,
        below_int16=assembled.below_int16,
    )


def _mosaic_plane(assembled: Assembled, ds: Dataset) -> Plane | None:
    """The in-plane geometry of a mosaic tile (the frame's plane describes the whole mosaic)."""
    iop = ds.get("ImageOrientationPatient")
    spacing = ds.get("PixelSpacing")
    if iop is None or spacing is None or len(iop) != 6 or len(spacing) != 2:
        return None
    return Plane(np.array([float(v) for v in iop[:3]]), np.array([float(v) for v in iop[3:]]),
                 float(spacing[0]), float(spacing[1]), int(assembled.data.shape[2]),
                 int(assembled.data.shape[3]))


def _keep_volumes(assembled: Assembled, keep: list[int]) -> Assembled:
    """``assembled`` without the volumes not in ``keep`` (derived DWI trace/ADC volumes)."""
    data, backing = allocate_backed((len(keep), *assembled.data.shape[1:]),
                                    assembled.data.dtype)
    for t, index in enumerate(keep):
        data[t] = assembled.data[index]
    return Assembled(
        assembled.affine, data, assembled.slopes[keep], assembled.intercepts[keep],
        [assembled.volumes[i] for i in keep], mosaic=assembled.mosaic,
        slice_thickness_fallback=assembled.slice_thickness_fallback,
        anatomical=assembled.anatomical, backing=backing, below_int16=assembled.below_int16,
    )


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
            # known without reading every voxel when the unused high bits were cleared
            and (data.size == 0 or assembled.below_int16
                 or int(data.max()) <= np.iinfo(np.int16).max)
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
    if phase in ("ROW", "COL") and not assembled.reoriented:
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
