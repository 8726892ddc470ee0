"""Siemens acquisition parameters: CSA image and series headers (via nibabel.nicom), the
(0019) and (0051) groups of classic files, and the (0021) groups of XA enhanced/classic files.
"""

from __future__ import annotations

import datetime
import math
import re
import warnings
from functools import lru_cache
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.valuerep import DT

from lake.nifti._private import (
    DecodeError,
    first_float,
    first_int,
    floats,
    image_type,
    phase_axis,
    private,
    text,
)

with warnings.catch_warnings():
    # nibabel announces its DICOM readers as experimental on import; only the CSA parser is used
    warnings.filterwarnings(
        "ignore", message="The DICOM readers are highly experimental", category=UserWarning
    )
    from nibabel.nicom import csareader as _csareader

#: nibabel's CSA parser is untyped; treat it as such in one place.
csareader: Any = _csareader

__all__ = ["csa_header", "derive_siemens", "mosaic_geometry"]

_MR_HEADER = ("SIEMENS MR HEADER",)
_SDS = ("SIEMENS MR SDS 01",)
_SDI = ("SIEMENS MR SDI 02",)
_CSA_ERRORS = (*DecodeError, csareader.CSAReadError, csareader.CSAError)
_ASCCONV = re.compile(rb"^\s*([A-Za-z_][\w.\[\]]*)\s*=\s*([-+0-9.xXa-fA-F]+)\s*$", re.MULTILINE)
#: The shim currents in the order of BIDS ShimSetting (linear offsets, then higher orders).
_SHIM_KEYS = (
    b"sGRADSPEC.asGPAData[0].lOffsetX",
    b"sGRADSPEC.asGPAData[0].lOffsetY",
    b"sGRADSPEC.asGPAData[0].lOffsetZ",
    *(b"sGRADSPEC.alShimCurrent[%d]" % i for i in range(5)),
)
#: The linear offsets as protocols before VD name them.
_OLD_OFFSET_KEYS = (b"sGRADSPEC.lOffsetX", b"sGRADSPEC.lOffsetY", b"sGRADSPEC.lOffsetZ")
#: Protocol (ASCCONV) keys read, an explicit allow-list: values are numbers only (other keys
#: of the protocol hold free text, and some numeric ones dates).
_PROTOCOL_KEYS = frozenset(
    {
        b"sSliceAcceleration.lMultiBandFactor",
        b"sSliceArray.ucMode",
        b"lDelayTimeInTR",
        b"sKSpace.lBaseResolution",
        b"sKSpace.ucPhasePartialFourier",
        b"sKSpace.dPhaseResolution",
        b"sKSpace.dPhaseOversamplingForDialog",
        b"sKSpace.uc2DInterpolation",
        b"sTXSPEC.asNucleusInfo[0].flReferenceAmplitude",
        b"sPat.lRefLinesPE",
        b"sPat.lAccelFactPE",
        b"sPat.ucPATMode",
        b"ucCoilCombineMode",
        b"sFastImaging.lEchoSpacing",
        b"sDiffusion.dsScheme",
        b"lContrasts",
        b"sAsl.ulMode",
        b"sAsl.ulDelayArraySize",
        b"sAsl.sPostLabelingDelay[0]",
        b"sAsl.ulLabelingDuration",
        b"alTE[0]",
        b"alTE[1]",
        *_SHIM_KEYS,
        *_OLD_OFFSET_KEYS,
    }
)
#: Partial Fourier codes of sKSpace.ucPhasePartialFourier and the fraction each acquires.
_PARTIAL_FOURIER = {1.0: 0.5, 2.0: 0.625, 4.0: 0.75, 8.0: 0.875, 16.0: 1.0}


_CSA_OFFSET = {"image": 0x10, "series": 0x20}


def csa_header(ds: Dataset, kind: str = "image") -> dict[str, Any] | None:
    """The parsed CSA ``image`` or ``series`` header, None when absent or unreadable.

    The returned dict may be shared between calls (parses are cached): read it only.
    """
    raw = private(ds, 0x0029, ("SIEMENS CSA HEADER",), _CSA_OFFSET[kind], "OB")
    if not isinstance(raw, bytes | bytearray) or not raw:
        return None
    return _read_csa(bytes(raw))


@lru_cache(maxsize=32)
def _read_csa(raw: bytes) -> dict[str, Any] | None:
    """nibabel's parse of one CSA header; the series header repeats across a series."""
    try:
        header = csareader.read(raw)
    except _CSA_ERRORS:
        return None
    return header if isinstance(header, dict) else None


