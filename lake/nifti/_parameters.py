"""Acquisition parameters: declared once, typed, validated.

Everything non-identifying that dcm2niix puts in a BIDS sidecar or in bval/bvec files and that
vendors keep in private elements (Siemens CSA headers, GE, Philips and UIH private groups) is
derived from the *original* header while it is still in hand (at ingest, before
de-identification removes private elements), validated here, stored per instance in the
catalog, and handed back to the converter at export.

Each :class:`Parameter` declares its name (the catalog column), kind, unit, meaning and
where each vendor keeps it. :func:`validate` accepts only finite numbers within bounds,
members of a fixed vocabulary and bounded lists of those: never free text, so no
identifier can ride along. This module imports nothing heavy (the catalog schema reads it).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import TypeAlias

__all__ = [
    "ACQUISITION_NAMES",
    "PARAMETERS",
    "AcquisitionValue",
    "Kind",
    "Parameter",
    "acquisition_from_row",
    "parameter",
    "validate",
    "validate_all",
]

AcquisitionValue: TypeAlias = float | int | bool | str | list[float] | list[int] | list[str]
"""What a validated parameter holds (JSON- and Arrow-friendly)."""


class Kind(StrEnum):
    """The type of a parameter's values."""

    FLOAT = "float"
    INT = "int"
    BOOL = "bool"
    ENUM = "enum"
    FLOAT_LIST = "float_list"
    INT_LIST = "int_list"
    ENUM_LIST = "enum_list"


@dataclass(frozen=True)
class Parameter:
    """One acquisition parameter.

    Parameters
    ----------
    name : str
        snake_case name: the catalog column and the converter's key.
    kind : Kind
        Value type.
    unit : str
        Unit of the values ("" when dimensionless).
    doc : str
        Meaning, one sentence.
    sources : mapping of str to str
        Vendor (or "standard") to the elements the value is derived from.
    choices : tuple of str
        Allowed values of an enumeration.
    low, high : float
        Inclusive bounds of numbers (and of list items).
    max_items : int
        Longest list accepted.
    multiple_of : int
        List lengths must be a multiple of this (3 for vectors).
    """

    name: str
    kind: Kind
    unit: str
    doc: str
    sources: Mapping[str, str] = field(default_factory=dict)
    choices: tuple[str, ...] = ()
    low: float = -math.inf
    high: float = math.inf
    max_items: int = 4096
    multiple_of: int = 1


_MAX_SLICES = 2048
#: Siemens image type values (ImageType and the XA image type text (0021,1175)): the closed
#: vocabulary an image type text must come from to be kept.
_SIEMENS_IMAGE_TYPES = (
    "ORIGINAL", "DERIVED", "PRIMARY", "SECONDARY", "M", "P", "R", "I", "ND", "DIS2D",
    "DIS3D", "NORM", "MB", "MOSAIC", "NONE", "OTHER", "DIFFUSION", "ADC", "TRACEW", "FA",
    "TENSOR", "B0", "EXP", "ASL", "SUB", "TTEST", "RELCBF", "CBF", "PERFUSION", "FMRI",
    "MOCO", "MPR", "MIP", "MFSPLIT", "FM", "PHASE", "MAGNITUDE", "REAL", "IMAGINARY",
    "T1", "T2", "PD", "SWI", "MTT", "TTP", "CBV", "UNI", "FIL", "CSA", "FILTERED",
)

