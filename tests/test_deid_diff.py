"""``lake profiles diff`` names every attribute on which two profiles make the engine differ (10.5).

``test_deid_shown`` proves that ``profiles show`` says what the engine does. This module checks
``profiles diff`` against the engine itself, without going through ``show``: the planted corpus is
de-identified under both profiles, and wherever the outcome of an element differs (removed, kept,
emptied, a dummy, a changed value, a keyed UID), ``diff --json`` must list a rule that covers the
element (its exact tag, a mask, its VR, its private creator, ``private`` or ``unknown``). And each
exact-tag rule ``diff`` lists whose two effects cannot produce the same outcome must show up as a
difference in the engine wherever the corpus has that element.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.datadict import dictionary_has_tag, dictionary_VR
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from typer.testing import CliRunner

from lake._errors import DeidRefusedError
from lake.deid import Deidentifier, load_profile
from lake.vault import Secret
from pipelines.cli import app
from tests.deid_corpus import write_corpus

runner = CliRunner()
SECRET = Secret(b"diffed-secret-0123456789abcdef01")
PAIRS = [("basic", "research"), ("basic", "teaching"), ("research", "teaching")]

# Outcomes each effect can produce; two effects with disjoint sets always differ in the engine.
_CAN_GIVE = {
    "remove": {"removed"},
    "zero-length": {"zero-length"},
    "keep": {"kept"},
    "keep (not listed)": {"kept"},
    "dummy value": {"changed", "zero-length"},
}


def _diff(a: str, b: str) -> list[dict[str, object]]:
    result = runner.invoke(app, ["profiles", "diff", a, b, "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert (doc["a"], doc["b"]) == (load_profile(a).name, load_profile(b).name)
    rows: list[dict[str, object]] = doc["rules"]
    return rows


def _outcome(before: DataElement, after: DataElement | None) -> str:
    if after is None:
        return "removed"
    if before.VR == "SQ" or after.VR == "SQ":
        return "emptied" if before.value and not after.value else "items"
    if before.is_empty:
        return "empty"
    if after.is_empty:
        return "zero-length"
    return "kept" if after.value == before.value else "changed"


def _covers(field: str, tag: int, vr: str, creator: str | None) -> bool:
    """Whether a rule's field can decide what happens to the element ``tag``."""
    if field in ("unknown", "private"):
        return True  # the fallbacks of unlisted public and private elements
    if field.startswith("vr:"):
        return field[3:] == vr
    if m := re.fullmatch(r'\(([0-9A-F]{4}),"(.*)",([0-9A-F]{2})\)', field):
        return (
            int(m.group(1), 16) == tag >> 16
            and m.group(2) == creator
            and int(m.group(3), 16) == tag & 0xFF
        )
    if m := re.fullmatch(r"\(([0-9A-Fx]{4}),([0-9A-Fx]{4})\)", field):
        digits = m.group(1) + m.group(2)
        mask = int("".join("0" if c == "x" else "F" for c in digits), 16)
        return tag & mask == int(digits.replace("x", "0"), 16)
    raise AssertionError(f"diff printed a field this test does not know: {field}")


def _elements(before: Dataset, a: Dataset, b: Dataset) -> Iterator[tuple[int, DataElement, str, str]]:
    """(tag, original element, outcome under a, outcome under b) at the top level."""
    for elem in before:
        tag = int(elem.tag)
        yield tag, elem, _outcome(elem, a.get(tag)), _outcome(elem, b.get(tag))


def _creator(ds: Dataset, tag: int) -> str | None:
    if not tag >> 16 & 1 or (tag & 0xFFFF) < 0x1000:
        return None
    block = (tag & 0xFFFF0000) | ((tag & 0xFFFF) >> 8)
    return str(ds[block].value).strip() if block in ds else None


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("diffed")
    write_corpus(folder, n_patients=1)
    return sorted(folder.rglob("*.dcm"))


def _run(
    a: str, b: str, corpus: list[Path], drop: str | None = None
) -> tuple[list[str], list[str], int, int]:
    rows = [r for r in _diff(a, b) if r["field"] != drop]
    fields = [str(r["field"]) for r in rows]
    engine_a = Deidentifier(load_profile(a), SECRET)
    engine_b = Deidentifier(load_profile(b), SECRET)
    hidden: list[str] = []
    unseen: list[str] = []
    compared = differing = 0
    exact_disjoint: dict[int, str] = {}
    for r in rows:
        ra, rb = r["a"], r["b"]
        if not (isinstance(ra, dict) and isinstance(rb, dict)):
            continue
        if not re.fullmatch(r"\([0-9A-F]{4},[0-9A-F]{4}\)", str(r["field"])):
            continue
        ga, gb = _CAN_GIVE.get(ra["effect"]), _CAN_GIVE.get(rb["effect"])
        if ga is not None and gb is not None and not ga & gb:
            field = str(r["field"])
            exact_disjoint[int(field[1:5] + field[6:10], 16)] = field
    for path in corpus:
        before, after_a, after_b = dcmread(path), dcmread(path), dcmread(path)
        try:
            engine_a.apply(after_a)
            engine_b.apply(after_b)
        except DeidRefusedError:
            continue
        for tag, elem, out_a, out_b in _elements(before, after_a, after_b):
            compared += 1
            if tag in exact_disjoint and not elem.is_empty and out_a == out_b:
                unseen.append(f"{path.name} {exact_disjoint[tag]}: diff lists it, engine {out_a}")
            if out_a == out_b:
                continue
            differing += 1
            vr = str(dictionary_VR(tag))[:2] if dictionary_has_tag(tag) else (elem.VR or "UN")
            creator = _creator(before, tag)
            if not any(_covers(f, tag, vr, creator) for f in fields):
                hidden.append(
                    f"{path.name} {tag:08X} {elem.keyword or 'private'}: {a} {out_a}, {b} {out_b}"
                )
    return hidden, unseen, compared, differing


@pytest.mark.parametrize(("a", "b"), PAIRS)
def test_diff_names_every_difference_the_engine_makes(
    a: str, b: str, corpus: list[Path]
) -> None:
    hidden, unseen, compared, differing = _run(a, b, corpus)
    assert compared > 300 and differing > 20, (compared, differing)  # it saw real work
    assert not hidden, "differences diff does not list:\n" + "\n".join(hidden[:20])
    assert not unseen, "differences diff lists that the engine does not make:\n" + "\n".join(
        unseen[:20]
    )


def test_a_profile_diffed_with_itself_lists_nothing() -> None:
    assert _diff("research", "research") == []


def test_the_comparison_sees_a_hidden_difference(corpus: list[Path], tmp_path: Path) -> None:
    """Negative control: a site profile that keeps Study ID differs from research exactly there."""
    (tmp_path / "site.dicom").write_text("FORMAT dicom\n%header\nKEEP StudyID\n")
    (tmp_path / "site.toml").write_text(
        'name = "site"\nversion = "1"\nextends = "research"\nrecipes = ["site.dicom"]\n'
    )
    site = str(tmp_path / "site.toml")
    rows = _diff("research", site)
    assert [r["field"] for r in rows] == ["(0020,0010)"]
    hidden, unseen, _, _ = _run("research", site, corpus)
    assert not hidden and not unseen
    hidden, _, _, _ = _run("research", site, corpus, drop="(0020,0010)")
    assert hidden and all("00200010 StudyID" in h for h in hidden), hidden
