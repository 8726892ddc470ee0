"""A corpus of real DICOM files with unique tokens planted wherever identity hides.

``write_corpus(folder, n_patients)`` writes, per patient, a 3-slice CT series, a Basic Text
SR, an Encapsulated PDF and an ultrasound image with burned-in text, and returns every
planted token. A de-identified output of any built-in profile must contain none of them
(except the tokens of :data:`DEVICE_PREFIX`, kept by design by profiles with the Retain
Device Identity option: see :func:`expected_absent`).

Places (issue 3 checklist): PatientName/ID/BirthDate; OtherPatientIDs and its sequence;
names in RequestAttributesSequence and ContentSequence (TextValue, PersonName); sequences
three levels deep; names in StudyDescription, SeriesDescription, ImageComments,
ProtocolName, AdditionalPatientHistory, RequestedProcedureDescription; institution, station,
device serial; physicians and operators; private elements with and without creator, in
sequences, VR UN, a date hidden in a private LO; DT with a UTC offset and malformed dates;
overlays and curves; EncapsulatedDocument (a real PDF: text, Info, annotation, attachment); the
file meta; the source path; burned-in pixels; with ``documents=True``, document files beside the
DICOM (PDF text and Info, EXIF, AVI INFO chunks, text burned into a picture and a video).

Descriptor plants (issue 10.4): per patient an MR instance whose header holds a realistic
identity (:data:`IDENTITIES`: a surname that is an ordinary and technical word, a punctuated
double surname, a two-letter surname) and whose descriptions hold that identity in the other
forms free text writes it (``Rosalind Heart``, ``R. Heart``, ``HEART R``, initials,
``H.E.A.R.T``, ``rosalindheart``), MRN digits with separators and as a fragment inside a
token, the study and birth dates in many formats (``2023-01-05``, ``05.01.23``, ``5 Jan
2023``, inside a protocol name), a phone number, an e-mail, a street address and postcode, and
names the header does not hold (after ``Dr``). :func:`descriptor_plants` returns what must not
survive (checked word by word) and the technical words that must.

Tokens are ``TKN`` + 12 base32 characters (derived from the patient, batch and place, so a
run is reproducible); dates are distinctive 8-digit dates, all in the year from 1931-01-01, so
that no date shifted into the past by a profile (at least 366 days) can equal a planted one by
chance (with dates over 80 years, a keyed shift hit another planted date in about 1 run in 10,
which the proofs would report as a leak); original UIDs use a private root.
"""

from __future__ import annotations

import base64
import copy
import datetime as dt
import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom import config, dcmread
from pydicom.data import get_testdata_file
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian

__all__ = [
    "DEVICE_PREFIX",
    "IDENTITIES",
    "UID_ROOT",
    "DescriptorPlants",
    "descriptor_plants",
    "expected_absent",
    "patient_label",
    "write_corpus",
]

DEVICE_PREFIX = "TKNDEV"
"""Tokens planted in device-identity attributes (StationName, DeviceSerialNumber...)."""

UID_ROOT = "1.2.826.0.1.3680043.10.1077."
"""Root of every original UID in the corpus."""

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"
ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"
US_IMAGE = "1.2.840.10008.5.1.4.1.1.6.1"


def _digest(*parts: object) -> bytes:
    return hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()


class _Planter:
    """Makes tokens, dates and UIDs for one patient and batch, remembering each one."""

    def __init__(self, patient: int, batch: int) -> None:
        self.patient = patient
        self.batch = batch
        self.tokens: set[str] = set()

    def token(self, place: str, *, patient_level: bool = False, prefix: str = "TKN") -> str:
        batch = "p" if patient_level else self.batch
        text = base64.b32encode(_digest(self.patient, batch, place)).decode()
        value = (prefix + text)[:15]
        self.tokens.add(value)
        return value

    def date(self, place: str, *, patient_level: bool = False, record: bool = True) -> str:
        batch = "p" if patient_level else self.batch
        n = int.from_bytes(_digest("date", self.patient, batch, place)[:4], "big")
        value = (dt.date(1931, 1, 1) + dt.timedelta(days=n % 365)).strftime("%Y%m%d")
        if record:
            self.tokens.add(value)
        return value

    def uid(self, place: str) -> str:
        n = int.from_bytes(_digest("uid", self.patient, self.batch, place)[:12], "big")
        value = f"{UID_ROOT}{self.patient}.{self.batch}.{n}"
        self.tokens.add(value)
        return value


