"""The engine, action by action: Table E.1-1 codes, privates, UIDs, dates, pixels, threads."""

from __future__ import annotations

import copy
import io
import pickle
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
from pydicom import config, dcmread
from pydicom.data import get_testdata_file
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

from lake._errors import DeidRefusedError
from lake.deid import Deidentifier, load_profile
from lake.deid import _values as values
from lake.ingest._encode import encode_part10
from lake.vault import Secret

SECRET = Secret(b"engine-test-secret-0123456789abc")
CT = "1.2.840.10008.5.1.4.1.1.2"


def engine(profile: str = "basic") -> Deidentifier:
    return Deidentifier(load_profile(profile), SECRET)


def site(tmp_path: Path, options: list[str], recipe: str = "") -> str:
    """A site manifest extending basic with ``options`` and an optional recipe."""
    lines = ['name = "site"', 'version = "t1"', 'extends = "basic"', f"options = {options!r}"]
    if recipe:
        (tmp_path / "site.dicom").write_text("FORMAT dicom\n" + recipe)
        lines.append('recipes = ["site.dicom"]')
    (tmp_path / "site.toml").write_text("\n".join(lines).replace("'", '"') + "\n")
    return str(tmp_path / "site.toml")


def roundtrip(ds: Dataset, *, enforce: bool = True) -> Dataset:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=enforce)
    return dcmread(io.BytesIO(buf.getvalue()))


def bad(tag: int, vr: str, value: object) -> DataElement:
    return DataElement(tag, vr, value, validation_mode=config.IGNORE)


def ct(**extra: object) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CT
    ds.SOPClassUID = CT
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "CT"
    ds.PatientID = "MRN-0042"
    ds.PatientName = "Walker^Heart"
    for key, value in extra.items():
        setattr(ds, key, value)
    return ds


def test_each_action_of_table_e11() -> None:
    ds = ct(
        AccessionNumber="ACC123",  # Z
        PatientBirthDate="19500101",  # Z
        StudyDescription="CT CHEST",  # X
        InstitutionName="General Hospital",  # X/Z/D
        AcquisitionDate="20200101",  # X/Z
        SeriesDate="20200101",  # X/D
        ContentDate="",  # Z/D, empty stays empty
        Manufacturer="ACME",  # not in the table: kept
    )
    code = Dataset()
    code.CodeValue = "H123"
    code.CodingSchemeDesignator = "99LOCAL"
    code.CodeMeaning = "General Hospital"
    ds.InstitutionCodeSequence = Sequence([code])  # X/Z/D on a sequence
    ref = Dataset()
    ref.ReferencedSOPClassUID = CT
    ref.ReferencedSOPInstanceUID = "1.2.3.4"
    ds.ReferencedImageSequence = Sequence([ref])  # X/Z/U*
    study = ds.StudyInstanceUID
    e = engine()
    result = e.apply(ds)
    out = roundtrip(ds)
    assert out.AccessionNumber == "" and out.PatientBirthDate == ""
    assert "StudyDescription" not in out
    assert out.InstitutionName == "ANONYMIZED"
    assert out.AcquisitionDate == ""
    assert out.SeriesDate == "19000101"
    assert out.ContentDate == ""
    assert out.Manufacturer == "ACME"
    assert out.StudyInstanceUID == e.uid(study) != study
    assert out.StudyInstanceUID.startswith("2.25.")
    item = out.InstitutionCodeSequence[0]
    assert (item.CodeValue, item.CodeMeaning) == ("ANONYMIZED", "ANONYMIZED")
    assert out.ReferencedImageSequence[0].ReferencedSOPInstanceUID == e.uid("1.2.3.4")
    assert out.ReferencedImageSequence[0].ReferencedSOPClassUID == CT
    assert out.PatientName == ""
    assert len(out.PatientID) == 24 and out.PatientID != "MRN-0042"
    assert set(result.actions) <= {"X", "Z", "D", "K", "C", "U"}
    assert result.actions["X"] >= 1 and result.actions["U"] >= 3


def test_private_elements(tmp_path: Path) -> None:
    def dataset() -> Dataset:
        ds = ct()
        ds.add_new(0x00090010, "LO", "ACME 1.0")
        ds.add_new(0x00091001, "LO", "secret")
        ds.add(bad(0x00151001, "LO", "orphan"))  # no creator
        ds.add_new(0x00170010, "LO", "ACME UN")
        ds.add(bad(0x00171001, "UN", b"raw bytes "))
        ds.add_new(0x00190011, "LO", "GEMS_ACQU_01")  # creator in block 0x11
        ds.add_new(0x00191123, "DS", "12.5")  # safe-listed: (0019,xx23)
        ds.add_new(0x00191101, "LO", "not safe")
        item = Dataset()
        item.add_new(0x00290010, "LO", "ACME SEQ")
        item.add_new(0x00291001, "LO", "nested")
        item.ReferencedSOPInstanceUID = "1.2.3"
        ds.ReferencedSeriesSequence = Sequence([item])
        return ds

    basic = roundtrip(_applied(engine(), dataset()))
    assert not [e for e in basic.iterall() if e.tag.is_private]
    safe = roundtrip(_applied(Deidentifier(
        load_profile(site(tmp_path, ["retain-safe-private"])), SECRET), dataset()))
    private = {e.tag: e.value for e in safe.iterall() if e.tag.is_private}
    assert private == {0x00190011: "GEMS_ACQU_01", 0x00191123: "12.5"}


