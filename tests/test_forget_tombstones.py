"""Erasure tombstones (issue 15.1): what 'lake forget' erased stays out of the lake, whichever
way it comes back: the same files ingested again, a modality sending the patient again to
'lake serve dicom', a commit racing the erasure itself.
"""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid

import lake
from lake.catalog import DeltaTables, TombstoneCache, Tombstones
from lake.catalog._tombstones import COMPACT_AFTER, PURPOSE, compact, laid_at, lay
from lake.ingest import Ingestor
from lake.steward import forget, target
from tests.net_peers import dcmtk, free_port, require, stop_server, wait_port
from tests.series import write_ct_series

LAKE = str(Path(sys.executable).with_name("lake"))
SEED = int(os.environ.get("LAKE_STRESS_SEED", "1515"))
GONE, NAME = "WITHDRAWN-31", "Gone^Greta"
PHI = (GONE, "Gone", "Greta")


def _env(lake_root: Path, vault_dir: Path) -> dict[str, str]:
    return dict(os.environ, LAKE_ROOT=str(lake_root), LAKE_VAULT=str(vault_dir))


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([LAKE, *args], env=env, capture_output=True, text=True)


def _no_phi(*texts: str) -> None:
    for text in texts:
        for token in PHI:
            assert token not in text


def _pseudonym(lk: lake.Lake, vault_dir: Path) -> str:
    return target(lk, lk.secret(vault_dir), original_patient_id=GONE).value


def _count(lk: lake.Lake, where: str = "") -> int:
    lk.refresh()
    return int(lk.sql(f"SELECT count(*) FROM instances {where}").fetchall()[0][0])


def _erased(lk: lake.Lake) -> int:
    lk.refresh()
    return int(lk.sql("SELECT coalesce(sum(erased), 0) FROM batches").fetchall()[0][0])


def test_forget_then_the_same_files_again_adds_nothing(
    lk: lake.Lake, lake_root: Path, vault_dir: Path, tmp_path: Path
) -> None:
    inbox = tmp_path / "in"
    write_ct_series(inbox / "gone", 4, patient_id=GONE, patient_name=NAME)
    write_ct_series(inbox / "kept", 3, patient_id="KEPT-2", patient_name="Kept^Karl")
    refused = dcmread(inbox / "gone" / "slice0000.dcm")
    refused.BurnedInAnnotation = "YES"  # the basic profile refuses burned-in text
    refused.SOPInstanceUID = generate_uid()
    refused.save_as(inbox / "gone" / "burned.dcm")
    env = _env(lake_root, vault_dir)
    first = _cli(env, "ingest", str(inbox))
    assert first.returncode == 3, first.stderr  # one file quarantined
    assert lk.sql("SELECT count(*) FROM quarantine").fetchall() == [(1,)]
    pseudonym = _pseudonym(lk, vault_dir)
    gone_blobs = {h for (h,) in lk.sql(
        f"SELECT pixel_hash FROM instances WHERE PatientID = '{pseudonym}' EXCEPT "
        f"SELECT pixel_hash FROM instances WHERE PatientID <> '{pseudonym}'"
    ).fetchall()}
    assert _count(lk) == 7 and gone_blobs

    erased = _cli(env, "forget", "--original-patient-id", GONE, "--yes")
    assert erased.returncode == 0, erased.stderr
    again = _cli(env, "ingest", str(inbox))
    assert again.returncode == 0, again.stderr  # the refused file too: erased, not quarantined
    assert re.search(r"erased \(withdrawn, dropped\)\W+5\b", again.stderr), again.stderr
    assert _count(lk, f"WHERE PatientID = '{pseudonym}'") == 0
    assert _count(lk) == 3 and _erased(lk) == 5
    assert lk.sql("SELECT count(*) FROM quarantine").fetchall() == [(0,)]
    assert not list((lake_root / "quarantine").glob("*.sealed"))  # its original is deleted

    # A series, by its UID as stored: its files ingested again are dropped too.
    (series,) = lk.sql("SELECT DISTINCT SeriesInstanceUID FROM instances").fetchall()[0]
    assert _cli(env, "forget", "--series", series, "--yes").returncode == 0
    third = _cli(env, "ingest", str(inbox))
    assert third.returncode == 0, third.stderr
    assert _count(lk) == 0 and _erased(lk) == 5 + 5 + 3

    # Their blobs, written again by the re-ingests, are unreferenced: verify says so, gc
    # removes them, and no byte of the tombstones names the pseudonym or the UIDs.
    verify = _cli(env, "verify")
    assert verify.returncode == 0, verify.stderr
    gc = _cli(env, "gc", "--grace-hours", "0", "--no-writers-running")  # none runs now
    assert gc.returncode == 0, gc.stderr
    verify = _cli(env, "verify")
    assert verify.returncode == 0 and "0 unreferenced blobs" in verify.stdout, verify.stdout
    for path in lake_root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for token in (pseudonym, series, *(h.split(":", 1)[-1] for h in gone_blobs)):
                assert token.encode() not in data, path.relative_to(lake_root)
    _no_phi(first.stdout + first.stderr, erased.stdout + erased.stderr,
            again.stdout + again.stderr, third.stdout + third.stderr, verify.stdout, gc.stdout)


