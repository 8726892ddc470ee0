"""Red-team findings (SQL lockdown): regression tests of findings fixed on main.

Each test reproduces one finding of a red-team review; it failed before the fix.
"""

from __future__ import annotations

import threading
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
            for way, run in (("Lake.sql", lambda q: lk.sql(q).fetchall()),
                             ("Lake._execute", lambda q: lk._execute(q)[1])):
                try:
                    outcomes[f"{way}: {name}"] = run(query)
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


def _shared_changes() -> dict[str, str]:
    """User statements that would change the catalog's database, which every thread's
    connection and every later query of the Lake (cohorts, exports) reads (review s25,
    finding 3)."""
    return {
        "replace a view": "CREATE OR REPLACE VIEW instances AS SELECT 42 AS x",
        "replace a summary view": "CREATE OR REPLACE VIEW series AS SELECT 42 AS x",
        "a new view": "CREATE VIEW mine AS SELECT 1 AS x",
        "a new table": "CREATE TABLE mine AS SELECT 1 AS x",
        "a macro": "CREATE MACRO twice(a) AS a * 2",
        "a table macro": "CREATE MACRO everything() AS TABLE SELECT 42 AS x",
        "a schema": "CREATE SCHEMA mine",
        "a sequence": "CREATE SEQUENCE counter",
        "a type": "CREATE TYPE mood AS ENUM ('a', 'b')",
        "drop a view": "DROP VIEW studies",
        "drop a table": "DROP TABLE instances_empty",
        "alter a table": "ALTER TABLE instances_empty ADD COLUMN x INTEGER",
        "rename a view": "ALTER VIEW patients RENAME TO people",
        "comment on a view": "COMMENT ON VIEW instances IS 'changed'",
        "insert": "INSERT INTO instances_empty (SOPInstanceUID) VALUES ('1.2.3')",
        "insert by explain analyze":
            "EXPLAIN ANALYZE INSERT INTO instances_empty (SOPInstanceUID) VALUES ('1.2.3')",
        "a view, then a select": "CREATE OR REPLACE VIEW instances AS SELECT 1 AS x; SELECT 1",
        "a temp view, then the shared one":
            "CREATE TEMP VIEW t AS SELECT 1; CREATE OR REPLACE VIEW instances AS SELECT 42",
        "commit first": "COMMIT; CREATE OR REPLACE VIEW instances AS SELECT 42 AS x",
        "a transaction": "BEGIN; CREATE OR REPLACE VIEW instances AS SELECT 42 AS x; COMMIT",
    }


def _catalog_as_seen(lk: lake.Lake) -> list[object]:
    return [
        lk.sql("SELECT count(*), count(DISTINCT SOPInstanceUID) FROM instances").fetchall(),
        lk.sql("SELECT count(*) FROM series").fetchall(),
        lk.sql("SELECT count(*) FROM studies").fetchall(),
        lk.sql("SELECT count(*) FROM patients").fetchall(),
        lk.sql("SELECT count(*) FROM instances_empty").fetchall(),
        lk.sql("SELECT database_name, schema_name, view_name, sql, comment FROM duckdb_views() "
               "WHERE NOT internal AND NOT temporary ORDER BY ALL").fetchall(),
        lk.sql("SELECT database_name, table_name, sql FROM duckdb_tables() "
               "WHERE NOT temporary ORDER BY ALL").fetchall(),
        lk.sql("SELECT count(*) FROM duckdb_functions() WHERE NOT internal").fetchall(),
        lk.sql("SELECT count(*) FROM duckdb_schemas() WHERE NOT internal").fetchall(),
    ]


def test_user_sql_cannot_change_the_catalog_every_thread_shares(several: lake.Lake) -> None:
    """Review s25 finding 3, now a regression test: since the catalog's views left TEMP
    (bc6dac4), a user's plain ``CREATE OR REPLACE VIEW instances`` (or DROP, ALTER,
    INSERT...) on one thread changed ``instances`` for every thread and every later
    query of the open Lake. Each such statement is refused (saying to use TEMP) and rolled
    back; the catalog reads the same on every thread after."""
    lk = several
    before = _catalog_as_seen(lk)
    assert before[0][0][0] > 0
    outcomes: dict[str, str] = {}
    with ThreadPoolExecutor(2) as pool:
        for name, query in _shared_changes().items():
            # (two threads at once: one may meet the other's change, rolled back since,
            # as DuckDB's write-write conflict: refused either way)
            for thread, outcome in enumerate(pool.map(_outcome_of, [lk] * 2, [query] * 2)):
                outcomes[f"{name} (thread {thread})"] = outcome
            outcomes[name] = _outcome_of(lk, query)
        seen = list(pool.map(lambda _: _catalog_as_seen(lk), range(4)))
    accepted = {name: outcome for name, outcome in outcomes.items()
                if not outcome.startswith("QueryError")}
    assert accepted == {}
    assert "CREATE TEMP VIEW" in outcomes["replace a view"], outcomes["replace a view"]
    assert seen == [before] * 4
    assert _catalog_as_seen(lk) == before


def _outcome_of(lk: lake.Lake, query: str) -> str:
    try:
        relation = lk.catalog().sql(query)
        if relation is not None:
            relation.fetchall()
    except lake.QueryError as exc:
        return f"QueryError: {exc}"
    except duckdb.Error as exc:
        return f"{type(exc).__name__}: {exc}"
    return "accepted"


def test_temp_definitions_stay_working_and_are_each_threads_own(several: lake.Lake) -> None:
    """What user SQL may still define: TEMP views, tables and macros, its own connection's
    (its thread's), in front of the catalog's own names; the other threads still read the
    catalog's."""
    lk = several
    total = lk.sql("SELECT count(*) FROM instances").fetchall()[0][0]
    barrier = threading.Barrier(2)

    def define(tag: int) -> list[object]:
        barrier.wait()
        lk.sql(f"CREATE OR REPLACE TEMP VIEW instances AS SELECT {tag} AS x")
        lk.sql(f"CREATE TEMP TABLE mine AS SELECT {tag} AS y")
        lk.sql(f"INSERT INTO mine VALUES ({tag + 1})")
        lk.sql("CREATE TEMP MACRO twice(a) AS a * 2")
        barrier.wait()  # both threads have defined theirs
        return [lk.sql("SELECT * FROM instances").fetchall(),
                lk.sql("SELECT twice(sum(y)) FROM mine").fetchall()]

    with ThreadPoolExecutor(2) as pool:
        seen = list(pool.map(define, [10, 20]))
    assert seen == [[[(10,)], [(42,)]], [[(20,)], [(82,)]]]
    assert lk.sql("SELECT count(*) FROM instances").fetchall() == [(total,)]
    assert lk.sql("SELECT count(*) FROM duckdb_views() WHERE temporary AND view_name = "
                  "'instances'").fetchall() == [(0,)]