PARAMETERS: tuple[Parameter, ...] = (
    Parameter(
        "slice_timing",
        Kind.FLOAT_LIST,
        "s",
        "Acquisition time of each slice this instance holds, in stored order (mosaic tiles, "
        "frames, or its one slice), relative to an origin shared by its volume or series; "
        "the export subtracts the volume's earliest time",
        {
            "Siemens": "CSA image header MosaicRefAcqTimes (0029,1010) or (0019,1029), ms; "
            "without them (no multiband) from the protocol's slice order, TR and delay in TR "
            "(CSA series header, as dcm2niix's rescue)",
            "Siemens XA": "TimeAfterStart (0021,1104) of each frame, s; XA10/XA11 (which record "
            "single-band times there) FrameAcquisitionDateTime relative to the first frame",
            "UIH": "AcquisitionTime of each grid tile in (0065,1051), relative to the earliest",
        },
        low=-86400.0,
        high=86400.0,
        max_items=_MAX_SLICES,
    ),
    Parameter(
        "mosaic_tiles",
        Kind.INT,
        "",
        "Number of slices stored as tiles of this mosaic instance",
        {
            "Siemens": "CSA image header NumberOfImagesInMosaic (0029,1010) or (0019,100A)",
            "UIH": "NumberOfImagesInGrid (0065,1050)",
        },
        low=1,
        high=_MAX_SLICES,
    ),
    Parameter(
        "mosaic_grid",
        Kind.INT_LIST,
        "",
        "Rows and columns of tiles in a mosaic instance (tiles are stored row by row)",
        {
            "Siemens": "square grid of ceil(sqrt(mosaic_tiles)) tiles a side",
            "UIH": "ceil(sqrt(tiles)) tiles across, as many rows as needed",
        },
        low=1,
        high=256,
        max_items=2,
        multiple_of=2,
    ),
    Parameter(
        "slice_positions",
        Kind.FLOAT_LIST,
        "mm",
        "Patient-frame position (x, y, z, flattened) of the first voxel of each mosaic tile, "
        "in tile order",
        {
            "Siemens": "ImagePositionPatient corrected for the mosaic layout, stepped along the "
            "CSA SliceNormalVector (0029,1010) by SpacingBetweenSlices",
            "UIH": "ImagePositionPatient of each tile in (0065,1051)",
        },
        low=-1e6,
        high=1e6,
        max_items=3 * _MAX_SLICES,
        multiple_of=3,
    ),
    Parameter(
        "phase_encoding_direction",
        Kind.ENUM,
        "",
        "Phase-encoding axis and polarity along the stored pixel matrix: i runs along a row "
        "(column index), j down the columns (row index); '-' towards decreasing index",
        {
            "standard": "InPlanePhaseEncodingDirection (0018,1312) gives the axis",
            "Siemens": "CSA image header PhaseEncodingDirectionPositive (0029,1010)",
            "Siemens XA": "PhaseEncodingDirectionPositive (0021,111C)",
            "GE": "RectilinearPhaseEncodeReordering (0018,9034), else the user data block "
            "(0043,102A) polarity and view-order flags",
            "UIH": "PhaseEncodingDirectionPositive (0065,1058)",
        },
        choices=("i", "i-", "j", "j-"),
    ),
    Parameter(
        "bandwidth_per_pixel_phase_encode",
        Kind.FLOAT,
        "Hz",
        "Bandwidth per pixel in the phase-encoding direction",
        {
            "Siemens": "CSA image header BandwidthPerPixelPhaseEncode (0029,1010) or (0019,1028)",
            "Siemens XA": "(0021,1153)",
        },
        low=0.0,
        high=1e7,
    ),
    Parameter(
        "effective_echo_spacing",
        Kind.FLOAT,
        "s",
        "Effective echo spacing of the reconstructed phase-encoding lines (BIDS "
        "EffectiveEchoSpacing)",
        {
            "Siemens": "1 / (BandwidthPerPixelPhaseEncode x reconstructed phase lines)",
            "GE": "effective echo spacing (0043,102C), ASSET factor (0043,1083), "
            "AcquisitionMatrix and partial Fourier (ScanOptions PFF)",
        },
        low=0.0,
        high=1.0,
    ),
    Parameter(
        "total_readout_time",
        Kind.FLOAT,
        "s",
        "Effective readout time, first to last phase-encoding line (BIDS TotalReadoutTime)",
        {
            "Siemens, GE": "effective_echo_spacing x (reconstructed phase lines - 1)",
            "UIH": "AcquisitionDuration (0018,9073) of the tiles in (0065,1051), ms",
        },
        low=0.0,
        high=10.0,
    ),
    Parameter(
        "dwell_time",
        Kind.FLOAT,
        "s",
        "Readout dwell time (BIDS DwellTime)",
        {
            "Siemens": "CSA image header RealDwellTime (0029,1010) or (0019,1018), ns",
            "Siemens XA": "RealDwellTime (0021,1142), ns",
        },
        low=0.0,
        high=1.0,
    ),
    Parameter(
        "multiband_acceleration_factor",
        Kind.INT,
        "",
        "Simultaneous-multislice (multiband, hyperband) acceleration factor",
        {
            "Siemens": "CSA series protocol sSliceAcceleration.lMultiBandFactor (0029,1020), "
            "else the PAT mode text (0051,1011)",
            "Siemens XA": "series protocol sSliceAcceleration.lMultiBandFactor (0021,1019)",
            "GE": "multiband parameters (0043,10B6), first value",
        },
        low=1,
        high=64,
    ),
    Parameter(
        "parallel_reduction_factor_in_plane",
        Kind.FLOAT,
        "",
        "In-plane parallel imaging acceleration (SENSE, GRAPPA, ASSET)",
        {
            "standard": "ParallelReductionFactorInPlane (0018,9069)",
            "Siemens": "PAT mode text (0051,1011), e.g. p2",
            "GE": "1 / first ASSET R factor (0043,1083)",
            "UIH": "parallel information (0065,100D)",
        },
        low=1.0,
        high=64.0,
    ),
    Parameter(
        "diffusion_b_values",
        Kind.FLOAT_LIST,
        "s/mm2",
        "Diffusion b-value of each frame (one for a single-frame instance)",
        {
            "standard": "DiffusionBValue (0018,9087), per frame in MRDiffusionSequence",
            "Siemens": "CSA image header B_value (0029,1010) or (0019,100C)",
            "GE": "(0043,1039) first value modulo 1e9",
            "Philips": "(2001,1003)",
            "UIH": "(0065,1009)",
        },
        low=0.0,
        high=1e6,
        max_items=_MAX_SLICES,
    ),
    Parameter(
        "diffusion_gradients",
        Kind.FLOAT_LIST,
        "",
        "Diffusion gradient direction of each frame (x, y, z flattened) in the frame named by "
        "diffusion_gradient_frame",
        {
            "standard": "DiffusionGradientOrientation (0018,9089)",
            "Siemens": "CSA image header DiffusionGradientDirection (0029,1010) or (0019,100E)",
            "GE": "(0019,10BB), (0019,10BC), (0019,10BD)",
            "Philips": "(2005,10B0), (2005,10B1), (2005,10B2)",
            "UIH": "(0065,1037)",
        },
        low=-1e3,
        high=1e3,
        max_items=3 * _MAX_SLICES,
        multiple_of=3,
    ),
    Parameter(
        "diffusion_gradient_frame",
        Kind.ENUM,
        "",
        "Frame of reference of diffusion_gradients: the patient frame (LPS), GE's logical "
        "(phase, frequency, slice) axes, or the image's row, column and slice axes",
        {"GE": "logical axes of (0019,10BB-BD)", "UIH": "image axes of (0065,1037)",
         "other vendors": "patient frame"},
        choices=("patient", "ge_logical", "image"),
    ),
    Parameter(
        "diffusion_directions",
        Kind.INT,
        "",
        "Number of diffusion directions the vendor reports for the series (0 marks a trace "
        "series on GE)",
        {"GE": "(0019,10E0)"},
        low=0,
        high=100000,
    ),
    Parameter(
        "complex_components",
        Kind.ENUM_LIST,
        "",
        "Complex component of each frame (one for a single-frame instance)",
        {
            "standard": "ComplexImageComponent (0008,9208), else ImageType (0008,0008) M/P/R/I",
            "GE": "image type (0043,102F): 0 magnitude, 1 phase, 2 real, 3 imaginary",
        },
        choices=("magnitude", "phase", "real", "imaginary"),
        max_items=_MAX_SLICES,
    ),
    Parameter(
        "scale_slopes",
        Kind.FLOAT_LIST,
        "",
        "Philips private scale slope of each frame, for floating-point values: "
        "stored x RescaleSlope + RescaleIntercept, divided by (RescaleSlope x scale slope)",
        {"Philips": "(2005,100E), per frame in (2005,140F) of enhanced objects"},
        low=-1e38,
        high=1e38,
        max_items=_MAX_SLICES,
    ),
    Parameter(
        "echo_number",
        Kind.INT,
        "",
        "Echo number, where the standard EchoNumbers (0018,0086) is absent",
        {"Siemens XA": "ICE dimensions (0021,1106), second value"},
        low=1,
        high=1024,
    ),
    Parameter(
        "slice_order",
        Kind.ENUM,
        "",
        "Order in which the slices of a volume are excited",
        {"GE": "protocol data block (0025,101B) SLICEORDER: 0 sequential, 1 interleaved"},
        choices=("sequential", "interleaved"),
    ),
    Parameter(
        "volume_delay",
        Kind.FLOAT,
        "s",
        "Delay after the slices of each volume (group delay); negative when it varies",
        {"GE": "protocol data block (0025,101B) DELACQ, else (0043,107C)"},
        low=-1e4,
        high=1e4,
    ),
    Parameter(
        "epi_variant",
        Kind.ENUM,
        "",
        "Which EPI pulse-sequence family produced the images, where it decides slice timing",
        {
            "GE": "pulse sequence names (0019,109C), (0019,109E), group delay (0043,107C) and "
            "the protocol data block (0025,101B) IOPT options FMRI, MPh, DIFF",
        },
        choices=("multiphase", "realtime", "diffusion", "other"),
    ),
    Parameter(
        "software_version",
        Kind.FLOAT,
        "",
        "Scanner software major.minor version, where slice timing depends on it",
        {"GE": "SoftwareVersions (0018,1020), e.g. 27.0 from RX27.0_R03"},
        low=0.0,
        high=1000.0,
    ),
    Parameter(
        "software_release",
        Kind.INT,
        "",
        "Scanner software release number (EA = 0), where slice timing depends on it",
        {"GE": "SoftwareVersions (0018,1020), e.g. 3 from RX27.0_R03"},
        low=0,
        high=1000,
    ),
    Parameter(
        "base_resolution",
        Kind.INT,
        "",
        "Acquired matrix along the readout before interpolation (Siemens base resolution)",
        {"Siemens": "series protocol sKSpace.lBaseResolution (CSA series header (0029,1020), "
                    "XA (0021,1019))"},
        low=1,
        high=8192,
    ),
    Parameter(
        "partial_fourier",
        Kind.FLOAT,
        "",
        "Fraction of k-space acquired along the phase-encoding axis (1 for full sampling)",
        {"Siemens": "series protocol sKSpace.ucPhasePartialFourier: 1, 2, 4, 8, 16 for 4/8, "
                    "5/8, 6/8, 7/8, 8/8"},
        low=0.5,
        high=1.0,
    ),
    Parameter(
        "phase_resolution",
        Kind.FLOAT,
        "",
        "Phase-encoding resolution relative to the base resolution",
        {"Siemens": "series protocol sKSpace.dPhaseResolution"},
        low=0.0,
        high=4.0,
    ),
    Parameter(
        "phase_oversampling",
        Kind.FLOAT,
        "",
        "Oversampling along the phase-encoding axis (0.5 for 50 %)",
        {"Siemens": "series protocol sKSpace.dPhaseOversamplingForDialog"},
        low=0.0,
        high=8.0,
    ),
    Parameter(
        "shim_setting",
        Kind.FLOAT_LIST,
        "",
        "Shim currents: the linear gradient offsets X, Y, Z then the higher-order shim currents "
        "(BIDS ShimSetting, scanner units)",
        {"Siemens": "series protocol sGRADSPEC.asGPAData[0].lOffsetX/Y/Z (before VD: "
                    "sGRADSPEC.lOffsetX/Y/Z) and sGRADSPEC.alShimCurrent[0-4]",
         "GE": "gradient offsets in X, Y, Z (0043,1002), (0043,1003), (0043,1004)"},
        low=-1e7,
        high=1e7,
        max_items=16,
    ),
    Parameter(
        "tx_ref_amp",
        Kind.FLOAT,
        "V",
        "Transmitter reference amplitude of the RF calibration (BIDS TxRefAmp)",
        {"Siemens": "series protocol sTXSPEC.asNucleusInfo[0].flReferenceAmplitude"},
        low=0.0,
        high=1e5,
    ),
    Parameter(
        "ref_lines_pe",
        Kind.INT,
        "",
        "Reference (autocalibration) lines along the phase-encoding axis of parallel imaging",
        {"Siemens": "series protocol sPat.lRefLinesPE"},
        low=0,
        high=8192,
    ),
    Parameter(
        "coil_combination",
        Kind.ENUM,
        "",
        "How the receive coil elements were combined (BIDS CoilCombinationMethod)",
        {"Siemens": "series protocol ucCoilCombineMode: 1 sum of squares, 2 adaptive combine"},
        choices=("sum_squares", "adaptive"),
    ),
    Parameter(
        "matrix_coil_mode",
        Kind.ENUM,
        "",
        "Parallel imaging mode as dcm2niix names it (BIDS MatrixCoilMode): sense, grappa or "
        "none",
        {"Siemens": "series protocol sPat.ucPATMode (1 sense, 2 grappa, else none; none "
                    "without sPat.lAccelFactPE)"},
        choices=("sense", "grappa", "none"),
    ),
    Parameter(
        "delay_time",
        Kind.FLOAT,
        "s",
        "Pause after the slices of each volume, within the repetition time (BIDS DelayTime)",
        {"Siemens": "series protocol lDelayTimeInTR, us"},
        low=0.0,
        high=1e4,
    ),
    Parameter(
        "vendor_reported_echo_spacing",
        Kind.FLOAT,
        "s",
        "Echo spacing the protocol reports, before parallel imaging and oversampling (BIDS "
        "VendorReportedEchoSpacing)",
        {"Siemens": "series protocol sFastImaging.lEchoSpacing, us"},
        low=0.0,
        high=1.0,
    ),
    Parameter(
        "interpolation_2d",
        Kind.BOOL,
        "",
        "Whether the images were interpolated in plane (BIDS Interpolation2D)",
        {"Siemens": "series protocol sKSpace.uc2DInterpolation"},
    ),
    Parameter(
        "diffusion_scheme",
        Kind.ENUM,
        "",
        "Diffusion gradient scheme (BIDS DiffusionScheme)",
        {"Siemens": "series protocol sDiffusion.dsScheme: 1 bipolar, 2 monopolar"},
        choices=("bipolar", "monopolar"),
    ),
    Parameter(
        "nonlinear_gradient_correction",
        Kind.BOOL,
        "",
        "Whether the images were corrected for gradient nonlinearity (BIDS "
        "NonlinearGradientCorrection)",
        {"Siemens": "ImageType (0008,0008) DIS2D or DIS3D (corrected) or ND (not); XA: the "
                    "same values in the image type text (0021,1175)"},
    ),
    Parameter(
        "table_position",
        Kind.FLOAT_LIST,
        "mm",
        "Table position relative to the isocentre (x, y, z)",
        {"Siemens": "CSA image header ImaRelTablePosition (0029,1010)",
         "Siemens XA": "(0021,1005)"},
        low=-1e5,
        high=1e5,
        max_items=3,
        multiple_of=3,
    ),
    Parameter(
        "phase_encoding_polarity",
        Kind.ENUM,
        "",
        "GE's phase-encoding polarity (BIDS PhaseEncodingPolarityGE)",
        {"GE": "RectilinearPhaseEncodeReordering (0018,9034), else the user data block "
               "(0043,102A) polarity and view-order flags"},
        choices=("unflipped", "flipped"),
    ),
    Parameter(
        "water_fat_shift",
        Kind.FLOAT,
        "pixel",
        "Water-fat shift along the phase-encoding axis (BIDS WaterFatShift)",
        {"Philips": "(2001,1022), per frame in the (2005,140F) items of enhanced objects"},
        low=0.0,
        high=1e4,
    ),
    Parameter(
        "image_type_text",
        Kind.ENUM_LIST,
        "",
        "Siemens XA image type values (BIDS ImageTypeText), when every value is one of the "
        "declared Siemens image type codes",
        {"Siemens XA": "(0021,1175)"},
        choices=_SIEMENS_IMAGE_TYPES,
        max_items=16,
    ),
    Parameter(
        "field_map_echo_times",
        Kind.FLOAT_LIST,
        "s",
        "The two echo times of a dual-echo field map (BIDS EchoTime1, EchoTime2)",
        {"Siemens": "series protocol alTE[0] and alTE[1] (us) when lContrasts is 2"},
        low=0.0,
        high=10.0,
        max_items=2,
        multiple_of=2,
    ),
    Parameter(
        "asl_type",
        Kind.ENUM,
        "",
        "Arterial spin labelling type (BIDS ArterialSpinLabelingType)",
        {"Siemens XA": "series protocol sAsl.ulMode: 32 pseudo-continuous"},
        choices=("pcasl",),
    ),
    Parameter(
        "post_labeling_delay",
        Kind.FLOAT,
        "s",
        "Time from the end of labelling to the readout (BIDS PostLabelingDelay), single-delay "
        "protocols",
        {"Siemens XA": "series protocol sAsl.sPostLabelingDelay[0] when sAsl.ulDelayArraySize "
                       "is 1, us"},
        low=0.0,
        high=100.0,
    ),
    Parameter(
        "labeling_duration",
        Kind.FLOAT,
        "s",
        "Duration of the labelling pulse train (BIDS LabelingDuration)",
        {"Siemens XA": "series protocol sAsl.ulLabelingDuration, us"},
        low=0.0,
        high=100.0,
    ),
    Parameter(
        "trigger_time",
        Kind.FLOAT,
        "s",
        "Time of this image after the trigger (GE multiphase EPI: of its slice's excitation); "
        "the export writes the series' span of it as dcm2niix's TriggerDelayTime",
        {"GE": "TriggerTime (0018,1060), ms"},
        low=0.0,
        high=1e5,
    ),
    Parameter(
        "number_of_arms",
        Kind.INT,
        "",
        "Number of k-space arms (spiral, PROPELLER) as GE records it (BIDS-like "
        "NumberOfArms of dcm2niix)",
        {"GE": "(0027,1061) of GEMS_IMAG_01"},
        low=1,
        high=65536,
    ),
    Parameter(
        "number_of_points_per_arm",
        Kind.INT,
        "",
        "Number of k-space points along each arm as GE records it (dcm2niix's "
        "NumberOfPointsPerArm)",
        {"GE": "(0027,1060) of GEMS_IMAG_01"},
        low=1,
        high=65536,
    ),
    Parameter(
        "parallel_reduction_out_of_plane",
        Kind.FLOAT,
        "",
        "Parallel imaging acceleration along the slice (second phase-encoding) axis of a 3D "
        "acquisition (dcm2niix's ParallelReductionOutOfPlane)",
        {"GE": "1 / second ASSET R factor (0043,1083)"},
        low=1.0,
        high=64.0,
    ),
    Parameter(
        "phase_encoding_direction_displayed",
        Kind.ENUM,
        "",
        "Phase-encoding direction in patient terms as the scanner displayed it (dcm2niix's "
        "PhaseEncodingDirectionDisplayed): from one anatomical side to the opposite one",
        {"UIH": "(0065,1005) of Image Private Header"},
        choices=("A->P", "P->A", "R->L", "L->R", "H->F", "F->H", "S->I", "I->S"),
    ),
)

