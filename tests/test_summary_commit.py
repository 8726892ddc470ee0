"""A commit summarises its data file from the rows it wrote: the same summaries as read back
from the file (lake/catalog/_summary.py, issue 14.4's commit cost)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

import lake
from lake.catalog import write_summaries
from lake.catalog._summary import REP_HEADERS, SERIES_PARTS, STUDY_PARTS, SUMMARY_DIR, data_files

KINDS = (SERIES_PARTS, STUDY_PARTS, REP_HEADERS)


def _folder(lk: lake.Lake) -> Path:
    return Path(lk.tables.location.join("tables", "instances")) / SUMMARY_DIR


def _parts(lk: lake.Lake) -> dict[str, tuple[pa.Schema, list[Any]]]:
    """Each kind's parts of every data file: the schema and the rows (lists sorted: DuckDB's
    list_distinct gives no order), sorted."""
    found = {}
    for kind in KINDS:
        tables = [pq.read_table(p) for p in sorted((_folder(lk) / kind).iterdir())]
        schemas = {t.schema.remove_metadata() for t in tables}
        assert len(schemas) == 1, kind
        rows = [
            tuple((k, sorted(v) if isinstance(v, list) else v) for k, v in row.items())
            for t in tables for row in t.to_pylist()
        ]
        found[kind] = (schemas.pop(), sorted(rows, key=repr))
    return found


def test_a_commits_summaries_equal_those_read_back_from_its_file(several: lake.Lake) -> None:
    """The summaries each commit wrote from its rows, against those written again from the
    data files (the summaries removed): same schema, same rows, for every kind."""
    files = data_files(several.tables, several.tables.open("instances"))
    assert len(files) >= 4  # several commits, each its own file
    written = _parts(several)
    assert sum(len(rows) for _, rows in written.values()) > 3 * len(files) - 1
    shutil.rmtree(_folder(several))
    assert write_summaries(several.tables) == len(files)  # from the files
    again = _parts(several)
    for kind in KINDS:
        assert written[kind][0] == again[kind][0], kind
        assert written[kind][1] == again[kind][1], kind
