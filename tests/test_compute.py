"""Where work runs: the scheduler choice, the shared Runner, and pydicom settings scoped to ingest."""

from __future__ import annotations

import threading
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
from lake.ingest._lenient import lenient_pydicom
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


def test_auto_sends_large_jobs_to_a_cluster() -> None:
    many = Workload(INGEST_CROSSOVER.items, 0, INGEST_CROSSOVER)
    heavy = Workload(1, EXPORT_CROSSOVER.nbytes, EXPORT_CROSSOVER)
    assert choose_scheduler("auto", many, workers=2) == "processes"
    assert choose_scheduler("auto", heavy, workers=2) == "processes"
    assert choose_scheduler("auto", None, workers=2) == "processes"  # size unknown
    # One CPU: a cluster cannot pay, whatever the size.
    assert choose_scheduler("auto", many, workers=1) == "sync"


def test_an_explicit_scheduler_is_kept() -> None:
    small = Workload(1, 1, Crossover(100, 100))
    for name in ("sync", "processes", "threads", "tcp://127.0.0.1:8786"):
        assert choose_scheduler(name, small, workers=2) == name


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


def test_lenient_scope_restores_pydicom_and_warnings() -> None:
    before = _pydicom_state()
    with lenient_pydicom():
        assert config.settings.reading_validation_mode == config.IGNORE
        assert config.settings.writing_validation_mode == config.IGNORE
        with lenient_pydicom():  # re-entrant
            pass
        assert config.settings.reading_validation_mode == config.IGNORE
        assert _pydicom_state() != before
    assert _pydicom_state() == before


def test_lenient_scope_silences_pydicom_warnings() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with lenient_pydicom():
            warnings.warn_explicit("Invalid value 'Doe^John'", UserWarning, "v.py", 1,
                                   module="pydicom.valuerep")
        warnings.warn_explicit("after the scope", UserWarning, "v.py", 2,
                               module="pydicom.valuerep")
    assert [str(w.message) for w in caught] == ["after the scope"]


def test_lenient_scope_from_threads() -> None:
    before = _pydicom_state()
    inside = threading.Barrier(4)
    seen: list[int] = []

    def work() -> None:
        with lenient_pydicom():
            inside.wait(timeout=30)  # all four inside at once
            seen.append(config.settings.reading_validation_mode)
            inside.wait(timeout=30)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert seen == [config.IGNORE] * 4
    assert _pydicom_state() == before


def test_ingest_leaves_pydicom_settings_alone(
    lk: lake.Lake, vault_dir: Path, samples: Path
) -> None:
    before = _pydicom_state()
    summary = lk.ingest([str(samples)], vault=vault_dir)  # auto: small, in this process
    assert summary.ingested > 0
    assert _pydicom_state() == before
