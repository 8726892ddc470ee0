"""Turning a de-identified pydicom Dataset into typed catalog values."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any

import pyarrow as pa
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.valuerep import DA, DT, TM

from lake.catalog._schema import DICOM_COLUMNS, Column

__all__ = ["dicom_values"]


def _as_list(value: Any) -> list[Any]:
    if value is None or value == "":
        return []
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        return [value]
    return list(value)


def _date(value: Any) -> dt.date | None:
    try:
        parsed = DA(value) if value else None
    except ValueError:
        return None
    return dt.date(parsed.year, parsed.month, parsed.day) if isinstance(parsed, dt.date) else None


def _time(value: Any) -> str | None:
    try:
        parsed = TM(value) if value else None
    except ValueError:
        return None
    if not isinstance(parsed, dt.time):
        return None
    return dt.time(parsed.hour, parsed.minute, parsed.second, parsed.microsecond).isoformat()


def _datetime(value: Any) -> dt.datetime | None:
    try:
        parsed = DT(value) if value else None
    except ValueError:
        return None
    if not isinstance(parsed, dt.datetime):
        return None
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=dt.UTC)
    return parsed.astimezone(dt.UTC)


def _float(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        try:
            return int(float(value))
        except (TypeError, ValueError):
            return None


def _scalar(value: Any, type_: pa.DataType, sql_cast: str | None = None) -> Any:
    if value is None or value == "":
        return None
    if isinstance(value, list | tuple | MultiValue):
        values = list(value)
        value = values[0] if values else None
        if value is None:
            return None
    if pa.types.is_date32(type_):
        return _date(value)
    if sql_cast == "TIME":
        return _time(value)
    if pa.types.is_timestamp(type_):
        return _datetime(value)
    if pa.types.is_floating(type_):
        return _float(value)
    if pa.types.is_integer(type_):
        return _int(value)
    return str(value)


def _convert(value: Any, column: Column) -> Any:
    type_ = column.type
    if pa.types.is_list(type_):
        items = [_scalar(v, type_.value_type) for v in _as_list(value)]
        return [v for v in items if v is not None] or None
    return _scalar(value, type_, column.sql_cast)


def dicom_values(ds: Dataset) -> dict[str, Any]:
    """The catalog's DICOM columns for ``ds``, typed as the schema declares.

    Values that cannot be parsed into the column's type (a malformed date, a
    non-numeric DS) become null; the raw value remains in ``header_json``.
    """
    row: dict[str, Any] = {}
    for column in DICOM_COLUMNS:
        if column.name == "TransferSyntaxUID":
            meta = getattr(ds, "file_meta", None)
            value = meta.get("TransferSyntaxUID") if meta is not None else None
        else:
            elem = ds.get(column.name)
            value = None if elem is None else elem
        row[column.name] = _convert(value, column)
    if row["NumberOfFrames"] is None and "PixelData" in ds:
        row["NumberOfFrames"] = 1
    return row