def patient_label(patient: int) -> str:
    """The PatientID planted for patient ``patient`` (same in every batch)."""
    return _Planter(patient, 0).token("PatientID", patient_level=True)


def _raw(tag: int, vr: str, value: object) -> DataElement:
    """An element whose value is planted verbatim (malformed values included)."""
    return DataElement(tag, vr, value, validation_mode=config.IGNORE)


def _meta(ds: Dataset, sop_class: str, p: _Planter) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.SourceApplicationEntityTitle = p.token("SourceApplicationEntityTitle")
    ds.file_meta = meta
    ds.preamble = p.token("preamble").encode().ljust(128, b"\0")


def _patient(ds: Dataset, p: _Planter) -> None:
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = (
        f"{p.token('PatientName.family', patient_level=True)}^"
        f"{p.token('PatientName.given', patient_level=True)}"
    )
    ds.PatientID = p.token("PatientID", patient_level=True)
    ds.IssuerOfPatientID = p.token("IssuerOfPatientID", patient_level=True)
    ds.PatientBirthDate = p.date("PatientBirthDate", patient_level=True)
    ds.PatientSex = "F"
    ds.PatientAge = "095Y"
    ds.PatientWeight = "61.5"
    ds.PatientSize = "1.62"
    ds.OtherPatientIDs = p.token("OtherPatientIDs", patient_level=True)
    other = Dataset()
    other.PatientID = p.token("OtherPatientIDsSequence.PatientID", patient_level=True)
    other.IssuerOfPatientID = p.token("OtherPatientIDsSequence.Issuer", patient_level=True)
    other.TypeOfPatientID = "TEXT"
    ds.OtherPatientIDsSequence = Sequence([other])
    ds.OtherPatientNames = p.token("OtherPatientNames", patient_level=True)
    ds.PatientMotherBirthName = p.token("PatientMotherBirthName", patient_level=True)
    ds.PatientAddress = p.token("PatientAddress", patient_level=True)
    ds.PatientTelephoneNumbers = p.token("PatientTelephoneNumbers", patient_level=True)
    ds.AdditionalPatientHistory = f"history given by {p.token('AdditionalPatientHistory')}"


def _study(ds: Dataset, p: _Planter, uids: dict[str, str]) -> None:
    ds.StudyInstanceUID = uids["study"]
    ds.StudyDate = p.date("StudyDate")
    ds.StudyTime = "101530"
    ds.AccessionNumber = p.token("AccessionNumber")
    ds.StudyID = p.token("StudyID")
    ds.StudyDescription = f"CT CHEST W CONTRAST {p.token('StudyDescription')}"
    ds.ReferringPhysicianName = p.token("ReferringPhysicianName")
    ds.NameOfPhysiciansReadingStudy = p.token("NameOfPhysiciansReadingStudy")
    ds.PhysiciansOfRecord = p.token("PhysiciansOfRecord")
    ds.RequestedProcedureDescription = f"CT {p.token('RequestedProcedureDescription')}"
    request = Dataset()
    request.RequestedProcedureID = p.token("RequestAttributes.RequestedProcedureID")
    request.ScheduledProcedureStepDescription = p.token("RequestAttributes.SPSDescription")
    request.RequestedProcedureDescription = p.token("RequestAttributes.RPDescription")
    request.ScheduledPerformingPhysicianName = p.token("RequestAttributes.Physician")
    ds.RequestAttributesSequence = Sequence([request])


def _equipment(ds: Dataset, p: _Planter) -> None:
    ds.Manufacturer = "ACME"
    ds.ManufacturerModelName = "SCANNER 9"
    ds.InstitutionName = p.token("InstitutionName")
    ds.InstitutionAddress = p.token("InstitutionAddress")
    ds.InstitutionalDepartmentName = p.token("InstitutionalDepartmentName")
    ds.StationName = p.token("StationName", prefix=DEVICE_PREFIX)
    ds.DeviceSerialNumber = p.token("DeviceSerialNumber", prefix=DEVICE_PREFIX)
    ds.OperatorsName = p.token("OperatorsName")
    ds.PerformingPhysicianName = p.token("PerformingPhysicianName")