def _csa(csa: dict[str, Any] | None, name: str) -> list[Any]:
    if csa is None:
        return []
    tag = csa.get("tags", {}).get(name)
    if not tag:
        return []
    return list(tag.get("items") or [])


def _csa_scalar(csa: dict[str, Any] | None, name: str) -> float | None:
    items = _csa(csa, name)
    return first_float(items[0]) if items else None


def mosaic_geometry(
    ds: Dataset, tiles: int, normal_sign: np.ndarray[Any, Any] | None
) -> tuple[list[int], list[float]] | None:
    """Grid and tile positions of a Siemens mosaic (nibabel's correction of the mosaic IPP).

    Returns ``([rows_of_tiles, cols_of_tiles], flattened positions)`` or None when the
    standard geometry is incomplete.
    """
    try:
        ipp = np.array(floats(ds.get("ImagePositionPatient")), dtype=np.float64)
        iop = np.array(floats(ds.get("ImageOrientationPatient")), dtype=np.float64)
        spacing = np.array(floats(ds.get("PixelSpacing")), dtype=np.float64)
        rows, cols = int(ds.Rows), int(ds.Columns)
    except DecodeError:
        return None
    if ipp.shape != (3,) or iop.shape != (6,) or spacing.shape != (2,) or tiles < 1:
        return None
    size = math.ceil(math.sqrt(tiles))
    if rows % size or cols % size:
        return None
    row_cos, col_cos = iop[:3], iop[3:]
    # position of voxel (0, 0) of the first tile: the mosaic IPP refers to a virtual
    # image of the mosaic's size centred like one tile (nibabel's dicom_mosaic theory)
    shift = np.array([rows - rows / size, cols - cols / size]) / 2.0
    q = np.column_stack([col_cos * spacing[0], row_cos * spacing[1]])
    first = ipp + q @ shift
    normal = np.cross(row_cos, col_cos)
    if normal_sign is not None and float(np.dot(normal, normal_sign)) < 0:
        normal = -normal
    step = first_float(ds.get("SpacingBetweenSlices"))
    if step is None or step <= 0:
        step = first_float(ds.get("SliceThickness"))
    if step is None or step <= 0:
        return None
    positions = [first + k * step * normal for k in range(tiles)]
    return [size, size], [float(v) for p in positions for v in p]


def _recon_matrix_pe(ds: Dataset, rows: int, cols: int) -> int | None:
    """dcm2niix's ReconMatrixPE: the reconstructed matrix along the phase axis."""
    axis = phase_axis(ds)
    if rows > 0 and cols > 0:
        if rows == cols:
            return rows
        if axis.startswith("COL"):
            return rows
        if axis.startswith("ROW"):
            return cols
    matrix = floats(ds.get("AcquisitionMatrix")) if ds.get("AcquisitionMatrix") else []
    lines = [int(v) for v in matrix[2:4] if v > 0]
    return lines[-1] if lines else None


def _phase_direction(ds: Dataset, positive: float | None) -> str | None:
    axis = phase_axis(ds)
    if positive not in (0.0, 1.0) or axis[:3] not in ("ROW", "COL"):
        return None
    letter = "i" if axis.startswith("ROW") else "j"
    return letter if positive == 1.0 else letter + "-"


def _pat_mode(value: Any) -> tuple[float | None, int | None]:
    """Siemens PAT mode text, e.g. ``p2`` or ``p2s4``: in-plane and multiband factors."""
    mode = text(value).strip().lower()
    accel = re.search(r"p(\d+(?:\.\d+)?)", mode)
    slices = re.search(r"s(\d+)", mode)
    return (float(accel.group(1)) if accel else None, int(slices.group(1)) if slices else None)


def _protocol(raw: Any) -> dict[str, float]:
    """The few numeric keys of a Siemens ASCCONV protocol that are used."""
    if isinstance(raw, str):
        raw = raw.encode("latin-1", "replace")
    if not isinstance(raw, bytes | bytearray):
        return {}
    return dict(_protocol_keys(bytes(raw)))


@lru_cache(maxsize=32)
def _protocol_keys(raw: bytes) -> tuple[tuple[str, float], ...]:
    """The protocol repeats across a series: parsed once."""
    found: dict[str, float] = {}
    for key, value in _ASCCONV.findall(raw):
        if key in _PROTOCOL_KEYS:
            try:
                number = float(int(value, 16)) if value.lower().startswith(b"0x") \
                    else float(value)
            except ValueError:
                continue
            found[key.decode()] = number
    return tuple(found.items())


