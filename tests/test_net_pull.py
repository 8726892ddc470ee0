"""``lake pull`` from Orthanc (the clinical PACS): query, retrieve by C-GET and C-MOVE, resume."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread

import lake
from lake.net import PULLS, find_studies, parse_peer, pull_studies
from tests.net_peers import Orthanc, free_port, require
from tests.series import write_ct_series

pytestmark = pytest.mark.network

LAKE = str(Path(sys.executable).with_name("lake"))
PHI = ("PULL-PID-1", "PULL-PID-2", "Pull^Paula", "Other^Olga")


@pytest.fixture
def lake_port() -> int:
    return free_port()


@pytest.fixture
def pacs(tmp_path: Path, lake_port: int) -> Iterator[Orthanc]:
    require("Orthanc")
    with Orthanc(tmp_path / "orthanc", modalities={"LAKE": ("127.0.0.1", lake_port)}) as orthanc:
        yield orthanc


@pytest.fixture
def originals(tmp_path: Path) -> dict[str, list[Path]]:
    return {
        "a": write_ct_series(tmp_path / "a", 6, patient_id=PHI[0], patient_name=PHI[2]),
        "b": write_ct_series(tmp_path / "b", 3, patient_id=PHI[1], patient_name=PHI[3]),
    }


def _peer(pacs: Orthanc) -> lake.net.Peer:
    return parse_peer(f"ORTHANC@127.0.0.1:{pacs.dicom_port}")


def _uids(paths: list[Path]) -> set[str]:
    out = set()
    for path in paths:
        ds = dcmread(path, stop_before_pixels=True)
        out |= {ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID}
    return out


def _assert_no_phi(lk: lake.Lake, forbidden: set[str]) -> None:
    """No original identifier anywhere in the catalog's tables (decoded, not raw bytes)."""
    lk.refresh()
    for table in ("instances", "batches", "quarantine", "pulls"):
        if table == "pulls":
            rows = lk.tables.open("pulls").to_pyarrow_dataset().to_table().to_pylist()
        else:
            rows = lk.sql(f"SELECT * FROM {table}").arrow().read_all().to_pylist()
        for row in rows:
            text = repr(row)
            for value in forbidden:
                assert value not in text, (table, value)


def test_find_shows_identified_matches(pacs: Orthanc, originals: dict[str, list[Path]]) -> None:
    pacs.upload(originals["a"] + originals["b"])
    studies = find_studies(_peer(pacs), ["PatientID=PULL-PID-*", "ModalitiesInStudy=CT"])
    assert sorted(s.attributes["PatientName"] for s in studies) == sorted(PHI[2:])
    assert {s.attributes["NumberOfStudyRelatedInstances"] for s in studies} == {"6", "3"}
    one = find_studies(_peer(pacs), ["PatientID=PULL-PID-2"])
    assert [s.attributes["PatientID"] for s in one] == ["PULL-PID-2"]
    assert find_studies(_peer(pacs), ["StudyDate=19000101-19001231"]) == []


@pytest.mark.parametrize("via", ["get", "move"])
def test_pull_and_resume(
    pacs: Orthanc, originals: dict[str, list[Path]], lk: lake.Lake, vault_dir: Path,
    lake_port: int, via: str,
) -> None:
    secret = lk.secret(vault_dir)
    a = originals["a"]
    pacs.upload(a[:4] + originals["b"])  # study A is incomplete on the PACS for now
    peer = _peer(pacs)
    studies = find_studies(peer, ["PatientID=PULL-PID-*"])
    progress: list[tuple[int, int, int]] = []
    first = pull_studies(lk, secret, peer, studies, via=via, listen=("127.0.0.1", lake_port),
                         on_progress=lambda *args: progress.append(args))
    assert (first.requested, first.completed, first.failed, first.ingested) == (7, 7, 0, 7)
    assert {p[2] for p in progress if p[1] == p[2]} == {4, 3}  # per-study progress
    # the rest of study A arrives on the PACS; a second pull fetches only that
    pacs.upload(a[4:])
    studies = find_studies(peer, ["PatientID=PULL-PID-*"])
    second = pull_studies(lk, secret, peer, studies, via=via, listen=("127.0.0.1", lake_port))
    assert (second.listed, second.already, second.requested, second.ingested) == (9, 7, 2, 2)
    assert second.up_to_date == 1
    third = pull_studies(lk, secret, peer, studies, via=via, listen=("127.0.0.1", lake_port))
    assert (third.requested, third.up_to_date, third.received.received) == (0, 2, 0)
    lk.refresh()
    assert lk.sql("SELECT count(*) FROM instances").fetchall() == [(9,)]
    sources = {s for (s,) in lk.sql("SELECT DISTINCT source FROM batches").fetchall()}
    assert sources == {"pull"}
    ledger = lk.tables.open(PULLS.name).to_pyarrow_dataset().to_table().to_pylist()
    assert len(ledger) == 9 and {r["outcome"] for r in ledger} == {"stored"}
    _assert_no_phi(lk, set(PHI) | _uids(a + originals["b"]))


