"""Pixel assembly for NIfTI export: frames out of datasets, stacks and mosaics into arrays.

A *frame* is one 2D image: a single-frame instance, or one frame of a multi-frame instance
(its attributes looked up in the per-frame, then shared functional groups). Frames are
grouped into stacks (same image component and echo), sorted by position along the slice
normal, checked for gaps/tilt/uneven spacing and, where several frames share a location,
split into volumes. Mosaics (Siemens, UIH) are unpacked with the tile layout derived at ingest.

The output array is laid out C-contiguous as ``(t, z, y, x[, rgb])``, which is NIfTI's
Fortran ``(x, y, z, t)`` order byte for byte, with ``y`` the DICOM row index reversed.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import NDArray
from pydicom.dataset import Dataset
from pydicom.pixels.decoders.base import Decoder, get_decoder
from pydicom.tag import Tag
from pydicom.uid import UID, JPEGLSLossless, JPEGLSNearLossless

from lake.nifti._decode import decode_past_panic
from lake.nifti._geometry import (
    SAME_POSITION_MM,
    Plane,
    SpacingVerdict,
    check_stack,
    slice_affine_ras,
    tile_affine_ras,
)
from lake.nifti._part10 import Part10
from lake.nifti._types import NiftiRefusal, RefusalReason

#: Acquisition parameters of one instance (see :mod:`lake.nifti._parameters`).
Acquisition = Mapping[str, Any]

__all__ = [
    "HEADER_SPACE",
    "Assembled",
    "Component",
    "Frame",
    "PixelCache",
    "allocate_backed",
    "assemble_mosaics",
    "assemble_plain",
    "assemble_stack",
    "attribute",
    "frames_of",
    "is_mosaic",
]

FloatArray = NDArray[np.float64]

_ENHANCED_MACROS = (
    "PerFrameFunctionalGroupsSequence",
    "SharedFunctionalGroupsSequence",
)


class Component(StrEnum):
    """The complex component an image holds; the value is its file-name suffix."""

    MAGNITUDE = ""
    PHASE = "_ph"
    REAL = "_real"
    IMAGINARY = "_imaginary"


@dataclass(frozen=True, eq=False)
class Frame:
    """One 2D image of a series, with what is needed to place and order it.

    Parameters
    ----------
    source : int
        Index of the dataset in the caller's sequence.
    frame : int or None
        Frame index within a multi-frame dataset, ``None`` for single-frame.
    plane : Plane or None
        In-plane geometry, ``None`` when the instance has no patient geometry.
    position : numpy.ndarray or None
        ``ImagePositionPatient`` (LPS).
    slope, intercept : float
        Rescale of this frame.
    echo : float or None
        Grouping key for echoes (EchoNumbers, else echo time).
    echo_time : float or None
        Echo time in ms.
    component : Component
        Magnitude, phase, real or imaginary.
    order : tuple
        Temporal sort key of frames that share a location.
    identity : tuple
        Values every frame of one volume must share (temporal index, b-value...).
    bvalue : float or None
        Diffusion b-value (s/mm²).
    gradient : numpy.ndarray or None
        Diffusion gradient direction (LPS).
    echo_numbered : bool
        Whether ``echo`` is an EchoNumbers value (else an echo time).
    slice_time : float or None
        Acquisition time of this slice (s, series-relative), from the acquisition
        parameters.
    field_map_hz : bool
        A real frame holding a B0 field map in Hz (Philips).
    """

    source: int
    frame: int | None
    plane: Plane | None
    position: FloatArray | None
    slope: float
    intercept: float
    echo: float | None
    echo_time: float | None
    component: Component
    order: tuple[Any, ...]
    identity: tuple[Any, ...]
    bvalue: float | None = None
    gradient: FloatArray | None = None
    echo_numbered: bool = False
    slice_time: float | None = None
    field_map_hz: bool = False


@dataclass(eq=False)
class Assembled:
    """A stack turned into voxels, before NIfTI encoding.

    Parameters
    ----------
    affine : numpy.ndarray
        RAS affine.
    data : numpy.ndarray
        Raw stored values, C order ``(t, z, y, x)`` or ``(t, z, y, x, 3)`` for RGB.
    slopes, intercepts : numpy.ndarray
        ``(t, z)`` rescale of each frame.
    volumes : list of list of Frame
        ``volumes[t]`` are the frames of volume ``t`` in slice order (one per mosaic).
    mosaic : bool
        Whether the volumes were unpacked from mosaics (one frame per volume, tiles in
        slice order).
    slice_thickness_fallback : bool
        Whether the slice spacing came from a DICOM attribute rather than positions.
    anatomical : bool
        Whether the affine comes from patient geometry (else it only carries voxel sizes).
    backing : numpy.ndarray, optional
        The byte buffer ``data`` lives in, ``HEADER_SPACE`` bytes from its start.
    reoriented : bool
        Whether the voxel axes were permuted away from the DICOM pixel matrix (3D
        acquisitions), so that row/column no longer name voxel axes.
    below_int16 : bool
        Whether every voxel is known to be below 2**15 without looking: an unsigned stack
        whose every source had its bits above a BitsStored of at most 15 cleared
        (:meth:`PixelCache.correct_stack_in_place`). False says nothing.
    """

    affine: FloatArray
    data: NDArray[Any]
    slopes: FloatArray
    intercepts: FloatArray
    volumes: list[list[Frame]]
    mosaic: bool = False
    slice_thickness_fallback: bool = False
    anatomical: bool = True
    backing: NDArray[np.uint8] | None = None
    reoriented: bool = False
    below_int16: bool = False


# --------------------------------------------------------------------------- attributes


def attribute(ds: Dataset, frame: int | None, macro: str, keyword: str) -> Any:
    """Look an attribute up the way a multi-frame object defines it.

    Per-frame functional group ``macro`` of ``frame``, then the shared functional group,
    then the top level of the dataset.

    Parameters
    ----------
    ds : pydicom.dataset.Dataset
        The instance.
    frame : int or None
        Frame index; ``None`` looks at the top level only.
    macro : str
        Keyword of the functional group sequence, e.g. ``"PlanePositionSequence"``.
    keyword : str
        Attribute keyword, e.g. ``"ImagePositionPatient"``.

    Returns
    -------
    object
        The value, or ``None`` when absent or empty.
    """
    if frame is not None:
        per_frame = ds.get("PerFrameFunctionalGroupsSequence")
        per_item = per_frame[frame] if per_frame is not None and frame < len(per_frame) else None
        shared = ds.get("SharedFunctionalGroupsSequence")
        shared_item = shared[0] if shared is not None and len(shared) > 0 else None
        if per_item is not None:
            value = _from_macro(per_item, macro, keyword)
            if value is not None:
                return value
        if shared_item is not None:
            value = _from_macro(shared_item, macro, keyword)
            if value is not None:
                return value
    element = ds.get(keyword)
    if element is None or element == "":
        return None
    return element


class FrameLookup:
    """:func:`attribute` for every frame of one object, with less work per frame.

    ``look.at(frame)`` selects a frame (``None``: the top level only, as :func:`attribute`
    with ``frame=None``); ``look(macro, keyword)`` then gives what
    ``attribute(ds, frame, macro, keyword)`` gives. A value of the frame's per-frame
    functional groups comes from :meth:`Part10.item_value` (converted once per batch for
    macro items whose bytes repeat, most of them), or for pydicom's datasets from the
    macro's item fetched once per frame; what the shared functional group and the top level
    give (the same for every frame) is looked up once per object.
    """

    __slots__ = ("_ds", "_fallback", "_frame", "_macros", "_matrix", "_per_frame",
                 "_per_item", "_shared_item")

    def __init__(self, ds: Dataset) -> None:
        self._ds = ds
        self._per_frame = ds.get("PerFrameFunctionalGroupsSequence")
        shared = ds.get("SharedFunctionalGroupsSequence")
        self._shared_item = shared[0] if shared is not None and len(shared) > 0 else None
        self._fallback: dict[tuple[str, str], Any] = {}
        self._frame: int | None = None
        self._per_item: Dataset | Part10 | None = None
        self._macros: dict[str, Any] = {}
        self._matrix: tuple[Any, Any] | None = None

    @property
    def matrix(self) -> tuple[Any, Any]:
        """``(ds.get("Rows"), ds.get("Columns"))`` of the object, read once."""
        if self._matrix is None:
            self._matrix = (self._ds.get("Rows"), self._ds.get("Columns"))
        return self._matrix

    def at(self, frame: int | None) -> FrameLookup:
        """Look at ``frame`` from now on; this lookup."""
        self._frame = frame
        per_frame = self._per_frame
        self._per_item = (per_frame[frame] if frame is not None and per_frame is not None
                          and frame < len(per_frame) else None)
        self._macros = {}
        return self

    def __call__(self, macro: str, keyword: str) -> Any:
        per_item = self._per_item
        if isinstance(per_item, Part10):
            value = per_item.item_value(macro, keyword)
            if value is not None:
                return value
        elif per_item is not None:
            item = self._macros.get(macro, _ABSENT)
            if item is _ABSENT:
                seq = per_item.get(macro)
                item = None if seq is None or len(seq) == 0 else seq[0]
                self._macros[macro] = item
            if item is not None:
                value = item.get(keyword)
                if value is not None and value != "":
                    return value
        if self._frame is None:
            element = self._ds.get(keyword)
            return None if element is None or element == "" else element
        key = (macro, keyword)
        if key in self._fallback:
            return self._fallback[key]
        value = None
        if self._shared_item is not None:
            value = _from_macro(self._shared_item, macro, keyword)
        if value is None:
            element = self._ds.get(keyword)
            value = None if element is None or element == "" else element
        self._fallback[key] = value
        return value


    def numbers(self, macro: str, keyword: str) -> list[float] | None:
        """What this lookup gives for ``(macro, keyword)`` as floats, when a
        :class:`Part10` holds it as plain numbers (:meth:`Part10.item_numbers` for the
        frame's per-frame item, :meth:`Part10.numbers` at the top level): read from bytes,
        not converted by pydicom. None when the caller must convert ``look(macro,
        keyword)`` itself (pydicom's datasets, another notation, the value not in the
        frame's item: the shared group and the top level answer then, once per object)."""
        per_item = self._per_item
        if isinstance(per_item, Part10):
            return per_item.item_numbers(macro, keyword)
        if per_item is None and self._frame is None and isinstance(self._ds, Part10):
            return self._ds.numbers(keyword)
        return None


_ABSENT = object()


def _look_floats(look: FrameLookup, macro: str, keyword: str, n: int) -> FloatArray | None:
    """``_floats(look(macro, keyword), n)``, from the bytes when :meth:`FrameLookup.numbers`
    reads them (one value is pydicom's scalar, which ``_floats`` does not take)."""
    return _floats_from(look.numbers(macro, keyword), look, macro, keyword, n)


def _floats_from(numbers: list[float] | None, look: FrameLookup, macro: str, keyword: str,
                 n: int) -> FloatArray | None:
    """:func:`_look_floats` of ``numbers`` already read by :meth:`FrameLookup.numbers`."""
    if numbers is None:
        return _floats(look(macro, keyword), n)
    return np.array(numbers, dtype=np.float64) if len(numbers) == n > 1 else None


def _look_float(look: FrameLookup, macro: str, keyword: str) -> float | None:
    """``_float(look(macro, keyword))``, from the bytes when :meth:`FrameLookup.numbers`
    reads them."""
    numbers = look.numbers(macro, keyword)
    return _float(look(macro, keyword)) if numbers is None else numbers[0]


def _from_macro(item: Dataset, macro: str, keyword: str) -> Any:
    seq = item.get(macro)
    if seq is None or len(seq) == 0:
        return None
    value = seq[0].get(keyword)
    if value is None or value == "":
        return None
    return value


def _float(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, list | tuple) or (
        hasattr(value, "__getitem__") and not isinstance(value, str)
    ):
        if len(value) == 0:
            return None
        value = value[0]
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _number(ds: Dataset | Part10, keyword: str) -> float | None:
    """``_float(ds.get(keyword))``; a Part10 reads a plain IS or DS number from its bytes."""
    if isinstance(ds, Part10):
        number = ds.number(keyword)
        if number is not None:
            return number
    return _float(ds.get(keyword))


def uid_of(ds: Dataset | Part10, keyword: str) -> str:
    """``str(ds.get(keyword, ""))`` for a UID attribute; a Part10 reads a valid UID from its
    bytes."""
    if isinstance(ds, Part10):
        uid = ds.uid(keyword)
        if uid is not None:
            return uid
    return str(ds.get(keyword, ""))


def instance_uid(ds: Dataset | Part10) -> str:
    """``str(ds.get("SOPInstanceUID", ""))`` (:func:`uid_of`)."""
    return uid_of(ds, "SOPInstanceUID")


def instance_order(ds: Dataset | Part10) -> float:
    """``float(ds.get("InstanceNumber") or 0)``; a Part10 reads a plain IS from its bytes."""
    if isinstance(ds, Part10):
        number = ds.number("InstanceNumber")
        if number is not None:
            return number
    return float(ds.get("InstanceNumber") or 0)


def _floats(value: Any, n: int) -> FloatArray | None:
    if value is None:
        return None
    try:
        items = [float(v) for v in value]
    except (TypeError, ValueError):
        return None
    # checked in Python: for a handful of numbers numpy's checks cost more than the list
    if len(items) != n or not all(map(math.isfinite, items)):
        return None
    return np.array(items, dtype=np.float64)


def _rounded(values: FloatArray) -> tuple[float, ...]:
    """``tuple(np.round(values, 4).tolist())`` of finite values, in Python floats: numpy
    multiplies by 10.0**4, rounds half to even (``rint``, which keeps the sign of a zero;
    from 2**52 on every float is a whole number) and divides by 10.0**4, each in float64;
    ``round`` of a float rounds half to even (a call of numpy's costs more than a frame's
    three numbers)."""
    return tuple(
        (scaled if abs(scaled) >= _WHOLE else math.copysign(float(round(scaled)), scaled))
        / 10000.0
        for scaled in (value * 10000.0 for value in values.tolist())
    )


_WHOLE = 2.0**52


def _dicom_time_seconds(value: Any) -> float | None:
    """``HHMMSS.frac`` (or a DT's time part) to seconds since midnight."""
    if value is None:
        return None
    text = str(value).strip()
    if len(text) >= 14 and text[:8].isdigit():  # DT: YYYYMMDDHHMMSS...
        text = text[8:]
    text = text.split("+")[0].split("-")[0]
    digits = text.split(".")[0]
    if not digits.isdigit() or len(digits) < 2:
        return None
    hours = int(digits[0:2])
    minutes = int(digits[2:4]) if len(digits) >= 4 else 0
    seconds = int(digits[4:6]) if len(digits) >= 6 else 0
    frac = float("0." + text.split(".")[1]) if "." in text and text.split(".")[1].isdigit() else 0
    return hours * 3600.0 + minutes * 60.0 + seconds + frac


def is_enhanced(ds: Dataset) -> bool:
    """Whether ``ds`` carries per-frame functional groups."""
    return "PerFrameFunctionalGroupsSequence" in ds or "SharedFunctionalGroupsSequence" in ds


def number_of_frames(ds: Dataset) -> int:
    """``NumberOfFrames``, 1 when absent."""
    value = ds.get("NumberOfFrames")
    try:
        return max(1, int(value)) if value not in (None, "") else 1
    except (TypeError, ValueError):
        return 1


def is_mosaic(ds: Dataset, acquisition: Acquisition) -> bool:
    """Whether ``ds`` stores its slices as tiles: a Siemens mosaic (ImageType MOSAIC) or a
    UIH grid (known from its acquisition parameters)."""
    if "mosaic_tiles" in acquisition:
        return True
    image_type = ds.get("ImageType")
    return image_type is not None and any(str(v).upper() == "MOSAIC" for v in image_type)


def _item(values: Any, index: int, count: int) -> Any:
    """The ``index``-th of ``count`` per-frame values (a list of one serves every frame)."""
    if not isinstance(values, list) or not values:
        return None
    if len(values) == count:
        return values[index]
    return values[0] if len(values) == 1 else None


_COMPONENT_OF = {"magnitude": None, "phase": "PHASE", "real": "REAL", "imaginary": "IMAGINARY"}


def _component(ds: Dataset, frame: int | None, look: FrameLookup) -> Component:
    complex_part = look("MRImageFrameTypeSequence", "ComplexImageComponent")
    values: list[str] = []
    if complex_part is not None:
        values.append(str(complex_part).upper())
    image_type = ds.get("ImageType")
    if frame is not None:
        frame_type = look("MRImageFrameTypeSequence", "FrameType")
        if frame_type is not None:
            image_type = frame_type
    if image_type is not None:
        kinds = [str(v).upper() for v in image_type]
        values.extend(kinds)
        if len(kinds) > 2:
            values.append({"M": "MAGNITUDE", "P": "PHASE", "R": "REAL", "I": "IMAGINARY"}.get(
                kinds[2], ""))
    for value in values:
        if value == "PHASE":
            return Component.PHASE
        if value == "REAL":
            return Component.REAL
        if value == "IMAGINARY":
            return Component.IMAGINARY
    return Component.MAGNITUDE


#: The key of a plane in a series' memo (:func:`_plane`): the six cosines and two spacings
#: as float64 bytes (-0.0 is not 0.0 there: each frame has the cosines its numbers give).
_PLANE_KEY = struct.Struct("<8d")


def _plane(ds: Dataset, look: FrameLookup, planes: dict[tuple[Any, ...], Plane] | None = None,
           ) -> tuple[Plane | None, FloatArray | None]:
    """The frame's plane and position; ``planes`` (the series' memo) hands out one
    :class:`Plane` per orientation, pixel spacing and matrix read from bytes (the frames of
    a series mostly share one: built and compared once, not per frame)."""
    iop_numbers = look.numbers("PlaneOrientationSequence", "ImageOrientationPatient")
    iop: FloatArray | None = None
    if iop_numbers is None:
        iop = _floats(look("PlaneOrientationSequence", "ImageOrientationPatient"), 6)
        oriented = iop is not None
    else:  # what _floats_from gives is made only when the memo has no plane for it
        oriented = len(iop_numbers) == 6
    ipp = _look_floats(look, "PlanePositionSequence", "ImagePositionPatient", 3)
    if not oriented or ipp is None:
        return None, None
    spacing_numbers = look.numbers("PixelMeasuresSequence", "PixelSpacing")
    key = None
    if planes is not None and iop_numbers is not None and spacing_numbers is not None \
            and len(spacing_numbers) == 2:
        key = (_PLANE_KEY.pack(*iop_numbers, *spacing_numbers), *look.matrix)
        known = planes.get(key)
        if known is not None:
            return known, ipp
    if iop is None:
        iop = np.array(iop_numbers, dtype=np.float64)
    spacing = _floats_from(spacing_numbers, look, "PixelMeasuresSequence", "PixelSpacing", 2)
    if spacing is None:
        spacing = _floats(ds.get("ImagerPixelSpacing"), 2)
    if spacing is None or spacing[0] <= 0 or spacing[1] <= 0:  # np.any, without its set-up
        spacing = np.ones(2)
    plane = Plane(
        row_cosine=iop[:3],
        col_cosine=iop[3:],
        row_spacing=float(spacing[0]),
        col_spacing=float(spacing[1]),
        rows=int(ds.Rows),
        cols=int(ds.Columns),
    )
    if key is not None:
        assert planes is not None
        planes[key] = plane
    return plane, ipp


#: The key of a rescale in a series' memo (:func:`_philips_precise`): scale slope, slope and
#: intercept as float64 bytes (-0.0 is not 0.0 there), and which of the two are absent.
_RESCALE_KEY = struct.Struct("<3d??")


def _philips_precise(
    acquisition: Acquisition, index: int, count: int, slope: float | None,
    intercept: float | None,
    rescales: dict[bytes, tuple[float | None, float | None]] | None = None,
) -> tuple[float | None, float | None]:
    """Philips floating-point values, as dcm2niix computes them (in float32).

    Philips displays ``stored x RescaleSlope + RescaleIntercept``; the quantitative value
    divides that by ``RescaleSlope x scale slope`` (2005,100E). dcm2niix writes the result
    as ``scl_slope = P(1) - P(0)`` and ``scl_inter = P(0)``, each computed in float32.
    ``rescales`` (the series' memo) keeps the result by the bytes of the three numbers:
    the frames of a series mostly share one rescale, and the float32 arithmetic costs
    about 5 us a frame.
    """
    scale = _float(_item(acquisition.get("scale_slopes"), index, count))
    if scale is None or scale == 0:
        return slope, intercept
    if rescales is None:
        return _precise(scale, slope, intercept)
    key = _RESCALE_KEY.pack(scale, 1.0 if slope is None else slope,
                            0.0 if intercept is None else intercept, slope is None,
                            intercept is None)
    known = rescales.get(key)
    if known is None:
        known = rescales[key] = _precise(scale, slope, intercept)
    return known


def _precise(scale: float, slope: float | None,
             intercept: float | None) -> tuple[float | None, float | None]:
    """:func:`_philips_precise` of a scale slope that is a number other than 0."""
    rs = np.float32(1.0 if slope is None else slope)
    ri = np.float32(0.0 if intercept is None else intercept)
    denominator = np.float32(rs * np.float32(scale))
    if denominator == 0:
        return slope, intercept
    at_zero = np.float32(np.float32(np.float32(0.0) * rs + ri) / denominator)
    at_one = np.float32(np.float32(np.float32(1.0) * rs + ri) / denominator)
    if at_zero == at_one:
        return slope, intercept
    return float(np.float32(at_one - at_zero)), float(at_zero)


def _is_field_map(ds: Dataset, frame: int | None, look: FrameLookup) -> bool:
    """A real image that is a B0 field map in Hz (dcm2niix's FIELDMAPHZ)."""
    kinds = [str(v).upper() for v in (ds.get("ImageType") or [])]
    if frame is not None:
        frame_type = look("MRImageFrameTypeSequence", "FrameType")
        kinds += [str(v).upper() for v in (frame_type or [])]
    joined = "_".join(kinds)
    return ("B0" in joined and "MAP" in joined) or "FIELD_MAP" in joined


def frames_of(ds: Dataset, source: int, acquisition: Acquisition,
              mosaic: bool, planes: dict[tuple[Any, ...], Plane] | None = None,
              rescales: dict[bytes, tuple[float | None, float | None]] | None = None,
              ) -> list[Frame]:
    """Describe every frame of ``ds``.

    Parameters
    ----------
    ds : pydicom.dataset.Dataset
        One instance of the series.
    source : int
        Its index in the caller's sequence.
    acquisition : mapping
        Its acquisition parameters (derived from the original header).
    mosaic : bool
        ``is_mosaic(ds, acquisition)`` (the caller has it already).
    planes : dict, optional
        The series' memo of planes (one dict for every instance of the series): frames
        of one orientation, spacing and matrix share one :class:`Plane`.
    rescales : dict, optional
        The series' memo of Philips precise rescales (:func:`_philips_precise`).

    Returns
    -------
    list of Frame
        One per frame (one for a single-frame instance).
    """
    enhanced = is_enhanced(ds)
    n = number_of_frames(ds)
    indices: list[int | None] = list(range(n)) if enhanced or n > 1 else [None]
    instance = _number(ds, "InstanceNumber") or 0.0
    b_values = acquisition.get("diffusion_b_values")
    gradients = acquisition.get("diffusion_gradients")
    components = acquisition.get("complex_components")
    times = acquisition.get("slice_timing")
    echo_fallback = acquisition.get("echo_number")
    uid = instance_uid(ds)
    frames = []
    look = FrameLookup(ds)
    for index in indices:
        lookup = index if enhanced else None
        look.at(lookup)
        plane, position = _plane(ds, look, planes)
        if not enhanced and n > 1:
            plane, position = None, None  # classic multi-frame: no per-frame positions
        slope = _look_float(look, "PixelValueTransformationSequence", "RescaleSlope")
        intercept = _look_float(look, "PixelValueTransformationSequence",
                                "RescaleIntercept")
        echo_time = _look_float(look, "MREchoSequence", "EffectiveEchoTime")
        if echo_time is None:
            echo_time = _number(ds, "EchoTime")
        echo_number = None if enhanced else _number(ds, "EchoNumbers")
        if echo_number is None and isinstance(echo_fallback, int):
            echo_number = float(echo_fallback)
        echo = echo_number if echo_number is not None else echo_time
        position_in = index if index is not None else 0
        bvalue = _float(_item(b_values, position_in, n))
        gradient = None
        if isinstance(gradients, list) and len(gradients) in (3, 3 * n):
            offset = 3 * position_in if len(gradients) == 3 * n else 0
            gradient = _floats(gradients[offset : offset + 3], 3)
        named = _item(components, position_in, n)
        if isinstance(named, str):
            # derived from the original header: what the stored one says is not needed
            component = {"phase": Component.PHASE, "real": Component.REAL,
                         "imaginary": Component.IMAGINARY}.get(named, Component.MAGNITUDE)
        else:
            component = _component(ds, lookup, look)
        slice_time = _float(_item(times, position_in, n)) if not mosaic else None
        slope, intercept = _philips_precise(acquisition, position_in, n, slope, intercept,
                                            rescales)
        field_map = component is Component.REAL and _is_field_map(ds, lookup, look)
        if enhanced:
            temporal = _look_float(look, "FrameContentSequence", "TemporalPositionIndex")
            acquired = _dicom_time_seconds(
                look("FrameContentSequence", "FrameAcquisitionDateTime")
            )
            trigger = _look_float(look, "CardiacSynchronizationSequence",
                                  "NominalCardiacTriggerDelayTime")
            acquisition_number = None
        else:
            temporal = _number(ds, "TemporalPositionIdentifier")
            acquired = _dicom_time_seconds(ds.get("AcquisitionTime"))
            trigger = _number(ds, "TriggerTime")
            acquisition_number = _number(ds, "AcquisitionNumber")
        b_key = None if bvalue is None else round(bvalue, 3)
        g_key = None if gradient is None else _rounded(gradient)
        order = (
            temporal or 0.0,
            acquisition_number or 0.0,
            trigger or 0.0,
            acquired or 0.0,
            instance,
            b_key if b_key is not None else -1.0,
            g_key or (0.0, 0.0, 0.0),
            uid,
            index if index is not None else 0,
        )
        identity = (temporal, acquisition_number, b_key, g_key)
        frames.append(
            Frame(
                source=source,
                frame=index,
                plane=plane,
                position=position,
                slope=1.0 if slope is None else slope,
                intercept=0.0 if intercept is None else intercept,
                echo=echo,
                echo_time=echo_time,
                component=component,
                order=order,
                identity=identity,
                bvalue=bvalue,
                gradient=gradient,
                echo_numbered=echo_number is not None,
                slice_time=slice_time,
                field_map_hz=field_map,
            )
        )
    return frames


# --------------------------------------------------------------------------- pixels


def _clear_unused_bits(array: NDArray[Any], fix: tuple[int, int, bool]) -> None:
    """Clear (unsigned) or sign-extend (signed) the bits above BitsStored, in place.

    ``fix`` is the SOURCE's (BitsAllocated, BitsStored, signed). ``array`` may be wider than
    the source (a stack mixing PixelRepresentation or BitsAllocated is allocated in their
    ``np.result_type``: uint16 + int16 -> int32), so the correction is made from BitsStored,
    not from the output's width: keep the low BitsStored bits, then sign-extend from bit
    BitsStored - 1 if signed. When the output is the source's width, the two shifts (signed)
    or the one mask (unsigned) of the same width give the same values in fewer passes.
    """
    allocated, stored, signed = fix
    if array.dtype.itemsize * 8 == allocated:
        spare = allocated - stored
        if signed:
            np.left_shift(array, spare, out=array)
            np.right_shift(array, spare, out=array)
        else:
            np.bitwise_and(array, (1 << stored) - 1, out=array)
        return
    np.bitwise_and(array, (1 << stored) - 1, out=array)
    if signed:
        sign = 1 << (stored - 1)
        np.bitwise_xor(array, sign, out=array)
        np.subtract(array, sign, out=array)


class PixelCache:
    """Decoded pixel arrays of the series, decoded once per dataset (per call)."""

    def __init__(self, datasets: Sequence[Dataset]) -> None:
        self._datasets = datasets
        self._cache: dict[int, NDArray[Any]] = {}
        self._unused_bits: dict[int, tuple[int, int, bool]] = {}
        # native pixel layouts by _format_key: the instances of a series mostly share one
        self._layouts: dict[tuple[object, ...],
                            tuple[_NativeLayout, tuple[int, int, bool] | None]] = {}

    def _note_unused_bits(self, ds: Dataset, source: int) -> None:
        stored = int(ds.get("BitsStored") or 0)
        allocated = int(ds.get("BitsAllocated") or 0)
        if 0 < stored < allocated and allocated in (8, 16, 32):
            signed = int(ds.get("PixelRepresentation") or 0) == 1
            self._unused_bits[source] = (allocated, stored, signed)

    def correct_stack_in_place(self, sources: Sequence[int], stack: NDArray[Any]) -> None:
        """Clear (unsigned) or sign-extend (signed) the bits above BitsStored of
        ``sources[i]`` in ``stack[i]``, for every ``i``.

        Native pixel data is decoded as a view on the dataset, without this correction;
        it is applied here once the frames sit in the output array, saving a copy. One
        operation over the whole stack when every source needs the same correction (a
        series mostly has one BitsStored), not one per slice (each op's set-up costs more
        than a small slice's work); elementwise either way, so the values are the same.
        """
        fixes = [self._unused_bits.get(source) for source in sources]
        if len(set(fixes)) == 1:
            if fixes[0] is not None:
                _clear_unused_bits(stack, fixes[0])
            return
        for i, fix in enumerate(fixes):
            if fix is not None:
                _clear_unused_bits(stack[i], fix)

    def cleared_below_int16(self, sources: Sequence[int]) -> bool:
        """Whether :meth:`correct_stack_in_place` leaves every value of ``sources`` below
        2**15: each is unsigned with its bits above a BitsStored of at most 15 cleared."""
        fixes = self._unused_bits
        return all((fix := fixes.get(source)) is not None and not fix[2] and fix[1] <= 15
                   for source in sources)

    def all_frames(self, source: int) -> NDArray[Any] | NiftiRefusal:
        cached = self._cache.get(source)
        if cached is not None:
            return cached
        ds = self._datasets[source]
        key = _format_key(ds)
        if key is not None and key in self._layouts:
            # the same format elements as an instance read before: its checks and layout
            layout, fix = self._layouts[key]
            array = _native_view(ds.get("PixelData"), layout)
            self._cache[source] = array
            if fix is not None:
                self._unused_bits[source] = fix
            return array
        refusal = _check_pixel_format(ds, source)
        if refusal is not None:
            return refusal
        file_meta = getattr(ds, "file_meta", None)
        syntax = file_meta.get("TransferSyntaxUID") if file_meta is not None else None
        if syntax is None:
            return NiftiRefusal(
                RefusalReason.DECODE_FAILED,
                f"instance {source} has no Transfer Syntax UID in its file meta information; "
                "read it with pydicom.dcmread or set ds.file_meta.TransferSyntaxUID",
            )
        simple = _simple_native(ds, str(syntax))
        if simple is not None:
            array, layout = simple
            self._cache[source] = array
            self._note_unused_bits(ds, source)
            if key is not None:
                self._layouts[key] = (layout, self._unused_bits.get(source))
            return array
        try:
            decoder = get_decoder(UID(str(syntax)))
            options: dict[str, Any] = {}
            if decoder.is_native:
                # decode as a view on the dataset; unused high bits are fixed later in the
                # output array (see correct_stack_in_place), which saves two copies per frame
                options = {"view_only": True, "correct_unused_bits": False}
                self._note_unused_bits(ds, source)
            array = _decode(decoder, ds, options, _PREFERRED_PLUGIN.get(str(syntax)))
        except _DECODE_ERRORS as exc:
            return NiftiRefusal(
                RefusalReason.DECODE_FAILED,
                f"pixel data of instance {source} ({UID(str(syntax)).name}) could not be "
                f"decoded ({type(exc).__name__}); install the matching pylibjpeg/pyjpegls "
                "plugin or check that the file is complete",
            )
        self._cache[source] = array
        return array

    def frame(self, item: Frame) -> NDArray[Any] | NiftiRefusal:
        array = self.all_frames(item.source)
        if isinstance(array, NiftiRefusal):
            return array
        if item.frame is None:
            return array
        frame: NDArray[Any] = array[item.frame]
        return frame


#: What pydicom's decoders raise for pixel data they cannot decode (and PixelDecodeError, a
#: RuntimeError, when a native plugin panicked and pydicom's own decoder failed too).
_DECODE_ERRORS = (NotImplementedError, ValueError, RuntimeError, TypeError, KeyError)

#: The decoding plugin asked for first by transfer syntax, when installed, instead of the
#: first of pydicom's order: CharLS (pyjpegls) decodes JPEG-LS 3.5x faster than libjpeg
#: (pylibjpeg, which pydicom tries first): 2.9 against 10.7 ms of CPU for a 384x384 12-bit
#: mosaic of dcm_qa_ts. JPEG-LS decoding is exact (PS3.5 A.4.3, ISO 14495-1), so the pixels
#: are the same (tests/test_nifti_synthetic.py compares the converter's array with
#: ``decoder.as_array``). A preference is only a speed choice: when the preferred plugin
#: fails, pydicom's plain order is tried (see _decode). RLE Lossless has no entry: pydicom
#: already tries pylibjpeg-rle first and falls back to its own decoder, which decodes
#: non-conformant frames pylibjpeg-rle refuses.
_PREFERRED_PLUGIN: dict[str, str] = {str(JPEGLSLossless): "pyjpegls",
                                     str(JPEGLSNearLossless): "pyjpegls"}


def _decode(decoder: Decoder, ds: Dataset | Part10, options: dict[str, Any],
            preferred: str | None) -> NDArray[Any]:
    """``decoder.as_array(ds, **options)``: with ``preferred`` first when it is installed,
    then (or else) in pydicom's order, past a native plugin's panic (decode_past_panic).
    A :class:`Part10` is given as its pixel data with what pydicom reads from a dataset
    (:func:`_dataset_options`)."""
    source: Dataset | bytes
    if isinstance(ds, Part10):
        source, options = ds.PixelData, {**_dataset_options(ds), **options}
    else:
        source = ds

    def decode(**plugin: Any) -> NDArray[Any]:
        array: NDArray[Any] = decoder.as_array(source, **options, **plugin)[0]
        return array

    if preferred is not None and preferred in decoder.available_plugins:
        try:
            return decode_past_panic(decode, decoding_plugin=preferred)
        except _DECODE_ERRORS:
            pass  # a speed preference never refuses what pydicom's own order decodes
    return decode_past_panic(decode)


#: The Image Pixel elements pydicom's decoders read from a dataset, by the name of the
#: decoding option each sets (``pydicom.pixels.utils.as_pixel_options``).
_IMAGE_PIXEL_OPTIONS = {
    0x00280002: "samples_per_pixel",
    0x00280004: "photometric_interpretation",
    0x00280006: "planar_configuration",
    0x00280008: "number_of_frames",
    0x00280010: "rows",
    0x00280011: "columns",
    0x00280100: "bits_allocated",
    0x00280101: "bits_stored",
    0x00280103: "pixel_representation",
}
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


def _dataset_options(ds: Part10) -> dict[str, Any]:
    """The decoding options pydicom's ``Decoder.as_array`` takes from a dataset holding what
    ``ds`` holds, so that ``as_array(ds.PixelData, **options)`` decodes as ``as_array`` of
    that dataset (pydicom's runner treats a dataset's pixel data and a buffer alike once
    its options are set): the Image Pixel values (``as_pixel_options``; NumberOfFrames 1
    when absent, else as it is: the runner's ``set_option`` makes text a number and None or
    0 one frame, with the warning ``as_pixel_options`` gives), then the pixel element's
    keyword and VR. :func:`lake.nifti.read_part10` gives a ``Part10`` no Extended Offset
    Table (which ``as_pixel_options`` would pass on). ``tests/test_nifti_encapsulated.py``
    compares the runner's options both ways on every compressed object of the test data.
    Mirrors pydicom 3.0's ``as_pixel_options`` and ``DecodeRunner._set_options_ds`` (private):
    check it again on a pydicom upgrade (pyproject pins ``pydicom<4``)."""
    options = {name: ds.get(tag) for tag, name in _IMAGE_PIXEL_OPTIONS.items() if tag in ds}
    options.setdefault("number_of_frames", 1)
    keywords = [keyword for keyword in _PIXEL_KEYWORDS if keyword in ds]
    if len(keywords) != 1:
        raise AttributeError("one and only one pixel data element may be present")
    options["pixel_keyword"] = keywords[0]
    options["pixel_vr"] = ds[keywords[0]].VR
    return options


_LITTLE_ENDIAN_NATIVE = frozenset(
    {
        "1.2.840.10008.1.2",  # Implicit VR Little Endian
        "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
        "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian (inflated on read)
    }
)


#: The top-level elements :func:`_check_pixel_format`, :func:`_simple_native` and
#: ``PixelCache._note_unused_bits`` read (none of them text with character sets).
_FORMAT_TAGS = tuple(
    int(Tag(keyword)) for keyword in (
        "SamplesPerPixel", "PhotometricInterpretation", "PlanarConfiguration",
        "NumberOfFrames", "Rows", "Columns", "BitsAllocated", "BitsStored",
        "PixelRepresentation", "PixelData", "FloatPixelData", "DoubleFloatPixelData")
)
_TRANSFER_SYNTAX = (int(Tag("TransferSyntaxUID")),)
#: Where the pixel data's part is in a :meth:`Part10.raw_key` of ``_FORMAT_TAGS``.
_PIXEL_DATA_AT = 1 + _FORMAT_TAGS.index(int(Tag("PixelData")))


def _format_key(ds: Dataset | Part10) -> tuple[object, ...] | None:
    """What the pixel checks and the native layout of ``ds`` depend on (:meth:`Part10.raw_key`
    of the format elements and of the transfer syntax), when ``ds`` is a :class:`Part10`
    whose pixel data is set in memory (the lake's blobs); else None."""
    if not isinstance(ds, Part10) or not isinstance(ds.file_meta, Part10):
        return None
    key = ds.raw_key(_FORMAT_TAGS)
    pixels = None if key is None else key[_PIXEL_DATA_AT]
    if key is None or not isinstance(pixels, tuple) or pixels[1] is not bytes:
        return None  # the pixel data is not a blob's bytes set in memory
    syntax = ds.file_meta.raw_key(_TRANSFER_SYNTAX)
    return None if syntax is None else (*key, *syntax)


class _NativeLayout(NamedTuple):
    """How :func:`_simple_native` views the pixel data of one format."""

    dtype: np.dtype[Any]
    samples: int
    planar: int
    frames: int
    rows: int
    cols: int


def _simple_native(ds: Dataset, syntax: str) -> tuple[NDArray[Any], _NativeLayout] | None:
    """Little-endian native greyscale or RGB pixels as a view on ``PixelData`` (and how it
    was made), else None.

    This is what pydicom's native decoder returns for the commonest layout, without its
    per-call set-up (a third of the conversion time of a CT series); everything else
    (colour, big endian, 1-bit, float, compressed, odd lengths) goes through pydicom.
    """
    samples = ds.get("SamplesPerPixel") or 1
    if syntax not in _LITTLE_ENDIAN_NATIVE or samples not in (1, 3):
        return None
    element = ds.get("PixelData")
    allocated = ds.get("BitsAllocated")
    if element is None or allocated not in (8, 16, 32):
        return None
    planar = ds.get("PlanarConfiguration") or 0
    if samples == 3 and (allocated != 8 or planar not in (0, 1)
                         or str(ds.get("PhotometricInterpretation", "")).upper() != "RGB"):
        return None  # YBR colour: pydicom converts it to RGB
    signed = ds.get("PixelRepresentation") == 1
    dtype = np.dtype(f"<{'i' if signed else 'u'}{allocated // 8}")
    rows, cols, frames = int(ds.Rows), int(ds.Columns), number_of_frames(ds)
    expected = rows * cols * frames * samples * dtype.itemsize
    if not isinstance(element, bytes) or len(element) not in (expected, expected + 1):
        return None
    layout = _NativeLayout(dtype, samples, planar, frames, rows, cols)
    return _native_view(element, layout), layout


def _native_view(element: bytes, layout: _NativeLayout) -> NDArray[Any]:
    """The pixel data as :func:`_simple_native` views it."""
    dtype, samples, planar, frames, rows, cols = layout
    array = np.frombuffer(element, dtype=dtype, count=rows * cols * frames * samples)
    if samples == 1:
        return array.reshape((frames, rows, cols) if frames > 1 else (rows, cols))
    if planar == 0:
        array = array.reshape(frames, rows, cols, 3)
    else:  # colour-by-plane: R plane, G plane, B plane per frame
        array = array.reshape(frames, 3, rows, cols).transpose(0, 2, 3, 1)
    return array if frames > 1 else array[0]


def _check_pixel_format(ds: Dataset, source: int) -> NiftiRefusal | None:
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        return NiftiRefusal(
            RefusalReason.NO_PIXEL_DATA, f"instance {source} has no pixel data"
        )
    photometric = str(ds.get("PhotometricInterpretation", "")).upper()
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    bits = int(ds.get("BitsAllocated", 16) or 16)
    if photometric == "PALETTE COLOR":
        return NiftiRefusal(
            RefusalReason.UNSUPPORTED_PIXELS,
            f"instance {source} uses a colour palette; NIfTI has no palette form "
            "(convert the instance to RGB first)",
        )
    if samples not in (1, 3):
        return NiftiRefusal(
            RefusalReason.UNSUPPORTED_PIXELS,
            f"instance {source} has {samples} samples per pixel; only 1 or 3 can be written",
        )
    if samples == 3 and bits != 8:
        return NiftiRefusal(
            RefusalReason.UNSUPPORTED_PIXELS,
            f"instance {source} is {bits}-bit colour; NIfTI RGB24 holds 8 bits per channel",
        )
    if bits == 1:
        return NiftiRefusal(
            RefusalReason.UNSUPPORTED_PIXELS,
            f"instance {source} is a 1-bit (segmentation or overlay) image",
        )
    return None


#: Bytes reserved in front of the voxels: the NIfTI-1 header and its extension flag.
HEADER_SPACE = 352


def allocate_backed(
    shape: tuple[int, ...], dtype: np.dtype[Any]
) -> tuple[NDArray[Any], NDArray[np.uint8]]:
    """An uninitialised array that sits ``HEADER_SPACE`` bytes into a byte buffer.

    The NIfTI file is then the buffer itself once the header is written in front: no copy
    of the voxels is needed to encode or write it.
    """
    count = int(np.prod(shape, dtype=np.int64))
    backing = np.empty(HEADER_SPACE + count * dtype.itemsize, dtype=np.uint8)
    data = backing[HEADER_SPACE:].view(dtype).reshape(shape)
    return data, backing


def _allocate(
    shape: tuple[int, ...], samples: list[NDArray[Any]]
) -> tuple[NDArray[Any], NDArray[np.uint8]]:
    dtype = np.result_type(*{s.dtype for s in samples})
    return allocate_backed(shape, np.dtype(dtype))


# --------------------------------------------------------------------------- stacks


def assemble_stack(
    frames: list[Frame], datasets: Sequence[Dataset], pixels: PixelCache, suffix: str
) -> Assembled | NiftiRefusal:
    """Place the frames of one stack (one component, one echo) into a 3D or 4D volume.

    Parameters
    ----------
    frames : list of Frame
        Frames with patient geometry, any order.
    datasets : sequence of Dataset
        The series (frames refer to it by index).
    pixels : PixelCache
        Decoder cache for the series.
    suffix : str
        File-name suffix of this stack, for refusal messages.

    Returns
    -------
    Assembled or NiftiRefusal
    """
    plane = frames[0].plane
    assert plane is not None  # the caller only passes frames with geometry
    if not plane.is_orthonormal():
        return NiftiRefusal(
            RefusalReason.MIXED_GEOMETRY,
            "ImageOrientationPatient is not a pair of orthogonal unit vectors",
            suffix,
        )
    for item in frames[1:]:
        if item.plane is plane:
            continue  # one plane of the series' memo (finite numbers: the same as itself)
        if item.plane is None or not plane.same_as(item.plane):
            return NiftiRefusal(
                RefusalReason.MIXED_GEOMETRY,
                "frames differ in orientation, matrix size or pixel spacing "
                "(a localizer or a reformatted series?); export them as separate series",
                suffix,
            )
    normal = plane.normal
    along = np.array([float(np.dot(f.position, normal)) for f in frames])  # type: ignore[arg-type]
    order = np.argsort(along, kind="stable")
    locations: list[list[Frame]] = []
    start = -np.inf
    for i in order:
        if along[i] - start > SAME_POSITION_MM or not locations:
            locations.append([])
            start = along[i]
        locations[-1].append(frames[i])
    counts = sorted({len(loc) for loc in locations})
    if len(counts) > 1:
        return NiftiRefusal(
            RefusalReason.INCOMPLETE_VOLUMES,
            f"{len(locations)} slice locations hold between {counts[0]} and {counts[-1]} frames "
            "each; a 4D series needs the same number of frames at every location "
            "(an interrupted acquisition or missing instances)",
            suffix,
        )
    n_volumes = counts[0]
    for loc in locations:
        loc.sort(key=lambda f: f.order)
    if n_volumes > 1:
        for t in range(n_volumes):
            if len({loc[t].identity for loc in locations}) > 1:
                return NiftiRefusal(
                    RefusalReason.AMBIGUOUS_VOLUME_ORDER,
                    f"{n_volumes} frames share each slice location but their temporal "
                    "position, acquisition number or diffusion encoding do not line up "
                    "into volumes",
                    suffix,
                )
    positions = np.array([loc[0].position for loc in locations], dtype=np.float64)
    geometry = check_stack(positions, normal)
    if geometry.verdict is SpacingVerdict.TILTED:
        return NiftiRefusal(
            RefusalReason.GANTRY_TILT,
            f"{geometry.detail}; the volume would need resampling, which this exporter does "
            "not do: export the DICOM instead",
            suffix,
        )
    if geometry.verdict is SpacingVerdict.MISSING_SLICES:
        return NiftiRefusal(
            RefusalReason.MISSING_SLICES,
            f"{geometry.detail}; re-send the missing instances and export again",
            suffix,
        )
    if geometry.verdict is SpacingVerdict.UNEVEN:
        return NiftiRefusal(
            RefusalReason.UNEVEN_SPACING,
            f"{geometry.detail}; NIfTI needs one slice spacing",
            suffix,
        )
    spacing = geometry.spacing
    fallback = False
    if geometry.verdict is SpacingVerdict.SINGLE:
        ds0 = datasets[locations[0][0].source]
        index0 = locations[0][0].frame
        thickness = _float(
            attribute(ds0, index0, "PixelMeasuresSequence", "SpacingBetweenSlices")
        ) or _float(attribute(ds0, index0, "PixelMeasuresSequence", "SliceThickness"))
        spacing = thickness if thickness and thickness > 0 else 1.0
        fallback = True
    affine = slice_affine_ras(plane, geometry.first_position, spacing)
    volumes = [[loc[t] for loc in locations] for t in range(n_volumes)]
    return _fill(affine, volumes, plane.rows, plane.cols, pixels, suffix, fallback)


def assemble_plain(
    frames: list[Frame],
    pixels: PixelCache,
    suffix: str,
    pixel_spacing: tuple[float, float],
    slice_spacing: float,
) -> Assembled | NiftiRefusal:
    """Stack frames without patient geometry in the given order (one instance's frames).

    Without a position or orientation the axes are not anatomical; like dcm2niix, the
    affine assumes an axial identity orientation centred on the origin, so that the voxel
    sizes are right and viewers show the image upright.
    """
    first = pixels.frame(frames[0])
    if isinstance(first, NiftiRefusal):
        return NiftiRefusal(first.reason_code, first.message, suffix)
    rows, cols = int(first.shape[0]), int(first.shape[1])
    plane = Plane(
        row_cosine=np.array([1.0, 0.0, 0.0]),
        col_cosine=np.array([0.0, 1.0, 0.0]),
        row_spacing=pixel_spacing[0],
        col_spacing=pixel_spacing[1],
        rows=rows,
        cols=cols,
    )
    centre = np.array(
        [
            -(cols - 1) / 2.0 * pixel_spacing[1],
            -(rows - 1) / 2.0 * pixel_spacing[0],
            -(len(frames) - 1) / 2.0 * slice_spacing,
        ]
    )
    affine = slice_affine_ras(plane, centre, slice_spacing)
    assembled = _fill(affine, [frames], rows, cols, pixels, suffix, True)
    if isinstance(assembled, Assembled):
        assembled.anatomical = False
    return assembled


def _fill(
    affine: FloatArray,
    volumes: list[list[Frame]],
    rows: int,
    cols: int,
    pixels: PixelCache,
    suffix: str,
    fallback: bool,
) -> Assembled | NiftiRefusal:
    n_t, n_z = len(volumes), len(volumes[0])
    decoded: list[NDArray[Any]] = []
    for volume in volumes:
        for item in volume:
            array = pixels.frame(item)
            if isinstance(array, NiftiRefusal):
                return NiftiRefusal(array.reason_code, array.message, suffix)
            if array.shape[0] != rows or array.shape[1] != cols:
                return NiftiRefusal(
                    RefusalReason.MIXED_GEOMETRY,
                    "a frame's pixel matrix does not match its Rows/Columns",
                    suffix,
                )
            decoded.append(array)
    extra = decoded[0].shape[2:]
    if any(a.shape[2:] != extra for a in decoded):
        return NiftiRefusal(
            RefusalReason.UNSUPPORTED_PIXELS,
            "colour and greyscale frames are mixed in one stack",
            suffix,
        )
    data, backing = _allocate((n_t, n_z, rows, cols, *extra), decoded)
    slopes = np.empty((n_t, n_z))
    intercepts = np.empty((n_t, n_z))
    k = 0
    for t, volume in enumerate(volumes):
        for z, item in enumerate(volume):
            data[t, z] = decoded[k][::-1]
            slopes[t, z] = item.slope
            intercepts[t, z] = item.intercept
            k += 1
    sources = [item.source for volume in volumes for item in volume]
    pixels.correct_stack_in_place(sources, data.reshape(n_t * n_z, *data.shape[2:]))
    return Assembled(
        affine, data, slopes, intercepts, volumes, slice_thickness_fallback=fallback,
        backing=backing, below_int16=pixels.cleared_below_int16(sources),
    )


# --------------------------------------------------------------------------- mosaics


def _mosaic_layout(
    acquisition: Acquisition,
) -> tuple[int, int, int, NDArray[np.float64]] | None:
    """(tiles, tile rows, tile columns, positions) from the acquisition parameters."""
    tiles = acquisition.get("mosaic_tiles")
    grid = acquisition.get("mosaic_grid")
    positions = acquisition.get("slice_positions")
    if not isinstance(tiles, int) or not isinstance(grid, list) or len(grid) != 2:
        return None
    if not isinstance(positions, list) or len(positions) != 3 * tiles:
        return None
    down, across = int(grid[0]), int(grid[1])
    if down * across < tiles:
        return None
    return tiles, down, across, np.array(positions, dtype=np.float64).reshape(tiles, 3)


def assemble_mosaics(
    frames: list[Frame],
    datasets: Sequence[Dataset],
    acquisitions: Sequence[Acquisition],
    pixels: PixelCache,
    suffix: str,
) -> Assembled | NiftiRefusal:
    """Unpack the mosaics of one stack (one mosaic per volume) into a 3D/4D volume.

    Siemens mosaics and UIH grids store the slices of a volume as tiles of one image, row by
    row. Their number, grid and positions are acquisition parameters derived from private
    elements at ingest, so a de-identified copy converts as well as the original. Slices keep
    the tile order (as dcm2niix), the affine steps from the first to the last tile.

    Parameters
    ----------
    frames : list of Frame
        One frame per mosaic instance, any order.
    datasets : sequence of Dataset
        The series.
    acquisitions : sequence of mapping
        Acquisition parameters of each dataset.
    pixels : PixelCache
        Decoder cache.
    suffix : str
        File-name suffix of this stack, for refusal messages.

    Returns
    -------
    Assembled or NiftiRefusal
    """
    ordered = sorted(frames, key=lambda f: f.order)
    volumes: list[NDArray[Any]] = []
    reference: tuple[int, int, int, NDArray[np.float64]] | None = None
    for item in ordered:
        layout = _mosaic_layout(acquisitions[item.source])
        if layout is None:
            return NiftiRefusal(
                RefusalReason.MOSAIC_WITHOUT_LAYOUT,
                f"instance {item.source} is a mosaic whose tile count, grid and positions are "
                "unknown (its acquisition parameters were not derived at ingest); re-ingest "
                "the original files",
                suffix,
            )
        tiles, down, across, positions = layout
        if reference is None:
            reference = layout
        elif (layout[:3] != reference[:3]
              or not np.allclose(positions, reference[3], atol=1e-3)):
            return NiftiRefusal(
                RefusalReason.INCONSISTENT_MOSAIC,
                "the mosaics of this series differ in tile count, matrix or position; "
                "export them as separate series",
                suffix,
            )
        array = pixels.frame(item)
        if isinstance(array, NiftiRefusal):
            return NiftiRefusal(array.reason_code, array.message, suffix)
        rows, cols = int(array.shape[0]), int(array.shape[1])
        if array.ndim != 2 or rows % down or cols % across:
            return NiftiRefusal(
                RefusalReason.INCONSISTENT_MOSAIC,
                f"mosaic instance {item.source} cannot be unpacked: its {down} x {across} "
                "tile grid does not divide its matrix",
                suffix,
            )
        tile_rows, tile_cols = rows // down, cols // across
        grid = array.reshape(down, tile_rows, across, tile_cols).transpose(0, 2, 1, 3)
        volumes.append(grid.reshape(down * across, tile_rows, tile_cols)[:tiles])
    assert reference is not None
    tiles, _, _, positions = reference
    ds = datasets[ordered[0].source]
    iop = _floats(attribute(ds, None, "PlaneOrientationSequence", "ImageOrientationPatient"), 6)
    spacing = _floats(attribute(ds, None, "PixelMeasuresSequence", "PixelSpacing"), 2)
    tile_rows, tile_cols = int(volumes[0].shape[1]), int(volumes[0].shape[2])
    if iop is None or spacing is None:
        return NiftiRefusal(
            RefusalReason.MISSING_GEOMETRY,
            "the mosaic has no ImageOrientationPatient or PixelSpacing",
            suffix,
        )
    plane = Plane(iop[:3], iop[3:], float(spacing[0]), float(spacing[1]), tile_rows, tile_cols)
    normal = plane.normal
    if tiles > 1:
        direction = normal if float(np.dot(positions[-1] - positions[0], normal)) >= 0 \
            else -normal
        geometry = check_stack(positions, direction)
        if geometry.verdict is not SpacingVerdict.EVEN:
            return NiftiRefusal(
                RefusalReason.UNEVEN_SPACING
                if geometry.verdict is not SpacingVerdict.TILTED else RefusalReason.GANTRY_TILT,
                f"the tiles of this mosaic are not evenly spaced along the slice normal "
                f"({geometry.verdict.value})",
                suffix,
            )
        step = (positions[-1] - positions[0]) / (tiles - 1)
    else:
        depth = _float(ds.get("SpacingBetweenSlices")) or _float(ds.get("SliceThickness")) \
            or 1.0
        step = normal * depth
    affine = tile_affine_ras(plane, positions[0], step)
    data, backing = _allocate((len(volumes), tiles, tile_rows, tile_cols), volumes)
    for t, volume in enumerate(volumes):
        data[t] = volume[:, ::-1, :]
    sources = [f.source for f in ordered]
    pixels.correct_stack_in_place(sources, data)
    slopes = np.array([[f.slope] * tiles for f in ordered])
    intercepts = np.array([[f.intercept] * tiles for f in ordered])
    return Assembled(
        affine, data, slopes, intercepts, [[f] for f in ordered], mosaic=True, backing=backing,
        below_int16=pixels.cleared_below_int16(sources),
    )
