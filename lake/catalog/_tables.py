"""Delta tables of the catalog: creation, exactly-once appends, deletes, versions."""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import json
import os
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from deltalake import CommitProperties, DeltaTable, write_deltalake
from deltalake import Schema as DeltaSchema
from deltalake.exceptions import CommitFailedError, TableNotFoundError

from lake._errors import CatalogError
from lake.catalog._arrow_values import arrow_array, empty_table, python_table
from lake.catalog._committer import Committer
from lake.catalog._kept import KeptSnapshots
from lake.catalog._kept_table import KeyRanges
from lake.catalog._key_index import located, maintain
from lake.catalog._keys import files_holding, in_key_range, readable_by_duckdb
from lake.catalog._layout import writer_properties
from lake.catalog._retry import Backoff
from lake.catalog._schema import ERASURES, INSTANCES, TABLES, Table
from lake.catalog._summary import fs_path, write_summaries
from lake.store import Location

if TYPE_CHECKING:  # pyarrow.dataset imports pandas (0.3 s): loaded where a dataset is made
    from contextlib import AbstractContextManager

    import duckdb
    import pyarrow as pa  # pyarrow and numpy: where rows are read or written, not by lake sql
    import pyarrow.dataset as ds
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

__all__ = [
    "DataFiles",
    "Decision",
    "DeltaTables",
    "Inserted",
    "Judged",
    "Plan",
    "arrow_dataset",
    "data_files",
    "in_set",
    "python_rows",
    "string_set",
    "view_schema",
]

# Cohorts promise byte-identical exports years later: every catalog version must stay
# readable. delta-rs would otherwise drop log entries older than 30 days at checkpoints.
RETENTION: dict[str, str] = {
    "delta.enableExpiredLogCleanup": "false",
    "delta.logRetentionDuration": "interval 36500 days",
    "delta.deletedFileRetentionDuration": "interval 36500 days",
}


def arrow_dataset(delta: DeltaTable) -> ds.Dataset:
    """``delta.to_pyarrow_dataset()``, reading a local table with Arrow's own filesystem.

    deltalake's dataset reads through a filesystem written in Python: Arrow's I/O threads
    call back into Python, and when one is still at it as the interpreter exits the process
    aborts ("terminate called without an active exception"; one short command in three
    here). A local table is read with pyarrow's native LocalFileSystem, which never calls
    back; a remote one keeps deltalake's filesystem.
    """
    import pyarrow.dataset as ds
    import pyarrow.fs as pafs

    dataset = delta.to_pyarrow_dataset()
    uri = delta.table_uri
    if not uri.startswith("file://"):
        return dataset
    root = unquote(urlsplit(uri).path).rstrip("/")
    local = pafs.LocalFileSystem()
    fragments = [
        dataset.format.make_fragment(
            f"{root}/{fragment.path}",
            filesystem=local,
            partition_expression=fragment.partition_expression,
        )
        for fragment in dataset.get_fragments()
    ]
    return ds.FileSystemDataset(fragments, dataset.schema, dataset.format, local)


FOOTERS = (8, 512 * 1024)
"""At most this many footers of at most this many bytes each are kept by one
:class:`DataFiles` (a small lake's: a large catalog's footers would hold megabytes)."""


@dataclass(frozen=True)
class DataFiles:
    """The Parquet data files of one Delta table version, read file by file.

    The same rows, order and column types as ``arrow_dataset(delta)`` fragment by fragment,
    read with ``pyarrow.parquet`` alone: ``pyarrow.dataset`` imports pandas (about 0.2 s of
    CPU), which short commands such as a small export do not need.

    Attributes
    ----------
    schema : pyarrow.Schema
        The table's schema at this version (the Delta schema as Arrow).
    paths : tuple of str
        The data files, in the order of the Delta snapshot.
    filesystem : pyarrow.fs.FileSystem
        Where ``paths`` are read from.
    """

    schema: pa.Schema
    paths: tuple[str, ...]
    filesystem: pafs.FileSystem
    footers: dict[str, pq.FileMetaData] = dataclasses.field(
        default_factory=dict, compare=False, repr=False
    )
    """The footers of the files read so far, while they are few and small (:data:`FOOTERS`):
    a data file never changes, and a small export reads its one file four times."""
    nulls: dict[str, frozenset[str]] = dataclasses.field(
        default_factory=dict, compare=False, repr=False
    )
    """Per file whose footer is kept, its columns null in every row (:func:`_null_columns`)."""

    def read(self, path: str, columns: Sequence[str]) -> pa.Table:
        """The ``columns`` of data file ``path``, typed as ``schema`` (absent columns null).

        A column the file holds but whose statistics say it is null in every row
        (:func:`_null_columns`) is not decoded: it reads as the nulls it holds (a small
        lake's rows leave most acquisition parameters null, and pyarrow spends ~30 us of
        CPU on each column it decodes, null or not).
        """
        import pyarrow as pa

        table, decoded, rows = self._decoded(path, columns)
        fields = [self.schema.field(c) for c in columns]
        arrays = [
            table.column(f.name).cast(f.type) if f.name in decoded else pa.nulls(rows, f.type)
            for f in fields
        ]
        return pa.Table.from_arrays(arrays, schema=pa.schema(fields))

    def values(self, path: str, columns: Sequence[str]) -> dict[str, list[Any]]:
        """The Python values of the ``columns`` of data file ``path``, column by column: each
        list is ``read(path, columns).column(c).to_pylist()``, a time-zone-aware timestamp
        as :func:`python_rows` gives it.

        Without ``pyarrow.compute`` (~0.03 s of CPU to import, a twentieth of a small
        ``lake export nifti``, issue 14.2; pyarrow imports it at the first cast, filter or
        sort): a column stored with the schema's type is not cast (one of another type
        still is), and a zoned timestamp is read as a view of its values without the zone
        (what the cast of :func:`python_rows` gives: the same 64-bit instants), then zoned.
        """
        table, decoded, rows = self._decoded(path, columns)
        values: dict[str, list[Any]] = {}
        for name in columns:
            kind = self.schema.field(name).type
            if name not in decoded:
                values[name] = [None] * rows
                continue
            column = table.column(name)
            if column.type != kind:
                column = column.cast(kind)
            values[name] = _python_values(column)
        return values

    def _decoded(self, path: str, columns: Sequence[str]) -> tuple[pa.Table, set[str], int]:
        """The columns of data file ``path`` that it holds and are not null in every row
        (:func:`_null_columns`), as stored, with the names decoded and the file's row count."""
        import pyarrow.parquet as pq

        with self.filesystem.open_input_file(path) as source:
            parquet = pq.ParquetFile(source, metadata=self.footers.get(path))
            footer = parquet.metadata
            self._keep(path, footer)
            stored = set(parquet.schema_arrow.names)
            null = self.nulls.get(path)
            if null is None:  # (once per kept footer: a large footer is not read for it)
                null = frozenset()
                if path in self.footers:
                    null = self.nulls[path] = _null_columns(footer)
            decoded = [c for c in columns if c in stored and c not in null]
            return parquet.read(columns=decoded), set(decoded), footer.num_rows

    def footer(self, path: str) -> pq.FileMetaData:
        """The Parquet footer of data file ``path``."""
        import pyarrow.parquet as pq

        found = self.footers.get(path)
        if found is None:
            with self.filesystem.open_input_file(path) as source:
                found = pq.read_metadata(source)
            self._keep(path, found)
        return found

    def _keep(self, path: str, footer: pq.FileMetaData) -> None:
        if (path not in self.footers and len(self.footers) < FOOTERS[0]
                and footer.serialized_size <= FOOTERS[1]):
            self.footers[path] = footer