def _privates(ds: Dataset, p: _Planter) -> None:
    # A creator holding a token, and its element.
    ds.add_new(0x00090010, "LO", f"{p.token('PrivateCreator')} HOSPITAL")
    ds.add_new(0x00091001, "LO", p.token("Private.WithCreator"))
    # A date hidden in a private LO, and a private sequence with a name inside.
    ds.add_new(0x00110010, "LO", "ACME 1.0")
    ds.add_new(0x00111001, "LO", f"exam of {p.date('Private.HiddenDate')}")
    inner = Dataset()
    inner.add_new(0x00100010, "PN", p.token("PrivateSequence.PatientName"))
    inner.add_new(0x00110010, "LO", "ACME 1.0")
    inner.add_new(0x00111010, "LO", p.token("PrivateSequence.Private"))
    ds.add_new(0x00111002, "SQ", Sequence([inner]))
    # No creator at all.
    ds.add(_raw(0x00151001, "LO", p.token("Private.NoCreator")))
    # VR UN.
    ds.add_new(0x00170010, "LO", "ACME UN")
    ds.add(_raw(0x00171001, "UN", f"value {p.token('Private.UN')} ".encode()))
    # Safe-listed by Table E.3.10-1 (kept only with retain-safe-private): no token.
    ds.add_new(0x00190010, "LO", "GEMS_ACQU_01")
    ds.add_new(0x00191023, "DS", "12.5")
    # Unknown public elements (even group, not in the dictionary), LO and UN.
    ds.add(_raw(0x00901000, "LO", p.token("Unknown.LO")))
    ds.add(_raw(0x00901001, "UN", f"{p.token('Unknown.UN')} ".encode()))


def _graphics(ds: Dataset, p: _Planter) -> None:
    for group in (0x6000, 0x6002):
        ds.add_new((group << 16) | 0x0010, "US", 16)
        ds.add_new((group << 16) | 0x0011, "US", 16)
        ds.add_new((group << 16) | 0x0022, "LO", p.token(f"OverlayDescription{group:04X}"))
        ds.add_new((group << 16) | 0x0040, "CS", "G")
        ds.add_new((group << 16) | 0x0050, "SS", [1, 1])
        ds.add_new((group << 16) | 0x0100, "US", 1)
        ds.add_new((group << 16) | 0x0102, "US", 0)
        ds.add_new(
            (group << 16) | 0x3000,
            "OW",
            p.token(f"OverlayData{group:04X}").encode().ljust(32, b"\0"),
        )
        ds.add_new((group << 16) | 0x4000, "LT", p.token(f"OverlayComments{group:04X}"))
    ds.add(_raw(0x50000005, "US", 1))
    ds.add(_raw(0x50002500, "LO", p.token("CurveLabel")))
    ds.add(_raw(0x50003000, "OB", p.token("CurveData").encode().ljust(16, b"\0")))


def _history(ds: Dataset, p: _Planter) -> None:
    icon = Dataset()
    icon.Rows = 1
    icon.Columns = 16
    icon.SamplesPerPixel = 1
    icon.PhotometricInterpretation = "MONOCHROME2"
    icon.BitsAllocated = 8
    icon.BitsStored = 8
    icon.HighBit = 7
    icon.PixelRepresentation = 0
    icon.PixelData = p.token("IconImage").encode().ljust(16, b"\0")
    ds.IconImageSequence = Sequence([icon])
    original = Dataset()
    modified = Dataset()
    modified.PatientName = p.token("OriginalAttributes.PatientName")
    original.ModifiedAttributesSequence = Sequence([modified])
    original.SourceOfPreviousValues = p.token("OriginalAttributes.Source")
    original.AttributeModificationDateTime = p.date("OriginalAttributes.DateTime") + "000000"
    original.ModifyingSystem = p.token("OriginalAttributes.System")
    original.ReasonForTheAttributeModification = "CORRECT"
    ds.OriginalAttributesSequence = Sequence([original])
    signature = Dataset()
    signature.MACIDNumber = 1
    signature.DigitalSignatureUID = p.uid("DigitalSignatureUID")
    signature.Signature = p.token("Signature").encode().ljust(16, b"\0")
    ds.add_new(0xFFFAFFFA, "SQ", Sequence([signature]))


