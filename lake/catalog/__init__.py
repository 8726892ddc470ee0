"""The catalog: Delta tables of instance rows, batches and quarantine, queried with DuckDB."""

from importlib import import_module
from typing import TYPE_CHECKING

from lake.catalog._journal import BatchJournal, complete_batches, record_batch
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
    data_files,
    in_set,
    python_rows,
    string_set,
)
from lake.catalog._tombstones import TombstoneCache, Tombstones

if TYPE_CHECKING:
    from lake.catalog._extract import dicom_values
    from lake.catalog._query import Catalog, locked_connection, query_error, views_over_rows

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


#: Names imported when first used (PEP 562): dicom_values needs pydicom (a quarter of a
#: second to import) and only ingest uses it, so `lake sql` does not pay for it; the DuckDB
#: query layer (0.1 s of CPU to import duckdb) is not needed to read or write the Delta
#: tables, so `lake export nifti` does not pay for it (issue 14.2).
_LAZY = {
    "dicom_values": "lake.catalog._extract",
    "Catalog": "lake.catalog._query",
    "locked_connection": "lake.catalog._query",
    "query_error": "lake.catalog._query",
    "views_over_rows": "lake.catalog._query",
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is not None:
        return getattr(import_module(module), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