def _python_values(column: pa.ChunkedArray) -> list[Any]:
    """``column.to_pylist()``, a top-level time-zone-aware timestamp as :func:`python_rows`
    converts it (to_pylist would import pandas for it), without ``pyarrow.compute``."""
    import pyarrow as pa

    kind = column.type
    if not (pa.types.is_timestamp(kind) and kind.tz is not None):
        values: list[Any] = column.to_pylist()
        return values
    zone = pa.lib.string_to_tzinfo(kind.tz)
    naive = pa.timestamp(kind.unit)
    instants = pa.chunked_array([chunk.view(naive) for chunk in column.chunks], naive)
    return [None if v is None else v.replace(tzinfo=dt.UTC).astimezone(zone)
            for v in instants.to_pylist()]


def _null_columns(footer: pq.FileMetaData) -> frozenset[str]:
    """The top-level columns of a Parquet file that are null in every row, by its footer:
    flat columns (one leaf, its path the column's name) whose statistics count as many
    nulls as values, and as many values as rows, in every row group. A column of a list or
    struct type, or without a null count, is not one of them (it is read)."""
    counts: dict[str, int] = {}
    for group in range(footer.num_row_groups):
        row_group = footer.row_group(group)
        for index in range(row_group.num_columns):
            chunk = row_group.column(index)
            path = chunk.path_in_schema
            if "." in path:
                continue  # (a leaf of a nested column: its nulls are not the rows')
            stats = chunk.statistics
            if (stats is not None and stats.has_null_count
                    and stats.null_count == chunk.num_values == row_group.num_rows):
                counts[path] = counts.get(path, 0) + 1
    return frozenset(name for name, groups in counts.items() if groups == footer.num_row_groups)


def string_set(values: Collection[str]) -> pa.Array:
    """``values`` as an Arrow string array, built from buffers: pyarrow imports pandas the first
    time it converts Python values (``pa.array``: 0.2 s of CPU per command)."""
    import numpy as np
    import pyarrow as pa

    encoded = [v.encode() for v in values]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum([len(v) for v in encoded], out=offsets[1:])
    return pa.Array.from_buffers(
        pa.large_string(), len(encoded),
        [None, pa.py_buffer(offsets), pa.py_buffer(b"".join(encoded))],
    )


def in_set(column: pa.Array | pa.ChunkedArray, value_set: pa.Array) -> pa.BooleanArray:
    """Which values of the string ``column`` are in ``value_set`` (:func:`string_set`): a
    boolean mask for ``Table.filter``, computed by ``pyarrow.compute.is_in``."""
    import pyarrow as pa
    import pyarrow.compute as pc

    mask = pc.is_in(column.cast(pa.large_string()), value_set=value_set)
    return mask.combine_chunks() if isinstance(mask, pa.ChunkedArray) else mask


def python_rows(table: pa.Table) -> list[dict[str, Any]]:
    """``table.to_pylist()``, without pandas.

    pyarrow imports pandas to convert a timestamp with a time zone to Python (0.2 s of CPU);
    top-level zoned timestamp columns are converted here instead, to the same datetimes.
    """
    import pyarrow as pa

    zones: dict[str, dt.tzinfo] = {}
    for index, field in enumerate(table.schema):
        if pa.types.is_timestamp(field.type) and field.type.tz is not None:
            zones[field.name] = pa.lib.string_to_tzinfo(field.type.tz)
            naive = pa.timestamp(field.type.unit)
            table = table.set_column(index, field.with_type(naive), table.column(index).cast(naive))
    rows: list[dict[str, Any]] = table.to_pylist()
    for row in rows:
        for name, zone in zones.items():
            if row[name] is not None:
                row[name] = row[name].replace(tzinfo=dt.UTC).astimezone(zone)
    return rows


