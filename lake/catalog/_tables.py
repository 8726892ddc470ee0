"""Delta tables of the catalog: creation, appends with de-duplication, versions."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
from deltalake import DeltaTable, write_deltalake
from deltalake.exceptions import CommitFailedError, TableNotFoundError

from lake._errors import CatalogError
from lake.catalog._schema import TABLES, Table
from lake.store import Location

__all__ = ["DeltaTables"]

_RETRIES = 20

# Cohorts promise byte-identical exports years later: every catalog version must stay
# readable. delta-rs would otherwise drop log entries older than 30 days at checkpoints.
RETENTION: dict[str, str] = {
    "delta.enableExpiredLogCleanup": "false",
    "delta.logRetentionDuration": "interval 36500 days",
    "delta.deletedFileRetentionDuration": "interval 36500 days",
}


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
        delta = self.open(name, version).to_pyarrow_dataset()
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

    def insert_new(self, table: Table, rows: Sequence[dict[str, Any]], key: str) -> tuple[int, int]:
        """Insert the rows whose ``key`` is not in ``table`` yet, in one commit.

        Rows are de-duplicated within ``rows`` too. The insert is a Delta MERGE, so
        two writers racing to add the same key cannot both succeed; a conflicting
        commit is retried.

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
        data = pa.Table.from_pylist(list(unique.values()), schema=table.schema)
        for attempt in range(_RETRIES):
            dt = self.open(table.name)
            # Pre-filter on one column read in full (pyarrow has no is_in kernel for the files'
            # string_view type); the MERGE below is what guarantees uniqueness.
            existing = self.dataset(table.name, dt.version()).to_table(columns=[key]).column(key)
            if len(existing):
                existing = existing.cast(data.schema.field(key).type)
                data = data.filter(pc.invert(pc.is_in(data.column(key), value_set=existing)))
            if data.num_rows == 0:
                return 0, int(dt.version())
            try:
                metrics = (
                    dt.merge(
                        data, predicate=f"t.{key} = s.{key}", source_alias="s", target_alias="t"
                    )
                    .when_not_matched_insert_all()
                    .execute()
                )
            except CommitFailedError:
                time.sleep(0.05 * (attempt + 1))
                continue
            return int(metrics.get("num_target_rows_inserted", data.num_rows)), int(
                self.open(table.name).version()
            )
        raise CatalogError(
            f"could not commit to {table.name!r} after {_RETRIES} attempts (too many concurrent "
            "writers); re-run the command, it resumes without duplicates"
        )
