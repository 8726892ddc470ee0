"""Proof at the engine level: no planted token survives any built-in profile; what must
survive does (pixels, geometry, references, stable pseudonyms and date shifts)."""

from __future__ import annotations

import datetime as dt
import io
import json
import pickle
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import UID_dictionary

from lake._errors import DeidRefusedError
from lake.deid import Deidentifier, DeidResult, ProfileOption, list_profiles, load_profile
from lake.vault import Secret
from tests.deid_corpus import (
    DEVICE_PREFIX,
    UID_ROOT,
    descriptor_plants,
    expected_absent,
    write_corpus,
)

SECRET = Secret(b"proof-secret-0123456789abcdef012")
GEOMETRY = (
    "Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation",
    "SamplesPerPixel", "PhotometricInterpretation", "PixelSpacing", "SliceThickness",
    "ImagePositionPatient", "ImageOrientationPatient", "SliceLocation", "RescaleIntercept",
    "RescaleSlope", "KVP", "PatientPosition",
)


@dataclass
class Output:
    source: Path
    original: Dataset
    ds: Dataset | None
    result: DeidResult | None
    refused: DeidRefusedError | None
    data: bytes
    json_text: str


def _run(engine: Deidentifier, files: list[Path]) -> dict[str, Output]:
    outputs = {}
    for path in files:
        key = f"{path.parent.name}/{path.name}"
        original = dcmread(path)
        ds = dcmread(path)
        try:
            result = engine.apply(ds)
        except DeidRefusedError as exc:
            outputs[key] = Output(path, original, None, None, exc, b"", "")
            continue
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        text = json.dumps(ds.to_json_dict(), sort_keys=True)
        outputs[key] = Output(path, original, ds, result, None, buf.getvalue(), text)
    return outputs


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, set[str]]:
    folder = tmp_path_factory.mktemp("corpus")
    tokens = write_corpus(folder, n_patients=3)
    return folder, tokens


@pytest.fixture(scope="module")
def outputs(corpus: tuple[Path, set[str]]) -> dict[str, dict[str, Output]]:
    folder, _ = corpus
    files = sorted(folder.rglob("*.dcm"))
    return {
        name: _run(Deidentifier(load_profile(name), SECRET), files) for name in list_profiles()
    }


def _files(corpus: tuple[Path, set[str]]) -> list[Path]:
    return sorted(corpus[0].rglob("*.dcm"))


def test_every_token_is_planted_in_the_input(corpus: tuple[Path, set[str]]) -> None:
    """Positive control: the search finds every token in the originals (bytes or path)."""
    folder, tokens = corpus
    haystack = b"".join(
        p.read_bytes().lower() + str(p).lower().encode() for p in folder.rglob("*.dcm")
    )
    missing = {t for t in tokens if t.lower().encode() not in haystack}
    assert not missing
    assert len(tokens) > 250  # every place of the checklist, three patients


@pytest.mark.parametrize("profile", ["basic", "research", "teaching"])
def test_no_planted_token_survives(
    profile: str, corpus: tuple[Path, set[str]], outputs: dict[str, dict[str, Output]]
) -> None:
    _, tokens = corpus
    options = load_profile(profile).options
    absent = expected_absent(tokens, ProfileOption.RETAIN_DEVICE_IDENTITY in options)
    leaks: dict[str, set[str]] = {}
    written = [o for o in outputs[profile].values() if o.ds is not None]
    assert written
    for out in written:
        data, text = out.data.lower(), out.json_text.lower()
        found = {t for t in absent if t.lower().encode() in data or t.lower() in text}
        if found:
            leaks[out.source.name] = found
    assert not leaks


def test_device_identity_is_kept_only_by_its_option(
    corpus: tuple[Path, set[str]], outputs: dict[str, dict[str, Output]]
) -> None:
    _, tokens = corpus
    device = {t for t in tokens if t.startswith(DEVICE_PREFIX)}
    assert device
    research_ct = [o for n, o in outputs["research"].items() if "_ct" in n]
    assert all(o.ds is not None and o.ds.StationName.startswith(DEVICE_PREFIX)
               for o in research_ct)
    basic_ct = [o for n, o in outputs["basic"].items() if "_ct" in n]
    assert all(not any(t.encode() in o.data for t in device) for o in basic_ct)


