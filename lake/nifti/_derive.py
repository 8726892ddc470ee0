"""Deriving the acquisition parameters of one instance from its (original) header.

:func:`derive_acquisition` reads standard attributes and the vendor's private elements and
returns only validated values (see :mod:`lake.nifti._parameters`). It never raises for
unexpected or damaged content: a value that cannot be read is simply absent, and the export
then refuses what it cannot write faithfully.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydicom.dataset import Dataset

from lake.nifti._ge import derive_ge
from lake.nifti._parameters import AcquisitionValue, validate_all
from lake.nifti._philips_uih import derive_philips, derive_uih
from lake.nifti._private import (
    DecodeError,
    creator_block,
    creator_memo,
    first_float,
    floats,
    image_type,
    manufacturer,
)
from lake.nifti._siemens import derive_siemens

__all__ = ["Vendor", "derive_acquisition", "vendor_of"]

Vendor = str
_READERS: dict[str, Callable[[Dataset, dict[str, object]], None]] = {
    "Siemens": derive_siemens,
    "GE": derive_ge,
    "Philips": derive_philips,
    "UIH": derive_uih,
}
_PREFIXES = (
    ("SIEMENS", "Siemens"),
    ("GE", "GE"),
    ("PHILIPS", "Philips"),
    ("UIH", "UIH"),
    ("UNITED IMAGING", "UIH"),
    ("TOSHIBA", "Canon"),
    ("CANON", "Canon"),
)
_COMPONENTS = {"MAGNITUDE": "magnitude", "PHASE": "phase", "REAL": "real",
               "IMAGINARY": "imaginary"}
_LETTERS = {"M": "magnitude", "P": "phase", "R": "real", "I": "imaginary"}


def vendor_of(ds: Dataset) -> Vendor | None:
    """The manufacturer, by dcm2niix's names, or None when unknown."""
    name = manufacturer(ds).strip().upper()
    for prefix, vendor in _PREFIXES:
        if name.startswith(prefix):
            return vendor
    if creator_block(ds, 0x0029, ("SIEMENS CSA HEADER",)) is not None:
        return "Siemens"  # XA10 mosaics omit Manufacturer
    return None


def _macro(item: Dataset | None, macro: str, keyword: str) -> Any:
    if item is None:
        return None
    seq = item.get(macro)
    if not seq:
        return None
    value = seq[0].get(keyword)
    return None if value is None or value == "" else value


def _frame_items(ds: Dataset) -> list[tuple[Dataset | None, Dataset | None]]:
    """(per-frame item, shared item) of every frame; one (None, None) for classic objects."""
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    shared_seq = ds.get("SharedFunctionalGroupsSequence")
    shared = shared_seq[0] if shared_seq else None
    if not per_frame:
        return [(None, None)]
    return [(item, shared) for item in per_frame]


def _lookup(ds: Dataset, frame: tuple[Dataset | None, Dataset | None], macro: str,
            keyword: str) -> Any:
    item, shared = frame
    for source in (item, shared):
        value = _macro(source, macro, keyword)
        if value is not None:
            return value
    if item is None:
        value = ds.get(keyword)
        return None if value is None or value == "" else value
    return None


def _component_of(ds: Dataset, frame: tuple[Dataset | None, Dataset | None]) -> str | None:
    part = _lookup(ds, frame, "MRImageFrameTypeSequence", "ComplexImageComponent")
    if part is not None and str(part).upper() in _COMPONENTS:
        return _COMPONENTS[str(part).upper()]
    kinds = _lookup(ds, frame, "MRImageFrameTypeSequence", "FrameType") \
        if frame[0] is not None else image_type(ds)
    tokens = [t for v in (kinds or []) for t in str(v).upper().split("_")]
    if any("PHASE" in t for t in tokens) or "P" in tokens:
        return "phase"
    for token in tokens:
        if token in ("REAL", "R"):
            return "real"
        if token in ("IMAGINARY", "I"):
            return "imaginary"
    if "MAGNITUDE" in tokens or "M" in tokens:
        return "magnitude"
    return None


