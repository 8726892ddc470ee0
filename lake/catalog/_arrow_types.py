"""The Arrow types of the catalog's schema, declared without importing pyarrow.

``lake sql`` needs the catalog's column names and their DuckDB types, never an Arrow type:
importing pyarrow (and numpy, which it imports) is a quarter of that command's start-up
(issue 14.1, ``docs/performance.md`` "Start-up"). ``lake/catalog/_schema.py`` declares its
columns with the factories below, spelled as pyarrow's (``string()``, ``list_(...)``,
``timestamp("us", tz="UTC")``...); each :class:`ArrowType` gives the pyarrow type on first
use (:meth:`ArrowType.arrow`, which imports pyarrow) and its DuckDB type without it
(:meth:`ArrowType.duckdb`).

Examples
--------
>>> list_(struct([field("a", string())])).duckdb()
'STRUCT("a" VARCHAR)[]'
>>> timestamp("us", tz="UTC").arrow()
TimestampType(timestamp[us, tz=UTC])
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = [
    "ArrowField",
    "ArrowType",
    "binary",
    "bool_",
    "date32",
    "field",
    "float64",
    "int64",
    "list_",
    "map_",
    "string",
    "struct",
    "timestamp",
]

# pyarrow's factory name -> DuckDB type, for the types without parameters.
_SIMPLE = {
    "string": "VARCHAR",
    "binary": "BLOB",
    "bool_": "BOOLEAN",
    "int64": "BIGINT",
    "float64": "DOUBLE",
    "date32": "DATE",
}


@dataclass(frozen=True)
class ArrowField:
    """A named field of a struct type."""

    name: str
    type: ArrowType


@dataclass(frozen=True)
class ArrowType:
    """One Arrow type: the pyarrow factory that makes it and its arguments."""

    factory: str
    unit: str | None = None
    tz: str | None = None
    items: tuple[ArrowType, ...] = ()
    fields: tuple[ArrowField, ...] = ()

    def arrow(self) -> pa.DataType:
        """The pyarrow type (imports pyarrow)."""
        return _arrow(self)

    def duckdb(self) -> str:
        """The DuckDB type DuckDB's Parquet reader gives a column of this type."""
        if self.factory in _SIMPLE:
            return _SIMPLE[self.factory]
        if self.factory == "timestamp":
            return "TIMESTAMPTZ" if self.tz else "TIMESTAMP"
        if self.factory == "list_":
            return self.items[0].duckdb() + "[]"
        if self.factory == "map_":
            return f"MAP({self.items[0].duckdb()}, {self.items[1].duckdb()})"
        if self.factory == "struct":
            return "STRUCT(" + ", ".join(f'"{f.name}" {f.type.duckdb()}'
                                         for f in self.fields) + ")"
        raise TypeError(f"no DuckDB type for {self.factory}")  # pragma: no cover

    def __str__(self) -> str:
        return str(self.arrow())


@cache
def _arrow(declared: ArrowType) -> pa.DataType:
    import pyarrow as pa

    if declared.factory == "timestamp":
        return pa.timestamp(declared.unit or "us", tz=declared.tz)
    if declared.factory == "list_":
        return pa.list_(declared.items[0].arrow())
    if declared.factory == "map_":
        return pa.map_(declared.items[0].arrow(), declared.items[1].arrow())
    if declared.factory == "struct":
        return pa.struct([pa.field(f.name, f.type.arrow()) for f in declared.fields])
    factory = getattr(pa, declared.factory)
    return factory()


def string() -> ArrowType:
    return ArrowType("string")


def binary() -> ArrowType:
    return ArrowType("binary")


def bool_() -> ArrowType:
    return ArrowType("bool_")


def int64() -> ArrowType:
    return ArrowType("int64")


def float64() -> ArrowType:
    return ArrowType("float64")


def date32() -> ArrowType:
    return ArrowType("date32")


def timestamp(unit: str, tz: str | None = None) -> ArrowType:
    return ArrowType("timestamp", unit=unit, tz=tz)


def list_(value_type: ArrowType) -> ArrowType:
    return ArrowType("list_", items=(value_type,))


def map_(key_type: ArrowType, item_type: ArrowType) -> ArrowType:
    return ArrowType("map_", items=(key_type, item_type))


def field(name: str, type_: ArrowType) -> ArrowField:
    return ArrowField(name, type_)


def struct(fields: list[ArrowField]) -> ArrowType:
    return ArrowType("struct", fields=tuple(fields))
