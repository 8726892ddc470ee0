"""Parser warnings about received data are counted, once, by the front doors (s25 bug).

``lake.ingest.process_bytes`` opens its own :func:`lake._capture.capture` scope; before s25
it hid every warning from the scopes around it (a worker's, the server's), so ``lake serve
dicom`` reported none for a malformed instance. A real storescu peer sends an instance with
an invalid SeriesInstanceUID (pydicom warns and logs about it, quoting it); the shipped server counts
the warnings (not the text) in its closing line, with and without worker processes, and
the same instance through STOW-RS counts the same (logged when the server stops), and
``lake pull`` (C-GET from Orthanc) counts it with the C-FIND responses quoting it.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file

import lake
from lake._capture import capture
from lake.ingest import Ingestor, process_bytes
from tests.net_peers import dcmtk, free_port, require, stop_server, wait_port
from tests.web_peers import build_web_lake, serving

pytestmark = pytest.mark.network

LAKE = str(Path(sys.executable).with_name("lake"))
TOKEN = "TKNBADUI7ZKQ"
SUPPRESSED = re.compile(r"(\d+) parser warnings and library log records about received data")


def _bad_uid(folder: Path, n: int) -> Path:
    """A real CT whose SeriesInstanceUID is not a UID (pydicom warns and logs, quoting it)."""
    source = get_testdata_file("CT_small.dcm")
    assert source is not None
    ds = dcmread(source)
    with capture():  # the test writes an invalid value on purpose (pydicom warns, logs)
        ds.SeriesInstanceUID = f"1.2.826.{TOKEN}^{n}"
        folder.mkdir()
        ds.save_as(folder / "bad_uid.dcm", enforce_file_format=True)
    return folder / "bad_uid.dcm"


def _expected(folder: Path, path: Path) -> int:
    """What one de-identification of the file warns and logs (into a throw-away lake)."""
    scratch = lake.init(folder / "lake", vault=folder / "vault")
    context = Ingestor(scratch, scratch.secret(folder / "vault")).context
    clean = get_testdata_file("CT_small.dcm")
    assert clean is not None
    with capture():  # warmed up like a server (a process's first instance may warn once more)
        process_bytes(Path(clean).read_bytes(), context)
    with capture() as counted:
        process_bytes(path.read_bytes(), context)
    assert counted.total > 0
    return counted.total


@pytest.mark.parametrize("workers", [0, 1])
def test_serve_dicom_reports_the_warnings_of_a_malformed_instance(
    workers: int, lake_root: Path, lk: lake.Lake, vault_dir: Path, tmp_path: Path
) -> None:
    require("storescu")
    sent = _bad_uid(tmp_path / "in", 1)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAKE_")}
    proc = subprocess.Popen(
        [LAKE, "serve", "dicom", "--lake", str(lake_root), "--vault", str(vault_dir),
         "--port", str(port), "--workers", str(workers)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        wait_port(port)
        result = dcmtk("storescu", "-aec", "LAKE", "127.0.0.1", str(port), sent)
        assert result.returncode == 0, result.stderr
    finally:
        stdout, stderr = stop_server(proc)
    assert proc.returncode == 0, stderr
    assert "1 stored" in stderr
    assert TOKEN not in stdout + stderr
    found = SUPPRESSED.search(stderr)
    assert found is not None, stderr  # before s25: no line (0 counted)
    expected = _expected(tmp_path / "scratch", sent)
    # the instance's own warnings, counted once (the server's scopes nest in one another)
    assert expected <= int(found.group(1)) < 2 * expected, (expected, stderr)


def test_stow_counts_the_warnings_of_a_malformed_instance(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sent = _bad_uid(tmp_path / "in", 2)
    web = build_web_lake(tmp_path / "web", slices=1)
    boundary = "XyZ"
    body = (f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
            + sent.read_bytes() + f"\r\n--{boundary}--\r\n".encode())
    caplog.set_level(logging.INFO)
    with serving(web, commit_interval=3600, workers=1) as (server, client):
        response = client.post(
            "/dicomweb/studies", content=body,
            headers={"Authorization": f"Bearer {web.tokens['steward']}",
                     "Content-Type": f'multipart/related; type="application/dicom"; '
                                     f"boundary={boundary}"})
        assert response.status_code == 200, response.text
        counted = server.app.state.store.intake.captured.total
    assert counted > 0  # before s25: 0 (the worker's scope did not see process_bytes' own)
    expected = _expected(tmp_path / "scratch", sent)
    assert expected <= counted < 2 * expected
    assert f"STOW-RS: {counted} parser warnings" in caplog.text
    assert TOKEN not in caplog.text


def test_pull_counts_the_warnings_of_a_malformed_instance(
    lk: lake.Lake, vault_dir: Path, tmp_path: Path
) -> None:
    require("Orthanc")
    from lake.net import find_studies, parse_peer, pull_studies
    from tests.net_peers import Orthanc

    sent = _bad_uid(tmp_path / "in", 3)
    with capture():  # reading it warns too
        study = str(dcmread(sent).StudyInstanceUID)
    with Orthanc(tmp_path / "orthanc",
                 modalities={"LAKE": ("127.0.0.1", free_port())}) as pacs:
        assert pacs.upload([sent]) == 1
        peer = parse_peer(f"ORTHANC@127.0.0.1:{pacs.dicom_port}")
        studies = find_studies(peer, [f"StudyInstanceUID={study}"])
        summary = pull_studies(lk, lk.secret(vault_dir), peer, studies, via="get")
    assert summary.ingested == 1
    assert summary.suppressed > 0  # before s25: not counted (the C-FIND's warned, uncaptured)
    expected = _expected(tmp_path / "scratch", sent)
    # and the PACS's C-FIND responses quoting the bad UID (parsed on the pulling thread)
    assert summary.suppressed > expected


def test_pull_shows_warnings_of_its_commits(
    lk: lake.Lake, vault_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A warning raised while ``lake pull`` commits is not about received data: shown, not counted.

    Before s26 the capture scope spanned each study's commit too, so a library warning
    there (delta-rs, pyarrow) was counted as "about received data" and never shown.
    """
    require("Orthanc")
    import warnings

    from lake.net import find_studies, parse_peer, pull_studies
    from lake.net._intake import Intake
    from tests.net_peers import Orthanc

    flush = Intake.flush

    def warning_flush(self: Intake) -> None:
        warnings.warn("a warning of the catalog's libraries", UserWarning, stacklevel=1)
        flush(self)

    monkeypatch.setattr(Intake, "flush", warning_flush)
    source = get_testdata_file("CT_small.dcm")
    assert source is not None
    study = str(dcmread(source).StudyInstanceUID)
    with Orthanc(tmp_path / "orthanc",
                 modalities={"LAKE": ("127.0.0.1", free_port())}) as pacs:
        assert pacs.upload([Path(source)]) == 1
        peer = parse_peer(f"ORTHANC@127.0.0.1:{pacs.dicom_port}")
        studies = find_studies(peer, [f"StudyInstanceUID={study}"])
        with pytest.warns(UserWarning, match="catalog's libraries"):
            summary = pull_studies(lk, lk.secret(vault_dir), peer, studies, via="get")
    assert summary.ingested == 1
    assert summary.suppressed == 0