def _ct_slices(p: _Planter, uids: dict[str, str]) -> list[Dataset]:
    slices = []
    sop_uids = [p.uid(f"ct.sop.{i}") for i in range(3)]
    for i in range(3):
        ds = Dataset()
        ds.SOPClassUID = CT_IMAGE
        ds.SOPInstanceUID = sop_uids[i]
        _meta(ds, CT_IMAGE, p)
        _patient(ds, p)
        _study(ds, p, uids)
        _equipment(ds, p)
        ds.Modality = "CT"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.BurnedInAnnotation = "NO"
        ds.SeriesInstanceUID = uids["series"]
        ds.FrameOfReferenceUID = uids["frame"]
        ds.InstanceCreatorUID = p.uid("InstanceCreatorUID")
        ds.SeriesNumber = 1
        ds.InstanceNumber = i + 1
        ds.SeriesDate = p.date("SeriesDate")
        ds.AcquisitionDate = p.date("AcquisitionDate")
        ds.AcquisitionDateTime = p.date("AcquisitionDateTime") + "101530.123456+0530"
        ds.ContentDate = p.date("ContentDate")
        ds.ContentTime = "101531"
        # Malformed dates: letters in a DA, an ISO date with dashes, a time with colons.
        ds.add(_raw(0x00080012, "DA", p.token("InstanceCreationDate.malformed")))
        day = p.date("InstanceCoercionDateTime.malformed", record=False)
        iso = f"{day[:4]}-{day[4:6]}-{day[6:]}"
        ds.add(_raw(0x00080015, "DT", iso))
        p.tokens.add(iso)
        ds.add(_raw(0x00080013, "TM", "10:15:30"))
        ds.TimezoneOffsetFromUTC = "+0530"
        ds.SeriesDescription = f"AX 5MM {p.token('SeriesDescription')}"
        ds.ProtocolName = f"{p.token('ProtocolName')} CHEST"
        ds.ImageComments = f"reviewed by {p.token('ImageComments')}"
        ds.ContrastBolusAgent = p.token("ContrastBolusAgent")
        # Geometry that must survive.
        ds.SliceThickness = "2.5"
        ds.KVP = "120"
        ds.PatientPosition = "HFS"
        ds.ImagePositionPatient = [-120.0, -110.5, -75.0 + 2.5 * i]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing = [0.75, 0.75]
        ds.SliceLocation = -75.0 + 2.5 * i
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = 16
        ds.Columns = 16
        ds.BitsAllocated = 16
        ds.BitsStored = 12
        ds.HighBit = 11
        ds.PixelRepresentation = 0
        ds.RescaleIntercept = "-1024"
        ds.RescaleSlope = "1"
        pixels = np.arange(256, dtype=np.uint16).reshape(16, 16) * 13 + 100 * i + p.patient
        ds.PixelData = pixels.astype("<u2").tobytes()
        if i:
            ref = Dataset()
            ref.ReferencedSOPClassUID = CT_IMAGE
            ref.ReferencedSOPInstanceUID = sop_uids[i - 1]
            ds.ReferencedImageSequence = Sequence([ref])
            src = Dataset()
            src.ReferencedSOPClassUID = CT_IMAGE
            src.ReferencedSOPInstanceUID = sop_uids[0]
            ds.SourceImageSequence = Sequence([src])
        # Three levels of sequences, names and a date at the bottom.
        level3 = Dataset()
        level3.ReferencedSOPClassUID = CT_IMAGE
        level3.ReferencedSOPInstanceUID = sop_uids[0]
        level3.OperatorsName = p.token("Depth3.OperatorsName")
        level3.InstitutionName = p.token("Depth3.InstitutionName")
        level3.PatientName = p.token("Depth3.PatientName")
        level3.ContentDate = p.date("Depth3.ContentDate")
        level2 = Dataset()
        level2.ReferencedSOPClassUID = CT_IMAGE
        level2.ReferencedSOPInstanceUID = sop_uids[i]
        level2.SourceImageSequence = Sequence([level3])
        level1 = Dataset()
        level1.SeriesInstanceUID = uids["series"]
        level1.ReferencedInstanceSequence = Sequence([level2])
        level1.add_new(0x00210010, "LO", "ACME SEQ")
        level1.add_new(0x00211001, "LO", p.token("Depth1.Private"))
        ds.ReferencedSeriesSequence = Sequence([level1])
        _privates(ds, p)
        _graphics(ds, p)
        _history(ds, p)
        slices.append(ds)
    return slices


