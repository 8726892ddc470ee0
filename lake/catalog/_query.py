"""DuckDB over the catalog's Delta tables (no DuckDB extension is needed)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from importlib import resources

import duckdb

from lake._errors import QueryError
from lake.catalog._schema import INSTANCES, TABLES
from lake.catalog._tables import DeltaTables

__all__ = ["Catalog", "locked_connection", "query_error"]

# Applied in this order once the trusted set-up is done; the last one freezes them all, so
# user SQL cannot turn any back on (nor change any other setting).
_LOCKDOWN = (
    "SET autoinstall_known_extensions = false",
    "SET autoload_known_extensions = false",
    "SET allow_community_extensions = false",
    "SET allow_unsigned_extensions = false",
    "SET enable_external_access = false",
    "SET lock_configuration = true",
)
_REFUSED = (
    "SQL over the catalog cannot read or write files, attach databases, load extensions "
    "or change settings"
)


def locked_connection(
    sources: Mapping[str, object] | None = None,
    setup: Sequence[str] = (),
    *,
    threads: int | None = None,
) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection that user SQL can run on without reaching outside its data.

    ``sources`` (Arrow tables, datasets, record batch readers...) are registered and the
    trusted ``setup`` statements (views) run first; then external access is disabled
    (no ``read_text``/``read_blob``/``read_csv``/``read_parquet`` of paths, no ``glob``,
    no ``COPY ... TO``, ``EXPORT DATABASE`` or ``ATTACH``, no ``INSTALL``/``LOAD`` of
    extensions) and the configuration is locked, so no query can undo it. Registered
    Arrow data still scans: it is read by Arrow, not by DuckDB's filesystem. Use
    :func:`query_error` to turn DuckDB's errors into a :class:`QueryError`.

    Parameters
    ----------
    sources : mapping of str to Arrow data, optional
        Names to register and what they read.
    setup : sequence of str
        Trusted statements run before the lockdown (e.g. ``CREATE VIEW``).
    threads : int, optional
        DuckDB threads (default: DuckDB's).

    Returns
    -------
    duckdb.DuckDBPyConnection

    Examples
    --------
    >>> import pyarrow as pa
    >>> con = locked_connection({"t": pa.table({"a": [1, 2]})})
    >>> con.sql("SELECT sum(a) FROM t").fetchall()
    [(3,)]
    >>> try:
    ...     con.sql("SELECT * FROM read_text('/etc/hostname')")
    ... except Exception as exc:
    ...     print(query_error(exc))
    query refused: SQL over the catalog cannot read or write files, ...
    """
    con = duckdb.connect()
    try:
        if threads is not None:
            con.execute(f"SET threads = {int(threads)}")
        for name, data in (sources or {}).items():
            con.register(name, data)
        for statement in setup:
            con.execute(statement)
        for statement in _LOCKDOWN:
            con.execute(statement)
    except BaseException:
        con.close()
        raise
    return con


def query_error(exc: BaseException) -> QueryError:
    """The one-line :class:`QueryError` for an error DuckDB raised on a user's query."""
    text = str(exc).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    if isinstance(exc, duckdb.PermissionException) or "configuration has been locked" in text:
        return QueryError(f"query refused: {_REFUSED}")
    return QueryError(f"query failed: {first}")


def _view_statements() -> list[str]:
    text = resources.files("lake.catalog").joinpath("views.sql").read_text()
    body = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("--"))
    return [stmt.strip() for stmt in body.split(";") if stmt.strip()]


def _select_list(name: str) -> str:
    if name != INSTANCES.name:
        return "*"
    casts = [
        f'CAST("{c.name}" AS {c.sql_cast}) AS "{c.name}"' for c in INSTANCES.columns if c.sql_cast
    ]
    return f"* REPLACE ({', '.join(casts)})" if casts else "*"


class Catalog:
    """A DuckDB connection with the catalog registered: tables ``instances``,
    ``batches``, ``quarantine`` and views ``series``, ``studies``, ``patients``.

    Parameters
    ----------
    tables : DeltaTables
        The lake's Delta tables.
    as_of : int, optional
        Time travel: the ``instances`` table as of this version, and every other table as
        it was then (its version current until the next ``instances`` commit, so a batch's
        record and quarantine rows, written just after its instances, are included).
    """

    def __init__(self, tables: DeltaTables, as_of: int | None = None) -> None:
        self.tables = tables
        self.as_of = as_of
        self.versions: dict[str, int] = {}
        sources: dict[str, object] = {}
        setup: list[str] = []
        when = self._moment(as_of) if as_of is not None else None
        for table in (t for t in TABLES if t.queryable):
            version: int | None = None
            if table.name == INSTANCES.name:
                version = as_of
            elif when is not None and tables.exists(table.name):
                version = tables.version_at(table.name, when)
                if version is None:  # the table did not exist yet: empty then
                    sources[f"{table.name}_delta"] = table.schema.empty_table()
            if f"{table.name}_delta" in sources:
                pass
            elif table.name != INSTANCES.name and not tables.exists(table.name):
                # A lake made by an older release lacks a newer table: it reads as empty
                # (the next 'lake init' or write creates it).
                sources[f"{table.name}_delta"] = table.schema.empty_table()
            else:
                delta = tables.open(table.name, version)
                self.versions[table.name] = int(delta.version())
                sources[f"{table.name}_delta"] = tables.dataset(table.name, delta.version())
            setup.append(
                f"CREATE OR REPLACE TEMP VIEW {table.name} AS SELECT {_select_list(table.name)} "
                f"FROM {table.name}_delta"
            )
        self.con = locked_connection(sources, [*setup, *_view_statements()])

    def _moment(self, as_of: int) -> dt.datetime | None:
        """Just before the ``instances`` commit after ``as_of`` (now for the latest)."""
        following = self.tables.commit_time(INSTANCES.name, as_of + 1)
        if following is None:
            return dt.datetime.now(dt.UTC)
        return following - dt.timedelta(milliseconds=1)

    @property
    def version(self) -> int:
        """The version of the ``instances`` table this catalog reads."""
        return self.versions["instances"]

    def sql(self, query: str) -> duckdb.DuckDBPyRelation:
        """Run ``query``; returns a DuckDB relation (``.df()``, ``.arrow()``, ``.pl()``).

        The connection is locked down (:func:`locked_connection`): a query that tries to
        read or write a file, attach a database or load an extension is refused.

        Raises
        ------
        QueryError
            If DuckDB rejects the query (errors raised later, while the relation is
            fetched, are DuckDB's own: turn them into one with :func:`query_error`).
        """
        try:
            return self.con.sql(query)
        except duckdb.Error as exc:
            raise query_error(exc) from None

    def close(self) -> None:
        self.con.close()