def data_files(delta: DeltaTable, storage_options: Mapping[str, str] | None = None) -> DataFiles:
    """The data files of ``delta`` (see :class:`DataFiles`).

    A local table is read with Arrow's native filesystem, for the reason given in
    :func:`arrow_dataset`; a remote one through deltalake's, with ``storage_options``
    (``DeltaTables.storage_options``).
    """
    import pyarrow as pa
    import pyarrow.fs as pafs

    schema = pa.schema(delta.schema().to_arrow())
    uri = delta.table_uri
    files = delta.file_uris()  # local: absolute paths; remote: URIs below the table's
    if uri.startswith("file://"):  # deltalake percent-encodes local paths (a space: %20)
        return DataFiles(schema, tuple(unquote(f) for f in files), pafs.LocalFileSystem())
    root = uri.rstrip("/") + "/"
    outside = [f for f in files if not f.startswith(root)]
    if outside:
        raise CatalogError(f"{len(outside)} data file(s) of {uri} lie outside the table; "
                           "this lake only writes files inside its tables")
    from deltalake.fs import DeltaStorageHandler  # (a remote table's alone)

    handler = DeltaStorageHandler(uri, dict(storage_options or {}))
    paths = tuple(f.removeprefix(root) for f in files)
    return DataFiles(schema, paths, pafs.PyFileSystem(handler))


