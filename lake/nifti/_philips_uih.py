"""Philips (private groups 2001 and 2005) and United Imaging (UIH, private group 0065)
acquisition parameters."""

from __future__ import annotations

import math

from pydicom.dataset import Dataset
from pydicom.valuerep import TM

from lake.nifti._private import first_float, floats, phase_axis, private

__all__ = ["derive_philips", "derive_uih"]

_PHILIPS_IMAGING = ("PHILIPS IMAGING DD 001",)
_PHILIPS_MR = ("PHILIPS MR IMAGING DD 001",)
_PHILIPS_MR_005 = ("PHILIPS MR IMAGING DD 005",)
_UIH = ("IMAGE PRIVATE HEADER",)


def derive_philips(ds: Dataset, out: dict[str, object]) -> None:
    """Add the Philips parameters of ``ds`` to ``out`` (raw values; validated later)."""
    frames = ds.get("PerFrameFunctionalGroupsSequence") or []
    holders = [ds]
    if frames:
        seq = private(frames[0], 0x2005, _PHILIPS_MR_005, 0x0F, "SQ")
        if seq:
            holders.append(seq[0])
    for holder in holders:
        shift = first_float(private(holder, 0x2001, _PHILIPS_IMAGING, 0x22, "FL"))
        if shift is not None and shift > 0 and "water_fat_shift" not in out:
            out["water_fat_shift"] = shift
    if frames:
        slopes = []
        for item in frames:
            seq = private(item, 0x2005, _PHILIPS_MR_005, 0x0F, "SQ")
            if seq is None and (0x2005, 0x140F) in item:
                seq = item[0x2005, 0x140F].value
            value = None
            if seq:
                value = first_float(private(seq[0], 0x2005, _PHILIPS_MR, 0x0E, "FL"))
                if value is None:
                    element = seq[0].get((0x2005, 0x100E))
                    value = first_float(element.value) if element is not None else None
            slopes.append(value)
        if slopes and None not in slopes:
            out["scale_slopes"] = [float(s) for s in slopes if s is not None]
    else:
        slope = first_float(private(ds, 0x2005, _PHILIPS_MR, 0x0E, "FL"))
        if slope is not None:
            out["scale_slopes"] = [slope]
        b_value = first_float(private(ds, 0x2001, _PHILIPS_IMAGING, 0x03, "FL"))
        if b_value is not None:
            out["diffusion_b_values"] = [b_value]
            gradient = [first_float(private(ds, 0x2005, _PHILIPS_MR, e, "FL"))
                        for e in (0xB0, 0xB1, 0xB2)]
            if None not in gradient:
                out["diffusion_gradients"] = [float(g) for g in gradient if g is not None]
                out["diffusion_gradient_frame"] = "patient"


def _seconds(value: object) -> float | None:
    try:
        parsed = TM(str(value).strip())
    except ValueError:
        return None
    if parsed is None:
        return None
    return parsed.hour * 3600.0 + parsed.minute * 60.0 + parsed.second + parsed.microsecond / 1e6


def derive_uih(ds: Dataset, out: dict[str, object]) -> None:
    """Add the UIH parameters of ``ds`` to ``out`` (raw values; validated later)."""
    tiles = first_float(private(ds, 0x0065, _UIH, 0x50, "DS"))
    items = private(ds, 0x0065, _UIH, 0x51, "SQ") or []
    if tiles is not None and tiles >= 1 and len(items) >= int(tiles):
        count = int(tiles)
        out["mosaic_tiles"] = count
        across = math.ceil(math.sqrt(count))
        down = math.ceil(count / across)
        rows, cols = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
        if rows % down == 0 and cols % across == 0:
            out["mosaic_grid"] = [down, across]
        positions = [floats(item.get("ImagePositionPatient")) for item in items[:count]]
        if all(len(p) == 3 for p in positions):
            out["slice_positions"] = [v for p in positions for v in p]
        times = [_seconds(item.get("AcquisitionTime")) for item in items[:count]]
        if times and None not in times:
            clean = [t for t in times if t is not None]
            if max(clean) - min(clean) > 43200:  # the volume crossed midnight
                clean = [t - 86400 if t > 43200 else t for t in clean]
            earliest = min(clean)
            out["slice_timing"] = [t - earliest for t in clean]
        durations = [first_float(item.get("AcquisitionDuration")) for item in items[:count]]
        duration = next((d for d in durations if d is not None and d > 0), None)
        if duration is not None and "effective_echo_spacing" not in out:
            out["total_readout_time"] = duration / 1000.0
    b_value = first_float(private(ds, 0x0065, _UIH, 0x09, "FD"))
    if b_value is not None:
        out["diffusion_b_values"] = [b_value]
        gradient = floats(private(ds, 0x0065, _UIH, 0x37, "FD"))
        if len(gradient) == 3:
            out["diffusion_gradients"] = gradient
            out["diffusion_gradient_frame"] = "image"
    positive = first_float(private(ds, 0x0065, _UIH, 0x58, "IS"))
    axis = phase_axis(ds)
    if positive in (0.0, 1.0) and axis[:3] in ("ROW", "COL"):
        letter = "i" if axis.startswith("ROW") else "j"
        # UIH stores 1 for the polarity dcm2niix calls flipped
        out["phase_encoding_direction"] = letter + "-" if positive == 1.0 else letter
    displayed = private(ds, 0x0065, _UIH, 0x05, "SH")
    if isinstance(displayed, str):
        out["phase_encoding_direction_displayed"] = displayed.strip()  # validated: a code
    parallel = str(private(ds, 0x0065, _UIH, 0x0D, "SH") or "")
    if ":" in parallel:
        digits = "".join(c for c in parallel.split(":", 1)[1] if c.isdigit() or c == ".")
        if digits:
            out["parallel_reduction_factor_in_plane"] = float(digits)
