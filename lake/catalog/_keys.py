"""Which data files of a table hold given keys: DuckDB's Parquet reader, pruned by Bloom filters.

Judging a batch of candidate keys (``DeltaTables.insert_new``, ``DeltaTables.lookup``) must
not read the table: UIDs are random, so no file or row group can be skipped by its min/max
statistics, and streaming the key column of every data file costs the size of the table at
every commit. DuckDB's Parquet reader checks a constant ``IN`` list against each row group's
Bloom filter (``lake/catalog/_layout.py`` writes one on every UID column) and reads the key
column only of the row groups that may hold one of the keys. At 10 million instances (800
row groups) a batch of 1,000 candidates reads ~540 of them: the filters are sized for 16,384
rows, so with a thousand absent keys most large row groups still let one through, and one
query with every key costs less CPU than chunks of 100 or 250 (each chunk probes every
filter and footer again). Measured in ``docs/performance.md`` ("Judging a commit's keys").

DuckDB reads local data files only (a remote lake would need its ``httpfs`` extension, which
is downloaded at run time): :func:`readable_by_duckdb` says when this applies; the caller
streams the key column with Arrow otherwise. DuckDB reads ``string`` and ``string_view``
Parquet columns alike (both are UTF-8 byte arrays in the file), so the ``string_view`` files
delta-rs writes when it rewrites need no special care here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["KEYS_PER_QUERY", "files_holding", "readable_by_duckdb"]

KEYS_PER_QUERY = 10_000
"""Keys in one ``IN`` list (bounds the statement's size; a commit judges ~1,000)."""

_GLOB = frozenset("*?[]{}")
"""Characters DuckDB's ``read_parquet`` would read as a glob pattern in a path."""


def readable_by_duckdb(paths: Sequence[str]) -> bool:
    """Whether DuckDB's ``read_parquet`` reads ``paths`` as they are: local absolute paths
    without glob characters (DuckDB expands ``*``, ``?``, ``[...]`` and ``{...}``)."""
    return all(p.startswith("/") and not _GLOB.intersection(p) for p in paths)


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def files_holding(paths: Sequence[str], key: str, keys: pa.Array) -> pa.Table:
    """The rows of the data files ``paths`` whose column ``key`` is in ``keys``.

    Parameters
    ----------
    paths : sequence of str
        Local Parquet data files (see :func:`readable_by_duckdb`), each holding ``key``.
    key : str
        The key column (a string).
    keys : pyarrow.Array
        The keys looked for (strings, no nulls).

    Returns
    -------
    pyarrow.Table
        Columns ``key`` (string), ``file`` (the path, as in ``paths``) and ``row`` (the
        row's number in its file), ordered as the files are in ``paths`` and by row: the
        order in which a scan of the files reads them.

    Raises
    ------
    duckdb.IOException
        If a file cannot be read (removed meanwhile by a delete, ``lake forget`` or
        ``lake vacuum``).
    """
    import duckdb
    import pyarrow as pa
    import pyarrow.compute as pc

    schema = pa.schema([(key, pa.string()), ("file", pa.string()), ("row", pa.int64())])
    wanted = sorted(set(keys.to_pylist()))
    if not paths or not wanted:
        return schema.empty_table()
    files = "[" + ", ".join(_literal(p) for p in paths) + "]"
    column = '"' + key.replace('"', '""') + '"'
    found: list[pa.Table] = []
    con = duckdb.connect()
    try:
        con.execute("SET enable_progress_bar = false")
        for start in range(0, len(wanted), KEYS_PER_QUERY):
            listed = ", ".join(_literal(k) for k in wanted[start:start + KEYS_PER_QUERY])
            found.append(con.sql(
                f"SELECT {column} AS {column}, filename AS file, file_row_number AS row, "
                f"list_position({files}, filename) AS rank FROM read_parquet({files}, "
                "filename = true, file_row_number = true, hive_partitioning = false) "
                f"WHERE {column} IN ({listed})"
            ).to_arrow_table())
    finally:
        con.close()
    table = pa.concat_tables(found)
    order = pc.sort_indices(table, sort_keys=[("rank", "ascending"), ("row", "ascending")])
    return table.take(order).select([key, "file", "row"]).cast(schema)
