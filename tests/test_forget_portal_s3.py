"""Erasure and the portal's exports on a lake on S3 (moto_server): the server keeps its
jobs in a folder of its own that 'lake forget' cannot reach, so after an erasure it checks
a job's members against the catalog before serving its zip."""

from __future__ import annotations

from pathlib import Path

import lake
from lake.access import add_user
from lake.steward import forget, target
from tests.portal_peers import sign_in
from tests.series import write_ct_series
from tests.test_forget_portal import _exported
from tests.test_s3 import s3_endpoint, s3_env  # noqa: F401 - the moto server and bucket
from tests.web_peers import WebLake, serving

NOT_SAVED = ("SELECT SeriesInstanceUID FROM series WHERE SeriesInstanceUID NOT IN "
             "(SELECT unnest(series) FROM cohorts)")


def test_an_s3_lakes_portal_serves_no_export_of_an_erased_patient(
    s3_env: dict[str, str], tmp_path: Path,  # noqa: F811
) -> None:
    vault = tmp_path / "vault"
    lk = lake.init(f"s3://{s3_env['BUCKET']}/lake", vault=vault)
    for name, patient in (("a", "S3-GONE"), ("b", "S3-KEPT")):
        write_ct_series(tmp_path / name, 2, patient_id=patient)
        lk.ingest([str(tmp_path / name)], vault=vault, scheduler="sync")
        lk.refresh()
        lk.create_cohort(name, NOT_SAVED)
    add_user(lk, "res", "researcher", "res-secret-password")
    secret = lk.secret(vault)
    with serving(WebLake(lk, vault)) as (running, _http):
        res = sign_in(running.url, "res", "res-secret-password")
        gone, kept = _exported(res, "a"), _exported(res, "b")
        assert res.get(f"{gone}/download").status_code == 200
        forget(lk, secret, target(lk, secret, original_patient_id="S3-GONE"))
        assert res.get(f"{gone}/download").status_code == 404
        assert res.get(f"{kept}/download").status_code == 200
