"""Real processes writing one lake at once: every instance exactly once, no writer crashes,
every round (issue 16.1, 16.2; seeded, so a failing round can be replayed)."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

import lake
from tests.series import write_ct_series

LAKE = str(Path(sys.executable).with_name("lake"))
SEED = int(os.environ.get("LAKE_STRESS_SEED", "1616"))
ROUNDS = 5
WRITERS = 3


@pytest.mark.slow
def test_concurrent_ingests_with_random_batches_stay_exactly_once(
    lk: lake.Lake, lake_root: Path, vault_dir: Path, tmp_path: Path
) -> None:
    rng = random.Random(SEED)
    env = dict(os.environ, LAKE_ROOT=str(lake_root), LAKE_VAULT=str(vault_dir))
    folders: list[Path] = []
    junk: set[bytes] = set()
    instances = 0
    for round_ in range(ROUNDS):
        new = tmp_path / f"r{round_}"
        for s in range(2):
            count = rng.randint(4, 9)
            write_ct_series(new / f"s{s}", count, patient_id=f"P{round_}-{s}")
            instances += count
        content = f"\0round {round_}: not DICOM".encode() * rng.randint(1, 5)  # binary junk
        (new / "notes.dcm").write_bytes(content)
        junk.add(content)
        folders.append(new)
        procs = []
        plan = []
        for _ in range(WRITERS):
            sources = [new, *rng.sample(folders[:-1], k=min(len(folders) - 1, rng.randint(0, 2)))]
            rng.shuffle(sources)
            batch = rng.choice([2, 3, 5, 8, 13])
            plan.append((batch, [s.name for s in sources]))
            cmd = [LAKE, "ingest", "-q", "--scheduler", "sync", "--batch-size", str(batch)]
            procs.append(
                subprocess.Popen(
                    [*cmd, *map(str, sources)],
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                )
            )
        compaction = None
        if rng.random() < 0.5:  # a compaction rewrites files under the writers' feet
            plan.append((0, ["compact"]))
            compaction = subprocess.Popen(
                [LAKE, "compact"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
            )
        for proc in procs:
            _, err = proc.communicate(timeout=120)
            assert proc.returncode == 3, f"seed {SEED} round {round_} {plan}: {err.decode()}"
        if compaction is not None:
            _, err = compaction.communicate(timeout=120)
            assert compaction.returncode == 0, f"seed {SEED} round {round_}: {err.decode()}"
        lk.refresh()
        total, distinct = lk.sql(
            "SELECT count(*), count(DISTINCT SOPInstanceUID) FROM instances"
        ).fetchall()[0]
        assert (total, distinct) == (instances, instances), f"seed {SEED} round {round_} {plan}"
        quarantined = lk.sql("SELECT count(*) FROM quarantine").fetchall()[0][0]
        assert quarantined == len(junk), f"one quarantine row per distinct file ({plan})"
        report = lk.verify()
        assert report.ok, (SEED, round_, plan, report)
        assert report.completed_batches == [] and report.missing_batches == []


@pytest.mark.slow
def test_ingests_the_dicom_receiver_and_a_compaction_at_once(
    lk: lake.Lake, lake_root: Path, vault_dir: Path, tmp_path: Path
) -> None:
    """Issue 15.5: two ingests, C-STOREs into 'lake serve dicom' (committing every 3
    instances) and 'lake compact' on one lake at once, over overlapping instances: every
    instance exactly once, verify clean, query answers unchanged by the compaction."""
    from tests.net_peers import dcmtk, free_port, require, wait_port

    require("storescu")
    for s in range(3):
        write_ct_series(tmp_path / "in" / f"s{s}", 8, patient_id=f"MIX-{s}")
    env = dict(os.environ, LAKE_ROOT=str(lake_root), LAKE_VAULT=str(vault_dir))
    port = free_port()
    server = subprocess.Popen(
        [LAKE, "serve", "dicom", "--port", str(port), "--commit-every", "3",
         "--commit-interval", "0.5"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        wait_port(port)
        ingests = [
            subprocess.Popen(
                [LAKE, "ingest", "-q", "--scheduler", "sync", "--batch-size", str(b),
                 str(tmp_path / "in" / a), str(tmp_path / "in" / c)],
                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            )
            for b, a, c in ((2, "s0", "s1"), (5, "s2", "s0"))
        ]
        compaction = subprocess.Popen(
            [LAKE, "compact"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True,
        )
        stored = dcmtk("storescu", "-aec", "LAKE", "+sd", "+r", "127.0.0.1", str(port),
                       tmp_path / "in" / "s1", tmp_path / "in" / "s2")
        assert stored.returncode == 0, stored.stderr
        for proc in [*ingests, compaction]:
            _, err = proc.communicate(timeout=300)
            assert proc.returncode == 0, err
    finally:
        server.terminate()
        _, err = server.communicate(timeout=120)
    assert server.returncode == 0, err
    lk.refresh()
    assert lk.sql(
        "SELECT count(*), count(DISTINCT SOPInstanceUID) FROM instances"
    ).fetchall() == [(24, 24)]
    report = lk.verify()
    assert report.ok and not report.completed_batches
    answer = lk.sql("SELECT SOPInstanceUID, pixel_hash FROM instances ORDER BY 1").fetchall()
    subprocess.run([LAKE, "compact"], env=env, check=True, capture_output=True)
    lk.refresh()
    assert lk.sql("SELECT SOPInstanceUID, pixel_hash FROM instances ORDER BY 1").fetchall() == answer
