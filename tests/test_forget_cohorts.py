"""Erasure and cohorts (issue 15.1, review follow-up): after 'lake forget' returns, no saved
cohort names an erased instance, even one saved while the erasure ran, and every cohort
still exports (none is left pinned to a catalog version the erasure made unreadable).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import lake
from lake.export import _cohort
from lake.steward import forget, target
from tests.series import write_ct_series

GONE = "WITHDRAWN-77"


@pytest.fixture
def two_patients(lk: lake.Lake, vault_dir: Path, tmp_path: Path) -> str:
    """Two patients ingested in batches that mix them (data files hold both); the
    pseudonym of the one to forget."""
    inbox = tmp_path / "in"
    write_ct_series(inbox / "a", 4, patient_id=GONE, patient_name="Gone^Gina")
    write_ct_series(inbox / "b", 4, patient_id="KEPT-78", patient_name="Kept^Kim")
    lk.ingest([str(inbox)], vault=vault_dir, scheduler="sync", batch_size=3)
    lk.refresh()
    return target(lk, lk.secret(vault_dir), original_patient_id=GONE).value


def _erased_members(lk: lake.Lake, name: str, sops: set[str]) -> set[str]:
    return {m.sop_uid for m in lk.cohort(name).members} & sops


def test_a_cohort_saved_while_forget_runs_keeps_no_erased_member(
    lk: lake.Lake, vault_dir: Path, two_patients: str, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The worst interleaving, forced: the cohort's query runs on the catalog before the
    erasure, then the whole erasure runs (its last look at the cohorts finds none), then
    the cohort is saved. Before the fix it kept the 4 erased members, pinned to a version
    that could no longer be read."""
    pseudonym = two_patients
    secret = lk.secret(vault_dir)
    sops = {s for (s,) in lk.sql(
        f"SELECT SOPInstanceUID FROM instances WHERE PatientID = '{pseudonym}'").fetchall()}
    assert len(sops) == 4
    real = _cohort.resolve_cohort
    runs: list[int] = []

    def racing(*args: Any, **kwargs: Any) -> _cohort.Cohort:
        resolved = real(*args, **kwargs)
        runs.append(len(resolved.members))
        if len(runs) == 1:
            forget(lk, secret, target(lk, secret, patient=pseudonym))
        return resolved

    monkeypatch.setattr(_cohort, "resolve_cohort", racing)
    saved = lk.create_cohort("racing", "SELECT SeriesInstanceUID FROM series")
    monkeypatch.undo()
    assert runs[0] == 8 and runs[-1] == 4  # ran again, after the erasure
    assert not _erased_members(lk, "racing", sops) and len(saved.members) == 4
    summary = lk.export_dicom("racing", tmp_path / "out")
    assert summary is not None and len(list((tmp_path / "out").rglob("*.dcm"))) == 4
    assert lk.verify().ok


def test_cohorts_pinned_before_an_erasure_still_export(
    lk: lake.Lake, vault_dir: Path, two_patients: str, tmp_path: Path
) -> None:
    """A cohort that never held the patient but was pinned to a version whose data files
    also held the patient's rows is moved to the first version after the erasure, like
    the cohorts that held it (before: its export failed, 'version ... was erased')."""
    pseudonym = two_patients
    lk.create_cohort("kept", f"SELECT SeriesInstanceUID FROM series WHERE PatientID <> "
                             f"'{pseudonym}'")
    lk.create_cohort("both", "SELECT SeriesInstanceUID FROM series")
    pinned = lk.cohort("kept").catalog_version
    secret = lk.secret(vault_dir)
    forget(lk, secret, target(lk, secret, patient=pseudonym))
    with pytest.raises(lake.LakeError, match="was erased"):
        lk.sql("SELECT count(*) FROM instances", as_of=pinned).fetchall()
    for name in ("kept", "both"):
        cohort = lk.cohort(name)
        assert cohort.catalog_version > pinned and len(cohort.members) == 4
        lk.export_dicom(name, tmp_path / name)
        assert len(list((tmp_path / name).rglob("*.dcm"))) == 4
    assert lk.cohort("kept").withdrawn == 0 and lk.cohort("both").withdrawn == 4
    assert pseudonym not in lk.cohort("kept").query  # its query named the patient


def test_a_cohort_pinned_by_as_of_across_an_erasure_is_refused(
    lk: lake.Lake, vault_dir: Path, two_patients: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The portal saves a cohort on the version its console checked (as_of=). Forced: the
    save runs while the erasure is between its last look at the cohorts and the removal
    of the old data files, on a version that still holds the patient. It is refused,
    naming as_of (before: it was saved with the 4 erased members)."""
    from lake.steward import _forget

    pseudonym = two_patients
    secret = lk.secret(vault_dir)
    checked = lk.version
    sops = {s for (s,) in lk.sql(
        f"SELECT SOPInstanceUID FROM instances WHERE PatientID = '{pseudonym}'").fetchall()}
    real = _forget._withdraw_from_cohorts
    refused: list[lake.LakeError] = []

    def meanwhile(*args: Any, **kwargs: Any) -> None:
        try:
            lk.create_cohort("pinned", "SELECT SeriesInstanceUID FROM series", as_of=checked)
        except lake.LakeError as exc:
            refused.append(exc)
        real(*args, **kwargs)

    monkeypatch.setattr(_forget, "_withdraw_from_cohorts", meanwhile)
    forget(lk, secret, target(lk, secret, patient=pseudonym))
    monkeypatch.undo()
    saved = [c for c in lk.cohorts() if c.name == "pinned"]
    assert not saved or not _erased_members(lk, "pinned", sops)
    assert [e.parameters for e in refused] == [("as_of",)]
    assert "ran after catalog version" in str(refused[0])
    lk.refresh()
    again = lk.create_cohort("pinned", "SELECT SeriesInstanceUID FROM series", as_of=lk.version)
    assert len(again.members) == 4
