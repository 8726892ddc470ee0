"""NIfTI export of cohorts: names from pseudonyms, voxels from stored pixels, refusals reported."""

from __future__ import annotations

import gzip
import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file

import lake
from lake.export import ExportResult, create_cohort, export_bids, export_nifti
from tests.series import write_ct_series
from tests.test_export import identifying_values, tree

NIFTI_STEM = re.compile(r"^sub-[A-Za-z0-9]{1,64}/ses-[0-9a-f]{12}/(x|m?\d+)_[0-9a-f]{12}$")


@pytest.fixture
def inputs(tmp_path: Path) -> dict[str, list[Path]]:
    """A complete 12-slice CT, a CT series with a missing slice, and an RT plan."""
    complete = write_ct_series(tmp_path / "in" / "ct", 12)
    gappy = write_ct_series(tmp_path / "in" / "gap", 8, patient_id="PAT-0002",
                            patient_name="Roe^Richard")
    gappy.pop(4).unlink()
    plan = tmp_path / "in" / "rtplan.dcm"
    source = get_testdata_file("rtplan.dcm")
    assert source is not None
    shutil.copy(source, plan)
    return {"ct": complete, "gap": gappy, "plan": [plan]}


@pytest.fixture
def nifti_lake(lk: lake.Lake, vault_dir: Path, inputs: dict[str, list[Path]]) -> lake.Lake:
    lk.ingest([str(inputs["ct"][0].parents[1])], vault=vault_dir, scheduler="sync")
    create_cohort(lk, "all", "SELECT SeriesInstanceUID FROM series")
    return lk


def test_each_series_becomes_a_volume_named_from_pseudonyms(
    nifti_lake: lake.Lake, inputs: dict[str, list[Path]], tmp_path: Path
) -> None:
    result = export_nifti(nifti_lake, "all", tmp_path / "out", scheduler="sync")
    names = sorted(f.path for f in result.files)
    assert len(names) == 2, names  # one volume + sidecar; the other two series are refused
    stems = {n.rsplit(".", 1)[0] for n in names}
    assert len(stems) == 1 and NIFTI_STEM.match(stems.pop())
    assert {Path(n).suffix for n in names} == {".nii", ".json"}

    image = nib.load(tmp_path / "out" / next(n for n in names if n.endswith(".nii")))
    assert isinstance(image, nib.Nifti1Image)
    assert image.shape == (128, 128, 12)
    data = np.asarray(image.dataobj)
    for path in inputs["ct"]:  # voxel k is the slice at the k-th position along the normal
        ds = dcmread(path)
        k = int(ds.InstanceNumber) - 1
        expected = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        np.testing.assert_array_equal(data[:, ::-1, k].T, expected)

    reasons = {s.reason for s in result.skipped}
    assert reasons == {"missing_slices", "no_pixel_data"}
    assert all(s.instance is None and s.message for s in result.skipped)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["kind"] == "nifti"
    assert {s["reason"] for s in manifest["skipped"]} == reasons
    assert manifest["options"] == {"compress": False, "level": None}


def test_no_identifying_value_in_volumes_or_sidecars(
    nifti_lake: lake.Lake, inputs: dict[str, list[Path]], tmp_path: Path
) -> None:
    export_nifti(nifti_lake, "all", tmp_path / "out", scheduler="sync")
    secrets = {s.encode() for s in identifying_values(inputs["ct"][0].parents[1])}
    assert b"Doe^Jane" in secrets and b"PAT-0001" in secrets
    for name, data in tree(tmp_path / "out").items():
        assert not [s for s in secrets if s in data or s.decode() in name], name


def test_gzip_is_deterministic_per_level(nifti_lake: lake.Lake, tmp_path: Path) -> None:
    plain = export_nifti(nifti_lake, "all", tmp_path / "plain", scheduler="sync")
    fast = export_nifti(nifti_lake, "all", tmp_path / "fast", compress=True, level=1,
                        scheduler="sync")
    export_nifti(nifti_lake, "all", tmp_path / "again", compress=True, level=1,
                 scheduler="threads", workers=2)
    best = export_nifti(nifti_lake, "all", tmp_path / "best", compress=True, level=9,
                        scheduler="sync")
    assert tree(tmp_path / "fast") == tree(tmp_path / "again")
    nii = next(f for f in plain.files if f.path.endswith(".nii"))
    fast_gz = next(f for f in fast.files if f.path.endswith(".nii.gz"))
    best_gz = next(f for f in best.files if f.path.endswith(".nii.gz"))
    assert fast_gz.path == nii.path + ".gz" == best_gz.path
    assert fast_gz.sha256 != best_gz.sha256
    raw = (tmp_path / "plain" / nii.path).read_bytes()
    assert gzip.decompress((tmp_path / "fast" / fast_gz.path).read_bytes()) == raw
    assert gzip.decompress((tmp_path / "best" / best_gz.path).read_bytes()) == raw
    assert best.manifest["options"] == {"compress": True, "level": 9}


