"""The catalog's write path: exactly once under any interleaving of writers, and batch records
that survive a kill between the commits of one batch."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import CommitProperties, DeltaTable, write_deltalake

import lake
from lake.catalog import INSTANCES, QUARANTINE, Judged
from tests.series import write_ct_series

KEY = "SOPInstanceUID"


def _rows(owner: str, uids: list[str]) -> list[dict[str, object]]:
    return [{KEY: u, "batch_id": owner, "Modality": "CT"} for u in uids]


def _table(lk: lake.Lake) -> list[tuple[str, str]]:
    lk.refresh()
    return lk.sql("SELECT SOPInstanceUID, batch_id FROM instances ORDER BY ALL").fetchall()


def _commit_info(lake_root: Path, version: int) -> dict[str, object]:
    log = lake_root / "tables" / "instances" / "_delta_log" / f"{version:020d}.json"
    for line in log.read_text().splitlines():
        action = json.loads(line)
        if "commitInfo" in action:
            return dict(action["commitInfo"])
    raise AssertionError(f"no commitInfo in version {version}")


def test_deltalake_history_misnumbers_commits_made_after_open(tmp_path: Path) -> None:
    """The root cause of issue 16.1, with deltalake alone: history() numbers its entries from
    the version the table was opened at, so a commit landing after the open shifts them by
    one; a write through the table object reports the version its commit really made."""
    uri = str(tmp_path / "t")
    write_deltalake(uri, pa.table({"a": [0]}), mode="append")
    opened = DeltaTable(uri)  # version 0
    write_deltalake(
        uri,
        pa.table({"a": [1]}),
        mode="append",
        commit_properties=CommitProperties(custom_metadata={"who": "late"}),
    )  # lands as version 1, after the open
    (entry, *_) = opened.history(1)
    assert entry["who"] == "late" and entry["version"] == 0, (
        "deltalake's history() now numbers commits made after the open correctly; the "
        "lake does not rely on it either way"
    )
    mine = DeltaTable(uri)
    write_deltalake(uri, pa.table({"a": [2]}), mode="append")  # another writer: version 2
    write_deltalake(
        mine,
        pa.table({"a": [3]}),
        mode="append",
        commit_properties=CommitProperties(custom_metadata={"who": "mine"}),
    )  # ours: version 3
    assert mine.version() == 3
    log = (tmp_path / "t" / "_delta_log" / f"{3:020d}.json").read_text()
    assert '"who":"mine"' in log


def test_the_interleaving_that_left_duplicates_for_good(lk: lake.Lake, lake_root: Path) -> None:
    """Issue 16.1 exactly: A judges its rows, B commits three of the same instances, C commits
    an unrelated row, then A commits. Before: A judged its commit by history() numbers that C
    had shifted, kept its copies, and verify found 3 duplicates forever. Now A's commit must
    directly follow the snapshot it judged, so it is judged again and adds only the rest."""
    tables = lk.tables
    uids = [f"2.25.{i}" for i in range(5)]
    judged_versions: list[int] = []

    def a_plan(judged: Judged) -> tuple[pa.Table, dict[str, str]]:
        judged_versions.append(judged.read_version)
        if len(judged_versions) == 1:
            assert tables.insert_new(INSTANCES, _rows("B", uids[:3]), key=KEY).count == 3
            tables.append(INSTANCES, _rows("C", ["2.25.99"]))
        return judged.new, {"imaging-lake.test": "A"}

    result = tables.insert_new(INSTANCES, _rows("A", uids), key=KEY, plan=a_plan)
    assert result.count == 2 and result.committed
    assert judged_versions == [0, 2]  # judged again after B (1) and C (2) committed
    assert result.version == 3
    assert _commit_info(lake_root, 3)["imaging-lake.test"] == "A"
    assert _table(lk) == sorted(
        [(u, "B") for u in uids[:3]] + [(u, "A") for u in uids[3:]] + [("2.25.99", "C")]
    )
    report = lk.verify()
    assert report.duplicate_instances == []


def test_an_append_racing_a_delete_is_judged_again(lk: lake.Lake) -> None:
    """Issue 16.2: another writer deletes rows (as 'lake forget' does) between A's judgement and
    A's commit. A is not failed (was: CommitFailedError, exit 70): it is judged again against
    the table without those rows, so an instance deleted before A commits is added by A."""
    tables = lk.tables
    tables.insert_new(INSTANCES, _rows("old", ["2.25.1", "2.25.2"]), key=KEY)
    calls: list[int] = []

    def a_plan(judged: Judged) -> tuple[pa.Table, None]:
        calls.append(judged.new.num_rows)
        if len(calls) == 1:
            tables.delete(INSTANCES, f"{KEY} = '2.25.1'")
        return judged.new, None

    result = tables.insert_new(
        INSTANCES, _rows("A", ["2.25.1", "2.25.2", "2.25.3"]), key=KEY, plan=a_plan
    )
    assert calls == [1, 2]
    assert result.count == 2
    assert _table(lk) == [("2.25.1", "A"), ("2.25.2", "old"), ("2.25.3", "A")]


@pytest.mark.parametrize("order", list(itertools.permutations("ABC")))
def test_every_nesting_of_three_writers_keeps_each_instance_once(
    lk: lake.Lake, order: tuple[str, ...]
) -> None:
    """Each writer judges, then lets the next writer run to completion before committing:
    every permutation of three writers with overlapping instances, a deleter between
    judgements, and rows without a key. The first commit of an instance wins; the table
    never holds a key twice."""
    tables = lk.tables
    sets = {
        "A": ["2.25.1", "2.25.2", "2.25.3"],
        "B": ["2.25.2", "2.25.3", "2.25.4"],
        "C": ["2.25.3", "2.25.4", "2.25.5", "2.25.1"],
    }
    tables.insert_new(INSTANCES, _rows("seed", ["2.25.5", "2.25.6"]), key=KEY)
    committed: list[str] = []

    def writer(position: int) -> Callable[[], None]:
        name = order[position]

        def run() -> None:
            first = True

            def plan(judged: Judged) -> tuple[pa.Table, None]:
                nonlocal first
                if first:
                    first = False
                    if position + 1 < len(order):
                        writer(position + 1)()
                    else:
                        tables.delete(INSTANCES, f"{KEY} = '2.25.5'")
                return judged.new, None

            rows = [*_rows(name, sets[name]), {KEY: None, "batch_id": name, "Modality": "SR"}]
            if tables.insert_new(INSTANCES, rows, key=KEY, plan=plan).committed:
                committed.append(name)

        return run

    writer(0)()
    assert committed == list(reversed(order))  # the innermost writer commits first
    rows = _table(lk)
    keyed = [r for r in rows if r[0] is not None]
    assert len({k for k, _ in keyed}) == len(keyed), rows
    expected_owner: dict[str, str] = {"2.25.6": "seed"}
    for name in committed:  # commit order: first commit of a key wins
        for uid in sets[name]:
            expected_owner.setdefault(uid, name)
    assert dict(keyed) == expected_owner
    assert sorted(b for k, b in rows if k is None) == sorted(order)


_KILL_BETWEEN = textwrap.dedent(
    """
    import os, signal, sys
    import lake
    from lake.ingest import Ingestor, _commit

    lk = lake.open(sys.argv[1])
    ingestor = Ingestor(lk, lk.secret(sys.argv[2]))
    outcomes = [ingestor.process(open(p, "rb").read()) for p in sys.argv[4:]]
    stage = sys.argv[3]

    def die(tables, journal):
        if stage == "after-quarantine":
            from lake.catalog import QUARANTINE
            tables.insert_new(QUARANTINE, journal.quarantine, key="source_sha256")
        os.kill(os.getpid(), signal.SIGKILL)

    _commit.record_batch = die
    ingestor.commit(outcomes)
    """
)


@pytest.mark.parametrize("stage", ["after-instances", "after-quarantine"])
def test_a_kill_between_the_commits_of_a_batch_leaves_a_lake_that_verifies(
    lk: lake.Lake, lake_root: Path, vault_dir: Path, tmp_path: Path, stage: str
) -> None:
    """SIGKILL right after the instances commit (or after the quarantine rows): the batch row
    is missing, yet every fact of the batch is in its instances commit. verify completes the
    record from that journal, exactly once, and the lake verifies; re-running adds nothing."""
    files = write_ct_series(tmp_path / "in", 4)
    junk = tmp_path / "in" / "junk.dcm"
    junk.write_bytes(b"\x00not a DICOM file at all" * 10)  # a zero byte: not plainly text
    args = [str(lake_root), str(vault_dir), stage, *map(str, files), str(junk)]
    done = subprocess.run([sys.executable, "-c", _KILL_BETWEEN, *args], capture_output=True)
    assert done.returncode == -9, done.stderr.decode()[-2000:]
    lk.refresh()
    assert lk.sql("SELECT count(*) FROM batches").fetchall() == [(0,)]
    (batch_id,) = {b for _, b in _table(lk)}

    report = lk.verify()
    assert report.ok and report.completed_batches == [batch_id]
    assert report.missing_batches == []
    lk.refresh()
    batch = lk.sql(
        "SELECT batch_id, files_seen, ingested, duplicates, quarantined, catalog_version "
        "FROM batches"
    ).fetchall()
    assert batch == [(batch_id, 5, 4, 0, 1, 1)]
    assert lk.sql("SELECT batch_id, reason FROM quarantine").fetchall() == [(batch_id, "not_dicom")]
    assert lk.verify().completed_batches == []  # done once

    summary = lk.ingest([str(tmp_path / "in")], vault=vault_dir, scheduler="sync")
    assert (summary.ingested, summary.duplicates, summary.quarantined) == (0, 4, 1)
    lk.refresh()
    assert lk.sql("SELECT count(*) FROM quarantine").fetchall() == [(1,)]  # one row per file
    assert lk.sql("SELECT count(*) FROM batches").fetchall() == [(2,)]
    assert lk.verify().ok


def test_every_batch_row_matches_its_journal(
    lk: lake.Lake, lake_root: Path, ct_folder: Path, vault_dir: Path
) -> None:
    """The batch row appended after the commit is the one the commit's journal holds."""
    lk.ingest([str(ct_folder)], vault=vault_dir, scheduler="sync", batch_size=5)
    lk.refresh()
    rows = lk.sql("SELECT batch_id, catalog_version, ingested FROM batches ORDER BY 2").fetchall()
    assert [v for _, v, _ in rows] == [1, 2, 3] and sum(n for *_, n in rows) == 12
    for batch_id, version, _ in rows:
        journal = json.loads(str(_commit_info(lake_root, version)["imaging-lake.batch"]))
        assert journal["batch"]["batch_id"] == batch_id


