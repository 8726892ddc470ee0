"""A cohort on a past catalog version (``as_of=``) is refused once an erasure ran after it,
also when the ``instances`` log no longer shows the erasure (review nit N8).

The check used to read only the log's history: after a log cleanup (commit files between
that version and now removed, a checkpoint kept) it saw no erasure and saved the cohort.
It now also consults the ``erasures`` and ``tombstones`` tables.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import lake
from lake.catalog import INSTANCES
from lake.steward import forget, target
from tests.series import write_ct_series

GONE = "WITHDRAWN-81"


def _ingest(lk: lake.Lake, vault_dir: Path, folder: Path, patient: str) -> int:
    write_ct_series(folder, 3, patient_id=patient, patient_name="Doe^Dana")
    lk.ingest([str(folder)], vault=vault_dir, scheduler="sync")
    lk.refresh()
    return lk.version


def _clean_log(lk: lake.Lake, after: int) -> None:
    """What a Delta log cleanup leaves: a checkpoint of the current version, and no commit
    file between ``after`` and it (``after`` and older stay readable)."""
    delta = lk.tables.open(INSTANCES.name)
    current = int(delta.version())
    delta.create_checkpoint()
    log = Path(lk.location.join("tables", INSTANCES.name, "_delta_log"))
    for version in range(after + 1, current):
        (log / f"{version:020d}.json").unlink()
    assert [e.get("operation") for e in lk.tables.open(INSTANCES.name).history(
        limit=current - after)] == ["WRITE"]  # the erasure's commits are no longer listed


@pytest.fixture
def erased_after(lk: lake.Lake, vault_dir: Path, tmp_path: Path) -> int:
    """A lake where a patient was ingested and forgotten after the returned version, then
    another patient ingested, and the log cleaned up since that version."""
    before = _ingest(lk, vault_dir, tmp_path / "kept", "KEPT-80")
    _ingest(lk, vault_dir, tmp_path / "gone", GONE)  # own data files: `before` stays readable
    secret = lk.secret(vault_dir)
    forget(lk, secret, target(lk, secret, original_patient_id=GONE))
    _ingest(lk, vault_dir, tmp_path / "later", "LATER-82")
    _clean_log(lk, before)
    return before


def test_as_of_before_an_erasure_is_refused_when_the_log_no_longer_shows_it(
    lk: lake.Lake, erased_after: int
) -> None:
    """Before the fix the cohort was saved (the history showed one WRITE since)."""
    assert lk.sql("SELECT count(*) FROM instances", as_of=erased_after).fetchall() == [(3,)]
    with pytest.raises(lake.LakeError, match="ran after catalog version") as refused:
        lk.create_cohort("pinned", "SELECT SeriesInstanceUID FROM series", as_of=erased_after)
    assert refused.value.parameters == ("as_of",)
    assert not [c for c in lk.cohorts() if c.name == "pinned"]


def test_a_one_off_cohort_as_of_before_an_erasure_is_refused(
    lk: lake.Lake, erased_after: int
) -> None:
    """What `lake export ... --sql Q --as-of V` resolves (before: not checked at all)."""
    from lake.export import resolve_cohort

    with pytest.raises(lake.LakeError, match="ran after catalog version") as refused:
        resolve_cohort(lk, "SELECT SeriesInstanceUID FROM series", as_of=erased_after)
    assert refused.value.parameters == ("as_of",)


def test_as_of_after_the_erasure_is_accepted(lk: lake.Lake, erased_after: int) -> None:
    """No false alarm: the erasure's record names the version after it."""
    cohort = lk.create_cohort("now", "SELECT SeriesInstanceUID FROM series", as_of=lk.version)
    assert len(cohort.series) == 2 and len(cohort.members) == 6