def test_level_out_of_range_is_refused(nifti_lake: lake.Lake, tmp_path: Path) -> None:
    with pytest.raises(lake.ConfigError, match=r"1\.\.9"):
        export_nifti(nifti_lake, "all", tmp_path / "out", compress=True, level=0)
    assert not (tmp_path / "out").exists()


@pytest.fixture
def bids_lake(lk: lake.Lake, vault_dir: Path, tmp_path: Path) -> lake.Lake:
    from tests.test_export_bids import generated_session

    generated_session(tmp_path / "session")
    lk.ingest([str(tmp_path / "session")], vault=vault_dir, scheduler="sync")
    create_cohort(lk, "all", "SELECT SeriesInstanceUID FROM series")
    return lk


@pytest.mark.parametrize(("export", "lake_fixture"), [
    (export_nifti, "nifti_lake"), (export_bids, "bids_lake"),
], ids=["nifti", "bids"])
def test_volumes_reach_the_disk_before_the_manifest(
    export: Callable[..., ExportResult], lake_fixture: str, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest,
) -> None:
    """manifest.json acknowledges the export: every file it lists, and every folder from
    the file's own up to the output folder (those naming it, created by the export), is
    forced to disk (fsync) before the manifest is written, so a machine crash cannot keep
    the manifest and lose a volume it lists (a re-run would then refuse the folder)."""
    from lake.export import _manifest, _runner

    lk: lake.Lake = request.getfixturevalue(lake_fixture)
    events: list[str] = []
    write_json = _runner.write_json

    def recorded(fsync: Callable[[Path], None]) -> Callable[[Path], None]:
        def recorded_fsync(path: Path) -> None:
            events.append(str(path))
            fsync(path)
        return recorded_fsync

    def recorded_write_json(path: Path, data: object) -> bytes:
        events.append("manifest")
        return write_json(path, data)

    monkeypatch.setattr(_manifest, "_fsync_file", recorded(_manifest._fsync_file))
    monkeypatch.setattr(_manifest, "fsync_folder", recorded(_manifest.fsync_folder))
    monkeypatch.setattr(_runner, "write_json", recorded_write_json)
    out = tmp_path / "out"
    result = export(lk, "all", out, scheduler="sync")
    before = events[: events.index("manifest")]
    listed = [out / f.path for f in result.files if f.path != "manifest.json"]
    assert len(listed) >= 2  # a volume and its sidecar at least
    assert any(len(p.relative_to(out).parts) >= 3 for p in listed)  # sub-*/ses-*/ or deeper
    assert sorted(str(p) for p in listed if str(p) not in before) == []
    folders = {str(f) for p in listed for f in p.parents if f == out or out in f.parents}
    assert sorted(folders - set(before)) == []


def test_acquisition_rows_validate_each_distinct_row_once_with_its_own_result() -> None:
    """The plan validates a row of acquisition parameters once per distinct row; rows equal
    in Python but not in bits or types (-0.0 and 0.0) are told apart, so each instance gets
    exactly what acquisition_from_row gives it alone."""
    import math

    from lake.export._to_nifti import _AcquisitionRows
    from lake.nifti import acquisition_from_row

    base = {"slice_timing": [0.0, 0.5, 1.0], "volume_delay": 0.0, "echo_number": 2,
            "phase_encoding_direction": "j-", "interpolation_2d": False,
            "table_position": [0.0, -0.0, 12.5], "total_readout_time": None}
    rows = [
        base,
        dict(base),  # equal values: the first row's result, shared
        {**base, "volume_delay": -0.0},  # == 0.0 but not the same value
        {**base, "table_position": [-0.0, -0.0, 12.5]},
        {**base, "echo_number": 0},  # out of range: left out
        {**base, "phase_encoding_direction": "DOE^JOHN"},  # not a choice: left out
    ]
    validated = _AcquisitionRows()
    got = [validated(row) for row in rows]
    for row, result in zip(rows, got, strict=True):
        expected = acquisition_from_row(row)
        assert result == expected
        assert json.dumps(result, sort_keys=True) == json.dumps(expected, sort_keys=True)
    assert got[1] is got[0]
    assert math.copysign(1, got[2]["volume_delay"]) == -1.0
    assert json.dumps(got[3]["table_position"]) == "[-0.0, -0.0, 12.5]"
    assert "echo_number" not in got[4] and "phase_encoding_direction" not in got[5]
    assert len({id(r) for r in got}) == 5


