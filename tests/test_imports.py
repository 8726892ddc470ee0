"""Commands import only what they use (issue 14.1): checked by module, never by timing.

Every ``lake`` command is a new process; heavy imports (Dask, nibabel, pynetdicom, deltalake,
pydicom, rich's progress bars) cost a second before anything happens. These tests run a fresh
interpreter and list the modules it loaded.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

import lake

_LOADED = """
import json, sys
{setup}
print(json.dumps(sorted(sys.modules)))
"""

_RUN_CLI = """
from pipelines.cli import app
try:
    app({args!r})
except SystemExit:
    pass
"""

HEAVY = ("dask", "distributed", "nibabel", "pynetdicom", "deltalake", "pydicom")
"""Never loaded by ``import lake`` or ``lake --help``."""


def _loaded(setup: str, env: dict[str, str] | None = None) -> set[str]:
    proc = subprocess.run(
        [sys.executable, "-c", _LOADED.format(setup=setup)],
        capture_output=True, text=True, check=True, env=env,
    )
    return set(json.loads(proc.stdout.strip().splitlines()[-1]))


def _present(modules: set[str], names: tuple[str, ...]) -> list[str]:
    return sorted(n for n in names if n in modules or any(m.startswith(n + ".") for m in modules))


def test_import_lake_is_light() -> None:
    modules = _loaded("import lake")
    assert _present(modules, (*HEAVY, "rich")) == []


def test_help_is_light() -> None:
    modules = _loaded(_RUN_CLI.format(args=["--help"]))
    assert _present(modules, (*HEAVY, "duckdb", "rich.progress", "typer.rich_utils")) == []


@pytest.mark.parametrize("command", [["export", "--help"], ["serve", "--help"],
                                     ["profiles", "--help"], ["ingest", "--help"]])
def test_subcommand_help_is_light(command: list[str]) -> None:
    modules = _loaded(_RUN_CLI.format(args=command))
    assert _present(modules, (*HEAVY, "rich.progress", "typer.rich_utils")) == []


def test_sql_loads_no_ingest_export_or_network_stack(tmp_path: Path) -> None:
    """Nor pydantic: its parameters are plain (pipelines/_params.py)."""
    lk = lake.init(tmp_path / "lake", vault=tmp_path / "vault")
    ct = get_testdata_file("CT_small.dcm")
    assert ct is not None
    lk.ingest([ct], vault=tmp_path / "vault", scheduler="sync")
    args = ["sql", "--lake", str(tmp_path / "lake"), "SELECT count(*) AS n FROM instances"]
    modules = _loaded(_RUN_CLI.format(args=args))
    assert "duckdb" in modules  # the query ran
    assert _present(
        modules, ("dask", "distributed", "nibabel", "pynetdicom", "pydicom", "rich.progress",
                  "pydantic", "pydantic_core", "typer._adapters")
    ) == []


@pytest.mark.parametrize("fmt", ["table", "json"])
def test_sql_loads_no_pyarrow_or_numpy(tmp_path: Path, fmt: str) -> None:
    """The catalog is declared, opened and printed without pyarrow (and numpy, which it
    imports): a quarter of `lake sql`'s start-up. CSV and Parquet output still use it. A local
    lake is opened without fsspec (which imports asyncio)."""
    lk = lake.init(tmp_path / "lake", vault=tmp_path / "vault")
    ct = get_testdata_file("CT_small.dcm")
    assert ct is not None
    lk.ingest([ct], vault=tmp_path / "vault", scheduler="sync")
    root = str(tmp_path / "lake")
    for query in ("SELECT count(*) AS n FROM instances", "SELECT * FROM series",
                  "SELECT * FROM batches", "SELECT * FROM instances"):
        modules = _loaded(_RUN_CLI.format(args=["sql", "--lake", root, "-f", fmt, query]))
        assert "duckdb" in modules  # the query ran
        assert _present(modules, ("pyarrow", "numpy", "pandas", "fsspec",
                                  "rich._emoji_codes")) == [], query
    csv = _loaded(_RUN_CLI.format(args=["sql", "--lake", root, "-f", "csv",
                                        "SELECT count(*) FROM instances"]))
    assert "pyarrow" in csv  # the negative control: this check sees pyarrow when it loads


def test_declared_types_match_pyarrow() -> None:
    """Each column's DuckDB type, declared without pyarrow, is the one its Arrow type maps to."""
    from lake.catalog import TABLES
    from lake.catalog._scan import duckdb_type

    pairs = [(t.name, c.name, c.duckdb_type, duckdb_type(c.type))
             for t in TABLES for c in t.columns]
    assert len(pairs) > 100
    assert [p for p in pairs if p[2] != p[3]] == []


