"""GE acquisition parameters: private groups 0019 (GEMS_ACQU_01), 0025 (GEMS_SERS_01, the
gzip-compressed protocol data block), 0027 (GEMS_IMAG_01) and 0043 (GEMS_PARM_01).

The protocol data block holds free text too (protocol and operator notes): only a handful of
its numeric and coded keys are parsed, and nothing of it is kept.
"""

from __future__ import annotations

import gzip
import math
import re
import struct
import zlib
from functools import lru_cache

from pydicom.dataset import Dataset

from lake.nifti._private import first_float, first_int, floats, phase_axis, private, text

__all__ = ["derive_ge", "protocol_block"]

_ACQU = ("GEMS_ACQU_01",)
_SERS = ("GEMS_SERS_01",)
_PARM = ("GEMS_PARM_01",)
_IMAG = ("GEMS_IMAG_01",)
_KEY = re.compile(r'^(\w+)\s+"([^"]*)"')
#: Keys of the protocol data block read (values are numbers or option codes).
_BLOCK_KEYS = frozenset({"SLICEORDER", "DELACQ", "IOPT", "NOSLC", "TR"})
#: 0043,102A polarity bit and slice-order values, calibrated on dcm_qa_ge/dcm_qa_stc
#: (RectilinearPhaseEncodeReordering agrees where both exist).
_POLARITY_UNFLIPPED_BIT = 0x0004
_SLICE_ORDER_BOTTOM_UP = 0
_VERSION = re.compile(r"(?:[:\\]\s*)[A-Z]{2}(\d+)\.(\d+)_(?:R(\d+)|EA)")


def protocol_block(ds: Dataset) -> dict[str, str]:
    """The few coded keys of the GE protocol data block (0025,101B) that timing needs."""
    raw = private(ds, 0x0025, _SERS, 0x1B, "OB")
    if not isinstance(raw, bytes | bytearray) or len(raw) < 8:
        return {}
    return dict(_block_keys(bytes(raw)))


@lru_cache(maxsize=32)
def _block_keys(data: bytes) -> tuple[tuple[str, str], ...]:
    """The block repeats across a series: decompressed and read once."""
    length = int.from_bytes(data[:4], "little")
    try:
        body = gzip.decompress(data[4 : 4 + length])
    except (OSError, EOFError, zlib.error):
        return ()
    found: dict[str, str] = {}
    for line in body.decode("latin-1", "replace").splitlines():
        match = _KEY.match(line.strip())
        if match and match.group(1) in _BLOCK_KEYS:
            found[match.group(1)] = match.group(2)
    return tuple(found.items())


def _user_data_polarity(ds: Dataset) -> bool | None:
    """Whether the user data block (0043,102A) says the phase encoding is unflipped."""
    raw = private(ds, 0x0043, _PARM, 0x2A, "OB")
    if not isinstance(raw, bytes | bytearray) or len(raw) < 916:
        return None
    data = bytes(raw)
    offset = struct.unpack("<H", data[24:26])[0]
    if len(data) < offset + 916:
        return None
    version = struct.unpack("<f", data[offset : offset + 4])[0]
    if not 5.0 <= version <= 40.0:
        return None
    start, ky_direction = offset, 0x0394
    if version >= 25.002:
        start += 0x004C
        ky_direction -= 0x008C
    if not struct.unpack("<h", data[start + 0x3A : start + 0x3C])[0] & 0x800:
        return None  # not EPI
    unflipped = bool(struct.unpack("<h", data[start + 0x30 : start + 0x32])[0]
                     & _POLARITY_UNFLIPPED_BIT)
    slice_order = struct.unpack("<h", data[start + ky_direction : start + ky_direction + 2])[0]
    return (not unflipped) if slice_order == _SLICE_ORDER_BOTTOM_UP else unflipped


def _software(ds: Dataset) -> tuple[float, int] | None:
    found = _VERSION.search(text(ds.get("SoftwareVersions")))
    if found is None:
        return None
    release = int(found.group(3)) if found.group(3) else 0
    return float(f"{int(found.group(1))}.{int(found.group(2))}"), release


def _epi_variant(ds: Dataset, options: str, group_delay: float | None) -> str:
    name = text(private(ds, 0x0019, _ACQU, 0x9C, "LO"))
    internal = text(private(ds, 0x0019, _ACQU, 0x9E, "LO")).strip()
    if group_delay is not None or "epiRT" in name or "FMRI" in options:
        return "realtime"
    if "epi2" in name or internal == "EPI2" or "DIFF" in options:
        return "diffusion"
    if ("epi" in name and "epi_pepolar" not in name) or internal == "EPI" or "MPh" in options:
        return "multiphase"
    return "other"


