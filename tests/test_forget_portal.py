"""Erasure and the web portal's exports (issue 15.1, review follow-up): once 'lake forget'
returns, a zip the portal made of the erased patient is neither on disk nor downloadable;
the other exports stay.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

import lake
from lake import CatalogError
from lake.steward import _forget, forget, target
from tests.portal_peers import PortalLake, build_portal_lake, csrf_of, sign_in
from tests.series import write_ct_series
from tests.web_peers import serving


@pytest.fixture
def portal(tmp_path: Path) -> PortalLake:
    return build_portal_lake(tmp_path)


def _exported(client: httpx.Client, cohort: str) -> str:
    """Export ``cohort`` as DICOM through the cohort page; the job's URL once it is done."""
    form = client.get(f"/portal/cohorts/{cohort}")
    started = client.post(f"/portal/cohorts/{cohort}/exports",
                          data={"csrf": csrf_of(form.text), "format": "dicom"})
    assert started.status_code == 303
    job = str(started.headers["location"])
    deadline = time.monotonic() + 120
    status = client.get(f"{job}/status").json()
    while status["state"] not in ("done", "failed") and time.monotonic() < deadline:
        time.sleep(0.2)
        status = client.get(f"{job}/status").json()
    assert status["state"] == "done" and status["ready"], status
    return job


def test_forget_removes_the_portals_exports_of_the_patient(portal: PortalLake) -> None:
    lk = portal.lake
    sops = {m.sop_uid for m in lk.cohort("a").members}
    (pseudonym,) = {p for (p,) in lk.sql(
        "SELECT DISTINCT PatientID FROM instances WHERE SOPInstanceUID IN "
        f"({', '.join(repr(s) for s in sops)})").fetchall()}
    jobs_root = Path(lk.root) / "portal" / "jobs"
    with serving(portal.web) as (running, _http):
        res = sign_in(running.url, "res", portal.passwords["res"])
        gone, kept = _exported(res, "a"), _exported(res, "b")
        zipped = res.get(f"{gone}/download")
        assert zipped.status_code == 200 and len(zipped.content) > 1000
        assert len(list(jobs_root.rglob("*.zip"))) == 2

        secret = lk.secret(portal.web.vault)
        report = forget(lk, secret, target(lk, secret, patient=pseudonym))

        assert res.get(f"{gone}/download").status_code == 404
        assert report.plan.exports == 1
        assert res.get(f"{gone}/status").json()["ready"] is False
        assert res.get(f"{kept}/download").status_code == 200
        assert len(list(jobs_root.rglob("*.zip"))) == 1
        for path in jobs_root.rglob("*"):
            if path.is_file():
                data = path.read_bytes()
                assert not [s for s in sops if s.encode() in data], path
        # Started again, the export holds the cohort as it is now: nothing.
        again = _exported(res, "b")
        assert res.get(f"{again}/download").status_code == 200


def _two_patients(lk: lake.Lake, vault: Path, tmp_path: Path) -> tuple[str, list[str], list[str]]:
    """Two patients ingested: the first one's pseudonym, its SOP UIDs and the other's."""
    write_ct_series(tmp_path / "a", 2, patient_id="GONE-1")
    write_ct_series(tmp_path / "b", 2, patient_id="KEEP-1")
    lk.ingest([str(tmp_path / "a"), str(tmp_path / "b")], vault=vault, scheduler="sync")
    lk.refresh()
    rows = lk.sql("SELECT PatientID, SOPInstanceUID FROM instances").fetchall()
    gone = sorted({p for p, _ in rows})[0]
    return (gone, sorted(s for p, s in rows if p == gone),
            sorted(s for p, s in rows if p != gone))


def _job(lake_root: Path, name: str, sops: list[str]) -> Path:
    """A portal job folder as the portal leaves it: its member list and its zip."""
    job = lake_root / "portal" / "jobs" / "run-0" / name
    job.mkdir(parents=True)
    (job / "members.sop").write_text("".join(s + "\n" for s in sops))
    (job / "export.zip").write_bytes(b"zip of " + sops[0].encode())
    return job