def _standard(ds: Dataset, out: dict[str, object]) -> None:
    frames = _frame_items(ds)
    components = [_component_of(ds, f) for f in frames]
    if any(c is not None for c in components):
        out["complex_components"] = [c or "magnitude" for c in components]
    b_values: list[float | None] = []
    gradients: list[float] = []
    damaged = False  # a present but unreadable b-value or vector: no diffusion values at all
    for frame in frames:
        raw_b = _lookup(ds, frame, "MRDiffusionSequence", "DiffusionBValue")
        b_values.append(first_float(raw_b))
        damaged |= raw_b is not None and b_values[-1] is None
        if frame[0] is None:
            raw_vector = ds.get("DiffusionGradientOrientation")
        else:
            direction = _lookup(ds, frame, "MRDiffusionSequence",
                                "DiffusionGradientDirectionSequence")
            raw_vector = direction[0].get("DiffusionGradientOrientation") if direction else None
        vector = floats(raw_vector)
        damaged |= raw_vector not in (None, "") and len(vector) != 3
        gradients.extend(vector if len(vector) == 3 else [0.0, 0.0, 0.0])
    if any(b is not None for b in b_values) and not damaged:
        out["diffusion_b_values"] = [b if b is not None else 0.0 for b in b_values]
        out["diffusion_gradients"] = gradients
        out["diffusion_gradient_frame"] = "patient"
    accel = first_float(_lookup(ds, frames[0], "MRModifierSequence",
                                "ParallelReductionFactorInPlane"))
    if accel is not None:
        out["parallel_reduction_factor_in_plane"] = accel


def derive_acquisition(ds: Dataset) -> dict[str, AcquisitionValue]:
    """The acquisition parameters of one instance, validated (see ``PARAMETERS``).

    Call it on the original header: de-identification removes the private elements most
    values come from. It reads, never modifies, ``ds``, and never raises for bad content.

    Parameters
    ----------
    ds : pydicom.dataset.Dataset
        One instance (pixel data not needed).

    Returns
    -------
    dict
        Parameter name to validated value; absent names could not be derived.

    Examples
    --------
    >>> from pydicom import dcmread
    >>> from pydicom.data import get_testdata_file
    >>> ds = dcmread(get_testdata_file("MR_small.dcm"))
    >>> ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
    >>> ds.DiffusionBValue, ds.DiffusionGradientOrientation = 1000.0, [0.0, 0.0, 1.0]
    >>> derive_acquisition(ds)  # doctest: +NORMALIZE_WHITESPACE
    {'complex_components': ['magnitude'], 'diffusion_b_values': [1000.0],
     'diffusion_gradients': [0.0, 0.0, 1.0], 'diffusion_gradient_frame': 'patient'}
    """
    with creator_memo():
        return _derive(ds)


def _derive(ds: Dataset) -> dict[str, AcquisitionValue]:
    raw: dict[str, object] = {}
    try:
        _standard(ds, raw)
    except DecodeError:
        raw.clear()
    reader = _READERS.get(vendor_of(ds) or "")
    if reader is not None:
        vendor_values: dict[str, object] = dict(raw)
        try:
            reader(ds, vendor_values)
        except DecodeError:
            vendor_values = raw  # a damaged private element: keep what the standard gave
        raw = vendor_values
    _multiband_from_timing(raw)
    return validate_all(raw)


def _multiband_from_timing(raw: dict[str, object]) -> None:
    """As dcm2niix: slices excited together share the earliest time of the volume."""
    times = raw.get("slice_timing")
    if not isinstance(times, list) or len(times) < 2:
        return
    earliest = min(times)
    together = sum(1 for t in times if abs(t - earliest) < 1e-6)
    factor = raw.get("multiband_acceleration_factor")
    if together > 1 and (not isinstance(factor, int) or factor < 2):
        raw["multiband_acceleration_factor"] = together
