"""When the receive committer commits: a burst of arrivals in one batch, bounded.

A catalog commit costs ~0.1 s of CPU whatever its size, so :class:`Committer` lets the
interval stretch while outcomes keep coming (up to ``busy_interval``) and commits once
arrivals pause. The clock is the test's (no timing): each step says what is due when.
"""

from __future__ import annotations

import copy
import io
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

import lake
from lake._errors import ConfigError
from lake.ingest import Ingestor, Outcome, process_bytes
from lake.net import DicomServer, ServerConfig, _spool
from lake.net._config import BUSY_STRETCH, MAX_COMMIT_WAIT
from lake.net._spool import Committer, Spool


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> _Clock:
    fake = _Clock()
    monkeypatch.setattr(_spool.time, "monotonic", fake)
    return fake


def _outcomes(ingestor: Ingestor, n: int) -> list[Outcome]:
    template = dcmread(str(get_testdata_file("CT_small.dcm")))
    out = []
    for _ in range(n):
        ds = copy.deepcopy(template)
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        out.append(process_bytes(buffer.getvalue(), ingestor.context))
    return out


def _committer(lk: lake.Lake, vault_dir: Path, **kwargs: float) -> tuple[Committer, Ingestor]:
    ingestor = Ingestor(lk, lk.secret(vault_dir), source="dicom-store")
    return Committer(ingestor, Spool(lk.location, "dicom-store"), every=1000, **kwargs), ingestor


def test_a_burst_is_committed_in_one_batch_once_arrivals_pause(
    lk: lake.Lake, vault_dir: Path, clock: _Clock
) -> None:
    committer, ingestor = _committer(lk, vault_dir, interval=2.0, busy_interval=8.0)
    outcomes = _outcomes(ingestor, 40)
    for outcome in outcomes[:31]:  # one every 0.1 s for 3 s: past the interval
        committer.add(outcome)
        assert not committer._due()
        clock.now += 0.1
    clock.now += 0.1  # 0.2 s since the last one: still a burst
    assert not committer._due()
    clock.now += 0.1  # 0.3 s: a pause
    assert committer._due()
    assert committer._drain(force=False)[0].files_seen == 31
    assert lk.sql("SELECT count(*) FROM instances").fetchall() == [(31,)]
    # the next burst starts its own interval
    committer.add(outcomes[31])
    clock.now += 1.9
    assert not committer._due()
    clock.now += 0.2
    assert committer._due()


def test_arrivals_that_never_pause_are_committed_after_busy_interval(
    lk: lake.Lake, vault_dir: Path, clock: _Clock
) -> None:
    committer, ingestor = _committer(lk, vault_dir, interval=2.0, busy_interval=8.0)
    for outcome in _outcomes(ingestor, 80):  # one every 0.1 s for 8 s
        assert not committer._due()
        committer.add(outcome)
        clock.now += 0.1
    assert committer._due()  # the oldest waited 8 s, the newest 0.1 s


def test_without_busy_interval_the_interval_alone_decides(
    lk: lake.Lake, vault_dir: Path, clock: _Clock
) -> None:
    committer, ingestor = _committer(lk, vault_dir, interval=2.0)
    for outcome in _outcomes(ingestor, 20):  # one every 0.1 s for 2 s
        assert not committer._due()
        committer.add(outcome)
        clock.now += 0.1
    assert committer._due()


def test_the_dicom_server_stretches_its_commit_interval(lk: lake.Lake, vault_dir: Path) -> None:
    server = DicomServer(lk, lk.secret(vault_dir), ServerConfig(port=0, workers=0,
                                                                commit_interval=0.5))
    committer = server.intake.committer
    assert (committer.interval, committer.busy_interval) == (0.5, 0.5 * BUSY_STRETCH)
    assert committer.every == ServerConfig().commit_every == 1000


def test_a_commit_wait_beyond_a_quarter_of_the_gc_grace_is_refused() -> None:
    """Until its commit a received instance's pixel blob is kept by gc's grace alone, so the
    longest wait (``commit_interval`` stretched while instances keep arriving) must stay well
    within it (review s25, finding 1)."""
    from lake.steward._maintenance import MIN_GRACE

    assert MIN_GRACE.total_seconds() / 4 >= MAX_COMMIT_WAIT
    limit = MAX_COMMIT_WAIT / BUSY_STRETCH
    assert ServerConfig(port=0, commit_interval=limit).commit_interval == limit  # the bound itself
    for interval in (limit + 0.5, 1000.0, 3600.0):
        with pytest.raises(ConfigError, match=r"commit_interval=") as caught:
            ServerConfig(port=0, commit_interval=interval)
        assert caught.value.parameters == ("commit_interval",)
        assert f"at most commit_interval={limit:g}" in str(caught.value)
    with pytest.raises(ConfigError, match=r"commit_interval="):
        ServerConfig.from_settings({"commit_interval": 3600})  # lake.json as well
