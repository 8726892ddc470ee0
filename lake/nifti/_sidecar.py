"""The BIDS JSON sidecar of a NIfTI volume, restricted to non-identifying acquisition keys.

Keys and units follow dcm2niix (seconds for times, the BIDS key names), so that tools that
read dcm2niix sidecars read ours. Only an explicit allow-list of technical attributes is
copied: nothing about the patient, the institution, the operator, the device's identity or
dates ever reaches a sidecar. Free-text series descriptions are copied as present in the
input, which the lake has already de-identified.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from lake.nifti._part10 import Part10
from lake.nifti._private import phase_axis as read_phase_axis
from lake.nifti._timing import ge_repetition_delay, slice_timing
from lake.nifti._volume import Assembled, attribute

__all__ = ["FORBIDDEN_KEYS", "VolumeContext", "build_sidecar", "image_type"]

#: Keys a sidecar must never hold (checked by the tests on every sidecar written).
FORBIDDEN_KEYS = frozenset(
    {
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "PatientAge",
        "PatientWeight",
        "PatientSize",
        "InstitutionName",
        "InstitutionAddress",
        "InstitutionalDepartmentName",
        "DeviceSerialNumber",
        "StationName",
        "ReferringPhysicianName",
        "PerformingPhysicianName",
        "OperatorsName",
        "AccessionNumber",
        "StudyID",
        "StudyDate",
        "SeriesDate",
        "AcquisitionDate",
        "AcquisitionDateTime",
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "SOPInstanceUID",
        "FrameOfReferenceUID",
    }
)

#: Manufacturer prefixes and the names dcm2niix writes for them.
_MANUFACTURERS = (
    ("SIEMENS", "Siemens"),
    ("GE", "GE"),
    ("PHILIPS", "Philips"),
    ("TOSHIBA", "Toshiba"),
    ("CANON", "Canon"),
    ("HITACHI", "Hitachi"),
    ("UIH", "UIH"),
    ("UNITED IMAGING", "UIH"),
    ("BRUKER", "Bruker"),
)


def _manufacturer(name: str) -> str:
    upper = name.upper()
    for prefix, canonical in _MANUFACTURERS:
        if upper.startswith(prefix):
            return canonical
    return name

# (BIDS key, DICOM keyword, functional group macro or "") for plain copies.
_TEXT_KEYS: tuple[tuple[str, str], ...] = (
    ("ManufacturersModelName", "ManufacturerModelName"),
    ("BodyPart", "BodyPartExamined"),
    ("PatientPosition", "PatientPosition"),
    ("SoftwareVersions", "SoftwareVersions"),
    ("MRAcquisitionType", "MRAcquisitionType"),
    ("SeriesDescription", "SeriesDescription"),
    ("ProtocolName", "ProtocolName"),
    ("ScanningSequence", "ScanningSequence"),
    ("SequenceVariant", "SequenceVariant"),
    ("ScanOptions", "ScanOptions"),
    ("SequenceName", "SequenceName"),
)


def _text(value: Any, sep: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        text = value
    elif hasattr(value, "__iter__"):
        text = sep.join(str(v) for v in value)
    else:
        text = str(value)
    text = text.strip()
    return text or None


def _number(value: Any) -> float | int | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str | int | float) and hasattr(value, "__getitem__"):
        if len(value) == 0:
            return None
        value = value[0]
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(number):
        return None
    return int(number) if number.is_integer() and abs(number) < 2**53 else number


def _seconds(value_ms: Any) -> float | None:
    number = _number(value_ms)
    if number is None:
        return None
    return round(float(number) / 1000.0, 9)


def _clock(value: Any) -> str | None:
    """``HHMMSS.ffffff`` as ``HH:MM:SS.ffffff`` (the form dcm2niix writes)."""
    if value is None:
        return None
    text = str(value).strip()
    digits, _, frac = text.partition(".")
    if len(digits) != 6 or not digits.isdigit() or (frac and not frac.isdigit()):
        return None
    return f"{digits[0:2]}:{digits[2:4]}:{digits[4:6]}.{(frac + '000000')[:6]}"


@dataclass(frozen=True)
class VolumeContext:
    """What the sidecar of one volume needs beyond its frames.

    Attributes
    ----------
    acquisitions : sequence of mapping
        Acquisition parameters of each dataset of the series.
    vendor : str or None
        dcm2niix's manufacturer name.
    echo_number : int or None
        Echo written as ``EchoNumber`` (multi-echo series, or a lone echo after the first).
    component : str
        ``magnitude``, ``phase``, ``real`` or ``imaginary``.
    field_map_hz : bool
        A real volume holding a B0 field map in Hz.
    single_component : bool
        Whether the instances of this volume hold only this component (dcm2niix then names
        a magnitude image MAGNITUDE).
    """

    acquisitions: Sequence[Mapping[str, Any]]
    vendor: str | None
    echo_number: int | None
    component: str
    field_map_hz: bool
    single_component: bool


_APPENDED = {"phase": "PHASE", "real": "REAL", "imaginary": "IMAGINARY"}


def image_type(values: Any, context: VolumeContext) -> list[str] | None:
    """ImageType as dcm2niix writes it: values split at underscores, then the component.

    dcm2niix joins the values with underscores internally, so ``M_FFE`` becomes two values.
    It appends the complex component it found (PHASE, REAL, IMAGINARY; FIELDMAPHZ for a
    field map) unless the values already name it (GE: always); recent releases (2024 and
    later) also append MAGNITUDE to an image holding magnitude only.
    """
    if values is None:
        return None
    items = [values] if isinstance(values, str) else list(values)
    tokens = [t for v in items for t in str(v).split("_") if t.strip()]
    upper = [t.upper() for t in tokens]
    if context.field_map_hz:
        tokens.append("FIELDMAPHZ")
    elif context.component in _APPENDED:
        name = _APPENDED[context.component]
        if context.vendor == "GE" or name not in upper:
            tokens.append(name)
    elif context.single_component and "MAGNITUDE" not in upper:
        tokens.append("MAGNITUDE")
    return tokens


def build_sidecar(
    assembled: Assembled,
    datasets: Sequence[Dataset],
    context: VolumeContext,
) -> dict[str, Any]:
    """The BIDS sidecar of one assembled volume.

    Parameters
    ----------
    assembled : Assembled
        The volume (its first frame supplies the acquisition attributes).
    datasets : sequence of Dataset
        The series the frames point into.
    context : VolumeContext
        Acquisition parameters, vendor, echo and component of this volume.

    Returns
    -------
    dict
        JSON-serialisable; insertion order is the order dcm2niix writes.
    """
    first = assembled.volumes[0][0]
    ds = datasets[first.source]
    frame = first.frame
    acquisition = context.acquisitions[first.source]
    out: dict[str, Any] = {}

    def put(key: str, value: Any) -> None:
        if value is not None:
            out[key] = value

    put("Modality", _text(ds.get("Modality"), "\\"))
    put("MagneticFieldStrength", _number(ds.get("MagneticFieldStrength")))
    frequency = _number(ds.get("ImagingFrequency"))
    if frequency is None:  # enhanced MR: the MR Imaging Modifier macro's (in MHz)
        transmitter = _number(attribute(ds, frame, "MRImagingModifierSequence",
                                        "TransmitterFrequency"))
        frequency = transmitter if transmitter is not None and 1 < transmitter < 1000 \
            else None
    put("ImagingFrequency", frequency)
    manufacturer = _text(ds.get("Manufacturer"), "\\")
    if manufacturer is not None:
        put("Manufacturer", _manufacturer(manufacturer))
    elif context.vendor is not None:
        put("Manufacturer", context.vendor)
    for key, keyword in _TEXT_KEYS:
        put(key, _text(ds.get(keyword), "\\"))
    put("ImageType", image_type(ds.get("ImageType"), context))
    kinds = ds.get("ImageType")
    if isinstance(kinds, str | list | MultiValue) and kinds \
            and str(kinds if isinstance(kinds, str) else kinds[0]).upper() == "DERIVED":
        put("RawImage", False)  # as dcm2niix marks derived images
    correction = acquisition.get("nonlinear_gradient_correction")
    if context.vendor == "Siemens" and isinstance(correction, bool):
        put("NonlinearGradientCorrection", correction)
    put("SeriesNumber", _number(ds.get("SeriesNumber")))
    times = [
        datasets[f.source].get("AcquisitionTime")
        for volume in assembled.volumes[:1]
        for f in volume
        if datasets[f.source].get("AcquisitionTime")
    ]
    if times:
        put("AcquisitionTime", _clock(min(str(t) for t in times)))
    put("AcquisitionNumber", _number(ds.get("AcquisitionNumber")))
    put("SliceThickness", _number(attribute(ds, frame, "PixelMeasuresSequence", "SliceThickness")))
    put(
        "SpacingBetweenSlices",
        _number(attribute(ds, frame, "PixelMeasuresSequence", "SpacingBetweenSlices")),
    )
    put("SAR", _number(ds.get("SAR")))
    if context.vendor == "Siemens":
        put("TablePosition", _numbers(acquisition.get("table_position")))
    put("EchoNumber", context.echo_number)
    echo_time = first.echo_time
    put("EchoTime", None if not echo_time else round(echo_time / 1000.0, 9))
    tr_ms = _number(attribute(ds, frame, "MRTimingAndRelatedParametersSequence", "RepetitionTime"))
    extra = ge_repetition_delay(acquisition) if context.vendor == "GE" else 0.0
    repetition = _seconds(tr_ms)
    put("RepetitionTime", None if repetition is None else round(repetition + extra, 9))
    put("InversionTime", _seconds(attribute(ds, frame, "MRModifierSequence", "InversionTimes")
                                  if frame is not None else ds.get("InversionTime")))
    put("FlipAngle", _number(attribute(ds, frame, "MRTimingAndRelatedParametersSequence",
                                       "FlipAngle")))
    if context.vendor == "Siemens":
        _siemens_protocol(put, acquisition)
        echo_times = acquisition.get("field_map_echo_times")
        if context.component == "phase" and isinstance(echo_times, list):
            put("EchoTime1", _six_digits(echo_times[0]))
            put("EchoTime2", _six_digits(echo_times[1]))
    elif context.vendor == "GE":
        shims = acquisition.get("shim_setting")
        if isinstance(shims, list) and any(v != 0 for v in shims):
            put("ShimSetting", _numbers(shims))
        polarity = acquisition.get("phase_encoding_polarity")
        put("PhaseEncodingPolarityGE", polarity.capitalize() if isinstance(polarity, str)
            else None)
    _pulse_sequence(put, ds, frame)
    if context.vendor == "Philips":
        _philips_scaling(put, ds, frame, acquisition)
    if context.vendor == "GE":
        put("TriggerDelayTime", _trigger_delay(assembled, datasets, context.acquisitions))
        put("NumberOfPointsPerArm", _positive_int(acquisition.get("number_of_points_per_arm")))
        put("NumberOfArms", _positive_int(acquisition.get("number_of_arms")))
        put("NumberOfExcitations", _number(ds.get("NumberOfAverages")))
    if context.vendor == "UIH":
        put("PhaseEncodingDirectionDisplayed",
            acquisition.get("phase_encoding_direction_displayed"))
    put("KVP", _number(ds.get("KVP")))
    put("XRayTubeCurrent", _number(ds.get("XRayTubeCurrent")))
    put("XRayExposure", _number(ds.get("Exposure")))
    put("ExposureTime", _seconds(ds.get("ExposureTime")))
    put("ConvolutionKernel", _text(ds.get("ConvolutionKernel"), "\\"))
    modality = str(ds.get("Modality") or "").upper()
    three_d = str(ds.get("MRAcquisitionType") or "").upper() == "3D"
    timing = None
    if not three_d and modality not in ("CT", "PT"):
        timing = slice_timing(assembled, datasets, context.acquisitions, context.vendor,
                              float(tr_ms) if tr_ms else None)
    multiband = acquisition.get("multiband_acceleration_factor")
    together = _excited_together(timing) if context.vendor != "GE" else 0
    if together > 1 and not (isinstance(multiband, int) and multiband > 1):
        multiband = together  # as dcm2niix: slices sharing the earliest time
    if isinstance(multiband, int) and multiband > 1:
        put("MultibandAccelerationFactor", multiband)
    phase_axis = read_phase_axis(ds)
    n_x, n_y = int(assembled.data.shape[3]), int(assembled.data.shape[2])
    recon_pe = n_y if n_x == n_y or phase_axis == "COL" else n_x if phase_axis == "ROW" \
        else None
    put("PercentPhaseFOV", _six_digits(attribute(ds, frame, "MRFOVGeometrySequence",
                                                 "PercentPhaseFieldOfView")))
    put("PercentSampling", _six_digits(attribute(ds, frame, "MRFOVGeometrySequence",
                                                 "PercentSampling")))
    train = _number(attribute(ds, frame, "MRTimingAndRelatedParametersSequence",
                              "EchoTrainLength"))
    if isinstance(train, int) and train > 1:  # dcm2niix leaves out a train of one
        put("EchoTrainLength", train)
    steps = _number(attribute(ds, frame, "MRFOVGeometrySequence",
                              "MRAcquisitionPhaseEncodingStepsInPlane")
                    or ds.get("NumberOfPhaseEncodingSteps"))
    if isinstance(steps, int) and steps > 0 and context.vendor == "Philips" \
            and _partial_fourier(ds, frame):
        # as dcm2niix: Philips steps of a partial-Fourier acquisition, under their own name
        put("PartialFourierEnabled", "YES")
        put("PhaseEncodingStepsNoPartialFourier", steps)
    elif isinstance(steps, int) and steps > 0:
        put("PhaseEncodingSteps", steps)
    put("PhaseEncodingStepsOutOfPlane", _positive_int(attribute(
        ds, frame, "MRFOVGeometrySequence", "MRAcquisitionPhaseEncodingStepsOutOfPlane")))
    put("AcquisitionMatrixPE", _acquisition_matrix_pe(ds, frame, phase_axis))
    frequency = _number(attribute(ds, frame, "MRFOVGeometrySequence",
                                  "MRAcquisitionFrequencyEncodingSteps"))
    if isinstance(frequency, int) and frequency > 0:
        put("FrequencyEncodingSteps", frequency)
    if recon_pe is not None:
        put("ReconMatrixPE", recon_pe)
    put("BandwidthPerPixelPhaseEncode", acquisition.get("bandwidth_per_pixel_phase_encode"))
    accel = acquisition.get("parallel_reduction_factor_in_plane")
    if isinstance(accel, float) and accel > 1.0:
        put("ParallelReductionFactorInPlane", _number(round(accel, 6)))
    put("ParallelAcquisitionTechnique", _code(attribute(
        ds, frame, "MRModifierSequence", "ParallelAcquisitionTechnique"), _PARALLEL_TECHNIQUES))
    put("ParallelReductionFactorOutOfPlane", _number(attribute(
        ds, frame, "MRModifierSequence", "ParallelReductionFactorOutOfPlane")))
    out_of_plane = acquisition.get("parallel_reduction_out_of_plane")
    if context.vendor == "GE" and isinstance(out_of_plane, float) and out_of_plane > 1.0:
        put("ParallelReductionOutOfPlane", _six_digits(out_of_plane))
    put("PartialFourierDirection", _code(attribute(
        ds, frame, "MRModifierSequence", "PartialFourierDirection"), _PARTIAL_FOURIER_DIRECTIONS))
    put("EffectiveEchoSpacing", _rounded(acquisition.get("effective_echo_spacing")))
    put("DerivedVendorReportedEchoSpacing", _derived_echo_spacing(acquisition))
    if context.vendor == "Philips":
        _philips_readout(put, acquisition, out.get("ImagingFrequency"), train, recon_pe)
    put("TotalReadoutTime", _rounded(acquisition.get("total_readout_time")))
    averages = _number(attribute(ds, frame, "MRAveragesSequence", "NumberOfAverages"))
    if isinstance(averages, int | float) and averages > 1:  # dcm2niix leaves out one
        put("NumberOfAverages", averages)
    put("PixelBandwidth", _number(attribute(ds, frame, "MRImagingModifierSequence",
                                            "PixelBandwidth")))
    if context.vendor != "UIH":  # dcm2niix writes UIH's as TotalReadoutTime
        put("AcquisitionDuration", _six_digits(ds.get("AcquisitionDuration")))
    put("NumberOfKSpaceTrajectories", _positive_int(ds.get("NumberOfKSpaceTrajectories")))
    put("DwellTime", _rounded(acquisition.get("dwell_time")))
    direction = acquisition.get("phase_encoding_direction")
    echo_train = _number(ds.get("EchoTrainLength"))
    skip_axis = three_d and not (isinstance(echo_train, int | float) and echo_train > 1)
    if isinstance(direction, str) and not skip_axis:
        # NIfTI j runs opposite to the DICOM row index, which flips the polarity along j
        if direction.startswith("j"):
            direction = "j" if direction == "j-" else "j-"
        put("PhaseEncodingDirection", direction)
    elif phase_axis in ("ROW", "COL") and not skip_axis:
        put("PhaseEncodingAxis", "j" if phase_axis == "COL" else "i")
    if timing is not None:
        put("SliceTiming", [round(t, 7) for t in timing])
    iop = attribute(ds, frame, "PlaneOrientationSequence", "ImageOrientationPatient")
    type_text = acquisition.get("image_type_text")
    if context.vendor == "Siemens" and isinstance(type_text, list):
        put("ImageTypeText", type_text)
    if iop is not None and len(iop) == 6:
        put("ImageOrientationPatientDICOM", [_number(v) for v in iop])
    put("InPlanePhaseEncodingDirectionDICOM", phase_axis or None)
    if context.field_map_hz:
        put("Units", "Hz")
    put("ConversionSoftware", "imaging-lake")
    leaked = FORBIDDEN_KEYS.intersection(out)
    assert not leaked, leaked  # the allow-list above never produces these
    return out


def _trigger_delay(assembled: Assembled, datasets: Sequence[Dataset],
                   acquisitions: Sequence[Mapping[str, Any]]) -> float | int | None:
    """dcm2niix's GE TriggerDelayTime, in ms: the trigger time of the last image minus that of
    the first (instance order), when positive; else the first image's trigger time."""
    sources = sorted({f.source for volume in assembled.volumes for f in volume},
                     key=lambda i: (_instance_number(datasets[i]), i))
    first = acquisitions[sources[0]].get("trigger_time")
    last = acquisitions[sources[-1]].get("trigger_time")
    if not isinstance(first, float) or not isinstance(last, float):
        return None
    delay = last - first if last > first else first
    return _six_digits(round(delay * 1000.0, 6)) if delay > 0 else None


