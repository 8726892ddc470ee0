"""Typed catalog values from a de-identified header in DICOM JSON form.

The ingest pipeline already serialises every header to DICOM JSON (PS3.18 F.2),
where DS/IS and binary numbers are parsed; reading the promoted columns from that
dict avoids converting pydicom elements a second time.

No pyarrow here: this runs once per instance on ingest's workers, which import only what
that work needs (``docs/performance.md``, "Ingest: where the time goes"). Each column's
converter is chosen once, from the type the schema declares.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from pydicom.datadict import tag_for_keyword
from pydicom.valuerep import DA, DT, TM

from lake.catalog._arrow_types import ArrowType
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


def _text(value: Any) -> str | None:
    if isinstance(value, dict):  # a person name: its alphabetic group
        return str(value.get("Alphabetic", "")) or None
    return str(value)


_BY_FACTORY: dict[str, Callable[[Any], Any]] = {
    "date32": _date,
    "timestamp": _datetime,
    "float64": _float,
    "int64": _int,
}


def _parser(column: Column, declared: ArrowType) -> Callable[[Any], Any]:
    """The function typing one value of ``column`` (of type ``declared``: the column's, or
    its items')."""
    if column.sql_cast == "TIME":
        return _time
    return _BY_FACTORY.get(declared.factory, _text)


_PARSERS: tuple[tuple[str, str, bool, Callable[[Any], Any]], ...] = tuple(
    (
        c.name,
        _KEYS[c.name],
        c.declared.factory == "list_",
        _parser(c, c.declared.items[0] if c.declared.factory == "list_" else c.declared),
    )
    for c in DICOM_COLUMNS
    if c.name != "TransferSyntaxUID"
)
"""Per DICOM column but TransferSyntaxUID: name, DICOM JSON key, whether it is a list,
and the parser of one value."""


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
    row: dict[str, Any] = {"TransferSyntaxUID": transfer_syntax}
    for name, key, is_list, parse in _PARSERS:
        entry = header.get(key)
        values = entry.get("Value") if entry else None
        if not values:
            row[name] = None
        elif is_list:
            items = [parse(v) for v in values if v is not None and v != ""]
            row[name] = [v for v in items if v is not None] or None
        else:
            value = values[0]
            row[name] = None if value is None or value == "" else parse(value)
    if row["NumberOfFrames"] is None and "7FE00010" in header:
        row["NumberOfFrames"] = 1
    return row
