"""Standard DICOM objects for documents: Encapsulated PDF, VL Photographic, Multi-frame SC, Video.

Each builder takes the study's Patient and Study modules (a dataset holding them, identified
before de-identification or already de-identified), the de-identified content and the new
instance's UIDs, and returns a complete instance that ``dciodvfy`` accepts:

* :func:`encapsulated_pdf` - Encapsulated PDF Storage (PS3.3 A.45.1), modality DOC.
* :func:`vl_photographic` - VL Photographic Image Storage (A.33.7), modality XC, for one
  photograph or one scanned page; a baseline JPEG stays in JPEG Baseline (Process 1).
* :func:`multiframe_sc` - Multi-frame True Color / Grayscale Byte Secondary Capture (A.8.5,
  A.8.3) for a scan of several pages (a multi-page TIFF), one frame per page.
* :func:`video_photographic` - Video Photographic Image Storage (A.32.9), MPEG-4 AVC/H.264
  High Profile / Level 4.1.
"""

from __future__ import annotations

from collections.abc import Iterable
from fractions import Fraction

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import (
    MPEG4HP41,
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
)

from lake.documents._image import CleanedImage
from lake.documents._video import CleanedVideo

__all__ = [
    "ENCAPSULATED_PDF",
    "MULTIFRAME_GRAYSCALE_SC",
    "MULTIFRAME_TRUE_COLOR_SC",
    "STUDY_KEYWORDS",
    "VIDEO_PHOTOGRAPHIC",
    "VL_PHOTOGRAPHIC",
    "encapsulated_pdf",
    "multiframe_sc",
    "study_modules",
    "video_photographic",
    "vl_photographic",
]

ENCAPSULATED_PDF = UID("1.2.840.10008.5.1.4.1.1.104.1")
VL_PHOTOGRAPHIC = UID("1.2.840.10008.5.1.4.1.1.77.1.4")
VIDEO_PHOTOGRAPHIC = UID("1.2.840.10008.5.1.4.1.1.77.1.4.1")
MULTIFRAME_TRUE_COLOR_SC = UID("1.2.840.10008.5.1.4.1.1.7.4")
MULTIFRAME_GRAYSCALE_SC = UID("1.2.840.10008.5.1.4.1.1.7.2")

_CREATOR = "imaging-lake"
# The General Study module and the study-level attributes that travel with it (PS3.3 C.7.2.1).
STUDY_KEYWORDS = (
    "SpecificCharacterSet", "StudyInstanceUID", "StudyDate", "StudyTime",
    "ReferringPhysicianName", "ReferringPhysicianIdentificationSequence",
    "ConsultingPhysicianName", "ConsultingPhysicianIdentificationSequence", "StudyID",
    "AccessionNumber", "IssuerOfAccessionNumberSequence", "StudyDescription",
    "PhysiciansOfRecord", "PhysiciansOfRecordIdentificationSequence",
    "NameOfPhysiciansReadingStudy", "PhysiciansReadingStudyIdentificationSequence",
    "RequestingServiceCodeSequence", "ReferencedStudySequence", "ProcedureCodeSequence",
    "ReasonForPerformedProcedureCodeSequence", "TimezoneOffsetFromUTC",
    "PatientIdentityRemoved", "DeidentificationMethod", "DeidentificationMethodCodeSequence",
    "LongitudinalTemporalInformationModified",
)
_PATIENT_GROUPS = (0x0010, 0x0012)  # Patient, Patient Study, Clinical Trial Subject/Study
_FRAME_TIME = Tag("FrameTime")
_PAGE_NUMBER_VECTOR = Tag("PageNumberVector")


def study_modules(source: Dataset) -> Dataset:
    """The Patient, Patient Study, General Study and Clinical Trial modules of ``source``.

    Copies the elements of groups 0010 and 0012 and the General Study attributes
    (:data:`STUDY_KEYWORDS`), with the character set that encodes them; nothing else.
    """
    out = Dataset()
    for elem in source:
        if elem.tag.group in _PATIENT_GROUPS and not elem.tag.is_private:
            out.add(elem)
    for keyword in STUDY_KEYWORDS:
        if keyword in source:
            out.add(source[keyword])
    return out


def _base(study: Dataset, sop_class: UID, series_uid: str, sop_uid: str, modality: str,
          syntax: UID, created: tuple[str, str] | None) -> Dataset:
    ds = Dataset()
    ds.update(study)
    ds.SpecificCharacterSet = study.get("SpecificCharacterSet", "ISO_IR 192") or "ISO_IR 192"
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate",
                    "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber"):
        if keyword not in ds:
            setattr(ds, keyword, "")  # Type 2
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.Modality = modality
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = 900
    ds.InstanceNumber = 1
    ds.Manufacturer = ""
    if created:
        ds.ContentDate, ds.ContentTime = created
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = syntax
    meta.ImplementationClassUID = UID(PYDICOM_IMPLEMENTATION_UID)
    ds.file_meta = meta
    ds.preamble = b"\0" * 128
    return ds


def _secondary_capture_equipment(ds: Dataset, conversion: str) -> None:
    ds.ConversionType = conversion
    ds.SecondaryCaptureDeviceManufacturer = _CREATOR
    ds.SecondaryCaptureDeviceSoftwareVersions = "1"


