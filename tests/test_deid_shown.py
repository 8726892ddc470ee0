"""``lake profiles show`` says exactly what ``lake deid`` and ingest do (issue 10.5).

For every built-in profile and a site profile, the rules printed by ``lake profiles show
--json`` are resolved for every element of the planted corpus the way docs/deid.md states the
precedence (exact tag, mask, ``vr:``, ``unknown``; creator rule, ``private``), and the effect
they name is compared with what the engine did to that element: at the top level, in the file
meta and inside every sequence whose items are walked with the normal rules. Rules the engine
would not honour are refused when the profile loads.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.datadict import dictionary_has_tag, dictionary_VR
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from typer.testing import CliRunner

from lake._errors import DeidRefusedError, ProfileError
from lake.deid import Deidentifier, load_profile
from lake.deid._values import dummy_bytes
from lake.vault import Secret
from pipelines.cli import app
from tests.deid_corpus import write_corpus

runner = CliRunner()
SECRET = Secret(b"shown-secret-0123456789abcdef012")
SITE_RECIPE = """FORMAT dicom
%header
KEEP StudyID
REPLACE InstitutionName SITE A
BLANK (0020,40xx)
KEEP (0019,"GEMS_ACQU_01",23)
KEEP (0011,"ACME 1.0",01)
REPLACE (0017,"ACME UN",01) func:dummy
BLANK private
"""


@dataclass(frozen=True)
class Rules:
    """The rules of one profile as ``lake profiles show --json`` prints them."""

    exact: dict[int, str]
    masks: list[tuple[int, int, str]]
    vrs: dict[str, str]
    unknown: str
    creators: dict[tuple[int, str, int], str]
    private: str


def _shown(profile: str) -> Rules:
    result = runner.invoke(app, ["profiles", "show", profile, "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["rules"]
    exact: dict[int, str] = {}
    masks: list[tuple[int, int, str]] = []
    vrs: dict[str, str] = {}
    creators: dict[tuple[int, str, int], str] = {}
    unknown, private = "keep (not listed)", "remove"
    for row in rows:
        field, effect = row["field"], row["effect"]
        if m := re.fullmatch(r"\(([0-9A-F]{4}),([0-9A-F]{4})\)", field):
            exact[int(m.group(1) + m.group(2), 16)] = effect
        elif m := re.fullmatch(r'\(([0-9A-F]{4}),"(.*)",([0-9A-F]{2})\)', field):
            creators[(int(m.group(1), 16), m.group(2), int(m.group(3), 16))] = effect
        elif m := re.fullmatch(r"\(([0-9A-Fx]{4}),([0-9A-Fx]{4})\)", field):
            digits = m.group(1) + m.group(2)
            mask = int("".join("0" if c == "x" else "F" for c in digits), 16)
            masks.append((mask, int(digits.replace("x", "0"), 16), effect))
        elif field.startswith("vr:"):
            vrs[field[3:]] = effect
        elif field == "unknown":
            unknown = effect
        elif field == "private":
            private = effect
    masks.sort(key=lambda m: -bin(m[0]).count("1"))
    return Rules(exact, masks, vrs, unknown, creators, private)


def _per_vr(effect: str, vr: str) -> str:
    """The effect for one VR of a summary such as ``"LO, SH: clean text; other VRs: keep"``."""
    if ": " not in effect:
        return effect
    other = effect
    for part in effect.split("; "):
        names, _, what = part.partition(": ")
        if names.startswith("other VRs"):
            other = what
        elif vr in names.split(", "):
            return what
    return other


def _private_effect(effect: str, vr: str) -> str:
    """The effect of a creator rule on an element of ``vr`` (the engine goes by its VR)."""
    if m := re.fullmatch(
        r"(.*) if VR (\w+), VM .* as Table E.3.10-1 lists it; otherwise as every private element",
        effect,
    ):
        return m.group(1) if vr == m.group(2) else "private"
    m = re.fullmatch(
        r"(?:VR \w+ \(pydicom's private dictionary\): .*?; )?numbers, codes, "
        r"short texts: (.*); UI: (.*); SQ: (.*); any other VR: as every private element",
        effect,
    )
    assert m is not None, effect
    if vr == "UI":
        return m.group(2)
    if vr == "SQ":
        return m.group(3)
    if vr in ("AT", "CS", "DS", "FD", "FL", "IS", "LO", "LT", "SH", "SL", "SS", "ST", "UL", "US"):
        return _per_vr(m.group(1), vr)
    return "private"


def _expected(rules: Rules, tag: int, elem: DataElement, creator: str | None) -> str:
    vr = elem.VR if elem.VR else "UN"
    if tag >> 16 & 1:
        if 0x10 <= tag & 0xFFFF <= 0xFF:
            return "creator"
        if creator is not None:
            key = (tag >> 16, creator, tag & 0xFF)
            if key in rules.creators:
                effect = _private_effect(rules.creators[key], vr)
                if effect != "private":
                    return effect
        return _per_vr(rules.private, vr)
    if tag in rules.exact:
        return rules.exact[tag]
    if dictionary_has_tag(tag):
        vr = str(dictionary_VR(tag))[:2]
    for mask, value, effect in rules.masks:
        if tag & mask == value:
            return _per_vr(effect, vr)
    if not dictionary_has_tag(tag):
        return _per_vr(rules.unknown, vr)
    if vr == "SQ":
        return rules.vrs.get(vr, "de-identify items")  # unlisted sequences are walked
    return rules.vrs.get(vr, "keep (not listed)")


_OUTCOMES = {
    "remove": {"removed"},
    "zero-length": {"zero-length", "empty", "emptied"},
    "dummy value": {"dummy", "empty", "keyed"},
    "keyed UID 2.25.<HMAC>": {"keyed", "kept", "empty"},
    "clean text (identifiers removed)": {"kept", "changed", "zero-length", "empty"},
    "keyed AE title": {"changed", "empty"},
    "shift date (keyed per patient)": {"changed", "zero-length", "empty"},
    "shift date-time (keyed per patient)": {"changed", "zero-length", "empty"},
    "keep if a valid date": {"kept", "zero-length", "empty"},
    "keep if a valid date-time": {"kept", "zero-length", "empty"},
    "keep if a valid time": {"kept", "zero-length", "empty"},
    "keep if a valid age; over 89Y -> 090Y": {"kept", "changed", "zero-length", "empty"},
    "keep if a valid UTC offset": {"kept", "zero-length", "empty"},
    "keep if a well-formed UID, else refused": {"kept", "empty"},
    "keep": {"kept", "empty"},
    "keep (not listed)": {"kept", "empty"},
    "keyed pseudonym": {"changed", "empty"},
    "fixed value": {"changed", "kept"},
    "de-identify items": {"items"},
    "de-identify items with dummy values": {"items", "emptied"},
    "de-identify items with cleaned text": {"items"},
    "keep; burned-in regions masked (stored uncompressed) when the instance is at risk and a "
    "%filter graylist rule matches": {"kept", "changed"},
    "keep; NO when burned-in regions were masked": {"kept", "changed"},
}


def _outcome(before: DataElement, after: DataElement | None) -> str:
    if after is None:
        return "removed"
    if before.VR == "SQ" or after.VR == "SQ":
        return "emptied" if before.value and not after.value else "items"
    if before.is_empty:
        return "empty"
    if after.is_empty:
        return "zero-length"
    if after.value == before.value:
        return "kept"
    if after.VR == "UI":
        return "keyed" if str(after.value).startswith("2.25.") else "changed"
    raw = after.value if isinstance(after.value, bytes) else str(after.value).encode()
    if raw.rstrip(b" \0") == dummy_bytes(after.VR).rstrip(b" \0"):
        return "dummy"
    return "changed"


def _tags(ds: Dataset) -> list[int]:
    return [int(t) for t in ds.keys()]  # noqa: SIM118 (a Dataset is no dict)


def _creators(ds: Dataset) -> dict[int, str]:
    return {
        t: str(ds[t].value).strip() for t in _tags(ds) if t >> 16 & 1 and 0x10 <= t & 0xFFFF <= 0xFF
    }


def _compare(
    rules: Rules, before: Dataset, after: Dataset, where: str, seen: dict[str, int]
) -> list[str]:
    wrong = []
    creators = _creators(before)
    for tag in _tags(before):
        elem = before[tag]
        block = (tag & 0xFFFF0000) | ((tag & 0xFFFF) >> 8)
        effect = _expected(rules, tag, elem, creators.get(block))
        out = after.get(tag)
        if effect == "creator":
            kept = [
                t for t in _tags(after) if t >> 16 == tag >> 16 and (t & 0xFFFF) >> 8 == tag & 0xFF
            ]
            ok = (out is not None) == bool(kept) and (out is None or out.value == elem.value)
            if not ok:
                wrong.append(f"{where}{tag:08X} creator kept={out is not None} with {kept}")
            continue
        got = _outcome(elem, out)
        seen[effect] = seen.get(effect, 0) + 1
        if effect not in _OUTCOMES or got not in _OUTCOMES[effect]:
            wrong.append(
                f"{where}{tag:08X} {elem.keyword or 'private'}: shown {effect!r}, engine {got}"
            )
        if effect == "de-identify items" and out is not None and out.VR == "SQ":
            for i, (item_b, item_a) in enumerate(zip(elem.value, out.value, strict=True)):
                wrong += _compare(rules, item_b, item_a, f"{where}{tag:08X}[{i}].", seen)
    return wrong


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("shown")
    write_corpus(folder, n_patients=1)
    return sorted(folder.rglob("*.dcm"))


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> str:
    folder = tmp_path_factory.mktemp("site")
    (folder / "site.dicom").write_text(SITE_RECIPE)
    (folder / "site.toml").write_text(
        'name = "site"\nversion = "1"\nextends = "research"\nrecipes = ["site.dicom"]\n'
    )
    return str(folder / "site.toml")


@pytest.mark.parametrize("profile", ["basic", "research", "teaching", "site"])
def test_show_says_what_the_engine_does(profile: str, corpus: list[Path], site: str) -> None:
    name = site if profile == "site" else profile
    rules = _shown(name)
    engine = Deidentifier(load_profile(name), SECRET)
    wrong: list[str] = []
    seen: dict[str, int] = {}
    for path in corpus:
        before, after = dcmread(path), dcmread(path)
        try:
            engine.apply(after)
        except DeidRefusedError:
            continue
        wrong += _compare(rules, before, after, f"{path.name} ", seen)
        wrong += _compare(rules, before.file_meta, after.file_meta, f"{path.name} meta ", seen)
    assert not wrong, "\n".join(wrong[:20])
    assert sum(seen.values()) > 300 and len(seen) >= 5, seen  # the comparison saw real work
    if profile == "site":
        assert {"keep", "zero-length", "dummy value", "fixed value"} <= set(seen), seen


@pytest.mark.parametrize(
    ("rule", "reason"),
    [
        ('KEEP (0029,"SIEMENS CSA HEADER",10)', "its VR is OB"),
        ('KEEP (0029,"SIEMENS CSA HEADER",20)', "its VR is OB"),
        ("KEEP (0029,1010)", "named by its creator"),
        ("REMOVE (0029,xxxx)", "masks match public elements only"),
        ("KEEP private", "every vendor private element"),
        ("REPLACE private func:clean", "every vendor private element"),
        ("REMOVE DeidentificationMethod", "written by the engine"),
        ("ADD PatientIdentityRemoved NO", "written by the engine"),
        ('REPLACE (0019,"GEMS_ACQU_01",23) func:uid', "does not apply to a private DS"),
    ],
)
def test_rules_the_engine_would_not_honour_are_refused(
    tmp_path: Path, rule: str, reason: str
) -> None:
    recipe = tmp_path / "site.dicom"
    recipe.write_text(f"FORMAT dicom\n%header\n{rule}\n")
    with pytest.raises(ProfileError, match=re.escape(reason)):
        load_profile(str(recipe))
    result = runner.invoke(
        app, ["profiles", "show", str(recipe)], env={"COLUMNS": "240", "NO_COLOR": "1"}
    )
    assert result.exit_code == 1
    assert len(result.stderr.strip().splitlines()) == 1 and reason in result.stderr


def test_a_kept_private_element_is_kept_and_the_dry_run_says_so(tmp_path: Path) -> None:
    write_corpus(tmp_path / "c", n_patients=1)
    (path,) = sorted((tmp_path / "c").rglob("*_ct0.dcm"))
    recipe = tmp_path / "site.dicom"
    recipe.write_text('FORMAT dicom\n%header\nKEEP (0019,"GEMS_ACQU_01",23)\n')
    ds = dcmread(path)
    Deidentifier(load_profile(str(recipe)), SECRET).apply(ds)
    assert ds[0x00191023].value == 12.5 and ds[0x00190010].value == "GEMS_ACQU_01"
    result = runner.invoke(
        app, ["deid", str(path), "--profile", str(recipe)], env={"COLUMNS": "240", "NO_COLOR": "1"}
    )
    assert result.exit_code == 0, result.output
    line = next(x for x in result.stdout.splitlines() if "(0019,1023)" in x)
    assert "kept" in line


def test_the_comparison_sees_a_wrong_claim(corpus: list[Path]) -> None:
    """Negative control: a profile shown as keeping Patient's Name disagrees with the engine."""
    rules = _shown("basic")
    rules.exact[0x00100010] = "keep"
    path = corpus[0]
    before, after = dcmread(path), dcmread(path)
    Deidentifier(load_profile("basic"), SECRET).apply(after)
    wrong = _compare(rules, before, after, "", {})
    assert wrong and all("00100010 PatientName" in w for w in wrong)