class DeltaTables:
    """The catalog's Delta tables below ``<lake>/tables``.

    Parameters
    ----------
    location : Location
        The lake root.
    """

    def __init__(self, location: Location) -> None:
        self.location = location
        self._kept = KeptSnapshots(self.open, self._files_of, self._local_log)
        self._committer = Committer(self._latest_opened, self._local_log)

    def __getstate__(self) -> dict[str, Any]:
        return {"location": self.location}  # without the kept snapshots and tables

    def cursor(self) -> AbstractContextManager[duckdb.DuckDBPyConnection]:
        """A cursor of the DuckDB database these tables' commits query (in memory, one
        thread), closed when the ``with`` block ends (:class:`~lake.catalog._committer.Committer`:
        one database kept, not one made per query)."""
        return self._committer.cursor()

    def _latest_opened(self, name: str) -> DeltaTable:
        return self._opened(name, None)

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["location"])  # type: ignore[misc]

    def uri(self, name: str) -> str:
        """The deltalake URI of table ``name``."""
        return self.location.url_of("tables", name)

    @property
    def storage_options(self) -> dict[str, str] | None:
        opts = {k: str(v) for k, v in self.location.storage_options}
        return opts or None

    def create_all(self) -> None:
        """Create every table that does not exist yet (idempotent)."""
        for table in TABLES:
            self.create(table)

    def create(self, table: Table) -> None:
        """Create ``table`` empty, unless it exists; keep every version readable (RETENTION)."""
        if self.exists(table.name):
            delta = self.open(table.name)
            if any(delta.metadata().configuration.get(k) != v for k, v in RETENTION.items()):
                delta.alter.set_table_properties(RETENTION)
            self._upgraded(delta, table)
            return
        empty = empty_table(table.schema)
        try:
            write_deltalake(
                self.uri(table.name),
                empty,
                mode="append",
                configuration=RETENTION,
                storage_options=self.storage_options,
            )
        except CommitFailedError:
            if not self.exists(table.name):
                raise

    def exists(self, name: str) -> bool:
        """Whether table ``name`` exists."""
        return bool(DeltaTable.is_deltatable(self.uri(name), storage_options=self.storage_options))

    def data_files(self, name: str, version: int | None = None) -> DataFiles:
        """The data files of table ``name`` at ``version`` (see :meth:`open`, :class:`DataFiles`).

        Checked as :meth:`open` checks, at every call; the snapshots they come from are kept
        (:class:`~lake.catalog._kept.KeptSnapshots`): the latest is brought up to date
        rather than opened again, and a version's files are read from its log once.
        """
        if version is None:
            return self.latest(name)[1]
        return self.files_at({name: version})[name]

    def files_at(self, versions: Mapping[str, int]) -> dict[str, DataFiles]:
        """The data files of each table named in ``versions`` at its version, each checked as
        :meth:`data_files` checks one, table after table, with the erasures' records read
        once for them all (a catalog's set-up reads every table: one reading of the
        ``erasures`` table and of its latest version instead of one per table).

        Raises
        ------
        CatalogError
            As :meth:`data_files`, for the first table in ``versions`` that fails a check.
        """
        records = self._erasure_records() if any(n != ERASURES.name for n in versions) else []
        found: dict[str, DataFiles] = {}
        for name, version in versions.items():
            self._refuse_erased(records, name, version)
            files, uris = self._kept.at(name, version, functools.partial(self._opened, name, version))
            self._check_stored(name, version, uris)
            found[name] = files
        return found

    def latest(self, name: str) -> tuple[int, DataFiles]:
        """The latest version of table ``name`` and its data files (kept: see :meth:`data_files`).

        Raises
        ------
        CatalogError
            If the table does not exist.
        """
        return self._kept.latest(name)

    def _files_of(self, delta: DeltaTable) -> DataFiles:
        return data_files(delta, self.storage_options)

    def _local_log(self, name: str, version: int) -> str:
        """The path of the commit file of ``version`` of ``name`` on a local lake, else ``""``."""
        path = self.location.join("tables", name, "_delta_log", f"{version:020d}.json")
        return path if self.location.is_local and path.startswith("/") else ""

    def open(self, name: str, version: int | None = None) -> DeltaTable:
        """Open table ``name``, optionally at a past ``version``.

        Raises
        ------
        CatalogError
            If the table or the version does not exist, or the version was erased
            (``lake forget``: the message names the erasure).
        """
        if version is not None:
            self._check_not_erased(name, version)
        table = self._opened(name, version)
        if version is not None:
            self._check_stored(name, version, table.file_uris())
        return table

    def _opened(self, name: str, version: int | None) -> DeltaTable:
        """Table ``name`` at ``version``, opened (the checks of :meth:`open` that need the
        table itself: it and the version exist)."""
        try:
            table = DeltaTable(self.uri(name), storage_options=self.storage_options)
            if version is not None:
                table.load_as_version(version)
        except TableNotFoundError:
            raise CatalogError(
                f"catalog table {name!r} is missing; run lake.init() on this lake",
                functions=("lake.init",)
            ) from None
        except Exception as exc:
            if version is not None:
                raise CatalogError(
                    f"catalog version {version} of table {name!r} cannot be read: "
                    f"{type(exc).__name__}; Lake.info() gives the current version",
                    functions=("Lake.info",)
                ) from None
            raise
        if version is not None and version != table.version():
            raise CatalogError(f"catalog version {version} of table {name!r} does not exist")
        return table

    def _check_stored(self, name: str, version: int, uris: Sequence[str]) -> None:
        gone = sum(1 for uri in uris if not self._stored(unquote(uri)))
        if gone:
            raise CatalogError(
                f"catalog version {version} of table {name!r} can no longer be read: "
                f"{gone} of its data files were removed (lake.steward.vacuum() keeps only "
                "recent versions and those cohorts are pinned to); Lake.info() gives the "
                "current version", functions=("lake.steward.vacuum", "Lake.info")
            )

    def _stored(self, path: str) -> bool:
        """Whether data file ``path`` exists; a local lake's without importing fsspec."""
        if self.location.is_local and path.startswith("/"):
            return os.path.exists(path)
        return bool(self.location.fs.exists(path))

    def commit_time(self, name: str, version: int) -> dt.datetime | None:
        """When the commit of ``version`` of table ``name`` was made (None if unknown)."""
        path = self.location.join("tables", name, "_delta_log", f"{version:020d}.json")
        local = self.location.is_local and path.startswith("/")  # without fsspec (asyncio)
        try:
            with open(path, "rb") if local else self.location.fs.open(path, "rb") as fh:
                for line in fh:
                    info = json.loads(line).get("commitInfo")
                    if isinstance(info, dict) and isinstance(info.get("timestamp"), int):
                        return dt.datetime.fromtimestamp(info["timestamp"] / 1000, dt.UTC)
        except FileNotFoundError:
            return None
        return None

    def version_at(self, name: str, when: dt.datetime) -> int | None:
        """The version of table ``name`` current at ``when`` (None: it had none yet)."""
        try:
            delta = DeltaTable(self.uri(name), storage_options=self.storage_options)
            delta.load_as_version(when)
        except Exception:  # noqa: BLE001 - deltalake: no version that old (table newer)
            return None
        return int(delta.version())

    def _check_not_erased(self, name: str, version: int) -> None:
        if name != ERASURES.name:
            self._refuse_erased(self._erasure_records(), name, version)

    def _erasure_records(self) -> list[dict[str, Any]]:
        """The records of the latest version of the ``erasures`` table (none: no table).

        Whether the table exists is asked until its latest snapshot is kept (an
        ``is_deltatable`` of ~0.3 ms of CPU at each read of an open lake); no step of the
        lake removes a table (see :mod:`lake.catalog._kept`)."""
        if not self._kept.holds(ERASURES.name) and not self.exists(ERASURES.name):
            return []
        erasures, files = self.latest(ERASURES.name)
        columns = ["erasure_id", "erased_at", "unreadable"]
        # read again when the erasures table has a new version (not self.dataset:
        # pyarrow.dataset loads pandas)
        records: list[dict[str, Any]] = self._kept.derived(
            ERASURES.name, "records", erasures,
            lambda: [r for path in files.paths for r in files.read(path, columns).to_pylist()],
        )
        return records

    @staticmethod
    def _refuse_erased(records: Sequence[Mapping[str, Any]], name: str, version: int) -> None:
        """Raise CatalogError when an erasure of ``records`` made ``version`` of ``name``
        unreadable (the ``erasures`` table itself is never erased)."""
        if name == ERASURES.name:
            return
        for record in records:
            for span in record["unreadable"] or ():
                if span["table"] == name and span["first"] <= version <= span["last"]:
                    when = record["erased_at"].date().isoformat()
                    raise CatalogError(
                        f"catalog version {version} of table {name!r} was erased on {when} "
                        f"(erasure {record['erasure_id']}, lake.steward.forget()): versions "
                        f"{span['first']}-{span['last']} read data files that held withdrawn "
                        f"instances; query version {span['last'] + 1} or later",
                        functions=("lake.steward.forget",)
                    )

    def dataset(self, name: str, version: int | None = None) -> ds.Dataset:
        """Table ``name`` (at ``version``) as an Arrow dataset that accepts pushed-down filters.

        delta-rs writes strings as ``string`` when it appends and as ``string_view`` when it
        rewrites files (delete, compaction), and Arrow cannot compare a pushed-down
        ``string`` filter (``Modality = 'CT'``) with ``string_view`` statistics, nor the
        reverse. This dataset declares the Delta schema with view types for every string
        and binary (:func:`view_schema`): Arrow reads either kind of file into it, DuckDB
        filters it correctly, and row groups are still pruned by the Parquet statistics.
        Columns added to the table later read as null from older files.
        """
        import pyarrow.dataset as ds

        delta = arrow_dataset(self.open(name, version))
        fragments = [
            delta.format.make_fragment(fragment.path, filesystem=delta.filesystem)
            for fragment in delta.get_fragments()
        ]
        return ds.FileSystemDataset(
            fragments, view_schema(delta.schema), delta.format, delta.filesystem
        )

    def append(
        self,
        table: Table,
        rows: Sequence[dict[str, Any]] | pa.Table,
        metadata: Mapping[str, str] | None = None,
    ) -> int:
        """Append ``rows`` to ``table`` in one commit; returns the version that commit made.

        Appends do not depend on what the table holds, so a commit that finds another
        writer's commit first is simply retried (bounded, with backoff).
        """
        return self._retried(table, rows, metadata, None, f"append to {table.name!r}")

    def _retried(
        self,
        table: Table,
        rows: Sequence[dict[str, Any]] | pa.Table,
        metadata: Mapping[str, str] | None,
        replace: str | None,
        what: str,
    ) -> int:
        """One commit of ``rows`` (replacing the rows matching ``replace``), retried."""
        import pyarrow as pa

        data = rows if isinstance(rows, pa.Table) else _table_of(table, rows)
        backoff = Backoff(what)
        while True:
            writing = self._committer.table(table.name)
            if self._upgraded(writing.delta, table):
                continue
            try:
                version = self._write(writing.delta, data, metadata, exclusive=False,
                                      replace=replace)
            except CommitFailedError as exc:
                backoff.failed(exc)
                continue
            self._committer.keep(table.name, writing)
            return version

    def insert_new(
        self,
        table: Table,
        rows: Sequence[dict[str, Any]] | pa.Table,
        key: str,
        *,
        fetch: Sequence[str] = (),
        plan: Plan | None = None,
        commit_empty: bool = False,
    ) -> Inserted:
        """Append the rows whose ``key`` the table does not hold yet, in one commit.

        Exactly once under any interleaving of writers: the rows are judged against one
        snapshot of the table, and the commit is made only if it directly follows that
        snapshot (a compare-and-swap on the Delta log: deltalake with
        ``max_commit_retries=0`` fails instead of rebasing the commit onto newer ones).
        When another writer committed in between, whatever it was (an append, a delete,
        a compaction), the rows are judged again against the newer snapshot and the
        commit is retried, bounded, with backoff. Nothing is ever appended and deleted
        again, so no reader sees a duplicate and a crash leaves none behind.

        The table is not read whole. For a local lake DuckDB reads the ``key`` column: for
        up to :data:`~lake.catalog._keys.PROBED_KEYS` candidate keys only from the row
        groups whose Bloom filter (or statistics) may hold one, for more (a commit of
        ~1,000 instances) from every row group, in one scan; the ``fetch`` columns are read
        only from the row groups holding a match. A remote lake's key column is streamed
        from every file, keeping only the matches, and the ``fetch`` columns are read from
        the files holding one. After a lost race only the files added since are read,
        unless files were removed (then the whole snapshot is judged again).

        Parameters
        ----------
        table : Table
            The table.
        rows : sequence of dict or pyarrow.Table
            Candidate rows; of several with one key the first is taken.
        key : str
            The column that identifies a row. Rows whose key is null are always new.
        fetch : sequence of str
            Further columns to read for the table rows that share a key with a
            candidate (given to ``plan`` in :attr:`Judged.existing`).
        plan : callable, optional
            Called with each :class:`Judged` snapshot; returns the rows to append (a
            subset of :attr:`Judged.new`) and commit metadata to store atomically with
            them (e.g. a journal of the batch), or a :class:`Decision` that also
            replaces stored rows (their keys in ``replace``, their new rows among the
            rows). Called again after a lost race, so it must not have lasting effects
            that a second call would repeat wrongly.
        commit_empty : bool
            Commit (with the metadata) even when no row is new.

        Returns
        -------
        Inserted
        """
        import duckdb
        import pyarrow as pa
        import pyarrow.compute as pc

        candidates = _unique(rows if isinstance(rows, pa.Table) else _table_of(table, rows), key)
        columns = [key, *[c for c in fetch if c != key]]
        backoff = Backoff(f"commit to {table.name!r}")
        scanned: set[str] = set()  # data files whose matching rows are in `existing`
        existing = _concat(table, columns, [])
        while True:
            writing = self._committer.table(table.name)  # (kept from the last commit, brought
            delta = writing.delta                       # up to date: see _committer.py)
            if self._upgraded(delta, table):
                continue
            read = int(delta.version())
            files = data_files(delta, self.storage_options)
            if not scanned <= set(files.paths):
                # Files were removed (a delete, a compaction): judge everything again.
                scanned, existing = set(), _concat(table, columns, [])
            fresh = dataclasses.replace(files, paths=tuple(sorted(set(files.paths) - scanned)))
            try:
                with self.cursor() as con:
                    found = _matching(_in_key_range(delta, fresh, key, candidates.column(key),
                                                    writing.ranges),
                                      table, columns, candidates.column(key), con=con,
                                      index=_key_index_of(delta, table, key, files))
            except (OSError, pa.ArrowInvalid, duckdb.IOException) as exc:
                # A file of this snapshot was removed meanwhile ('lake forget', 'lake vacuum'):
                # a newer snapshot no longer reads it.
                backoff.failed(exc)
                scanned, existing = set(), _concat(table, columns, [])
                continue
            existing = _concat(table, columns, [existing, found])
            scanned |= set(fresh.paths)
            held = pc.is_in(candidates.column(key), value_set=existing.column(key), skip_nulls=True)
            judged = Judged(candidates.filter(pc.invert(held)), existing, read)
            decided = plan(judged) if plan is not None else (judged.new, None)
            decision = decided if isinstance(decided, Decision) else Decision(*decided)
            append, metadata = decision.rows, decision.metadata
            if append.num_rows == 0 and not commit_empty:
                self._committer.keep(table.name, writing)
                return Inserted(append, read, committed=False)
            replace = None
            if decision.replace:
                listed = ", ".join("'" + k.replace("'", "''") + "'" for k in decision.replace)
                replace = f"{key} IN ({listed})"
            try:
                version = self._write(delta, append, metadata, exclusive=True, replace=replace,
                                      ranges=(key, writing.ranges))
            except CommitFailedError as exc:
                backoff.failed(exc)
                continue
            if version != read + 1:
                raise CatalogError(
                    f"the commit to {table.name!r} landed at version {version}, not "
                    f"{read + 1}: this deltalake release does not honour "
                    "max_commit_retries=0; install the version pinned in pyproject.toml"
                )
            self._committer.keep(table.name, writing)
            return Inserted(append, version, committed=True)

    def lookup(
        self, table: Table, key: str, keys: Sequence[str], columns: Sequence[str]
    ) -> pa.Table:
        """The current rows of ``table`` whose ``key`` is in ``keys`` (``key`` + ``columns``).

        Reads the other columns only from the row groups (a remote lake: the data files)
        that hold a match (see :func:`_matching`). DuckDB's part runs on the commits'
        database (:meth:`cursor`), one thread: measured against all cores in
        docs/performance.md, "Memory from 2,000 to 50,000 files".
        """
        import pyarrow as pa

        delta = self.open(table.name)
        wanted = pa.chunked_array([arrow_array(keys, pa.string())])
        snapshot = data_files(delta, self.storage_options)
        files = _in_key_range(delta, snapshot, key, wanted)
        names = [key, *[c for c in columns if c != key]]
        with self.cursor() as con:
            return _matching(files, table, names, wanted, con=con,
                             index=_key_index_of(delta, table, key, snapshot))

    def _upgraded(self, delta: DeltaTable, table: Table) -> bool:
        """Add the columns ``table`` declares and ``delta`` lacks; whether any were missing.

        A lake made by an earlier release gains the columns added since (null in its
        existing rows) on its first write, and on ``lake init``. Retried (bounded) when
        another writer commits first; a column another writer added meanwhile is fine.
        """
        import pyarrow as pa

        backoff = Backoff(f"upgrade of {table.name!r}")
        changed = False
        while True:
            present = set(delta.schema().to_arrow().names)
            missing = [f for f in table.schema if f.name not in present]
            if not missing:
                return changed
            changed = True
            try:
                delta.alter.add_columns(list(DeltaSchema.from_arrow(pa.schema(missing)).fields))
            except CommitFailedError as exc:
                backoff.failed(exc)
            delta = self.open(table.name)

    def replace_where(
        self,
        table: Table,
        rows: Sequence[dict[str, Any]] | pa.Table,
        predicate: str,
        *,
        metadata: Mapping[str, str] | None = None,
    ) -> int:
        """Replace the rows matching ``predicate`` by ``rows``, in one commit.

        Every row of ``rows`` must match ``predicate``. Retried (bounded, with backoff)
        when another writer's commit conflicts. Returns the version of the commit.
        """
        return self._retried(table, rows, metadata, predicate, f"replacement in {table.name!r}")

    def delete(self, table: Table, predicate: str) -> int:
        """Delete the rows matching ``predicate`` (a Delta SQL predicate) in one commit.

        Retried (bounded, with backoff) when another writer's commit conflicts.

        Returns
        -------
        int
            The version of the delete commit.
        """
        backoff = Backoff(f"delete from {table.name!r}")
        while True:
            delta = self.open(table.name)
            try:
                delta.delete(predicate)
            except CommitFailedError as exc:
                backoff.failed(exc)
                continue
            if table.name == INSTANCES.name:  # summaries of the files the delete rewrote
                write_summaries(self, delta)
                # and the UID index without their rows now, not at the next commit: an
                # erasure ('lake forget') leaves no hash of an erased UID in the index
                self._maintain_key_index(delta)
            return int(delta.version())

    def _maintain_key_index(self, delta: DeltaTable) -> None:
        """Bring the UID index of ``instances`` (:mod:`lake.catalog._key_index`) up to
        ``delta``'s version, after a commit or a delete; nothing on a remote lake."""
        snapshot = data_files(delta, self.storage_options)
        index = _key_index_of(delta, INSTANCES, INDEXED_KEY, snapshot)
        if index is not None:  # (the newest version's files: read only if a segment needs)
            with self.cursor() as con:
                maintain(index.root, index.snapshot, INDEXED_KEY,
                         lambda: self.latest(INSTANCES.name)[1].paths, con)

    def _write(
        self,
        delta: DeltaTable,
        data: pa.Table,
        metadata: Mapping[str, str] | None,
        *,
        exclusive: bool,
        replace: str | None = None,
        ranges: tuple[str, KeyRanges] | None = None,
    ) -> int:
        """Append ``data`` through ``delta`` and return the version this very commit made.

        With ``replace`` (a predicate every row of ``data`` matches), the rows matching it
        are removed in the same commit. The version is read from the table object the
        commit went through (deltalake advances it to the commit's version), never from
        ``history()``: deltalake numbers history entries from the version the table was
        opened at, so any commit that lands after the open shifts every number by one.
        With ``ranges`` (a key column and a kept table's key ranges), the range of the one
        local data file an append adds is learnt from ``data``.
        """
        properties = CommitProperties(
            custom_metadata=dict(metadata) if metadata else None,
            max_commit_retries=0 if exclusive else None,
        )
        name = delta.table_uri.rstrip("/").rsplit("/", 1)[-1]
        local = delta.table_uri.startswith("file:")
        learn = ranges is not None and replace is None and local
        track = name == INSTANCES.name or learn
        before = set(delta.file_uris()) if track else set()
        layout = writer_properties(name)
        if replace is None:
            write_deltalake(
                delta, data, mode="append", writer_properties=layout, commit_properties=properties
            )
        else:
            write_deltalake(
                delta, data, mode="overwrite", predicate=replace, writer_properties=layout,
                commit_properties=properties,
            )
        new = [uri for uri in delta.file_uris() if uri not in before] if track else []
        if learn and len(new) == 1 and ranges is not None:  # (exactly ``data``'s rows)
            ranges[1].wrote(ranges[0], unquote(new[0]), data.column(ranges[0]))  # (as data_files)
        if name == INSTANCES.name:  # the series/study summary of each file just added
            added = [fs_path(uri) for uri in new]
            # an append of one file holds exactly ``data``: summarised without reading it back
            whole = replace is None and len(added) == 1
            write_summaries(self, files=added, rows=data if whole else None)
            self._maintain_key_index(delta)
        return int(delta.version())


