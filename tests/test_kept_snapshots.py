"""An open lake keeps the Delta snapshots it read (``lake/catalog/_kept.py``): a notebook's
second export does not open the ``instances`` table again. What another process (or another
open lake) changes in between is seen all the same: a commit, an erasure, a removed file."""

from __future__ import annotations

import pickle
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import lake
import lake.catalog._tables as tables_module
from lake.catalog import COHORTS, INSTANCES, DeltaTables, data_files
from lake.export import export_nifti, resolve_cohort
from lake.steward import forget, target
from lake.store import Location
from tests.series import write_ct_series

SERIES = "SELECT SeriesInstanceUID FROM series"
ROOT = Path(__file__).resolve().parents[1]


def _fresh(lk: lake.Lake, name: str, version: int | None = None) -> tuple[int, tuple[str, ...]]:
    """The version and data files of a table as a newly opened one gives them."""
    delta = lk.tables.open(name, version)
    files = data_files(delta, lk.tables.storage_options)
    return int(delta.version()), files.paths


def _ingest_elsewhere(root: Path, vault: Path, folder: Path) -> None:
    """Ingest ``folder`` in another process (its own open lake, its own snapshots)."""
    code = ("import sys, lake; lake.open(sys.argv[1]).ingest([sys.argv[3]], vault=sys.argv[2], "
            "scheduler='sync')")
    subprocess.run([sys.executable, "-c", code, str(root), str(vault), str(folder)],
                   check=True, cwd=ROOT, capture_output=True)


def test_a_commit_by_another_process_between_two_exports_is_seen(
    lk: lake.Lake, lake_root: Path, vault_dir: Path, tmp_path: Path
) -> None:
    """The second export on one open lake resolves its query on the version the other
    process committed, and exports the new series too (a kept snapshot not brought up to
    date would export the first series alone, at the old version)."""
    write_ct_series(tmp_path / "first", 4, patient_id="PAT-1")
    lk.ingest([str(tmp_path / "first")], vault=vault_dir, scheduler="sync")
    first = export_nifti(lk, SERIES, tmp_path / "out1", scheduler="sync")
    assert first.manifest["cohort"]["series"] == 1

    write_ct_series(tmp_path / "second", 3, patient_id="PAT-2")
    _ingest_elsewhere(lake_root, vault_dir, tmp_path / "second")
    current = _fresh(lk, INSTANCES.name)
    assert current[0] > first.manifest["catalog_version"]

    second = export_nifti(lk, SERIES, tmp_path / "out2", scheduler="sync")
    assert second.manifest["catalog_version"] == current[0]
    assert second.manifest["cohort"] == {**first.manifest["cohort"], "series": 2,
                                         "instances": 7}
    assert lk.tables.latest(INSTANCES.name)[0] == current[0]
    assert lk.tables.data_files(INSTANCES.name).paths == current[1]


def test_kept_files_equal_a_fresh_open_at_every_version(
    lk: lake.Lake, vault_dir: Path, tmp_path: Path
) -> None:
    """Each version's kept data files are those of the table opened anew at it, the latest
    included, through commits made by another open lake."""
    other = lake.open(lk.root)
    seen = []
    for i in range(3):
        write_ct_series(tmp_path / f"s{i}", 2, patient_id=f"PAT-{i}")
        (other if i % 2 else lk).ingest([str(tmp_path / f"s{i}")], vault=vault_dir,
                                         scheduler="sync")
        version, files = lk.tables.latest(INSTANCES.name)
        assert (version, files.paths) == _fresh(lk, INSTANCES.name)
        seen.append(version)
    assert len(set(seen)) == 3
    for version in seen:
        kept = lk.tables.data_files(INSTANCES.name, version)
        assert (version, kept.paths) == _fresh(lk, INSTANCES.name, version)
        assert kept.schema == data_files(lk.tables.open(INSTANCES.name, version)).schema


