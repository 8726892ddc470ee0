"""The Clean (C) rule word by word (issue 10.4): what it keeps, what it removes, and why."""

from __future__ import annotations

import pytest

from lake.deid import load_profile
from lake.deid._clean import InstanceIdentifiers, clean_text, explain

VOCABULARY = load_profile("research").vocabulary


def _ids(names: tuple[str, ...] = (), values: tuple[str, ...] = (),
         dates: tuple[str, ...] = ()) -> InstanceIdentifiers:
    return InstanceIdentifiers(names, values, dates, VOCABULARY)


@pytest.mark.parametrize("text", [
    "EPI PE=LR", "EPI PE=RL", "fMRI_MB_asc", "b1000", "FSPGR", "pCASL", "fieldmap",
    "noPF_noPAT_noPOS_PEres100_ES0p59_BW2222_AP", "T2 5MM", "DR PA CHEST", "T1w_acq-tfl",
    "ep2d_bold_2p5x2p5x2p5", "Ax DWI TENSOR R2MB2", "PhoenixZIPReport", "DWI_dir80_AP_TRACEW",
    "Axial EPI-FMRI (Interleaved I to S)", "fMRI Multiphase Des 0.35Delay",
])
def test_technical_descriptions_survive(text: str) -> None:
    assert clean_text(text, VOCABULARY, _ids(("DOE^JOHN",), ("MRN0012345",),
                                              ("20230105",))) == text


@pytest.mark.parametrize(("text", "gone"), [
    ("T1 John Doe", ["John", "Doe"]),
    ("T1 J. Doe", ["J", "Doe"]),
    ("DOE J T2", ["DOE", "J"]),
    ("JD flair", ["JD"]),
    ("J.D. flair", ["J", "D"]),
    ("johndoe_dwi", ["johndoe"]),
    ("D-O-E dwi", ["D", "O", "E"]),
    ("dwi_2345", ["2345"]),  # 4 digits of the MRN
    ("id 12-345", ["12", "345"]),  # the MRN across a separator
    ("epi_0105", ["0105"]),  # month and day of the instance's date
])
def test_the_instance_identity_goes_in_every_form(text: str, gone: list[str]) -> None:
    out = clean_text(text, VOCABULARY, _ids(("DOE^JOHN",), ("MRN0012345",), ("20230105",)))
    words = out.replace(".", " ").replace("_", " ").replace("-", " ").split()
    assert not set(gone) & set(words), out
    assert clean_text(out, VOCABULARY, _ids(("DOE^JOHN",), ("MRN0012345",))) == out


@pytest.mark.parametrize(("text", "reason"), [
    ("T1 2023-01-05", "a date"), ("epi_05.01.23", "a date"), ("T1 5 Jan 2023", "a date"),
    ("T1 Jan 5, 2023", "a date"), ("T1 05JAN", "a day and month"), ("at 10:15", "a time"),
    ("T1 2023", "a year"), ("id 123456", "a run of 5 or more digits"),
    ("tel +44 20 7946 0958", "a phone number or grouped ID"),
    ("tel (555) 014-2381", "a phone number or grouped ID"),
    ("mail jo.doe@example.org", "an e-mail address"),
    ("221B Baker Street", "a street address"), ("Hauptstrasse 5", "a street address"),
    ("12 rue de la Paix", "a street address"), ("SW1A 1AA", "a postcode"),
    ("AB12CD345", "letters and digits interleaved like an ID"),
    ("Dr Heart", "after a title or beside a name"), ("T1 Zyxw", "unknown word"),
    ("T1 Rosalind", "a name of the name lists"),
])
def test_general_rules_and_their_reasons(text: str, reason: str) -> None:
    found = explain(text, VOCABULARY)
    assert any(why.startswith(reason) for _fragment, why in found), found
    assert clean_text(text, VOCABULARY) != text


def test_a_one_word_technical_name_is_a_phantom_but_a_person_name_is_not() -> None:
    assert clean_text("fMRI_MB_asc", VOCABULARY, _ids(("fMRI",))) == "fMRI_MB_asc"
    assert clean_text("HEART scan", VOCABULARY, _ids(("HEART^ROSALIND",))) == "* scan"
    assert clean_text("MR brain", VOCABULARY, _ids(values=("MR",))) == "MR brain"


def test_shortening_never_leaves_half_a_word() -> None:
    assert clean_text("T1 MPRAGE SAGITTAL", VOCABULARY, max_length=14) == "T1 MPRAGE"
