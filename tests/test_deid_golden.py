"""Regression guard: ingest's de-identified output of a fixed corpus equals committed goldens.

Every built-in profile, the planted-identifier corpus, pydicom's test files and deid-data
(skipped when not installed) go through ``process_bytes`` with a fixed secret; the sha256 of
each Part-10 output and catalog row and the action counts must equal
``tests/data/deid_golden.json``. An optimisation of ``lake/deid`` or ``lake/ingest`` changes
no byte. ``tools/deid_golden.py`` says what is compared and when ``--write`` (regenerating
the goldens) is legitimate.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("deid_golden", ROOT / "tools" / "deid_golden.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["deid_golden"] = module
    spec.loader.exec_module(module)
    return module


TOOL = _tool()
GOLDEN: dict[str, Any] = json.loads(TOOL.GOLDEN.read_text())
CASES = [(profile, group) for profile in sorted(GOLDEN["outputs"])
         for group in TOOL.GROUPS]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Path]]:
    found: dict[str, dict[str, Path]] = TOOL.corpus(tmp_path_factory.mktemp("golden"))
    return found


#: The libraries that write the corpus's or the outputs' bytes (pikepdf the planted PDF and its
#: rewrite, pydicom the Part-10 and JSON encodings, deid and numpy the values): goldens hold
#: for the versions they were written with. pyproject allows ranges, so a fresh clone may get
#: others; the comparison is then skipped, saying which, rather than failing on no change here.
BYTE_WRITERS = ("pydicom", "pikepdf", "numpy", "deid")


def _same_byte_writers() -> None:
    here = TOOL.versions()
    moved = [f"{name} {GOLDEN['versions'].get(name)} -> {here.get(name)}" for name in BYTE_WRITERS
             if GOLDEN["versions"].get(name) != here.get(name)]
    if moved:
        pytest.skip(f"goldens written with other library versions ({', '.join(moved)}): check "
                    "the differences, then `python tools/deid_golden.py --write`")


def _fail(lines: list[str]) -> None:
    shown = "\n".join(lines[:20]) + (f"\n... {len(lines) - 20} more" if len(lines) > 20 else "")
    pytest.fail(f"{len(lines)} difference(s) from tests/data/deid_golden.json:\n{shown}\n"
                f"goldens written with {GOLDEN['versions']}, here {TOOL.versions()}; "
                "an intended change of output: see tools/deid_golden.py before --write")


def test_a_moved_byte_writer_skips_rather_than_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    versions = dict(TOOL.versions(), pikepdf="0.0.1")
    monkeypatch.setattr(TOOL, "versions", lambda: versions)
    with pytest.raises(pytest.skip.Exception, match=r"pikepdf .* -> 0\.0\.1"):
        _same_byte_writers()


def test_every_builtin_profile_has_goldens() -> None:
    assert sorted(GOLDEN["outputs"]) == sorted(TOOL.profiles()), (
        "a built-in profile was added or removed: its goldens are written by "
        "`python tools/deid_golden.py --write` (say why in the commit)")


@pytest.mark.parametrize("group", TOOL.GROUPS)
def test_the_inputs_are_the_recorded_ones(
        inputs: dict[str, dict[str, Path]], group: str) -> None:
    """The corpus is the same bytes on every machine: a changed input is not a changed output."""
    if group not in inputs:
        pytest.skip(f"{group}: its data is not here (optional)")
    _same_byte_writers()
    expected: dict[str, str] = GOLDEN["inputs"][group]
    files = inputs[group]
    found = {name: TOOL._sha256(files[name].read_bytes()) for name in expected if name in files}
    lines = TOOL.differences(expected, found)
    if lines:
        _fail([f"input {group} {line}" for line in lines])


@pytest.mark.parametrize(("profile", "group"), CASES)
def test_output_equals_the_goldens(inputs: dict[str, dict[str, Path]], profile: str,
                                   group: str, tmp_path: Path) -> None:
    if group not in inputs:
        pytest.skip(f"{group}: its data is not here (optional)")
    _same_byte_writers()
    expected: dict[str, Any] = GOLDEN["outputs"][profile][group]
    # The names the goldens hold: a file a later pydicom adds is not compared until --write.
    files = {name: inputs[group][name] for name in expected if name in inputs[group]}
    found = TOOL.outcomes(profile, files, tmp_path / "lake")
    lines = TOOL.differences(expected, found)
    if lines:
        _fail([f"{profile} {group} {line}" for line in lines])
    accepted = sum(TOOL.accepted(outcome) for outcome in found.values())
    assert accepted > 0, "every file was refused: the guard would compare nothing"