def _instance(sop_class: str, place: str, p: _Planter, uids: dict[str, str]) -> Dataset:
    """A new instance of ``sop_class`` with the patient, study and equipment planted."""
    ds = Dataset()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = p.uid(place)
    _meta(ds, sop_class, p)
    _patient(ds, p)
    _study(ds, p, uids)
    _equipment(ds, p)
    return ds


def _code(value: str, meaning: str, scheme: str = "DCM") -> Sequence:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return Sequence([item])


def _content(value_type: str, **values: object) -> Dataset:
    item = Dataset()
    item.RelationshipType = "CONTAINS"
    item.ValueType = value_type
    item.ConceptNameCodeSequence = _code("121071", "Finding")
    for key, value in values.items():
        setattr(item, key, value)
    return item


def _sr(p: _Planter, uids: dict[str, str], ct: list[Dataset]) -> Dataset:
    ds = _instance(BASIC_TEXT_SR, "sr.sop", p, uids)
    ds.Modality = "SR"
    ds.SeriesInstanceUID = p.uid("sr.series")
    ds.SeriesNumber = 99
    ds.InstanceNumber = 1
    ds.ContentDate = p.date("SR.ContentDate")
    ds.ContentTime = "120000"
    ds.ValueType = "CONTAINER"
    ds.ContinuityOfContent = "SEPARATE"
    ds.ConceptNameCodeSequence = _code("18748-4", "Diagnostic Imaging Report", "LN")
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "VERIFIED"
    observer = Dataset()
    observer.VerifyingObserverName = p.token("SR.VerifyingObserverName")
    observer.VerifyingOrganization = p.token("SR.VerifyingOrganization")
    observer.VerificationDateTime = p.date("SR.VerificationDateTime") + "120000"
    observer.VerifyingObserverIdentificationCodeSequence = Sequence()
    ds.VerifyingObserverSequence = Sequence([observer])
    deepest = Sequence(
        [
            _content("PNAME", PersonName=p.token("SR.Depth3.PersonName")),
            _content("DATETIME", DateTime=p.date("SR.Depth3.DateTime") + "083000+0100"),
            _content("TEXT", TextValue=f"Dr {p.token('SR.Depth3.TextValue')} agrees"),
        ]
    )
    middle = _content(
        "CONTAINER",
        ContinuityOfContent="SEPARATE",
        ContentSequence=Sequence(
            [
                _content("TEXT", TextValue=f"seen with {p.token('SR.Depth2.TextValue')}"),
                _content("CONTAINER", ContinuityOfContent="SEPARATE", ContentSequence=deepest),
            ]
        ),
    )
    ds.ContentSequence = Sequence(
        [
            _content("TEXT", TextValue=f"Patient {p.token('SR.TextValue')} has a nodule"),
            _content("PNAME", PersonName=p.token("SR.PersonName")),
            _content("UIDREF", UID=uids["study"]),
            middle,
        ]
    )
    evidence_series = Dataset()
    evidence_series.SeriesInstanceUID = uids["series"]
    refs = []
    for s in ct:
        ref = Dataset()
        ref.ReferencedSOPClassUID = CT_IMAGE
        ref.ReferencedSOPInstanceUID = s.SOPInstanceUID
        refs.append(ref)
    evidence_series.ReferencedSOPSequence = Sequence(refs)
    evidence = Dataset()
    evidence.StudyInstanceUID = uids["study"]
    evidence.ReferencedSeriesSequence = Sequence([evidence_series])
    ds.CurrentRequestedProcedureEvidenceSequence = Sequence([evidence])
    return ds