@dataclass(frozen=True)
class Judged:
    """Candidate rows judged against one snapshot of a table.

    Attributes
    ----------
    new : pyarrow.Table
        Candidates whose key the snapshot does not hold.
    existing : pyarrow.Table
        The snapshot's rows (key and fetched columns) whose key is among the candidates.
    read_version : int
        The snapshot's version; a commit of this judgement becomes ``read_version + 1``.
    """

    new: pa.Table
    existing: pa.Table
    read_version: int


@dataclass(frozen=True)
class Decision:
    """What a :data:`Plan` decides for one judged snapshot.

    Attributes
    ----------
    rows : pyarrow.Table
        The rows to commit: new keys, and the new rows of replaced keys.
    metadata : mapping, optional
        Commit metadata stored atomically with them (e.g. a batch journal).
    replace : sequence of str
        Keys whose stored rows the commit removes (their new rows are in ``rows``).
    """

    rows: pa.Table
    metadata: Mapping[str, str] | None = None
    replace: Sequence[str] = ()


Plan = Callable[[Judged], "tuple[pa.Table, Mapping[str, str] | None] | Decision"]


@dataclass(frozen=True)
class Inserted:
    """What :meth:`DeltaTables.insert_new` committed.

    Attributes
    ----------
    rows : pyarrow.Table
        The rows appended (empty when none).
    version : int
        The version the commit made, or the version judged when nothing was committed.
    committed : bool
        Whether a commit was made.
    """

    rows: pa.Table
    version: int
    committed: bool

    @property
    def count(self) -> int:
        """How many rows were appended."""
        return int(self.rows.num_rows)