def test_retain_safe_private_keeps_table_rows_by_creator_and_block(tmp_path: Path) -> None:
    """Table E.3.10-1 rows survive, matched by (group, creator, element byte); nothing else."""
    creator = "Philips Imaging DD 001"

    def dataset() -> Dataset:
        ds = ct()
        ds.add_new(0x20010010, "LO", creator)  # block 0x10
        ds.add_new(0x20011003, "FL", 1000.0)  # listed: (2001,xx03) MR Image Diffusion B-Factor
        ds.add_new(0x20011004, "CS", "I")  # listed: (2001,xx04) MR Image Diffusion Direction
        ds.add_new(0x20011020, "LO", "Walker^Heart")  # same block, (2001,xx20) not listed
        stack = Dataset()
        stack.PatientName = "Walker^Heart"
        stack.ReferencedSOPInstanceUID = "1.2.3.4.55"
        ds.add_new(0x2001105F, "SQ", Sequence([stack]))  # listed SQ (Stack): items walked
        ds.add(bad(0x20011065, "UN", _hidden_item()))  # listed SQ read as UN: parsed, walked
        ds.add(bad(0x20011068, "UN", b"Walker^Heart"))  # listed SQ whose bytes are no item
        ds.add_new(0x2001107D, "OB", b"burned-in")  # listed OW/OB Frame Pixel Data: not kept
        ds.add_new(0x20010011, "LO", "ACME 1.0")  # another creator, same group
        ds.add_new(0x20011103, "FL", 7.0)  # same element byte, wrong creator
        ds.add_new(0x20010012, "LO", creator.upper())  # creators match exactly
        ds.add_new(0x20011203, "FL", 8.0)
        ds.add_new(0x00990030, "LO", "NQHeader")  # listed creator in an unusual block (0x30)
        ds.add_new(0x00993002, "UI", "1.2.3.4.99")  # listed UI: Analyzed Series UID, keyed
        ds.add_new(0x00993004, "SS", -2)  # listed: Return Code
        return ds

    e = Deidentifier(load_profile(site(tmp_path, ["retain-safe-private"])), SECRET)
    out = roundtrip(_applied(e, dataset()))
    private = {el.tag: el.value for el in out if el.tag.is_private and el.VR != "SQ"}
    assert private == {
        0x20010010: creator, 0x20011003: 1000.0, 0x20011004: "I",
        0x00990030: "NQHeader", 0x00993002: e.uid("1.2.3.4.99"), 0x00993004: -2,
    }
    (stack,) = out[0x2001105F].value  # kept, its items de-identified by the normal rules
    assert stack.PatientName == "" and stack.ReferencedSOPInstanceUID == e.uid("1.2.3.4.55")
    (parsed,) = out[0x20011065].value  # items in implicit VR, as UN holds them
    assert parsed.PatientName == ""
    assert 0x20011068 not in out
    assert e.uid("1.2.3.4.99").startswith("2.25.")
    basic = roundtrip(_applied(engine(), dataset()))
    assert not [el for el in basic.iterall() if el.tag.is_private]


def test_retain_safe_private_in_an_implicit_vr_file(tmp_path: Path) -> None:
    """Read without VRs, listed elements take the VR of pydicom's private dictionary."""
    ds = ct()
    ds.add_new(0x20010010, "LO", "Philips Imaging DD 001")
    ds.add_new(0x20011003, "FL", 1000.0)  # listed FL: kept
    stack = Dataset()
    stack.PatientName = "Walker^Heart"
    stack.ReferencedSOPInstanceUID = "1.2.3.4.55"
    ds.add_new(0x2001105F, "SQ", Sequence([stack]))  # listed SQ that pydicom knows: walked
    unknown = Dataset()
    unknown.PatientName = "Walker^Heart"
    ds.add_new(0x20011066, "SQ", Sequence([unknown]))  # listed SQ pydicom does not know: parsed
    ds.add_new(0x00990010, "LO", "NQHeader")
    ds.add_new(0x00991002, "UI", "1.2.3.4.99")  # listed UI that pydicom does not know: keyed
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    read = dcmread(io.BytesIO(buf.getvalue()))
    assert read.get_item(0x2001105F).VR is None  # really read without a VR
    e = Deidentifier(load_profile(site(tmp_path, ["retain-safe-private"])), SECRET)
    out = roundtrip(_applied(e, read))
    assert out[0x20011003].value == 1000.0
    (kept,) = out[0x2001105F].value
    assert kept.PatientName == "" and kept.ReferencedSOPInstanceUID == e.uid("1.2.3.4.55")
    assert b"Walker" not in encode_part10(out)  # the unknown one too was walked
    assert 0x20011066 in out
    keyed = out[0x00991002].value  # its bytes can only be a UID: keyed (read back as UN)
    assert keyed.decode("ascii").rstrip("\x00") == e.uid("1.2.3.4.99")


def _hidden_item() -> bytes:
    """An encoded sequence item (implicit VR little endian, as inside UN) holding a name."""
    name = b"Walker^Heart"
    element = b"\x10\x00\x10\x00" + len(name).to_bytes(4, "little") + name
    return b"\xfe\xff\x00\xe0" + len(element).to_bytes(4, "little") + element


