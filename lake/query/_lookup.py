"""One instance by SOPInstanceUID, the way a PACS fetches it: find its place, read its row.

``SELECT * FROM instances WHERE SOPInstanceUID = ?`` costs ~70-86 ms of CPU at ten million
instances (docs/performance.md, "One SOPInstanceUID"): DuckDB's Parquet reader prepares
every selected column (101) of every row group (613), even those the Bloom filters rule
out. Selecting only the UID costs a few ms. :class:`InstanceLookup` therefore works in two
steps:

1. DuckDB over the data files of one catalog version that may hold the UID, selecting only
   the file name and the row number ``WHERE SOPInstanceUID = ?`` (row groups pruned by
   statistics and Bloom filters; one narrow column read). Which files may hold it, the
   lookup answers itself from the files' Bloom filters, read once into memory on the
   second lookup (:class:`~lake.catalog._lazy_bloom.LazyBlooms`): DuckDB pays ~0.3 ms of CPU
   for each file it opens, even to skip all of its row groups, 55-90 ms at 200 files;
2. pyarrow reads the narrow columns of only the row group holding that row
   (``ParquetFile.read_row_group``) and slices the row out; DuckDB reads the two wide
   columns (``header_json``, ``header_dicom``, ~100 MB a row group decompressed) of that
   file by row number, decompressing only the pages that hold the row.

The rows are those of that catalog version's data files, exactly what the ``instances``
view of the same version reads: an instance erased by ``lake forget`` is gone from every
version after the erasure, and the versions before it can no longer be opened (their data
files were removed; opening one raises :class:`~lake.CatalogError` naming the erasure).
"""

from __future__ import annotations

import bisect
import datetime as dt
import threading
from collections import OrderedDict
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from lake._errors import CatalogError, QueryError
from lake.catalog import INSTANCES, DeltaTables, arrow_dataset, conform
from lake.catalog._lazy_bloom import LazyBlooms
from lake.catalog._summary import data_files
from lake.query._index import Snapshot, _file_list

__all__ = ["InstanceLookup", "instance_row"]

_FOOTERS_KEPT = 64
"""Parquet footers (with their row-group offsets) a lookup keeps open."""

_WIDE = ("header_json", "header_dicom")
"""The wide columns (~4 KB and ~2 KB a row), read by DuckDB for the one row."""

_TIME_COLUMNS = frozenset(c.name for c in INSTANCES.columns if c.sql_cast == "TIME")
"""Columns stored as ISO text (Delta has no TIME type) and exposed as TIME by the views."""


