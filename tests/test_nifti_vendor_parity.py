"""NIfTI from the lake equals dcm2niix from the original files, vendor by vendor, profile by
profile (issue 10.2).

For each built-in profile, one lake ingests the ``In/`` folders of every dcm2niix validation
repository in ``../shared/data`` (dcm_qa and vendors/*), de-identifying on the way in, and
exports every series to NIfTI. Each ``Ref/`` output whose input is present is then found in
the export by what survives de-identification unchanged (pixel hashes, SeriesNumber and
InstanceNumber of its original files) and the dcm2niix file-name suffix, and compared
(tests/nifti_reference.py): shape, affine after canonical reorientation, voxels, data type,
bval/bvec and the sidecar keys of the issue.

Every reference ends up *matched*, *refused* (the lake wrote nothing and said why: only the
refusals listed in ``JUSTIFIED`` are accepted, each explained in docs/nifti.md) or
*mismatched*, which fails the test. The per-repository table is shown in the run's summary
(tests/conftest.py) and recorded as a property of the test (JUnit XML).
"""

from __future__ import annotations

import collections
import json
import shutil
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import lake
from lake.export import export_nifti
from tests.conftest import SHARED_DATA
from tests.nifti_reference import (
    SIDECAR_KEYS,
    Disposition,
    Reference,
    compare_volume,
    group_exported,
    key_statuses,
    reference_suffix,
    references,
)
from tests.part10_equivalence import lake_differences

PROFILES = ("basic", "research", "teaching")


def _repositories() -> list[Path]:
    roots = [SHARED_DATA / "dcm_qa", *sorted((SHARED_DATA / "vendors").glob("dcm_qa_*"))]
    return [r for r in roots if (r / "In").is_dir() and (r / "Ref").is_dir()]


pytestmark = [
    pytest.mark.slow,
    pytest.mark.vendor,
    pytest.mark.skipif(not _repositories(), reason="../shared/data is absent"),
]

#: References the lake does not reproduce, and why (docs/nifti.md, "Refusals").
#: dcm_qa_12bit holds three *different* objects with one SOP Instance UID: the first walked is
#: kept, the others are quarantined as uid_conflict at ingest, never exported.
JUSTIFIED: dict[tuple[str, str], str] = {
    ("dcm_qa_12bit", "2"): "uid_conflict",
    ("dcm_qa_12bit", "3"): "uid_conflict",
}


@dataclass
class Outcome:
    """What became of one reference."""

    repository: str
    stem: str
    status: str  # matched, refused, mismatched
    detail: str = ""
    keys: dict[str, str] = field(default_factory=dict)
    """Per key of the reference sidecar: equal, different or not written (compared ones)."""


@dataclass
class RepositoryRun:
    """One repository ingested into its own lake under one profile, and exported.

    Repositories get a lake each: dcm_qa_ts copies one dcm_qa series (same Series Instance
    UID and number), which a shared lake would rightly merge into one series.
    """

    lake: lake.Lake
    out: Path
    manifest: dict[str, Any]
    rows: list[dict[str, Any]]
    quarantine: list[str]
    by_instance: dict[tuple[str, int | None, int | None], str] = field(default_factory=dict)


@dataclass
class ProfileRun:
    """Every repository under one profile."""

    profile: str
    repositories: dict[str, RepositoryRun]
    outcomes: list[Outcome] = field(default_factory=list)


@pytest.fixture(scope="module")
def all_references() -> dict[str, list[Reference]]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {root.name: [r for r in references(root) if r.series is not None]
                for root in _repositories()}


def _ingest_and_export(root: Path, base: Path, profile: str) -> RepositoryRun:
    vault = base / "vault"
    lk = lake.init(base / "lake", vault=vault)
    lk.ingest([str(root / "In")], vault=vault, profile=profile, scheduler="sync")
    out = base / "out"
    result = export_nifti(lk, "SELECT SeriesInstanceUID FROM series", out, scheduler="sync")
    rows = lk.sql(
        "SELECT SeriesInstanceUID, SeriesNumber, InstanceNumber, pixel_hash, slice_timing, "
        "mosaic_tiles FROM instances"
    ).df().to_dict("records")
    quarantine = [r for (r,) in lk.sql("SELECT reason FROM quarantine").fetchall()]
    state = RepositoryRun(lk, out, result.manifest, rows, quarantine)
    for row in rows:
        number = None if row["SeriesNumber"] is None else int(row["SeriesNumber"])
        instance = None if row["InstanceNumber"] is None else int(row["InstanceNumber"])
        state.by_instance[(row["pixel_hash"], number, instance)] = row["SeriesInstanceUID"]
    return state


@pytest.fixture(scope="module", params=PROFILES)
def run(request: pytest.FixtureRequest,
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProfileRun]:
    profile = str(request.param)
    base = tmp_path_factory.mktemp(f"parity-{profile}")
    yield ProfileRun(profile, {
        root.name: _ingest_and_export(root, base / root.name, profile)
        for root in _repositories()
    })
    shutil.rmtree(base, ignore_errors=True)