@pytest.mark.parametrize(
    ("vr", "value", "kept"),
    [
        ("FL", 1000.0, True),  # what the table lists: (2001,xx03) FL, VM 1
        ("UN", b"\x00\x00\x7a\x44", True),  # read without its VR, four bytes: a float
        ("UN", _hidden_item(), False),  # a sequence hidden in the bytes
        ("UN", b"Walker^Heart", False),  # not one float
        ("LO", "Walker^Heart", False),  # another VR than the table's
        ("PN", "Walker^Heart", False),
        ("UI", "1.2.3.4.5", False),  # would keep an original UID
        ("DA", "20240101", False),  # would keep a real date
        ("OB", b"Walker^Heart", False),
    ],
)
def test_listed_private_element_is_kept_only_as_the_table_lists_it(
    vr: str, value: object, kept: bool, tmp_path: Path
) -> None:
    ds = ct()
    ds.add_new(0x20010010, "LO", "Philips Imaging DD 001")
    ds.add(bad(0x20011003, vr, value))
    e = Deidentifier(load_profile(site(tmp_path, ["retain-safe-private"])), SECRET)
    out = _applied(e, ds)
    assert (0x20011003 in out) is kept
    if not kept:
        assert b"Walker" not in encode_part10(out)


def test_private_sequence_in_a_dummied_sequence_is_dummied_too(tmp_path: Path) -> None:
    """A kept private sequence is walked in the mode of the sequence it sits in."""
    def dataset() -> Dataset:
        ds = ct()
        operator = Dataset()
        operator.add_new(0x20010010, "LO", "Philips Imaging DD 001")
        stack = Dataset()
        stack.CodeMeaning = "Walker^Heart"  # kept (K) in a normal walk, dummied under D
        operator.add_new(0x2001105F, "SQ", Sequence([stack]))  # listed SQ
        ds.OperatorIdentificationSequence = Sequence([operator])  # D: items dummied
        return ds

    e = Deidentifier(load_profile(site(tmp_path, ["retain-safe-private"])), SECRET)
    out = roundtrip(_applied(e, dataset()))
    assert "Walker" not in str(out)
    top = dataset()
    top.add_new(0x20010010, "LO", "Philips Imaging DD 001")
    top.add_new(0x2001105F, "SQ", top.OperatorIdentificationSequence[0][0x2001105F].value)
    del top.OperatorIdentificationSequence
    normal = roundtrip(_applied(e, top))
    assert normal[0x2001105F].value[0].CodeMeaning == "Walker^Heart"  # the contrast: kept


def test_kept_private_sequence_is_walked_not_kept_whole(tmp_path: Path) -> None:
    """A listed element that arrives as a sequence: its items are de-identified."""
    def dataset() -> Dataset:
        ds = ct()
        ds.add_new(0x20010010, "LO", "Philips Imaging DD 001")
        item = Dataset()
        item.PatientName = "Walker^Heart"
        item.ReferencedSOPInstanceUID = "1.2.3.4.77"
        item.add_new(0x00091001, "LO", "nested private")  # no creator: removed
        ds.add_new(0x20011003, "SQ", Sequence([item]))  # listed as FL, arrives as SQ
        return ds

    e = Deidentifier(load_profile(site(tmp_path, ["retain-safe-private"])), SECRET)
    out = roundtrip(_applied(e, dataset()))
    (kept,) = out[0x20011003].value
    assert "Walker" not in str(kept.get("PatientName", ""))
    assert kept.ReferencedSOPInstanceUID == e.uid("1.2.3.4.77")
    assert 0x00091001 not in kept


def _applied(e: Deidentifier, ds: Dataset) -> Dataset:
    e.apply(ds)
    return ds


def test_overlays_curves_icons_signatures_and_unknown_elements_go() -> None:
    ds = ct()
    ds.add_new(0x60000010, "US", 8)
    ds.add_new(0x60003000, "OW", b"\xff" * 8)
    ds.add_new(0x60220022, "LO", "overlay text")
    ds.add(bad(0x50003000, "OB", b"curve data"))
    icon = Dataset()
    icon.Rows = 1
    ds.IconImageSequence = Sequence([icon])
    ds.OriginalAttributesSequence = Sequence([Dataset()])
    ds.add_new(0xFFFAFFFA, "SQ", Sequence([Dataset()]))
    ds.add(bad(0x00901000, "LO", "unknown public"))
    out = roundtrip(_applied(engine(), ds))
    gone = {0x60000010, 0x60003000, 0x60220022, 0x50003000, 0x00880200, 0x04000561,
            0xFFFAFFFA, 0x00901000}
    assert gone.isdisjoint(set(out.keys()))


def test_file_meta_and_preamble() -> None:
    ds = ct()
    ds.file_meta.SourceApplicationEntityTitle = "SCANNER7"
    ds.file_meta.ImplementationVersionName = "X1"
    ds.preamble = b"MZ" + bytes(126)
    e = engine()
    sop = ds.SOPInstanceUID
    e.apply(ds)
    assert ds.file_meta.MediaStorageSOPInstanceUID == e.uid(sop) == ds.SOPInstanceUID
    assert "SourceApplicationEntityTitle" not in ds.file_meta
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert ds.preamble == bytes(128)


