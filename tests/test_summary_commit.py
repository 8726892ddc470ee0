"""A commit summarises its data file from the rows it wrote: the same summaries as read back
from the file (lake/catalog/_summary.py, issue 14.4's commit cost)."""

from __future__ import annotations

import datetime as dt
import json
import random
import shutil
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import lake
from lake.catalog import INSTANCES, write_summaries
from lake.catalog._arrow_values import python_table
from lake.catalog._committer import _database
from lake.catalog._summary import (
    REP_HEADERS,
    SERIES_PARTS,
    STUDY_PARTS,
    SUMMARY_DIR,
    _arrow_parts,
    _series_and_headers,
    _table,
    data_files,
    studies_from_series_sql,
)

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


def _normalised(table: pa.Table) -> list[Any]:
    return sorted((tuple((k, sorted(v) if isinstance(v, list) else v) for k, v in row.items())
                   for row in table.to_pylist()), key=repr)


@pytest.mark.parametrize("nulls", [0.05, 0.3, 0.9])
def test_arrow_parts_equal_duckdbs(nulls: float) -> None:
    """A commit's parts by Arrow (_arrow_parts) against DuckDB's queries (parts_sql,
    studies_from_series_sql, the representative headers) over random rows, with nulls in
    every column but the key: same schema, same rows (lists compared sorted)."""
    rng = random.Random(nulls)

    def maybe(value: Any) -> Any:
        return None if rng.random() < nulls else value

    database = _database()
    for _ in range(60):
        series = [maybe(f"1.2.{i}") for i in range(rng.randint(1, 4))]
        studies = [maybe(f"1.3.{i}") for i in range(rng.randint(1, 3))]
        rows = [{
            "SOPInstanceUID": f"2.25.{rng.randint(0, 10**6)}.{i}",
            "SeriesInstanceUID": rng.choice(series), "StudyInstanceUID": rng.choice(studies),
            "PatientID": maybe(rng.choice(["A", "B"])), "PatientSex": maybe("F"),
            "StudyDate": maybe(dt.date(2020, 1, rng.randint(1, 28))),
            "Modality": maybe(rng.choice(["CT", "MR", "PT"])),
            "SOPClassUID": maybe(rng.choice(["1.1", "1.2"])),
            "NumberOfFrames": maybe(rng.randint(1, 5)), "size_bytes": maybe(rng.randint(1, 999)),
            "pixel_bytes": maybe(rng.randint(1, 999)), "SeriesNumber": maybe(rng.randint(1, 9)),
            "SliceThickness": maybe(rng.random()), "Rows": maybe(512),
            "ingested_at": maybe(dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
                                 + dt.timedelta(seconds=rng.randint(0, 99))),
            "header_json": maybe(json.dumps({"00100010": {"vr": "PN", "Value": [
                {"Alphabetic": f"X{i}"}]}, "00200010": {"vr": "SH", "Value": [str(i)]}})),
        } for i in range(rng.randint(1, 30))]
        table = python_table(rows, INSTANCES.schema)
        with database.cursor() as con:
            made = _arrow_parts(con, table, "f.parquet")
            assert made is not None
            want_series, want_headers = _series_and_headers(con, table, table.schema, "f.parquet")
            con.register("series_rows", want_series)
            want_studies = _table(con.sql(studies_from_series_sql("series_rows")).arrow())
        for got, want in zip(made, (want_series, want_studies, want_headers), strict=True):
            assert got.schema == want.schema
            assert _normalised(got) == _normalised(want)


def test_rows_without_a_key_are_left_to_duckdb() -> None:
    rows = [{"SOPInstanceUID": None, "SeriesInstanceUID": "1.2"}]
    with _database().cursor() as con:
        assert _arrow_parts(con, python_table(rows, INSTANCES.schema), "f.parquet") is None
