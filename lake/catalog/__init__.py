"""The catalog: Delta tables of instance rows, batches and quarantine, queried with DuckDB."""

from typing import TYPE_CHECKING

from lake.catalog._query import Catalog
from lake.catalog._schema import (
    BATCHES,
    COHORTS,
    DICOM_COLUMNS,
    INSTANCES,
    PULLS,
    QUARANTINE,
    TABLES,
    Column,
    Table,
)
from lake.catalog._tables import DeltaTables, arrow_dataset

if TYPE_CHECKING:
    from lake.catalog._extract import dicom_values

__all__ = [
    "BATCHES",
    "COHORTS",
    "DICOM_COLUMNS",
    "INSTANCES",
    "PULLS",
    "QUARANTINE",
    "TABLES",
    "Catalog",
    "Column",
    "DeltaTables",
    "Table",
    "arrow_dataset",
    "dicom_values",
]


def __getattr__(name: str) -> object:
    # dicom_values needs pydicom (a quarter of a second to import); only ingest uses it,
    # so `lake sql` does not pay for it.
    if name == "dicom_values":
        from lake.catalog._extract import dicom_values

        return dicom_values
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