def derive_ge(ds: Dataset, out: dict[str, object]) -> None:
    """Add the GE parameters of ``ds`` to ``out`` (raw values; validated later)."""
    block = protocol_block(ds)
    options = block.get("IOPT", "")
    group_delay = first_float(private(ds, 0x0043, _PARM, 0x7C, "FL"))
    out["epi_variant"] = _epi_variant(ds, options, group_delay)
    if "SLICEORDER" in block:
        order = first_int(block["SLICEORDER"])
        out["slice_order"] = {0: "sequential", 1: "interleaved"}.get(order) \
            if order is not None else None
    delay = first_float(block["DELACQ"]) if "DELACQ" in block else None
    if delay is None and group_delay is not None:
        delay = group_delay
    if delay is not None:
        out["volume_delay"] = delay
    version = _software(ds)
    if version is not None:
        out["software_version"], out["software_release"] = version

    multiband = first_int(private(ds, 0x0043, _PARM, 0xB6, "LO"))
    if multiband is not None and multiband >= 1:
        out["multiband_acceleration_factor"] = multiband
    raw_asset = private(ds, 0x0043, _PARM, 0x83, "DS")
    asset = floats(raw_asset)
    # damaged R factors: no readout, which would otherwise be computed unaccelerated
    readout_known = raw_asset is None or bool(asset)
    accel = 1.0 / asset[0] if asset and asset[0] > 0 else None
    if accel is not None:
        out["parallel_reduction_factor_in_plane"] = accel
    if len(asset) > 1 and asset[1] > 0:  # as dcm2niix (issue 314): R factors phase, slice
        out["parallel_reduction_out_of_plane"] = 1.0 / asset[1]
    points = first_float(private(ds, 0x0027, _IMAG, 0x60, "FL"))
    arms = first_float(private(ds, 0x0027, _IMAG, 0x61, "FL"))
    if points is not None and points > 0:
        out["number_of_points_per_arm"] = points
    if arms is not None and arms > 0:
        out["number_of_arms"] = arms
    trigger = first_float(ds.get("TriggerTime"))
    if trigger is not None:
        out["trigger_time"] = trigger / 1000.0

    reordering = str(ds.get("RectilinearPhaseEncodeReordering") or "").upper()
    unflipped: bool | None = None
    if reordering.startswith("L"):
        unflipped = False
    elif reordering.startswith("R"):
        unflipped = True
    else:
        unflipped = _user_data_polarity(ds)
    axis = phase_axis(ds)
    if unflipped is not None:
        out["phase_encoding_polarity"] = "unflipped" if unflipped else "flipped"
    if unflipped is not None and axis[:3] in ("ROW", "COL"):
        letter = "i" if axis.startswith("ROW") else "j"
        out["phase_encoding_direction"] = letter if unflipped else letter + "-"

    image_type = first_int(private(ds, 0x0043, _PARM, 0x2F, "SS"))
    component = {0: "magnitude", 1: "phase", 2: "real", 3: "imaginary"}.get(image_type) \
        if image_type is not None else None
    if component is not None:
        out["complex_components"] = [component] * max(1, int(ds.get("NumberOfFrames") or 1))

    echo_spacing = first_float(private(ds, 0x0043, _PARM, 0x2C, "SS"))
    if echo_spacing is not None and echo_spacing > 0 and readout_known:
        _readout(ds, out, echo_spacing, accel)

    b_raw = private(ds, 0x0043, _PARM, 0x39, "IS")
    if b_raw is not None:
        b_value = first_float(b_raw)
        if b_value is not None:
            while b_value >= 1e9:
                b_value -= 1e9
            out["diffusion_b_values"] = [b_value]
            gradient = [first_float(private(ds, 0x0019, _ACQU, e, "DS"))
                        for e in (0xBB, 0xBC, 0xBD)]
            if None not in gradient:
                out["diffusion_gradients"] = [float(g) for g in gradient if g is not None]
                out["diffusion_gradient_frame"] = "ge_logical"
    shims = [first_float(private(ds, 0x0043, _PARM, e, "SS")) for e in (0x02, 0x03, 0x04)]
    if None not in shims:
        out["shim_setting"] = shims
    directions = first_float(private(ds, 0x0019, _ACQU, 0xE0, "DS"))
    if directions is not None:
        out["diffusion_directions"] = round(directions)


def _readout(ds: Dataset, out: dict[str, object], echo_spacing_us: float,
             accel: float | None) -> None:
    """dcm2niix's GE readout: ceil(lines / R / f) x f - 1 echo spacings, f = 4 with PFF."""
    matrix = [int(v) for v in floats(ds.get("AcquisitionMatrix"))] \
        if ds.get("AcquisitionMatrix") else []
    lines = 0
    for value in matrix[2:4]:
        if value > 0:
            lines = value
    if lines <= 0:
        return
    options = [str(v).upper() for v in ds.get("ScanOptions") or []]
    if isinstance(ds.get("ScanOptions"), str):
        options = str(ds.get("ScanOptions")).upper().split("\\")
    round_factor = 4.0 if "PFF" in options else 2.0
    readout = (math.ceil(lines / (accel or 1.0) / round_factor) * round_factor - 1.0) \
        * echo_spacing_us * 1e-6
    rows, cols = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
    axis = phase_axis(ds)
    recon = rows if rows == cols or axis.startswith("COL") else cols if axis.startswith("ROW") \
        else lines
    if recon > 1 and readout > 0:
        out["effective_echo_spacing"] = readout / (recon - 1)
        out["total_readout_time"] = readout

