"""lake._capture: warnings and library log records captured per thread, nothing process-wide."""

from __future__ import annotations

import logging
import threading
import warnings
from pathlib import Path

import pynetdicom  # noqa: F401 - its loggers exist before any scope, as in the server
import pytest
from pydicom import config

import lake
from lake._capture import Captured, capture

SECRET = "1.2.3^ORIGINAL-VALUE"


def _pydicom_warns() -> None:
    # the real thing: pydicom validating a received UI value
    from pydicom.valuerep import validate_value

    validate_value("UI", SECRET, config.WARN)


def test_captured_in_scope_and_nothing_global_changes(caplog: pytest.LogCaptureFixture) -> None:
    filters = list(warnings.filters)
    settings = (config.settings.reading_validation_mode, config.settings.writing_validation_mode)
    caplog.set_level(logging.DEBUG)
    with warnings.catch_warnings(record=True) as shown, capture() as captured:
        warnings.simplefilter("always")
        _pydicom_warns()
        logging.getLogger("pynetdicom.dul").error("received %s", SECRET)
    assert shown == []
    assert SECRET not in caplog.text
    assert captured.warnings == {"UserWarning": 1}
    assert captured.records == {"pydicom WARNING": 1, "pynetdicom.dul ERROR": 1}
    assert list(warnings.filters) == filters
    assert settings == (config.settings.reading_validation_mode,
                        config.settings.writing_validation_mode)


def test_outside_a_scope_everything_passes_unchanged(caplog: pytest.LogCaptureFixture) -> None:
    with capture():
        pass  # installed
    caplog.set_level(logging.INFO)
    with pytest.warns(UserWarning, match="outside") as shown:
        warnings.warn("outside", stacklevel=1)
    assert shown[0].filename == __file__  # the caller is still the one blamed
    logging.getLogger("pydicom").warning("outside %s", "too")
    assert "outside too" in caplog.text


def test_other_threads_are_not_captured(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    inside_ready, outside_done = threading.Event(), threading.Event()
    shared = Captured()

    def inside() -> None:
        with capture(into=shared):
            inside_ready.set()
            outside_done.wait(10)
            for _ in range(50):
                _pydicom_warns()

    worker = threading.Thread(target=inside)
    worker.start()
    inside_ready.wait(10)
    with pytest.warns(UserWarning) as shown:  # this thread is outside any scope
        for i in range(50):
            warnings.warn(f"outside {i}", stacklevel=1)
        logging.getLogger("pynetdicom").warning("outside record")
    outside_done.set()
    worker.join(10)
    assert len(shown) == 50
    assert "outside record" in caplog.text
    assert shared.warnings == {"UserWarning": 50}
    assert SECRET not in caplog.text


def test_error_filter_does_not_turn_captured_warnings_into_exceptions() -> None:
    # pytest runs with "error": a captured warning must not raise in the capturing thread
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with capture() as captured:
            _pydicom_warns()
    assert captured.total == 2  # the warning and pydicom's log record of it


def test_nested_scopes_each_count_once() -> None:
    # lake.ingest.process_bytes opens its own scope inside a worker's or a server's: the
    # outer scope must see what the inner one captured (it saw nothing before s25)
    shared = Captured()
    with capture() as outer, capture(into=shared), capture(into=shared):
        with capture() as inner:
            _pydicom_warns()
            logging.getLogger("pynetdicom.dul").error("received %s", SECRET)
        warnings.warn("y", DeprecationWarning, stacklevel=1)
    assert inner.warnings == {"UserWarning": 1}
    assert inner.records == {"pydicom WARNING": 1, "pynetdicom.dul ERROR": 1}
    for scope in (outer, shared):  # a scope open twice on the stack counts once
        assert scope.warnings == {"UserWarning": 1, "DeprecationWarning": 1}
        assert scope.records == {"pydicom WARNING": 1, "pynetdicom.dul ERROR": 1}


def test_a_real_malformed_instance_counts_in_a_scope_around_process_bytes(
    lk: lake.Lake, vault_dir: Path, tmp_path: Path
) -> None:
    """The bug of s25: an invalid UI value gave ``{}`` through ``process_bytes``' own scope."""
    from pydicom import dcmread
    from pydicom.data import get_testdata_file

    from lake.ingest import Ingestor, process_bytes
    from lake.net._workers import DeidWorkers

    source = get_testdata_file("CT_small.dcm")
    assert source is not None
    bad = []
    for value in ("1.2.826.TKN^BAD.1", "1.2.826.TKN^BAD.2"):
        ds = dcmread(source)
        with capture():  # the test writes an invalid value on purpose
            ds.SeriesInstanceUID = value
            ds.save_as(tmp_path / "bad.dcm", enforce_file_format=True)
        bad.append((tmp_path / "bad.dcm").read_bytes())
    context = Ingestor(lk, lk.secret(vault_dir)).context
    with capture() as around:
        process_bytes(bad[0], context)
    # (a process's first instance may warn once more, about nothing in the data)
    assert around.records == {"pydicom WARNING": 1} and around.warnings["UserWarning"] >= 1
    # the server's path without worker processes: its shared scope opened twice, counted once
    shared = Captured()
    workers = DeidWorkers(context, 0, shared)
    with capture(into=shared):
        workers.submit(bad[1]).result()
    assert shared.warnings == {"UserWarning": 1} and shared.records == {"pydicom WARNING": 1}