def test_an_interrupted_forget_is_finished_by_the_rerun(
    lk: lake.Lake, vault_dir: Path, tmp_path: Path, lake_root: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Review s19 B1: stopped in the job-removal step (after the instances' files are gone,
    so no UID of the patient can be found any more), the re-run still removes the patient's
    portal export, and keeps the other patient's."""
    gone, sops, others = _two_patients(lk, vault_dir, tmp_path)
    job, kept = _job(lake_root, "job1", sops), _job(lake_root, "job2", others)
    secret = lk.secret(vault_dir)

    def stopped(folder: Path) -> None:
        raise KeyboardInterrupt  # the process is stopped here

    monkeypatch.setattr(_forget, "_remove_tree", stopped)
    with pytest.raises(KeyboardInterrupt):
        forget(lk, secret, target(lk, secret, patient=gone))
    monkeypatch.undo()
    lk.refresh()
    assert job.exists()  # the state the interruption leaves
    report = forget(lk, secret, target(lk, secret, patient=gone))
    assert report.plan.instances == 0 and report.plan.exports == 1
    assert not job.exists(), "the erased patient's portal export survived the re-run"
    assert kept.exists() and (kept / "export.zip").is_file()



def test_a_job_listed_during_the_interrupted_run_goes_too(
    lk: lake.Lake, vault_dir: Path, tmp_path: Path, lake_root: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A job that listed the patient after the first run laid its tombstone (before the rows
    went) is removed by the re-run as well."""
    gone, sops, others = _two_patients(lk, vault_dir, tmp_path)
    kept = _job(lake_root, "job2", others)
    secret = lk.secret(vault_dir)
    real_erase = _forget.erase_files
    listed: list[Path] = []

    def erase_after_a_job_listed(*args: object, **kwargs: object) -> object:
        if not listed:
            listed.append(_job(lake_root, "late", sops))
        return real_erase(*args, **kwargs)  # type: ignore[arg-type]

    def stopped(folder: Path) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(_forget, "erase_files", erase_after_a_job_listed)
    monkeypatch.setattr(_forget, "_remove_tree", stopped)
    with pytest.raises(KeyboardInterrupt):
        forget(lk, secret, target(lk, secret, patient=gone))
    monkeypatch.undo()
    lk.refresh()
    assert listed and listed[0].exists()
    forget(lk, secret, target(lk, secret, patient=gone))
    assert not listed[0].exists()
    assert kept.exists()


def test_removing_a_job_folder_retries_then_says_how_to_finish(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Review s19 B1: an OSError from rmtree (ENOTEMPTY while a job adds a file) is retried,
    and if it persists the erasure fails with a CatalogError, not a bare OSError."""
    import errno
    import shutil

    folder = tmp_path / "job"
    (folder / "export").mkdir(parents=True)
    (folder / "export" / "a.dcm").write_bytes(b"x")
    real = shutil.rmtree
    failures = iter([OSError(errno.ENOTEMPTY, "Directory not empty")])

    def busy(path: Path) -> None:
        failure = next(failures, None)
        if failure is not None:
            raise failure
        real(path)

    monkeypatch.setattr(_forget.shutil, "rmtree", busy)
    _forget._remove_tree(folder)
    assert not folder.exists()

    folder.mkdir()

    def always(path: Path) -> None:
        raise OSError(errno.EBUSY, "Device or resource busy")

    monkeypatch.setattr(_forget.shutil, "rmtree", always)
    with pytest.raises(CatalogError, match="re-run"):
        _forget._remove_tree(folder)


def test_the_job_status_agrees_with_the_download(
    portal: PortalLake, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review s19 N11: a job whose folder forget did not reach (as a server of a lake on an
    object store keeps its jobs) is refused by the download after the erasure; its status
    says so too (not ready), so the page offers no dead link."""
    lk = portal.lake
    sops = {m.sop_uid for m in lk.cohort("a").members}
    (pseudonym,) = {p for (p,) in lk.sql(
        "SELECT DISTINCT PatientID FROM instances WHERE SOPInstanceUID IN "
        f"({', '.join(repr(s) for s in sops)})").fetchall()}

    def unreached(folder: Path) -> None:
        return None

    with serving(portal.web) as (running, _http):
        res = sign_in(running.url, "res", portal.passwords["res"])
        gone, kept = _exported(res, "a"), _exported(res, "b")
        secret = lk.secret(portal.web.vault)
        monkeypatch.setattr(_forget, "_remove_tree", unreached)
        forget(lk, secret, target(lk, secret, patient=pseudonym))
        assert res.get(f"{gone}/download").status_code == 404
        assert res.get(f"{gone}/status").json()["ready"] is False
        assert res.get(f"{kept}/status").json()["ready"] is True
        assert res.get(f"{kept}/download").status_code == 200


def _patient_of(lk: lake.Lake, cohort: str) -> str:
    sops = {m.sop_uid for m in lk.cohort(cohort).members}
    (pseudonym,) = {p for (p,) in lk.sql(
        "SELECT DISTINCT PatientID FROM instances WHERE SOPInstanceUID IN "
        f"({', '.join(repr(s) for s in sops)})").fetchall()}
    return str(pseudonym)


def test_a_forget_between_the_check_and_the_send_is_a_404_or_the_whole_zip(
    portal: PortalLake, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review s19 N5: the download checked the job (servable), then FileResponse opened the
    zip while sending: a forget in between removed it and the answer was a 500. Now the zip
    is opened before the check: a forget before the check is a 404, one after it (the file
    removed while open) still sends the whole zip, never a 500."""
    import io
    import zipfile

    from lake.web.portal import _exports, _research

    lk = portal.lake
    secret = lk.secret(portal.web.vault)
    real = _exports.servable
    armed: dict[str, str] = {}

    def forget_around_the_check(lk_: lake.Lake, job: object) -> bool:
        if "before" in armed:
            forget(lk, secret, target(lk, secret, patient=armed.pop("before")))
        ok = real(lk_, job)  # type: ignore[arg-type]
        if "after" in armed:
            forget(lk, secret, target(lk, secret, patient=armed.pop("after")))
        return ok

    jobs_root = Path(lk.root) / "portal" / "jobs"
    with serving(portal.web) as (running, _http):
        res = sign_in(running.url, "res", portal.passwords["res"])
        first, second = _exported(res, "a"), _exported(res, "b")
        assert len(list(jobs_root.rglob("*.zip"))) == 2
        part = res.get(f"{first}/download", headers={"Range": "bytes=0-9"})  # still ranges
        assert part.status_code == 206 and part.content == b"PK\x03\x04" + part.content[4:]
        assert len(part.content) == 10
        monkeypatch.setattr(_exports, "servable", forget_around_the_check)
        monkeypatch.setattr(_research, "servable", forget_around_the_check)  # before the fix

        armed["after"] = _patient_of(lk, "a")
        sent = res.get(f"{first}/download")
        assert not armed
        assert sent.status_code == 200, sent.status_code  # was 500
        with zipfile.ZipFile(io.BytesIO(sent.content)) as archive:
            assert archive.testzip() is None and archive.namelist()
        assert len(list(jobs_root.rglob("*.zip"))) == 1  # forget did remove it

        armed["before"] = _patient_of(lk, "b")
        assert res.get(f"{second}/download").status_code == 404
        assert not armed
        assert list(jobs_root.rglob("*.zip")) == []