def _rescued_slice_timing(
    ds: Dataset, protocol: dict[str, float], tiles: int
) -> list[float] | None:
    """dcm2niix's rescue for mosaics without MosaicRefAcqTimes: slice times from the
    protocol's slice order (ascending, descending, interleaved), TR and delay in TR."""
    mode = protocol.get("sSliceArray.ucMode")
    tr = first_float(ds.get("RepetitionTime"))
    if mode not in (1.0, 2.0, 4.0) or tr is None or tiles < 2:
        return None
    acquisition = tr / 1000.0 - protocol.get("lDelayTimeInTR", 0.0) / 1e6
    times = [i * acquisition / tiles for i in range(tiles)]
    if mode == 1.0:
        return times
    if mode == 2.0:
        return times[::-1]
    odd, even = 0, (tiles + 1) // 2
    if tiles % 2 == 0:  # Siemens starts interleaved series of even length with slice 2
        odd, even = even, 0
    out = []
    for i in range(tiles):
        if i % 2 == 0:
            out.append(times[odd])
            odd += 1
        else:
            out.append(times[even])
            even += 1
    return out


def _xa_items(ds: Dataset) -> tuple[Dataset | None, list[Dataset]]:
    """The shared (0021,10FE) item and the per-frame (0021,11FE) items of an XA object."""
    shared_item = None
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared:
        seq = private(shared[0], 0x0021, _SDS, 0xFE, "SQ")
        if seq:
            shared_item = seq[0]
    if shared_item is None:
        seq = private(ds, 0x0021, _SDS, 0xFE, "SQ")
        if seq:
            shared_item = seq[0]
    frames: list[Dataset] = []
    for item in ds.get("PerFrameFunctionalGroupsSequence") or []:
        seq = private(item, 0x0021, _SDI, 0xFE, "SQ")
        if seq:
            frames.append(seq[0])
    if not frames:
        seq = private(ds, 0x0021, _SDI, 0xFE, "SQ")
        if seq:
            frames = [seq[0]]
        elif private(ds, 0x0021, _SDI, 0x1C, "IS") is not None:
            frames = [ds]  # classic XA: the elements sit at the top level
    return shared_item, frames


def _early_xa(ds: Dataset) -> bool:
    version = text(ds.get("SoftwareVersions")).upper()
    return "XA10" in version or "XA11" in version


def _frame_acquisition_times(ds: Dataset) -> list[float] | None:
    """Seconds of each frame's FrameAcquisitionDateTime after the instance's earliest."""
    times: list[float] = []
    for item in ds.get("PerFrameFunctionalGroupsSequence") or []:
        content = item.get("FrameContentSequence")
        value = content[0].get("FrameAcquisitionDateTime") if content else None
        try:
            moment = DT(str(value)) if value else None
        except ValueError:
            return None
        if not isinstance(moment, datetime.datetime):
            return None
        times.append(moment.timestamp() if moment.tzinfo else
                     moment.replace(tzinfo=datetime.UTC).timestamp())
    if not times:
        return None
    earliest = min(times)
    return [t - earliest for t in times]


