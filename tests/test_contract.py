"""One contract, two storages: every test runs on a local folder and on an S3-compatible server
(moto in server mode on loopback, as in tests/test_s3.py): ingest, query, verify, cohorts,
export, maintenance, a cluster run, the DICOM server (C-STORE, C-FIND, C-GET) and DICOMweb
(QIDO-RS, WADO-RS) behave alike."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread

import lake
from lake.export import create_cohort, export_dicom, export_nifti, list_cohorts, load_cohort
from lake.steward import compact
from tests.series import write_ct_series
from tests.test_s3 import s3_endpoint, s3_env  # noqa: F401 - pytest fixtures

VIEWS = {
    "series": ("SELECT SeriesInstanceUID, instance_count FROM series",
               "SELECT SeriesInstanceUID, count(*) FROM instances GROUP BY 1"),
    "studies": ("SELECT StudyInstanceUID, NumberOfStudyRelatedInstances FROM studies",
                "SELECT StudyInstanceUID, count(*) FROM instances GROUP BY 1"),
    "patients": ("SELECT PatientID, NumberOfPatientRelatedInstances FROM patients",
                 "SELECT PatientID, count(*) FROM instances GROUP BY 1"),
}


@pytest.fixture(params=["local", "s3"])
def root(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "local":
        yield str(tmp_path / "lake")
    else:
        env = request.getfixturevalue("s3_env")
        yield f"s3://{env['BUCKET']}/lake"


@pytest.fixture
def filled(root: str, tmp_path: Path, samples: Path) -> tuple[lake.Lake, Path]:
    vault = tmp_path / "vault"
    lk = lake.init(root, vault=vault)
    write_ct_series(tmp_path / "ct", 9)
    lk.ingest([str(tmp_path / "ct")], vault=vault, scheduler="sync", batch_size=4)
    lk.ingest([str(samples)], vault=vault, scheduler="sync")
    lk.refresh()
    return lk, vault


def _views_exact(lk: lake.Lake) -> None:
    for name, (view, reference) in VIEWS.items():
        assert sorted(lk.sql(view).fetchall(), key=str) == sorted(
            lk.sql(reference).fetchall(), key=str), name


def test_ingest_is_idempotent_and_queries_answer(
    filled: tuple[lake.Lake, Path], tmp_path: Path
) -> None:
    lk, vault = filled
    n = lk.sql("SELECT count(*) FROM instances").fetchall()[0][0]
    assert n > 9
    again = lk.ingest([str(tmp_path / "ct")], vault=vault, scheduler="sync")
    assert again.ingested == 0 and again.blobs_written == 0
    lk.refresh()
    assert lk.sql("SELECT count(*) FROM instances").fetchall() == [(n,)]
    _views_exact(lk)
    (uid, series) = lk.sql("SELECT SOPInstanceUID, SeriesInstanceUID FROM instances "
                           "ORDER BY SOPInstanceUID LIMIT 1").fetchall()[0]
    assert lk.sql(f"SELECT SeriesInstanceUID FROM instances WHERE SOPInstanceUID = '{uid}'"
                  ).fetchall() == [(series,)]
    first = lk.sql("SELECT count(*) FROM instances", as_of=1).fetchall()[0][0]
    assert 0 < first < n  # the first batch of 4
    rows = lk.sql("SELECT header_sha256, header_dicom FROM instances").fetchall()
    assert all(h == hashlib.sha256(d).hexdigest() for h, d in rows)


def test_verify_finds_a_corrupt_blob(filled: tuple[lake.Lake, Path]) -> None:
    lk, _ = filled
    assert lk.verify().ok
    (blob,) = lk.sql("SELECT pixel_hash FROM instances WHERE pixel_hash IS NOT NULL "
                     "ORDER BY pixel_hash LIMIT 1").fetchall()[0]
    path = lk.location.join("blobs", "sha256", blob[7:9], blob[9:11], blob[7:])
    assert lk.location.fs.exists(path)
    lk.location.fs.pipe_file(path, b"tampered")
    report = lk.verify()
    assert not report.ok and report.corrupt == [blob]


def test_cohort_and_export_give_the_stored_instances(
    filled: tuple[lake.Lake, Path], tmp_path: Path
) -> None:
    lk, _ = filled
    cohort = create_cohort(lk, "ct", "SELECT SeriesInstanceUID FROM series WHERE Modality = 'CT'")
    assert [c.name for c in list_cohorts(lk)] == ["ct"]
    assert load_cohort(lk, "ct").members == cohort.members
    result = export_dicom(lk, "ct", tmp_path / "out", scheduler="sync")
    exported = {f.path: f for f in result.files if f.path.endswith(".dcm")}
    assert len(exported) == len(cohort.members)
    stored = dict(lk.sql("SELECT SOPInstanceUID, header_sha256 FROM instances").fetchall())
    for record in exported.values():
        data = (tmp_path / "out" / record.path).read_bytes()
        assert hashlib.sha256(data).hexdigest() == record.sha256
        ds = dcmread(io.BytesIO(data))
        assert str(ds.SOPInstanceUID) in stored
    import nibabel as nib

    (series,) = lk.sql("SELECT SeriesInstanceUID FROM series WHERE instance_count = 9").fetchall()[0]
    nifti = export_nifti(lk, f"SELECT '{series}' AS SeriesInstanceUID", tmp_path / "nii",
                         scheduler="sync")
    (volume,) = [f.path for f in nifti.files if f.path.endswith(".nii")]
    image = nib.load(tmp_path / "nii" / volume)
    assert image.shape[2] == 9


def test_compaction_keeps_every_answer(filled: tuple[lake.Lake, Path]) -> None:
    lk, _ = filled
    before = sorted(lk.sql("SELECT SOPInstanceUID, pixel_hash FROM instances").fetchall())
    reports = {r.table: r for r in compact(lk)}
    assert reports["instances"].files_before > 1 and reports["instances"].files_after == 1
    lk.refresh()
    assert sorted(lk.sql("SELECT SOPInstanceUID, pixel_hash FROM instances").fetchall()) == before
    _views_exact(lk)
    assert lk.verify().ok


@pytest.mark.slow
def test_ingest_on_a_cluster_matches(root: str, tmp_path: Path) -> None:
    import logging

    from distributed import LocalCluster

    write_ct_series(tmp_path / "ct", 12)
    vault = tmp_path / "vault"
    lk = lake.init(root, vault=vault)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=":0", silence_logs=logging.CRITICAL) as cluster:
        summary = lk.ingest([str(tmp_path / "ct")], vault=vault,
                            scheduler=str(cluster.scheduler_address), batch_size=5)
    assert summary.ingested == 12
    lk.refresh()
    assert lk.sql("SELECT count(DISTINCT pixel_hash) FROM instances").fetchall() == [(12,)]
    assert lk.verify().ok


@pytest.mark.network
def test_dicom_server_stores_finds_and_gets(
    root: str, tmp_path: Path
) -> None:
    from lake.net import DicomServer, ServerConfig
    from tests.net_peers import dcmtk, require

    require("storescu", "findscu", "getscu")
    vault = tmp_path / "vault"
    lk = lake.init(root, vault=vault)
    write_ct_series(tmp_path / "ct", 4)
    server = DicomServer(lk, lk.secret(vault), ServerConfig(port=0, commit_interval=225))
    server.start()
    try:
        port = str(server.port)
        stored = dcmtk("storescu", "-aec", "LAKE", "+sd", "127.0.0.1", port, tmp_path / "ct")
        assert stored.returncode == 0, stored.stderr
        server.committer.flush()
        found_dir = tmp_path / "found"
        found_dir.mkdir()
        found = dcmtk("findscu", "-S", "-aec", "LAKE", "-X", "-od", found_dir, "-k",
                      "QueryRetrieveLevel=STUDY", "-k", "StudyInstanceUID", "127.0.0.1", port)
        assert found.returncode == 0 and len(list(found_dir.iterdir())) == 1
        (uid,) = lake.open(root).sql("SELECT any_value(StudyInstanceUID) FROM instances"
                                     ).fetchall()[0]
        got = tmp_path / "got"
        got.mkdir()
        result = dcmtk("getscu", "-S", "-aec", "LAKE", "-od", got, "-k",
                       "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={uid}",
                       "127.0.0.1", port)
        assert result.returncode == 0 and len(list(got.iterdir())) == 4
    finally:
        server.stop()
    assert lake.open(root).info().instances == 4


def test_dicomweb_searches_and_retrieves_the_stored_bytes(
    filled: tuple[lake.Lake, Path], tmp_path: Path
) -> None:
    import httpx

    from lake.access import create_token
    from lake.web import WebConfig, WebServer
    from tests.web_peers import dicomweb, parts_of

    lk, vault = filled
    token = create_token(lk, "steward")[1]
    out = tmp_path / "exported"
    lk.export_dicom("SELECT SeriesInstanceUID FROM series", out, scheduler="sync")
    exported = {}
    for path in out.rglob("*.dcm"):
        data = path.read_bytes()
        exported[str(dcmread(io.BytesIO(data), stop_before_pixels=True).SOPInstanceUID)] = data
    rows = lk.sql("SELECT StudyInstanceUID, SeriesInstanceUID, SOPInstanceUID FROM instances "
                  "ORDER BY 1, 2, 3").fetchall()
    assert sorted(exported) == sorted(str(r[2]) for r in rows)
    server = WebServer(lk, WebConfig(port=0), lk.secret(vault))
    server.start()
    try:
        client: Any = dicomweb(server, token)
        studies = client.search_for_studies()
        assert sorted(s["0020000D"]["Value"][0] for s in studies) == sorted(
            {str(r[0]) for r in rows})
        counts = {s["0020000D"]["Value"][0]: s["00201208"]["Value"][0] for s in studies}
        assert counts == dict(lk.sql("SELECT StudyInstanceUID, count(*) FROM instances "
                                     "GROUP BY 1").fetchall())
        with httpx.Client(base_url=server.url, timeout=60) as http:
            for study, series, sop in rows:
                response = http.get(
                    f"/dicomweb/studies/{study}/series/{series}/instances/{sop}",
                    headers={"Authorization": f"Bearer {token}", "Accept":
                             'multipart/related; type="application/dicom"; transfer-syntax=*'},
                )
                assert response.status_code == 200
                ((_, body),) = parts_of(response)
                assert body == exported[str(sop)]
    finally:
        server.stop()