def _view_type(type_: pa.DataType) -> pa.DataType:
    import pyarrow as pa

    if type_ == pa.string():
        return pa.string_view()
    if type_ == pa.binary():
        return pa.binary_view()
    if pa.types.is_list(type_):
        return pa.list_(type_.value_field.with_type(_view_type(type_.value_type)))
    if pa.types.is_struct(type_):
        return pa.struct([f.with_type(_view_type(f.type)) for f in type_])
    return type_


def view_schema(schema: pa.Schema) -> pa.Schema:
    """``schema`` with ``string_view``/``binary_view`` for every string and binary."""
    import pyarrow as pa

    return pa.schema([f.with_type(_view_type(f.type)) for f in schema], metadata=schema.metadata)


def _table_of(table: Table, rows: Sequence[dict[str, Any]]) -> pa.Table:
    return python_table(rows, table.schema)


def _unique(data: pa.Table, key: str) -> pa.Table:
    """The first row of each non-null key, and every row whose key is null."""
    first: dict[Any, int] = {}
    keep: list[int] = []
    for index, value in enumerate(data.column(key).to_pylist()):
        if value is None:
            keep.append(index)
        elif value not in first:
            first[value] = index
            keep.append(index)
    return data if len(keep) == data.num_rows else data.take(keep)


