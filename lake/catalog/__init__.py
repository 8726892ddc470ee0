"""The catalog: Delta tables of instance rows, batches and quarantine, queried with DuckDB."""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lake.catalog._extract import dicom_values
    from lake.catalog._journal import BatchJournal, complete_batches, record_batch
    from lake.catalog._query import Catalog, locked_connection, query_error, views_over_rows
    from lake.catalog._schema import (
        ACQUISITION_COLUMNS,
        AUDIT,
        BATCHES,
        COHORTS,
        DICOM_COLUMNS,
        ERASURES,
        INSTANCES,
        PULLS,
        QUARANTINE,
        SHARES,
        TABLES,
        TEACHING_SETS,
        TOKENS,
        TOMBSTONES,
        USERS,
        Column,
        Table,
    )
    from lake.catalog._summary import prune_summaries, write_rep_headers, write_summaries
    from lake.catalog._tables import (
        DataFiles,
        Decision,
        DeltaTables,
        Inserted,
        Judged,
        arrow_dataset,
        conform,
        data_files,
        in_set,
        python_rows,
        string_set,
    )
    from lake.catalog._tombstones import TombstoneCache, Tombstones

_WHERE = {
    "ACQUISITION_COLUMNS": "lake.catalog._schema",
    "AUDIT": "lake.catalog._schema",
    "BATCHES": "lake.catalog._schema",
    "BatchJournal": "lake.catalog._journal",
    "COHORTS": "lake.catalog._schema",
    "Catalog": "lake.catalog._query",
    "Column": "lake.catalog._schema",
    "DICOM_COLUMNS": "lake.catalog._schema",
    "DataFiles": "lake.catalog._tables",
    "Decision": "lake.catalog._tables",
    "DeltaTables": "lake.catalog._tables",
    "ERASURES": "lake.catalog._schema",
    "INSTANCES": "lake.catalog._schema",
    "Inserted": "lake.catalog._tables",
    "Judged": "lake.catalog._tables",
    "PULLS": "lake.catalog._schema",
    "QUARANTINE": "lake.catalog._schema",
    "SHARES": "lake.catalog._schema",
    "TABLES": "lake.catalog._schema",
    "TEACHING_SETS": "lake.catalog._schema",
    "TOKENS": "lake.catalog._schema",
    "TOMBSTONES": "lake.catalog._schema",
    "Table": "lake.catalog._schema",
    "TombstoneCache": "lake.catalog._tombstones",
    "Tombstones": "lake.catalog._tombstones",
    "USERS": "lake.catalog._schema",
    "arrow_dataset": "lake.catalog._tables",
    "conform": "lake.catalog._tables",
    "complete_batches": "lake.catalog._journal",
    "data_files": "lake.catalog._tables",
    "dicom_values": "lake.catalog._extract",
    "in_set": "lake.catalog._tables",
    "locked_connection": "lake.catalog._query",
    "prune_summaries": "lake.catalog._summary",
    "python_rows": "lake.catalog._tables",
    "query_error": "lake.catalog._query",
    "record_batch": "lake.catalog._journal",
    "string_set": "lake.catalog._tables",
    "views_over_rows": "lake.catalog._query",
    "write_rep_headers": "lake.catalog._summary",
    "write_summaries": "lake.catalog._summary",
}
"""Where each name lives, imported when first used (PEP 562): dicom_values needs pydicom (a
quarter of a second to import) and only ingest uses it, so a SQL query does not pay for it; the
DuckDB query layer (0.1 s of CPU to import duckdb) is not needed to read or write the Delta
tables, so a small NIfTI export does not pay for it (issue 14.2); and the Delta and DuckDB
modules start native threads when imported, which ingest's worker processes, using only the
schema and ``dicom_values``, never need (a pool forks its workers only from a driver that has
not loaded them: ``lake.compute._pool``)."""

__all__ = [
    "ACQUISITION_COLUMNS",
    "AUDIT",
    "BATCHES",
    "COHORTS",
    "DICOM_COLUMNS",
    "ERASURES",
    "INSTANCES",
    "PULLS",
    "QUARANTINE",
    "SHARES",
    "TABLES",
    "TEACHING_SETS",
    "TOKENS",
    "TOMBSTONES",
    "USERS",
    "BatchJournal",
    "Catalog",
    "Column",
    "DataFiles",
    "Decision",
    "DeltaTables",
    "Inserted",
    "Judged",
    "Table",
    "TombstoneCache",
    "Tombstones",
    "arrow_dataset",
    "complete_batches",
    "conform",
    "data_files",
    "dicom_values",
    "in_set",
    "locked_connection",
    "prune_summaries",
    "python_rows",
    "query_error",
    "record_batch",
    "string_set",
    "views_over_rows",
    "write_rep_headers",
    "write_summaries",
]


def __getattr__(name: str) -> object:
    import importlib

    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
