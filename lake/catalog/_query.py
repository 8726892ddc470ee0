"""DuckDB over the catalog's Delta tables (no DuckDB extension is needed)."""

from __future__ import annotations

from importlib import resources

import duckdb

from lake._errors import QueryError
from lake.catalog._schema import INSTANCES, TABLES
from lake.catalog._tables import DeltaTables

__all__ = ["Catalog"]


def _view_statements() -> list[str]:
    text = resources.files("lake.catalog").joinpath("views.sql").read_text()
    body = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("--"))
    return [stmt.strip() for stmt in body.split(";") if stmt.strip()]


def _select_list(name: str) -> str:
    if name != INSTANCES.name:
        return "*"
    casts = [
        f'CAST("{c.name}" AS {c.sql_cast}) AS "{c.name}"' for c in INSTANCES.columns if c.sql_cast
    ]
    return f"* REPLACE ({', '.join(casts)})" if casts else "*"


class Catalog:
    """A DuckDB connection with the catalog registered: tables ``instances``,
    ``batches``, ``quarantine`` and views ``series``, ``studies``, ``patients``.

    Parameters
    ----------
    tables : DeltaTables
        The lake's Delta tables.
    as_of : int, optional
        Query the ``instances`` table as of this Delta version (time travel).
    """

    def __init__(self, tables: DeltaTables, as_of: int | None = None) -> None:
        self.tables = tables
        self.as_of = as_of
        self.con = duckdb.connect()
        self.versions: dict[str, int] = {}
        for table in TABLES:
            if table.name != INSTANCES.name and not tables.exists(table.name):
                # A lake made by an older release lacks a newer table: it reads as empty
                # (the next 'lake init' or write creates it).
                self.con.register(f"{table.name}_delta", table.schema.empty_table())
            else:
                version = as_of if table.name == INSTANCES.name else None
                delta = tables.open(table.name, version)
                self.versions[table.name] = int(delta.version())
                self.con.register(
                    f"{table.name}_delta", tables.dataset(table.name, delta.version())
                )
            self.con.execute(
                f"CREATE OR REPLACE TEMP VIEW {table.name} AS SELECT {_select_list(table.name)} "
                f"FROM {table.name}_delta"
            )
        for statement in _view_statements():
            self.con.execute(statement)

    @property
    def version(self) -> int:
        """The version of the ``instances`` table this catalog reads."""
        return self.versions["instances"]

    def sql(self, query: str) -> duckdb.DuckDBPyRelation:
        """Run ``query``; returns a DuckDB relation (``.df()``, ``.arrow()``, ``.pl()``).

        Raises
        ------
        QueryError
            If DuckDB rejects the query.
        """
        try:
            return self.con.sql(query)
        except duckdb.Error as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise QueryError(f"query failed: {first}") from None

    def close(self) -> None:
        self.con.close()
