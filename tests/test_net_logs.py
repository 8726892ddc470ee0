"""No original value, UID or path in what ``lake serve dicom`` writes, from its first request on.

Issue 16.5: the planted-identifier corpus (tests/deid_corpus.py) plus malformed instances
whose invalid values carry tokens (a UID pydicom rejects as first request, a bad date, a
truncated dataset, an unparseable one) are C-STOREd, and C-FIND/C-GET requests carry
tokens too. The server runs as its own process, as shipped and under a user's
``logging.basicConfig(level=DEBUG)`` (every pynetdicom and pydicom record would reach
stderr); its stdout and stderr must hold no token.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info

import lake
from tests.deid_corpus import write_corpus
from tests.net_peers import dcmtk, free_port, require, stop_server, wait_port

pytestmark = [pytest.mark.network, pytest.mark.slow]

LAKE = str(Path(sys.executable).with_name("lake"))
VERBOSE = (
    "import logging, sys; logging.basicConfig(level=logging.DEBUG); "
    "from pipelines.cli import app; sys.argv[0] = 'lake'; app()"
)


def _malformed(corpus: Path, out: Path) -> set[str]:
    """Malformed variants of a corpus CT whose bad values are tokens; returns the tokens."""
    out.mkdir()
    source = next(corpus.rglob("b0_ct0.dcm"))
    tokens: set[str] = set()

    def variant(name: str, **values: str) -> None:
        ds = dcmread(source)
        with warnings.catch_warnings():  # the test writes invalid values on purpose
            warnings.simplefilter("ignore")
            for keyword, value in values.items():
                setattr(ds, keyword, value)
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            ds.save_as(out / name, enforce_file_format=True)

    # the FIRST request the server sees carries a UID pydicom warns about
    tokens.add(bad_uid := "1.2.826.TKNBADUIDQ7ZK^SECRET.1")
    variant("00_bad_uid.dcm", SOPInstanceUID=bad_uid)
    tokens.add(bad_date := "TKNBADDATE7ZKQ")
    variant("01_bad_date.dcm", StudyDate=bad_date, PatientBirthDate=bad_date)
    tokens.add(bad_name := "TKNBADNAME7ZKQ" + "\\x\\y")
    variant("02_bad_vm.dcm", PatientName=bad_name, Modality=bad_name)
    return {t.split("\\")[0] for t in tokens}


def _truncated(corpus: Path, out: Path) -> Path:
    """A corpus instance cut mid-dataset, its meta intact (sent unparsed by pynetdicom)."""
    source = next(corpus.rglob("b0_ct1.dcm"))
    data = source.read_bytes()
    path = out / "03_truncated.dcm"
    path.write_bytes(data[: len(data) * 2 // 3])
    return path


def _not_dicom_dataset(corpus: Path, out: Path) -> Path:
    """Valid file meta followed by garbage that quotes an original UID."""
    ds = dcmread(next(corpus.rglob("b0_ct2.dcm")))
    buffer = DicomBytesIO()
    buffer.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(buffer, ds.file_meta)
    path = out / "04_garbage.dcm"
    path.write_bytes(buffer.getvalue() + b"\x10\x00\x10\x00PN" + ds.SOPInstanceUID.encode() * 7)
    return path


def _send_unparsed(port: int, paths: list[Path]) -> None:
    from pynetdicom import AE
    from pynetdicom import _config as pynetdicom_config

    previous = pynetdicom_config.STORE_SEND_CHUNKED_DATASET
    pynetdicom_config.STORE_SEND_CHUNKED_DATASET = True  # the bytes go as they are
    try:
        ae = AE(ae_title="RAWSCU")
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
        ae.add_requested_context("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.1")
        assoc = ae.associate("127.0.0.1", port, ae_title="LAKE")
        assert assoc.is_established
        try:
            for path in paths:
                status = assoc.send_c_store(path)
                assert "Status" in status  # refused, or (acknowledged on receipt) quarantined later
        finally:
            assoc.release()
    finally:
        pynetdicom_config.STORE_SEND_CHUNKED_DATASET = previous


@pytest.mark.parametrize("verbose", [False, True], ids=["as-shipped", "logging-debug"])
def test_server_output_holds_no_planted_identifier(
    lk: lake.Lake, lake_root: Path, vault_dir: Path, tmp_path: Path, verbose: bool
) -> None:
    require("storescu", "findscu", "getscu")
    corpus = tmp_path / "corpus"
    tokens = write_corpus(corpus, 1)
    bad = tmp_path / "bad"
    tokens |= _malformed(corpus, bad)
    raw = [_truncated(corpus, bad), _not_dicom_dataset(corpus, bad)]
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAKE_")}
    command = [sys.executable, "-c", VERBOSE] if verbose else [LAKE]
    proc = subprocess.Popen(
        [*command, "serve", "dicom", "--lake", str(lake_root), "--vault", str(vault_dir),
         "--port", str(port), "--commit-interval", "0.2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        cwd=Path(__file__).resolve().parents[1],
    )
    try:
        wait_port(port)
        # first request: the malformed ones, in name order (bad UID first)
        sent = dcmtk("storescu", "-aec", "LAKE", "-nh", "127.0.0.1", str(port),
                     *sorted(p for p in bad.iterdir() if p not in raw))
        assert "Association Request Failed" not in sent.stderr
        _send_unparsed(port, raw)
        stored = dcmtk("storescu", "-aec", "LAKE", "+sd", "+r", "-nh", "127.0.0.1", str(port),
                       corpus)
        assert "Association Request Failed" not in stored.stderr
        uid = next(t for t in tokens if t.startswith("1.2.826.0.1.3680043.10.1077."))
        name = next(t for t in tokens if t.startswith("TKN"))
        found = dcmtk("findscu", "-S", "-aec", "LAKE", "-k", "QueryRetrieveLevel=STUDY",
                      "-k", f"PatientName={name}*", "-k", f"StudyInstanceUID={uid}",
                      "127.0.0.1", str(port))
        assert found.returncode == 0, found.stderr
        (tmp_path / "get").mkdir()
        dcmtk("getscu", "-S", "-aec", "LAKE", "-od", tmp_path / "get", "-k",
              "QueryRetrieveLevel=IMAGE", "-k", f"StudyInstanceUID={uid}", "-k",
              f"SeriesInstanceUID={uid}", "-k", f"SOPInstanceUID={name}", "127.0.0.1", str(port))
    finally:
        stdout, stderr = stop_server(proc)
    assert proc.returncode == 0, stderr[-2000:]
    output = stdout + stderr
    assert "received" in stderr  # the server did report
    if verbose:
        assert "DEBUG" in output  # logging really was on
    leaked = sorted(t for t in tokens if t in output)
    assert leaked == [], leaked
    assert "Traceback" not in output
    lk.refresh()
    stored_rows = lk.sql("SELECT count(*) FROM instances").fetchall()[0][0]
    quarantined = lk.sql("SELECT count(*) FROM quarantine").fetchall()[0][0]
    assert stored_rows >= 3 and quarantined >= 2