def test_a_patient_forgotten_before_it_arrives_is_kept_out(
    lk: lake.Lake, vault_dir: Path, tmp_path: Path
) -> None:
    secret = lk.secret(vault_dir)
    report = forget(lk, secret, target(lk, secret, original_patient_id=GONE))
    assert report.plan.instances == 0
    write_ct_series(tmp_path / "in", 5, patient_id=GONE, patient_name=NAME)
    summary = lk.ingest([str(tmp_path / "in")], vault=vault_dir, scheduler="sync")
    assert (summary.ingested, summary.erased, summary.quarantined) == (0, 5, 0)
    assert _count(lk) == 0


def test_a_commit_racing_the_erasure_is_judged_again(
    lk: lake.Lake, vault_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worst interleaving, forced: a batch reads the tombstones (none yet), then the
    whole erasure runs (tombstone, its commit, deletes: nothing of the patient is in the
    lake yet), then the batch commits. It must lose its compare-and-swap and, judged again
    with the tombstone, drop the patient's rows."""
    secret = lk.secret(vault_dir)
    write_ct_series(tmp_path / "gone", 4, patient_id=GONE, patient_name=NAME)
    write_ct_series(tmp_path / "kept", 3, patient_id="KEPT-2")
    ingestor = Ingestor(lk, secret)
    outcomes = [ingestor.process(p.read_bytes()) for p in sorted(tmp_path.rglob("*.dcm"))]
    real = TombstoneCache.read
    reads: list[int] = []

    def racing(cache: TombstoneCache, tables: DeltaTables) -> Tombstones:
        seen = real(cache, tables)
        reads.append(len(seen.laid))
        if len(reads) == 1:
            forget(lk, secret, target(lk, secret, original_patient_id=GONE))
        return seen

    monkeypatch.setattr(TombstoneCache, "read", racing)
    batch = ingestor.commit(outcomes)
    assert reads[0] == 0 and reads[-1] == 1 and len(reads) >= 2  # judged again, with it
    assert (batch.ingested, batch.erased) == (3, 4)
    assert _count(lk, f"WHERE PatientID = '{_pseudonym(lk, vault_dir)}'") == 0
    assert _count(lk) == 3 and lk.verify().ok


def test_ingests_racing_an_erasure_leave_nothing_of_the_patient(
    lk: lake.Lake, lake_root: Path, vault_dir: Path, tmp_path: Path
) -> None:
    """Real processes at random moments (seeded): ingests of the patient's files, small
    batches, while 'lake forget' runs; whatever the interleaving, nothing of the patient
    stays and the other patient is there exactly once."""
    rng = random.Random(SEED)
    env = _env(lake_root, vault_dir)
    folders = []
    for i in range(3):
        folder = tmp_path / f"in{i}"
        write_ct_series(folder / "gone", rng.randint(4, 8), patient_id=GONE, patient_name=NAME)
        write_ct_series(folder / "kept", 2, patient_id=f"KEPT-{i}")
        folders.append(folder)
    first = _cli(env, "ingest", "-q", str(folders[0]))
    assert first.returncode == 0, first.stderr
    ingests = [
        subprocess.Popen(
            [LAKE, "ingest", "-q", "--scheduler", "sync", "--batch-size",
             str(rng.choice([1, 2, 3])), str(folder)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for folder in folders[1:]
    ]
    time.sleep(rng.uniform(0.5, 3.0))
    erased = _cli(env, "forget", "--original-patient-id", GONE, "--yes")
    outputs = [erased.stdout + erased.stderr]
    for proc in ingests:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-2000:]
        outputs.append(out + err)
    assert erased.returncode == 0, erased.stderr
    assert _count(lk, f"WHERE PatientID = '{_pseudonym(lk, vault_dir)}'") == 0
    assert lk.sql(
        "SELECT count(*), count(DISTINCT SOPInstanceUID) FROM instances"
    ).fetchall() == [(6, 6)]
    assert lk.verify().ok
    _no_phi(*outputs)


@pytest.mark.network
def test_a_modality_sending_a_forgotten_patient_again_is_kept_out(
    lk: lake.Lake, lake_root: Path, vault_dir: Path, tmp_path: Path
) -> None:
    require("storescu")
    write_ct_series(tmp_path / "gone", 4, patient_id=GONE, patient_name=NAME)
    write_ct_series(tmp_path / "later", 3, patient_id=GONE, patient_name=NAME)  # new study
    write_ct_series(tmp_path / "kept", 2, patient_id="KEPT-2")
    env = _env(lake_root, vault_dir)
    port = free_port()
    server = subprocess.Popen(
        [LAKE, "serve", "dicom", "--port", str(port), "--commit-every", "2",
         "--commit-interval", "0.2"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        wait_port(port, timeout=120)
        sent = dcmtk("storescu", "-aec", "LAKE", "+sd", "127.0.0.1", str(port),
                     tmp_path / "gone")
        assert sent.returncode == 0, sent.stderr
        deadline = time.monotonic() + 120
        while _count(lk) < 4 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _count(lk) == 4
        erased = _cli(env, "forget", "--original-patient-id", GONE, "--yes")
        assert erased.returncode == 0, erased.stderr
        assert _count(lk) == 0
        for folder in ("gone", "later", "kept"):  # the same instances again, a new study
            sent = dcmtk("storescu", "-aec", "LAKE", "+sd", "127.0.0.1", str(port),
                         tmp_path / folder)
            assert sent.returncode == 0, sent.stderr
    finally:
        out, err = stop_server(server)
    assert server.returncode == 0, err[-2000:]
    assert _count(lk) == 2
    assert _count(lk, f"WHERE PatientID = '{_pseudonym(lk, vault_dir)}'") == 0
    assert _erased(lk) == 7
    assert lk.sql("SELECT count(*) FROM quarantine").fetchall() == [(0,)]
    assert not [p for p in (lake_root / "spool").rglob("*.journal") if p.stat().st_size]
    verify = _cli(env, "verify")
    assert verify.returncode == 0, verify.stderr
    _no_phi(out, err, erased.stdout, erased.stderr, verify.stdout, verify.stderr)


@pytest.mark.network
def test_stow_of_a_forgotten_patient_is_kept_out(
    lk: lake.Lake, lake_root: Path, vault_dir: Path, tmp_path: Path
) -> None:
    """STOW-RS commits through its own front door (intake 'stow'): the same tombstone holds."""
    import httpx

    from lake.access import create_token
    from tests.test_concurrent_front_doors import MULTIPART, _web_address

    write_ct_series(tmp_path / "gone", 3, patient_id=GONE, patient_name=NAME)
    write_ct_series(tmp_path / "kept", 2, patient_id="KEPT-2")
    secret = lk.secret(vault_dir)
    forget(lk, secret, target(lk, secret, original_patient_id=GONE))
    _, token = create_token(lk, "steward")
    env = _env(lake_root, vault_dir)
    web = subprocess.Popen([LAKE, "serve", "web", "--port", "0"], env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    answers = []
    try:
        url = _web_address(web)
        with httpx.Client(base_url=url, timeout=120) as http:
            for path in sorted(tmp_path.rglob("*.dcm")):
                body = (b"--XyZ\r\nContent-Type: application/dicom\r\n\r\n" + path.read_bytes()
                        + b"\r\n--XyZ--\r\n")
                response = http.post("/dicomweb/studies", content=body, headers={
                    "Authorization": f"Bearer {token}", "Content-Type": MULTIPART})
                assert response.status_code == 200, response.text[:500]
                answers.append(response.text)
    finally:
        out, err = stop_server(web)
    assert web.returncode == 0, err[-2000:]
    assert _count(lk) == 2 and _erased(lk) == 3
    assert _count(lk, f"WHERE PatientID = '{_pseudonym(lk, vault_dir)}'") == 0
    assert lk.verify().ok
    _no_phi(out, err, *answers)


def test_a_forgotten_patients_studies_stay_out_under_a_corrected_patient_id(
    lk: lake.Lake, lake_root: Path, vault_dir: Path, tmp_path: Path
) -> None:
    """The same studies sent again after a Patient ID correction (a new pseudonym) are the
    forgotten patient's all the same: their keyed Study Instance UIDs are tombstoned too."""
    inbox = tmp_path / "in"
    write_ct_series(inbox / "gone", 3, patient_id=GONE, patient_name=NAME)
    env = _env(lake_root, vault_dir)
    assert _cli(env, "ingest", str(inbox)).returncode == 0
    gone = _cli(env, "forget", "--original-patient-id", GONE, "--yes")
    assert gone.returncode == 0, gone.stderr
    for path in (inbox / "gone").iterdir():  # the MRN corrected at the PACS, then re-sent
        ds = dcmread(path)
        ds.PatientID = GONE + "-CORRECTED"
        ds.save_as(path)
    again = _cli(env, "ingest", str(inbox))
    assert again.returncode == 0, again.stderr
    assert _count(lk) == 0 and _erased(lk) == 3
    _no_phi(gone.stdout, gone.stderr, again.stdout, again.stderr)


def test_a_commit_reads_the_tombstones_again_only_when_they_changed(
    lk: lake.Lake, vault_dir: Path, tmp_path: Path
) -> None:
    """Each commit checks whether the tombstones table has a new version (a listing of its
    log) and reads its data only then: counted, not timed."""
    secret = lk.secret(vault_dir)
    forget(lk, secret, target(lk, secret, original_patient_id="NEVER-SEEN"))
    ingestor = Ingestor(lk, secret)
    for n in range(3):
        write_ct_series(tmp_path / f"kept{n}", 2, patient_id=f"KEPT-{n}")
        outcomes = [ingestor.process(p.read_bytes())
                    for p in sorted((tmp_path / f"kept{n}").glob("*.dcm"))]
        assert ingestor.commit(outcomes).ingested == 2
    assert ingestor.tombstones.loads == 1  # three commits, one read
    forget(lk, secret, target(lk, secret, original_patient_id=GONE))
    write_ct_series(tmp_path / "gone", 3, patient_id=GONE, patient_name=NAME)
    outcomes = [ingestor.process(p.read_bytes()) for p in sorted((tmp_path / "gone").glob("*"))]
    batch = ingestor.commit(outcomes)
    assert (batch.ingested, batch.erased) == (0, 3)  # the new tombstone is seen at once
    assert ingestor.tombstones.loads == 2
    again = ingestor.commit(outcomes)
    assert (again.ingested, again.erased, ingestor.tombstones.loads) == (0, 3, 2)


def test_many_erasures_keep_the_tombstones_table_small(lk: lake.Lake, vault_dir: Path) -> None:
    """Every erasure adds a data file; past COMPACT_AFTER files they are compacted into one
    (and checkpointed), and every tombstone still holds."""
    from deltalake import DeltaTable

    key = lk.secret(vault_dir).derive(PURPOSE)
    values = [f"P{i:03d}" for i in range(COMPACT_AFTER + 4)]
    for i, value in enumerate(values):
        lay(lk.tables, key, "PatientID", [value], "patient", f"erasure-{i}")
        assert compact(lk.tables) is None
    delta = DeltaTable(lk.tables.uri("tombstones"))
    assert len(delta.file_uris()) < COMPACT_AFTER
    laid = TombstoneCache(key).read(lk.tables)
    assert all(laid.erased({"PatientID": v}) for v in values)
    assert not laid.erased({"PatientID": "P999"})


def test_laying_compacts_nothing_and_a_failed_compaction_fails_no_erasure(
    lk: lake.Lake, vault_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Review s19 S6: the tombstones' compaction runs after the erasure's critical section
    (not inside lay), and storage refusing it is logged, not an erasure that fails."""
    from deltalake import DeltaTable
    from deltalake.table import TableOptimizer

    key = lk.secret(vault_dir).derive(PURPOSE)
    for i in range(COMPACT_AFTER):
        lay(lk.tables, key, "PatientID", [f"P{i:03d}"], "patient", f"erasure-{i}")
    assert len(DeltaTable(lk.tables.uri("tombstones")).file_uris()) == COMPACT_AFTER
    assert laid_at(lk.tables, key, "PatientID", "P000") is not None
    assert laid_at(lk.tables, key, "PatientID", "P999") is None

    def refused(self: TableOptimizer, *args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(TableOptimizer, "compact", refused)
    write_ct_series(tmp_path / "in", 1, patient_id="GONE-S6")
    lk.ingest([str(tmp_path / "in")], vault=vault_dir, scheduler="sync")
    lk.refresh()
    (pid,) = {p for (p,) in lk.sql("SELECT PatientID FROM instances").fetchall()}
    secret = lk.secret(vault_dir)
    with caplog.at_level("WARNING", logger="lake.steward._forget"):
        report = forget(lk, secret, target(lk, secret, patient=pid))
    assert report.plan.instances == 1
    assert "could not be compacted" in caplog.text
    # counted in the erasure's report, one line, the error's type only (review s19 S6)
    assert report.maintenance_failures == (
        "the tombstones table could not be compacted (OSError); the next erasure tries again",)
    assert lk.sql("SELECT count(*) FROM instances").fetchall() == [(0,)]
    assert lk.sql("SELECT count(*) FROM erasures").fetchall() == [(1,)]
    # and `lake forget` says so, exit code 0 (the erasure is complete)
    from typer.testing import CliRunner

    from pipelines.cli import app

    write_ct_series(tmp_path / "in2", 1, patient_id="GONE-S6-CLI")
    lk.ingest([str(tmp_path / "in2")], vault=vault_dir, scheduler="sync")
    lk.refresh()
    (pid,) = {p for (p,) in lk.sql("SELECT PatientID FROM instances").fetchall()}
    result = CliRunner().invoke(app, ["forget", "--lake", str(lk.root), "--vault",
                                      str(vault_dir), "--patient", pid, "--yes"])
    assert result.exit_code == 0, result.output
    assert ("1 maintenance step(s) after the erasure failed (the erasure is complete): "
            "the tombstones table could not be compacted (OSError)") in result.output
    assert "GONE-S6" not in result.output
    lk.refresh()
    assert lk.sql("SELECT count(*) FROM erasures").fetchall() == [(2,)]
    monkeypatch.undo()
    assert compact(lk.tables) is None  # the next one compacts
    assert len(DeltaTable(lk.tables.uri("tombstones")).file_uris()) < COMPACT_AFTER
