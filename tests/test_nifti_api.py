"""The converter is its own subpackage: a public API, and nothing of the lake but its errors."""

from __future__ import annotations

import ast
from pathlib import Path

import lake.nifti

ROOT = Path(__file__).resolve().parents[1]


def _imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_lake_nifti_depends_on_nothing_of_the_lake_but_its_errors() -> None:
    sources = sorted((ROOT / "lake" / "nifti").glob("*.py"))
    assert sources
    for path in sources:
        own = {m for m in _imported_modules(path) if m == "lake" or m.startswith("lake.")}
        foreign = {m for m in own if not m.startswith("lake.nifti") and m != "lake._errors"}
        assert not foreign, f"{path.name} imports {sorted(foreign)}"


def test_tests_and_benchmarks_use_the_public_api_only() -> None:
    users = [*sorted((ROOT / "tests").glob("*.py")), *sorted((ROOT / "benchmarks").glob("*.py"))]
    for path in users:
        private = {m for m in _imported_modules(path) if m.startswith("lake.nifti._")}
        assert not private, f"{path.name} imports private modules {sorted(private)}"


def test_public_names_resolve() -> None:
    for name in lake.nifti.__all__:
        assert getattr(lake.nifti, name) is not None


def test_the_test_data_generator_is_not_shipped() -> None:
    shipped = {p.name for p in (ROOT / "lake").rglob("*.py")}
    assert "nifti_synth.py" not in shipped and "_nifti_synth.py" not in shipped


def test_acquisition_names_are_the_catalog_columns_and_a_row_reads_back_validated() -> None:
    from lake.catalog import ACQUISITION_COLUMNS

    assert tuple(c.name for c in ACQUISITION_COLUMNS) == lake.nifti.ACQUISITION_NAMES
    row = {
        "SOPInstanceUID": "1.2.3",  # not a parameter: left out
        "phase_encoding_direction": "j-",
        "slice_timing": [0.0, 0.5, 0.25],
        "echo_number": None,  # null column: left out
        "epi_variant": "Mr Smith's scan",  # free text never validates
        "total_readout_time": float("nan"),  # nor does a non-finite number
    }
    assert lake.nifti.acquisition_from_row(row) == {
        "phase_encoding_direction": "j-", "slice_timing": [0.0, 0.5, 0.25]}
