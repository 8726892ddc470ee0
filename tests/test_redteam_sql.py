"""Red-team findings (SQL lockdown): regression tests of findings fixed on main.

Each test reproduces one finding of a red-team review; it failed before the fix.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import duckdb
import pytest

import lake


def test_user_sql_cannot_read_or_write_the_duckdb_temp_directory(
    lk: lake.Lake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Red-team finding, now a regression test:
    with external access disabled, DuckDB still allows its temp directory
    (``allowed_directories`` = ``[<cwd>/.tmp/]``, see ``duckdb_settings()``), so user SQL
    reads and writes files in ``./.tmp/`` of whoever runs it (`lake sql`, Lake.sql, a server).

    lake.catalog._query.locked_connection sets no temp_directory / allowed_directories
    before ``lock_configuration``.
    """
    work = tmp_path / "work"
    (work / ".tmp").mkdir(parents=True)
    (work / ".tmp" / "notes.txt").write_text("SECRET-IN-TMP")
    monkeypatch.chdir(work)
    lk.refresh()
    allowed = lk.sql(
        "SELECT value FROM duckdb_settings() WHERE name = 'allowed_directories'"
    ).fetchall()
    outcomes: dict[str, object] = {}
    for name, query in {
        "read": f"SELECT content FROM read_text('{work}/.tmp/*')",
        "write": f"COPY (SELECT 'pwned' AS a) TO '{work}/.tmp/written.csv'",
    }.items():
        try:
            outcomes[name] = lk.sql(query).fetchall()
        except (lake.QueryError, Exception) as exc:  # noqa: BLE001 - refused either way
            outcomes[name] = type(exc).__name__
    assert not (work / ".tmp" / "written.csv").exists(), (allowed, outcomes)
    assert outcomes["read"] != [("SECRET-IN-TMP",)], (allowed, outcomes)


def _thread_attacks(lk: lake.Lake, vault_dir: Path, tmp_path: Path) -> dict[str, str]:
    """Statements DuckDB's lockdown itself refuses (the set-up's allowed paths are the
    catalog's data files, which DuckDB would let SQL attach or overwrite: ``Lake.sql``
    refuses those statements before DuckDB sees them, see :func:`_data_file_attacks`)."""
    key = next(vault_dir.glob("*.key"))
    root = Path(lk.location.path)
    return {
        "vault key": f"SELECT * FROM read_text('{key}')",
        "vault key as a blob": f"SELECT * FROM read_blob('{key}')",
        "vault key as csv": f"SELECT * FROM read_csv('{key}', header = false)",
        "vault listing": f"SELECT * FROM glob('{vault_dir}/*')",
        "a table's folder": f"SELECT * FROM read_parquet('{root}/tables/instances/*.parquet')",
        "attach": f"ATTACH '{tmp_path / 'other.duckdb'}' AS other",
        "overwrite lake.json": f"COPY (SELECT 1 AS a) TO '{root / 'lake.json'}' (FORMAT json)",
        "export": f"EXPORT DATABASE '{tmp_path / 'dump'}'",
        "install": "INSTALL httpfs",
        "load": "LOAD httpfs",
        "turn it back on": "SET enable_external_access = true",
        "widen the paths": f"SET allowed_directories = ['{vault_dir}']",
        "unlock": "RESET lock_configuration",
    }


def _data_file_attacks(lk: lake.Lake) -> dict[str, str]:
    data_file = next((Path(lk.location.path) / "tables" / "instances").glob("*.parquet"))
    return {
        "a data file as a database": f"ATTACH '{data_file}' AS stolen",
        "overwrite a data file": f"COPY (SELECT 1 AS a) TO '{data_file}' (FORMAT parquet)",
    }


def test_a_second_threads_connection_is_locked_down_too(
    several: lake.Lake, vault_dir: Path, tmp_path: Path
) -> None:
    """Red-team (session 25), a regression test: an open lake answers every thread on a
    connection of its own (a DuckDB cursor of the catalog's, made on that thread's first
    query, and that cursor's cursor for a query of pinned UIDs). The lockdown is the
    database's, so it binds each: no file outside the catalog's data (the vault's key
    included) is read, none written or attached, no setting changed, whether the statement
    goes through ``Lake.sql`` (which refuses writes before DuckDB sees them) or straight to
    the thread's connection (DuckDB itself refuses it)."""
    lk = several
    catalog = lk.catalog()  # made, and first queried, on this thread
    assert lk.sql("SELECT count(*) FROM instances").fetchall()[0][0] > 0
    secret = next(vault_dir.glob("*.key")).read_bytes()
    lake_json = (Path(lk.location.path) / "lake.json").read_bytes()
    data = {p: p.read_bytes() for p in (Path(lk.location.path) / "tables").rglob("*.parquet")}
    attacks = _thread_attacks(lk, vault_dir, tmp_path)

    def attack() -> dict[str, object]:
        outcomes: dict[str, object] = {}
        # (this thread queries the catalog on a cursor of its own, not on catalog.con)
        outcomes["own connection"] = (
            lk.sql("SELECT count(*) FROM instances").fetchall()[0][0] > 0
            and catalog.connection() is not catalog.con)
        for name, query in {**attacks, **_data_file_attacks(lk)}.items():
            for way, run in (("Lake.sql", lk.sql), ("Lake.execute", lk.execute)):
                try:
                    outcomes[f"{way}: {name}"] = run(query).fetchall()
                except lake.QueryError as exc:
                    outcomes[f"{way}: {name}"] = str(exc).startswith("query refused")
        for name, query in attacks.items():
            for kind, con in (("cursor", catalog.connection()),
                              ("pinned cursor", catalog.connection().cursor())):
                try:
                    outcomes[f"{kind}: {name}"] = con.execute(query).fetchall()
                except duckdb.Error as exc:
                    outcomes[f"{kind}: {name}"] = isinstance(
                        exc, duckdb.PermissionException | duckdb.InvalidInputException)
        outcomes["settings"] = catalog.connection().execute(
            "SELECT current_setting('enable_external_access'), "
            "current_setting('lock_configuration'), current_setting('allowed_directories')"
        ).fetchall()
        return outcomes

    with ThreadPoolExecutor(1) as pool:
        outcomes = pool.submit(attack).result()
    settings = outcomes.pop("settings")
    assert settings == [(False, True, [])]
    refused = {name: outcome for name, outcome in outcomes.items() if outcome is not True}
    assert not refused, refused
    assert secret not in repr(outcomes).encode()
    assert (Path(lk.location.path) / "lake.json").read_bytes() == lake_json
    assert all(path.read_bytes() == before for path, before in data.items())
    assert not (tmp_path / "other.duckdb").exists() and not (tmp_path / "dump").exists()
