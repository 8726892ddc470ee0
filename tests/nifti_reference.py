"""dcm2niix reference outputs (``Ref/`` of the dcm_qa repositories) matched to lake exports.

A repository holds ``In/`` (the original DICOM), ``Ref/`` (what a named dcm2niix release
wrote from them) and ``batch.sh`` (its ``-f`` file-name pattern). This module:

* groups the original files into the series dcm2niix sees (SeriesInstanceUID and
  SeriesNumber: dcm_qa_ts and dcm_qa_12bit hold one instance per series number under one
  UID), each with the sha256 of its PixelData values, which is how the lake addresses
  pixel blobs, so a lake series is found from the originals without any identifier;
* maps every reference to its original series by the reference sidecar's SeriesNumber and
  the dcm2niix file-name pattern (the suffix left over, ``_e2``, ``_ph``..., names the volume);
* compares an exported volume with its reference: shape, affine after canonical
  reorientation, voxels, data type, bval/bvec and the sidecar keys of the issue.

Nothing here is per file: the rules are dcm2niix's naming rules and the comparison rules.
"""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom

from lake.deid._codestreams import strip_pixel_frames

__all__ = [
    "COMPARED_KEYS",
    "SIDECAR_KEYS",
    "Disposition",
    "OriginalSeries",
    "Reference",
    "compare_volume",
    "key_statuses",
    "original_series",
    "references",
]

class Disposition(StrEnum):
    """What the lake does with one key of dcm2niix's sidecars."""

    COMPARED = "compared"
    """Written wherever the reference has it, and equal."""
    WHERE_WRITTEN = "where written"
    """Equal wherever the lake writes it; some references have it where the lake cannot
    derive it (the reason says where)."""
    IDENTIFYING = "identifying"
    """Left out on purpose: it names the institution, the device or a person."""
    FREE_TEXT = "free text"
    """Left out on purpose: free text (or a string with no closed vocabulary) can carry an
    identifier, and acquisition parameters are numbers, enumerations and numeric lists."""
    OWN = "own"
    """Written with the lake's own value, not compared (the reason says why)."""
    NOT_DERIVED = "not derived"
    """Not written yet: non-identifying, but not derived (compared if it ever is)."""


_C, _W = Disposition.COMPARED, Disposition.WHERE_WRITTEN
_ID, _FT = Disposition.IDENTIFYING, Disposition.FREE_TEXT
_OWN, _ND = Disposition.OWN, Disposition.NOT_DERIVED