def test_an_erasure_by_another_lake_makes_a_kept_version_unreadable(
    lk: lake.Lake, vault_dir: Path, tmp_path: Path
) -> None:
    """A version whose files this lake keeps, erased meanwhile through another open lake
    (the erasures table has a new version: its records are read again), is refused as a
    newly opened one is; the export of a one-off query at the latest version leaves the
    withdrawn patient out."""
    write_ct_series(tmp_path / "kept", 3, patient_id="KEPT-1")
    write_ct_series(tmp_path / "gone", 2, patient_id="GONE-2")
    lk.ingest([str(tmp_path / "kept")], vault=vault_dir, scheduler="sync")
    lk.ingest([str(tmp_path / "gone")], vault=vault_dir, scheduler="sync")
    version = lk.version
    assert len(lk.tables.data_files(INSTANCES.name, version).paths) == 2  # kept now
    assert len(resolve_cohort(lk, SERIES).members) == 5

    other = lake.open(lk.root)
    secret = other.secret(vault_dir)
    forget(other, secret, target(other, secret, original_patient_id="GONE-2"))

    with pytest.raises(lake.CatalogError, match="was erased"):
        lk.tables.open(INSTANCES.name, version)
    with pytest.raises(lake.CatalogError, match="was erased"):
        lk.tables.data_files(INSTANCES.name, version)
    after = export_nifti(lk, SERIES, tmp_path / "out", scheduler="sync")
    assert after.manifest["catalog_version"] > version
    assert after.manifest["cohort"]["instances"] == 3