@pytest.mark.parametrize("fmt", ["table", "json"])
def test_sql_printing_timestamps_loads_no_pandas(tmp_path: Path, fmt: str) -> None:
    """pyarrow converts a time-zone-aware timestamp through pandas when pandas is installed
    (0.3 s): the CLI gives the zone itself, with the same values."""
    lk = lake.init(tmp_path / "lake", vault=tmp_path / "vault")
    ct = get_testdata_file("CT_small.dcm")
    assert ct is not None
    lk.ingest([ct], vault=tmp_path / "vault", scheduler="sync")
    query = "SELECT SeriesInstanceUID, first_ingested_at, last_ingested_at FROM series"
    args = ["sql", "--lake", str(tmp_path / "lake"), "-f", fmt, query]
    modules = _loaded(_RUN_CLI.format(args=args))
    assert "duckdb" in modules and "pandas" not in modules
    (ingested,) = lk.sql("SELECT first_ingested_at FROM series").fetchall()[0]
    from typer.testing import CliRunner

    from pipelines.cli import app

    written = tmp_path / "out.txt"  # the table is printed 200 characters wide there
    printed = CliRunner().invoke(app, [*args, "--output", str(written)])
    assert printed.exit_code == 0, printed.output
    if fmt == "json":
        assert json.loads(written.read_text())[0]["first_ingested_at"] == ingested.isoformat()
    else:
        assert str(ingested) in written.read_text()


def test_small_nifti_export_loads_no_cluster_bids_deid_or_pandas(tmp_path: Path) -> None:
    """`lake export nifti` of a small cohort runs in this process (no dask/distributed) and
    imports only the NIfTI exporter: not the BIDS rules, the teaching-set renderer or the
    de-identification engine (lake.export names each exporter lazily). It reads the cohort
    and its members' rows with pyarrow.parquet, not pyarrow.dataset, which imports pandas,
    and without pyarrow.compute (~0.03 s of CPU: loaded by the first cast, filter or sort;
    DataFiles.values, the members chosen in Python).
    A saved cohort is read from its Delta table without the SQL engine (duckdb: 0.1 s of CPU,
    issue 14.2), and nothing of ingest, the query index, the servers, the vault's password
    hashing or the access layer is loaded; with --quiet, no rich at all (no progress bar,
    the summary printed as plain lines: rich's console and table, ~0.02 s). A local
    lake's blobs and data files are read without fsspec (which imports asyncio). The command
    line's plain values are converted without pydantic (pipelines/_params.py)."""
    from lake.export import create_cohort
    from tests.series import write_ct_series

    lk = lake.init(tmp_path / "lake", vault=tmp_path / "vault")
    files = write_ct_series(tmp_path / "ct", n=4)
    lk.ingest([str(f) for f in files], vault=tmp_path / "vault", scheduler="sync")
    create_cohort(lk, "small", "SELECT SeriesInstanceUID FROM series")
    out = tmp_path / "out"
    args = ["export", "nifti", "small", "--lake", str(tmp_path / "lake"), "--out", str(out), "-q"]
    modules = _loaded(_RUN_CLI.format(args=args))
    assert len(list(out.rglob("*.nii"))) == 1  # the export ran
    assert "lake.export._to_nifti" in modules
    assert _present(modules, ("dask", "distributed", "lake.deid", "lake.export._bids",
                              "lake.export._bids_rules", "lake.export._teaching",
                              "pandas", "pyarrow.dataset", "pyarrow.compute", "duckdb",
                              "_duckdb", "deltalake.fs",
                              "lake.catalog._query", "lake.ingest", "lake.query", "lake.net",
                              "lake.web", "lake.access", "lake.steward", "pynetdicom",
                              "argon2", "starlette", "jinja2", "rich", "fsspec",
                              "asyncio", "pydantic", "pydantic_core", "typer._adapters",
                              "multiprocessing", "concurrent.futures.process",
                              # np.median's NaN check (lake.nifti._geometry._median instead)
                              "numpy.ma")) == []


@pytest.mark.parametrize("args", [
    ["export", "nifti", "--help"], ["export", "nifti"], ["export", "--help"], ["export"],
    ["export", "nosuch"], ["export", "documents", "--help"], ["serve", "web", "--help"],
    ["serve", "--help"], ["cohort", "list", "--help"], ["quarantine"], ["demo", "--help"],
    ["sql", "--help"], ["sql"], ["--help"], ["nosuch"], [],
])
def test_entry_point_builds_only_the_command_it_runs(args: list[str]) -> None:
    """`lake` (the console script) hands Typer only the command named on the command line
    (and of a group, only the subcommand named); what it prints and its exit code are those
    of the full app: help, usage errors, suggestions."""
    from typer.testing import CliRunner

    from pipelines.cli import _app_for, app

    chosen = _app_for(args)
    if args and args[0] != "nosuch" and not args[0].startswith("-"):
        assert chosen is not app
        assert len(chosen.registered_commands) + len(chosen.registered_groups) == 1
    else:
        assert chosen is app
    lean, full = CliRunner().invoke(chosen, args), CliRunner().invoke(app, args)
    assert (lean.exit_code, lean.output) == (full.exit_code, full.output)


