"""Where work runs: the scheduler choice, the shared Runner; ingest leaves pydicom's settings alone
(its warnings are captured per thread: tests/test_capture.py)."""

from __future__ import annotations

import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
from pydicom import config

import lake
from lake.compute import (
    EXPORT_CROSSOVER,
    INGEST_CROSSOVER,
    Crossover,
    Runner,
    Workload,
    choose_scheduler,
)
from lake.ingest._run import _measured
from lake.ingest._sources import iter_items


def _double(task: int, shared: int) -> int:
    return task * 2 + shared


def test_auto_runs_small_jobs_in_this_process() -> None:
    small = Workload(10, 10_000, INGEST_CROSSOVER)
    assert choose_scheduler("auto", small, workers=2) == "sync"
    assert Runner("auto", 2, small).scheduler == "sync"
    with Runner("auto", 2, small) as runner:
        assert sorted(runner.map(_double, range(5), 1)) == [1, 3, 5, 7, 9]


def test_auto_sends_larger_jobs_to_worker_processes() -> None:
    """Ingest from its crossover on a pool of worker processes (no Dask scheduler to start),
    export on a local Dask cluster; an unknown size is taken as large."""
    many = Workload(INGEST_CROSSOVER.items, 0, INGEST_CROSSOVER)
    big = Workload(1, INGEST_CROSSOVER.nbytes, INGEST_CROSSOVER)
    heavy = Workload(1, EXPORT_CROSSOVER.nbytes, EXPORT_CROSSOVER)
    assert choose_scheduler("auto", many, workers=2) == "pool"
    assert choose_scheduler("auto", big, workers=2) == "pool"
    assert choose_scheduler("auto", heavy, workers=2) == "processes"
    assert choose_scheduler("auto", None, workers=2) == "processes"  # size unknown
    # One CPU: other processes cannot pay, whatever the size.
    assert choose_scheduler("auto", many, workers=1) == "sync"


def test_an_explicit_scheduler_is_kept() -> None:
    small = Workload(1, 1, Crossover(100, 100, engine="pool"))
    for name in ("sync", "pool", "processes", "threads", "tcp://127.0.0.1:8786"):
        assert choose_scheduler(name, small, workers=2) == name


def _double_elsewhere(task: int, shared: int) -> tuple[int, bool]:
    if task % 7 == 0:
        time.sleep(0.01)  # finish out of order
    return task * 2 + shared, multiprocessing.parent_process() is not None


def test_pool_gives_every_result_once_and_uses_its_workers() -> None:
    with Runner("pool", 2) as runner:
        results = list(runner.map(_double_elsewhere, range(300), 1))
    # In the order of the tasks, as in this process (an ingest's duplicates depend on it).
    assert [value for value, _ in results] == [2 * i + 1 for i in range(300)]
    assert any(in_worker for _, in_worker in results)  # the window's tasks went to the pool


_FORKED = """
import multiprocessing, sys
from lake.compute import Runner
from lake.compute._pool import fork_safe
from tests.test_compute import _shared_in_worker

assert fork_safe()  # nothing threaded is loaded yet
with Runner("pool", 2) as runner:
    results = list(runner.map(_shared_in_worker, range(40), {"key": b"k" * 100_000}))
    assert runner._pool is not None and runner._pool.forked
print(sorted(results) == [(i, 100_000, True) for i in range(40)])
import pyarrow  # its allocator's threads: no fork from here on
print(fork_safe())
with Runner("pool", 2) as runner:
    results = list(runner.map(_shared_in_worker, range(8), {"key": b"k"}))
    assert runner._pool is not None and not runner._pool.forked
print(sorted(r[:2] for r in results) == [(i, 1) for i in range(8)])
"""


def _shared_in_worker(task: int, shared: dict[str, bytes]) -> tuple[int, int, bool]:
    return task, len(shared["key"]), multiprocessing.parent_process() is not None


def test_pool_forks_only_while_nothing_threaded_is_loaded() -> None:
    """Forked workers inherit the shared value (never pickled); once a library with native
    threads is loaded (pyarrow, delta-rs, DuckDB) the pool spawns them instead."""
    root = Path(__file__).resolve().parents[1]
    # numpy (imported with pydicom) runs no OpenBLAS thread of its own, as under `lake`.
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", _FORKED], cwd=root, text=True, env=env,
                          capture_output=True, timeout=300)  # a hang guard, not a timing
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "False", "True"]