def test_plan_rows_are_the_catalog_rows(nifti_lake: lake.Lake) -> None:
    """The plan's instance rows, converted column by column, are the catalog's rows as
    Table.to_pylist gives them (the plan's acquisitions included), member by member."""
    from lake.export import load_cohort
    from lake.export._runner import _REF_COLUMNS, _load_refs
    from lake.export._to_nifti import nifti_layout
    from lake.nifti import ACQUISITION_NAMES, acquisition_from_row

    cohort = load_cohort(nifti_lake, "all")
    files = nifti_lake.tables.data_files("instances", cohort.catalog_version)
    columns = [c for c in ACQUISITION_NAMES if c in files.schema.names]
    assert columns
    refs, _located = _load_refs(cohort, columns, files)
    names = list(dict.fromkeys([*_REF_COLUMNS, *columns]))
    rows = {r["SOPInstanceUID"]: r for path in files.paths
            for r in files.read(path, names).to_pylist()}
    assert [r.sop_uid for r in refs] == [m.sop_uid for m in cohort.members]
    for ref, member in zip(refs, cohort.members, strict=True):
        row = rows[member.sop_uid]
        assert (ref.series_uid, ref.study_uid, ref.patient_id, ref.series_number,
                ref.instance_number, ref.modality, ref.pixel_hash, ref.pixel_vr, ref.profile,
                ref.profile_version, ref.profile_sha256) == (
            row["SeriesInstanceUID"], row["StudyInstanceUID"], row["PatientID"],
            row["SeriesNumber"], row["InstanceNumber"], row["Modality"], row["pixel_hash"],
            row["pixel_vr"], row["profile"], row["profile_version"], row["profile_sha256"])
        assert ref.header_sha256 == member.header_sha256
        assert ref.extra == {c: row[c] for c in columns}
        assert list(ref.extra) == columns
    plans = nifti_layout(refs)
    planned = {sop: acq for p in plans for sop, acq in p.meta["acquisitions"].items()}
    assert planned == {sop: acquisition_from_row(rows[sop]) for sop in rows}


def test_the_export_reads_instances_through_the_public_reader(
    nifti_lake: lake.Lake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The export looks up ``lake.nifti.read_part10`` for each series, so a caller (the
    benchmark's pydicom column) that replaces the public name changes what the export reads."""
    import lake.nifti

    fast = lake.nifti.read_part10
    read: list[int] = []

    def counting(*args: object, **kwargs: object) -> object:
        read.append(1)
        return fast(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(lake.nifti, "read_part10", counting)
    result = export_nifti(nifti_lake, "all", tmp_path / "out", scheduler="sync")
    assert result.files and len(read) >= 2


def test_the_series_of_an_export_share_one_bounded_value_cache(
    nifti_lake: lake.Lake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One ValueCache for every series of an (in-process) export, and the same files and
    manifest as with a cache per series (the bound reached at every series)."""
    import lake.nifti
    from lake.export import _to_nifti

    fast = lake.nifti.read_part10
    caches: list[int] = []

    def recording(*args: object, **kwargs: object) -> object:
        caches.append(id(kwargs["cache"]))
        return fast(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(lake.nifti, "read_part10", recording)
    shared = export_nifti(nifti_lake, "all", tmp_path / "shared", compress=True,
                          scheduler="sync")
    assert len(caches) >= 19 and len(set(caches)) == 1  # the two CT series
    caches.clear()
    monkeypatch.setattr(_to_nifti, "_CACHE_ENTRIES", -1)  # a new cache for every series
    alone = export_nifti(nifti_lake, "all", tmp_path / "alone", compress=True,
                         scheduler="sync")
    assert len(set(caches)) >= 2
    assert tree(tmp_path / "shared") == tree(tmp_path / "alone")
    assert [(f.path, f.sha256) for f in shared.files] == [(f.path, f.sha256) for f in alone.files]
