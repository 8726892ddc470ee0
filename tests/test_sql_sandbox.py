"""User SQL cannot reach outside the catalog (issue 16.4): no files, databases or extensions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest

import lake
from lake.catalog import locked_connection

LAKE = str(Path(sys.executable).with_name("lake"))
REFUSED = "query refused: SQL over the catalog cannot read or write files"


@pytest.fixture
def ingested(lk: lake.Lake, vault_dir: Path, ct_folder: Path) -> lake.Lake:
    lk.ingest([str(ct_folder)], vault=vault_dir, scheduler="sync", batch_size=6)
    lk.refresh()
    return lk


def _cli(lake_root: Path, vault_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, LAKE_ROOT=str(lake_root), LAKE_VAULT=str(vault_dir))
    return subprocess.run([LAKE, *args], env=env, capture_output=True, text=True)


def _attacks(lake_root: Path, vault_dir: Path, tmp_path: Path) -> dict[str, str]:
    key = next(vault_dir.glob("*.key"))
    return {
        "vault key": f"SELECT * FROM read_text('{key}')",
        "vault key by glob": f"SELECT content FROM read_text('{vault_dir}/*.key')",
        "vault listing": f"SELECT * FROM glob('{vault_dir}/*')",
        "overwrite lake.json": f"COPY (SELECT 1 AS a) TO '{lake_root / 'lake.json'}' (FORMAT json)",
        "/etc/passwd blob": "SELECT * FROM read_blob('/etc/passwd')",
        "csv": "SELECT * FROM read_csv('/etc/passwd')",
        "parquet of a table file": (
            f"SELECT * FROM read_parquet('{lake_root}/tables/instances/*.parquet')"
        ),
        "attach": f"ATTACH '{tmp_path / 'other.duckdb'}' AS other",
        "export": f"EXPORT DATABASE '{tmp_path / 'dump'}'",
        "install": "INSTALL httpfs",
        "load": "LOAD httpfs",
        "turn it back on": "SET enable_external_access = true",
        "unlock": "RESET lock_configuration",
    }


def test_library_refuses_every_way_out(
    ingested: lake.Lake, lake_root: Path, vault_dir: Path, tmp_path: Path
) -> None:
    before = (lake_root / "lake.json").read_bytes()
    for name, query in _attacks(lake_root, vault_dir, tmp_path).items():
        with pytest.raises(lake.QueryError) as caught:
            ingested.sql(query).fetchall()
        assert str(caught.value).startswith(REFUSED), (name, str(caught.value))
        assert "\n" not in str(caught.value)
    assert (lake_root / "lake.json").read_bytes() == before
    assert not (tmp_path / "other.duckdb").exists() and not (tmp_path / "dump").exists()


def test_cli_refuses_with_one_line_and_exit_1(
    ingested: lake.Lake, lake_root: Path, vault_dir: Path, tmp_path: Path
) -> None:
    attacks = _attacks(lake_root, vault_dir, tmp_path)
    secret = next(vault_dir.glob("*.key")).read_text().strip()
    for name in ("vault key", "overwrite lake.json", "/etc/passwd blob", "attach", "install"):
        done = _cli(lake_root, vault_dir, "sql", attacks[name])
        assert done.returncode == 1, (name, done.stdout, done.stderr)
        assert REFUSED in done.stderr, (name, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert secret not in done.stdout + done.stderr
    assert json.loads((lake_root / "lake.json").read_text())


def test_ordinary_queries_still_work(ingested: lake.Lake, lake_root: Path) -> None:
    assert ingested.sql("SELECT count(*) FROM instances").fetchall() == [(12,)]
    assert ingested.sql("SELECT count(*) FROM series").fetchall() == [(1,)]
    assert ingested.sql("SELECT count(*) FROM batches").fetchall() == [(2,)]
    modality = ingested.sql(
        """SELECT DISTINCT json_extract_string(header_json, '$."00080060".Value[0]')
           FROM instances"""
    ).fetchall()
    assert modality == [("CT",)]
    assert ingested.sql("SELECT count(*) FROM instances", as_of=1).fetchall() == [(6,)]
    ingested.sql("CREATE TEMP VIEW thick AS SELECT * FROM instances WHERE SliceThickness > 0")
    assert ingested.sql("SELECT count(*) FROM thick").fetchall() == [(12,)]


def test_cli_output_file_is_written_by_the_cli(
    ingested: lake.Lake, lake_root: Path, vault_dir: Path, tmp_path: Path
) -> None:
    target = tmp_path / "out" / "series.json"
    target.parent.mkdir()
    done = _cli(
        lake_root,
        vault_dir,
        "sql",
        "SELECT SeriesInstanceUID FROM series",
        "-f",
        "json",
        "-o",
        str(target),
    )
    assert done.returncode == 0, done.stderr
    assert len(json.loads(target.read_text())) == 1
    done = _cli(lake_root, vault_dir, "sql", "SELECT count(*) AS n FROM instances", "--as-of", "1")
    assert done.returncode == 0 and "6" in done.stdout


def test_locked_connection_scans_registered_arrow_data() -> None:
    con = locked_connection(
        {"t": pa.table({"a": [1, 2, 3]})}, ["CREATE TEMP VIEW v AS SELECT a * 2 AS b FROM t"]
    )
    assert con.sql("SELECT sum(b) FROM v").fetchall() == [(12,)]
    with pytest.raises(Exception, match="disabled"):
        con.sql("SELECT * FROM read_text('/etc/hostname')")


def test_docstring_examples() -> None:
    import doctest

    from lake.catalog import _query

    result = doctest.testmod(_query, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_as_of_applies_to_every_table(lk: lake.Lake, vault_dir: Path, tmp_path: Path) -> None:
    """Issue 15.6: --as-of was applied to instances only; batches, quarantine and cohorts now
    read as they were at that instances version."""
    from tests.series import write_ct_series

    write_ct_series(tmp_path / "a", 3, patient_id="A")
    (tmp_path / "a" / "junk.bin").write_bytes(b"\x00junk" * 20)
    lk.ingest([str(tmp_path / "a")], vault=vault_dir, scheduler="sync")
    lk.refresh()
    first = lk.version
    lk.create_cohort("early", "SELECT * FROM instances")
    write_ct_series(tmp_path / "b", 2, patient_id="B")
    lk.ingest([str(tmp_path / "b")], vault=vault_dir, scheduler="sync")
    lk.refresh()

    def counts(as_of: int | None) -> list[tuple[int, ...]]:
        query = (
            "SELECT (SELECT count(*) FROM instances), (SELECT count(*) FROM batches), "
            "(SELECT count(*) FROM quarantine), (SELECT count(*) FROM cohorts)"
        )
        return lk.sql(query, as_of=as_of).fetchall()

    assert counts(None) == [(5, 2, 1, 1)]
    assert counts(first) == [(3, 1, 1, 1)]  # the cohort was saved before the next commit
    assert counts(0) == [(0, 0, 0, 0)]


def test_user_sql_cannot_read_or_write_the_duckdb_temp_directory(
    lk: lake.Lake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DuckDB keeps its temp directory (``<cwd>/.tmp/``) in ``allowed_directories`` when
    external access is disabled (red-team finding 10): the lockdown sets none."""
    work = tmp_path / "work"
    (work / ".tmp").mkdir(parents=True)
    (work / ".tmp" / "notes.txt").write_text("SECRET-IN-TMP")
    monkeypatch.chdir(work)
    lk.refresh()
    assert lk.sql("SELECT value FROM duckdb_settings() WHERE name = 'allowed_directories'"
                  ).fetchall() == [("[]",)]
    for query in (f"SELECT content FROM read_text('{work}/.tmp/*')",
                  f"COPY (SELECT 'pwned' AS a) TO '{work}/.tmp/written.csv'"):
        with pytest.raises(lake.QueryError):
            lk.sql(query).fetchall()
    assert not (work / ".tmp" / "written.csv").exists()
    con = locked_connection({"t": pa.table({"a": list(range(1000))})})
    assert con.sql("SELECT count(*) FROM (SELECT a FROM t ORDER BY a DESC)").fetchall() == [
        (1000,)]
    with pytest.raises(Exception, match=r"[Pp]ermission"):
        con.sql(f"SELECT content FROM read_text('{work}/.tmp/*')").fetchall()