def test_burned_in_ultrasound_is_refused_or_cleaned(
    corpus: tuple[Path, set[str]], outputs: dict[str, dict[str, Output]]
) -> None:
    for profile in ("basic", "research"):
        us = [o for n, o in outputs[profile].items() if n.endswith("_us.dcm")]
        assert len(us) == 3
        assert all(o.refused is not None and o.refused.reason == "burned_in_annotation"
                   for o in us)
        assert all(not any(t in str(o.refused) for t in corpus[1]) for o in us)
    for out in (o for n, o in outputs["teaching"].items() if n.endswith("_us.dcm")):
        assert out.ds is not None and out.result is not None
        assert out.result.pixels_cleaned
        assert out.ds.BurnedInAnnotation == "NO"
        assert any("burned-in" in v for v in out.ds.DeidentificationMethod)
        before, after = bytes(out.original.PixelData), bytes(out.ds.PixelData)
        row = int(out.ds.Columns) * 3
        assert after[: 64 * row] == bytes(64 * row)  # the banner above the region is gone
        assert after[64 * row:] == before[64 * row:]  # the ultrasound region is untouched


def test_pixel_data_is_bit_identical_unless_cleaned(
    outputs: dict[str, dict[str, Output]]
) -> None:
    for profile, results in outputs.items():
        for out in results.values():
            if out.ds is None or "PixelData" not in out.original:
                continue
            assert out.result is not None
            if not out.result.pixels_cleaned:
                assert bytes(out.ds.PixelData) == bytes(out.original.PixelData), profile
                assert (out.ds.file_meta.TransferSyntaxUID
                        == out.original.file_meta.TransferSyntaxUID)


def test_geometry_survives(outputs: dict[str, dict[str, Output]]) -> None:
    for results in outputs.values():
        for name, out in results.items():
            if "_ct" not in name:
                continue
            assert out.ds is not None
            for keyword in GEOMETRY:
                assert out.ds.get(keyword) == out.original.get(keyword), (name, keyword)
            assert out.ds.SOPClassUID == out.original.SOPClassUID


def _patients(results: dict[str, Output]) -> dict[str, list[Output]]:
    groups: dict[str, list[Output]] = {}
    for out in results.values():
        groups.setdefault(out.source.parent.name, []).append(out)
    return groups


def test_references_are_consistent(outputs: dict[str, dict[str, Output]]) -> None:
    for profile in ("basic", "research", "teaching"):
        for outs in _patients(outputs[profile]).values():
            done = {o.source.name.split("_", 1)[1]: o.ds for o in outs if o.ds is not None}
            ct = [done[f"ct{i}.dcm"] for i in range(3)]
            sr = done["sr.dcm"]
            studies = {d.StudyInstanceUID for d in done.values()}
            assert len(studies) == 1
            assert len({d.SeriesInstanceUID for d in ct}) == 1
            assert len({d.FrameOfReferenceUID for d in ct}) == 1
            for d in done.values():
                assert d.file_meta.MediaStorageSOPInstanceUID == d.SOPInstanceUID
            for i in (1, 2):
                assert ct[i].ReferencedImageSequence[0].ReferencedSOPInstanceUID == (
                    ct[i - 1].SOPInstanceUID)
                assert ct[i].SourceImageSequence[0].ReferencedSOPInstanceUID == (
                    ct[0].SOPInstanceUID)
            for i, d in enumerate(ct):
                level1 = d.ReferencedSeriesSequence[0]
                level2 = level1.ReferencedInstanceSequence[0]
                assert level1.SeriesInstanceUID == d.SeriesInstanceUID
                assert level2.ReferencedSOPInstanceUID == ct[i].SOPInstanceUID
                assert level2.SourceImageSequence[0].ReferencedSOPInstanceUID == (
                    ct[0].SOPInstanceUID)
            evidence = sr.CurrentRequestedProcedureEvidenceSequence[0]
            assert evidence.StudyInstanceUID == ct[0].StudyInstanceUID
            refs = evidence.ReferencedSeriesSequence[0].ReferencedSOPSequence
            assert [r.ReferencedSOPInstanceUID for r in refs] == [d.SOPInstanceUID for d in ct]
            assert ct[0].StudyInstanceUID == sr.ContentSequence[2].UID


def _uids(ds: Dataset) -> list[str]:
    found: list[str] = []
    for elem in ds.iterall():
        if elem.VR == "UI" and elem.value:
            values = elem.value if isinstance(elem.value, list) else [elem.value]
            found += [str(v) for v in values]
    return found


