"""DuckDB over the catalog's Delta tables (no DuckDB extension is needed)."""

from __future__ import annotations

import datetime as dt
import functools
import json
import threading
from collections.abc import Callable, Mapping, Sequence
from importlib import resources
from typing import TYPE_CHECKING, Any, TypeVar

import duckdb

from lake._errors import QueryError, StaleCatalogError
from lake.catalog._duckdb import without_progress_bar
from lake.catalog._lazy_bloom import LazyBlooms
from lake.catalog._scan import (
    FileGroups,
    Footers,
    Scan,
    TableVersion,
    _file_list,
    empty_table,
    scan_summaries,
    scan_table,
)
from lake.catalog._schema import INSTANCES, TABLES
from lake.catalog._summary import (
    SERIES_PARTS,
    STUDY_PARTS,
    parts_sql,
    studies_from_series_sql,
)

if TYPE_CHECKING:
    from lake.catalog._schema import Table
    from lake.catalog._tables import DeltaTables

__all__ = [
    "Catalog",
    "lock_down",
    "locked_connection",
    "pinned_values",
    "query_error",
    "refuse_writes",
    "run_unshared",
    "views_over_rows",
]

_T = TypeVar("_T")

# Applied in this order once the trusted set-up is done; the last one freezes them all, so
# user SQL cannot turn any back on (nor change any other setting).
_LOCKDOWN = (
    "SET autoinstall_known_extensions = false",
    "SET autoload_known_extensions = false",
    "SET allow_community_extensions = false",
    "SET allow_unsigned_extensions = false",
    # DuckDB keeps its temp directory (default: <cwd>/.tmp/) readable and writable by SQL
    # when external access is disabled: no temp directory, so nothing spills to disk either.
    "SET temp_directory = ''",
    "SET enable_external_access = false",
    "SET lock_configuration = true",
)
_REFUSED = (
    "SQL over the catalog cannot read or write files, attach databases, load extensions "
    "or change settings"
)
# Statements that write files or open databases: refused before DuckDB sees them, so that
# even the catalog's own data files (which its views read) cannot be written or attached.
_WRITING = frozenset({"COPY", "EXPORT", "ATTACH", "DETACH", "LOAD", "INSTALL", "SET"})


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
        lock_down(con, sources or {}, setup)
    except BaseException:
        con.close()
        raise
    return con


def lock_down(
    con: duckdb.DuckDBPyConnection,
    sources: Mapping[str, object],
    setup: Sequence[str],
    readable: Sequence[str] = (),
) -> None:
    """Register ``sources``, run the trusted ``setup``, then lock ``con`` down.

    ``readable`` names the only files DuckDB may still open afterwards (the data files the
    views read with DuckDB's own Parquet reader); :meth:`Catalog.sql` refuses statements
    that could write them or open them as databases.
    """
    for name, data in sources.items():
        con.register(name, data)
    # One execute of many statements: DuckDB runs them in order, as one call each would,
    # for one round trip through its Python layer.
    statements = [*setup]
    if readable:
        statements.append("SET allowed_paths = " + _file_list(readable))
    # GLOBAL: the cursors of Catalog.sql (pinned UIDs) keep the cache of footers too.
    statements.append("SET GLOBAL parquet_metadata_cache = true")
    _run(con, statements)
    without_progress_bar(con)
    _run(con, _LOCKDOWN)


def _run(con: duckdb.DuckDBPyConnection, statements: Sequence[str]) -> None:
    """Run trusted ``statements`` (none ending in a comment) in one execute."""
    con.execute(";\n".join(statements)).fetchall()


def refuse_writes(con: duckdb.DuckDBPyConnection, query: str) -> frozenset[str]:
    """Raise :class:`QueryError` when ``query`` holds a statement that writes files, opens a
    database or changes a setting (see :data:`_WRITING`); else the kinds of its statements
    (``SELECT``, ``CREATE``...).

    Raises
    ------
    QueryError
        If a statement is refused, or the text does not parse.
    """
    try:
        statements = con.extract_statements(query)
    except duckdb.Error as exc:
        raise query_error(exc) from None
    kinds = frozenset(str(statement.type).rsplit(".", 1)[-1] for statement in statements)
    if kinds & _WRITING:
        raise QueryError(f"query refused: {_REFUSED}")
    return kinds


