"""Where work runs: the scheduler choice, the shared Runner; ingest leaves pydicom's settings alone
(its warnings are captured per thread: tests/test_capture.py)."""

from __future__ import annotations

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
