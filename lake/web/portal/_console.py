"""The researchers' SQL console: one read-only SELECT over the catalog, with time and row limits.

The console's DuckDB connection is :func:`lake.catalog.locked_connection` (no files, no
ATTACH, no extensions, configuration locked) holding only the imaging data a grant may
see: ``instances`` (the whole catalog, or only the members of the grant's cohorts, each
read at its cohort's catalog version) and the ``series``, ``studies`` and ``patients``
views; plus ``cohorts`` for a grant that sees the whole lake. Accounts, tokens, share
links and the audit log are not registered, so no query can reach them. A query runs
at most ``seconds`` (then DuckDB is interrupted) and returns at most ``rows`` rows.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from lake._errors import QueryError
from lake.catalog import (
    COHORTS,
    INSTANCES,
    arrow_dataset,
    locked_connection,
    query_error,
    views_over_rows,
)

if TYPE_CHECKING:
    from lake._lake import Lake
    from lake.access import Grant

__all__ = ["ConsoleResult", "run_console"]

_MEMORY = "1GB"


@dataclass(frozen=True)
class ConsoleResult:
    """What a console query returned (at most the row limit)."""

    columns: list[str]
    rows: list[tuple[Any, ...]]
    truncated: bool
    catalog_version: int


def _instances_view() -> str:
    casts = [f'CAST("{c.name}" AS {c.sql_cast}) AS "{c.name}"'
             for c in INSTANCES.columns if c.sql_cast]
    replace = f" REPLACE ({', '.join(casts)})" if casts else ""
    return f"CREATE OR REPLACE TEMP VIEW instances AS SELECT *{replace} FROM instances_data"


def _scoped_instances(lake: Lake, grant: Grant) -> pa.Table:
    """The member rows of the grant's cohorts, each read at its cohort's version."""
    assert grant.cohorts is not None
    parts = []
    seen: set[str] = set()
    for view in sorted(grant.cohorts, key=lambda v: v.catalog_version, reverse=True):
        dataset = arrow_dataset(lake.tables.open(INSTANCES.name, view.catalog_version))
        wanted = pa.array(sorted(view.members - seen), type=pa.string())
        for fragment in dataset.get_fragments():
            keys = fragment.to_table(columns=["SOPInstanceUID"], schema=dataset.schema)
            mask = pc.is_in(keys.column(0), value_set=wanted)
            if pc.any(mask).as_py():
                parts.append(fragment.to_table(schema=dataset.schema).filter(mask))
        seen |= view.members
    if not parts:
        return arrow_dataset(lake.tables.open(INSTANCES.name)).schema.empty_table()
    return pa.concat_tables(parts, promote_options="permissive")


def _connection(lake: Lake, grant: Grant) -> tuple[duckdb.DuckDBPyConnection, int]:
    sources: dict[str, object] = {}
    if grant.cohorts is None:
        delta = lake.tables.open(INSTANCES.name)
        version = int(delta.version())
        sources["instances_data"] = lake.tables.dataset(INSTANCES.name, version)
        if lake.tables.exists(COHORTS.name):
            sources["cohorts_data"] = lake.tables.dataset(COHORTS.name)
        else:
            sources["cohorts_data"] = COHORTS.schema.empty_table()
    else:
        version = max((v.catalog_version for v in grant.cohorts), default=lake.version)
        sources["instances_data"] = _scoped_instances(lake, grant)
    setup = [
        f"SET memory_limit = '{_MEMORY}'",
        "SET threads = 1",
        _instances_view(),
        *views_over_rows(),
    ]
    if "cohorts_data" in sources:
        setup.append("CREATE OR REPLACE TEMP VIEW cohorts AS SELECT * FROM cohorts_data")
    return locked_connection(sources, setup), version


def _one_select(sql: str) -> str:
    text = sql.strip().rstrip(";").strip()
    if not text:
        raise QueryError("the query is empty: write one SELECT statement")
    try:
        statements = duckdb.extract_statements(text)
    except duckdb.Error as exc:
        raise query_error(exc) from None
    if len(statements) != 1 or statements[0].type is not duckdb.StatementType.SELECT:
        raise QueryError("the console runs one SELECT statement (or WITH ... SELECT) at a time")
    return text


def run_console(
    lake: Lake, grant: Grant, sql: str, *, seconds: float = 10.0, rows: int = 1000
) -> ConsoleResult:
    """Run one SELECT for ``grant`` within ``seconds`` and return at most ``rows`` rows.

    Raises
    ------
    QueryError
        If the text is not one SELECT, DuckDB refuses it (files, ATTACH, extensions,
        settings: "query refused"), it fails, or it runs out of time.
    """
    text = _one_select(sql)
    con, version = _connection(lake, grant)
    timer = threading.Timer(seconds, con.interrupt)
    timer.start()
    try:
        result = con.execute(f"SELECT * FROM (\n{text}\n) AS console_query LIMIT {int(rows) + 1}")
        names = [d[0] for d in result.description or []]
        fetched = result.fetchall()
    except duckdb.InterruptException:
        raise QueryError(
            f"the query ran longer than {seconds:g} s and was stopped; narrow it down "
            "(or run it in a notebook)"
        ) from None
    except duckdb.Error as exc:
        raise query_error(exc) from None
    finally:
        timer.cancel()
        con.close()
    return ConsoleResult(names, fetched[:rows], len(fetched) > rows, version)


def check_cohort_query(lake: Lake, grant: Grant, sql: str, *, seconds: float = 10.0) -> int:
    """Check a cohort query in the console (same limits, same reach); returns its catalog version.

    Run before :func:`lake.export.create_cohort`, so a cohort query can name only what the
    console holds.

    Raises
    ------
    QueryError
        As :func:`run_console`, or when it returns no UID column.
    """
    result = run_console(lake, grant, sql, seconds=seconds, rows=1)
    if not {"SeriesInstanceUID", "SOPInstanceUID"} & set(result.columns):
        raise QueryError(
            "a cohort query must return a SeriesInstanceUID column (whole series) or a "
            "SOPInstanceUID column (single instances)"
        )
    return result.catalog_version