def encapsulated_pdf(study: Dataset, pdf: bytes, *, series_uid: str, sop_uid: str,
                     created: tuple[str, str] | None = None) -> Dataset:
    """An Encapsulated PDF instance holding ``pdf`` (already de-identified)."""
    ds = _base(study, ENCAPSULATED_PDF, series_uid, sop_uid, "DOC", ExplicitVRLittleEndian,
               created)
    _secondary_capture_equipment(ds, "WSD")
    if not created:
        ds.ContentDate = ds.ContentTime = ""  # Type 2 in the Encapsulated Document module
    ds.AcquisitionDateTime = created[0] + created[1] if created else ""
    ds.BurnedInAnnotation = "NO"
    ds.DocumentTitle = ""
    ds.ConceptNameCodeSequence = Sequence()
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.EncapsulatedDocument = pdf + (b"\0" if len(pdf) % 2 else b"")
    ds.EncapsulatedDocumentLength = len(pdf)
    return ds


def _image_series(ds: Dataset, masked: bool) -> None:
    ds.Laterality = ""  # Type 2C: unknown whether the body part is paired
    ds.ImageType = ["DERIVED" if masked else "ORIGINAL", "PRIMARY"]
    ds.PatientOrientation = ""
    ds.BurnedInAnnotation = "NO"


def _pixel_module(ds: Dataset, rows: int, columns: int, samples: int, photometric: str) -> None:
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel = samples
    ds.PhotometricInterpretation = photometric
    if samples > 1:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0


def _pixels(frames: Iterable[bytes], encapsulated: bool) -> bytes:
    frames = list(frames)
    if encapsulated:
        return encapsulate(frames, has_bot=False)
    data = b"".join(frames)
    return data + (b"\0" if len(data) % 2 else b"")


def vl_photographic(study: Dataset, image: CleanedImage, *, series_uid: str, sop_uid: str
                    ) -> Dataset:
    """A VL Photographic Image instance from one de-identified photograph or page."""
    syntax = JPEGBaseline8Bit if image.jpeg else ExplicitVRLittleEndian
    ds = _base(study, VL_PHOTOGRAPHIC, series_uid, sop_uid, "XC", syntax, image.created)
    _image_series(ds, image.masked)
    ds.AcquisitionDateTime = image.created[0] + image.created[1] if image.created else ""
    ds.AcquisitionContextSequence = Sequence()
    _pixel_module(ds, image.rows, image.columns, image.samples, image.photometric)
    ds.LossyImageCompression = "01" if image.lossy else "00"
    if image.lossy:
        ds.LossyImageCompressionMethod = "ISO_10918_1"
    ds.PixelData = _pixels(image.frames, image.jpeg)
    ds["PixelData"].VR = "OB"
    return ds


def multiframe_sc(study: Dataset, image: CleanedImage, *, series_uid: str, sop_uid: str
                  ) -> Dataset:
    """A Multi-frame Secondary Capture instance with one frame per scanned page."""
    colour = image.samples == 3
    sop_class = MULTIFRAME_TRUE_COLOR_SC if colour else MULTIFRAME_GRAYSCALE_SC
    ds = _base(study, sop_class, series_uid, sop_uid, "OT", ExplicitVRLittleEndian,
               image.created)
    _secondary_capture_equipment(ds, "SD")
    _image_series(ds, image.masked)
    ds.NumberOfFrames = len(image.frames)
    ds.FrameIncrementPointer = _PAGE_NUMBER_VECTOR
    ds.PageNumberVector = list(range(1, len(image.frames) + 1))
    _pixel_module(ds, image.rows, image.columns, image.samples, image.photometric)
    if not colour:
        ds.PresentationLUTShape = "IDENTITY"
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "US"
    ds.LossyImageCompression = "01" if image.lossy else "00"
    ds.PixelData = _pixels(image.frames, False)
    ds["PixelData"].VR = "OB"
    return ds


def video_photographic(study: Dataset, video: CleanedVideo, *, series_uid: str, sop_uid: str
                       ) -> Dataset:
    """A Video Photographic Image instance holding a de-identified H.264 stream."""
    ds = _base(study, VIDEO_PHOTOGRAPHIC, series_uid, sop_uid, "XC", MPEG4HP41, video.created)
    _image_series(ds, video.masked)
    ds.AcquisitionDateTime = video.created[0] + video.created[1] if video.created else ""
    ds.AcquisitionContextSequence = Sequence()
    region = Dataset()  # Type 1C for multi-frame VL images; the lake cannot know the region
    region.CodeValue, region.CodingSchemeDesignator, region.CodeMeaning = (
        "261665006", "SCT", "Unknown")
    ds.AnatomicRegionSequence = Sequence([region])
    frame_ms = Fraction(1000) / video.fps
    ds.NumberOfFrames = video.frames
    ds.FrameIncrementPointer = _FRAME_TIME
    ds.FrameTime = f"{float(frame_ms):.6g}"
    ds.CineRate = round(float(video.fps))
    ds.RecommendedDisplayFrameRate = round(float(video.fps))
    ds.StartTrim, ds.StopTrim = 1, video.frames
    ds.ActualFrameDuration = round(float(frame_ms))
    _pixel_module(ds, video.rows, video.columns, 3, "YBR_PARTIAL_420")
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionMethod = "ISO_14496_10"
    ds.PixelData = _pixels([video.stream], True)
    ds["PixelData"].VR = "OB"
    return ds