def _instance_number(ds: Dataset) -> float:
    if isinstance(ds, Part10):
        plain = ds.number("InstanceNumber")  # read from its bytes: the same float
        if plain is not None:
            return plain
    number = _number(ds.get("InstanceNumber"))
    return float(number) if number is not None else math.inf


def _six_digits(value: Any) -> float | int | None:
    """A number as dcm2niix prints it (``%g``: six significant digits)."""
    number = _number(value)
    return None if number is None else _number(f"{number:g}")


def _acquisition_matrix_pe(ds: Dataset, frame: int | None, phase_axis: str | None) -> int | None:
    """Phase-encoding steps of the acquired matrix: the enhanced MR FOV/Geometry macro's
    (0018,9231), else AcquisitionMatrix (frequency rows, frequency columns, phase rows, phase
    columns) read along the phase-encoding axis."""
    steps = _number(attribute(ds, frame, "MRFOVGeometrySequence",
                              "MRAcquisitionPhaseEncodingStepsInPlane"))
    if isinstance(steps, int) and steps > 0:
        return steps
    matrix = ds.get("AcquisitionMatrix")
    if phase_axis not in ("ROW", "COL") or matrix is None or len(matrix) != 4:
        return None
    value = _number(matrix[3] if phase_axis == "COL" else matrix[2])
    return value if isinstance(value, int) and value > 0 else None