#: Every key of dcm2niix's reference sidecars in the vendor data, with what the lake does with
#: it and why. The parity test fails on a key missing here, a compared key that differs, a
#: compared key missing where the reference has it, or a left-out key the lake writes.
SIDECAR_KEYS: dict[str, tuple[Disposition, str]] = {
    # the keys of issue 10.2
    "RepetitionTime": (_C, ""),
    "EchoTime": (_C, ""),
    "FlipAngle": (_C, ""),
    "SliceTiming": (_C, ""),
    "PhaseEncodingDirection": (_C, ""),
    "EffectiveEchoSpacing": (_C, ""),
    "TotalReadoutTime": (_C, ""),
    "MultibandAccelerationFactor": (_C, ""),
    "ImageType": (_C, "releases before 2024 did not append MAGNITUDE"),
    "EchoNumber": (_C, ""),
    "Manufacturer": (_C, ""),
    "MagneticFieldStrength": (_C, ""),
    "SeriesNumber": (_C, ""),
    # standard attributes of the (de-identified) header
    "PercentPhaseFOV": (_C, ""),
    "PercentSampling": (_C, ""),
    "EchoTrainLength": (_C, ""),
    "PhaseEncodingSteps": (_C, ""),
    "AcquisitionMatrixPE": (_C, ""),
    "ReconMatrixPE": (_C, ""),
    "NumberOfAverages": (_C, ""),
    "FrequencyEncodingSteps": (_C, ""),
    "PixelBandwidth": (_C, ""),
    "Modality": (_C, ""),
    "ImagingFrequency": (_W, "absent from some enhanced objects' top level"),
    "ManufacturersModelName": (_C, ""),
    "PatientPosition": (_C, ""),
    "SoftwareVersions": (_C, ""),
    "MRAcquisitionType": (_C, ""),
    "ScanningSequence": (_W, "dcm2niix also reads enhanced objects' pulse sequence module"),
    "SequenceVariant": (_W, "dcm2niix also reads enhanced objects' pulse sequence module"),
    "ScanOptions": (_W, "dcm2niix also reads enhanced objects' pulse sequence module"),
    "SequenceName": (_W, "dcm2niix also reads enhanced objects' pulse sequence module"),
    "BodyPart": (_C, ""),
    "AcquisitionNumber": (_C, ""),
    "SliceThickness": (_C, ""),
    "SpacingBetweenSlices": (_C, ""),
    "SAR": (_C, ""),
    "InversionTime": (_C, ""),
    "ImageOrientationPatientDICOM": (_C, ""),
    "InPlanePhaseEncodingDirectionDICOM": (_C, ""),
    "PhaseEncodingAxis": (_C, ""),
    "BandwidthPerPixelPhaseEncode": (_C, ""),
    "ParallelReductionFactorInPlane": (
        _W, "dcm2niix writes 1 for unaccelerated Siemens and Philips series; the lake omits 1"),
    "DwellTime": (_C, ""),
    "AcquisitionDuration": (_W, "enhanced objects only"),
    "NumberOfKSpaceTrajectories": (_W, "enhanced objects only"),
    "PhaseEncodingStepsOutOfPlane": (_W, "enhanced objects only"),
    "ParallelAcquisitionTechnique": (
        _W, "enhanced objects only; dcm2niix also reads Philips private elements"),
    "PartialFourierDirection": (
        _W, "enhanced objects only; dcm2niix also reads Philips private elements"),
    "ParallelReductionFactorOutOfPlane": (
        _W, "enhanced objects only; dcm2niix also reads the Siemens protocol (sPat.lAccelFact3D)"),
    "MTState": (_W, "enhanced objects only; dcm2niix also reads Philips and Siemens private "
                    "elements"),
    "SpoilingState": (_W, "where the Spoiling attribute is at the top level"),
    "SpoilingType": (_W, "where the Spoiling attribute is at the top level"),
    "NumberOfExcitations": (_W, "GE: NumberOfAverages"),
    # derived before de-identification (lake.nifti.PARAMETERS), Siemens series protocol
    "BaseResolution": (_C, ""),
    "PartialFourier": (_C, ""),
    "PhaseResolution": (_C, ""),
    "PhaseOversampling": (_C, ""),
    "ShimSetting": (_C, ""),
    "TxRefAmp": (_C, ""),
    "RefLinesPE": (_C, ""),
    "CoilCombinationMethod": (_C, ""),
    "MatrixCoilMode": (_C, ""),
    "DelayTime": (_C, ""),
    "VendorReportedEchoSpacing": (_C, ""),
    "DerivedVendorReportedEchoSpacing": (_C, ""),
    "Interpolation2D": (_C, ""),
    "DiffusionScheme": (_C, ""),
    "NonlinearGradientCorrection": (_C, ""),
    "TablePosition": (
        _W, "Siemens; dcm2niix's GE and Philips values (3.1e-09, 1.5e+19...) are not understood"),
    "PhaseEncodingPolarityGE": (_C, ""),
    "PhilipsRescaleSlope": (_C, ""),
    "PhilipsRescaleIntercept": (_C, ""),
    "PhilipsScaleSlope": (_C, ""),
    "UsePhilipsFloatNotDisplayScaling": (_C, ""),
    "PhilipsRWVSlope": (_C, ""),
    "PhilipsRWVIntercept": (_C, ""),
    # identifying
    "InstitutionName": (_ID, "names the institution"),
    "InstitutionAddress": (_ID, "the institution's address"),
    "InstitutionalDepartmentName": (_ID, "names the department"),
    "StationName": (_ID, "names the device (often with its serial number)"),
    "DeviceSerialNumber": (_ID, "identifies the device and so the site"),
    # free text
    "ProcedureStepDescription": (_FT, "free text (holds e.g. an investigator's name)"),
    "StudyDescription": (_FT, "free text (holds e.g. an investigator's name)"),
    "ImageComments": (_FT, "free text"),
    "WipMemBlock": (_FT, "free text with sequence build paths, dates and user names"),
    "PulseSequenceDetails": (_FT, "a sequence file path, site-chosen names"),
    "ConsistencyInfo": (_FT, "software build text with a date"),
    "CoilString": (_FT, "coil element names: no closed vocabulary (site and vendor defined)"),
    "ReceiveCoilName": (_FT, "coil names: no closed vocabulary (site-configurable)"),
    "ReceiveCoilActiveElements": (_FT, "coil element names: no closed vocabulary"),
    "PulseSequenceName": (_FT, "sequence names: site-built sequences have any name"),
    "InternalPulseSequenceName": (_FT, "GE sequence names: site-built sequences have any name"),
    "PulseSequenceType": (_FT, "descriptive text of the vendor"),
    "PrescanReuseString": (_FT, "GE free text"),
    "ImageOrientationText": (_FT, "text; the geometry is in ImageOrientationPatientDICOM"),
    "BidsGuess": (_FT, "dcm2niix's guess from descriptions; the lake's BIDS export has its own "
                       "documented heuristic"),
    # the lake's own
    "SeriesDescription": (_OWN, "copied from the de-identified header: the profile decides"),
    "ProtocolName": (_OWN, "copied from the de-identified header: the profile decides"),
    "AcquisitionTime": (_OWN, "from the de-identified header (profiles may shift it); releases "
                              "before 2024 printed seconds without padding"),
    "ConversionSoftware": (_OWN, "imaging-lake"),
    "ConversionSoftwareVersion": (_OWN, "the lake's version is in the export manifest"),
    "BodyPartExamined": (_OWN, "older dcm2niix releases' name of BodyPart"),
    # derived before de-identification (lake.nifti.PARAMETERS) or computed from them: ASL,
    # field maps, Philips, GE, UIH
    "ArterialSpinLabelingType": (_C, ""),
    "PostLabelingDelay": (_C, ""),
    "LabelingDuration": (_C, ""),
    "EchoTime1": (_C, ""),
    "EchoTime2": (_C, ""),
    "WaterFatShift": (_C, ""),
    "EstimatedEffectiveEchoSpacing": (_C, ""),
    "EstimatedTotalReadoutTime": (_C, ""),
    "PartialFourierEnabled": (_W, "Philips partial-Fourier series whose ScanOptions or enhanced MR "
                   "Modifier say so; dcm2niix also reads private elements"),
    "PhaseEncodingStepsNoPartialFourier": (_W, "as PartialFourierEnabled"),
    "ParallelReductionOutOfPlane": (_C, ""),
    "NumberOfArms": (_C, ""),
    "NumberOfPointsPerArm": (_C, ""),
    "TriggerDelayTime": (_C, ""),
    "RawImage": (_C, ""),
    "ImageTypeText": (_W, "Siemens XA, when every value is in the declared vocabulary"),
    "Units": (_C, ""),
    "PhaseEncodingDirectionDisplayed": (_C, ""),
}