def derive_siemens(ds: Dataset, out: dict[str, object]) -> None:
    """Add the Siemens parameters of ``ds`` to ``out`` (raw values; validated later)."""
    csa = csa_header(ds, "image")
    series = csa_header(ds, "series")
    shared, frames = _xa_items(ds)
    first_frame = frames[0] if frames else None

    tiles = _csa_scalar(csa, "NumberOfImagesInMosaic")
    if tiles is None:
        tiles = first_float(private(ds, 0x0019, _MR_HEADER, 0x0A, "US"))
    types = [str(v).upper() for v in image_type(ds) or []]
    if tiles is not None and tiles >= 1 and "MOSAIC" in types:
        out["mosaic_tiles"] = int(tiles)
        normal = [first_float(v) for v in _csa(csa, "SliceNormalVector")]
        sign = np.array(normal, dtype=np.float64) if len(normal) == 3 and None not in normal \
            else None
        geometry = mosaic_geometry(ds, int(tiles), sign)
        if geometry is not None:
            out["mosaic_grid"], out["slice_positions"] = geometry

    times: list[float | None] = [first_float(v) for v in _csa(csa, "MosaicRefAcqTimes")]
    if not times or None in times:
        raw = private(ds, 0x0019, _MR_HEADER, 0x29, "FD")
        times = list(floats(raw)) if raw is not None else []
    if times and None not in times:
        out["slice_timing"] = [float(t) / 1000.0 for t in times if t is not None]
    elif frames:
        after = [first_float(private(f, 0x0021, _SDI, 0x04, "DS")) for f in frames]
        acquired = _frame_acquisition_times(ds)
        if _early_xa(ds) and acquired is not None:
            # XA10/XA11 record single-band times in (0021,1104) for multiband sequences
            out["slice_timing"] = acquired
        elif after and None not in after:
            out["slice_timing"] = [float(t) for t in after if t is not None]

    positive = _csa_scalar(csa, "PhaseEncodingDirectionPositive")
    if positive is None and first_frame is not None:
        positive = first_float(private(first_frame, 0x0021, _SDI, 0x1C, "IS"))
    out["phase_encoding_direction"] = _phase_direction(ds, positive)

    bandwidth = _csa_scalar(csa, "BandwidthPerPixelPhaseEncode")
    if bandwidth is None:
        bandwidth = first_float(private(ds, 0x0019, _MR_HEADER, 0x28, "FD"))
    if bandwidth is None and first_frame is not None:
        bandwidth = first_float(private(first_frame, 0x0021, _SDI, 0x53, "FD"))
    if bandwidth is not None and bandwidth > 0:
        out["bandwidth_per_pixel_phase_encode"] = bandwidth
        rows, cols = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
        grid = out.get("mosaic_grid")
        if isinstance(grid, list) and len(grid) == 2:
            rows, cols = rows // int(grid[0]), cols // int(grid[1])
        recon = _recon_matrix_pe(ds, rows, cols)
        if recon and recon > 1:
            spacing = 1.0 / (bandwidth * recon)
            out["effective_echo_spacing"] = spacing
            out["total_readout_time"] = spacing * (recon - 1)

    dwell = _csa_scalar(csa, "RealDwellTime")
    if dwell is None:
        dwell = first_float(private(ds, 0x0019, _MR_HEADER, 0x18, "IS"))
    if dwell is None and first_frame is not None:
        dwell = first_float(private(first_frame, 0x0021, _SDI, 0x42, "IS"))
    if dwell is not None and dwell > 0:
        out["dwell_time"] = dwell * 1e-9

    protocol_items = _csa(series, "MrPhoenixProtocol") or _csa(series, "MrProtocol")
    protocol = _protocol(protocol_items[0]) if protocol_items else {}
    if not protocol and shared is not None:
        protocol = _protocol(private(shared, 0x0021, _SDS, 0x19, "OB"))
    multiband = first_int(protocol.get("sSliceAcceleration.lMultiBandFactor"))
    accel, pat_slices = _pat_mode(private(ds, 0x0051, _MR_HEADER, 0x11, "LO"))
    if multiband is None:
        multiband = pat_slices
    if multiband is not None and multiband >= 1:
        out["multiband_acceleration_factor"] = multiband
    tiles_found = out.get("mosaic_tiles")
    if ("slice_timing" not in out and isinstance(tiles_found, int) and (multiband or 1) <= 1
            and str(ds.get("MRAcquisitionType") or "").upper() != "3D"):
        rescued = _rescued_slice_timing(ds, protocol, tiles_found)
        if rescued is not None:
            out["slice_timing"] = rescued
    if accel is not None:
        out["parallel_reduction_factor_in_plane"] = accel
    _protocol_parameters(protocol, out)

    if "diffusion_b_values" not in out:
        b_value = _csa_scalar(csa, "B_value")
        if b_value is None:
            b_value = first_float(private(ds, 0x0019, _MR_HEADER, 0x0C, "IS"))
        if b_value is not None:
            out["diffusion_b_values"] = [b_value]
            gradient = [first_float(v) for v in _csa(csa, "DiffusionGradientDirection")]
            if len(gradient) != 3 or None in gradient:
                raw = private(ds, 0x0019, _MR_HEADER, 0x0E, "FD")
                gradient = [float(v) for v in floats(raw)] if raw is not None else []
            if len(gradient) == 3 and None not in gradient:
                if all(g is not None and g < -1.0 for g in gradient):
                    out["diffusion_b_values"] = [0.0]  # Syngo 2004A marks b=0 so
                    gradient = [0.0, 0.0, 0.0]
                out["diffusion_gradients"] = [float(g) for g in gradient if g is not None]
                out["diffusion_gradient_frame"] = "patient"

    table = [first_float(v) for v in _csa(csa, "ImaRelTablePosition")]
    if not table:
        for holder in (shared, ds):
            if holder is not None and not table:
                table = [float(v) for v in floats(private(holder, 0x0021, _SDS, 0x05, "IS"))]
    if len(table) == 3 and None not in table:
        out["table_position"] = table
    kinds = set(types)
    if first_frame is not None:
        type_text = [token for value in text(private(first_frame, 0x0021, _SDI, 0x75, "CS"))
                     .upper().split("\\") for token in value.split("_") if token]
        kinds.update(type_text)
        if any(type_text):
            out["image_type_text"] = type_text
    if kinds & {"DIS2D", "DIS3D"}:
        out["nonlinear_gradient_correction"] = True
    elif "ND" in kinds:
        out["nonlinear_gradient_correction"] = False

    if first_frame is not None and ds.get("EchoNumbers") in (None, ""):
        ice = text(private(first_frame, 0x0021, _SDI, 0x06, "LO")).split("_")
        if len(ice) > 1:
            out["echo_number"] = first_int(ice[1])