_SHARED_REFUSED = (
    "query refused: it would change the catalog's database, which every thread and later "
    "query of this lake reads; define with CREATE TEMP VIEW/TABLE (its own connection's)"
)

# What a statement could change in the database every connection shares: its non-temporary
# schemas, tables (with their rows), views, macros, sequences, types and indexes, with
# their definitions and comments.
_SHARED_OBJECTS = """
SELECT 'schema', database_name, schema_name, '', sql, comment::VARCHAR FROM duckdb_schemas()
 WHERE NOT internal AND database_name <> 'temp'
UNION ALL SELECT 'table', database_name, schema_name, table_name, sql, comment::VARCHAR
 FROM duckdb_tables() WHERE NOT temporary
UNION ALL SELECT 'view', database_name, schema_name, view_name, sql, comment::VARCHAR
 FROM duckdb_views() WHERE NOT internal AND NOT temporary
UNION ALL SELECT 'function', database_name, schema_name, function_name,
 coalesce(macro_definition, '') || parameters::VARCHAR, comment::VARCHAR
 FROM duckdb_functions() WHERE NOT internal AND database_name <> 'temp'
UNION ALL SELECT 'sequence', database_name, schema_name, sequence_name,
 sql || coalesce(last_value::VARCHAR, ''), comment::VARCHAR
 FROM duckdb_sequences() WHERE NOT temporary
UNION ALL SELECT 'type', database_name, schema_name, type_name,
 logical_type || coalesce(labels::VARCHAR, ''), comment::VARCHAR
 FROM duckdb_types() WHERE NOT internal AND database_name <> 'temp'
UNION ALL SELECT 'index', database_name, schema_name, index_name, sql, comment::VARCHAR
 FROM duckdb_indexes() WHERE database_name <> 'temp'
ORDER BY ALL
"""


def _shared_state(con: duckdb.DuckDBPyConnection) -> list[tuple[Any, ...]]:
    """The non-temporary objects of ``con``'s database as ``con``'s transaction sees them,
    with the row count of each table."""
    objects = con.execute(_SHARED_OBJECTS).fetchall()
    tables = [(db, schema, name) for kind, db, schema, name, _, _ in objects if kind == "table"]
    counts = con.execute(" UNION ALL ".join(
        f"SELECT count(*) FROM {_quoted(db)}.{_quoted(schema)}.{_quoted(name)}"
        for db, schema, name in tables)).fetchall() if tables else []
    return [*objects, *counts]


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def run_unshared(con: duckdb.DuckDBPyConnection, kinds: frozenset[str],
                 run: Callable[[duckdb.DuckDBPyConnection], _T]) -> _T:
    """``run`` a user's statements of ``kinds`` on ``con`` (a connection of a database other
    connections share) so that they change nothing the others read.

    A query of ``SELECT`` statements alone runs as it is. Any other (``CREATE``, ``DROP``,
    ``ALTER``, ``INSERT``, ``EXPLAIN ANALYZE``, ``EXECUTE``...) runs in a transaction of its
    own: when the database's non-temporary objects (:func:`_shared_state`) differ after it,
    the transaction is rolled back and the query refused. ``TEMP`` definitions, which are
    ``con``'s own, stay.

    Raises
    ------
    QueryError
        If the query would change the shared database, or holds a statement that ends or
        starts a transaction (which would let it commit outside the check).
    duckdb.Error
        What DuckDB raises running it (rolled back).
    """
    if kinds <= {"SELECT"}:
        return run(con)
    if "TRANSACTION" in kinds:
        raise QueryError("query refused: SQL over the catalog cannot begin, commit or roll "
                         "back transactions")
    con.execute("BEGIN TRANSACTION")
    try:
        before = _shared_state(con)
        result = run(con)
        changed = _shared_state(con) != before
    except BaseException:
        con.execute("ROLLBACK")
        raise
    if changed:
        con.execute("ROLLBACK")
        raise QueryError(_SHARED_REFUSED)
    con.execute("COMMIT")
    return result


_DEFINING = frozenset({"CREATE", "DROP", "ALTER"})
"""Statements after which a name such as ``instances`` may no longer be the catalog's own."""