#: Sidecar keys compared with the reference wherever the reference has them (issue 10).
COMPARED_KEYS = tuple(k for k, (d, _) in SIDECAR_KEYS.items() if d is Disposition.COMPARED)

_NOT_DICOM = {".nii", ".txt", ".pdf", ".xlsx", ".json", ".md", ".png", ".sh", ".bval", ".bvec"}


@dataclass
class OriginalSeries:
    """One series as dcm2niix groups the original files."""

    uid: str
    number: int | None
    description: str
    protocol: str
    manufacturer: str
    files: list[Path] = field(default_factory=list)
    pixel_hashes: set[str] = field(default_factory=set)
    instance_keys: set[tuple[str, int | None, int | None]] = field(default_factory=set)
    """(pixel hash, SeriesNumber, InstanceNumber) of each file as the lake stores it (metadata
    inside compressed frames removed, as every profile does), so the lake's rows of this series
    can be found."""


@dataclass
class Reference:
    """One ``Ref/<stem>.*`` set written by dcm2niix."""

    repository: str
    stem: str
    sidecar: dict[str, Any]
    nii: Path | None
    bval: Path | None
    bvec: Path | None
    suffix: str = ""
    series: OriginalSeries | None = None


def _dicom_files(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and p.suffix.lower() not in _NOT_DICOM and not p.name.startswith(".")
        and p.name not in {"LICENSE", "README"}
    )


