"""How DuckDB reads a version of a Delta table: its own Parquet reader over the log's files.

For a local lake every view reads ``read_parquet`` over exactly the data files of the version
(taken from the Delta log), not an Arrow dataset: DuckDB then answers ``count(*)`` from the
files' footers, skips row groups by their statistics and Bloom filters (a UID lookup reads
one row group of hundreds), and reads only the columns a query names. Measured in
``docs/performance.md`` ("The catalog at 10 million instances").

Files written before a column was added lack it: files are grouped by their Parquet schema
(read from their footers once; a table of one file is one group, read from no footer) and
each group is read with one ``read_parquet`` under a projection that gives every
view all declared columns, typed, with NULL where a file has none (``UNION ALL BY NAME``
with an empty table of the declared schema where a file's types differ from it).

Remote lakes (``s3://...``) keep Arrow datasets: DuckDB would need its ``httpfs`` extension,
which is downloaded at run time and not available offline.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from lake.catalog._schema import INSTANCES, Table
from lake.catalog._summary import (
    SERIES_PARTS,
    STUDY_PARTS,
    data_files,
    parts_sql,
    studies_from_series_sql,
    summaries_of,
)

if TYPE_CHECKING:
    import duckdb
    import pyarrow as pa
    from deltalake import DeltaTable

    from lake.catalog._tables import DeltaTables

__all__ = ["FileGroups", "Footers", "Scan", "TableVersion", "duckdb_type", "empty_table",
           "scan_summaries", "scan_table"]


def duckdb_type(type_: pa.DataType) -> str:
    """The DuckDB type of an Arrow type of the catalog's schema.

    Raises
    ------
    TypeError
        For a type the catalog does not use (add it here when the schema gains one).

    Examples
    --------
    >>> import pyarrow as pa
    >>> duckdb_type(pa.list_(pa.struct([pa.field("a", pa.string())])))
    'STRUCT("a" VARCHAR)[]'
    """
    import pyarrow as pa

    simple = {
        pa.string(): "VARCHAR", pa.large_string(): "VARCHAR", pa.string_view(): "VARCHAR",
        pa.binary(): "BLOB", pa.large_binary(): "BLOB", pa.bool_(): "BOOLEAN",
        pa.int8(): "TINYINT", pa.int16(): "SMALLINT", pa.int32(): "INTEGER",
        pa.int64(): "BIGINT", pa.float32(): "FLOAT", pa.float64(): "DOUBLE",
        pa.date32(): "DATE",
    }
    if type_ in simple:
        return simple[type_]
    if pa.types.is_timestamp(type_):
        return "TIMESTAMPTZ" if type_.tz else "TIMESTAMP"
    if pa.types.is_list(type_) or pa.types.is_large_list(type_):
        return duckdb_type(type_.value_type) + "[]"
    if pa.types.is_struct(type_):
        fields = ", ".join(f'"{f.name}" {duckdb_type(f.type)}' for f in type_)
        return f"STRUCT({fields})"
    if pa.types.is_map(type_):
        return f"MAP({duckdb_type(type_.key_type)}, {duckdb_type(type_.item_type)})"
    raise TypeError(f"no DuckDB type for {type_}")


def _columns_ddl(table: Table) -> str:
    return ", ".join(f'"{c.name}" {c.duckdb_type}' for c in table.columns)


@functools.cache  # (a constant of the schema: ~0.1 ms of CPU a catalog for `instances`)
def empty_table(table: Table) -> str:
    """The statement that makes ``<table>_empty``, the empty table of ``table``'s declared
    columns and DuckDB types that every reading of ``table`` is shaped after.

    Typed in SQL rather than registered from Arrow: registering Arrow data makes DuckDB's
    Python layer import pandas (0.3 s on every command).
    """
    return f"CREATE OR REPLACE TABLE {table.name}_empty ({_columns_ddl(table)})"


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _file_list(files: Sequence[str]) -> str:
    return "[" + ", ".join(_quote(f) for f in files) + "]"


def _read_parquet(files: Sequence[str], *, filename: bool = False) -> str:
    return (
        f"read_parquet({_file_list(files)}, hive_partitioning = false, "
        f"filename = {'true' if filename else 'false'})"
    )


@dataclass(frozen=True)
class TableVersion:
    """The version of a table a catalog reads, and its data files as paths on the lake's
    filesystem (:func:`lake.catalog._summary.data_files`)."""

    version: int
    files: tuple[str, ...]

    @classmethod
    def of(cls, tables: DeltaTables, delta: DeltaTable) -> TableVersion:
        """The version ``delta`` is at."""
        return cls(int(delta.version()), tuple(data_files(tables, delta)))


@dataclass
class Scan:
    """What a catalog connection needs to read tables: Arrow sources to register, trusted
    statements to run before the lockdown, and the files user SQL may read through them."""

    sources: dict[str, object] = field(default_factory=dict)
    statements: list[str] = field(default_factory=list)
    readable: list[str] = field(default_factory=list)
    grouped: dict[str, FileGroups] = field(default_factory=dict)
    """Per table read from local files under projections alone (no union by name)."""
    footers: Footers | None = None
    """What DuckDB said of the empty tables and data files, asked for them all at once."""


@dataclass
class Footers:
    """What the set-up asks DuckDB of the empty tables (their declared columns) and of the data
    files (their Parquet schemas, and the column types DuckDB reads from one file of each
    schema), asked for every table at once (:meth:`read`: two queries) rather than per table:
    each query costs ~0.5-1 ms of CPU however little it reads. Empty for what was not asked:
    the per-table queries then answer, as they always did."""

    declared: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    fingerprints: dict[str, str] = field(default_factory=dict)
    stored: dict[str, dict[str, str]] = field(default_factory=dict)

    @classmethod
    def read(cls, con: duckdb.DuckDBPyConnection,
             files: Mapping[str, Sequence[str]]) -> Footers:
        """The footers of ``files`` (per existing empty table: the data files read in its
        shape), in two queries whatever the number of tables: the Parquet schemas of the
        files of tables of several files (a table of one file is one group: none is asked
        for it), then the declared columns and the types of the first file of each group.
        """
        footers = cls()
        files = {empty: list(names) for empty, names in files.items() if names}
        if not files:
            return footers
        several = [f for names in files.values() if len(set(names)) > 1 for f in names]
        if several:
            footers.fingerprints = _fingerprints(con, several)
        firsts = list(dict.fromkeys(
            group[0] for names in files.values() for group in _groups(con, names, footers)))
        # pragma_table_info of each empty table rather than duckdb_columns() filtered to
        # them: the same names and type names, ~1 against ~5 ms of CPU (duckdb_columns()
        # lists every column of the database first)
        rows = con.execute(" UNION ALL ".join(
            [f"SELECT {_quote(empty)} AS source, cid AS position, name, type "
             f"FROM pragma_table_info({_quote(empty)})" for empty in files]
            + [f"SELECT {_quote(str(i))} AS source, 0 AS position, column_name, column_type "
               f"FROM (DESCRIBE SELECT * FROM {_read_parquet([first])})"
               for i, first in enumerate(firsts)]) + " ORDER BY source, position").fetchall()
        for source, _position, name, type_ in rows:
            if source in files:
                footers.declared.setdefault(str(source), []).append((str(name), str(type_)))
            else:
                footers.stored.setdefault(firsts[int(source)], {})[str(name)] = str(type_)
        return footers


def _fingerprints(con: duckdb.DuckDBPyConnection, files: Sequence[str]) -> dict[str, str]:
    """The Parquet schema of each of ``files``, as text (one footer read per file, then
    cached by DuckDB)."""
    # column_id: the schema element's position in its file (a parallel scan of several
    # files has no row order of its own).
    return {str(name): str(fingerprint) for name, fingerprint in con.sql(
        "SELECT file_name, string_agg(concat_ws(':', name, type, logical_type, "
        "num_children), ',' ORDER BY column_id) "
        f"FROM parquet_schema({_file_list(files)}) GROUP BY file_name"
    ).fetchall()}


def _groups(con: duckdb.DuckDBPyConnection, files: Sequence[str],
            footers: Footers | None = None) -> list[list[str]]:
    """``files`` grouped by Parquet schema (one footer read per file, then cached; none when
    ``footers`` holds them all)."""
    unique = list(dict.fromkeys(files))
    if len(unique) == 1:
        return [unique]
    known = footers.fingerprints if footers is not None else {}
    fingerprints = known if all(f in known for f in unique) else _fingerprints(con, unique)
    by_schema: dict[str, list[str]] = {}
    for name in unique:
        by_schema.setdefault(fingerprints[name], []).append(name)
    return list(by_schema.values())  # in the order of each group's first file


def _declared(con: duckdb.DuckDBPyConnection, empty: str,
              footers: Footers | None = None) -> list[tuple[str, str]]:
    """The (name, DuckDB type) of every column of the table ``empty``, in order."""
    if footers is not None and empty in footers.declared:
        return footers.declared[empty]
    return [(str(n), str(t)) for n, t in con.execute(
        f"SELECT name, type FROM pragma_table_info({_quote(empty)}) ORDER BY cid").fetchall()]


def _projection(con: duckdb.DuckDBPyConnection, declared: Sequence[tuple[str, str]],
                files: Sequence[str], *, filename: bool,
                footers: Footers | None = None) -> str | None:
    """The select list of the declared columns over ``files`` (one Parquet schema), NULL
    for the columns they lack: the rows ``UNION ALL BY NAME`` with the empty table gives, in
    the same column order and types. None when the files hold a column of another type or
    one not declared (the union then decides the types, as before)."""
    stored = footers.stored.get(files[0]) if footers is not None else None
    if stored is None:
        stored = dict(con.execute(
            f"SELECT column_name, column_type FROM (DESCRIBE SELECT * FROM "
            f"{_read_parquet(files[:1])})").fetchall())
    types = dict(declared)
    if any(name not in types or types[name] != type_ for name, type_ in stored.items()):
        return None
    columns = [f'"{name}"' if name in stored else f'NULL::{type_} AS "{name}"'
               for name, type_ in declared]
    if filename:
        columns.append("filename")
    return ", ".join(columns)


@dataclass(frozen=True)
class FileGroups:
    """The data files of a table version by Parquet schema, each group with the select list
    that gives it the declared columns: what :func:`scan_table` reads, and any subset of it
    (:meth:`sql`)."""

    groups: tuple[tuple[tuple[str, ...], str], ...]
    declared: tuple[tuple[str, str], ...]
    filename: bool = False

    def sql(self, files: Sequence[str] | None = None) -> str:
        """The relation over the groups' files, or over those of them in ``files`` (no
        row when none is)."""
        keep = None if files is None else set(files)
        parts = [
            f"SELECT {columns} FROM "
            f"{_read_parquet([f for f in group if keep is None or f in keep], filename=self.filename)}"
            for group, columns in self.groups
            if keep is None or keep.intersection(group)
        ]
        if not parts:
            parts = ["SELECT " + ", ".join(f'NULL::{type_} AS "{name}"'
                                           for name, type_ in self.declared) + " LIMIT 0"]
        return " UNION ALL ".join(parts)


def _file_groups(con: duckdb.DuckDBPyConnection, empty: str, files: Sequence[str],
                 *, filename: bool = False, footers: Footers | None = None) -> FileGroups | None:
    """``files`` as :class:`FileGroups` of the columns of the existing empty table
    ``empty``; None when a group holds a column of another type, or an undeclared one."""
    declared = _declared(con, empty, footers)
    groups = _groups(con, files, footers)
    lists = [_projection(con, declared, g, filename=filename, footers=footers) for g in groups]
    if any(columns is None for columns in lists):
        return None
    return FileGroups(tuple((tuple(g), str(c)) for g, c in zip(groups, lists, strict=True)),
                      tuple(declared), filename)


def _union(con: duckdb.DuckDBPyConnection, empty: str, files: Sequence[str],
           *, filename: bool = False, footers: Footers | None = None) -> str:
    """A relation over ``files`` with every column of the existing empty table ``empty``.

    Each group of files of one schema is read by one ``read_parquet`` under a projection
    that adds the columns it lacks as NULL. With no ``UNION`` above a single scan, DuckDB
    answers ``count(*)`` from the files' row counts and reads no column (a union makes it
    read one column of every row group: 64 against 5 ms at 10 million rows in 200 files).
    Files holding a column of another type than declared, or one not declared, keep
    ``UNION ALL BY NAME`` with the empty table, whose result types are DuckDB's to choose.
    """
    if not files:
        return f"SELECT * FROM {empty}"
    grouped = _file_groups(con, empty, files, filename=filename, footers=footers)
    if grouped is not None:
        return grouped.sql()
    return " UNION ALL BY NAME ".join(
        [f"SELECT * FROM {empty}",
         *(f"SELECT * FROM {_read_parquet(g, filename=filename)}"
           for g in _groups(con, files, footers))])


def scan_table(
    con: duckdb.DuckDBPyConnection,
    scan: Scan,
    tables: DeltaTables,
    table: Table,
    read: TableVersion | None,
) -> str:
    """Register what reads ``table`` at ``read`` (None: the table does not exist) and
    return the query (a ``SELECT``) of its rows, which the caller's view of the table reads
    (in the view itself: a view per table over a view of its files cost a bind each).

    ``con`` is the (not yet locked) connection: footers are read through it (or taken from
    ``scan.footers``), and it holds ``<table>_empty`` already (:func:`empty_table`).
    """
    empty = f"{table.name}_empty"
    if read is None:
        return f"SELECT * FROM {empty}"
    if not tables.location.is_local:
        arrow = f"{table.name}_delta_arrow"
        scan.sources[arrow] = tables.dataset(table.name, read.version)
        return f"SELECT * FROM {empty} UNION ALL BY NAME SELECT * FROM {arrow}"
    files = read.files
    scan.readable += files
    grouped = _file_groups(con, empty, files, footers=scan.footers) if files else None
    if grouped is not None:
        scan.grouped[table.name] = grouped
        return grouped.sql()
    return _union(con, empty, files, footers=scan.footers)


def scan_summaries(
    con: duckdb.DuckDBPyConnection, scan: Scan, tables: DeltaTables, read: TableVersion
) -> None:
    """Register ``series_parts`` and ``study_parts`` for the ``instances`` version ``read``:
    the summaries of its data files, and for files without one, an aggregation of their rows.
    """
    found = summaries_of(tables, read.files)
    missing_rows = None
    if found.missing:
        if tables.location.is_local:
            scan.readable += found.missing
            body = _union(con, f"{INSTANCES.name}_empty", found.missing, filename=True,
                          footers=scan.footers)
            missing_rows = "instances_unsummarised"
            scan.statements.append(f"CREATE OR REPLACE VIEW {missing_rows} AS {body}")
            name_of = "parse_filename(filename)"
        else:
            missing_rows = "instances_unsummarised"
            scan.sources[missing_rows] = _remote_dataset(tables, found.missing)
            name_of = "NULL::VARCHAR"
    for kind, paths in ((SERIES_PARTS, found.series), (STUDY_PARTS, found.studies)):
        parts: list[str] = []
        if paths:
            if tables.location.is_local:
                scan.readable += paths
                parts.append(f"SELECT * FROM {_read_parquet(paths)}")
            else:
                scan.sources[f"{kind}_stored"] = _remote_table(tables, paths)
                parts.append(f"SELECT * FROM {kind}_stored")
        if missing_rows is not None:
            series = parts_sql(SERIES_PARTS, missing_rows, name_of)
            parts.append(series if kind == SERIES_PARTS else
                         studies_from_series_sql(f"({series})"))
        if not parts:
            series = parts_sql(SERIES_PARTS, f"(FROM {INSTANCES.name}_empty)", "NULL::VARCHAR")
            parts.append(series if kind == SERIES_PARTS else studies_from_series_sql(f"({series})"))
        scan.statements.append(
            f"CREATE OR REPLACE VIEW {kind} AS {' UNION ALL BY NAME '.join(parts)}"
        )


def _remote_table(tables: DeltaTables, paths: Sequence[str]) -> object:
    import pyarrow as pa
    import pyarrow.parquet as pq

    fs = tables.location.fs
    return pa.concat_tables([pq.read_table(p, filesystem=fs) for p in paths])


def _remote_dataset(tables: DeltaTables, paths: Sequence[str]) -> object:
    import pyarrow.dataset as pads

    from lake.catalog._tables import view_schema

    return pads.dataset(list(paths), schema=view_schema(INSTANCES.schema),
                        format="parquet", filesystem=tables.location.fs)