@pytest.mark.parametrize("forking", [True, False])
def test_auto_sends_a_job_to_a_forking_pool_from_fewer_files(
    forking: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pool that forks starts in milliseconds: ``auto`` uses it from ``forked_items``;
    one that must spawn keeps the larger crossover (both branches, review s20 S8)."""
    import lake.compute._pool as pool

    monkeypatch.setattr(pool, "fork_safe", lambda: forking)
    crossover = Crossover(1000, 10**9, engine="pool", forked_items=50)
    job = Workload(60, 0, crossover)
    assert crossover.threshold() == (50 if forking else 1000)
    assert choose_scheduler("auto", job, workers=2) == ("pool" if forking else "sync")
    assert choose_scheduler("auto", Workload(1000, 0, crossover), workers=2) == "pool"


def _die_in_a_worker(task: int, shared: int) -> int:
    if multiprocessing.parent_process() is not None:
        os._exit(1)  # a worker killed mid-task (out of memory, kill -9)
    return task


def test_a_dead_pool_worker_is_an_error_not_a_hang() -> None:
    with pytest.raises(lake.LakeError, match="worker process of the pool died"), \
            Runner("pool", 2) as runner:
        list(runner.map(_die_in_a_worker, range(20), 0))


_KILLED_DRIVER = """
import sys, time
from lake.compute import Runner
from tests.test_compute import _report_pid

with Runner("pool", 2) as runner:
    for _ in runner.map(_report_pid, range(1000), 0):
        pass
"""


def _report_pid(task: int, shared: int) -> int:
    if multiprocessing.parent_process() is not None:
        print(os.getpid(), flush=True)
        time.sleep(0.5)
    return task


@pytest.mark.slow
def _running(pid: int) -> bool:
    """Whether process ``pid`` still runs: an exited worker whose new parent (the container's
    init, after the driver's death) has not reaped it yet is a zombie, which ``kill(pid, 0)``
    still finds."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_pool_workers_exit_when_the_driver_is_killed() -> None:
    """Nothing else stops them when the driver dies by SIGKILL (its workers must not linger,
    holding the lake's key in memory)."""
    root = Path(__file__).resolve().parents[1]
    driver = subprocess.Popen([sys.executable, "-c", _KILLED_DRIVER], cwd=root,
                              stdout=subprocess.PIPE, text=True)
    assert driver.stdout is not None
    worker = int(driver.stdout.readline())
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    for _ in range(300):  # a liveness wait, not a timing: the workers poll their parent
        if not _running(worker):
            break
        time.sleep(0.1)
    else:
        os.kill(worker, signal.SIGKILL)
        pytest.fail("a pool worker outlived its killed driver")


@pytest.mark.slow
def test_pool_ingest_equals_the_in_process_one(tmp_path: Path, samples: Path) -> None:
    from tests.series import write_ct_series

    vault = tmp_path / "vault"
    one = lake.init(tmp_path / "one", vault=vault)
    shutil.copytree(tmp_path / "one", tmp_path / "two")
    two = lake.open(tmp_path / "two")
    write_ct_series(tmp_path / "ct", 40)
    sources = [str(tmp_path / "ct"), str(samples)]
    a = one.ingest(sources, vault=vault, scheduler="sync", batch_size=16, task_size=4)
    b = two.ingest(sources, vault=vault, scheduler="pool", batch_size=16, task_size=4)
    assert (a.ingested, a.quarantined, a.blobs_written, a.duplicates) == (
        b.ingested, b.quarantined, b.blobs_written, b.duplicates)
    assert a.ingested > 40
    rows = ("SELECT SOPInstanceUID, pixel_hash, header_sha256, header_json, header_dicom "
            "FROM instances ORDER BY SOPInstanceUID")
    assert one.sql(rows).fetchall() == two.sql(rows).fetchall()
    assert sorted(one.blobs.keys()) == sorted(two.blobs.keys())
    again = two.ingest(sources, vault=vault, scheduler="pool", batch_size=16, task_size=4)
    assert again.ingested == 0 and again.duplicates >= a.ingested  # exactly once
    assert two.sql("SELECT count(*) FROM instances").fetchall() == [(a.ingested,)]


def test_unknown_scheduler_is_refused() -> None:
    with pytest.raises(lake.ConfigError, match="unknown scheduler 'bogus'"):
        Runner("bogus")


@pytest.mark.slow
def test_local_process_cluster_gives_the_same_results() -> None:
    with Runner("processes", 2) as runner:
        results = sorted(runner.map(_double, range(40), 1))
    assert results == [2 * i + 1 for i in range(40)]


def test_measuring_sources_keeps_every_item(tmp_path: Path) -> None:
    for i in range(7):
        (tmp_path / f"{i}.dcm").write_bytes(b"x" * (i + 1))
    items, workload = _measured(iter_items([str(tmp_path)]))
    assert list(items) == list(iter_items([str(tmp_path)]))
    assert (workload.items, workload.nbytes) == (7, 28)
    assert not workload.pays_for_a_cluster


def _pydicom_state() -> tuple[int, int, list[object]]:
    settings = config.settings
    return (
        settings.reading_validation_mode,
        settings.writing_validation_mode,
        list(warnings.filters),
    )


def test_ingest_leaves_pydicom_settings_alone(
    lk: lake.Lake, vault_dir: Path, samples: Path
) -> None:
    before = _pydicom_state()
    summary = lk.ingest([str(samples)], vault=vault_dir)  # auto: small, in this process
    assert summary.ingested > 0
    assert _pydicom_state() == before


def test_exports_never_swap_the_process_warning_filters(
    lk: lake.Lake, vault_dir: Path, samples: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Exports (and the web server's renderers, which run them on threads) stay quiet through
    lake._capture.capture(), never warnings.catch_warnings(): that swaps process-wide state
    another thread may be using (issue 14.2)."""
    from lake.export import export_dicom, export_nifti

    summary = lk.ingest([str(samples)], vault=vault_dir, scheduler="sync")
    assert summary.ingested > 0
    lk.refresh()

    def refused(*args: object, **kwargs: object) -> None:
        raise AssertionError("warnings.catch_warnings() used by library code")

    monkeypatch.setattr(warnings, "catch_warnings", refused)
    before = list(warnings.filters)
    everything = "SELECT SeriesInstanceUID FROM series"
    assert export_dicom(lk, everything, tmp_path / "dicom", scheduler="sync").written > 0
    export_nifti(lk, everything, tmp_path / "nifti", scheduler="sync")
    assert list(warnings.filters) == before


_FEWER_TASKS = """
from lake.compute import Runner
from tests.test_compute import _double_len

with Runner("pool", 2) as runner:
    print(list(runner.map(_double_len, [1], b"x" * 3_000_000)), flush=True)
"""


def _double_len(task: int, shared: bytes) -> int:
    return task * 2 + len(shared)


def test_a_pool_with_fewer_tasks_than_workers_lets_the_process_exit() -> None:
    """Review s19 S2: a shared value of megabytes handed to workers that never started
    kept the queue's feeder thread blocked, and the interpreter waited for it at exit."""
    root = Path(__file__).resolve().parents[1]
    try:
        done = subprocess.run([sys.executable, "-c", _FEWER_TASKS], cwd=root, text=True,
                              capture_output=True, timeout=120)  # a hang guard, not a timing
    except subprocess.TimeoutExpired:
        pytest.fail("the process did not exit after its pool had stopped")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[3000002]"


@pytest.mark.slow
def test_lake_ingest_on_the_pool_of_one_file_exits(tmp_path: Path) -> None:
    """``lake ingest --scheduler pool`` of fewer files than workers (review s19 S2)."""
    from pydicom.data import get_testdata_file

    source = tmp_path / "one"
    source.mkdir()
    shutil.copy(str(get_testdata_file("CT_small.dcm")), source / "ct.dcm")
    root = Path(__file__).resolve().parents[1]
    lake_args = ["--lake", str(tmp_path / "lake"), "--vault", str(tmp_path / "vault")]
    cli = [sys.executable, "-m", "pipelines.cli"]
    subprocess.run([*cli, "init", *lake_args], cwd=root, check=True, capture_output=True)
    try:
        done = subprocess.run(
            [*cli, "ingest", *lake_args, "--scheduler", "pool", "--workers", "2", str(source)],
            cwd=root, text=True, capture_output=True, timeout=180)  # a hang guard
    except subprocess.TimeoutExpired:
        pytest.fail("lake ingest --scheduler pool did not exit")
    assert done.returncode == 0, done.stderr
    assert lake.open(tmp_path / "lake").sql("SELECT count(*) FROM instances").fetchall() == [(1,)]
