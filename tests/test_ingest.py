"""Ingest: real DICOM in, one row per instance, pixels content-addressed, bad input quarantined."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file

import lake
from lake.ingest import decrypt, quarantine_key
from tests.conftest import SAMPLE_FILES


def _ingest(
    lk: lake.Lake, vault: Path, *sources: Path, **kwargs: object
) -> lake.ingest.IngestSummary:
    kwargs.setdefault("scheduler", "sync")
    return lk.ingest([str(s) for s in sources], vault=vault, **kwargs)  # type: ignore[arg-type]


def test_ingest_real_files_one_row_per_instance(
    lk: lake.Lake, vault_dir: Path, samples: Path, ct_folder: Path
) -> None:
    summary = _ingest(lk, vault_dir, samples, ct_folder)
    assert summary.files_seen == len(SAMPLE_FILES) + 12
    assert summary.quarantined == 0
    assert summary.ingested == len(SAMPLE_FILES) + 12 - summary.duplicates
    rows = lk.sql("SELECT count(*), count(DISTINCT SOPInstanceUID) FROM instances").fetchall()[0]
    assert rows[0] == rows[1] == summary.ingested
    modalities = {m for (m,) in lk.sql("SELECT DISTINCT Modality FROM instances").fetchall()}
    assert {"CT", "MR", "RTPLAN"} <= modalities


def test_columns_are_typed(lk: lake.Lake, vault_dir: Path, ct_folder: Path) -> None:
    _ingest(lk, vault_dir, ct_folder)
    types = {r[0]: r[1] for r in lk.sql("DESCRIBE instances").fetchall()}
    assert types["StudyDate"] == "DATE"
    assert types["StudyTime"] == "TIME"
    assert types["SliceThickness"] == "DOUBLE"
    assert types["InstanceNumber"] == "BIGINT"
    assert types["PixelSpacing"] == "DOUBLE[]"
    assert types["ImageType"] == "VARCHAR[]"
    assert types["ingested_at"] == "TIMESTAMP WITH TIME ZONE"
    z = lk.sql(
        "SELECT ImagePositionPatient[3] FROM instances ORDER BY ImagePositionPatient[3]"
    ).fetchall()
    assert [v for (v,) in z] == pytest.approx([-75.0 + 2.5 * i for i in range(12)])


def test_pixels_are_stored_once_by_content(lk: lake.Lake, vault_dir: Path, ct_folder: Path) -> None:
    _ingest(lk, vault_dir, ct_folder)
    rows = lk.sql("SELECT SOPInstanceUID, pixel_hash, pixel_bytes FROM instances").fetchall()
    originals = {dcmread(p).PixelData for p in ct_folder.iterdir()}
    stored = {lk.blobs.get(h) for _, h, _ in rows}
    assert stored == originals  # de-identification left pixels bit-identical
    assert all(n == len(lk.blobs.get(h)) for _, h, n in rows)


def test_header_json_is_queryable(lk: lake.Lake, vault_dir: Path, ct_folder: Path) -> None:
    _ingest(lk, vault_dir, ct_folder)
    (modality, uri) = lk.sql(
        """SELECT json_extract_string(header_json, '$."00080060".Value[0]'),
                  json_extract_string(header_json, '$."7FE00010".BulkDataURI')
           FROM instances LIMIT 1"""
    ).fetchall()[0]
    assert modality == "CT"
    assert uri.startswith("sha256:")


def test_reingest_adds_nothing(
    lk: lake.Lake, vault_dir: Path, samples: Path, ct_folder: Path
) -> None:
    first = _ingest(lk, vault_dir, samples, ct_folder)
    blobs = set(lk.blobs.keys())
    count = lk.sql("SELECT count(*) FROM instances").fetchall()[0][0]
    second = _ingest(lk, vault_dir, samples, ct_folder)
    assert second.ingested == 0
    assert second.blobs_written == 0
    assert second.duplicates == first.files_seen - first.quarantined
    assert set(lk.blobs.keys()) == blobs
    assert lk.sql("SELECT count(*) FROM instances").fetchall()[0][0] == count


def test_zip_archives_are_read(
    lk: lake.Lake, vault_dir: Path, ct_folder: Path, tmp_path: Path
) -> None:
    archive = tmp_path / "export.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(ct_folder.iterdir()):
            zf.write(path, f"DICOM/{path.name}")
    summary = _ingest(lk, vault_dir, archive)
    assert summary.ingested == 12
    again = _ingest(lk, vault_dir, ct_folder)  # the same instances from the folder
    assert again.ingested == 0 and again.duplicates == 12


def test_batches_commit_separately(lk: lake.Lake, vault_dir: Path, ct_folder: Path) -> None:
    before = lk.version
    summary = _ingest(lk, vault_dir, ct_folder, batch_size=5)
    assert len(summary.batches) == 3
    assert lk.version == before + 3
    batches = lk.sql(
        "SELECT ingested, files_seen, actions FROM batches ORDER BY finished_at"
    ).fetchall()
    assert [b[0] for b in batches] == [5, 5, 2]
    assert all(isinstance(b[2], dict) and sum(b[2].values()) > 0 for b in batches)


def _bad_inputs(folder: Path) -> dict[str, str]:
    """Files that must be quarantined, with the reason each must get."""
    folder.mkdir(parents=True)
    ct = Path(get_testdata_file("CT_small.dcm"))  # type: ignore[arg-type]
    data = ct.read_bytes()
    (folder / "empty.dcm").write_bytes(b"")
    (folder / "notes.txt").write_text("Patient Doe^John was scanned on 2020-01-01\n")
    (folder / "garbage.dcm").write_bytes(bytes(range(256)) * 40)
    (folder / "truncated.dcm").write_bytes(data[: len(data) - 5000])
    (folder / "header_only.dcm").write_bytes(data[:1200])
    j2k = Path(get_testdata_file("MR_small_jp2klossless.dcm")).read_bytes()  # type: ignore[arg-type]
    (folder / "truncated_j2k.dcm").write_bytes(j2k[: len(j2k) - 100])
    shutil.copy(get_testdata_file("DICOMDIR"), folder / "DICOMDIR")
    return {
        "empty.dcm": "empty",
        "notes.txt": "not_dicom",  # skipped as plain text unless strict
        "garbage.dcm": "not_dicom",
        "truncated.dcm": "truncated",
        "header_only.dcm": "truncated",
        "truncated_j2k.dcm": "truncated",
        "DICOMDIR": "dicomdir",
    }


@pytest.mark.parametrize("strict", [False, True])
def test_bad_input_is_quarantined_and_the_rest_lands(
    lk: lake.Lake, vault_dir: Path, ct_folder: Path, tmp_path: Path, strict: bool
) -> None:
    expected = _bad_inputs(tmp_path / "in" / "bad")
    if not strict:  # plain text is skipped and counted, not quarantined
        del expected["notes.txt"]
    summary = _ingest(lk, vault_dir, tmp_path / "in" / "bad", ct_folder, strict=strict)
    assert summary.sources.skipped == ({} if strict else {"text": 1})
    assert summary.ingested == 12
    assert summary.quarantined == len(expected)
    assert sorted(summary.reasons.elements()) == sorted(expected.values())
    rows = lk.sql("SELECT reason, message, object_key, source_sha256 FROM quarantine").fetchall()
    assert sorted(r[0] for r in rows) == sorted(expected.values())
    assert all(r[1] and "Doe" not in r[1] for r in rows)


def test_quarantined_originals_are_sealed(lk: lake.Lake, vault_dir: Path, tmp_path: Path) -> None:
    _bad_inputs(tmp_path / "in" / "bad")
    _ingest(lk, vault_dir, tmp_path / "in" / "bad", strict=True)
    notes = (tmp_path / "in" / "bad" / "notes.txt").read_bytes()
    key = quarantine_key(lk.secret(vault_dir))
    rows = lk.sql("SELECT object_key, size_bytes FROM quarantine").fetchall()
    (object_key,) = [key for key, size in rows if size == len(notes)]
    sealed = (Path(lk.root) / object_key).read_bytes()
    assert b"Doe^John" not in sealed
    assert decrypt(sealed, key) == notes
    for path in Path(lk.root).rglob("*"):
        if path.is_file():
            assert b"Doe^John" not in path.read_bytes()


def test_source_paths_are_never_stored(lk: lake.Lake, vault_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "in" / "Smith^Johnathan_MRN99887766"
    folder.mkdir(parents=True)
    shutil.copy(get_testdata_file("CT_small.dcm"), folder / "Smith^Johnathan_MRN99887766.dcm")
    (folder / "Smith^Johnathan_MRN99887766.txt").write_text("x")  # quarantined too
    _ingest(lk, vault_dir, folder)
    for path in Path(lk.root).rglob("*"):
        assert "Johnathan" not in path.name
        if path.is_file():
            assert b"Johnathan" not in path.read_bytes()
            assert b"99887766" not in path.read_bytes()


def test_missing_source_is_named_by_position(
    lk: lake.Lake, vault_dir: Path, tmp_path: Path
) -> None:
    with pytest.raises(lake.IngestError, match="source argument 2 does not exist"):
        _ingest(lk, vault_dir, tmp_path, tmp_path / "Doe^John")


def test_as_of_queries_a_past_version(
    lk: lake.Lake, vault_dir: Path, samples: Path, ct_folder: Path
) -> None:
    _ingest(lk, vault_dir, ct_folder)
    v1 = lk.version
    _ingest(lk, vault_dir, samples)
    assert lk.version > v1
    now = lk.sql("SELECT count(*) FROM instances").fetchall()[0][0]
    then = lk.sql("SELECT count(*) FROM instances", as_of=v1).fetchall()[0][0]
    assert then == 12 and now > then
    with pytest.raises(lake.CatalogError, match="version 999"):
        lk.sql("SELECT 1", as_of=999)


def test_verify_catches_corrupt_and_missing_blobs(
    lk: lake.Lake, vault_dir: Path, ct_folder: Path
) -> None:
    _ingest(lk, vault_dir, ct_folder)
    assert lk.verify().ok
    keys = sorted(lk.blobs.keys())
    corrupt = Path(lk.blobs.path_of(keys[0]))
    data = bytearray(corrupt.read_bytes())
    data[100] ^= 0xFF
    corrupt.write_bytes(bytes(data))
    Path(lk.blobs.path_of(keys[1])).unlink()
    report = lk.verify()
    assert not report.ok
    assert report.corrupt == [keys[0]]
    assert report.missing == [keys[1]]


def test_ingest_on_dask_processes(lk: lake.Lake, vault_dir: Path, ct_folder: Path) -> None:
    summary = _ingest(lk, vault_dir, ct_folder, scheduler="processes", workers=2)
    assert summary.ingested == 12
    assert lk.verify().ok


def test_header_json_round_trips_through_pydicom(
    lk: lake.Lake, vault_dir: Path, samples: Path
) -> None:
    from pydicom import Dataset

    _ingest(lk, vault_dir, samples)
    for (text,) in lk.sql("SELECT header_json FROM instances").fetchall():
        ds = Dataset.from_json(json.loads(text), bulk_data_uri_handler=lambda *_: b"")
        assert ds.PatientIdentityRemoved == "YES"


def test_burned_in_risk_is_quarantined_by_the_basic_profile(
    lk: lake.Lake, vault_dir: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "in" / "sc"
    folder.mkdir(parents=True)
    shutil.copy(get_testdata_file("SC_rgb_rle.dcm"), folder / "a.dcm")  # secondary capture
    shutil.copy(get_testdata_file("CT_small.dcm"), folder / "b.dcm")
    summary = _ingest(lk, vault_dir, folder)
    assert summary.ingested == 1
    assert summary.quarantined == 1
    (reason,) = summary.reasons
    assert "burned" in reason


def test_filters_push_down_over_many_files(lk: lake.Lake, vault_dir: Path, ct_folder: Path) -> None:
    _ingest(lk, vault_dir, ct_folder, batch_size=4)  # three commits, three Parquet files
    assert lk.sql("SELECT count(*) FROM instances WHERE Modality = 'CT'").fetchall() == [(12,)]
    uid = lk.sql("SELECT max(SOPInstanceUID) FROM instances").fetchall()[0][0]
    query = f"SELECT count(*) FROM instances WHERE SOPInstanceUID = '{uid}'"
    assert lk.sql(query).fetchall() == [(1,)]


def test_every_catalog_version_stays_readable(lk: lake.Lake) -> None:
    from lake.catalog import TABLES
    from lake.catalog._tables import RETENTION

    for table in TABLES:
        config = lk.tables.open(table.name).metadata().configuration
        assert {k: config.get(k) for k in RETENTION} == RETENTION, table.name


def test_a_lake_from_an_older_release_still_queries(lk: lake.Lake, lake_root: Path) -> None:
    """A table added in a later release (here: pulls) reads as empty until 'lake init' adds it."""
    shutil.rmtree(lake_root / "tables" / "pulls")
    old = lake.open(lake_root)
    assert old.sql("SELECT count(*) FROM pulls").fetchall() == [(0,)]
    assert old.sql("SELECT count(*) FROM instances").fetchall() == [(0,)]
    lake.init(lake_root, vault=lake_root.parent / "vault")
    assert (lake_root / "tables" / "pulls" / "_delta_log").is_dir()