def _protocol_parameters(protocol: dict[str, float], out: dict[str, object]) -> None:
    """The sidecar parameters dcm2niix reads from the series protocol (raw; validated later).

    Siemens leaves keys whose value is zero out of the protocol, so an absent shim current
    is zero once any shim value is present.
    """
    direct = (
        ("sKSpace.lBaseResolution", "base_resolution", 1.0),
        ("sKSpace.dPhaseResolution", "phase_resolution", 1.0),
        ("sKSpace.dPhaseOversamplingForDialog", "phase_oversampling", 1.0),
        ("sTXSPEC.asNucleusInfo[0].flReferenceAmplitude", "tx_ref_amp", 1.0),
        ("sPat.lRefLinesPE", "ref_lines_pe", 1.0),
        ("lDelayTimeInTR", "delay_time", 1e-6),
        ("sFastImaging.lEchoSpacing", "vendor_reported_echo_spacing", 1e-6),
    )
    for key, name, scale in direct:
        value = protocol.get(key)
        if value is not None and value > 0:
            number = value * scale
            out[name] = int(number) if name in ("base_resolution", "ref_lines_pe") else number
    partial = _PARTIAL_FOURIER.get(protocol.get("sKSpace.ucPhasePartialFourier", 0.0))
    if partial is not None:
        out["partial_fourier"] = partial
    shims = [protocol.get(key.decode()) for key in _SHIM_KEYS]
    for i, old_key in enumerate(_OLD_OFFSET_KEYS):
        if shims[i] is None:
            shims[i] = protocol.get(old_key.decode())
    if any(v is not None for v in shims):
        out["shim_setting"] = [v if v is not None else 0.0 for v in shims]
    interpolation = protocol.get("sKSpace.uc2DInterpolation")
    if interpolation is not None:
        out["interpolation_2d"] = interpolation > 0
    out["coil_combination"] = {1.0: "sum_squares", 2.0: "adaptive"}.get(
        protocol.get("ucCoilCombineMode", 0.0))
    mode = protocol.get("sPat.ucPATMode")
    if mode is not None:
        accelerated = protocol.get("sPat.lAccelFactPE", 0.0) > 0
        out["matrix_coil_mode"] = {1.0: "sense", 2.0: "grappa"}.get(mode, "none") \
            if accelerated else "none"
    first_te, second_te = protocol.get("alTE[0]"), protocol.get("alTE[1]")
    if protocol.get("lContrasts") == 2.0 and first_te and second_te:
        out["field_map_echo_times"] = [first_te * 1e-6, second_te * 1e-6]
    if protocol.get("sAsl.ulMode") == 32.0:
        out["asl_type"] = "pcasl"
        duration = protocol.get("sAsl.ulLabelingDuration")
        delay = protocol.get("sAsl.sPostLabelingDelay[0]")
        if duration:
            out["labeling_duration"] = duration * 1e-6
        if delay and protocol.get("sAsl.ulDelayArraySize") == 1.0:
            out["post_labeling_delay"] = delay * 1e-6
    out["diffusion_scheme"] = {1.0: "bipolar", 2.0: "monopolar"}.get(
        protocol.get("sDiffusion.dsScheme", 0.0))
