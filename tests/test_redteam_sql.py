"""Red-team findings (SQL lockdown): regression tests of findings fixed on main.

Each test reproduces one finding of a red-team review; it failed before the fix.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import lake


def test_user_sql_cannot_read_or_write_the_duckdb_temp_directory(
    lk: lake.Lake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Red-team finding, now a regression test:
    with external access disabled, DuckDB still allows its temp directory
    (``allowed_directories`` = ``[<cwd>/.tmp/]``, see ``duckdb_settings()``), so user SQL
    reads and writes files in ``./.tmp/`` of whoever runs it (`lake sql`, Lake.sql, a server).

    lake.catalog._query.locked_connection sets no temp_directory / allowed_directories
    before ``lock_configuration``.
    """
    work = tmp_path / "work"
    (work / ".tmp").mkdir(parents=True)
    (work / ".tmp" / "notes.txt").write_text("SECRET-IN-TMP")
    monkeypatch.chdir(work)
    lk.refresh()
    allowed = lk.sql(
        "SELECT value FROM duckdb_settings() WHERE name = 'allowed_directories'"
    ).fetchall()
    outcomes: dict[str, object] = {}
    for name, query in {
        "read": f"SELECT content FROM read_text('{work}/.tmp/*')",
        "write": f"COPY (SELECT 'pwned' AS a) TO '{work}/.tmp/written.csv'",
    }.items():
        try:
            outcomes[name] = lk.sql(query).fetchall()
        except (lake.QueryError, Exception) as exc:  # noqa: BLE001 - refused either way
            outcomes[name] = type(exc).__name__
    assert not (work / ".tmp" / "written.csv").exists(), (allowed, outcomes)
    assert outcomes["read"] != [("SECRET-IN-TMP",)], (allowed, outcomes)