_TABLE_REFS = frozenset({"BASE_TABLE", "JOIN", "SUBQUERY", "TABLE_FUNCTION",
                         "EXPRESSION_LIST", "PIVOT", "SHOW_REF", "COLUMN_DATA", "DELIM_GET",
                         "BOUND_TABLE_REF", "CTE"})
"""Serialized table references (``json_serialize_sql``) other than an empty ``FROM``."""


def _conjuncts(expression: dict[str, Any] | None) -> list[dict[str, Any]]:
    if expression is None:
        return []
    if expression.get("type") == "CONJUNCTION_AND":
        children = expression.get("children")
        return [c for child in (children if isinstance(children, list) else [])
                for c in _conjuncts(child)]
    return [expression]


def _string(expression: Any) -> str | None:
    """The text of a string literal, else None."""
    if not isinstance(expression, dict) or expression.get("type") != "VALUE_CONSTANT":
        return None
    literal = expression.get("literal")
    if isinstance(literal, dict) and literal.get("kind") == "STRING":
        text = literal.get("text")
        return text if isinstance(text, str) else None
    return None


def _walk(node: Any) -> list[dict[str, Any]]:
    """Every JSON object in ``node``, depth first."""
    found: list[dict[str, Any]] = []
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            found.append(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return found


def pinned_values(con: duckdb.DuckDBPyConnection, query: str,
                  columns: Sequence[str]) -> tuple[str, list[str]] | None:
    """``(column, values)`` when ``query`` is one ``SELECT`` whose only relation is the
    ``instances`` table and whose ``WHERE`` requires one of ``columns`` to equal one of
    these string literals (``col = 'v'`` or ``col IN ('v', ...)``, a conjunct of the
    ``WHERE``); else None.

    Every row the query reads from ``instances`` then holds one of the values, so the data
    files that hold none of them can be left out without changing its answer. Read from
    DuckDB's own parse of the query (``json_serialize_sql``), never from its text.
    """
    try:
        rows = con.execute("SELECT json_serialize_sql(?)", [query]).fetchall()
        tree = json.loads(str(rows[0][0]))
    except (duckdb.Error, ValueError, IndexError):
        return None
    try:
        return _pinned(tree, columns)
    except (AttributeError, KeyError, TypeError, ValueError):
        return None  # a parse this reading does not know: every file is read


_BASE_TABLE_KEYS = frozenset({"type", "alias", "table_name", "schema_name", "catalog_name",
                              "qualified_name", "query_location", "query_location_length",
                              "sample", "column_name_alias", "at_clause"})
"""The fields of a serialized ``BASE_TABLE`` reference this reading knows; any other (a
field of a later DuckDB) makes it read every file."""


def _pinned(tree: Any, columns: Sequence[str]) -> tuple[str, list[str]] | None:
    """:func:`pinned_values` of a parse (``json_serialize_sql``)."""
    statements = tree.get("statements") if isinstance(tree, dict) else None
    if tree.get("error") or not isinstance(statements, list) or len(statements) != 1:
        return None
    node = statements[0].get("node") if isinstance(statements[0], dict) else None
    if not isinstance(node, dict) or node.get("type") != "SELECT_NODE":
        return None
    objects = _walk(node)
    refs = [o for o in objects
            if isinstance(o.get("type"), str) and o["type"] in _TABLE_REFS and "alias" in o]
    table = node.get("from_table")
    if len(refs) != 1 or refs[0] is not table or not isinstance(table, dict):
        return None
    if any(isinstance(o.get("cte_map"), dict) and o["cte_map"].get("map") for o in objects):
        return None  # a CTE could be named instances
    if (table.get("type") != "BASE_TABLE" or str(table.get("table_name")).lower() != INSTANCES.name
            or table.get("schema_name") or table.get("catalog_name") or table.get("at_clause")
            or table.get("sample") or table.get("column_name_alias")
            or not table.keys() <= _BASE_TABLE_KEYS
            or [str(p).lower() for p in (table.get("qualified_name") or {}).get(
                "path", [INSTANCES.name])] != [INSTANCES.name]):
        return None
    names = {INSTANCES.name, str(table.get("alias") or INSTANCES.name).lower()}
    wanted = {c.lower(): c for c in columns}
    where = node.get("where_clause")
    for conjunct in _conjuncts(where if isinstance(where, dict) else None):
        if conjunct.get("type") == "COMPARE_EQUAL":
            sides = [conjunct.get("left"), conjunct.get("right")]
        elif conjunct.get("type") == "COMPARE_IN":
            children = conjunct.get("children")
            sides = children if isinstance(children, list) else []
        else:
            continue
        if len(sides) < 2 or not isinstance(sides[0], dict):
            continue
        if conjunct.get("type") == "COMPARE_EQUAL" and _string(sides[0]) is not None:
            sides = sides[::-1]  # 'v' = col
        ref, values = sides[0], [_string(v) for v in sides[1:]]
        path = ref.get("column_names") if isinstance(ref, dict) else None
        if (not isinstance(ref, dict) or ref.get("type") != "COLUMN_REF"
                or not isinstance(path, list) or not 1 <= len(path) <= 2
                or (len(path) == 2 and str(path[0]).lower() not in names)
                or str(path[-1]).lower() not in wanted or any(v is None for v in values)):
            continue
        return wanted[str(path[-1]).lower()], [v for v in values if v is not None]
    return None


def _names_removed_data_file(text: str, tables: str) -> bool:
    """Whether DuckDB's refusal ``text`` is its search for a data file below ``tables`` that
    is gone: it looks for a missing file as a folder (``<file>/**/*.parquet``), which the
    lockdown refuses."""
    start = text.find('"')
    end = text.find('"', start + 1)
    named = text[start + 1:end] if 0 <= start < end else ""
    return named.startswith(tables) and named.endswith(".parquet/**/*.parquet")


def query_error(exc: BaseException) -> QueryError:
    """The one-line :class:`QueryError` for an error DuckDB raised on a user's query."""
    text = str(exc).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    if isinstance(exc, duckdb.PermissionException) or "configuration has been locked" in text:
        return QueryError(f"query refused: {_REFUSED}")
    return QueryError(f"query failed: {first}")


@functools.cache  # (a constant of the package: read once, not at every catalog)
def _view_statements() -> tuple[str, ...]:
    text = resources.files("lake.catalog").joinpath("views.sql").read_text()
    body = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("--"))
    return tuple(stmt.strip() for stmt in body.split(";") if stmt.strip())


