"""Which rows of a table's data files hold given keys: DuckDB's Parquet reader over the files.

Judging a batch of candidate keys (``DeltaTables.insert_new``, ``DeltaTables.lookup``) used to
stream the key column of every data file through Arrow (UIDs are random: no file or row group
is skipped by its min/max statistics). DuckDB reads that column with less CPU and memory, and
for a few keys it reads only the row groups whose Bloom filter (``lake/catalog/_layout.py``
writes one on every UID column) or statistics may hold one: a constant ``IN`` list is checked
against each row group. Checking a thousand keys against each row group costs more than
reading it, though: ingest's files of 1,000 rows (3,000 of them) took 2.1 s of CPU for a
1,000-key ``IN`` list, 0.56 s for a semi-join that reads every row group, 1.1 s streamed by
Arrow; and at 10 million rows in 800 row groups a 1,000-key list still let ~540 through (one
false positive among a thousand absent keys is likely per 12,500-row group at 32 KB). So up
to :data:`PROBED_KEYS` keys are a constant list and more are a semi-join. Measured in
``docs/performance.md`` ("Judging a commit's keys").

On a local lake the SOPInstanceUIDs of ``instances`` are looked up in an index first
(``lake/catalog/_key_index.py``); this module reads the files it does not cover yet.

DuckDB reads local data files only (a remote lake would need its ``httpfs`` extension, which
is downloaded at run time): :func:`readable_by_duckdb` says when this applies; the caller
streams the key column with Arrow otherwise. DuckDB reads ``string`` and ``string_view``
Parquet columns alike (both are UTF-8 byte arrays in the file), so the ``string_view`` files
delta-rs writes when it rewrites need no special care here.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from lake.catalog._arrow_values import empty_table
from lake.catalog._duckdb import connect
from lake.catalog._scan import _file_list, _quote

if TYPE_CHECKING:
    import duckdb
    import pyarrow as pa

__all__ = ["PROBED_KEYS", "files_holding", "in_key_range", "readable_by_duckdb"]

PROBED_KEYS = 256
"""Up to this many keys, a constant ``IN`` list that DuckDB checks against every row group's
Bloom filter and statistics; above it, a semi-join that reads every row group's key column
once, the keys bound as one list parameter, so no statement grows with them (checking each of
a thousand keys against each row group costs more than reading it: see the module's notes)."""

_GLOB = frozenset("*?[]{}")
"""Characters DuckDB's ``read_parquet`` would read as a glob pattern in a path."""


def readable_by_duckdb(paths: Sequence[str]) -> bool:
    """Whether DuckDB's ``read_parquet`` reads ``paths`` as they are: local absolute paths
    without glob characters (DuckDB expands ``*``, ``?``, ``[...]`` and ``{...}``)."""
    return all(p.startswith("/") and not _GLOB.intersection(p) for p in paths)


def in_key_range(
    paths: Sequence[str], bounds: Mapping[str, tuple[str | None, str | None]], keys: Sequence[str]
) -> tuple[str, ...]:
    """The data files among ``paths`` whose key range, as the Delta log records it, may hold
    one of ``keys``; without opening any file.

    delta-rs records each data file's minimum and maximum of its first 32 columns in the log
    (``DeltaTable.get_add_actions``). A file of ``batches`` holds one batch id (its minimum is
    its maximum), so a commit's batch row is judged without opening the table's files (one
    per commit until ``lake compact``), where DuckDB opened every one (0.2 ms of CPU each).
    A file of ``instances`` as ingest writes it spans nearly every UID (random UIDs): it is
    kept. Conservative: a file without recorded bounds is kept, and a maximum that a writer
    cut to a prefix still bounds the key's prefix of that length.

    Parameters
    ----------
    paths : sequence of str
        The data files.
    bounds : mapping of str to (str or None, str or None)
        The recorded (minimum, maximum) of the key column, by path; a path not in it is kept.
    keys : sequence of str
        The keys looked for, sorted.

    Returns
    -------
    tuple of str
        The files that may hold one of ``keys``, in the order of ``paths``.
    """
    kept = []
    for path in paths:
        low, high = bounds.get(path, (None, None))
        if low is None or high is None:
            kept.append(path)
            continue
        at = bisect.bisect_left(keys, low)  # the smallest key >= low; its prefix is smallest
        if at < len(keys) and keys[at][: len(high)] <= high:
            kept.append(path)
    return tuple(kept)


def files_holding(
    paths: Sequence[str], key: str, keys: pa.Array, *, con: duckdb.DuckDBPyConnection | None = None
) -> pa.Table:
    """The rows of the data files ``paths`` whose column ``key`` is in ``keys``.

    Parameters
    ----------
    paths : sequence of str
        Local Parquet data files (see :func:`readable_by_duckdb`), each holding ``key``.
    key : str
        The key column (a string).
    keys : pyarrow.Array
        The keys looked for (strings, no nulls).
    con : duckdb.DuckDBPyConnection, optional
        The connection to query through (a commit's: ``DeltaTables.cursor``); by default a
        database made for this call.

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
    import pyarrow as pa
    import pyarrow.compute as pc

    schema = pa.schema([(key, pa.string()), ("file", pa.string()), ("row", pa.int64())])
    wanted = sorted(set(keys.to_pylist()))
    if not paths or not wanted:
        return empty_table(schema)
    files = _file_list(paths)
    column = '"' + key.replace('"', '""') + '"'
    if len(wanted) <= PROBED_KEYS:
        among, parameters = "(" + ", ".join(_quote(k) for k in wanted) + ")", None
    else:
        among, parameters = "(SELECT unnest(?))", [wanted]
    own = con is None
    con = connect() if con is None else con
    try:
        table = con.sql(
            f"SELECT {column} AS {column}, filename AS file, file_row_number AS row, "
            f"list_position({files}, filename) AS rank FROM read_parquet({files}, "
            "filename = true, file_row_number = true, hive_partitioning = false) "
            f"WHERE {column} IN {among}",
            params=parameters,
        ).to_arrow_table()
    finally:
        if own:
            con.close()
    order = pc.sort_indices(table, sort_keys=[("rank", "ascending"), ("row", "ascending")])
    return table.take(order).select([key, "file", "row"]).cast(schema)
