"""Synthetic DICOM series for the NIfTI tests and benchmarks (not shipped with the library).

Every dataset is a complete, valid single-frame CT or MR instance (file meta included) that
``dcm2niix`` reads too. Voxel values encode their physical position, so a mis-sorted slice,
a flipped axis or a swapped volume changes the array. Output is deterministic for given
arguments.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
    RLELossless,
    generate_uid,
)

__all__ = ["AXIAL", "CORONAL", "PHI_SENTINELS", "SAGITTAL", "enhanced_from", "malformed_rle",
           "synthetic_series"]

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
CORONAL = (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)
SAGITTAL = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)

#: Values a PHI test can search for in every output: they must never appear there.
PHI_SENTINELS = {
    "PatientName": "SENTINEL^PATIENT",
    "PatientID": "SENTINEL-PID-0001",
    "PatientBirthDate": "19010203",
    "InstitutionName": "SENTINEL HOSPITAL",
    "ReferringPhysicianName": "SENTINEL^DOCTOR",
    "AccessionNumber": "SENTACC0001",
    "StationName": "SENTINELSTATION",
    "DeviceSerialNumber": "SENTSERIAL01",
}


def _uid(*parts: object) -> UID:
    return generate_uid(entropy_srcs=[str(p) for p in parts])


def _clock(seconds: float) -> str:
    whole = int(seconds)
    micro = round((seconds - whole) * 1e6)
    return f"{whole // 3600:02d}{whole // 60 % 60:02d}{whole % 60:02d}.{micro:06d}"


def _rotation(iop: Sequence[float], tilt_degrees: float) -> tuple[NDArray[np.float64], ...]:
    row = np.array(iop[:3], dtype=np.float64)
    col = np.array(iop[3:], dtype=np.float64)
    if tilt_degrees:
        # tilt the plane about the row direction (gantry tilt about the patient's x axis)
        angle = math.radians(tilt_degrees)
        normal = np.cross(row, col)
        col = math.cos(angle) * col + math.sin(angle) * normal
    return row, col, np.cross(row, col)


def synthetic_series(
    *,
    n_slices: int = 20,
    rows: int = 64,
    cols: int = 64,
    modality: str = "CT",
    orientation: Sequence[float] = AXIAL,
    pixel_spacing: tuple[float, float] = (0.8, 0.7),
    slice_spacing: float = 2.5,
    origin: Sequence[float] = (-30.0, -40.0, 10.0),
    positions: Sequence[float] | None = None,
    gap_after: int | None = None,
    tilt_degrees: float = 0.0,
    n_volumes: int = 1,
    echo_times: Sequence[float] | None = None,
    bvalues: Sequence[float] | None = None,
    bvecs: Sequence[Sequence[float]] | None = None,
    rescale: tuple[float, float] = (1.0, -1024.0),
    rescale_per_slice: bool = False,
    signed: bool = False,
    bits_stored: int = 12,
    repetition_time: float = 2000.0,
    noise: float = 0.0,
    instance_numbers: str = "ordered",
    seed: int = 0,
    series_tag: str = "synth",
) -> list[Dataset]:
    """A series of single-frame instances with known geometry.

    Parameters
    ----------
    n_slices, rows, cols : int
        Matrix size of one volume.
    modality : str
        ``"CT"`` or ``"MR"`` (MR adds TE/TR/flip angle, no rescale unless asked).
    orientation : sequence of float
        ``ImageOrientationPatient``.
    pixel_spacing : tuple of float
        ``PixelSpacing`` (row spacing, column spacing).
    slice_spacing : float
        Distance between slices along the normal (mm).
    origin : sequence of float
        Position of the first slice's first pixel (LPS).
    positions : sequence of float, optional
        Explicit slice offsets along the normal (mm), overriding ``n_slices``/spacing.
    gap_after : int, optional
        Leave out the slice after this index (a missing instance).
    tilt_degrees : float
        Gantry tilt: planes tilted, slice origins still advance along the table axis.
    n_volumes : int
        Repeat the stack this many times (4D: fMRI, DWI), ``AcquisitionNumber`` 1..n.
    echo_times : sequence of float, optional
        Multi-echo: one stack per echo (ms), ``EchoNumbers`` 1..n.
    bvalues, bvecs : optional
        Diffusion encoding per volume (LPS directions) in DiffusionBValue /
        DiffusionGradientOrientation.
    rescale : tuple of float
        ``(RescaleSlope, RescaleIntercept)``.
    rescale_per_slice : bool
        Give every slice a different slope (forces float32 output).
    signed : bool
        ``PixelRepresentation`` 1.
    bits_stored : int
        ``BitsStored`` (``BitsAllocated`` is 16).
    repetition_time : float
        TR in ms (MR).
    noise : float
        Standard deviation of added noise in stored units (realistic compression ratios).
    instance_numbers : str
        ``"ordered"``, ``"reversed"`` or ``"shuffled"`` (geometry must not depend on it).
    seed : int
        Seed for noise and shuffling.
    series_tag : str
        Makes the UIDs of different synthetic series distinct.

    Returns
    -------
    list of pydicom.dataset.Dataset
        The instances in acquisition order.

    Examples
    --------
    >>> series = synthetic_series(n_slices=3, rows=4, cols=4)
    >>> [float(ds.ImagePositionPatient[2]) for ds in series]
    [10.0, 12.5, 15.0]
    """
    rng = np.random.default_rng(seed)
    offsets = list(positions) if positions is not None else [
        k * slice_spacing for k in range(n_slices)
    ]
    if gap_after is not None:
        offsets = offsets[: gap_after + 1] + offsets[gap_after + 2 :]
    row, col, normal = _rotation(orientation, tilt_degrees)
    table_axis = np.cross(np.array(orientation[:3]), np.array(orientation[3:]))
    step_axis = table_axis if tilt_degrees else normal
    echoes = list(echo_times) if echo_times else [None]
    study = _uid(series_tag, "study")
    series_uid = _uid(series_tag, "series")
    frame_of_reference = _uid(series_tag, "for")
    sop_class = CTImageStorage if modality == "CT" else MRImageStorage
    pr, pc = pixel_spacing
    r_idx, c_idx = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    instances: list[Dataset] = []
    high = (1 << bits_stored) - 1 if not signed else (1 << (bits_stored - 1)) - 1
    low = 0 if not signed else -(1 << (bits_stored - 1))
    for v in range(n_volumes):
        for e, te in enumerate(echoes):
            for k, offset in enumerate(offsets):
                position = np.array(origin, dtype=np.float64) + offset * step_axis
                # world coordinates of every pixel centre (LPS), then a smooth pattern
                world = (
                    position[None, None, :]
                    + c_idx[..., None] * pc * row[None, None, :]
                    + r_idx[..., None] * pr * col[None, None, :]
                )
                pattern = (
                    3.0 * world[..., 0]
                    + 5.0 * world[..., 1]
                    + 7.0 * world[..., 2]
                    + 50.0 * v
                    + 400.0 * e
                )
                values = 1200.0 + pattern
                if noise:
                    values = values + rng.normal(0.0, noise, values.shape)
                pixels = np.clip(np.round(values), low, high)
                dtype = np.int16 if signed else np.uint16
                ds = Dataset()
                ds.file_meta = FileMetaDataset()
                ds.file_meta.MediaStorageSOPClassUID = sop_class
                sop_uid = _uid(series_tag, v, e, k)
                ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
                ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
                ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
                ds.SOPClassUID = sop_class
                ds.SOPInstanceUID = sop_uid
                ds.StudyInstanceUID = study
                ds.SeriesInstanceUID = series_uid
                ds.FrameOfReferenceUID = frame_of_reference
                ds.Modality = modality
                ds.Manufacturer = "LAKE-SYNTH"
                ds.ManufacturerModelName = "Phantom"
                for keyword, value in PHI_SENTINELS.items():
                    setattr(ds, keyword, value)
                ds.SeriesNumber = 7
                ds.SeriesDescription = "synthetic"
                ds.AcquisitionNumber = v + 1
                ds.AcquisitionTime = _clock(
                    36000.0 + (v + k / max(len(offsets), 1)) * repetition_time / 1000.0
                )
                ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
                ds.ImagePositionPatient = [round(float(x), 6) for x in position]
                ds.ImageOrientationPatient = [round(float(x), 8) for x in (*row, *col)]
                ds.PixelSpacing = [pr, pc]
                ds.SliceThickness = slice_spacing
                ds.PatientPosition = "HFS"
                ds.Rows = rows
                ds.Columns = cols
                ds.SamplesPerPixel = 1
                ds.PhotometricInterpretation = "MONOCHROME2"
                ds.BitsAllocated = 16
                ds.BitsStored = bits_stored
                ds.HighBit = bits_stored - 1
                ds.PixelRepresentation = 1 if signed else 0
                if modality == "CT":
                    ds.KVP = 120
                    slope = rescale[0] * (1.0 + 0.01 * k if rescale_per_slice else 1.0)
                    ds.RescaleSlope = f"{slope:.6g}"
                    ds.RescaleIntercept = rescale[1]
                    ds.RescaleType = "HU"
                    if tilt_degrees:
                        ds.GantryDetectorTilt = tilt_degrees
                else:
                    ds.MagneticFieldStrength = 3
                    ds.RepetitionTime = repetition_time
                    ds.EchoTime = te if te is not None else 30.0
                    ds.EchoNumbers = e + 1
                    ds.FlipAngle = 90
                    ds.MRAcquisitionType = "2D"
                    ds.ScanningSequence = "EP" if bvalues else "GR"
                    ds.SequenceVariant = "NONE"
                    ds.InPlanePhaseEncodingDirection = "COL"
                    if rescale_per_slice or rescale != (1.0, -1024.0):
                        slope = rescale[0] * (1.0 + 0.01 * k if rescale_per_slice else 1.0)
                        ds.RescaleSlope = f"{slope:.6g}"
                        ds.RescaleIntercept = rescale[1] if rescale != (1.0, -1024.0) else 0
                if bvalues is not None:
                    ds.DiffusionBValue = float(bvalues[v])
                    if bvecs is not None:
                        ds.DiffusionGradientOrientation = [float(x) for x in bvecs[v]]
                ds.PixelData = pixels.astype(dtype).tobytes()
                instances.append(ds)
    numbers = np.arange(1, len(instances) + 1)
    if instance_numbers == "reversed":
        numbers = numbers[::-1]
    elif instance_numbers == "shuffled":
        numbers = rng.permutation(numbers)
    for ds, number in zip(instances, numbers, strict=True):
        ds.InstanceNumber = int(number)
    return instances


def enhanced_from(series: Sequence[Dataset], frame_order: Sequence[int] | None = None) -> Dataset:
    """Pack single-frame synthetic MR/CT instances into one enhanced multi-frame instance.

    Geometry goes to the per-frame (position) and shared (orientation, pixel measures)
    functional groups, rescale and echo time per frame, the temporal position per frame.

    Parameters
    ----------
    series : sequence of Dataset
        From :func:`synthetic_series` (same matrix and orientation).
    frame_order : sequence of int, optional
        Order in which the instances become frames (default: as given).

    Returns
    -------
    pydicom.dataset.Dataset
        An Enhanced MR (or Enhanced CT) Image Storage instance.
    """
    from pydicom.sequence import Sequence as DicomSequence
    from pydicom.uid import EnhancedCTImageStorage, EnhancedMRImageStorage

    order = list(frame_order) if frame_order is not None else list(range(len(series)))
    first = series[0]
    mr = first.Modality == "MR"
    sop_class = EnhancedMRImageStorage if mr else EnhancedCTImageStorage
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    sop_uid = _uid(first.SeriesInstanceUID, "enhanced")
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    for keyword in (
        "StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID", "Modality",
        "Manufacturer", "ManufacturerModelName", "SeriesNumber", "SeriesDescription",
        "PatientName", "PatientID", "Rows", "Columns", "SamplesPerPixel",
        "PhotometricInterpretation", "BitsAllocated", "BitsStored", "HighBit",
        "PixelRepresentation", "MagneticFieldStrength", "InPlanePhaseEncodingDirection",
    ):
        if keyword in first:
            setattr(ds, keyword, first.get(keyword))
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.InstanceNumber = 1
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"] if mr else ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.NumberOfFrames = len(order)
    shared = Dataset()
    orientation = Dataset()
    orientation.ImageOrientationPatient = first.ImageOrientationPatient
    shared.PlaneOrientationSequence = DicomSequence([orientation])
    measures = Dataset()
    measures.PixelSpacing = first.PixelSpacing
    measures.SliceThickness = first.SliceThickness
    shared.PixelMeasuresSequence = DicomSequence([measures])
    if mr:
        timing = Dataset()
        timing.RepetitionTime = first.RepetitionTime
        timing.FlipAngle = first.FlipAngle
        shared.MRTimingAndRelatedParametersSequence = DicomSequence([timing])
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
    normal = np.cross(
        np.array(first.ImageOrientationPatient[:3], dtype=float),
        np.array(first.ImageOrientationPatient[3:], dtype=float),
    )
    along = [float(np.dot(np.array(d.ImagePositionPatient, dtype=float), normal)) for d in series]
    distinct = sorted(set(np.round(along, 3).tolist()))
    stack_position = [distinct.index(round(a, 3)) + 1 for a in along]
    dimension = DicomSequence()
    for pointer, group in (("TemporalPositionIndex", "FrameContentSequence"),
                           ("InStackPositionNumber", "FrameContentSequence")):
        index_item = Dataset()
        index_item.DimensionIndexPointer = pointer
        index_item.FunctionalGroupPointer = group
        dimension.append(index_item)
    ds.DimensionIndexSequence = dimension
    per_frame = []
    pixel_data = []
    for index in order:
        source = series[index]
        item = Dataset()
        position = Dataset()
        position.ImagePositionPatient = source.ImagePositionPatient
        item.PlanePositionSequence = DicomSequence([position])
        content = Dataset()
        content.TemporalPositionIndex = int(source.AcquisitionNumber)
        content.StackID = "1"
        content.InStackPositionNumber = stack_position[index]
        content.DimensionIndexValues = [int(source.AcquisitionNumber), stack_position[index]]
        item.FrameContentSequence = DicomSequence([content])
        transform = Dataset()
        transform.RescaleSlope = source.get("RescaleSlope", 1)
        transform.RescaleIntercept = source.get("RescaleIntercept", 0)
        transform.RescaleType = "US"
        item.PixelValueTransformationSequence = DicomSequence([transform])
        if mr:
            echo = Dataset()
            echo.EffectiveEchoTime = source.EchoTime
            item.MREchoSequence = DicomSequence([echo])
        per_frame.append(item)
        pixel_data.append(source.PixelData)
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(per_frame)
    ds.PixelData = b"".join(pixel_data)
    return ds


def malformed_rle(ds: Dataset, kind: str) -> Dataset:
    """``ds`` (a single-frame instance) RLE-compressed in place with one non-conformant frame
    (its SOP Instance UID kept).

    ``kind``:

    - ``"overrun"``: each segment ends with a replicate run overrunning the frame. pylibjpeg-rle
      2.2.0 panics (``pyo3_runtime.PanicException``, a BaseException); pydicom's own decoder
      decodes it (UserWarning on the padding), to the original pixels.
    - ``"overrun_miscounted"``: the same, with a segment count one too high: pylibjpeg-rle
      panics, pydicom's own decoder refuses it (RuntimeError): undecodable.
    - ``"header_gap"``: the first segment starts at offset 68 (4 bytes after the 64-byte
      header): pylibjpeg-rle refuses it ("Invalid segment offset"), pydicom's own decodes it.
    """
    ds.compress(RLELossless, generate_instance_uid=False)
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    count = struct.unpack("<L", frame[:4])[0]
    offsets = list(struct.unpack("<15L", frame[4:64]))[:count]
    segments = [frame[a:b] for a, b in zip(offsets, [*offsets[1:], len(frame)], strict=True)]
    start = 64
    if kind in ("overrun", "overrun_miscounted"):
        segments = [segment + b"\xff\x07" for segment in segments]
        count += kind == "overrun_miscounted"
    elif kind == "header_gap":
        start = 68
    else:
        raise ValueError(f"unknown kind {kind!r}")
    starts = [start + sum(len(s) for s in segments[:i]) for i in range(len(segments))]
    header = struct.pack("<L15L", count, *starts, *[0] * (15 - len(starts)))
    ds.PixelData = encapsulate([header + bytes(start - 64) + b"".join(segments)])
    return ds