def test_refused_instances_are_not_pulled_again(
    pacs: Orthanc, lk: lake.Lake, vault_dir: Path, tmp_path: Path
) -> None:
    paths = write_ct_series(tmp_path / "burned", 3, patient_id="BURN-1")
    ds = dcmread(paths[0])
    ds.BurnedInAnnotation = "YES"
    ds.save_as(paths[0], enforce_file_format=True)
    pacs.upload(paths)
    peer = _peer(pacs)
    studies = find_studies(peer, ["PatientID=BURN-1"])
    first = pull_studies(lk, lk.secret(vault_dir), peer, studies)
    assert (first.ingested, first.quarantined) == (2, 1)
    again = pull_studies(lk, lk.secret(vault_dir), peer, studies)
    assert again.requested == 0
    lk.refresh()
    assert lk.sql("SELECT reason FROM quarantine").fetchall() == [("burned_in_annotation",)] or (
        len(lk.sql("SELECT reason FROM quarantine").fetchall()) == 1
    )


def test_unknown_move_destination_is_explained(
    originals: dict[str, list[Path]], lk: lake.Lake, vault_dir: Path, tmp_path: Path,
) -> None:
    require("Orthanc")
    lenient = {"DicomAlwaysAllowFind": True, "DicomAlwaysAllowMove": True}
    with Orthanc(tmp_path / "lenient", extra=lenient) as pacs:  # knows no modality at all
        pacs.upload(originals["b"])
        peer = _peer(pacs)
        studies = find_studies(peer, ["PatientID=PULL-PID-2"], calling_aet="STRANGER")
        assert len(studies) == 1
        # Orthanc answers 0xC000 here rather than 0xA801; both are explained
        with pytest.raises(lake.NetError, match="move destination"):
            pull_studies(lk, lk.secret(vault_dir), peer, studies, via="move",
                         calling_aet="STRANGER", listen=("127.0.0.1", free_port()))


def test_refused_query_is_explained(
    pacs: Orthanc, originals: dict[str, list[Path]]
) -> None:
    pacs.upload(originals["b"])
    with pytest.raises(lake.NetError, match="allows queries from AE title STRANGER"):
        find_studies(_peer(pacs), ["PatientID=PULL-PID-2"], calling_aet="STRANGER")


def test_unreachable_pacs(lk: lake.Lake, vault_dir: Path) -> None:
    peer = parse_peer(f"NOBODY@127.0.0.1:{free_port()}")
    with pytest.raises(lake.NetError, match="cannot connect"):
        find_studies(peer, ["PatientID=X"], timeout=5)


def test_cli_pull_keeps_identified_results_off_files(
    pacs: Orthanc, originals: dict[str, list[Path]], lk: lake.Lake, lake_root: Path,
    vault_dir: Path, lake_port: int,
) -> None:
    pacs.upload(originals["a"] + originals["b"])
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAKE_")}
    base = [LAKE, "pull", "--lake", str(lake_root), "--vault", str(vault_dir),
            "--from", f"ORTHANC@127.0.0.1:{pacs.dicom_port}", "--query", "PatientID=PULL-PID-*"]
    dry = subprocess.run([*base, "--dry-run"], capture_output=True, text=True, env=env,
                         timeout=120, check=False)
    assert dry.returncode == 0, dry.stderr
    assert "2 matching studies" in dry.stderr
    for value in PHI:  # stdout is not a terminal here: identified values are not printed
        assert value not in dry.stdout and value not in dry.stderr
    run = subprocess.run([*base, "--via", "move", "--port", str(lake_port)],
                         capture_output=True, text=True, env=env, timeout=300, check=False)
    assert run.returncode == 0, run.stderr
    assert "9 new in the catalog" in run.stderr
    for value in PHI:
        assert value not in run.stdout and value not in run.stderr
    again = subprocess.run([*base, "--via", "get"], capture_output=True, text=True, env=env,
                           timeout=300, check=False)
    assert again.returncode == 0, again.stderr
    assert "2 already complete" in again.stderr and "0 requested" in again.stderr
