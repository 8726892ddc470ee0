"""BIDS export of every vendor series in ../shared/data (dcm_qa and vendors), validated.

tests/test_export_bids.py covers a subset under every built-in profile; this module takes all
of it (about 1,700 files) under ``research``, the profile that keeps the most (descriptions,
shifted dates, sex and age), and checks that the validator reports no error, that every series
is either written, refused by the converter or listed as unclassified, and what the derived
acquisition parameters add where the catalog has them.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

import lake
from lake.export import export_bids
from tests.bids_validator import validate, validator

pytestmark = [pytest.mark.slow, pytest.mark.vendor]


@pytest.fixture(scope="module")
def everything(tmp_path_factory: pytest.TempPathFactory) -> tuple[lake.Lake, Path]:
    from tests.conftest import SHARED_DATA

    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is absent")
    validator()
    root = tmp_path_factory.mktemp("bids-vendors")
    lk = lake.init(root / "lake", vault=root / "vault")
    lk.ingest([str(SHARED_DATA / "dcm_qa" / "In"), str(SHARED_DATA / "vendors")],
              vault=root / "vault", profile="research", scheduler="sync")
    export_bids(lk, "SELECT SeriesInstanceUID FROM series", root / "bids", scheduler="sync")
    return lk, root / "bids"


def test_every_vendor_series_validates(everything: tuple[lake.Lake, Path]) -> None:
    lk, folder = everything
    report = validate(folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    bids = manifest["bids"]
    kinds = Counter((s["datatype"], s["suffix"]) for s in bids["series"])
    reasons = Counter(s["reason"] for s in manifest["skipped"])
    print(f"\nall vendor data (research): {bids['classified']} series classified {dict(kinds)}, "
          f"{bids['unclassified']} unclassified; skipped {dict(reasons)}\n{report.describe()}")
    assert report.errors == [], report.describe()
    series = {r[0] for r in lk.sql("SELECT DISTINCT SeriesInstanceUID FROM instances").fetchall()}
    accounted = {s["series"] for s in bids["series"]} | {s["series"] for s in manifest["skipped"]}
    assert series == accounted
    assert {("func", "bold"), ("dwi", "dwi"), ("anat", "T1w")} <= set(kinds)
    assert any(s["files"] for s in bids["series"] if s["datatype"] == "fmap")
    if "phase_encoding_direction" in lk.sql("SELECT * FROM instances LIMIT 0").columns:
        # derived at ingest: the dcm_qa spin-echo EPI pairs become fmap/epi with dir-
        epi = [s for s in bids["series"] if s["suffix"] == "epi"]
        assert {s["entities"]["dir"] for s in epi} >= {"AP", "PA", "LR", "RL"}
