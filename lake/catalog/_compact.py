"""Compaction: many small data files become a few large ones, laid out for fast reads.

Every ingest batch commits one small file (1,000 rows by default): after ten million
instances a table has ten thousand files, and every query opens all of them. Compaction
rewrites the small files of a table into files of ``target_size`` bytes with the catalog's
layout (:mod:`lake.catalog._layout`: ZSTD, 16,384-row groups, Bloom filters on the UID
columns), in one Delta commit that removes the old files and adds the new ones. Rows keep
their order: ingest writes a series' instances together, and an archive is often ingested
in date order, which keeps a series, and a date window, in few row groups. (Sorting by date
here was tried: delta-rs' Z-order ran out of its 1 GB memory pool on a million rows of
realistic width, and a larger pool does not fit a shared machine.) Earlier versions stay
readable: the old files are removed from the log, not from storage, until a vacuum. New
files get their series/study summaries.

Concurrent writers are safe: delta-rs commits the rewrite only if no file it read was
removed meanwhile (appends in between do not conflict), and the catalog's exactly-once
insert re-judges a batch whose snapshot lost files.

This is the implementation of ``lake compact``; it is a library call so that the CLI, a
scheduled job and the benchmarks run the same code.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lake.catalog._layout import writer_properties
from lake.catalog._schema import INSTANCES, TABLES, Table
from lake.catalog._summary import write_summaries

if TYPE_CHECKING:
    from lake.catalog._tables import DeltaTables

__all__ = ["TARGET_FILE_BYTES", "Compacted", "compact"]

TARGET_FILE_BYTES = 512 * 2**20
"""Files smaller than this are rewritten, into files of about this size."""


@dataclass(frozen=True)
class Compacted:
    """What compacting one table did.

    Attributes
    ----------
    table : str
        The table.
    files_removed, files_added : int
        Data files taken out of the table and written in their place.
    version : int
        The table version after compaction (unchanged when there was nothing to do).
    summaries : int
        Data files whose series/study summaries were written (``instances`` only).
    """

    table: str
    files_removed: int
    files_added: int
    version: int
    summaries: int = 0


def compact(
    tables: DeltaTables,
    names: Sequence[str] | None = None,
    *,
    target_size: int = TARGET_FILE_BYTES,
) -> list[Compacted]:
    """Compact the catalog's tables (default: every table that exists).

    Parameters
    ----------
    tables : DeltaTables
        The lake's tables.
    names : sequence of str, optional
        Table names to compact.
    target_size : int
        Bytes per file written; files at least this large are left as they are.

    Returns
    -------
    list of Compacted
        One per table, in the order compacted.

    Raises
    ------
    CatalogError
        If a table named does not exist.
    """
    chosen: list[Table] = [t for t in TABLES if names is None or t.name in names]
    unknown = set(names or ()) - {t.name for t in chosen}
    if unknown:
        from lake._errors import CatalogError

        raise CatalogError(
            f"no catalog table named {', '.join(sorted(unknown))}; "
            f"tables are {', '.join(t.name for t in TABLES)}"
        )
    done: list[Compacted] = []
    for table in chosen:
        if names is None and not tables.exists(table.name):
            continue
        delta = tables.open(table.name)
        metrics = delta.optimize.compact(
            target_size=target_size, writer_properties=writer_properties(table)
        )
        summaries = 0
        if table.name == INSTANCES.name:
            summaries = write_summaries(tables, delta)
        done.append(
            Compacted(
                table.name,
                int(metrics.get("numFilesRemoved", 0)),
                int(metrics.get("numFilesAdded", 0)),
                int(delta.version()),
                summaries,
            )
        )
    return done