def test_ingest_workers_code_loads_no_threaded_library() -> None:
    """What an ingest's pool workers run (reading, de-identifying, encoding, the documents and
    NIfTI hooks, the catalog's row values) loads neither pyarrow, delta-rs, DuckDB nor Dask:
    their native threads would make the pool spawn its workers (a second of CPU each) instead
    of forking them (lake.compute._pool.fork_safe), and the workers would import them for
    nothing. The driver loads them at its first commit."""
    modules = _loaded(
        "import lake.ingest, lake.ingest._run, lake.documents, lake.nifti._derive\n"
        "from lake.catalog import dicom_values, INSTANCES\n"
        "from lake.compute._pool import fork_safe\n"
        "assert fork_safe()",
        # As under `lake` (pipelines.cli.main): numpy's OpenBLAS starts no thread of its own.
        # The test passed in the whole suite only because an in-process main() had set it.
        env={**os.environ, "OPENBLAS_NUM_THREADS": "1"},
    )
    assert _present(modules, ("pyarrow", "deltalake", "duckdb", "dask", "distributed",
                              "pandas")) == []


def test_small_nifti_export_by_query_loads_no_fsspec_or_cluster(tmp_path: Path) -> None:
    """`lake export nifti --sql QUERY` (a one-off cohort: the SQL engine runs it) on a local
    lake: no fsspec (it imports asyncio: the catalog pinned to the query's version looked up
    the next commit's time through it), no cluster, no other exporter, no pydantic."""
    from tests.series import write_ct_series

    lk = lake.init(tmp_path / "lake", vault=tmp_path / "vault")
    files = write_ct_series(tmp_path / "ct", n=4)
    lk.ingest([str(f) for f in files], vault=tmp_path / "vault", scheduler="sync")
    out = tmp_path / "out"
    args = ["export", "nifti", "--sql", "SELECT SeriesInstanceUID FROM series",
            "--lake", str(tmp_path / "lake"), "--out", str(out), "-q"]
    modules = _loaded(_RUN_CLI.format(args=args))
    assert len(list(out.rglob("*.nii"))) == 1  # the export ran
    assert "duckdb" in modules  # the query ran
    assert _present(modules, ("fsspec", "asyncio", "dask", "distributed", "lake.deid",
                              "lake.export._bids", "lake.export._teaching", "pandas",
                              "pyarrow.dataset", "lake.ingest", "lake.net", "lake.web",
                              "pydantic", "rich.progress", "multiprocessing")) == []


_RUN_MAIN = """
import atexit, json, sys
sys.argv = ["lake", *{args!r}]

def report():
    loaded = sorted(sys.modules)
    import requests  # another import of requests in the same process is untouched
    import pydicom.data.download as download
    finders = [type(f).__name__ for f in sys.meta_path]
    print(json.dumps([loaded, requests.__name__, download.HAVE_REQUESTS, finders]))

atexit.register(report)
from pipelines.cli import main
main()
"""


def test_cli_imports_pydicom_without_requests(tmp_path: Path) -> None:
    """The console script keeps pydicom's download module from importing requests (with
    urllib3 and http.client: 0.04-0.07 s of CPU) for a small NIfTI export, and nothing
    else: requests imports as usual afterwards in the same process, and pydicom downloads
    with urllib (HAVE_REQUESTS false). Without the console script (the library, a notebook)
    pydicom imports requests as it always did: the negative control."""
    from tests.series import write_ct_series

    lk = lake.init(tmp_path / "lake", vault=tmp_path / "vault")
    files = write_ct_series(tmp_path / "ct", n=4)
    lk.ingest([str(f) for f in files], vault=tmp_path / "vault", scheduler="sync")
    args = ["export", "nifti", "--sql", "SELECT SeriesInstanceUID FROM series",
            "--lake", str(tmp_path / "lake"), "--out", str(tmp_path / "out"), "-q"]
    proc = subprocess.run([sys.executable, "-c", _RUN_MAIN.format(args=args)],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    loaded, requests_name, have_requests, finders = json.loads(
        proc.stdout.strip().splitlines()[-1])
    assert "_PydicomDownloadsWithoutRequests" not in finders  # it left once it had refused
    assert len(list((tmp_path / "out").rglob("*.nii"))) == 1  # the export ran
    assert "pydicom" in loaded and "lake.nifti._part10" in loaded
    assert _present(set(loaded), ("requests", "urllib3", "charset_normalizer")) == []
    assert (requests_name, have_requests) == ("requests", False)
    library = _loaded("import pydicom")
    assert "requests" in library  # the negative control: this check sees requests when it loads
