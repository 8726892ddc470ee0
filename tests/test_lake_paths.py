"""A lake whose folder name holds spaces and other characters URLs escape works end to end.

deltalake lists a local table's data files percent-encoded (``/a%20b/...``); DuckDB, Arrow and
the operating system need the path itself. Before, a lake under ``/tmp/my lake`` ingested and
then failed every query with an internal error. Some characters cannot work (deltalake
decodes ``%`` as an escape and ``\\`` as a separator, and panics on ``[ ] ^ |``), so ``lake
init`` and opening a lake refuse them in one line.
"""

from __future__ import annotations

import gc
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


@pytest.mark.parametrize(("name", "held"), [("50%", "%"), ("a%20b", "%"), ("br[1]", "["),
                                            ("x]y", "]"), ("a^b", "^"), ("a|b", "|"),
                                            ("a\\b", "\\")])
def test_a_character_deltalake_cannot_hold_in_the_folder_name_is_refused(
    tmp_path: Path, name: str, held: str
) -> None:
    """'[', ']', '^', '|' made deltalake panic (a traceback); '%' and '\\' misread the path."""
    env = {"LAKE_ROOT": str(tmp_path / name / "lake"), "LAKE_VAULT": str(tmp_path / "vault")}
    proc = run("init", env=env, code=1)
    assert len(proc.stderr.strip().splitlines()) == 1 and repr(held) in proc.stderr
    assert not (tmp_path / name).exists()
    proc = run("sql", "SELECT 1", env=env, code=1)
    assert len(proc.stderr.strip().splitlines()) == 1 and repr(held) in proc.stderr


def test_a_lake_moved_below_such_a_folder_is_refused_on_open(tmp_path: Path) -> None:
    import lake
    from lake import ConfigError

    lake.init(tmp_path / "plain", vault=tmp_path / "vault")
    (tmp_path / "plain").rename(tmp_path / "br[1]")
    with pytest.raises(ConfigError, match=r"'\['"):
        lake.open(tmp_path / "br[1]")


def test_a_native_panic_is_a_one_line_internal_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """pyo3's PanicException derives from BaseException: it once escaped as a traceback."""
    import deltalake
    import pyarrow as pa

    import pipelines.cli as cli

    try:  # the real class: pyo3 does not export it, so make deltalake panic once
        deltalake.write_deltalake(str(tmp_path / "br[1]" / "t"), pa.table({"a": [1]}))
    except BaseException as exc:  # noqa: BLE001 (that is the point)
        panic = type(exc)
    else:
        pytest.skip("deltalake no longer panics on '[' in a path")
    assert panic.__module__ == "pyo3_runtime" and not issubclass(panic, Exception)

    def app() -> None:
        raise panic("Invalid object store url.: External(InvalidDomainCharacter)")

    monkeypatch.delenv("LAKE_DEBUG", raising=False)
    monkeypatch.setattr(cli, "_app_for", lambda argv: app)
    monkeypatch.setattr(sys, "argv", ["lake", "info"])
    # main() defers the collector's first collection (a console script's process ends after
    # it): give this process its thresholds back
    thresholds = gc.get_threshold()
    try:
        with pytest.raises(SystemExit) as ended:
            cli.main()
    finally:
        gc.set_threshold(*thresholds)
    assert ended.value.code == cli.EXIT_INTERNAL
    err = capsys.readouterr().err
    assert " ".join(err.split()) == (
        "internal error (PanicException); please report it. Set LAKE_DEBUG=1 to see the "
        "traceback."
    )

    def interrupted() -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_app_for", lambda argv: interrupted)
    try:
        with pytest.raises(KeyboardInterrupt):
            cli.main()
    finally:
        gc.set_threshold(*thresholds)