def test_the_file_meta_keeps_only_what_names_the_object_and_its_encoding() -> None:
    """The sender's implementation, AE titles, RTV identifiers and private information go
    (red-team finding 11: ImplementationVersionName kept); ingest writes the lake's own."""
    ds = ct()
    meta = ds.file_meta
    meta.ImplementationClassUID = "1.2.3.999"
    meta.ImplementationVersionName = "TKNSTATION01"
    meta.SendingApplicationEntityTitle = "TKNAE"
    meta.add(bad(0x00020035, "OB", b"TKNRTVSOURCE"))
    meta.add(bad(0x00020100, "UI", "1.2.3.998"))
    engine().apply(ds)
    assert sorted(int(t) for t in ds.file_meta.keys()) == [  # noqa: SIM118 (no dict)
        0x00020002, 0x00020003, 0x00020010]


@pytest.mark.parametrize("tag", [0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD, 0x00000902, 0x00020013],
                         ids=["item", "item-delimiter", "sequence-delimiter", "command",
                              "file-meta"])
@pytest.mark.parametrize("nested", [False, True], ids=["top", "in-item"])
def test_an_element_in_a_place_it_may_not_be_is_removed(tag: int, nested: bool) -> None:
    """An element whose tag was damaged into an item or delimiter tag, a command element or
    a file meta element inside the data set is removed, whatever a recipe says (red-team
    finding 2: pydicom's dictionary names them, so the unknown rule did not remove them)."""
    ds = ct()
    where = ds
    if nested:
        where = Dataset()
        where.ReferencedSOPInstanceUID = "1.2.3.4"
        ds.ReferencedImageSequence = Sequence([where])
    where.add(RawDataElement(tag, "LO", 16, b"TKNMISPLACED0001", 0, False, True))
    for e in (engine(), engine("research"), engine("teaching")):
        out = roundtrip(_applied(e, copy.deepcopy(ds)))
        assert b"TKNMISPLACED" not in encode_part10(out)


@pytest.mark.parametrize("value", ["1.2.TKNSOPCLASS01", "1.2.840.10008.5.1.4.1.1.2^TKNSMITH",
                                   "1.2..3", "1." + "2" * 70])
@pytest.mark.parametrize("keyword", ["SOPClassUID", "ReferencedSOPClassUID",
                                     "MediaStorageSOPClassUID", "CodingSchemeUID"])
def test_a_class_uid_kept_as_it_is_must_be_a_uid(keyword: str, value: str) -> None:
    """Class, syntax and registry UIDs are kept unchanged only when they are UIDs; otherwise
    the instance is refused with a reason naming the attribute, never its value (red-team
    finding 3), on the raw-sequence fast path as on the general one."""
    ds = ct()
    if keyword == "MediaStorageSOPClassUID":
        ds.file_meta.add(bad(0x00020002, "UI", value))
    elif keyword == "SOPClassUID":
        ds.add(bad(0x00080016, "UI", value))
    else:
        item = Dataset()
        item.add(bad(0x00081150 if keyword == "ReferencedSOPClassUID" else 0x0008010C, "UI",
                     value))
        ds.ReferencedImageSequence = Sequence([item])
    with warnings.catch_warnings():  # pydicom warns, quoting the value, when it copies it
        warnings.simplefilter("ignore")
        # Parsed, and raw bytes (the fast path); pydicom's writer replaces the file meta's.
        both = keyword != "MediaStorageSOPClassUID"
        for data in (ds, roundtrip(ds)) if both else (ds,):
            with pytest.raises(DeidRefusedError) as info:
                engine().apply(copy.deepcopy(data))
            assert info.value.reason == "bad_uid"
            assert keyword in str(info.value) and "TKN" not in str(info.value)


def test_well_known_and_class_uids_are_kept() -> None:
    vendor_class = "1.3.12.2.1107.5.9.1"  # a private SOP class: a class, not an instance
    ds = ct(SOPClassUID=vendor_class)
    item = Dataset()
    item.ReferencedSOPClassUID = vendor_class
    item.ReferencedSOPInstanceUID = "1.2.3.4.5"
    ds.ReferencedStudySequence = Sequence([item])
    ds.FrameOfReferenceUID = "1.2.3.4.6"
    ds.TargetFrameOfReferenceUID = "1.2.3.4.6"  # not in the table: remapped like U rows
    e = engine("research")
    e.apply(ds)
    assert ds.SOPClassUID == vendor_class
    assert ds.FrameOfReferenceUID == ds.TargetFrameOfReferenceUID == e.uid("1.2.3.4.6")
    assert values.keyed_uid(b"k" * 32, CT) == CT


def test_uid_mapping_is_keyed_and_stable() -> None:
    a, b = engine(), pickle.loads(pickle.dumps(engine()))
    other = Deidentifier(load_profile("basic"), Secret(b"x" * 32))
    uid = "1.2.840.99999.1.2.3"
    assert a.uid(uid) == b.uid(uid) != other.uid(uid)
    assert a.uid(uid) != a.uid(uid + "1")
    assert len(a.uid(uid)) <= 64


def test_date_shift_research() -> None:
    ds = ct(StudyDate="20200301", SeriesDate="20200229", StudyTime="101500",
            AcquisitionDateTime="20200301120000.5+0100", TimezoneOffsetFromUTC="+0100")
    ds.add(bad(0x00080023, "DA", "2020-03-01"))  # ContentDate, malformed
    ds.add(bad(0x00080033, "TM", "10:15"))  # ContentTime, malformed
    ds.FrameAcquisitionDateTime = "2020"
    ds.FrameReferenceDateTime = "202003"
    e = engine("research")
    e.apply(ds)
    shift = values.shift_days(SECRET.derive("date-shift"), "MRN-0042", 366, 3652)
    assert -3652 <= shift <= -366
    assert ds.StudyDate == values.shift_da("20200301", shift)
    assert ds.SeriesDate == values.shift_da("20200229", shift)
    assert ds.StudyTime == "101500"
    assert ds.AcquisitionDateTime == values.shift_dt("20200301120000.5+0100", shift)
    assert ds.AcquisitionDateTime.endswith("120000.5+0100")
    assert ds.TimezoneOffsetFromUTC == "+0100"
    assert ds.ContentDate == "" and ds.ContentTime == ""
    assert ds.FrameAcquisitionDateTime == values.shift_dt("2020", shift)
    assert len(ds.FrameReferenceDateTime) == 6 and ds.FrameReferenceDateTime != "202003"
    assert ds.LongitudinalTemporalInformationModified == "MODIFIED"