def _in_key_range(
    delta: DeltaTable, files: DataFiles, key: str, keys: pa.ChunkedArray,
    ranges: KeyRanges | None = None,
) -> DataFiles:
    """``files`` but those whose key range in the Delta log holds none of ``keys``
    (:func:`lake.catalog._keys.in_key_range`); a local table's ranges taken from ``ranges``
    (a kept table's) when it knows them all."""
    wanted = sorted({k for k in keys.to_pylist() if k is not None})
    if not files.paths or not wanted:
        return files
    local = fs_path(delta.table_uri).rstrip("/") + "/" if delta.table_uri.startswith("file:") else ""

    def logged() -> dict[str, tuple[str | None, str | None]]:
        actions = delta.get_add_actions(flatten=True)
        if f"min.{key}" not in actions.column_names or f"max.{key}" not in actions.column_names:
            return {}
        return {
            (local + unquote(path)) if local else path: (low, high)
            for path, low, high in zip(
                actions.column("path").to_pylist(),
                actions.column(f"min.{key}").to_pylist(),
                actions.column(f"max.{key}").to_pylist(),
                strict=True,
            )
        }

    bounds = ranges.of(key, files.paths, logged) if ranges is not None and local else logged()
    return dataclasses.replace(files, paths=in_key_range(files.paths, bounds, wanted))


INDEXED_KEY = "SOPInstanceUID"
"""The key of ``instances`` that :mod:`lake.catalog._key_index` indexes."""


@dataclass(frozen=True)
class _KeyIndex:
    """The key index of a snapshot: the table's local folder and the snapshot's data files."""

    root: str
    snapshot: tuple[str, ...]


def _key_index_of(
    delta: DeltaTable, table: Table, key: str, snapshot: DataFiles
) -> _KeyIndex | None:
    """The key index of ``delta``'s snapshot when its ``key`` is indexed (``instances``'
    UIDs on a local lake, :mod:`lake.catalog._key_index`), else None."""
    if table.name != INSTANCES.name or key != INDEXED_KEY:
        return None
    if not delta.table_uri.startswith("file:"):
        return None
    root = fs_path(delta.table_uri).rstrip("/")
    if not readable_by_duckdb([root, *snapshot.paths]):
        return None
    return _KeyIndex(root, snapshot.paths)


