"""Python values and NumPy arrays as Arrow arrays, without importing pandas.

pyarrow imports pandas the first time it converts Python values or a NumPy array (``pa.array``,
``pa.scalar``, ``Table.from_pylist`` and ``pa.table`` of lists all ask whether the object is a
pandas one): 0.19-0.25 s of CPU in every process that commits a batch, the driver of
``lake ingest`` included (docs/performance.md, "Ingest: where the time goes"). The catalog's
write path builds its arrays here instead, from buffers, for the types its rows hold (strings,
binary, booleans, 64-bit integers and doubles, dates, microsecond timestamps, lists and maps of
these), each value of its column's plain Python type (``str`` or a subclass for a string column,
``int`` or ``float`` for a double...). Anything else (another type, a column over 2 GiB)
is converted by ``pa.array``: the same array (``tests/test_catalog_arrow_values.py``), after
pandas is imported.

Examples
--------
>>> import pyarrow as pa
>>> arrow_array(["a", None, "bc"], pa.string()).to_pylist()
['a', None, 'bc']
>>> arrow_array([[1.5], None, []], pa.list_(pa.float64())).to_pylist()
[[1.5], None, []]
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt
    import pyarrow as pa

__all__ = ["arrow_array", "empty_table", "numpy_array", "python_table"]

_EPOCH_DAY = dt.date(1970, 1, 1)
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_NAIVE_EPOCH = dt.datetime(1970, 1, 1)
_MICROSECOND = dt.timedelta(microseconds=1)
_LARGEST_OFFSET = 2**31 - 1  # string, binary and list offsets are int32
_EXACT_IN_DOUBLE = 2**53  # pyarrow refuses an int beyond this for a double column


def numpy_array(values: npt.NDArray[Any], type_: pa.DataType) -> pa.Array:
    """A one-dimensional NumPy array of fixed-width numbers as an Arrow array of ``type_`` (no
    nulls; ``pa.array(values, type_)``): its buffer cast to ``type_``'s width, then shared.

    Internal: its callers (the key index's segments) hold one-dimensional columns they made,
    never a user's value, so another shape is a defect in the caller, asserted, not a
    ``LakeError`` for anyone to act on.
    """
    import numpy as np
    import pyarrow as pa

    dtype = np.dtype(f"<{'u' if pa.types.is_unsigned_integer(type_) else 'i'}{type_.byte_width}")
    if pa.types.is_floating(type_):
        dtype = np.dtype(f"<f{type_.byte_width}")
    array = np.ascontiguousarray(values, dtype=dtype)
    if array.ndim != 1:  # kept under ``python -O``: a 2-D column would be misread silently
        raise AssertionError(f"numpy_array takes a one-dimensional array, not {array.shape}")
    return pa.Array.from_buffers(type_, len(array), [None, pa.py_buffer(array)])


def arrow_array(values: Sequence[Any], type_: pa.DataType) -> pa.Array:
    """``pa.array(values, type_)``; built without pandas when the values allow (module docs)."""
    import pyarrow as pa

    built = _built(values, type_)
    return pa.array(values, type_) if built is None else built


def python_table(rows: Sequence[Mapping[str, Any]], schema: pa.Schema) -> pa.Table:
    """``pa.Table.from_pylist(rows, schema=schema)`` through :func:`arrow_array`: a column a
    row does not name is null there; names a row holds beyond ``schema`` are ignored."""
    import pyarrow as pa

    columns = [arrow_array([row.get(f.name) for row in rows], f.type) for f in schema]
    return pa.Table.from_arrays(columns, schema=schema)


def empty_table(schema: pa.Schema) -> pa.Table:
    """``schema.empty_table()`` (one empty chunk a column), which imports pandas."""
    import pyarrow as pa

    return pa.Table.from_arrays([pa.nulls(0, f.type) for f in schema], schema=schema)


def _built(values: Sequence[Any], type_: pa.DataType) -> pa.Array | None:
    """``values`` as an array of ``type_`` from buffers, or None where :func:`arrow_array`
    leaves them to pyarrow."""
    import numpy as np
    import pyarrow as pa

    present = [v for v in values if v is not None]
    count = len(values)
    validity = None
    if len(present) < count:
        mask = np.fromiter((v is not None for v in values), dtype=np.bool_, count=count)
        validity = pa.py_buffer(np.packbits(mask, bitorder="little"))
    kinds = {type(v) for v in present}
    if pa.types.is_string(type_) or pa.types.is_binary(type_):
        text = pa.types.is_string(type_)
        if not (all(issubclass(kind, str) for kind in kinds) if text else kinds <= {bytes}):
            return None
        try:  # (str.encode: a subclass's own text, as pyarrow reads it; pydicom's VR enum)
            data = [str.encode(v) for v in present] if text else present
        except UnicodeEncodeError:  # a lone surrogate: pyarrow says so in its own words
            return None
        offsets = _offsets(_present_lengths(values, [len(v) for v in data]))
        if offsets is None:
            return None
        return pa.Array.from_buffers(
            type_, count, [validity, pa.py_buffer(offsets), pa.py_buffer(b"".join(data))]
        )
    if pa.types.is_list(type_):
        if not kinds <= {list}:
            return None
        offsets = _offsets(_present_lengths(values, [len(v) for v in present]))
        child = _built([item for v in present for item in v], type_.value_type)
        if offsets is None or child is None:
            return None
        return pa.Array.from_buffers(
            type_, count, [validity, pa.py_buffer(offsets)], children=[child]
        )
    if pa.types.is_map(type_):
        return _map(values, present, kinds, type_, validity)
    numbers = _numbers(values, present, kinds, type_)
    if numbers is None:
        return None
    if pa.types.is_boolean(type_):
        data = pa.py_buffer(np.packbits(numbers, bitorder="little"))
    else:
        data = pa.py_buffer(numbers)
    return pa.Array.from_buffers(type_, count, [validity, data])


def _map(
    values: Sequence[Any], present: list[Any], kinds: set[type], type_: pa.MapType,
    validity: pa.Buffer | None,
) -> pa.Array | None:
    """A map column of lists of ``(key, item)`` tuples, or None."""
    import pyarrow as pa

    if not kinds <= {list}:
        return None
    pairs = [pair for v in present for pair in v]
    if any(type(pair) is not tuple or len(pair) != 2 for pair in pairs):
        return None
    offsets = _offsets(_present_lengths(values, [len(v) for v in present]))
    keys = _built([k for k, _ in pairs], type_.key_type)
    items = _built([i for _, i in pairs], type_.item_type)
    if offsets is None or keys is None or items is None or keys.null_count:
        return None  # a null key: pyarrow's error
    entries = pa.StructArray.from_arrays([keys, items], fields=[type_.key_field, type_.item_field])
    return pa.Array.from_buffers(
        type_, len(values), [validity, pa.py_buffer(offsets)], children=[entries]
    )


def _numbers(
    values: Sequence[Any], present: list[Any], kinds: set[type], type_: pa.DataType
) -> np.ndarray[Any, Any] | None:
    """The fixed-width values of ``values`` (0 where null) as NumPy, or None."""
    import numpy as np
    import pyarrow as pa

    count = len(values)
    if pa.types.is_boolean(type_) and kinds <= {bool}:
        return np.fromiter((v is True for v in values), dtype=np.bool_, count=count)
    if type_ == pa.int64() and kinds <= {int}:
        try:
            return np.fromiter((0 if v is None else v for v in values), np.int64, count)
        except OverflowError:  # beyond 64 bits: pyarrow's error
            return None
    if type_ == pa.float64() and kinds <= {float, int}:
        if any(type(v) is int and abs(v) > _EXACT_IN_DOUBLE for v in present):
            return None
        return np.fromiter((0.0 if v is None else v for v in values), np.float64, count)
    if type_ == pa.date32() and kinds <= {dt.date}:
        days = ((v - _EPOCH_DAY).days if v is not None else 0 for v in values)
        return np.fromiter(days, np.int32, count)
    if (pa.types.is_timestamp(type_) and type_.unit == "us" and type_.tz in (None, "UTC")
            and all(issubclass(kind, dt.datetime) for kind in kinds)):  # pydicom's DT too
        return np.fromiter((_microseconds(v) for v in values), np.int64, count)
    return None


def _microseconds(value: dt.datetime | None) -> int:
    """Microseconds since the epoch, as pyarrow stores a datetime (a naive one as it reads)."""
    if value is None:
        return 0
    epoch = _NAIVE_EPOCH if value.tzinfo is None or value.utcoffset() is None else _EPOCH
    return (value - epoch) // _MICROSECOND


def _present_lengths(values: Sequence[Any], lengths: list[int]) -> list[int]:
    """``lengths`` (one per value that is not None) with a 0 for each None of ``values``."""
    found = iter(lengths)
    return [0 if v is None else next(found) for v in values]


def _offsets(lengths: list[int]) -> np.ndarray[Any, Any] | None:
    """The int32 offsets of items of ``lengths``, or None beyond int32 (pyarrow then chunks)."""
    import numpy as np

    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    if offsets[-1] > _LARGEST_OFFSET:
        return None
    return offsets.astype(np.int32)