def test_partial_precision_datetimes() -> None:
    assert values.shift_dt("2020", -400) == "2018"
    assert values.shift_dt("202003", -31) == "202001"
    assert values.shift_dt("2020-03", -1) is None
    assert values.shift_dt("20200230", -1) is None
    assert values.shift_dt("20200301250000", -1) is None
    assert values.shift_dt("20200301+1900", -1) is None


def test_ages_are_capped_where_retained() -> None:
    cases = {"095Y": "090Y", "089Y": "089Y", "1100M": None, "12X": ""}
    for given, expected in cases.items():
        ds = ct()
        ds.add(bad(0x00101010, "AS", given))
        engine("research").apply(ds)
        if expected is None:
            assert ds.PatientAge in ("090Y", "")
        else:
            assert ds.PatientAge == expected
    assert values.age("1100M") is None  # four digits: malformed
    assert values.age("999M") == "999M" and values.age("999W") == "999W"
    basic = ct(PatientAge="095Y")
    engine().apply(basic)
    assert "PatientAge" not in basic


def test_clean_descriptors_scrub_unknown_words_and_identifiers() -> None:
    ds = ct(StudyDescription="CT HEAD W CONTRAST Dr Zyxwv 12/03/2020",
            SeriesDescription="AX T2 5MM heart walker MRN42")
    engine("research").apply(ds)
    assert ds.StudyDescription.startswith("CT HEAD W CONTRAST")
    assert "Zyxwv" not in ds.StudyDescription and "2020" not in ds.StudyDescription
    # "heart" and "walker" are ordinary words, but here they are the patient's name.
    words = ds.SeriesDescription.split()
    assert words[:3] == ["AX", "T2", "5MM"]
    assert "heart" not in words and "walker" not in words and "MRN42" not in words


def _sr() -> Dataset:
    ds = ct(SOPClassUID="1.2.840.10008.5.1.4.1.1.88.11", Modality="SR")
    concept = Dataset()
    concept.CodeValue = "121071"
    concept.CodingSchemeDesignator = "DCM"
    concept.CodeMeaning = "Finding"
    text = Dataset()
    text.ValueType = "TEXT"
    text.RelationshipType = "CONTAINS"
    text.ConceptNameCodeSequence = Sequence([concept])
    text.TextValue = "nodule in left lung seen by Zyxwv"
    name = Dataset()
    name.ValueType = "PNAME"
    name.RelationshipType = "CONTAINS"
    name.PersonName = "Zyxwv^Qwert"
    ds.ContentSequence = Sequence([text, name])
    return ds


def test_structured_content_dummy_or_cleaned(tmp_path: Path) -> None:
    basic = _sr()
    engine().apply(basic)
    assert basic.ContentSequence[0].ConceptNameCodeSequence[0].CodeMeaning == "ANONYMIZED"
    assert "Zyxwv" not in str(basic)
    cleaned = _sr()
    Deidentifier(load_profile(site(tmp_path, ["clean-structured-content"])), SECRET).apply(
        cleaned)
    first, second = cleaned.ContentSequence
    assert first.ConceptNameCodeSequence[0].CodeMeaning == "Finding"  # codes are kept
    assert first.TextValue.startswith("nodule in left lung")
    assert "Zyxwv" not in first.TextValue
    assert second.PersonName == "ANONYMIZED"
    assert first.ValueType == "TEXT"


def test_other_options(tmp_path: Path) -> None:
    def dataset() -> Dataset:
        ds = ct(StudyDate="20200301", InstitutionName="General Hospital")
        ds.add_new(0x60000022, "LO", "Dr Zyxwv overlay")
        ds.add_new(0x60003000, "OW", b"\x01\x02" * 4)
        ds.add(bad(0x00080020, "DA", "2020-03-01"))
        return ds

    uids = dataset()
    study = uids.StudyInstanceUID
    Deidentifier(load_profile(site(tmp_path, ["retain-uids"])), SECRET).apply(uids)
    assert uids.StudyInstanceUID == study
    full = dataset()
    Deidentifier(load_profile(site(tmp_path, ["retain-full-dates"])), SECRET).apply(full)
    assert full.StudyDate == ""  # kept only when well formed
    assert full.LongitudinalTemporalInformationModified == "UNMODIFIED"
    inst = dataset()
    Deidentifier(load_profile(site(tmp_path, ["retain-institution-identity"])), SECRET).apply(
        inst)
    assert inst.InstitutionName == "General Hospital"
    graphics = dataset()
    Deidentifier(load_profile(site(tmp_path, ["clean-graphics"])), SECRET).apply(graphics)
    assert graphics[0x60003000].value == b"\x01\x02" * 4
    assert "Zyxwv" not in graphics[0x60000022].value
    assert "overlay" in graphics[0x60000022].value


