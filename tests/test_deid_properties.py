"""Property tests: determinism, no planted value survives, dates and text invariants."""

from __future__ import annotations

import copy
import datetime as dt
import io
import pickle
import re

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pydicom import config, dcmread
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from lake.deid import Deidentifier, load_profile
from lake.deid import _clean as clean
from lake.deid import _plan as plan_ops
from lake.deid import _values as values
from lake.vault import Secret

SECRET = Secret(b"property-secret-0123456789abcdef")
BASIC = Deidentifier(load_profile("basic"), SECRET)
RESEARCH = Deidentifier(load_profile("research"), SECRET)
SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])
CT = "1.2.840.10008.5.1.4.1.1.2"

uids = st.from_regex(r"1\.2\.(0|[1-9][0-9]{0,8})(\.(0|[1-9][0-9]{0,8})){1,5}", fullmatch=True)
dates = st.dates(min_value=dt.date(1900, 1, 1), max_value=dt.date(2100, 12, 31))
words = st.text(alphabet=st.characters(min_codepoint=0x30, max_codepoint=0x7A,
                                       blacklist_characters="\\^=[]`:;<>?@"),
                min_size=1, max_size=12)
tokens = st.from_regex(r"TKN[A-Z2-7]{12}", fullmatch=True)


def _dataset(pid: str, name: str, study: str, sop: str, day: dt.date, text: str) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CT
    ds.file_meta.MediaStorageSOPInstanceUID = sop
    ds.SOPClassUID = CT
    ds.SOPInstanceUID = sop
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = study + ".1"
    ds.PatientID = pid
    ds.PatientName = name
    ds.StudyDate = day.strftime("%Y%m%d")
    ds.StudyDescription = text
    ds.PatientAge = "070Y"
    return ds