def _excited_together(timing: list[float] | None) -> int:
    if not timing or len(timing) < 2:
        return 0
    earliest = min(timing)
    return sum(1 for t in timing if abs(t - earliest) < 1e-6)


def _rounded(value: Any) -> float | None:
    return round(float(value), 12) if isinstance(value, float) and value > 0 else None


_COIL_COMBINATION = {"sum_squares": "Sum of Squares", "adaptive": "Adaptive Combine"}
_MATRIX_COIL_MODE = {"sense": "SENSE", "grappa": "GRAPPA", "none": "None"}


def _siemens_protocol(put: Any, acquisition: Mapping[str, Any]) -> None:
    """The keys dcm2niix reads from the Siemens series protocol, as it writes them."""
    put("PartialFourier", acquisition.get("partial_fourier"))
    if acquisition.get("interpolation_2d") is True:
        put("Interpolation2D", 1)
    if acquisition.get("diffusion_b_values") is not None:
        scheme = acquisition.get("diffusion_scheme")
        put("DiffusionScheme", scheme.capitalize() if isinstance(scheme, str) else None)
    put("BaseResolution", acquisition.get("base_resolution"))
    shims = acquisition.get("shim_setting")
    if isinstance(shims, list) and shims and shims[0] != 0:
        put("ShimSetting", _numbers(shims))
    put("DelayTime", acquisition.get("delay_time"))
    put("TxRefAmp", _six_digits(acquisition.get("tx_ref_amp")))
    put("PhaseResolution", _number(acquisition.get("phase_resolution")))
    put("PhaseOversampling", _number(acquisition.get("phase_oversampling")))
    put("VendorReportedEchoSpacing", acquisition.get("vendor_reported_echo_spacing"))
    if acquisition.get("asl_type") == "pcasl":
        put("ArterialSpinLabelingType", "PCASL")
        put("PostLabelingDelay", _six_digits(acquisition.get("post_labeling_delay")))
        put("LabelingDuration", _six_digits(acquisition.get("labeling_duration")))
    put("RefLinesPE", acquisition.get("ref_lines_pe"))
    put("CoilCombinationMethod", _COIL_COMBINATION.get(str(acquisition.get("coil_combination"))))
    put("MatrixCoilMode", _MATRIX_COIL_MODE.get(str(acquisition.get("matrix_coil_mode"))))


