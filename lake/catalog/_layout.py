"""How the catalog's Parquet files are laid out: compression, row groups, Bloom filters.

Measured on 10 million instance rows of realistic width (``benchmarks/bench_catalog.py``,
``docs/performance.md``): ZSTD stores them in 1.45 GB where Snappy took 9.1 GB (the headers
of one series differ in a few bytes, which ZSTD's window sees); row groups of 16,384 rows
keep a point lookup's read small; a Bloom filter per row group on each UID column lets
DuckDB skip nearly every row group but the one holding a UID (1.8 of 613 read on average,
at most 4 of 30 lookups), whatever the row order, so files need no sorting for lookups. The
writer rounds each filter up to a power of two (32 KB for 16,384 values at ``fpp`` 0.01, and
also at 0.001), so a lower ``fpp`` changes nothing below the next size (64 KB).
"""

from __future__ import annotations

from deltalake import BloomFilterProperties, ColumnProperties, WriterProperties

from lake.catalog._schema import INSTANCES, Table

__all__ = ["BLOOM_COLUMNS", "ROW_GROUP_ROWS", "writer_properties"]

ROW_GROUP_ROWS = 16_384
"""Rows per Parquet row group."""

BLOOM_COLUMNS: dict[str, tuple[str, ...]] = {
    INSTANCES.name: ("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID", "PatientID"),
}
"""Columns with a Bloom filter in each row group, per table: the keys looked up one at a time."""


def writer_properties(table: Table | str) -> WriterProperties:
    """How every data file of ``table`` (a table or its name) is written, by appends and by
    compaction.

    Examples
    --------
    >>> from lake.catalog import INSTANCES
    >>> writer_properties(INSTANCES).max_row_group_size
    16384
    """
    bloom = ColumnProperties(
        bloom_filter_properties=BloomFilterProperties(True, fpp=0.01, ndv=ROW_GROUP_ROWS)
    )
    name = table if isinstance(table, str) else table.name
    return WriterProperties(
        compression="ZSTD",
        max_row_group_size=ROW_GROUP_ROWS,
        column_properties={column: bloom for column in BLOOM_COLUMNS.get(name, ())} or None,
    )