def _pdf(p: _Planter, uids: dict[str, str]) -> Dataset:
    ds = _instance(ENCAPSULATED_PDF, "pdf.sop", p, uids)
    ds.Modality = "DOC"
    ds.SeriesInstanceUID = p.uid("pdf.series")
    ds.SeriesNumber = 98
    ds.InstanceNumber = 1
    ds.ContentDate = p.date("PDF.ContentDate")
    ds.AcquisitionDateTime = p.date("PDF.AcquisitionDateTime") + "093000"
    ds.BurnedInAnnotation = "YES"
    ds.DocumentTitle = "REPORT"
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.ConceptNameCodeSequence = _code("18748-4", "Diagnostic Imaging Report", "LN")
    from tests.documents_corpus import pdf_report

    body = pdf_report(  # a real PDF, uncompressed so its tokens are visible in the original
        [f"Report for {p.token('EncapsulatedDocument')}", "CT chest"],
        info={"Author": p.token("PDF.Info")}, annotation=p.token("PDF.Annotation"),
        attachment=p.token("PDF.Attachment"), compress=False)
    ds.EncapsulatedDocument = body + (b"\0" if len(body) % 2 else b"")
    return ds


def _documents(p: _Planter, sub: Path, batch: int) -> None:
    """Document files beside the patient's DICOM: identifiers in metadata and in pixels."""
    from tests.documents_corpus import avi_with_info, jpeg_with_metadata, pdf_report, photo, video

    (sub / f"b{batch}_report.pdf").write_bytes(pdf_report(
        [f"Report for {p.token('Doc.PDFText')}", "CT chest"],
        info={"Author": p.token("Doc.PDFInfo")}, compress=False))
    (sub / f"b{batch}_photo.jpg").write_bytes(jpeg_with_metadata(p.token("Doc.EXIF")))
    (sub / f"b{batch}_clip.avi").write_bytes(avi_with_info(p.token("Doc.AVIInfo")))
    burned = sub / f"b{batch}_burned.png"
    photo(p.token("Doc.BurnedPhoto")).save(burned)
    (sub / f"b{batch}_burned.avi").write_bytes(video(text=p.token("Doc.BurnedVideo"),
                                                     seconds=1))


def _ultrasound(p: _Planter, uids: dict[str, str]) -> Dataset:
    template = dcmread(get_testdata_file("US1_UNCR.dcm"))  # 640x480 RGB, explicit LE
    ds = _instance(US_IMAGE, "us.sop", p, uids)
    ds.Modality = "US"
    ds.SeriesInstanceUID = p.uid("us.series")
    ds.SeriesNumber = 97
    ds.InstanceNumber = 1
    ds.ContentDate = p.date("US.ContentDate")
    ds.BurnedInAnnotation = "YES"
    for keyword in (
        "SamplesPerPixel",
        "PhotometricInterpretation",
        "PlanarConfiguration",
        "Rows",
        "Columns",
        "BitsAllocated",
        "BitsStored",
        "HighBit",
        "PixelRepresentation",
    ):
        setattr(ds, keyword, getattr(template, keyword))
    region = Dataset()
    region.RegionSpatialFormat = 1
    region.RegionDataType = 1
    region.RegionFlags = 0
    region.RegionLocationMinX0 = 0
    region.RegionLocationMinY0 = 64
    region.RegionLocationMaxX1 = int(ds.Columns) - 1
    region.RegionLocationMaxY1 = int(ds.Rows) - 1
    ds.SequenceOfUltrasoundRegions = Sequence([region])
    pixels = bytearray(template.PixelData)
    burned = f" {p.token('BurnedInText')} ".encode()
    row_bytes = int(ds.Columns) * 3
    for row in range(8, 40):  # "text" in the banner above the region
        start = row * row_bytes
        pixels[start : start + len(burned)] = burned
    ds.PixelData = bytes(pixels)
    return ds


IDENTITIES = (
    {
        "family": "HEART",
        "given": "ROSALIND",
        "middle": "MAY",
        "id": "MRN0048213577",
        "phone": "+44 20 7946 0958",
        "email": "rosalind.heart@example.org",
        "street": "221B Baker Street",
        "street_name": "Baker",
        "city": "Marylebone",
        "postcode": "NW1 6XE",
        "institution": "Marylebone Royal Infirmary",
        "third": "Okonkwo",
    },
    {
        "family": "O'BRIEN-WALKER",
        "given": "SEAN",
        "middle": "",
        "id": "4471-0093-22",
        "phone": "(555) 014-2381",
        "email": "sobw1975@example.net",
        "street": "12 rue de la Paix",
        "street_name": "Paix",
        "city": "Montparnasse",
        "postcode": "75002",
        "institution": "Clinique Montparnasse",
        "third": "Abernathy",
    },
    {
        "family": "NG",
        "given": "WEI",
        "middle": "",
        "id": "A7730051",
        "phone": "555 301 7788",
        "email": "wei.ng@example.com",
        "street": "Hauptstrasse 5",
        "street_name": "Hauptstrasse",
        "city": "Heidelberg",
        "postcode": "69117",
        "institution": "Heidelberg Uniklinik",
        "third": "Quimby",
    },
)
"""Realistic identities of the descriptor plants, one per patient (cycled)."""