def _numbers(values: Any) -> list[float | int | None] | None:
    return [_number(v) for v in values] if isinstance(values, list) and values else None


def _derived_echo_spacing(acquisition: Mapping[str, Any]) -> float | None:
    """dcm2niix's DerivedVendorReportedEchoSpacing: the effective echo spacing undone for
    in-plane acceleration and phase oversampling (Siemens, where the bandwidth per pixel in
    the phase direction is known)."""
    spacing = acquisition.get("effective_echo_spacing")
    if not isinstance(spacing, float) or acquisition.get("bandwidth_per_pixel_phase_encode") \
            is None:
        return None
    accel = acquisition.get("parallel_reduction_factor_in_plane")
    oversampling = acquisition.get("phase_oversampling")
    if isinstance(accel, float) and accel > 1.0:
        spacing *= accel
    if isinstance(oversampling, float) and oversampling > 0:
        spacing /= 1.0 + oversampling
    return _rounded(spacing)


def _code(value: Any, terms: frozenset[str]) -> str | None:
    """A coded string (CS) of the header when it is one of ``terms``, else None.

    Only a closed vocabulary reaches a sidecar: a CS element can hold any upper-case word
    (a surname too), so anything outside the defined terms is left out.
    """
    text = _text(value, "\\")
    return text if text in terms else None