def _short_hash(uid: str) -> str:
    import hashlib

    return hashlib.sha256(uid.encode()).hexdigest()[:12]


def _outcomes(run: ProfileRun, refs: dict[str, list[Reference]]) -> list[Outcome]:
    outcomes: list[Outcome] = []
    for repository, repository_refs in refs.items():
        state = run.repositories[repository]
        grouped = group_exported(state.out, state.manifest)
        skips: dict[str, list[str]] = collections.defaultdict(list)
        for skip in state.manifest["skipped"]:
            skips[skip["series"]].append(skip["reason"])
        for ref in repository_refs:
            assert ref.series is not None
            found = {state.by_instance[k] for k in ref.series.instance_keys
                     if k in state.by_instance}
            if not found:
                outcomes.append(Outcome(repository, ref.stem, "refused", "not in the lake"))
                continue
            assert len(found) == 1, (ref.stem, found)
            (uid,) = found
            tag = f"_{_short_hash(uid)}"
            volumes = {
                reference_suffix(stem.split(tag, 1)[1], ref.series.number): files
                for stems in grouped.values() for stem, files in stems.items() if tag in stem
            }
            if ref.suffix not in volumes:
                reasons = ",".join(sorted(set(skips.get(uid, [])))) or "no such volume"
                outcomes.append(Outcome(repository, ref.stem, "refused", reasons))
                continue
            candidates = [r["slice_timing"].tolist() for r in state.rows
                          if r["SeriesInstanceUID"] == uid and r["slice_timing"] is not None
                          and r["mosaic_tiles"] is not None]
            problems = compare_volume(ref, volumes[ref.suffix], candidates)
            ours = json.loads(volumes[ref.suffix][".json"].read_text(encoding="utf-8"))
            keys = key_statuses(ref.sidecar, ours)
            if not problems:  # compared keys with their own rules (SliceTiming...) matched
                keys = {k: "equal" if v == "different" and SIDECAR_KEYS[k][0] is
                        Disposition.COMPARED else v for k, v in keys.items()}
            outcomes.append(Outcome(repository, ref.stem,
                                    "mismatched" if problems else "matched",
                                    "; ".join(problems)[:500], keys))
    return outcomes


def _cached_outcomes(run: ProfileRun, refs: dict[str, list[Reference]]) -> list[Outcome]:
    if not run.outcomes:
        run.outcomes = _outcomes(run, refs)
    return run.outcomes


def _table(profile: str, outcomes: list[Outcome]) -> str:
    counts: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for o in outcomes:
        counts[o.repository][o.status] += 1
    lines = [f"profile {profile}", "| repository | matched | refused | mismatched |",
             "|---|---|---|---|"]
    for repository in sorted(counts):
        c = counts[repository]
        lines.append(f"| {repository} | {c['matched']} | {c['refused']} | {c['mismatched']} |")
    return "\n".join(lines)


def test_every_reference_matches_or_is_refused_for_a_documented_reason(
    run: ProfileRun,
    all_references: dict[str, list[Reference]],
    record_property: Any,
) -> None:
    outcomes = _cached_outcomes(run, all_references)
    table = _table(run.profile, outcomes)
    print("\n" + table)
    record_property(f"report_parity_{run.profile}", table)  # shown in the run summary
    mismatched = [f"{o.repository}/{o.stem}: {o.detail}" for o in outcomes
                  if o.status == "mismatched"]
    assert not mismatched, "\n".join(mismatched)
    refused = {(o.repository, o.stem): o.detail for o in outcomes if o.status == "refused"}
    assert set(refused) == set(JUSTIFIED), refused
    # the refused ones are what the catalog quarantined, for the stated reason
    for (repository, _), reason in JUSTIFIED.items():
        assert reason in run.repositories[repository].quarantine
    assert sum(o.status == "matched" for o in outcomes) >= 90


def _key_table(profile: str, outcomes: list[Outcome]) -> tuple[str, dict[str, Counter[str]]]:
    counts: dict[str, Counter[str]] = collections.defaultdict(collections.Counter)
    for outcome in outcomes:
        for key, status in outcome.keys.items():
            counts[key]["references"] += 1
            counts[key][status] += 1
    by_disposition: dict[Disposition, list[str]] = collections.defaultdict(list)
    for key in counts:
        by_disposition[SIDECAR_KEYS[key][0] if key in SIDECAR_KEYS else Disposition.OWN] \
            .append(key)
    written = sorted(k for k in counts if counts[k]["references"] > counts[k]["not written"])
    lines = [f"profile {profile}: {len(counts)} keys in the compared references, "
             f"{len(written)} written by the lake, "
             f"{sum(1 for k in written if not counts[k]['different'])} of them equal wherever "
             "both write them",
             "| key | disposition | references | written | equal | different |",
             "|---|---|---|---|---|---|"]
    for disposition in Disposition:
        for key in sorted(by_disposition[disposition]):
            c = counts[key]
            lines.append(f"| {key} | {disposition} | {c['references']} | "
                         f"{c['references'] - c['not written']} | {c['equal']} | "
                         f"{c['different']} |")
    return "\n".join(lines), counts


