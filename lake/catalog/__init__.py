"""The catalog: Delta tables of instance rows, batches and quarantine, queried with DuckDB."""

from lake.catalog._extract import dicom_values
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