# Defined terms (PS3.3 C.8.13.5.4, C.8.13.5.12, C.8.13.5.2), and the vendor values dcm2niix's
# references show (SMS) or vendors are known to write (ASSET, ARC).
_PARALLEL_TECHNIQUES = frozenset(
    {"PILS", "SENSE", "SMASH", "GRAPPA", "OTHER", "SMS", "ASSET", "ARC"})
_PARTIAL_FOURIER_DIRECTIONS = frozenset({"PHASE", "FREQUENCY", "SLICE_SELECT", "COMBINATION"})
_MAGNETIZATION_TRANSFER = frozenset({"ON_RESONANCE", "OFF_RESONANCE", "NONE"})
_SPOILING = frozenset({"RF", "GRADIENT", "RF_AND_GRADIENT", "NONE"})
_YES_NO = frozenset({"YES", "NO"})


def _positive_int(value: Any) -> int | None:
    number = _number(value)
    return number if isinstance(number, int) and number > 0 else None


_SPOILING_TYPES = {"RF": "RF", "GRADIENT": "GRADIENT", "RF_AND_GRADIENT": "COMBINED"}


def _pulse_sequence(put: Any, ds: Dataset, frame: int | None) -> None:
    """MTState and SpoilingState/Type from the MR Pulse Sequence module (0018,9020)/(0018,9016)
    of enhanced objects, as dcm2niix reads them."""
    transfer = _code(attribute(ds, frame, "MRImagingModifierSequence", "MagnetizationTransfer"),
                     _MAGNETIZATION_TRANSFER)
    if transfer is not None:
        put("MTState", transfer != "NONE")
    spoiling = _code(ds.get("Spoiling"), _SPOILING)
    if spoiling is not None:
        put("SpoilingState", spoiling != "NONE")
        put("SpoilingType", _SPOILING_TYPES.get(spoiling))