def _matching(
    files: DataFiles,
    table: Table,
    columns: Sequence[str],
    keys: pa.ChunkedArray,
    *,
    index: _KeyIndex | None = None,
    con: duckdb.DuckDBPyConnection | None = None,
) -> pa.Table:
    """The rows of these data files whose key (``columns[0]``) is in ``keys``, in the order
    of the files and of their rows.

    The files are listed from the Delta log (:func:`data_files`), not by deltalake's
    ``to_pyarrow_dataset``: that builds an Arrow expression from the statistics of every
    column of every file (0.26 s of CPU per call at 300 files of ``instances``, a commit's
    largest cost by then, and transient memory that grows with the table).

    Local files (:func:`lake.catalog._keys.readable_by_duckdb`): DuckDB finds the matching
    rows (:func:`lake.catalog._keys.files_holding`), reading the key column only from the
    row groups whose Bloom filter or statistics may hold a key when there are at most
    :data:`~lake.catalog._keys.PROBED_KEYS` keys, and from every row group (one semi-join)
    when there are more; the other ``columns`` are read from the row groups holding a match
    (:func:`_rows_at`), not from whole files: a compacted table's files hold millions of
    rows. Remote files: the key column of every file is streamed (:func:`_streamed`), then
    the other columns are read from the files that hold a match. DuckDB queries through
    ``con`` when given (a commit's: ``DeltaTables.cursor``), else through a database of
    their own.
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.fs as pafs

    if not files.paths:
        return _concat(table, columns, [])
    key = columns[0]
    wanted = keys.drop_null().combine_chunks()
    paths = list(files.paths)
    if isinstance(files.filesystem, pafs.LocalFileSystem) and readable_by_duckdb(paths):
        if index is not None:
            rows = _indexed_rows(index, files, table, key, wanted, con=con)
        else:
            rows = files_holding(paths, key, wanted, con=con)
        if len(columns) == 1:
            return conform(table, columns, rows.select([key]))
        return _rows_at(files.filesystem, table, columns, rows)
    import pyarrow.dataset as ds  # imports pandas: only for a remote table

    parquet = ds.ParquetFileFormat()
    fragments = [parquet.make_fragment(p, filesystem=files.filesystem) for p in paths]
    found, holding = _streamed(fragments, table, key, wanted)
    if len(columns) == 1 or not holding:
        return _concat(table, columns, [conform(table, columns, t) for t in found])
    fmt, fs = fragments[0].format, fragments[0].filesystem
    schema = pa.schema([table.schema.field(c) for c in columns])
    chosen = [f for f in fragments if f.path in holding]
    parts = []
    for batch in ds.FileSystemDataset(chosen, schema, fmt, fs).to_batches(columns=list(columns)):
        mask = pc.is_in(batch.column(0), value_set=wanted)
        if pc.any(mask).as_py():
            parts.append(pa.Table.from_batches([batch.filter(mask)], schema=schema))
    return _concat(table, columns, parts)


def _indexed_rows(
    index: _KeyIndex, files: DataFiles, table: Table, key: str, wanted: pa.Array,
    con: duckdb.DuckDBPyConnection | None = None,
) -> pa.Table:
    """:func:`lake.catalog._keys.files_holding`'s answer (key, file, row, in the order of the
    files and rows), found through the key index below ``root``: its hash hits confirmed by
    reading their keys, and the files it does not cover read as before."""
    import pyarrow as pa
    import pyarrow.compute as pc

    keys = sorted(set(wanted.to_pylist()))
    places, uncovered = located(index.root, index.snapshot, files.paths, keys)
    found = files_holding(uncovered, key, wanted, con=con)
    rank = {path: n for n, path in enumerate(files.paths)}
    if places:
        places.sort(key=lambda place: (rank[place[0]], place[1]))
        where = python_table([{"file": p, "row": r} for p, r in places],
                             pa.schema([("file", pa.string()), ("row", pa.int64())]))
        stored = _rows_at(files.filesystem, table, [key], where).column(key)
        hits = pa.table({key: stored.cast(pa.string()), "file": where.column("file"),
                         "row": where.column("row")}).filter(in_set(stored, string_set(keys)))
        found = pa.concat_tables([found, hits.cast(found.schema)])
    if found.num_rows == 0:
        return found
    ranks = arrow_array([rank[p] for p in found.column("file").to_pylist()], pa.int64())
    order = pc.sort_indices(found.append_column("rank", ranks),
                            sort_keys=[("rank", "ascending"), ("row", "ascending")])
    return found.take(order)


def _rows_at(
    filesystem: pafs.FileSystem, table: Table, columns: Sequence[str], rows: pa.Table
) -> pa.Table:
    """The ``columns`` of the rows ``rows`` locates (``file``, ``row``: in order, as
    :func:`lake.catalog._keys.files_holding` gives them), each read from its row group only;
    columns a file lacks (added to the table later) are null."""
    import bisect
    import itertools

    import pyarrow as pa
    import pyarrow.parquet as pq

    parts = []
    located = zip(rows.column("file").to_pylist(), rows.column("row").to_pylist(), strict=True)
    for path, in_file in itertools.groupby(located, key=lambda place: place[0]):
        with filesystem.open_input_file(path) as source:
            parquet = pq.ParquetFile(source)
            meta = parquet.metadata
            starts = list(itertools.accumulate(
                (meta.row_group(g).num_rows for g in range(meta.num_row_groups)), initial=0))
            names = set(parquet.schema_arrow.names)
            stored = [c for c in columns if c in names]
            numbers = [number for _, number in in_file]
            for group, at in itertools.groupby(
                    numbers, key=lambda n: bisect.bisect_right(starts, n) - 1):
                read = parquet.read_row_group(group, columns=stored, use_threads=False)
                offsets = arrow_array([n - starts[group] for n in at], pa.int64())
                parts.append(conform(table, columns, read).take(offsets))
    return _concat(table, columns, parts)


def _streamed(
    fragments: Sequence[ds.Fragment], table: Table, key: str, wanted: pa.Array
) -> tuple[list[pa.Table], set[str]]:
    """The key column of the rows of ``fragments`` whose ``key`` is in ``wanted``, and the
    paths of the fragments holding them, by streaming the key column of every file (all files scanned in
    parallel, only matches kept, so memory follows the candidates, not the table).

    The filter is applied after reading, not pushed into the scan: delta-rs writes some
    files with ``string_view`` columns, whose statistics Arrow cannot compare with a
    ``string`` filter; the dataset's declared (Delta) types make Arrow read every file as
    strings.
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    fmt, fs = fragments[0].format, fragments[0].filesystem
    keyed = ds.FileSystemDataset(fragments, pa.schema([table.schema.field(key)]), fmt, fs)
    holding: set[str] = set()
    found = []
    for batch in keyed.to_batches(columns=[key, "__filename"]):
        mask = pc.is_in(batch.column(0), value_set=wanted)
        if pc.any(mask).as_py():
            matched = batch.filter(mask)
            holding.update(matched.column(1).to_pylist())
            found.append(pa.Table.from_batches([matched]).select([key]))
    return found, holding


def conform(table: Table, columns: Sequence[str], data: pa.Table) -> pa.Table:
    """``data`` with exactly ``columns``, typed as the table declares (missing ones null)."""
    import pyarrow as pa

    schema = pa.schema([table.schema.field(c) for c in columns])
    arrays = [
        data.column(c).cast(schema.field(c).type)
        if c in data.column_names
        else pa.nulls(data.num_rows, schema.field(c).type)
        for c in columns
    ]
    return pa.Table.from_arrays(arrays, schema=schema)


def _concat(table: Table, columns: Sequence[str], parts: list[pa.Table]) -> pa.Table:
    import pyarrow as pa

    if not parts:
        return empty_table(pa.schema([table.schema.field(c) for c in columns]))
    return pa.concat_tables(parts)