def test_site_recipe_literal_and_add(tmp_path: Path) -> None:
    profile = site(tmp_path, [], "%header\nREPLACE InstitutionName SITE A\n"
                                 "ADD ClinicalTrialProtocolID PROTO-1\nKEEP StudyDescription\n")
    ds = ct(InstitutionName="General Hospital", StudyDescription="CT CHEST")
    Deidentifier(load_profile(profile), SECRET).apply(ds)
    assert ds.InstitutionName == "SITE A"
    assert ds.ClinicalTrialProtocolID == "PROTO-1"
    assert ds.StudyDescription == "CT CHEST"


def test_compressed_pixels_are_not_decoded(monkeypatch: pytest.MonkeyPatch) -> None:
    path = get_testdata_file("MR_small_jpeg_ls_lossless.dcm")
    original = dcmread(path)
    ds = dcmread(path)

    def forbidden(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("pixel data decoded")

    monkeypatch.setattr(Dataset, "decompress", forbidden)
    monkeypatch.setattr(Dataset, "convert_pixel_data", forbidden)
    for name in ("basic", "research", "teaching"):
        engine(name).apply(ds)
        assert ds.PixelData == original.PixelData
        assert ds.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID


def test_deferred_read_keeps_pixels(tmp_path: Path) -> None:
    path = get_testdata_file("CT_small.dcm")
    ds = dcmread(path, defer_size=256)
    engine("research").apply(ds)
    assert ds.PixelData == dcmread(path).PixelData
    roundtrip(ds)


def _sc_multiframe() -> Dataset:
    ds = dcmread(get_testdata_file("SC_rgb_rle_2frame.dcm"))
    ds.Manufacturer = "ACME"
    return ds


def test_clean_pixels_rle_multiframe(tmp_path: Path) -> None:
    recipe = ("%filter graylist\nLABEL acme text band\n  contains Manufacturer ACME\n"
              "  coordinates 10,5,60,25\n")
    e = Deidentifier(load_profile(site(tmp_path, ["clean-pixel-data"], recipe)), SECRET)
    before = _sc_multiframe().pixel_array.copy()  # (frames, rows, cols, 3)
    ds = _sc_multiframe()
    result = e.apply(ds)
    assert result.pixels_cleaned and result.pixel_rules == ("acme text band",)
    out = roundtrip(ds)
    assert out.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    after = out.pixel_array
    assert after.shape == before.shape and before.shape[0] == 2
    assert not after[:, 5:25, 10:60].any()
    mask = np.ones(after.shape[1:3], dtype=bool)
    mask[5:25, 10:60] = False
    assert np.array_equal(after[:, mask], before[:, mask])
    assert before[:, 5:25, 10:60].any()
    assert out.BurnedInAnnotation == "NO"


def test_clean_pixels_jpeg2000_ultrasound_regions() -> None:
    ds = dcmread(get_testdata_file("US1_J2KR.dcm"))
    before = ds.pixel_array.copy()
    region = Dataset()
    region.RegionLocationMinX0, region.RegionLocationMinY0 = 100, 50
    region.RegionLocationMaxX1, region.RegionLocationMaxY1 = 539, 429
    ds.SequenceOfUltrasoundRegions = Sequence([region])
    result = engine("teaching").apply(ds)
    assert result.pixels_cleaned
    after = roundtrip(ds).pixel_array
    assert np.array_equal(after[50:430, 100:540], before[50:430, 100:540])
    assert not after[:50].any() and not after[:, :100].any() and not after[430:].any()


def test_deid_default_graylist_matches_a_dose_report() -> None:
    ds = dcmread(get_testdata_file("SC_rgb.dcm"))
    ds.Modality = "CT"
    ds.Manufacturer = "GE MEDICAL SYSTEMS"
    ds.SeriesDescription = "Dose Report"
    result = engine("teaching").apply(ds)
    assert result.pixels_cleaned
    assert "Dose Report" in result.pixel_rules
    assert not roundtrip(ds).pixel_array.any()  # the rule's band covers this small image


def test_refusals(tmp_path: Path) -> None:
    us = get_testdata_file("US1_UNCR.dcm")
    with pytest.raises(DeidRefusedError) as info:
        engine().apply(dcmread(us))
    assert info.value.reason == "burned_in_risk"
    flagged = dcmread(get_testdata_file("CT_small.dcm"))
    flagged.BurnedInAnnotation = "YES"
    with pytest.raises(DeidRefusedError) as info:
        engine("research").apply(flagged)
    assert info.value.reason == "burned_in_annotation"
    with pytest.raises(DeidRefusedError) as info:
        engine("teaching").apply(dcmread(us))  # no regions, no device rule
    assert info.value.reason == "burned_in_unmatched"
    blacklist = site(tmp_path, ["clean-pixel-data"],
                     "%filter blacklist\nLABEL no CT\n  contains Modality CT\n")
    with pytest.raises(DeidRefusedError) as info:
        Deidentifier(load_profile(blacklist), SECRET).apply(dcmread(
            get_testdata_file("CT_small.dcm")))
    assert info.value.reason == "pixel_blacklist"
    trusted = dcmread(us)
    trusted.BurnedInAnnotation = "NO"
    assert not engine().apply(trusted).pixels_cleaned


def test_pickled_engine_in_threads_matches_sequential() -> None:
    e = pickle.loads(pickle.dumps(engine("research")))
    template = dcmread(get_testdata_file("CT_small.dcm"))
    expected = copy.deepcopy(template)
    engine("research").apply(expected)
    results: list[Dataset] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(20):
                ds = copy.deepcopy(template)
                e.apply(ds)
                results.append(ds)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(results) == 80
    want = roundtrip(expected)
    for ds in results:
        assert roundtrip(ds) == want


def _private_tags(ds: Dataset) -> list[int]:
    """Private tags at any depth, without converting (and validating) other elements."""
    found = []
    for tag in ds.keys():  # noqa: SIM118 - iterating a Dataset converts its elements
        if tag.is_private:
            found.append(tag)
            continue
        raw = ds.get_item(tag)
        if raw is not None and raw.VR == "SQ":
            for item in ds[tag].value:
                found += _private_tags(item)
    return found


@pytest.mark.parametrize("profile", ["basic", "research", "teaching"])
def test_every_bundled_pydicom_file(profile: str) -> None:
    """Every readable file of pydicom's test data is de-identified or refused, warning-free."""
    folder = Path(get_testdata_file("CT_small.dcm")).parent
    e = engine(profile)
    done = refused = 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for path in sorted(folder.glob("*.dcm")):
            try:
                ds = dcmread(path)
            except Exception:  # noqa: BLE001 - pydicom's deliberately broken samples
                continue
            try:
                e.apply(ds)
            except DeidRefusedError:
                refused += 1
                continue
            out = roundtrip(ds, enforce=False)  # some samples lack file meta elements
            assert out.PatientIdentityRemoved == "YES"
            assert not _private_tags(out)
            done += 1
    assert done > 20 and refused > 5


def test_a_public_element_stored_as_un_gets_its_dictionary_vr() -> None:
    ds = ct()
    ds.add(bad(0x00080080, "UN", b"General Hospital"))  # InstitutionName, X/Z/D
    engine().apply(ds)
    out = roundtrip(ds)
    assert out["InstitutionName"].VR == "LO" and out.InstitutionName == "ANONYMIZED"


def _equivalence_inputs(tmp_path: Path) -> list[Path]:
    from tests.deid_corpus import write_corpus

    write_corpus(tmp_path / "corpus", 1)
    paths = sorted((tmp_path / "corpus").rglob("*.dcm"))
    paths += sorted(Path(get_testdata_file("CT_small.dcm")).parent.glob("*.dcm"))
    vendor = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "dcm_qa" / "In"
    if vendor.is_dir():
        paths += sorted(p for p in vendor.rglob("*") if p.is_file())[::4]
    return paths


def _outcome(e: Deidentifier, path: Path) -> tuple[str, object, object]:
    try:
        ds = dcmread(path)
    except Exception:  # noqa: BLE001 - unreadable samples are not compared
        return ("unreadable", None, None)
    try:
        result = e.apply(ds)
    except DeidRefusedError as exc:
        return ("refused", exc.reason, None)
    return ("done", dict(result.actions), roundtrip(ds, enforce=False))


def test_the_raw_sequence_fast_path_changes_nothing_but_speed(tmp_path: Path) -> None:
    """Every file we can find, every profile: fast path == general path, element by element."""
    compared = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # comparing converts malformed sample values
        for name in ("basic", "research", "teaching"):
            fast, general = engine(name), engine(name)
            general._raw_sequences = False
            for path in _equivalence_inputs(tmp_path):
                a, b = _outcome(fast, path), _outcome(general, path)
                assert a == b, (name, path.name)
                compared += a[0] == "done"
    probe = dcmread(get_testdata_file("CT_small.dcm"))
    refs = []
    for i in range(60):
        ref = Dataset()
        ref.ReferencedSOPClassUID = CT
        ref.ReferencedSOPInstanceUID = f"1.2.3.{i}"
        refs.append(ref)
    probe.SourceImageSequence = Sequence(refs)
    probe = roundtrip(probe)
    e = engine()
    e.apply(probe)
    assert isinstance(probe.get_item(0x00082112), RawDataElement)  # rewritten, never parsed
    assert [r.ReferencedSOPInstanceUID for r in probe.SourceImageSequence] == [
        e.uid(f"1.2.3.{i}") for i in range(60)]
    assert compared > 60


def test_site_whitelist_and_blacklist_apply_to_every_profile(tmp_path: Path) -> None:
    whitelist = site(tmp_path, [], "%filter whitelist\nLABEL our clean US\n"
                                   "  contains Modality US\n  + equals Rows 480\n")
    us = dcmread(get_testdata_file("US1_UNCR.dcm"))
    pixels = us.PixelData
    result = Deidentifier(load_profile(whitelist), SECRET).apply(us)
    assert not result.pixels_cleaned and us.PixelData == pixels
    other = dcmread(get_testdata_file("SC_rgb.dcm"))  # at risk, not whitelisted
    with pytest.raises(DeidRefusedError):
        Deidentifier(load_profile(whitelist), SECRET).apply(other)
    (tmp_path / "b").mkdir()
    blacklist = site(tmp_path / "b", [], "%filter blacklist\nLABEL no MR\n  contains Modality MR\n")
    with pytest.raises(DeidRefusedError) as info:
        Deidentifier(load_profile(blacklist), SECRET).apply(
            dcmread(get_testdata_file("MR_small.dcm")))
    assert info.value.reason == "pixel_blacklist"


def _written(e: Deidentifier, path: Path) -> bytes | str:
    ds = dcmread(path)
    try:
        e.apply(ds)
    except DeidRefusedError as exc:
        return exc.reason
    return encode_part10(ds)


def test_memoised_values_change_nothing_and_are_never_pickled(tmp_path: Path) -> None:
    """One engine over many files (UIDs, identifiers and cleaned texts memoised) writes the
    bytes a fresh engine writes for each file; a pickled engine carries none of them."""
    from tests.deid_corpus import write_corpus

    write_corpus(tmp_path / "corpus", 2)
    paths = sorted((tmp_path / "corpus").rglob("*.dcm"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in ("basic", "research"):
            shared, fresh = engine(name), engine(name)
            for path in paths * 2:  # the second pass finds everything memoised
                fresh = pickle.loads(pickle.dumps(fresh))  # its memos emptied
                assert not fresh._uids and not fresh._cleaned
                assert _written(shared, path) == _written(fresh, path), (name, path.name)
            assert shared._uids
            clone = pickle.loads(pickle.dumps(shared))
            assert not clone._uids and not clone._identifiers and not clone._cleaned
    assert shared._cleaned and shared._identifiers  # research cleaned descriptions


def test_dates_and_clean_text_in_sequences_take_the_raw_path() -> None:
    """A sequence whose items hold shifted dates and cleaned texts is rewritten from its bytes
    (never parsed), to exactly what the general path writes."""
    def probe() -> Dataset:
        ds = dcmread(get_testdata_file("CT_small.dcm"))
        item = Dataset()
        item.ScheduledProcedureStepStartDate = "20230105"
        item.RequestedProcedureDescription = "CT CHEST Dr Zyxwv 12/03/2020"
        item.ScheduledProcedureStepID = "SPS1"
        ds.RequestAttributesSequence = Sequence([item])
        return roundtrip(ds)

    fast, general = engine("research"), engine("research")
    general._raw_sequences = False
    a, b = probe(), probe()
    assert dict(fast.apply(a).actions) == dict(general.apply(b).actions)
    assert isinstance(a.get_item(0x00400275), RawDataElement)  # rewritten, never parsed
    assert encode_part10(a) == encode_part10(b)
    item = a.RequestAttributesSequence[0]
    assert item.ScheduledProcedureStepStartDate != "20230105"
    assert "Zyxwv" not in item.RequestedProcedureDescription


def test_removed_privates_and_blanked_sequences_in_items_take_the_raw_path() -> None:
    """Under ``basic`` (every private element removed) a sequence whose items hold private
    elements, and one whose items blank a nested sequence (empty or not), is rewritten from
    its bytes (never parsed), to exactly what the general path writes and counts; so under
    ``research`` (safe private attributes kept: not every private element is removed)."""
    def probe() -> Dataset:
        ds = dcmread(get_testdata_file("CT_small.dcm"))
        ref = Dataset()
        ref.ReferencedSOPClassUID = CT
        ref.ReferencedSOPInstanceUID = "1.2.3.4"
        ref.add_new(0x00210010, "LO", "ACME SEQ")
        ref.add_new(0x00211001, "LO", "Jane Doe")
        ref.add_new(0x00211002, "UN", b"Doe")
        series = Dataset()
        series.SeriesInstanceUID = "1.2.3"
        series.ReferencedInstanceSequence = Sequence([ref])
        ds.ReferencedSeriesSequence = Sequence([series])
        code = Dataset()
        code.CodeValue = "J0042"
        code.CodingSchemeDesignator = "LOCAL"
        observers = []
        for codes in ([], [code]):
            observer = Dataset()
            observer.VerifyingOrganization = "St Elsewhere"
            observer.VerifyingObserverName = "Doe^Jane"
            observer.VerifyingObserverIdentificationCodeSequence = Sequence(codes)
            observers.append(observer)
        ds.VerifyingObserverSequence = Sequence(observers)
        return roundtrip(ds)

    for name in ("basic", "research"):
        fast, general = engine(name), engine(name)
        general._raw_sequences = False
        a, b = probe(), probe()
        actions = dict(fast.apply(a).actions)
        assert actions == dict(general.apply(b).actions)
        assert encode_part10(a) == encode_part10(b)
        assert isinstance(a.get_item(0x0040A073), RawDataElement)  # rewritten, never parsed
        if name == "basic":
            assert isinstance(a.get_item(0x00081115), RawDataElement)
            assert actions["X"] >= 3
    text = encode_part10(a)
    assert b"Jane" not in text and b"ACME" not in text and b"J0042" not in text


def test_keyed_values_are_the_hmac_sha256_of_the_value() -> None:
    """The one-shot ``hmac.digest`` behind keyed UIDs, pseudonyms and AE titles gives what an
    HMAC object gives (the keyed values of every lake depend on it)."""
    import hashlib
    import hmac

    from lake.deid import _values as values

    for key in (b"k" * 32, bytes(range(32)), b"\xff" * 64):
        for value in ("1.2.3", "", "caf\xe9 ^ J\xf6rg", "2.25." + "9" * 38):
            plain = hmac.new(key, value.encode("utf-8"), hashlib.sha256).digest()
            assert values._hmac(key, value) == plain
            assert values.pseudonym(key, value) == plain.hex()[:24].upper()
            if value.startswith(("1.2.3", "2.25")):
                assert values.keyed_uid(key, value) == "2.25." + str(
                    int.from_bytes(plain[:16], "big"))