def _philips_scaling(put: Any, ds: Dataset, frame: int | None,
                     acquisition: Mapping[str, Any]) -> None:
    """The Philips scaling dcm2niix reports: the real-world value mapping, the rescale and the
    private scale slope it applied (floating-point, not display, values)."""
    if frame is not None:
        rwv_slope = _number(attribute(ds, frame, "RealWorldValueMappingSequence",
                                      "RealWorldValueSlope"))
        if rwv_slope:
            rwv_intercept = _number(attribute(ds, frame, "RealWorldValueMappingSequence",
                                              "RealWorldValueIntercept"))
            put("PhilipsRWVSlope", _six_digits(rwv_slope))
            put("PhilipsRWVIntercept", _six_digits(rwv_intercept or 0))
    slopes = acquisition.get("scale_slopes")
    index = frame if frame is not None else 0
    if not isinstance(slopes, list) or index >= len(slopes) or slopes[index] == 0:
        return
    rescale = _number(attribute(ds, frame, "PixelValueTransformationSequence", "RescaleSlope"))
    intercept = _number(attribute(ds, frame, "PixelValueTransformationSequence",
                                  "RescaleIntercept"))
    if rescale is None:
        return
    put("PhilipsRescaleSlope", _six_digits(rescale))
    put("PhilipsRescaleIntercept", _six_digits(intercept if intercept is not None else 0))
    put("PhilipsScaleSlope", _six_digits(slopes[index]))
    put("UsePhilipsFloatNotDisplayScaling", 1)