def views_over_rows(rows: str = INSTANCES.name) -> list[str]:
    """The statements that define the ``series``, ``studies`` and ``patients`` views over
    the instance rows of the relation ``rows``, aggregated on the fly (no stored summaries).

    For connections that hold rows of their own choosing (the portal's console: the members
    of a grant's cohorts), where the summaries of the catalog's data files do not apply.
    """
    series = parts_sql(SERIES_PARTS, rows, "NULL::VARCHAR")
    return [
        f"CREATE OR REPLACE TEMP VIEW {SERIES_PARTS} AS {series}",
        f"CREATE OR REPLACE TEMP VIEW {STUDY_PARTS} AS "
        f"{studies_from_series_sql(f'({series})')}",
        *_view_statements(),
    ]


def _select_list(name: str) -> str:
    if name != INSTANCES.name:
        return "*"
    casts = [
        f'CAST("{c.name}" AS {c.sql_cast}) AS "{c.name}"' for c in INSTANCES.columns if c.sql_cast
    ]
    return f"* REPLACE ({', '.join(casts)})" if casts else "*"


class Catalog:
    """A DuckDB database with the catalog registered: tables ``instances``,
    ``batches``, ``quarantine`` and views ``series``, ``studies``, ``patients``.

    Safe to query from several threads at once: each thread's queries run on a connection
    of its own to the one database (:meth:`connection`), so none waits for another, and a
    relation is fetched on the thread that made it (DuckDB refuses a second call on a busy
    connection). The views are the database's (not TEMP), and its lockdown, settings and
    Parquet metadata cache bind every connection. User SQL cannot change the database
    (:func:`run_unshared`): a ``CREATE`` (not ``TEMP``), ``DROP``, ``ALTER`` or ``INSERT``
    that would is refused; ``CREATE TEMP VIEW``/``TABLE`` define what the calling thread's
    connection alone sees.

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
        when = self._moment(as_of) if as_of is not None else None
        con = duckdb.connect()
        try:
            scan = Scan()
            queryable = [t for t in TABLES if t.queryable]
            found = {t.name: self._version_of(t, as_of, when) for t in queryable}
            # the kept versions' files, checked together: the erasures are read once
            kept = tables.files_at({name: v for name, v in found.items() if isinstance(v, int)})
            opened: list[tuple[Table, TableVersion | None]] = []
            for table in queryable:
                version = found[table.name]
                read = (TableVersion(version, kept[table.name].paths)
                        if isinstance(version, int) else version)
                if read is not None:
                    self.versions[table.name] = read.version
                opened.append((table, read))
            # Every table's empty shape, then what DuckDB says of them and of the data files,
            # each in one round trip for all tables (not one per table).
            # DuckDB's cache of Parquet footers on from the start (lock_down turns it on for
            # the queries): the footers read here and the views' binds then parse each once
            _run(con, ["SET GLOBAL parquet_metadata_cache = true",
                       *(empty_table(table) for table, _ in opened)])
            if tables.location.is_local:
                scan.footers = Footers.read(con, {
                    f"{table.name}_empty": read.files for table, read in opened if read})
            for table, read in opened:
                rows = scan_table(con, scan, tables, table, read)
                columns = _select_list(table.name)
                scan.statements.append(
                    f"CREATE OR REPLACE VIEW {table.name} AS "
                    + (rows if columns == "*" else f"SELECT {columns} FROM ({rows})")
                )
                if table.name == INSTANCES.name and read is not None:
                    scan_summaries(con, scan, tables, read)
            lock_down(con, scan.sources, [*scan.statements, *_view_statements()],
                      scan.readable)
        except BaseException:
            con.close()
            raise
        self.con = con
        """The catalog's first connection: the queries of the thread that made it."""
        self._sources = scan.sources
        self._local = threading.local()
        self._local.con = con
        self._grouped: FileGroups | None = scan.grouped.get(INSTANCES.name)
        self._blooms = LazyBlooms(
            [f for group, _ in self._grouped.groups for f in group] if self._grouped else [])
        self._defined = False  # a user statement created, dropped or altered something

    def _moment(self, as_of: int) -> tuple[dt.datetime, bool]:
        """Just before the ``instances`` commit after ``as_of`` (now for the latest), and
        whether it is now."""
        following = self.tables.commit_time(INSTANCES.name, as_of + 1)
        if following is None:
            return dt.datetime.now(dt.UTC), True
        return following - dt.timedelta(milliseconds=1), False

    def _version_of(self, table: Table, as_of: int | None,
                    when: tuple[dt.datetime, bool] | None) -> TableVersion | int | None:
        """The version of ``table`` to read and its files (None: it does not exist, or did
        not yet at ``when``), checked as :meth:`DeltaTables.open` checks a version; or the
        version alone (an int) when its files are to come from the snapshots the tables keep,
        checked by :meth:`DeltaTables.files_at` for every such table at once.

        A local lake's versions at ``as_of`` come from the snapshots its tables keep
        (:meth:`DeltaTables.files_at`, :meth:`DeltaTables.latest`): an export resolves its
        cohort at the latest version, which the lake keeps, then queries that version, so
        no table is opened again. (A remote lake's kept files are not its filesystem paths.)
        """
        tables = self.tables
        kept = tables.location.is_local
        if table.name == INSTANCES.name:
            if as_of is not None and kept:
                return as_of
            return TableVersion.of(tables, tables.open(table.name, as_of))
        if not tables.exists(table.name):
            # (A lake made by an older release lacks a newer table: it reads as empty; the
            # next 'lake init' or write creates it.)
            return None
        if when is None:
            return TableVersion.of(tables, tables.open(table.name))
        moment, now = when
        if now and kept:  # the latest version of every table, as version_at(now) finds it
            return tables.latest(table.name)[0]
        then = tables.version_at(table.name, moment)
        if then is None:
            return None  # it did not exist yet
        return TableVersion.of(tables, tables.open(table.name, then))

    @property
    def version(self) -> int:
        """The version of the ``instances`` table this catalog reads."""
        return self.versions["instances"]

    def connection(self) -> duckdb.DuckDBPyConnection:
        """The connection the calling thread's queries run on: :attr:`con` on the thread
        that made the catalog, on any other a cursor of it made on that thread's first
        query (~0.02 ms of CPU) and kept for it (let go when the thread ends)."""
        con: duckdb.DuckDBPyConnection | None = getattr(self._local, "con", None)
        if con is None:
            con = self.con.cursor()
            try:
                for name, data in self._sources.items():  # (a remote lake's Arrow data)
                    con.register(name, data)
            except BaseException:
                con.close()
                raise
            self._local.con = con
        return con

    def sql(self, query: str) -> duckdb.DuckDBPyRelation:
        """Run ``query``; returns a DuckDB relation (``.df()``, ``.arrow()``, ``.pl()``),
        to fetch on this thread.

        The connection is locked down (:func:`locked_connection`): a query that tries to
        read or write a file, attach a database or load an extension is refused.

        Raises
        ------
        QueryError
            If DuckDB rejects the query (errors raised later, while the relation is
            fetched, are DuckDB's own: turn them into one with :func:`query_error`).
        """
        return self._on_connection(query, lambda con: con.sql(query))

    def _execute(self, query: str) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        """Run ``query`` now, checked as :meth:`sql` checks it; returns its result's
        ``(description, rows)``, fetched.

        What ``sql(query).fetchall()`` answers, for a query run once: a relation binds its
        query when it is made, then again when it is fetched (~1 ms of CPU each on a small
        catalog). (Private: the export's member query is what it is for.)

        Raises
        ------
        QueryError
            If DuckDB rejects the query or fails running it.
        """
        def fetched(con: duckdb.DuckDBPyConnection
                    ) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
            con.execute(query)
            return list(con.description or []), con.fetchall()

        return self._on_connection(query, fetched)

    def _on_connection(self, query: str, run: Callable[[duckdb.DuckDBPyConnection], _T]) -> _T:
        """``run`` on this thread's connection, or on a cursor whose ``instances`` reads only
        the files ``query`` may need (:meth:`_files_for`); DuckDB's errors as QueryError."""
        try:
            con = self.connection()
        except duckdb.Error as exc:  # (a closed catalog)
            raise query_error(exc) from None
        kinds = refuse_writes(con, query)
        files = self._files_for(query, con, kinds)
        try:
            if files is None:
                return run_unshared(con, kinds, run)
            # Its own connection to the same database (settings, lockdown and Parquet
            # metadata cache are the database's), where a TEMP ``instances`` (its own, in
            # front of the database's) reads only ``files``.
            cursor = con.cursor()
            cursor.execute(f"CREATE TEMP VIEW {INSTANCES.name} AS SELECT "
                           f"{_select_list(INSTANCES.name)} FROM ({files})")
            return run(cursor)
        except duckdb.PermissionException as exc:
            if _names_removed_data_file(str(exc), self.tables.uri("")):
                raise StaleCatalogError(
                    "the catalog's data files changed under this open lake (an erasure or a "
                    "vacuum by another process); open the lake again (or call refresh()) and "
                    "run the query again"
                ) from None
            raise query_error(exc) from None
        except duckdb.Error as exc:
            raise query_error(exc) from None

    def _files_for(self, query: str, con: duckdb.DuckDBPyConnection | None = None,
                   kinds: frozenset[str] | None = None) -> str | None:
        """The relation ``instances`` may read for ``query`` in place of every data file:
        those whose Bloom filters may hold the values the query pins a UID or PatientID
        column to (:func:`pinned_values`); None to read them all.

        Which files may hold a value is read from the files' Bloom filters, once per
        column and catalog, on the second query that pins that column (a catalog opened
        for one query does not pay for it): DuckDB opens every file it is given, ~0.3 ms
        of CPU each even when the filters rule out all its row groups. A version of one data
        file has none to leave out: its queries are not read for pinned values (~0.5 ms of
        CPU each, a tenth of a small export's query).
        """
        if self._grouped is None or self._defined or len(self._blooms.files) < 2:
            return None
        con = self.connection() if con is None else con
        if kinds is None:  # (the caller's refuse_writes parsed it already)
            kinds = refuse_writes(con, query)
        if kinds & _DEFINING:
            self._defined = True
            return None
        from lake.catalog._layout import BLOOM_COLUMNS  # (deltalake: not for every query)

        pinned = pinned_values(con, query, BLOOM_COLUMNS[INSTANCES.name])
        if pinned is None:
            return None
        column, values = pinned
        candidates = self._blooms.candidates(column, values)
        return None if candidates is None else self._grouped.sql(candidates)

    def close(self) -> None:
        """Close the database: every thread's connection, and the relations they handed out."""
        self.con.close()
