"""Erasure (issue 15.1): after 'lake forget' no byte of the withdrawn instances is anywhere in the
lake, the other patients are untouched, and the erased versions say so."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid

import lake
from lake.ingest import Ingestor
from lake.net._spool import Spool
from tests.series import write_ct_series

LAKE = str(Path(sys.executable).with_name("lake"))


def _cli(root: Path, vault: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, LAKE_ROOT=str(root), LAKE_VAULT=str(vault))
    return subprocess.run([LAKE, *args], env=env, capture_output=True, text=True)


def _everything(root: Path) -> dict[str, str]:
    """Every file of the lake as searchable text: raw bytes, and for Parquet files also their
    decoded values and statistics (UIDs inside compressed pages are not in the raw bytes)."""
    out: dict[str, str] = {}
    for path in root.rglob("*"):
        if not path.is_file():
            continue
        text = path.read_bytes().decode("latin-1")
        if path.suffix == ".parquet":
            table = pq.read_table(path)
            text += json.dumps(table.to_pylist(), default=str)
            meta = pq.ParquetFile(path).metadata
            for g in range(meta.num_row_groups):
                for c in range(meta.num_columns):
                    stats = meta.row_group(g).column(c).statistics
                    if stats is not None and stats.has_min_max:
                        text += f"{stats.min!r}{stats.max!r}"
        out[str(path.relative_to(root))] = text
    return out


def _rows(lk: lake.Lake, where: str) -> dict[str, tuple[str, bytes]]:
    rows = lk.sql(f"SELECT SOPInstanceUID, header_dicom, pixel_hash FROM instances {where}")
    return {
        uid: (hashlib.sha256(header).hexdigest(), lk.blobs.get(blob))
        for uid, header, blob in rows.fetchall()
    }


@pytest.fixture
def populated(lk: lake.Lake, vault_dir: Path, tmp_path: Path) -> dict[str, object]:
    """Three patients in files shared between them, one refused and one spooled file of
    the patient to forget, and a cohort holding members of two of them."""
    inbox = tmp_path / "in"
    for p in range(3):
        # Slice i of every patient has the same pixels: blobs are shared, except slice 6.
        count = 7 if p == 1 else 6
        write_ct_series(inbox / f"p{p}", count, patient_id=f"PAT-{p}", patient_name=f"Doe^P{p}")
    refused = dcmread(inbox / "p1" / "slice0000.dcm")
    refused.BurnedInAnnotation = "YES"  # the basic profile refuses burned-in text
    refused.SOPInstanceUID = generate_uid()
    refused.save_as(inbox / "p1" / "burned.dcm")
    # Batches of 4 over the three folders: data files mix patients.
    lk.ingest([str(inbox)], vault=vault_dir, scheduler="sync", batch_size=4)
    lk.refresh()
    pseudonyms = dict(lk.sql("SELECT PatientID, count(*) FROM instances GROUP BY 1").fetchall())
    assert len(pseudonyms) == 3 and lk.sql("SELECT count(*) FROM quarantine").fetchall() == [(1,)]
    from lake.steward import target as resolve

    target = resolve(lk, lk.secret(vault_dir), original_patient_id="PAT-1").value
    assert target in pseudonyms
    # A spooled (received, not yet committed) instance of the same patient.
    ingestor = Ingestor(lk, lk.secret(vault_dir), source="dicom-store")
    spooled = None
    for folder in ("p0", "p1", "p2"):
        first = dcmread(inbox / folder / "slice0001.dcm")
        first.SOPInstanceUID = generate_uid()
        path = tmp_path / f"spool-{folder}.dcm"
        first.save_as(path)
        outcome = ingestor.process(path.read_bytes())
        entry = Spool(lk.location, "dicom-store").put(outcome)
        if outcome.row["PatientID"] == target:  # type: ignore[union-attr]
            spooled = entry
    assert spooled is not None
    lk.create_cohort("two", "SELECT * FROM instances WHERE InstanceNumber <= 3")
    return {"target": target, "inbox": inbox}


def test_forget_leaves_no_byte_and_touches_no_one_else(
    lk: lake.Lake, lake_root: Path, vault_dir: Path, populated: dict[str, object], tmp_path: Path
) -> None:
    target = str(populated["target"])
    before_version = lk.version
    others_before = _rows(lk, f"WHERE PatientID <> '{target}'")
    mine = lk.sql(
        "SELECT SOPInstanceUID, SeriesInstanceUID, StudyInstanceUID, pixel_hash "
        f"FROM instances WHERE PatientID = '{target}'"
    ).fetchall()
    shared = {
        h
        for (h,) in lk.sql(
            f"SELECT pixel_hash FROM instances WHERE PatientID <> '{target}'"
        ).fetchall()
    }
    tokens = {target} | {v for row in mine for v in row[:3]}
    own_blobs = {row[3] for row in mine} - shared
    tokens |= own_blobs | {b.split(":")[1] for b in own_blobs}
    (sealed_sha,) = lk.sql("SELECT source_sha256 FROM quarantine").fetchall()[0]
    tokens.add(sealed_sha)
    spool_dir = lake_root / "spool" / "dicom-store"
    assert len(list(spool_dir.glob("*.json"))) == 3
    export_before = tmp_path / "before"
    lk.export_dicom("SELECT * FROM instances WHERE PatientID <> '" + target + "'", export_before)

    everywhere = "".join(_everything(lake_root).values())
    assert {t for t in tokens if t in everywhere} == tokens  # the scan sees them before
    dry = _cli(lake_root, vault_dir, "forget", "--patient", target)
    assert dry.returncode == 0, dry.stderr
    assert "would erase: 7 instances (1 whole series, 1 whole studies), 1 pixel blobs" in dry.stdout
    assert "1 quarantined originals, 1 spooled instances; 1 cohorts" in dry.stdout
    assert dry.stdout.strip().endswith("out of history; 0 audit rows redacted"), dry.stdout
    assert lk.sql("SELECT count(*) FROM instances").fetchall() == [(19,)]

    done = _cli(lake_root, vault_dir, "forget", "--patient", target, "--yes", "--by", "steward")
    assert done.returncode == 0, done.stderr
    lk.refresh()

    found = {
        name: sorted(t for t in tokens if t in text)
        for name, text in _everything(lake_root).items()
    }
    assert {n: t for n, t in found.items() if t} == {}
    assert lk.sql("SELECT count(*) FROM instances").fetchall() == [(12,)]
    assert _rows(lk, "") == others_before  # the other patients, byte for byte
    assert all(lk.blobs.exists(h) for h in shared)
    assert len(list(spool_dir.glob("*.json"))) == 2
    assert lk.sql("SELECT count(*) FROM quarantine").fetchall() == [(0,)]
    assert lk.verify().ok

    record = lk.sql(
        "SELECT kind, instances, series, studies, quarantined, spooled, cohorts, erased_by "
        "FROM erasures"
    ).fetchall()
    assert record == [("patient", 7, 1, 1, 1, 1, 1, "steward")]
    with pytest.raises(lake.LakeError, match=r"was erased on .*erasure [0-9a-f]{32}"):
        lk.sql("SELECT count(*) FROM instances", as_of=before_version).fetchall()
    refused = _cli(
        lake_root, vault_dir, "sql", "SELECT 1 FROM instances", "--as-of", str(before_version)
    )
    assert refused.returncode == 1 and "was erased" in refused.stderr

    cohort = lk.cohort("two")
    assert cohort.withdrawn == 3 and len(cohort.members) == 6
    summary = lk.export_dicom("two", tmp_path / "cohort")
    manifest = json.loads((tmp_path / "cohort" / "manifest.json").read_text())
    assert manifest["cohort"]["withdrawn"] == 3 and summary is not None
    export_after = tmp_path / "after"
    lk.export_dicom("SELECT * FROM instances", export_after)
    before = {p.relative_to(export_before): p.read_bytes() for p in export_before.rglob("*.dcm")}
    after = {p.relative_to(export_after): p.read_bytes() for p in export_after.rglob("*.dcm")}
    assert before == after and len(after) == 12

    again = _cli(lake_root, vault_dir, "forget", "--patient", target, "--yes")
    assert again.returncode == 0 and "nothing to erase" in again.stdout


def test_forget_by_original_patient_id_and_bad_values(
    lk: lake.Lake, lake_root: Path, vault_dir: Path, populated: dict[str, object]
) -> None:
    from lake.steward import target

    secret = lk.secret(vault_dir)
    resolved = [target(lk, secret, original_patient_id=f"PAT-{p}").value for p in range(3)]
    assert str(populated["target"]) in resolved
    for args in (
        ["--study", "1.2.x"],
        ["--patient", "x' OR '1'='1"],
        ["--patient", "A", "--study", "1.2"],
        [],
    ):
        bad = _cli(lake_root, vault_dir, "forget", *args)
        assert bad.returncode == 1 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    series = lk.sql("SELECT min(SeriesInstanceUID) FROM instances").fetchall()[0][0]
    done = _cli(lake_root, vault_dir, "forget", "--series", series, "--yes")
    assert done.returncode == 0, done.stderr
    lk.refresh()
    assert lk.sql(
        f"SELECT count(*) FROM instances WHERE SeriesInstanceUID = '{series}'"
    ).fetchall() == [(0,)]
    assert lk.verify().ok


@pytest.mark.parametrize("interrupted", [False, True])
def test_forget_redacts_the_audit_log_in_every_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, interrupted: bool
) -> None:
    """Token use of the web services names studies, series and instances in ``audit``; after
    forgetting the patient no audit row, and no file of any version, names them: the rows
    keep who, what and when, with ``<erased>`` as resource. The other patient's rows stay.
    Interrupted while removing the old audit files, a second run finishes the job."""
    from lake.access import AuditEvent, record_events
    from lake.export._runner import patient_label
    from lake.steward import forget, plan_forget, target
    from tests.web_peers import build_web_lake, serving

    web = build_web_lake(tmp_path, slices=3)
    lk, root = web.lake, tmp_path / "lake"
    secret = lk.secret(web.vault)
    bearer = {"Authorization": f"Bearer {web.tokens['steward']}"}

    def read(uids: tuple[str, str, str]) -> None:
        study, series, sop = uids
        for path in (f"studies/{study}/series", f"studies/{study}/series/{series}/instances",
                     f"studies/{study}/series/{series}/instances/{sop}/metadata"):
            assert client.get(f"/dicomweb/{path}", headers=bearer).status_code == 200, path

    with serving(web) as (_server, client):  # one server, its audit commits ...
        read(web.uids["a"])
    with serving(web) as (_server, client):  # ... and another's: several versions of audit
        read(web.uids["b"])
        read(web.uids["a"])
    (pseudonym,) = lk.sql(
        f"SELECT DISTINCT PatientID FROM instances WHERE StudyInstanceUID = '{web.uids['a'][0]}'"
    ).fetchall()[0]
    # A row naming the patient's file-name label (what an export of a case is called).
    record_events(lk, [AuditEvent("download", "system", "steward", None, "case",
                                  f"sub-{patient_label(pseudonym)}")])
    lk.refresh()
    mine = lk.sql(
        "SELECT StudyInstanceUID, SeriesInstanceUID, SOPInstanceUID FROM instances "
        f"WHERE PatientID = '{pseudonym}'"
    ).fetchall()
    tokens = {pseudonym} | {uid for row in mine for uid in row}
    audit = "SELECT event_id, \"at\", actor, action, resource_kind, resource, detail FROM audit"
    before = {row[0]: row for row in lk.sql(audit).fetchall()}
    others = {k: r for k, r in before.items() if r[5] in web.uids["b"]}
    assert len(others) == 3, sorted(map(str, before.values()))  # b's study, series, instance
    naming = {k for k, r in before.items() if r[5] and any(t in r[5] for t in tokens)}
    assert len(naming) == 7  # a's study, series, instance twice, and the case
    audit_version = lk.tables.open("audit").version()
    assert len(list((root / "tables" / "audit").glob("*.parquet"))) >= 3
    everywhere = "".join(_everything(root).values())
    assert {t for t in tokens if t in everywhere} == tokens  # the scan sees them before

    chosen = target(lk, secret, patient=pseudonym)
    assert plan_forget(lk, secret, chosen).audit_rows == 7
    if interrupted:
        import lake.steward._forget as forgetting

        erase = forgetting.erase_files

        def killed(tables: object, table: object, *args: object) -> object:
            if getattr(table, "name", "") == "audit":
                raise KeyboardInterrupt
            return erase(tables, table, *args)  # type: ignore[arg-type]

        monkeypatch.setattr(forgetting, "erase_files", killed)
        with pytest.raises(KeyboardInterrupt):
            forget(lk, secret, chosen, by="steward")
        monkeypatch.setattr(forgetting, "erase_files", erase)
    report = forget(lk, secret, chosen, by="steward")
    lk.refresh()

    after = {row[0]: row for row in lk.sql(audit).fetchall()}
    assert after.keys() == before.keys()  # who did what when stays
    assert {k: after[k] for k in others} == others
    for key in naming:
        assert after[key][5] in ("<erased>", "sub-<erased>"), after[key]
        assert after[key][:5] == before[key][:5] and after[key][6] == before[key][6]
    found = {name: sorted(t for t in tokens if t in text)
             for name, text in _everything(root).items()}
    assert {n: t for n, t in found.items() if t} == {}
    assert report.unreadable.get("audit")
    with pytest.raises(lake.CatalogError, match=r"was erased on .*erasure [0-9a-f]{32}"):
        lk.tables.open("audit", audit_version)
    assert plan_forget(lk, secret, chosen).audit_rows == 0


def test_audit_finder_finds_exactly_what_the_token_pattern_finds() -> None:
    """The fast audit search (a set lookup, then the pattern) agrees with
    :func:`lake.steward._history.token_pattern` wherever a token sits in a text."""
    import itertools

    from lake.steward._forget import _finder
    from lake.steward._history import token_pattern

    tokens = ["1.2.840.10008.99.1", "2.25.1234", "9f8e7d6c5b4a3921", "sha256:" + "ab" * 32,
              "PAT-1_x", "h1e4b7ce5a8d6", "_-_"]
    near = ["1.2.840.10008.99", "2.25.12345", "9f8e7d6c5b4a392", "ab" * 32, "PAT-1", "_-"]
    sides = ["", " ", "/", ":", ".", "a", "7", "-", "_", "sub-", "=", "'"]
    names, pattern = _finder(tokens), token_pattern(tokens)
    checked = 0
    for word, before, after in itertools.product(tokens + near, sides, sides):
        text = f"x{before}{word}{after}y"
        for candidate in (text, text[1:], text[:-1], text[1:-1]):
            assert names(candidate) == (pattern.search(candidate) is not None), candidate
            checked += 1
    assert checked > 2000
    assert names("GET /dicomweb/studies/{study}/series 200") is False
    assert names("2.25.1234") and not names("2.25.12345") and not names("1.2.2.25.1234")


def test_a_killed_checkpoint_write_neither_stops_forget_nor_outlives_it(
    lk: lake.Lake, lake_root: Path, vault_dir: Path, populated: dict[str, object]
) -> None:
    """delta-rs stages a checkpoint as ``NNN.checkpoint.parquet#1`` and renames it into place:
    a write killed before the rename leaves a partial file no reader opens, which may hold the
    statistics of rows to erase. Forget removes an old one (before: it tried to read it as a
    checkpoint and stopped on 'Parquet magic bytes not found'); a young one may be a write in
    progress, so forget stops with a one-line message, and running it again finishes the job."""
    import time

    from lake.steward._history import STAGED_AGE

    target = str(populated["target"])
    log = lake_root / "tables" / "instances" / "_delta_log"
    staged = log / "00000000000000000003.checkpoint.parquet#1"
    staged.write_bytes(b"PAR1" + target.encode() * 4)  # partial: no footer
    young = _cli(lake_root, vault_dir, "forget", "--patient", target, "--yes")
    assert young.returncode != 0 and "being written; re-run the command" in young.stderr
    assert "Traceback" not in young.stderr and staged.exists()
    old = time.time() - STAGED_AGE - 60
    os.utime(staged, (old, old))
    done = _cli(lake_root, vault_dir, "forget", "--patient", target, "--yes")
    assert done.returncode == 0, done.stderr
    assert not staged.exists()
    assert not [p for p in log.iterdir() if target.encode() in p.read_bytes()]