class InstanceLookup:
    """Rows of ``instances`` fetched one at a time by SOPInstanceUID, from one catalog version.

    Keep one open to fetch many instances: it holds a DuckDB connection (with its cache of
    Parquet footers) and the row-group offsets of the files it has read from. Thread-safe.

    Parameters
    ----------
    tables : DeltaTables
        The lake's tables (``Lake.tables``).
    version : int, optional
        The ``instances`` version to read (default: the newest).

    Raises
    ------
    CatalogError
        If the version cannot be read (it does not exist, or ``lake forget`` erased it).

    Examples
    --------
    >>> with InstanceLookup(lk.tables) as lookup:  # doctest: +SKIP
    ...     row = lookup.row("2.25.1234")
    """

    def __init__(self, tables: DeltaTables, version: int | None = None) -> None:
        delta = tables.open(INSTANCES.name, version)
        self.version = int(delta.version())
        self._tables = tables
        self._local = tables.location.is_local
        self._files = data_files(tables, delta)
        self._dataset: Any = None if self._local else arrow_dataset(delta)
        self._lock = threading.Lock()
        self._footers: OrderedDict[str, tuple[pq.FileMetaData, list[int], list[str]]] = OrderedDict()
        self._blooms = LazyBlooms(self._files)
        self._con = duckdb.connect()
        self._con.execute("SET threads TO 1")
        self._con.execute("SET parquet_metadata_cache = true")

    def __enter__(self) -> InstanceLookup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the DuckDB connection and the open footers."""
        with self._lock:
            self._con.close()
            self._footers.clear()

    def table(self, sop_instance_uid: str) -> pa.Table:
        """The stored row of instance ``sop_instance_uid``: a table of one row (none if
        this version holds no such instance), every ``instances`` column in the catalog's
        order and stored type (TIME columns as their stored ISO text).

        Raises
        ------
        CatalogError
            If the data file holding it can no longer be read (removed by
            ``lake.steward.vacuum()`` after this version was superseded).
        """
        if not self._files:
            return INSTANCES.schema.empty_table()
        try:
            if self._local:
                found = self._local_row(sop_instance_uid)
            else:
                found = self._dataset.to_table(
                    filter=pc.field("SOPInstanceUID") == sop_instance_uid).slice(0, 1)
        except (OSError, duckdb.IOException):
            raise CatalogError(
                f"an instance of catalog version {self.version} is no longer readable: its data "
                "file was removed (lake.steward.vacuum()); look it up again in a newer version"
            ) from None
        if found is None:
            return INSTANCES.schema.empty_table()
        return conform(INSTANCES, INSTANCES.schema.names, found)

    def row(self, sop_instance_uid: str) -> dict[str, Any] | None:
        """Instance ``sop_instance_uid`` as ``SELECT * FROM instances WHERE SOPInstanceUID
        = ?`` of the same version gives it (column name -> Python value, TIME columns as
        :class:`datetime.time`), or None if this version holds no such instance.

        Raises
        ------
        CatalogError
            As :meth:`table`.
        """
        rows: list[dict[str, Any]] = self.table(sop_instance_uid).to_pylist()
        if not rows:
            return None
        row = rows[0]
        for name in _TIME_COLUMNS:
            value = row.get(name)
            if value is not None:
                row[name] = dt.time.fromisoformat(value)
        return row

    def _candidates(self, uid: str) -> list[str]:
        """The data files that may hold ``uid``: all of them for the first lookup, then those
        the Bloom filters of SOPInstanceUID let through (read on the second lookup: ~0.26 s
        of CPU for 200 files at 10 million instances, paid back within a few lookups, while
        a lookup opened for one call does not pay it): the SQL catalog's
        :class:`~lake.catalog._lazy_bloom.LazyBlooms`."""
        candidates = self._blooms.candidates("SOPInstanceUID", [uid])
        return self._files if candidates is None else candidates

    def _local_row(self, uid: str) -> pa.Table | None:
        """Step 1 (DuckDB: the file and row, one narrow column read), then step 2 (pyarrow:
        the narrow columns of that row group only; DuckDB: the wide ones of that row)."""
        with self._lock:
            files = self._candidates(uid)
            if not files:
                return None
            places = self._con.execute(
                f"SELECT filename, file_row_number FROM read_parquet({_file_list(files)}, "
                "filename = true, "
                "file_row_number = true, hive_partitioning = false) WHERE SOPInstanceUID = ?",
                [uid]).fetchall()
            if not places:
                return None
            path, row = min((str(p), int(r)) for p, r in places)
            footer = self._footers.get(path)
            if footer is None:
                meta = pq.read_metadata(path)
                starts, offset = [], 0
                for group in range(meta.num_row_groups):
                    starts.append(offset)
                    offset += meta.row_group(group).num_rows
                footer = (meta, starts, meta.schema.to_arrow_schema().names)
                self._footers[path] = footer
                while len(self._footers) > _FOOTERS_KEPT:
                    self._footers.popitem(last=False)
            self._footers.move_to_end(path)
            meta, starts, stored = footer
            wide = [n for n in _WIDE if n in stored]
            values: tuple[Any, ...] = ()
            if wide:
                # DuckDB decompresses only the pages holding the row.
                values = self._con.execute(
                    f"SELECT {', '.join(wide)} FROM read_parquet({_file_list([path])}, "
                    "file_row_number = true, hive_partitioning = false) "
                    "WHERE file_row_number = ?", [row]
                ).fetchone() or ()
        group = bisect.bisect_right(starts, row) - 1
        # The narrow columns from the row group holding the row, and only from it (16,384
        # rows of ~100 columns: ~15 ms of CPU; pyarrow would decompress the wide columns of
        # the whole group too, ~100 MB, 2-3x that).
        parquet = pq.ParquetFile(path, metadata=meta)
        narrow = [n for n in stored if n not in _WIDE]
        found = parquet.read_row_group(group, columns=narrow, use_threads=False)
        found = found.slice(row - starts[group], 1)
        if len(values) != len(wide):
            raise CatalogError(
                f"catalog version {self.version}: a data file holds fewer rows than its footer "
                "says; run Lake.verify()", functions=("Lake.verify",))
        for name, value in zip(wide, values, strict=True):
            found = found.append_column(
                name, pa.array([value], INSTANCES.schema.field(name).type))
        return found


def instance_row(
    source: DeltaTables | Snapshot, sop_instance_uid: str, *, version: int | None = None
) -> dict[str, Any] | None:
    """Instance ``sop_instance_uid`` as ``SELECT * FROM instances WHERE SOPInstanceUID = ?``
    gives it, without paying for every column of every row group (see
    :class:`InstanceLookup`; keep one of those to fetch many).

    Parameters
    ----------
    source : DeltaTables or Snapshot
        The lake's tables (``Lake.tables``), or a query snapshot (its version is read).
    sop_instance_uid : str
        The instance.
    version : int, optional
        The ``instances`` version to read (default: the newest, or the snapshot's).

    Returns
    -------
    dict or None
        Column name -> value, or None if that version holds no such instance.

    Raises
    ------
    CatalogError
        If the version cannot be read (it does not exist, or ``lake forget`` erased it).
    QueryError
        If ``source`` is a cohort-scoped snapshot (a grant's members only).
    """
    if isinstance(source, Snapshot):
        if source.scoped:
            # Its rows are a grant's cohorts, each at its own version: the whole catalog
            # version must not answer for it.
            raise QueryError(
                "instance_row() reads a whole catalog version; a cohort-scoped snapshot "
                "answers only through its own queries (Snapshot.locate)")
        tables, version = source._tables, source.version if version is None else version
    else:
        tables = source
    with InstanceLookup(tables, version) as lookup:
        return lookup.row(sop_instance_uid)