#: The name of every parameter, in declaration order: also the names of the catalog columns
#: that store them per instance (``lake.catalog.ACQUISITION_COLUMNS`` is generated from
#: :data:`PARAMETERS`).
ACQUISITION_NAMES: tuple[str, ...] = tuple(p.name for p in PARAMETERS)

_BY_NAME: Mapping[str, Parameter] = MappingProxyType({p.name: p for p in PARAMETERS})


def parameter(name: str) -> Parameter:
    """The declaration of parameter ``name`` (KeyError when unknown)."""
    return _BY_NAME[name]


def _number(value: object, p: Parameter, integer: bool) -> float | int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if not math.isfinite(float(value)) or not p.low <= float(value) <= p.high:
        return None
    if integer:
        if float(value) != int(value):
            return None
        return int(value)
    return float(value)


def validate(name: str, value: object) -> AcquisitionValue | None:
    """``value`` as parameter ``name`` holds it, or ``None`` when it does not qualify.

    Numbers must be finite and within the declared bounds, enumerations one of the declared
    choices, lists short enough and made of such items. Strings are accepted only as
    enumeration members, so no free text (and no identifier) passes.

    Examples
    --------
    >>> validate("phase_encoding_direction", "j-")
    'j-'
    >>> validate("phase_encoding_direction", "DOE^JOHN") is None
    True
    >>> validate("slice_timing", [0.0, 0.5, float("nan")]) is None
    True
    >>> validate("mosaic_tiles", 36.0)
    36
    """
    p = _BY_NAME[name]
    if value is None:
        return None
    if p.kind is Kind.FLOAT:
        return _number(value, p, integer=False)
    if p.kind is Kind.INT:
        return _number(value, p, integer=True)
    if p.kind is Kind.BOOL:
        return value if isinstance(value, bool) else None
    if p.kind is Kind.ENUM:
        return value if isinstance(value, str) and value in p.choices else None
    if not isinstance(value, list | tuple) or not 0 < len(value) <= p.max_items:
        return None
    if len(value) % p.multiple_of:
        return None
    if p.kind is Kind.ENUM_LIST:
        if all(isinstance(v, str) and v in p.choices for v in value):
            return [str(v) for v in value]
        return None
    integer = p.kind is Kind.INT_LIST
    if not integer and all(v.__class__ is float for v in value):
        # what the loop below gives for a list of floats (the catalog's float lists), checked
        # in C: every plan validates each instance's slice times, gradients...
        finite = all(map(math.isfinite, value))
        return list(value) if finite and p.low <= min(value) and max(value) <= p.high else None
    items = [_number(v, p, integer) for v in value]
    if any(v is None for v in items):
        return None
    if integer:
        return [int(v) for v in items if v is not None]
    return [float(v) for v in items if v is not None]


