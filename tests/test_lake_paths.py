"""A lake whose folder name holds spaces and other characters URLs escape works end to end.

deltalake lists a local table's data files percent-encoded (``/a%20b/...``); DuckDB, Arrow and
the operating system need the path itself. Before, a lake under ``/tmp/my lake`` ingested and
then failed every query with an internal error. A ``%`` in the folder name cannot work
(deltalake itself decodes it as an escape), so ``lake init`` refuses it in one line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

LAKE = str(Path(sys.executable).with_name("lake"))


def run(*args: str, env: dict[str, str], code: int = 0) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("LAKE_")} | env
    proc = subprocess.run([LAKE, *args], capture_output=True, text=True, env=full, timeout=300)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    return proc


def test_a_lake_under_a_folder_name_urls_escape(tmp_path: Path, ct_folder: Path) -> None:
    folder = tmp_path / "my lake é#?&+"
    env = {"LAKE_ROOT": str(folder / "the lake"), "LAKE_VAULT": str(tmp_path / "vault")}
    run("init", env=env)
    run("ingest", "--scheduler", "sync", "-q", str(ct_folder), env=env)
    count = run("sql", "SELECT count(*) AS n FROM instances", "-f", "json", env=env)
    n = json.loads(count.stdout)[0]["n"]
    assert n == len(list(ct_folder.rglob("*.dcm"))) > 0
    series = run("sql", "SELECT count(*) AS n FROM series", "-f", "json", env=env)
    assert json.loads(series.stdout)[0]["n"] == 1
    run("cohort", "create", "all", "--sql", "SELECT SeriesInstanceUID FROM series", env=env)
    out = folder / "exports"
    run("export", "nifti", "all", "--out", str(out / "nifti"), "--scheduler", "sync", env=env)
    assert list((out / "nifti").rglob("*.nii*"))
    run("export", "dicom", "all", "--out", str(out / "dicom"), "--scheduler", "sync", env=env)
    assert len(list((out / "dicom").rglob("*.dcm"))) == n
    verify = run("verify", env=env)
    assert "0 corrupt, 0 missing" in " ".join(verify.stdout.split())


def test_the_dicom_query_index_reads_such_a_lake(tmp_path: Path, ct_folder: Path) -> None:
    """C-FIND, QIDO-RS and C-GET answer from this index: every level, and the stored files."""
    import lake
    from lake.query import Level, SnapshotCache, identifier_from_filters, parse_identifier

    the_lake = lake.init(tmp_path / "a b#c", vault=tmp_path / "vault")
    the_lake.ingest([str(ct_folder)], vault=tmp_path / "vault", scheduler="sync")
    snapshot = SnapshotCache(the_lake.tables).current()
    n = len(list(ct_folder.rglob("*.dcm")))
    found = {}
    for level in ("STUDY", "SERIES", "IMAGE"):
        filters = [f"QueryRetrieveLevel={level}", "StudyInstanceUID", "SeriesInstanceUID",
                   "SOPInstanceUID"]
        parsed_level, keys = parse_identifier(identifier_from_filters(filters), list(Level))
        found[level] = snapshot.find(parsed_level, keys)
    assert (len(found["STUDY"]), len(found["SERIES"]), len(found["IMAGE"])) == (1, 1, n)
    study = str(found["STUDY"][0].StudyInstanceUID)
    assert len(snapshot.locate(study)) == n


@pytest.mark.parametrize("name", ["50%", "a%20b"])
def test_a_percent_sign_in_the_folder_name_is_refused(tmp_path: Path, name: str) -> None:
    env = {"LAKE_ROOT": str(tmp_path / name / "lake"), "LAKE_VAULT": str(tmp_path / "vault")}
    proc = run("init", env=env, code=1)
    assert len(proc.stderr.strip().splitlines()) == 1 and "%" in proc.stderr
    assert not (tmp_path / name).exists()
