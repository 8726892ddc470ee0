"""The BIDS JSON sidecar of a NIfTI volume, restricted to non-identifying acquisition keys.

Keys and units follow dcm2niix (seconds for times, the BIDS key names), so that tools that
read dcm2niix sidecars read ours. Only an explicit allow-list of technical attributes is
copied: nothing about the patient, the institution, the operator, the device's identity or
dates ever reaches a sidecar. Free-text series descriptions are copied as present in the
input, which the lake has already de-identified.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from pydicom.dataset import Dataset

from lake.nifti._volume import Assembled, attribute, csa_image_header, csa_value

__all__ = ["FORBIDDEN_KEYS", "build_sidecar", "slice_timing"]

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


def slice_timing(assembled: Assembled, repetition_time_ms: float | None) -> list[float] | None:
    """Slice acquisition times (s) of a mosaic series, in NIfTI slice order.

    Taken from the CSA ``MosaicRefAcqTimes`` of the first volume whose times lie within
    the repetition time (CMRR multiband sequences store impossible times in the first
    volume; dcm2niix then uses the second volume too).
    """
    if not assembled.mosaic_csa:
        return None
    candidates = list(assembled.mosaic_csa)
    n_slices = int(assembled.data.shape[1])
    for csa in candidates:
        tag = csa.get("tags", {}).get("MosaicRefAcqTimes", {})
        times = [float(v) for v in tag.get("items", [])]
        if len(times) != n_slices:
            continue
        if repetition_time_ms and max(times) > repetition_time_ms:
            continue
        return [round(t / 1000.0, 6) for t in times]
    return None


def build_sidecar(
    assembled: Assembled,
    datasets: Sequence[Dataset],
    *,
    multi_echo: bool,
) -> dict[str, Any]:
    """The BIDS sidecar of one assembled volume.

    Parameters
    ----------
    assembled : Assembled
        The volume (its first frame supplies the acquisition attributes).
    datasets : sequence of Dataset
        The series the frames point into.
    multi_echo : bool
        Whether the series has several echoes (then ``EchoNumber`` is written).

    Returns
    -------
    dict
        JSON-serialisable; insertion order is the order dcm2niix writes.
    """
    first = assembled.volumes[0][0]
    ds = datasets[first.source]
    frame = first.frame
    csa = csa_image_header(ds) if frame is None else None
    out: dict[str, Any] = {}

    def put(key: str, value: Any) -> None:
        if value is not None:
            out[key] = value

    put("Modality", _text(ds.get("Modality"), "\\"))
    put("MagneticFieldStrength", _number(ds.get("MagneticFieldStrength")))
    put("ImagingFrequency", _number(ds.get("ImagingFrequency")))
    manufacturer = _text(ds.get("Manufacturer"), "\\")
    if manufacturer is not None:
        put("Manufacturer", _manufacturer(manufacturer))
    for key, keyword in _TEXT_KEYS:
        put(key, _text(ds.get(keyword), "\\"))
    image_type = ds.get("ImageType")
    if image_type is not None:
        put("ImageType", [str(v) for v in image_type if str(v).strip()])
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
    if multi_echo:
        put("EchoNumber", _number(ds.get("EchoNumbers")))
    echo_time = first.echo_time
    put("EchoTime", None if echo_time is None else round(echo_time / 1000.0, 9))
    tr_ms = _number(attribute(ds, frame, "MRTimingAndRelatedParametersSequence", "RepetitionTime"))
    put("RepetitionTime", _seconds(tr_ms))
    put("InversionTime", _seconds(attribute(ds, frame, "MRModifierSequence", "InversionTimes")
                                  if frame is not None else ds.get("InversionTime")))
    put("FlipAngle", _number(attribute(ds, frame, "MRTimingAndRelatedParametersSequence",
                                       "FlipAngle")))
    put("KVP", _number(ds.get("KVP")))
    put("XRayTubeCurrent", _number(ds.get("XRayTubeCurrent")))
    put("XRayExposure", _number(ds.get("Exposure")))
    put("ExposureTime", _seconds(ds.get("ExposureTime")))
    put("ConvolutionKernel", _text(ds.get("ConvolutionKernel"), "\\"))
    phase_axis = _text(ds.get("InPlanePhaseEncodingDirection"), "")
    n_x, n_y = int(assembled.data.shape[3]), int(assembled.data.shape[2])
    recon_pe = n_y if phase_axis == "COL" else n_x if phase_axis == "ROW" else None
    bw_pe = _number(csa_value(csa, "BandwidthPerPixelPhaseEncode"))
    if recon_pe is not None:
        put("ReconMatrixPE", recon_pe)
    if bw_pe and recon_pe:
        put("BandwidthPerPixelPhaseEncode", bw_pe)
        spacing = 1.0 / (float(bw_pe) * recon_pe)
        put("EffectiveEchoSpacing", round(spacing, 9))
        put("TotalReadoutTime", round(spacing * (recon_pe - 1), 9))
    put("PixelBandwidth", _number(ds.get("PixelBandwidth")))
    dwell = _number(csa_value(csa, "RealDwellTime"))
    if dwell:
        put("DwellTime", round(float(dwell) * 1e-9, 12))
    polarity = _number(csa_value(csa, "PhaseEncodingDirectionPositive"))
    if phase_axis in ("ROW", "COL") and polarity in (0, 1):
        # NIfTI j runs opposite to the DICOM row index, which flips the polarity of COL.
        if phase_axis == "COL":
            put("PhaseEncodingDirection", "j-" if polarity == 1 else "j")
        else:
            put("PhaseEncodingDirection", "i" if polarity == 1 else "i-")
    elif phase_axis in ("ROW", "COL"):
        put("PhaseEncodingAxis", "j" if phase_axis == "COL" else "i")
    put("SliceTiming", slice_timing(assembled, float(tr_ms) if tr_ms else None))
    iop = attribute(ds, frame, "PlaneOrientationSequence", "ImageOrientationPatient")
    if iop is not None and len(iop) == 6:
        put("ImageOrientationPatientDICOM", [_number(v) for v in iop])
    put("InPlanePhaseEncodingDirectionDICOM", phase_axis)
    put("ConversionSoftware", "imaging-lake")
    leaked = FORBIDDEN_KEYS.intersection(out)
    assert not leaked, leaked  # the allow-list above never produces these
    return out