def validate_all(values: Mapping[str, object]) -> dict[str, AcquisitionValue]:
    """Every declared parameter of ``values`` that validates; unknown names are dropped."""
    out: dict[str, AcquisitionValue] = {}
    for name, value in values.items():
        if name in _BY_NAME:
            checked = validate(name, value)
            if checked is not None:
                out[name] = checked
    return out


def acquisition_from_row(row: Mapping[str, object]) -> dict[str, AcquisitionValue]:
    """The acquisition parameters one catalog row holds, validated, ready for the converter.

    The catalog stores each parameter of :data:`PARAMETERS` in a column of the same name
    (:data:`ACQUISITION_NAMES`); a row read from the ``instances`` table (or any mapping of
    column names to values) gives back what :func:`lake.nifti.series_to_nifti` takes for that
    instance. Other columns, nulls and values that do not validate are left out.

    Parameters
    ----------
    row : mapping of str to object
        Column name to value, e.g. one ``to_pylist()`` record of the ``instances`` table.

    Returns
    -------
    dict of str to AcquisitionValue

    Examples
    --------
    >>> acquisition_from_row({"SOPInstanceUID": "1.2.3", "phase_encoding_direction": "j-",
    ...                       "total_readout_time": 0.0512, "slice_timing": None})
    {'phase_encoding_direction': 'j-', 'total_readout_time': 0.0512}
    """
    return validate_all({name: row[name] for name in ACQUISITION_NAMES
                         if name in row and row[name] is not None})