def test_uids_are_keyed_or_well_known(outputs: dict[str, dict[str, Output]]) -> None:
    for results in outputs.values():
        for out in results.values():
            if out.ds is None:
                continue
            for uid in _uids(out.ds) + _uids(out.ds.file_meta):
                assert not uid.startswith(UID_ROOT)
                assert uid in UID_dictionary or uid.startswith("2.25.") or (
                    uid == out.original.file_meta.ImplementationClassUID), uid
                assert len(uid) <= 64


def _shift(original: Dataset, ds: Dataset) -> int:
    day = dt.datetime.strptime(original.StudyDate, "%Y%m%d")
    moved = dt.datetime.strptime(ds.StudyDate, "%Y%m%d")
    return (moved - day).days


def test_dates_shift_by_one_keyed_amount_per_patient(
    outputs: dict[str, dict[str, Output]]
) -> None:
    shifts: dict[str, int] = {}
    for folder, outs in _patients(outputs["research"]).items():
        per_file = set()
        for out in outs:
            if out.ds is None:
                continue
            shift = _shift(out.original, out.ds)
            per_file.add(shift)
            for keyword in ("SeriesDate", "AcquisitionDate", "ContentDate"):
                if keyword in out.original and out.original[keyword].VR == "DA":
                    before = dt.datetime.strptime(out.original[keyword].value, "%Y%m%d")
                    after = dt.datetime.strptime(out.ds[keyword].value, "%Y%m%d")
                    assert (after - before).days == shift, keyword
            if "AcquisitionDateTime" in out.original:
                before_dt, after_dt = out.original.AcquisitionDateTime, out.ds.AcquisitionDateTime
                assert after_dt[8:] == before_dt[8:]  # time of day and UTC offset kept
                moved = dt.datetime.strptime(after_dt[:8], "%Y%m%d")
                assert (moved - dt.datetime.strptime(before_dt[:8], "%Y%m%d")).days == shift
            assert out.ds.LongitudinalTemporalInformationModified == "MODIFIED"
        assert len(per_file) == 1
        (shifts[folder],) = per_file
        assert -3652 <= shifts[folder] <= -366
    assert len(set(shifts.values())) == len(shifts)  # different patients, different shifts


def test_malformed_dates_never_survive(outputs: dict[str, dict[str, Output]]) -> None:
    for results in outputs.values():
        for name, out in results.items():
            if "_ct" not in name or out.ds is None:
                continue
            assert out.ds.get("InstanceCoercionDateTime", "") in ("", "19000101000000")
            assert out.ds.get("InstanceCreationTime", "") in ("", "000000")


def test_marks(outputs: dict[str, dict[str, Output]]) -> None:
    expected = {
        "basic": {"113100"},
        "research": {"113100", "113105", "113107", "113108", "113109"},
        "teaching": {"113100", "113101", "113105", "113108"},
    }
    for profile, results in outputs.items():
        for out in results.values():
            if out.ds is None:
                continue
            assert out.ds.PatientIdentityRemoved == "YES"
            codes = {item.CodeValue for item in out.ds.DeidentificationMethodCodeSequence}
            assert codes == expected[profile]
            assert all(item.CodingSchemeDesignator == "DCM"
                       for item in out.ds.DeidentificationMethodCodeSequence)
            assert out.ds.DeidentificationMethod[0].startswith(f"imaging-lake {profile} ")
            assert out.ds.preamble == bytes(128)


def test_same_patient_same_pseudonym_and_shift_across_batches(tmp_path: Path) -> None:
    write_corpus(tmp_path / "batch0", 2, batch=0)
    write_corpus(tmp_path / "batch1", 2, batch=1)
    first = Deidentifier(load_profile("research"), SECRET)
    second = pickle.loads(pickle.dumps(Deidentifier(load_profile("research"), SECRET)))
    seen: dict[str, tuple[str, int, str]] = {}
    for batch, engine in (("batch0", first), ("batch1", second)):
        for path in sorted((tmp_path / batch).rglob("*_ct0.dcm")):
            original, ds = dcmread(path), dcmread(path)
            engine.apply(ds)
            key = original.PatientID
            now = (ds.PatientID, _shift(original, ds), ds.StudyInstanceUID)
            if key in seen:
                assert now[0] == seen[key][0]  # same pseudonym
                assert now[1] == seen[key][1]  # same date shift
                assert now[2] != seen[key][2]  # a new study stays a new study
            seen[key] = now
    assert len(seen) == 2
    assert len({v[0] for v in seen.values()}) == 2


