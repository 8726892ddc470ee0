"""Erasure and the web portal's exports (issue 15.1, review follow-up): once 'lake forget'
returns, a zip the portal made of the erased patient is neither on disk nor downloadable;
the other exports stay.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from lake.steward import forget, target
from tests.portal_peers import PortalLake, build_portal_lake, csrf_of, sign_in
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