def _bytes(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


@SETTINGS
@given(pid=words, name=words, study=uids, sop=uids, day=dates, text=words)
def test_deidentifying_twice_gives_the_same_output(
    pid: str, name: str, study: str, sop: str, day: dt.date, text: str
) -> None:
    """Same input, same secret: byte-identical output, from any engine (pickled included)."""
    other = pickle.loads(pickle.dumps(RESEARCH))
    first = _dataset(pid, name, study, sop, day, text)
    second = copy.deepcopy(first)
    RESEARCH.apply(first)
    other.apply(second)
    assert _bytes(first) == _bytes(second)
    assert first.PatientID == values.pseudonym(SECRET.derive("patient-id"), pid)
    assert first.SOPInstanceUID == RESEARCH.uid(sop) == first.file_meta.MediaStorageSOPInstanceUID


_REPLACED = (plan_ops.REMOVE, plan_ops.BLANK, plan_ops.DUMMY, plan_ops.PSEUDONYM)
_TEXT_ROWS = sorted(
    tag for tag, op in BASIC.plan.tables[plan_ops.NORMAL].items()
    if op.code in _REPLACED and op.vr in ("LO", "SH", "PN", "LT", "ST", "UT", "UC", "AE")
)


@SETTINGS
@given(tag=st.sampled_from(_TEXT_ROWS), token=tokens, nested=st.booleans())
def test_a_value_planted_in_any_identifying_attribute_never_survives(
    tag: int, token: str, nested: bool
) -> None:
    ds = _dataset("P1", "A^B", "1.2.3", "1.2.3.4", dt.date(2020, 1, 1), "CT")
    vr = BASIC.plan.tables[plan_ops.NORMAL][tag].vr
    value = token[:16] if vr in ("SH", "AE") else token
    element = DataElement(tag, vr, value, validation_mode=config.IGNORE)
    if nested:
        item = Dataset()
        item.add(element)
        ds.ReferencedSeriesSequence = [item]
    else:
        ds.add(element)
    BASIC.apply(ds)
    assert value.encode() not in _bytes(ds)


@SETTINGS
@given(uid=uids)
def test_keyed_uids_are_valid_and_stable(uid: str) -> None:
    key = SECRET.derive("uid")
    new = values.keyed_uid(key, uid)
    assert re.fullmatch(r"2\.25\.(0|[1-9][0-9]*)", new) and len(new) <= 64
    assert new == values.keyed_uid(key, uid)
    assert int(new[5:]) < 2**128


@SETTINGS
@given(a=dates, b=dates, shift=st.integers(-3652, -366))
def test_a_shift_preserves_intervals(a: dt.date, b: dt.date, shift: int) -> None:
    sa = values.shift_da(a.strftime("%Y%m%d"), shift)
    sb = values.shift_da(b.strftime("%Y%m%d"), shift)
    assert sa is not None and sb is not None
    moved_a = dt.datetime.strptime(sa, "%Y%m%d").date()
    moved_b = dt.datetime.strptime(sb, "%Y%m%d").date()
    assert moved_b - moved_a == b - a
    assert (moved_a - a).days == shift


@SETTINGS
@given(day=dates, hour=st.integers(0, 23), minute=st.integers(0, 59),
       frac=st.sampled_from(["", ".5", ".123456"]),
       offset=st.sampled_from(["", "+0000", "-0500", "+0530", "+1400"]),
       shift=st.integers(-3652, -366))
def test_a_datetime_keeps_its_time_and_offset(day: dt.date, hour: int, minute: int, frac: str,
                                             offset: str, shift: int) -> None:
    text = f"{day:%Y%m%d}{hour:02d}{minute:02d}00{frac}{offset}"
    moved = values.shift_dt(text, shift)
    assert moved is not None and values.valid_dt(moved)
    assert moved[8:] == text[8:]
    assert values.shift_da(text[:8], shift) == moved[:8]


@SETTINGS
@given(text=st.text(max_size=20))
def test_malformed_dates_never_survive_verbatim(text: str) -> None:
    assume("\\" not in text)  # one value (StudyDate has VM 1)
    ds = _dataset("P1", "A^B", "1.2.3", "1.2.3.4", dt.date(2020, 1, 1), "CT")
    ds.add(DataElement(0x00080020, "DA", text, validation_mode=config.IGNORE))
    RESEARCH.apply(ds)
    out = dcmread(io.BytesIO(_bytes(ds))).StudyDate
    stripped = text.rstrip("\0 ").strip()
    if values.valid_da(stripped):
        shift = values.shift_days(SECRET.derive("date-shift"), "P1", 366, 3652)
        assert out == values.shift_da(stripped, shift)
    else:
        assert out == ""


@SETTINGS
@given(text=st.text(max_size=80))
def test_cleaning_is_idempotent_and_keeps_only_what_its_rule_keeps(text: str) -> None:
    vocabulary = RESEARCH.profile.vocabulary
    once = clean.clean_text(text, vocabulary)
    assert clean.clean_text(once, vocabulary) == once
    assert once.isascii()
    for word in re.findall(r"[A-Za-z0-9]+", once):
        assert clean.word_verdict(word, vocabulary, clean.InstanceIdentifiers(
            (), (), (), vocabulary)) == clean.KEEP, word


@SETTINGS
@given(token=tokens, before=st.sampled_from(["", "AX T1 ", "fMRI_MB_", "EPI PE=LR "]),
       after=st.sampled_from(["", " b1000", "_run-1", " 3D"]))
def test_a_random_identifier_in_a_description_never_survives(token: str, before: str,
                                                             after: str) -> None:
    ds = _dataset("P1", "A^B", "1.2.3", "1.2.3.4", dt.date(2020, 1, 1), "MR")
    ds.SeriesDescription = f"{before}{token}{after}"
    RESEARCH.apply(ds)
    assert token not in ds.SeriesDescription
    assert ds.SeriesDescription.startswith(before.strip())


@SETTINGS
@given(number=st.integers(0, 999), unit=st.sampled_from("DWMY"))
def test_ages_over_89_years_become_90y(number: int, unit: str) -> None:
    result = values.age(f"{number:03d}{unit}")
    years = {"D": number / 365.25, "W": number * 7 / 365.25, "M": number / 12, "Y": number}[unit]
    assert result == ("090Y" if years > 89 else f"{number:03d}{unit}")