def test_every_sidecar_key_is_written_equal_or_left_out_for_a_stated_reason(
    run: ProfileRun,
    all_references: dict[str, list[Reference]],
    record_property: Any,
) -> None:
    """Issue 10.1: per key of dcm2niix's reference sidecars, whether the lake writes it and
    whether it matches; every key is declared in ``SIDECAR_KEYS`` with its disposition, and
    the declaration is true: compared keys are written and equal, left-out keys never
    written, keys declared not derived are indeed not written."""
    outcomes = [o for o in _cached_outcomes(run, all_references) if o.keys]
    table, counts = _key_table(run.profile, outcomes)
    print("\n" + table)
    record_property(f"report_sidecar_keys_{run.profile}", table)
    assert len(outcomes) >= 90
    assert set(counts) <= set(SIDECAR_KEYS), set(counts) - set(SIDECAR_KEYS)
    wrong = []
    for key, c in counts.items():
        disposition, reason = SIDECAR_KEYS[key]
        written = c["references"] - c["not written"]
        if disposition is Disposition.COMPARED and (c["not written"] or c["different"]):
            wrong.append(f"{key}: compared, but {c['not written']} not written, "
                         f"{c['different']} different")
        if disposition is Disposition.WHERE_WRITTEN and (c["different"] or not written):
            wrong.append(f"{key}: {c['different']} different, written {written} times")
        if disposition in (Disposition.IDENTIFYING, Disposition.FREE_TEXT,
                           Disposition.NOT_DERIVED) and written:
            wrong.append(f"{key}: declared {disposition} ({reason}) but written {written} times")
    assert not wrong, "\n".join(wrong)


def test_mosaics_export_without_any_private_element_in_the_lake(run: ProfileRun) -> None:
    """The CSA header is gone from every stored header; the mosaics exported anyway."""
    state = run.repositories["dcm_qa"]
    mosaics = state.lake.sql(
        "SELECT SeriesInstanceUID, header_json FROM instances WHERE mosaic_tiles IS NOT NULL"
    ).fetchall()
    assert len(mosaics) > 60
    for _, header in mosaics:
        assert not [tag for tag in json.loads(header) if int(tag[:4], 16) % 2 == 1]
    exported = {s for s, _ in mosaics if any(
        f"_{_short_hash(s)}" in f["path"] for f in state.manifest["files"])}
    assert exported == {s for s, _ in mosaics}


def test_acquisition_parameters_are_queryable(run: ProfileRun) -> None:
    """The derived parameters are typed catalog columns that SQL can filter on."""
    by_direction = dict(run.repositories["dcm_qa_xa30"].lake.sql(
        "SELECT phase_encoding_direction, count(*) FROM instances "
        "WHERE phase_encoding_direction IS NOT NULL GROUP BY 1"
    ).fetchall())
    assert set(by_direction) <= {"i", "i-", "j", "j-"} and {"j", "j-"} <= set(by_direction)
    readout = run.repositories["dcm_qa_ge"].lake.sql(
        "SELECT min(total_readout_time), max(total_readout_time) FROM instances "
        "WHERE Manufacturer LIKE 'GE%' AND total_readout_time IS NOT NULL"
    ).fetchall()[0]
    assert readout is not None and 0.01 < readout[0] <= readout[1] < 0.1
    multiband = run.repositories["dcm_qa_xa30"].lake.sql(
        "SELECT max(multiband_acceleration_factor) FROM instances "
        "WHERE len(slice_timing) > 1"
    ).fetchall()[0]
    assert multiband is not None and multiband[0] >= 2
    b_values = run.repositories["dcm_qa_philips"].lake.sql(
        "SELECT count(*) FROM instances WHERE list_max(diffusion_b_values) >= 1000"
    ).fetchall()[0]
    assert b_values is not None and b_values[0] > 100


def test_the_export_reader_reads_every_stored_instance_as_pydicom_does(
        run: ProfileRun) -> None:
    """lake.nifti.read_part10 (what the export reads with) against pydicom, element by
    element, on every de-identified instance of every repository under this profile."""
    fast = slow = 0
    problems: list[str] = []
    for name, state in run.repositories.items():
        quick, other, found = lake_differences(state.lake)
        fast, slow = fast + quick, slow + other
        problems += [f"{name} {d}" for d in found]
    assert problems == []
    assert fast > 1500  # compressed, big endian and deflated instances go to pydicom
