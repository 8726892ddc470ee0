"""Typed catalog values from a de-identified header in DICOM JSON form.

The ingest pipeline already serialises every header to DICOM JSON (PS3.18 F.2),
where DS/IS and binary numbers are parsed; reading the promoted columns from that
dict avoids converting pydicom elements a second time.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pyarrow as pa
from pydicom.datadict import tag_for_keyword
from pydicom.valuerep import DA, DT, TM

from lake.catalog._schema import DICOM_COLUMNS, Column

__all__ = ["dicom_values"]


def _json_key(keyword: str) -> str:
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise KeyError(keyword)
    return f"{tag:08X}"


_KEYS: dict[str, str] = {
    c.name: _json_key(c.name) for c in DICOM_COLUMNS if c.name != "TransferSyntaxUID"
}


def _date(value: Any) -> dt.date | None:
    try:
        parsed = DA(str(value)) if value else None
    except ValueError:
        return None
    return dt.date(parsed.year, parsed.month, parsed.day) if isinstance(parsed, dt.date) else None


def _time(value: Any) -> str | None:
    try:
        parsed = TM(str(value)) if value else None
    except ValueError:
        return None
    if not isinstance(parsed, dt.time):
        return None
    return dt.time(parsed.hour, parsed.minute, parsed.second, parsed.microsecond).isoformat()


def _datetime(value: Any) -> dt.datetime | None:
    try:
        parsed = DT(str(value)) if value else None
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


def _scalar(value: Any, column: Column, type_: pa.DataType) -> Any:
    if value is None or value == "":
        return None
    if column.sql_cast == "TIME":
        return _time(value)
    if pa.types.is_date32(type_):
        return _date(value)
    if pa.types.is_timestamp(type_):
        return _datetime(value)
    if pa.types.is_floating(type_):
        return _float(value)
    if pa.types.is_integer(type_):
        return _int(value)
    if isinstance(value, dict):  # a person name: its alphabetic group
        return str(value.get("Alphabetic", "")) or None
    return str(value)


def dicom_values(header: dict[str, Any], transfer_syntax: str | None) -> dict[str, Any]:
    """The catalog's DICOM columns, typed as the schema declares.

    Parameters
    ----------
    header : dict
        The de-identified header as DICOM JSON (``Dataset.to_json_dict`` form).
    transfer_syntax : str or None
        The instance's transfer syntax UID (from its file meta).

    Values that cannot be parsed into the column's type (a malformed date, a
    non-numeric DS) become null; the raw value remains in ``header_json``.
    """
    row: dict[str, Any] = {}
    for column in DICOM_COLUMNS:
        if column.name == "TransferSyntaxUID":
            row[column.name] = transfer_syntax
            continue
        values = header.get(_KEYS[column.name], {}).get("Value") or []
        if pa.types.is_list(column.type):
            items = [_scalar(v, column, column.type.value_type) for v in values]
            row[column.name] = [v for v in items if v is not None] or None
        else:
            row[column.name] = _scalar(values[0], column, column.type) if values else None
    if row["NumberOfFrames"] is None and "7FE00010" in header:
        row["NumberOfFrames"] = 1
    return row
