"""Descriptions keep their meaning (issue 10.4): retention of real vendor descriptions.

The series descriptions and protocol names of the vendor data in ``../shared/data`` (dcm2niix's
validation repositories: Siemens, GE, Philips, UIH, Canon; no personal data) are what
researchers select series by. Under the ``research`` profile (Clean Descriptors) at least 95 %
of the distinct values must survive unchanged, while the planted-identifier proofs
(tests/test_deid_proof.py, tests/test_phi_proof.py) find no planted value. The values that
change are printed with the reason for each removed word.
"""

from __future__ import annotations

import copy
from collections import Counter
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.charset import convert_encodings
from pydicom.errors import InvalidDicomError

from lake._errors import DeidRefusedError
from lake.deid import Deidentifier, load_profile
from lake.deid._clean import InstanceIdentifiers, explain
from lake.deid._engine import _Call
from lake.vault import Secret
from tests.conftest import SHARED_DATA

KEYWORDS = ("SeriesDescription", "ProtocolName")
GOAL = 0.95
pytestmark = pytest.mark.vendor


def _files() -> list[Path]:
    roots = [SHARED_DATA / "dcm_qa" / "In", *sorted((SHARED_DATA / "vendors").glob("*/In"))]
    return sorted(p for root in roots if root.is_dir() for p in root.rglob("*") if p.is_file())


def _why(engine: Deidentifier, ds: object, text: str) -> str:
    """The words of ``text`` that cleaning removes from this instance, and why."""
    call = _Call(Counter(), convert_encodings(["ISO_IR 6"]), "")
    engine._collect_identifiers(ds, call)  # type: ignore[arg-type]
    vocabulary = engine.profile.vocabulary
    ids = InstanceIdentifiers(*call.identifying, vocabulary)
    return "; ".join(f"{fragment!r}: {reason}" for fragment, reason in explain(text, vocabulary,
                                                                             ids))


def test_research_keeps_vendor_descriptions(record_property: pytest.RecordProperty) -> None:
    files = _files()
    if not files:
        pytest.skip("../shared/data (dcm_qa, vendors) is absent")
    engine = Deidentifier(load_profile("research"), Secret(b"retention-secret-0123456789abcd"))
    outcomes: dict[str, set[str]] = {}
    reasons: dict[str, str] = {}
    for path in files:
        try:
            ds = dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError):
            continue  # PDFs, spreadsheets, README files of the repositories
        before = {k: str(ds[k].value) for k in KEYWORDS if k in ds and ds[k].value}
        if not before:
            continue
        original = copy.deepcopy(ds)
        try:
            engine.apply(ds)
        except DeidRefusedError as exc:
            for value in before.values():
                outcomes.setdefault(value, set()).add(f"<refused: {exc.reason}>")
            continue
        for keyword, value in before.items():
            after = str(ds.get(keyword, "<removed>"))
            outcomes.setdefault(value, set()).add(after)
            if after != value and value not in reasons:
                reasons[value] = _why(engine, original, value)
    assert len(outcomes) >= 80, len(outcomes)  # the repositories' distinct values were read
    changed = {v: sorted(o) for v, o in outcomes.items() if o != {v}}
    kept = len(outcomes) - len(changed)
    rate = kept / len(outcomes)
    report = [f"research keeps {kept} of {len(outcomes)} distinct SeriesDescription/ProtocolName "
              f"values unchanged ({rate:.1%})"]
    report += [f"  {v!r} -> {' | '.join(o)}  [{reasons.get(v, '')}]" for v, o in
               sorted(changed.items())]
    print("\n".join(report))
    record_property("retention", f"{rate:.4f}")
    record_property("changed", repr(changed))
    assert rate >= GOAL, "\n".join(report)