def _philips_readout(put: Any, acquisition: Mapping[str, Any], frequency: Any, train: Any,
                     recon_pe: int | None) -> None:
    """The Philips water-fat shift, and dcm2niix's estimates from it where no effective echo
    spacing is known: echo spacing = shift / (imaging frequency x 3.4 ppm x (echo train + 1)),
    readout = that x echo train, effective spacing = readout / (recon matrix PE - 1). The echo
    train is EchoTrainLength (0018,0091), per frame in enhanced objects (1 is used too, though
    not written as EchoTrainLength); the frequency is the ImagingFrequency written."""
    shift = acquisition.get("water_fat_shift")
    if not isinstance(shift, float):
        return
    put("WaterFatShift", _six_digits(shift))
    if acquisition.get("effective_echo_spacing") is not None \
            or not isinstance(frequency, int | float) or frequency <= 0 \
            or not isinstance(train, int) or train < 1 or recon_pe is None or recon_pe < 2:
        return
    readout = shift / (frequency * 3.4 * (train + 1)) * train
    put("EstimatedEffectiveEchoSpacing", _six_digits(readout / (recon_pe - 1)))
    put("EstimatedTotalReadoutTime", _six_digits(readout))


def _partial_fourier(ds: Dataset, frame: int | None) -> bool:
    """Partial Fourier along the phase axis: ScanOptions PFP/PFF, or the enhanced MR
    Modifier macro's PartialFourier (0018,9081)."""
    options = ds.get("ScanOptions")
    values = [options] if isinstance(options, str) else list(options or [])
    if any(str(v).strip().upper() in ("PFP", "PFF") for v in values):
        return True
    return _code(attribute(ds, frame, "MRModifierSequence", "PartialFourier"), _YES_NO) == "YES"