@dataclass(frozen=True)
class DescriptorPlants:
    """What the MR instance of one patient holds in its descriptions.

    ``values`` maps a keyword to its planted text; ``secrets`` must not survive in any cleaned
    text (matched as words, case-insensitive; digit strings also with separators removed);
    ``kept`` are technical words that Clean Descriptors must keep.
    """

    values: dict[str, str]
    secrets: tuple[str, ...]
    kept: tuple[str, ...]


def _dotted(day: str) -> tuple[str, str, str, str, str]:
    """A YYYYMMDD date as 2023-01-05, 05.01.23, 05/01/2023, 5 Jan 2023, Jan 5, 2023."""
    d = dt.date(int(day[:4]), int(day[4:6]), int(day[6:]))
    return (
        d.isoformat(),
        d.strftime("%d.%m.%y"),
        d.strftime("%d/%m/%Y"),
        f"{d.day} {d.strftime('%b %Y')}",
        f"{d.strftime('%b')} {d.day}, {d.year}",
    )


def descriptor_plants(patient: int, batch: int = 0) -> DescriptorPlants:
    """The descriptor plants of ``patient`` in ``batch`` (see the module docstring)."""
    ident = IDENTITIES[patient % len(IDENTITIES)]
    p = _Planter(patient, batch)
    study = p.date("StudyDate", record=False)
    birth = p.date("PatientBirthDate", patient_level=True, record=False)
    family, given = ident["family"], ident["given"]
    fam = family.title()
    giv = given.title()
    digits = "".join(c for c in ident["id"] if c.isdigit())
    iso, dots, slashes, spoken, american = _dotted(study)
    b_iso, _b_dots, b_slashes, b_spoken, _b_american = _dotted(birth)
    letters = re.sub(r"[^A-Za-z]", "", family)
    split = ".".join(letters)  # H.E.A.R.T
    glued = f"{given}{letters}".lower()  # rosalindheart
    values = {
        "SeriesDescription": f"T1 MPRAGE {giv} {fam}",
        "ProtocolName": f"fMRI_{given[0]}{family[0]}_{digits[-4:]}_{dots}",
        "StudyDescription": f"BRAIN {fam}, {given[0]}. {iso}",
        "ImageComments": (
            f"EPI PE=LR b1000 seen by Dr {ident['third']}; {family} {given[0]} DOB {b_slashes}; "
            f"MRN {ident['id']}; tel {ident['phone']}; {ident['email']}; "
            f"lives at {ident['street']}, {ident['city']} {ident['postcode']}; "
            f"scan {spoken} ({american}); {split}; {glued}; "
            f"{given[0]}.{family[0]}."
        ),
        "AdditionalPatientHistory": (
            f"DTI history from {giv} {fam}'s mother in {ident['city']}, born {b_spoken}, "
            f"ref pt{digits[-5:]} {b_iso}"
        ),
        "AcquisitionComments": f"dwi_{digits[-6:]}_b1000 {slashes}",
    }
    name_parts = [w for w in re.split(r"[^A-Za-z]+", f"{family} {given}") if len(w) >= 2]
    secrets = (
        *name_parts,
        f"{given[0]}{family[0]}",
        ident["third"],
        ident["city"],
        digits,
        digits[-4:],
        digits[-5:],
        digits[-6:],
        ident["id"],
        "".join(c for c in ident["phone"] if c.isdigit()),
        ident["email"],
        ident["street_name"],
        ident["postcode"],
        iso,
        dots,
        slashes,
        spoken,
        american,
        b_iso,
        b_slashes,
        b_spoken,
        glued,
        study,
        birth,
    )
    return DescriptorPlants(
        values, secrets, ("T1", "MPRAGE", "fMRI", "EPI", "PE=LR", "b1000", "BRAIN", "DTI", "dwi")
    )


