"""The catalog's write path builds its Arrow arrays without pandas (lake/catalog/_arrow_values.py):
the same arrays as ``pa.array``, and a commit (the key index's upkeep included) that never
imports pandas (0.19-0.25 s of CPU at an ingest's first commit before)."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from pydicom.valuerep import DT, VR

from lake.catalog._arrow_values import _built, arrow_array, empty_table, numpy_array, python_table
from lake.catalog._schema import BATCHES, INSTANCES

ROOT = Path(__file__).resolve().parents[1]

_PLUS_TWO = dt.timezone(dt.timedelta(hours=2))

BUILT: list[tuple[pa.DataType, list[Any]]] = [
    (pa.string(), ["a", None, "é ü 漢字", "", "x" * 70_000]),
    (pa.string(), [None, None]),
    (pa.string(), [VR.OW, type("Named", (str,), {"encode": lambda *_: b"?"})("b")]),  # subclasses
    (pa.string(), []),
    (pa.binary(), [b"\x00\x01", None, b""]),
    (pa.int64(), [1, None, -(2**63), 2**63 - 1, 0]),
    (pa.float64(), [1.5, None, 3, -0.0, float("inf"), float("nan"), 2**53, -(2**53)]),
    (pa.bool_(), [True, False, None, True, True, False, False, True, None]),
    (pa.date32(), [dt.date(2020, 1, 2), None, dt.date(1900, 1, 1), dt.date(9999, 12, 31)]),
    (pa.timestamp("us", tz="UTC"), [
        dt.datetime(2026, 12, 7, 1, 2, 3, 456789, tzinfo=dt.UTC), None,
        dt.datetime(2026, 1, 1, tzinfo=_PLUS_TWO),  # converted to UTC
        dt.datetime(1960, 5, 5, 1, 1, 1, 1),  # naive: read as UTC
        DT("20200102030405.123456"), DT("20200102030405.5+0200"),  # pydicom's DT
    ]),
    (pa.timestamp("us"), [dt.datetime(2026, 12, 7, 1, 2, 3, 456789), None]),
    (pa.list_(pa.string()), [["a", None], None, [], ["b"]]),
    (pa.list_(pa.float64()), [[1.0, 2], None, [], [None]]),
    (pa.list_(pa.int64()), [[1, 2], None, [], [None, 3]]),
    (pa.map_(pa.string(), pa.int64()), [[("a", 1), ("b", None)], None, []]),
]

LEFT_TO_PYARROW: list[tuple[pa.DataType, list[Any]]] = [
    (pa.string(), ["\ud800"]),  # a lone surrogate (pyarrow's error)
    (pa.float64(), [1.0, 2**53 + 1]),  # an int a double cannot hold (pyarrow's error)
    (pa.float64(), [np.float32(1.5)]),
    (pa.int64(), [1, True]),
    (pa.int64(), [2**64]),
    (pa.date32(), [dt.datetime(2020, 1, 2, 3)]),  # a datetime for a date
    (pa.list_(pa.int64()), [(1, 2)]),  # a tuple for a list
    (pa.map_(pa.string(), pa.int64()), [{"a": 1}]),
    (pa.map_(pa.string(), pa.int64()), [[(None, 1)]]),  # a null key (pyarrow's error)
    (pa.struct([("a", pa.int64())]), [{"a": 1}]),
]


def _same(built: pa.Array, expected: pa.Array) -> None:
    built.validate(full=True)
    assert built.type == expected.type
    assert built.null_count == expected.null_count
    # repr: NaN equals NaN, and -0.0 differs from 0.0
    assert repr(built.to_pylist()) == repr(expected.to_pylist())
    if not any(isinstance(v, float) and v != v for v in expected.to_pylist()):
        assert built.equals(expected)


@pytest.mark.parametrize(("type_", "values"), BUILT, ids=[str(t) for t, _ in BUILT])
def test_built_from_buffers_as_pyarrow_converts(type_: pa.DataType, values: list[Any]) -> None:
    built = _built(values, type_)
    assert built is not None, "built from buffers, not left to pyarrow"
    _same(built, pa.array(values, type_))


@pytest.mark.parametrize(("type_", "values"), LEFT_TO_PYARROW,
                         ids=[f"{t}-{i}" for i, (t, _) in enumerate(LEFT_TO_PYARROW)])
def test_other_values_are_left_to_pyarrow(type_: pa.DataType, values: list[Any]) -> None:
    """Values of another type are converted (or refused) by pyarrow itself, never coerced."""
    assert _built(values, type_) is None
    try:
        expected = pa.array(values, type_)
    except (pa.ArrowException, OverflowError, TypeError, ValueError) as exc:
        with pytest.raises(type(exc)):
            arrow_array(values, type_)
    else:
        _same(arrow_array(values, type_), expected)


def test_numpy_and_tables_as_pyarrow_builds_them() -> None:
    for dtype, type_ in ((np.uint64, pa.uint64()), (np.int32, pa.int32()),
                         (np.int64, pa.int64()), (np.float64, pa.float64())):
        values = np.array([3, 0, 2**31 - 1], dtype=dtype)
        _same(numpy_array(values[::2], type_), pa.array(values[::2], type_))  # (a strided view)
    with pytest.raises(AssertionError, match="one-dimensional"):  # a caller's defect, not a
        numpy_array(np.zeros((2, 2), np.int64), pa.int64())        # LakeError for users
    rows = [{"batch_id": "a", "files_seen": 3, "actions": [("keep", 2)],
             "started_at": dt.datetime(2026, 12, 7, tzinfo=dt.UTC), "unknown": 1},
            {"batch_id": "b"}]
    schema = BATCHES.schema
    assert python_table(rows, schema).equals(pa.Table.from_pylist(rows, schema=schema))
    assert empty_table(INSTANCES.schema).equals(INSTANCES.schema.empty_table())


def test_commits_and_the_key_index_do_not_import_pandas(tmp_path: Path) -> None:
    """An ingest in one process, a commit per file (the key index's upkeep writes a segment
    after 8 data files, and judging then reads it), then the same files again (duplicates,
    judged through the index): pandas is never imported."""
    from pydicom import dcmread
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    source = tmp_path / "src"
    source.mkdir()
    ct = dcmread(get_testdata_file("CT_small.dcm"))
    for n in range(12):  # 12 instances, so 12 data files: a key index segment after 8
        ct.SOPInstanceUID = ct.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ct.save_as(source / f"{n}.dcm")
    script = """
import sys
from pathlib import Path
import lake
from lake.catalog._key_index import segments

work = Path(sys.argv[1])
lk = lake.init(work / "lake", vault=work / "vault")
first = lk.ingest([sys.argv[2]], vault=work / "vault", scheduler="sync", batch_size=1)
again = lk.ingest([sys.argv[2]], vault=work / "vault", scheduler="sync", batch_size=1)
print(first.ingested, again.ingested, len(segments(str(work / "lake" / "tables" / "instances"))),
      "pandas" in sys.modules)
"""
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path), str(source)],
                          cwd=ROOT, text=True, capture_output=True, timeout=600)
    assert done.returncode == 0, done.stderr
    ingested, again, indexed, pandas = done.stdout.split()
    assert int(ingested) == 12 and int(again) == 0
    assert int(indexed) >= 1, "the key index was written (and read by the second ingest)"
    assert pandas == "False"
