"""DataFiles.read does not decode a column its footer says is null in every row.

A small lake's instance rows leave most acquisition parameters null; pyarrow spends the same
CPU decoding a column of nulls as any other. A flat column whose statistics count as many
nulls as values, in every row group, reads as the nulls it holds; anything else (a nested
column, a column without statistics, one null in some row groups only) is decoded. Either
way the table is the one decoding every column gives.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from lake.catalog import DataFiles
from lake.catalog._tables import _null_columns

_SCHEMA = pa.schema([
    ("uid", pa.string()),
    ("none_int", pa.int64()),
    ("none_text", pa.string()),
    ("some_text", pa.string()),
    ("late_double", pa.float64()),
    ("none_list", pa.list_(pa.float64())),
    ("empty_lists", pa.list_(pa.float64())),
    ("none_struct", pa.struct([("a", pa.int64())])),
    ("blob", pa.binary()),
    ("none_flag", pa.bool_()),
])
_ROWS = 6


def _table() -> pa.Table:
    return pa.table({
        "uid": [f"2.25.{i}" for i in range(_ROWS)],
        "none_int": pa.nulls(_ROWS, pa.int64()),
        "none_text": pa.nulls(_ROWS, pa.string()),
        "some_text": ["a", None, "b", None, None, "c"],
        "late_double": [None] * (_ROWS - 1) + [1.5],  # null in every row group but the last
        "none_list": pa.nulls(_ROWS, pa.list_(pa.float64())),
        "empty_lists": [[] for _ in range(_ROWS)],
        "none_struct": pa.nulls(_ROWS, pa.struct([("a", pa.int64())])),
        "blob": [bytes([i]) * 3 for i in range(_ROWS)],
        "none_flag": pa.nulls(_ROWS, pa.bool_()),
    }, schema=_SCHEMA)


def _decoded(path: Path, schema: pa.Schema, columns: list[str]) -> pa.Table:
    """Every column decoded (what DataFiles.read gave before), typed as ``schema``."""
    stored = pq.read_table(path)
    arrays = [stored.column(c).cast(schema.field(c).type) if c in stored.column_names
              else pa.nulls(stored.num_rows, schema.field(c).type) for c in columns]
    return pa.Table.from_arrays(arrays, schema=pa.schema([schema.field(c) for c in columns]))


@pytest.mark.parametrize(("row_group_size", "statistics"), [
    (_ROWS, True), (2, True), (1, True), (_ROWS, False), (2, ["uid", "none_int"]),
])
def test_a_column_null_in_every_row_is_read_as_decoding_gives_it(
    tmp_path: Path, row_group_size: int, statistics: bool | list[str],
) -> None:
    path = tmp_path / "part.parquet"
    pq.write_table(_table(), path, row_group_size=row_group_size, write_statistics=statistics)
    footer = pq.read_metadata(path)
    null = _null_columns(footer)
    expected = {"none_int", "none_text", "none_flag"}
    if statistics is False:
        expected = set()
    elif isinstance(statistics, list):
        expected = {"none_int"}
    if row_group_size == 1 and statistics is True:
        assert "late_double" not in null  # null in five row groups of six
    assert null == expected
    schema = _SCHEMA.append(pa.field("added_later", pa.string()))
    files = DataFiles(schema, (str(path),), pafs.LocalFileSystem())
    for columns in ([f.name for f in schema], ["none_int"], ["uid", "none_text", "added_later"],
                    ["none_list", "none_struct", "empty_lists", "late_double"]):
        for _ in range(2):  # the footer read, then kept
            read = files.read(str(path), columns)
            assert read.equals(_decoded(path, schema, columns)), columns
            assert read.schema == pa.schema([schema.field(c) for c in columns])


def test_columns_null_in_every_row_are_not_decoded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Asked for every column, pyarrow decodes the others only (fails where every column is
    decoded)."""
    path = tmp_path / "part.parquet"
    pq.write_table(_table(), path, row_group_size=2)
    decoded: list[list[str]] = []
    read = pq.ParquetFile.read

    def spy(self: pq.ParquetFile, columns: list[str] | None = None, **kwargs: object) -> pa.Table:
        decoded.append(list(columns or []))
        return read(self, columns=columns, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(pq.ParquetFile, "read", spy)
    files = DataFiles(_SCHEMA, (str(path),), pafs.LocalFileSystem())
    files.read(str(path), _SCHEMA.names)
    assert decoded == [[n for n in _SCHEMA.names if n not in {"none_int", "none_text",
                                                               "none_flag"}]]


def test_a_column_stored_with_another_type_is_cast(tmp_path: Path) -> None:
    """``read`` and ``values`` give the schema's type where the file stores another (cast,
    as before), and the stored arrays as they are where it stores the schema's (a cast to
    its own type gives the same arrays: not made)."""
    path = tmp_path / "part.parquet"
    pq.write_table(_table(), path, row_group_size=2)
    schema = pa.schema([("uid", pa.large_string()), ("some_text", pa.string()),
                        ("blob", pa.large_binary()), ("late_double", pa.float64()),
                        ("none_int", pa.int64())])
    files = DataFiles(schema, (str(path),), pafs.LocalFileSystem())
    expected = _decoded(path, schema, schema.names)
    read = files.read(str(path), schema.names)
    assert read.equals(expected) and read.schema == schema
    assert files.values(str(path), schema.names) == {
        c: expected.column(c).to_pylist() for c in schema.names}