def _descriptors(p: _Planter, uids: dict[str, str]) -> Dataset:
    """An MR instance with a realistic identity in its header and its descriptions."""
    ident = IDENTITIES[p.patient % len(IDENTITIES)]
    plants = descriptor_plants(p.patient, p.batch)
    ds = _instance(MR_IMAGE, "mr.sop", p, uids)
    ds.PatientName = f"{ident['family']}^{ident['given']}^{ident['middle']}".rstrip("^")
    ds.OtherPatientIDs = ident["id"]  # the hospital's MRN (PatientID is the corpus' token)
    ds.PatientAddress = f"{ident['street']}, {ident['city']} {ident['postcode']}"
    ds.PatientTelephoneNumbers = ident["phone"]
    ds.InstitutionName = ident["institution"]
    ds.ReferringPhysicianName = f"{ident['third'].upper()}^CLAUDE"
    ds.Modality = "MR"
    ds.SeriesInstanceUID = p.uid("mr.series")
    ds.SeriesNumber = 5
    ds.InstanceNumber = 1
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
    ds.BurnedInAnnotation = "NO"
    for keyword, text in plants.values.items():
        setattr(ds, keyword, text)
    distinctive = [
        ident["given"],
        ident["third"],
        ident["email"],
        ident["street"],
        ident["institution"],
        ident["phone"],
        *_dotted(ds.StudyDate)[:3],
    ]
    p.tokens.update(t for t in distinctive if len(t) >= 6)
    if len(ident["id"]) >= 8:
        p.tokens.add(ident["id"])
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = 16
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.PixelSpacing = [1.0, 1.0]
    ds.SliceThickness = "3"
    ds.ImagePositionPatient = [0.0, 0.0, 0.0]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.PixelData = (np.arange(256, dtype=np.uint16) * 7).astype("<u2").tobytes()
    return ds


def write_corpus(folder: Path, n_patients: int = 3, *, batch: int = 0,
                 documents: bool = False) -> set[str]:
    """Write the corpus under ``folder``; return every planted token.

    Parameters
    ----------
    folder : Path
        Created if needed. Each patient's files go to a sub-folder whose name holds a token.
    n_patients : int
        Patients 0..n-1. The same patient gets the same identity in every batch.
    batch : int
        A new batch is a new visit: new studies, UIDs and dates, same patients.
    documents : bool
        Also write document files beside each patient's DICOM (a PDF, a JPEG with EXIF, an
        AVI with INFO chunks, a picture and a video with a token burned in).

    Returns
    -------
    set of str
        Every token, distinctive date and original UID planted (path tokens included).
    """
    tokens: set[str] = set()
    for patient in range(n_patients):
        p = _Planter(patient, batch)
        uids = {k: p.uid(f"{k}") for k in ("study", "series", "frame")}
        sub = folder / f"{p.token('SourcePath', patient_level=True)}_patient{patient}"
        sub.mkdir(parents=True, exist_ok=True)
        ct = _ct_slices(p, uids)
        datasets: list[tuple[str, Dataset]] = [(f"ct{i}.dcm", ds) for i, ds in enumerate(ct)]
        datasets.append(("sr.dcm", _sr(p, uids, ct)))
        datasets.append(("pdf.dcm", _pdf(p, uids)))
        datasets.append(("us.dcm", _ultrasound(p, uids)))
        datasets.append(("mr.dcm", _descriptors(p, uids)))
        for name, ds in datasets:
            ds.save_as(sub / f"b{batch}_{name}", enforce_file_format=True)
        if documents:
            _documents(p, sub, batch)
        tokens |= p.tokens
    return tokens


def expected_absent(tokens: Iterable[str], retains_device_identity: bool) -> set[str]:
    """The tokens that must be absent from a profile's output.

    A profile with the Retain Device Identity option keeps StationName and
    DeviceSerialNumber by design; their tokens start with :data:`DEVICE_PREFIX`.
    """
    return {t for t in tokens if not (retains_device_identity and t.startswith(DEVICE_PREFIX))}


def copy_dataset(ds: Dataset) -> Dataset:
    """A deep copy (helper for tests that apply several profiles to one read)."""
    return copy.deepcopy(ds)