def test_verify_reports_rows_whose_batch_is_unknown(lk: lake.Lake) -> None:
    lk.tables.append(INSTANCES, _rows("no-such-batch", ["2.25.7"]))
    lk.tables.append(QUARANTINE, [{"batch_id": "nor-this", "reason": "empty"}])
    report = lk.verify()
    assert not report.ok
    assert report.missing_batches == ["no-such-batch", "nor-this"]


def test_verify_cli_exit_code_on_missing_batch(lk: lake.Lake, lake_root: Path) -> None:
    lk.tables.append(INSTANCES, _rows("no-such-batch", ["2.25.7"]))
    lake_cli = str(Path(sys.executable).with_name("lake"))
    done = subprocess.run(
        [lake_cli, "verify"],
        env=dict(os.environ, LAKE_ROOT=str(lake_root)),
        capture_output=True,
        text=True,
    )
    assert done.returncode == 4
    assert "no batch record: no-such-batch" in done.stderr


_INGEST_LOADS = """
import atexit, json, sys
from pipelines.cli import main
atexit.register(lambda: print(json.dumps(
    sorted(m for m in sys.modules if m.split(".")[0] in ("fsspec", "asyncio")))))
sys.argv = ["lake", "ingest", *sys.argv[1:]]
main()
"""


def test_a_local_ingest_imports_no_fsspec(tmp_path: Path) -> None:
    """`lake ingest` into a local lake (a small job, in this process): its reads, blob
    writes, commit, summaries and key index never load fsspec, which imports asyncio."""
    lk = lake.init(tmp_path / "lake", vault=tmp_path / "vault")
    files = write_ct_series(tmp_path / "ct", n=3)
    proc = subprocess.run(
        [sys.executable, "-c", _INGEST_LOADS, *map(str, files), "--lake", str(tmp_path / "lake"),
         "--vault", str(tmp_path / "vault"), "-q"],
        capture_output=True, text=True, check=True)
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []
    assert lk.sql("SELECT count(*) FROM instances").fetchall() == [(3,)]  # it ran
