"""Delta tables of the catalog: creation, appends with de-duplication, versions."""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from typing import Any
from urllib.parse import unquote, urlsplit

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs
from deltalake import CommitProperties, DeltaTable, write_deltalake
from deltalake.exceptions import CommitFailedError, TableNotFoundError

from lake._errors import CatalogError
from lake.catalog._schema import TABLES, Table
from lake.store import Location

__all__ = ["DeltaTables", "arrow_dataset"]

_RETRIES = 20
_MARKER = "imaging-lake.commit"

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


class DeltaTables:
    """The catalog's Delta tables below ``<lake>/tables``.

    Parameters
    ----------
    location : Location
        The lake root.
    """

    def __init__(self, location: Location) -> None:
        self.location = location

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
            return
        empty = table.schema.empty_table()
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

    def open(self, name: str, version: int | None = None) -> DeltaTable:
        """Open table ``name``, optionally at a past ``version``.

        Raises
        ------
        CatalogError
            If the table or the version does not exist.
        """
        try:
            table = DeltaTable(self.uri(name), storage_options=self.storage_options)
            if version is not None:
                table.load_as_version(version)
        except TableNotFoundError:
            raise CatalogError(
                f"catalog table {name!r} is missing; run 'lake init' on this lake"
            ) from None
        except Exception as exc:
            if version is not None:
                raise CatalogError(
                    f"catalog version {version} of table {name!r} cannot be read: "
                    f"{type(exc).__name__}; run 'lake info' for the current version"
                ) from None
            raise
        return table

    def dataset(self, name: str, version: int | None = None) -> ds.Dataset:
        """Table ``name`` (at ``version``) as an Arrow dataset that accepts pushed-down filters.

        delta-rs writes strings as ``string_view`` in its Parquet files while the Delta schema
        says ``string``; pyarrow then fails to compare a pushed-down filter (``Modality =
        'CT'``) with the files' statistics. This dataset uses the files' own (physical) schema,
        which DuckDB filters correctly, and no per-file guarantees: row groups are still
        pruned by the Parquet statistics inside each file.
        """
        delta = arrow_dataset(self.open(name, version))
        fragments = [
            delta.format.make_fragment(fragment.path, filesystem=delta.filesystem)
            for fragment in delta.get_fragments()
        ]
        schema = fragments[0].physical_schema if fragments else delta.schema
        return ds.FileSystemDataset(fragments, schema, delta.format, delta.filesystem)

    def append(self, table: Table, rows: Sequence[dict[str, Any]]) -> int:
        """Append ``rows`` to ``table`` in one commit; returns the new version."""
        data = pa.Table.from_pylist(list(rows), schema=table.schema)
        write_deltalake(
            self.uri(table.name), data, mode="append", storage_options=self.storage_options
        )
        return int(self.open(table.name).version())

    def _keys(self, name: str, key: str, version: int) -> pa.ChunkedArray:
        """The ``key`` column of table ``name`` at ``version`` (one column, read in full)."""
        return self.dataset(name, version).to_table(columns=[key]).column(key).cast(pa.string())

    def _version_of(self, name: str, marker: str, since: int) -> int:
        """The version whose commit carries ``marker`` in its commit info."""
        latest = self.open(name)
        for entry in latest.history(int(latest.version()) - since + 1):
            if entry.get(_MARKER) == marker:
                return int(entry["version"])
        raise CatalogError(
            f"the commit to {name!r} cannot be found in its history; run 'lake verify'"
        )

    def insert_new(
        self, table: Table, rows: Sequence[dict[str, Any]], key: str, owner: str
    ) -> tuple[int, int]:
        """Append the rows whose ``key`` is not in ``table`` yet, in one commit.

        Rows are de-duplicated within ``rows`` too. Memory stays bounded by the batch:
        only the key column of the table is read, never its other columns (a Delta
        MERGE would load the whole table). Writers racing to add the same key are
        resolved after the append: the commit that comes later in the table's history
        removes its own copies (its rows are told apart by the ``owner`` column, which
        must hold one value per call, e.g. the batch id). Each writer judges only
        against the commits before its own, so exactly one copy survives.

        Returns
        -------
        (inserted, version) : tuple of int
            How many rows were added and the table version after the commit.
        """
        unique: dict[Any, dict[str, Any]] = {}
        for row in rows:
            unique.setdefault(row[key], row)
        if not unique:
            return 0, int(self.open(table.name).version())
        owners = {row[owner] for row in unique.values()}
        if len(owners) != 1:
            raise CatalogError(f"insert_new needs one {owner} value per call, got {len(owners)}")
        data = pa.Table.from_pylist(list(unique.values()), schema=table.schema)
        read = int(self.open(table.name).version())
        existing = self._keys(table.name, key, read)
        if len(existing):
            data = data.filter(pc.invert(pc.is_in(data.column(key), value_set=existing)))
        if data.num_rows == 0:
            return 0, read
        marker = uuid.uuid4().hex
        write_deltalake(
            self.uri(table.name),
            data,
            mode="append",
            commit_properties=CommitProperties(custom_metadata={_MARKER: marker}),
            storage_options=self.storage_options,
        )
        mine = self._version_of(table.name, marker, read)
        inserted = data.num_rows
        if mine - 1 > read:  # others committed between our read and our commit
            earlier = self._keys(table.name, key, mine - 1)
            clash = pc.is_in(data.column(key), value_set=earlier)
            if pc.any(clash).as_py():
                ours = data.filter(clash).column(key).to_pylist()
                self._delete_own(table, key, ours, owner, str(next(iter(owners))))
                inserted -= len(ours)
        return inserted, int(self.open(table.name).version())

    def _delete_own(self, table: Table, key: str, keys: list[str], owner: str, mine: str) -> None:
        listed = ", ".join("'" + k.replace("'", "''") + "'" for k in keys)
        predicate = f"{owner} = '{mine.replace(chr(39), chr(39) * 2)}' AND {key} IN ({listed})"
        for attempt in range(_RETRIES):
            try:
                self.open(table.name).delete(predicate)
                return
            except CommitFailedError:
                time.sleep(0.05 * (attempt + 1))
        raise CatalogError(
            f"could not remove duplicate rows from {table.name!r} after {_RETRIES} attempts; "
            "run 'lake verify' and re-run the command"
        )
