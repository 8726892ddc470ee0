"""`lake serve dicom` on a lake in S3 (moto in server mode): store, spool, find, get."""

from __future__ import annotations

from pathlib import Path

import pytest

import lake
from lake.net import DicomServer, ServerConfig
from tests.net_peers import dcmtk, require
from tests.series import write_ct_series
from tests.test_s3 import s3_endpoint, s3_env  # noqa: F401 - pytest fixtures

pytestmark = pytest.mark.network


def test_server_on_an_s3_lake(s3_env: dict[str, str], tmp_path: Path) -> None:  # noqa: F811
    require("storescu", "findscu", "getscu")
    root = f"s3://{s3_env['BUCKET']}/lake"
    vault = tmp_path / "vault"
    lk = lake.init(root, vault=vault)
    write_ct_series(tmp_path / "ct", 5)
    config = ServerConfig(port=0, commit_interval=225, commit_every=1000)
    server = DicomServer(lk, lk.secret(vault), config)
    server.start()
    try:
        port = str(server.port)
        stored = dcmtk("storescu", "-aec", "LAKE", "+sd", "127.0.0.1", port, tmp_path / "ct")
        assert stored.returncode == 0, stored.stderr
        assert len(server.spool) == 5  # durable in the bucket before each acknowledgement
        server.flush()
        assert len(server.spool) == 0
        out = tmp_path / "found"
        out.mkdir()
        found = dcmtk("findscu", "-S", "-aec", "LAKE", "-X", "-od", out,
                      "-k", "QueryRetrieveLevel=STUDY", "-k", "StudyInstanceUID", "127.0.0.1", port)
        assert found.returncode == 0, found.stderr
        assert len(list(out.iterdir())) == 1
        study = lake.open(root).sql("SELECT any_value(StudyInstanceUID) FROM instances")
        uid = study.fetchall()[0][0]
        got = tmp_path / "got"
        got.mkdir()
        result = dcmtk("getscu", "-S", "-aec", "LAKE", "-od", got, "-k", "QueryRetrieveLevel=STUDY",
                       "-k", f"StudyInstanceUID={uid}", "127.0.0.1", port)
        assert result.returncode == 0, result.stderr
        assert len(list(got.iterdir())) == 5
    finally:
        server.stop()
    assert lake.open(root).info().instances == 5