def test_rerun_is_deterministic(corpus: tuple[Path, set[str]],
                                outputs: dict[str, dict[str, Output]]) -> None:
    again = _run(Deidentifier(load_profile("research"), SECRET), _files(corpus))
    for name, out in outputs["research"].items():
        assert again[name].data == out.data


def test_a_different_secret_shares_no_pseudonym(corpus: tuple[Path, set[str]],
                                                outputs: dict[str, dict[str, Output]]) -> None:
    other = _run(Deidentifier(load_profile("basic"), Secret(b"another-secret-0123456789abcdef0")),
                 _files(corpus))
    mine = [o.ds for o in outputs["basic"].values() if o.ds is not None]
    theirs = [o.ds for o in other.values() if o.ds is not None]
    assert {d.PatientID for d in mine}.isdisjoint({d.PatientID for d in theirs})
    keyed_mine = {u for d in mine for u in _uids(d) if u.startswith("2.25.")}
    keyed_theirs = {u for d in theirs for u in _uids(d) if u.startswith("2.25.")}
    assert keyed_mine and keyed_mine.isdisjoint(keyed_theirs)


def test_the_search_sees_a_leak(corpus: tuple[Path, set[str]], tmp_path: Path) -> None:
    """Negative control: a site recipe that keeps InstitutionName leaks its tokens."""
    recipe = tmp_path / "leaky.dicom"
    recipe.write_text("FORMAT dicom\n%header\nKEEP InstitutionName\n")
    leaky = _run(Deidentifier(load_profile(str(recipe)), SECRET), _files(corpus))
    _, tokens = corpus
    found = {t for o in leaky.values() for t in tokens if t.encode() in o.data}
    assert found
    assert all(o.ds is None or o.ds.InstitutionName in found for o in leaky.values()
               if o.ds is not None and "InstitutionName" in o.ds)


def _leaked(secret: str, text: str) -> bool:
    """``secret`` in ``text`` as a word (case-insensitive); digits also across separators."""
    low = text.lower()
    if re.search(rf"(?<![a-z0-9]){re.escape(secret.lower())}(?![a-z0-9])", low):
        return True
    if len(secret) >= 5 and secret.isalpha() and secret.lower() in re.sub(r"[^a-z]", "", low):
        return True  # glued to other letters or split by punctuation
    digits = re.sub(r"\D", "", secret)
    return len(digits) >= 4 and digits == secret.replace("-", "") and digits in re.sub(
        r"\D", "", low)


def test_descriptions_keep_their_meaning_and_lose_every_identifier(
    outputs: dict[str, dict[str, Output]],
) -> None:
    """Issue 10.4: the identity of the header, written otherwise in the descriptions, goes;
    dates, MRN digits, phone, e-mail, address and names after a title go; technical words stay."""
    found = 0
    for name, out in outputs["research"].items():
        if not name.endswith("_mr.dcm"):
            continue
        assert out.ds is not None
        patient = int(out.source.parent.name.rsplit("patient", 1)[1])
        plants = descriptor_plants(patient)
        cleaned = {k: str(out.ds.get(k, "")) for k in plants.values}
        text = " | ".join(cleaned.values())
        leaks = [s for s in plants.secrets if _leaked(s, text)]
        assert not leaks, (leaks, cleaned)
        words = set(re.findall(r"[A-Za-z0-9=]+", text))
        assert set(plants.kept) <= words, (set(plants.kept) - words, cleaned)
        assert re.fullmatch(r"T1 MPRAGE [*' -]+", cleaned["SeriesDescription"]), cleaned
        found += 1
    assert found == 3


def test_the_descriptor_check_sees_a_leak() -> None:
    """Negative control of :func:`_leaked`: each kind of planted form is found when present."""
    plants = descriptor_plants(0)
    text = " ".join(plants.values.values())
    assert all(_leaked(s, text) for s in plants.secrets if not s.isdigit() or len(s) >= 4)
    assert _leaked("0048213577", "id 0048-2135-77") and _leaked("HEART", "H.E.A.R.T")
    assert not _leaked("HEART", "T1 MPRAGE * *")
