"""DuckDB connections for the lake's own queries."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import duckdb


def connect() -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection that prints no progress bar."""
    import duckdb

    con = duckdb.connect()
    without_progress_bar(con)
    return con


def without_progress_bar(con: duckdb.DuckDBPyConnection) -> None:
    """Turn ``con``'s progress bar off where it is on.

    The progress bar would print to the user's terminal. In a Jupyter kernel DuckDB starts
    with it off and refuses any change to it (even to off) unless ipywidgets is installed,
    so it is changed only where it is on.
    """
    ((progress_bar,),) = con.execute("SELECT current_setting('enable_progress_bar')").fetchall()
    if progress_bar:
        con.execute("SET enable_progress_bar = false")