def pixel_hash(value: bytes) -> str:
    """The lake's address of a PixelData value (``lake.store.blob_key``)."""
    return "sha256:" + hashlib.sha256(value).hexdigest()


def original_series(repository: Path) -> list[OriginalSeries]:
    """The image series in ``repository/In``, grouped as dcm2niix groups them."""
    groups: dict[tuple[str, int | None], OriginalSeries] = {}
    for path in _dicom_files(repository / "In"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                ds = pydicom.dcmread(path)
            except pydicom.errors.InvalidDicomError:
                continue
        if "PixelData" not in ds:
            continue
        number = int(ds.SeriesNumber) if ds.get("SeriesNumber") not in (None, "") else None
        key = (str(ds.get("SeriesInstanceUID", "")), number)
        if key not in groups:
            groups[key] = OriginalSeries(
                key[0],
                number,
                str(ds.get("SeriesDescription", "")),
                str(ds.get("ProtocolName", "")),
                str(ds.get("Manufacturer", "")),
            )
        groups[key].files.append(path)
        strip_pixel_frames(ds)  # JPEG COM/APPn, JPEG 2000 comments: what de-identification does
        digest = pixel_hash(ds.PixelData)
        groups[key].pixel_hashes.add(digest)
        instance = ds.get("InstanceNumber")
        groups[key].instance_keys.add(
            (digest, number, int(instance) if instance not in (None, "") else None)
        )
    return list(groups.values())


def _sanitise(text: str) -> str:
    """dcm2niix's file-name cleaning of a text field."""
    return re.sub(r"[^A-Za-z0-9.\-]+", "_", text).strip("_")


_VENDORS = (("SIEMENS", "Siemens"), ("GE", "GE"), ("PHILIPS", "Philips"), ("UIH", "UIH"),
            ("UNITED", "UIH"), ("CANON", "Canon"), ("TOSHIBA", "Canon"))


def _vendor(manufacturer: str) -> str:
    upper = manufacturer.upper()
    for prefix, name in _VENDORS:
        if upper.startswith(prefix):
            return name
    return _sanitise(manufacturer)


def _pattern(repository: Path) -> str:
    text = (repository / "batch.sh").read_text(encoding="utf-8")
    found = re.findall(r"-f\s+\"?([^\"\s]+)\"?", text)
    if not found:
        raise ValueError(f"no -f pattern in {repository / 'batch.sh'}")
    return str(found[-1])


def _stem_of(pattern: str, series: OriginalSeries) -> str:
    values = {
        "p": _sanitise(series.protocol),
        "s": "" if series.number is None else str(series.number),
        "d": _sanitise(series.description),
        "v": _vendor(series.manufacturer),
    }
    return re.sub(r"%([a-z])", lambda m: values[m.group(1)], pattern)


def references(repository: Path) -> list[Reference]:
    """Every reference of ``repository/Ref``, mapped to its original series when present."""
    pattern = _pattern(repository)
    candidates = original_series(repository)
    out: list[Reference] = []
    for sidecar_path in sorted((repository / "Ref").glob("*.json")):
        stem = sidecar_path.stem
        sidecar = json.loads(sidecar_path.read_text(encoding="utf-8"))

        def existing(ext: str, stem: str = stem) -> Path | None:
            path = repository / "Ref" / f"{stem}{ext}"
            return path if path.is_file() else None

        ref = Reference(
            repository.name, stem, sidecar, existing(".nii"), existing(".bval"),
            existing(".bvec"),
        )
        matches = []
        for series in candidates:
            if series.number != sidecar.get("SeriesNumber"):
                continue
            base = _stem_of(pattern, series)
            if stem == base or stem.startswith(base + "_"):
                matches.append((len(base), base, series))
        if matches:
            _, base, ref.series = max(matches, key=lambda m: m[0])
            ref.suffix = stem[len(base):]
        out.append(ref)
    return out


# --------------------------------------------------------------------------- comparison


def _same_number(ours: Any, ref: Any) -> bool:
    # dcm2niix prints with %g (6 significant digits) or full precision
    return bool(np.isclose(float(ours), float(ref), rtol=1e-5, atol=1e-6))


def same_value(ours: Any, ref: Any) -> bool:
    """Equality of sidecar values at dcm2niix's printing precision."""
    if isinstance(ours, list) and isinstance(ref, list):
        return len(ours) == len(ref) and all(
            same_value(a, b) for a, b in zip(ours, ref, strict=True)
        )
    if isinstance(ours, bool) or isinstance(ref, bool):
        return bool(ours == ref)
    if isinstance(ours, int | float) and isinstance(ref, int | float):
        return _same_number(ours, ref)
    return bool(ours == ref)


def _read_numbers(path: Path) -> np.ndarray[Any, Any]:
    rows = [
        [float(v) for v in line.split()]
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.strip()
    ]
    return np.array(rows, dtype=np.float64)


def reference_year(sidecar: dict[str, Any]) -> int:
    """The year of the dcm2niix release that wrote a reference (v1.0.YYYYMMDD)."""
    found = re.search(r"v\d+\.\d+\.(\d{4})", str(sidecar.get("ConversionSoftwareVersion", "")))
    return int(found.group(1)) if found else 0


def _axes(affine: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """Unit world (RAS) direction of each voxel axis."""
    rotation = np.asarray(affine, dtype=np.float64)[:3, :3]
    return rotation / np.linalg.norm(rotation, axis=0)


def _pe_world(direction: str, affine: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    axis = {"i": 0, "j": 1, "k": 2}[direction[0]]
    sign = -1.0 if direction.endswith("-") else 1.0
    return sign * _axes(affine)[:, axis]


def _bvec_world(bvec: np.ndarray[Any, Any], affine: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """FSL bvecs (3, n) to world directions (n, 3): x is flipped when det > 0."""
    vectors = np.array(bvec, dtype=np.float64).T.copy()
    if float(np.linalg.det(np.asarray(affine)[:3, :3])) > 0:
        vectors[:, 0] = -vectors[:, 0]
    return vectors @ _axes(affine).T


def _same_slice_order(ours: np.ndarray[Any, Any], ref: np.ndarray[Any, Any]) -> bool:
    return float(np.dot(_axes(ours)[:, 2], _axes(ref)[:, 2])) > 0


def compare_volume(
    ref: Reference,
    files: dict[str, Path],
    slice_timing_candidates: Sequence[Sequence[float]] = (),
) -> list[str]:
    """What differs between ``ref`` and an exported volume (empty when they match).

    ``files`` maps extensions (``.nii``, ``.json``, ``.bval``, ``.bvec``) to our files.
    Values tied to voxel axes are compared by what they mean, so that a volume whose slices
    run the other way (dcm2niix keeps instance order, the lake sorts along the normal) is
    judged on substance: SliceTiming slice by slice, PhaseEncodingDirection and bvecs as
    world directions. Where the reference has no image, the axes are assumed to agree.
    ImageType: releases before 2024 did not append MAGNITUDE.

    ``slice_timing_candidates`` are the slice times recorded for each volume of the series
    (the catalog's ``slice_timing`` of each mosaic): Siemens records them per volume, on a
    2.5 ms raster that can differ between volumes, and dcm2niix reports one volume's (not
    always the first); ours are those of the first volume with plausible times. A reference
    equal to any recorded volume's times reports the acquisition as faithfully.
    """
    problems: list[str] = []
    ours_sidecar = json.loads(files[".json"].read_text(encoding="utf-8"))
    ours_image = nib.load(files[".nii"])
    ref_image = nib.load(ref.nii) if ref.nii is not None else None
    ref_affine = ref_image.affine if ref_image is not None else ours_image.affine
    for key in COMPARED_KEYS:
        if key not in ref.sidecar:
            continue
        theirs = ref.sidecar[key]
        if key not in ours_sidecar:
            problems.append(f"{key} missing (reference {theirs!r})")
            continue
        mine = ours_sidecar[key]
        if key == "ImageType" and reference_year(ref.sidecar) < 2024 \
                and mine[-1:] == ["MAGNITUDE"] and "MAGNITUDE" not in theirs:
            mine = mine[:-1]
        if key == "SliceTiming" and isinstance(theirs, list) \
                and not _same_slice_order(ours_image.affine, ref_affine):
            theirs = theirs[::-1]
        if key == "SliceTiming" and ref.sidecar.get("Manufacturer") == "UIH":
            # dcm2niix reads UIH slice times from HHMMSS.ffffff clock values held in float32
            # (2^-7 s apart at that magnitude) and subtracts two of them; ours keep the
            # clock's milliseconds
            same = isinstance(mine, list) and len(mine) == len(theirs) and bool(
                np.allclose(mine, theirs, rtol=0, atol=2.0**-6))
        elif key == "PhaseEncodingDirection":
            same = bool(np.allclose(_pe_world(mine, ours_image.affine),
                                    _pe_world(theirs, ref_affine), atol=1e-3))
        else:
            same = same_value(mine, theirs)
        if not same and key == "SliceTiming" and isinstance(theirs, list):
            same = any(
                len(c) == len(theirs) and same_value([t - min(c) for t in c], theirs)
                for c in slice_timing_candidates
            )
        if not same:
            problems.append(f"{key} {mine!r} != {theirs!r}")
    problems.extend(_other_keys(ref.sidecar, ours_sidecar))
    if ref.bval is not None:
        if ".bval" not in files:
            problems.append("bval missing")
        else:
            bval, ref_bval = _read_numbers(files[".bval"]), _read_numbers(ref.bval)
            if bval.shape != ref_bval.shape or not np.allclose(bval, ref_bval, atol=0.5):
                problems.append(f"bval {bval.ravel().tolist()} != {ref_bval.ravel().tolist()}")
            if (ref.bvec is None) != (".bvec" not in files):
                problems.append("bvec written where dcm2niix writes none, or the reverse")
            elif ref.bvec is not None:
                ours_world = _bvec_world(_read_numbers(files[".bvec"]), ours_image.affine)
                ref_world = _bvec_world(_read_numbers(ref.bvec), ref_affine)
                if ours_world.shape != ref_world.shape \
                        or not np.allclose(ours_world, ref_world, atol=2e-3):
                    problems.append("bvec directions differ")
    elif ".bval" in files:
        problems.append("bval/bvec written where dcm2niix writes none")
    if ref_image is not None:
        problems.extend(_compare_image(ours_image, ref_image))
    return problems


def _other_keys(theirs: dict[str, Any], ours: dict[str, Any]) -> list[str]:
    """What differs outside COMPARED_KEYS: undeclared reference keys, left-out keys the lake
    writes, and values of the other keys that both write."""
    problems = []
    for key in sorted(set(theirs) | set(ours)):
        declared = SIDECAR_KEYS.get(key)
        if declared is None:
            if key in theirs:
                problems.append(f"{key}: a reference key not declared in SIDECAR_KEYS")
            continue
        disposition = declared[0]
        if disposition in (Disposition.IDENTIFYING, Disposition.FREE_TEXT) and key in ours:
            problems.append(f"{key} written although left out on purpose ({disposition})")
        elif disposition in (Disposition.WHERE_WRITTEN, Disposition.NOT_DERIVED) \
                and key in ours and key in theirs and not same_value(ours[key], theirs[key]):
            problems.append(f"{key} {ours[key]!r} != {theirs[key]!r}")
    return problems


def key_statuses(theirs: dict[str, Any], ours: dict[str, Any]) -> dict[str, str]:
    """Per key of a reference sidecar: ``equal``, ``different`` or ``not written`` by the lake
    (values compared as :func:`compare_volume` does for keys without special rules)."""
    out = {}
    for key, value in theirs.items():
        if key not in ours:
            out[key] = "not written"
        else:
            out[key] = "equal" if same_value(ours[key], value) else "different"
    return out


def _compare_image(ours: Any, ref: Any) -> list[str]:
    problems: list[str] = []
    if ours.shape != ref.shape:
        return [f"shape {ours.shape} != {ref.shape}"]
    if ours.get_data_dtype() != ref.get_data_dtype():
        problems.append(f"dtype {ours.get_data_dtype()} != {ref.get_data_dtype()}")
    ours_c = nib.as_closest_canonical(ours)
    ref_c = nib.as_closest_canonical(ref)
    if not np.allclose(ours_c.affine, ref_c.affine, atol=1e-3):
        problems.append("affine differs")
        return problems
    a = np.asanyarray(ours_c.dataobj)
    b = np.asanyarray(ref_c.dataobj)
    if a.dtype.names or b.dtype.names:  # RGB24
        if a.dtype != b.dtype or not np.array_equal(a, b):
            problems.append("RGB voxels differ")
        return problems
    if np.issubdtype(ref.get_data_dtype(), np.integer) and ours.dataobj.slope == 1 and \
            ref.dataobj.slope == 1 and ours.dataobj.inter == 0 and ref.dataobj.inter == 0:
        if not np.array_equal(a, b):
            problems.append(f"voxels differ ({int(np.sum(a != b))} of {a.size})")
        return problems
    # scaled or float: the stored values times slope, compared at float32 rounding
    a32, b32 = a.astype(np.float32), b.astype(np.float32)
    if not np.allclose(a32, b32, rtol=2e-6, atol=float(np.abs(b32).max()) * 2e-7 + 1e-6):
        problems.append(
            f"voxels differ (max |diff| {float(np.abs(a32 - b32).max()):g})"
        )
    raw_ours, raw_ref = ours.dataobj, ref.dataobj
    for name in ("slope", "inter"):
        x, y = float(getattr(raw_ours, name)), float(getattr(raw_ref, name))
        if not np.isclose(x, y, rtol=1e-5, atol=1e-6) and not (np.isnan(x) and np.isnan(y)):
            problems.append(f"scl_{name} {x:g} != {y:g}")
    return problems


def reference_suffix(exported_suffix: str, series_number: int | None) -> str:
    """The dcm2niix suffix of an exported volume: the lake prefixes ``_s<SeriesNumber>`` when
    one SeriesInstanceUID holds several series numbers (dcm2niix names those by ``%s``)."""
    prefix = f"_s{series_number}"
    if series_number is not None and exported_suffix.startswith(prefix):
        rest = exported_suffix[len(prefix):]
        if not rest or rest.startswith("_"):
            return rest
    return exported_suffix


def group_exported(out: Path, manifest: dict[str, Any]) -> dict[str, dict[str, dict[str, Path]]]:
    """Exported files by series key (the stem's hash part) and volume stem."""
    by_stem: dict[str, dict[str, Path]] = defaultdict(dict)
    for record in manifest.get("files", []):
        path = out / record["path"]
        name = path.name
        for ext in (".nii.gz", ".nii", ".json", ".bval", ".bvec"):
            if name.endswith(ext):
                by_stem[str(path)[: -len(ext)]][ext if ext != ".nii.gz" else ".nii"] = path
                break
    grouped: dict[str, dict[str, dict[str, Path]]] = defaultdict(dict)
    for stem, files in by_stem.items():
        grouped[Path(stem).parent.as_posix()][Path(stem).name] = files
    return grouped
