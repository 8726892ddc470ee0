"""Profiles as data: generated from the standard, layered, extended by sites, validated."""

from __future__ import annotations

import gzip
import importlib.util
import json
import re
import sys
from importlib.metadata import PackageNotFoundError
from pathlib import Path
from typing import Any

import pytest
from pydicom.sr.codedict import codes

from lake._errors import ProfileError
from lake.deid import EDITION, Deidentifier, ProfileOption, list_profiles, load_profile
from lake.deid._plan import KEEP, RECURSE, REMOVE, UID, compile_profile
from lake.deid._profile import builtin_dir
from lake.vault import Secret
from tests.conftest import SHARED_DATA

ROOT = Path(__file__).resolve().parents[1]
STANDARD = SHARED_DATA / "dicom-standard"
TABLE = STANDARD / "confidentiality_profile_attributes.json"


def _tool(name: str) -> Any:
    """A script of ``tools/`` imported as a module."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _generator() -> Any:
    return _tool("gen_profiles")


@pytest.fixture
def table() -> list[dict[str, str]]:
    if not TABLE.is_file():
        pytest.skip("../shared/data/dicom-standard is absent")
    rows: list[dict[str, str]] = json.loads(TABLE.read_text())
    return rows


def test_generated_files_are_current(table: list[dict[str, str]]) -> None:
    gen = _generator()
    committed = json.loads((gen.PROFILES / "clean-vocabulary.json").read_text())
    try:
        same_sources = all(gen._version(name) == committed["versions"][name]
                           for name in gen.VOCABULARY_PACKAGES)
    except PackageNotFoundError:
        same_sources = False
    if not same_sources:  # the word lists depend on these packages' data: compare the rest
        gen.vocabulary = lambda: committed
    generated = gen.generate(TABLE)
    assert json.loads(generated[gen.PROFILES / "clean-vocabulary.json"]) == committed
    for path, text in generated.items():
        assert path.read_text() == text, f"{path.name} is stale: run tools/gen_profiles.py"


def _field(row: dict[str, str]) -> str:
    if row["id"].startswith("ggggeeee"):
        return "private"
    return row["tag"].upper().replace("X", "x")


def test_basic_covers_every_row_of_table_e11(table: list[dict[str, str]]) -> None:
    assert len(table) == 621
    rows = {r["field"]: r for r in load_profile("basic").describe()}
    for row in table:
        field = _field(row)
        assert field in rows, row["name"]
        if field == "(0010,0020)":
            assert rows[field]["action"] == "D"  # Z/D as a keyed pseudonym
        else:
            assert rows[field]["action"] == row["basicProfile"], row["name"]


def test_option_layers_follow_their_columns(table: list[dict[str, str]]) -> None:
    columns = {
        ProfileOption.RETAIN_FULL_DATES: "rtnLongFullDatesOpt",
        ProfileOption.RETAIN_MODIFIED_DATES: "rtnLongModifDatesOpt",
        ProfileOption.RETAIN_PATIENT_CHARACTERISTICS: "rtnPatCharsOpt",
        ProfileOption.RETAIN_DEVICE_IDENTITY: "rtnDevIdOpt",
        ProfileOption.RETAIN_INSTITUTION_IDENTITY: "rtnInstIdOpt",
        ProfileOption.RETAIN_UIDS: "rtnUIDsOpt",
        ProfileOption.CLEAN_DESCRIPTORS: "cleanDescOpt",
        ProfileOption.CLEAN_GRAPHICS: "cleanGraphOpt",
        ProfileOption.CLEAN_STRUCTURED_CONTENT: "cleanStructContOpt",
    }
    folder = builtin_dir()
    for option, column in columns.items():
        text = (folder / option.recipe).read_text()
        for row in table:
            if row.get(column) and not row["id"].startswith("ggggeeee"):
                field = row["tag"].upper().replace("X", "x")
                assert field in text, (option, row["name"])


def test_builtin_profiles() -> None:
    assert list_profiles() == ["basic", "research", "teaching"]
    research = load_profile("research")
    assert research.options == (
        ProfileOption.RETAIN_MODIFIED_DATES,
        ProfileOption.RETAIN_PATIENT_CHARACTERISTICS,
        ProfileOption.RETAIN_DEVICE_IDENTITY,
        ProfileOption.CLEAN_DESCRIPTORS,
    )
    assert load_profile("teaching").options == (  # what a teaching case shows (issue 12.2)
        ProfileOption.RETAIN_PATIENT_CHARACTERISTICS,
        ProfileOption.CLEAN_DESCRIPTORS,
        ProfileOption.CLEAN_PIXEL_DATA,
    )
    assert load_profile("basic").options == ()
    for name in list_profiles():
        p = load_profile(name)
        assert p.name == name and p.version.startswith(EDITION) and len(p.sha256) == 64
    assert len({load_profile(n).sha256 for n in list_profiles()}) == 3


def test_cid_7050_codes_match_pydicom() -> None:
    by_value = {}
    for name in dir(codes.DCM):
        if name.endswith("Option") or name == "BasicApplicationConfidentialityProfile":
            code = getattr(codes.DCM, name)
            by_value[code.value] = code.meaning
    for option in ProfileOption:
        assert by_value[option.code] == option.meaning


def _safe_private_doc() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((builtin_dir() / "safe-private-2024b.json").read_text())
    return doc


def test_safe_private_table_names_its_edition() -> None:
    doc = _safe_private_doc()
    assert doc["edition"] == EDITION and "E.3.10-1" in doc["title"]
    # Checked row by row against a copy of the 2024b text, named with its commit.
    assert doc["verified_against_edition"] is True
    assert f"PS3.15 {EDITION}" in doc["verified_against"]
    assert re.search(r"\b[0-9a-f]{40}\b", doc["verified_against"])
    keys = [(r["tag"], r["creator"]) for r in doc["rows"]]
    assert len(keys) == len(set(keys)) == 479  # no duplicate row; the 2024b table's size
    for row in doc["rows"]:
        assert re.fullmatch(r"\(([0-9A-F]{3}[13579BDF]),xx[0-9A-F]{2}\)", row["tag"]), row
        assert row["creator"] == row["creator"].strip() and '"' not in row["creator"]
        assert set(row) == {"tag", "creator", "vr", "vm"}
    # Facts of the 2024b text that the earlier transcription (a copy of PixelMed's own list)
    # got wrong: a wrong group, a missing row, creators that are not in the table at all.
    assert ("(00E1,xx50)", "ELSCINT1") in keys and ("(01E1,xx50)", "ELSCINT1") not in keys
    assert ("(0099,xx02)", "NQHeader") in keys
    creators = {c for _t, c in keys}
    assert not creators & {"GEMS_SENO_02", "LORAD Selenia", "Philips US Imaging DD 033"}
    assert not [t for t, c in keys if c == "HOLOGIC, Inc." and not t.startswith("(7E01,")]


def test_retain_safe_private_keeps_exactly_the_tables_rows(tmp_path: Path) -> None:
    gen = _generator()
    rows = _safe_private_doc()["rows"]
    path = _site(tmp_path, 'name = "site"\nversion = "t1"\nextends = "basic"\n'
                 'options = ["retain-safe-private"]\n')
    safe = compile_profile(load_profile(str(path))).safe_private
    expected = {}
    for row in rows:
        if row["vr"] in gen.SAFE_PRIVATE_NOT_KEPT:  # bulk OB/OW: not kept
            continue
        key = (int(row["tag"][1:5], 16), row["creator"], int(row["tag"][8:10], 16))
        expected[key] = row["vr"] or "UN"
    assert set(safe) == set(expected)
    assert len(expected) == len(rows) - 20
    walked = {"UI": UID, "SQ": RECURSE}  # keyed UIDs; sequences with their items de-identified
    for key, vr in expected.items():
        op = safe[key][vr]
        assert op.code == walked.get(vr, KEEP), (key, vr)
        if vr in walked:  # read as UN, it can be neither keyed nor walked
            assert safe[key]["UN"].code == REMOVE, key
    # The recipe says it once per row: no duplicate, nothing beyond the table.
    text = (builtin_dir() / ProfileOption.RETAIN_SAFE_PRIVATE.recipe).read_text()
    rules = [ln for ln in text.splitlines() if ln.startswith(("KEEP (", "REPLACE ("))]
    assert len(rules) == len(set(rules)) == len(expected)
    assert text.count("# not kept, ") == len(rows) - len(expected)


def _site(tmp_path: Path, manifest: str, recipe: str | None = None) -> Path:
    if recipe is not None:
        (tmp_path / "site.dicom").write_text(recipe)
    path = tmp_path / "site.toml"
    path.write_text(manifest)
    return path


def test_a_site_profile_extends_a_builtin_in_a_few_lines(tmp_path: Path) -> None:
    path = _site(tmp_path, 'name = "mysite"\nversion = "2025.1"\nextends = "research"\n'
                 'options = ["retain-institution-identity"]\nrecipes = ["site.dicom"]\n',
                 "FORMAT dicom\n%header\nKEEP StudyID\n")
    p = load_profile(str(path))
    assert (p.name, p.version) == ("mysite", "2025.1")
    assert ProfileOption.RETAIN_INSTITUTION_IDENTITY in p.options
    assert ProfileOption.CLEAN_DESCRIPTORS in p.options
    rows = {r["field"]: r for r in p.describe()}
    assert rows["(0020,0010)"]["action"] == "K" and rows["(0020,0010)"]["layer"] == "site.dicom"
    assert rows["(0008,0080)"]["action"] == "K"  # institution name, from the option
    before = p.sha256
    (tmp_path / "site.dicom").write_text("FORMAT dicom\n%header\nKEEP StudyID \n")
    assert load_profile(str(path)).sha256 != before  # every byte counts


def test_a_bare_recipe_layers_on_basic(tmp_path: Path) -> None:
    recipe = tmp_path / "keep.dicom"
    recipe.write_text("FORMAT dicom\n%header\nKEEP StudyDescription\n")
    p = load_profile(str(recipe))
    assert p.name == "keep" and p.version.startswith("sha-")
    rows = {r["field"]: r for r in p.describe()}
    assert rows["(0008,1030)"]["action"] == "K"
    assert rows["(0010,0010)"]["action"] == "Z"


def test_options_conflict_the_more_protective_wins() -> None:
    rows = {r["field"]: r for r in load_profile("research").describe()}
    # Calibration Date: Retain Device Identity says K, Modified Dates says C (shift).
    assert rows["(0018,1200)"]["action"] == "C"
    assert rows["(0018,1200)"]["effect"].startswith("shift date")


@pytest.mark.parametrize(
    ("recipe", "message"),
    [
        ("%header\nREMOVE PatientName\n", "FORMAT dicom"),
        ("FORMAT dicom\n%header\nJITTER StudyDate 10\n", "func:shift_date"),
        ("FORMAT dicom\n%header\nREMOVE PatientName # why\n", "own line"),
        ("FORMAT dicom\n%header\nREMOVE NotAKeyword\n", "unknown attribute"),
        ("FORMAT dicom\n%header\nREMOVE contains:Name\n", "not supported"),
        ("FORMAT dicom\n%header\nREPLACE PatientID func:jitter\n", "unknown function"),
        ("FORMAT dicom\n%values names\nFIELD x\n", "not used"),
        ("FORMAT dicom\n%filter graylist\ncontains Modality US\n", "before any LABEL"),
        ("FORMAT dicom\n%filter greylist\n", "graylist, whitelist or blacklist"),
        ("FORMAT dicom\n%header\nREPLACE StudyDate func:uid\n", "UI elements"),
        ("FORMAT dicom\n%header\nREMOVE (0008,\"X\",10)\n", "odd groups"),
    ],
)
def test_bad_recipes_are_refused_with_a_location(tmp_path: Path, recipe: str,
                                                 message: str) -> None:
    path = tmp_path / "bad.dicom"
    path.write_text(recipe)
    with pytest.raises(ProfileError, match=message):
        Deidentifier(load_profile(str(path)), Secret(bytes(32)))


@pytest.mark.parametrize(
    ("manifest", "message"),
    [
        ('extends = "nope"\n', "unknown profile"),
        ('extends = "basic"\noptions = ["retain-everything"]\n', "unknown option"),
        ('extends = "basic"\noptions = ["retain-full-dates", "retain-modified-dates"]\n',
         "exclude each other"),
        ('extends = "site.toml"\n', "cycle"),
        ('extends = "basic"\n[date_shift]\nmin_days = 10\nmax_days = 5\n', "min_days"),
        ('extends = "basic"\ncolour = "blue"\n', "unknown keys"),
        ('name = "x"\n', "extends"),
        ('extends = "basic"\nrecipes = ["missing.dicom"]\n', "not found"),
        ("extends = \n", "TOML"),
    ],
)
def test_bad_manifests_are_refused(tmp_path: Path, manifest: str, message: str) -> None:
    with pytest.raises(ProfileError, match=message):
        load_profile(str(_site(tmp_path, manifest)))


def test_unknown_profile_names_the_choices() -> None:
    with pytest.raises(ProfileError, match="basic, research, teaching"):
        load_profile("nonexistent")


def test_loading_prints_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    """deid's parser logs every line at DEBUG by default; the library must stay silent."""
    for name in list_profiles():
        Deidentifier(load_profile(name), Secret(bytes(32)))
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_the_attribute_table_in_the_docs_is_current() -> None:
    script = ROOT / "tools" / "gen_deid_docs.py"
    spec = importlib.util.spec_from_file_location("gen_deid_docs", script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    doc = (ROOT / "docs" / "deid.md").read_text()
    assert module.render(doc) == doc, "docs/deid.md is stale: run tools/gen_deid_docs.py"


def test_safe_private_json_is_generated_from_the_standard() -> None:
    """The committed JSON is what the script parses from the 2024b DocBook table element."""
    gen = _tool("gen_safe_private")
    fragment = gzip.decompress(gen.FRAGMENT.read_bytes()).decode("utf-8")
    rows = gen.parse_rows(fragment)
    assert len(rows) == 479
    assert (builtin_dir() / "safe-private-2024b.json").read_text() == gen.render(rows), (
        "safe-private-2024b.json is stale: run tools/gen_safe_private.py"
    )
    # The parser reads the DocBook, not a fixed list: a changed cell changes the rows,
    # and a duplicated row is refused.
    changed = gen.parse_rows(fragment.replace(">ELSCINT1<", ">ELSCINT2<", 1))
    assert changed != rows and changed[2]["creator"] == "ELSCINT2"
    first_row = re.search(r"<tr\b.*?</tr>", fragment.split("<tbody>", 1)[1], re.S)
    assert first_row is not None
    doubled = fragment.replace("<tbody>", "<tbody>" + first_row.group(0) * 2, 1)
    with pytest.raises(SystemExit, match="listed twice"):
        gen.parse_rows(doubled)
    # Reading a whole part15.xml finds the same element.
    around = "<book><section>" + fragment + "<table xml:id=\"other\"></table></section></book>"
    assert gen.table_fragment(around) == fragment