def test_a_kept_erasures_table_is_not_looked_for_again(
    lk: lake.Lake, vault_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An open lake's second export does not ask whether the ``erasures`` table exists
    (its latest snapshot is kept and brought up to date: an erasure since is seen, above);
    the first one does."""
    write_ct_series(tmp_path / "a", 3, patient_id="PAT-1")
    lk.ingest([str(tmp_path / "a")], vault=vault_dir, scheduler="sync")
    real = tables_module.DeltaTable.is_deltatable
    asked: list[str] = []

    def looked_for(uri: str, storage_options: dict[str, str] | None = None) -> bool:
        asked.append(uri)
        return bool(real(uri, storage_options=storage_options))

    monkeypatch.setattr(tables_module.DeltaTable, "is_deltatable", staticmethod(looked_for))
    fresh = lake.open(lk.root)
    export_nifti(fresh, SERIES, tmp_path / "out1", scheduler="sync")
    assert any(uri.endswith("/erasures") for uri in asked)
    asked.clear()
    second = export_nifti(fresh, SERIES, tmp_path / "out2", scheduler="sync")
    assert not [uri for uri in asked if uri.endswith("/erasures")]
    assert second.manifest["cohort"]["instances"] == 3


def test_a_kept_latest_table_is_brought_up_to_date_only_after_a_new_commit(
    lk: lake.Lake, lake_root: Path, vault_dir: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On a local lake, a kept latest table whose log holds no commit file after its version
    is not brought up to date (``update_incremental`` lists the log); after another
    process's commit it is, and the new version is read."""
    write_ct_series(tmp_path / "a", 2, patient_id="PAT-A")
    lk.ingest([str(tmp_path / "a")], vault=vault_dir, scheduler="sync")
    before = lk.tables.latest(INSTANCES.name)[0]
    kept = lk.tables._kept._latest[INSTANCES.name].delta
    real = kept.update_incremental
    calls: list[int] = []

    def counted() -> None:
        calls.append(1)
        real()

    monkeypatch.setattr(kept, "update_incremental", counted)
    assert lk.tables.latest(INSTANCES.name)[0] == before and calls == []
    write_ct_series(tmp_path / "b", 2, patient_id="PAT-B")
    _ingest_elsewhere(lake_root, vault_dir, tmp_path / "b")
    after = lk.tables.latest(INSTANCES.name)
    assert calls == [1] and after[0] == _fresh(lk, INSTANCES.name)[0] > before
    assert after[1].paths == _fresh(lk, INSTANCES.name)[1]


def test_a_data_file_removed_from_a_kept_version_is_refused(
    lk: lake.Lake, vault_dir: Path, tmp_path: Path
) -> None:
    """What 'lake vacuum' leaves (a data file of an old version removed) is refused for a
    kept version as for a newly opened one."""
    write_ct_series(tmp_path / "a", 2, patient_id="PAT-A")
    lk.ingest([str(tmp_path / "a")], vault=vault_dir, scheduler="sync")
    version = lk.version
    files = lk.tables.data_files(INSTANCES.name, version)
    Path(files.paths[0]).unlink()
    for read in (lk.tables.open, lk.tables.data_files):
        with pytest.raises(lake.CatalogError, match="can no longer be read"):
            read(INSTANCES.name, version)


def test_a_table_made_again_is_read_at_its_new_version(lk: lake.Lake) -> None:
    """A table removed and created again (version 0 again) is not read from the kept
    snapshot of the old one."""
    tables = lk.tables
    for _ in range(2):
        tables.append(COHORTS, COHORTS.schema.empty_table())
    assert tables.latest(COHORTS.name)[0] >= 2
    shutil.rmtree(Path(lk.location.join("tables", COHORTS.name)))
    tables.create(COHORTS)
    assert tables.latest(COHORTS.name)[0] == _fresh(lk, COHORTS.name)[0] == 0


def test_snapshots_are_kept_per_open_lake_and_not_pickled(
    lk: lake.Lake, vault_dir: Path, tmp_path: Path
) -> None:
    write_ct_series(tmp_path / "a", 2)
    lk.ingest([str(tmp_path / "a")], vault=vault_dir, scheduler="sync")
    lk.tables.latest(INSTANCES.name)
    copy = pickle.loads(pickle.dumps(lk.tables))
    assert copy.location == lk.tables.location
    assert copy._kept._latest == {} and lk.tables._kept._latest
    assert copy.latest(INSTANCES.name)[1].paths == lk.tables.latest(INSTANCES.name)[1].paths


def test_a_kept_latest_table_is_opened_again_after_a_new_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader's latest table brought up to date commit after commit grows (deltalake keeps
    every update: a long-running server's without end), so it is opened again once a newer
    checkpoint exists, and kept from then on (fails before: the kept table was used on and on,
    as the committer's was before its checkpoint rule)."""
    root = Location(str(tmp_path / "lake"))
    writer, reader = DeltaTables(root), DeltaTables(root)
    writer.create_all()
    writer.append(COHORTS, COHORTS.schema.empty_table())
    reader.latest(COHORTS.name)
    opened: list[str] = []
    kind = tables_module.DeltaTable

    class Counted(kind):  # type: ignore[misc, valid-type]
        def __init__(self, uri: str, *args: Any, **kwargs: Any) -> None:
            opened.append(str(uri))
            super().__init__(uri, *args, **kwargs)

    monkeypatch.setattr(tables_module, "DeltaTable", Counted)

    def latest_opening() -> tuple[int, int]:
        """The reader's latest version of COHORTS after a commit, and the tables it opened."""
        writer.append(COHORTS, COHORTS.schema.empty_table())
        opened.clear()
        version = reader.latest(COHORTS.name)[0]
        return version, len(opened)

    assert latest_opening() == (2, 0)  # brought up to date
    writer.open(COHORTS.name).create_checkpoint()
    assert latest_opening() == (3, 1)  # a newer checkpoint: opened again
    assert latest_opening() == (4, 0)  # and kept again
    assert reader.latest(COHORTS.name)[1].paths == _fresh_tables(writer, COHORTS.name)


def _fresh_tables(tables: DeltaTables, name: str) -> tuple[str, ...]:
    return data_files(tables.open(name), tables.storage_options).paths
