"""The `lake` console script, run as a user runs it: a real subprocess, real files."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

LAKE = str(Path(sys.executable).with_name("lake"))


def run(
    *args: str, env: dict[str, str] | None = None, check_code: int | None = 0
) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("LAKE_")}
    full_env.update(env or {})
    proc = subprocess.run([LAKE, *args], capture_output=True, text=True, env=full_env, timeout=300)
    assert "Traceback" not in proc.stderr, proc.stderr
    if check_code is not None:
        assert proc.returncode == check_code, (proc.returncode, proc.stdout, proc.stderr)
    return proc


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {"LAKE_ROOT": str(tmp_path / "lake"), "LAKE_VAULT": str(tmp_path / "vault")}


@pytest.fixture
def ingested(env: dict[str, str], ct_folder: Path, samples: Path) -> dict[str, str]:
    run("init", env=env)
    run("ingest", "--scheduler", "threads", "-q", str(ct_folder), str(samples), env=env)
    return env


def test_help_documents_exit_codes() -> None:
    proc = run("--help")
    assert "Exit codes" in proc.stdout and "quarantined" in proc.stdout
    for command in ("init", "ingest", "sql", "info", "verify", "demo"):
        assert command in proc.stdout


def test_lake_from_option_or_env(tmp_path: Path, ct_folder: Path) -> None:
    lake_root, vault = str(tmp_path / "l"), str(tmp_path / "v")
    run("init", "--lake", lake_root, "--vault", vault)
    run(
        "ingest", "--lake", lake_root, "--vault", vault, "--scheduler", "sync", "-q", str(ct_folder)
    )
    proc = run(
        "sql",
        "SELECT count(*) AS n FROM instances",
        "--format",
        "json",
        env={"LAKE_ROOT": lake_root},
    )
    assert json.loads(proc.stdout) == [{"n": 12}]


def test_sql_formats(ingested: dict[str, str], tmp_path: Path) -> None:
    query = (
        "SELECT SeriesInstanceUID, instance_count FROM series WHERE Modality = 'CT' ORDER BY 2 DESC"
    )
    as_json = json.loads(run("sql", query, "--format", "json", env=ingested).stdout)
    assert isinstance(as_json, list) and as_json[0]["instance_count"] == 12
    as_csv = list(csv.DictReader(io.StringIO(run("sql", query, "-f", "csv", env=ingested).stdout)))
    assert as_csv[0]["instance_count"] == "12"
    target = tmp_path / "out.parquet"
    run("sql", query, "-f", "parquet", "-o", str(target), env=ingested)
    assert pq.read_table(target).column("instance_count")[0].as_py() == 12
    table = run("sql", query, env=ingested).stdout
    assert "instance_count" in table and "12" in table


def test_sql_as_of(ingested: dict[str, str], ct_folder: Path, tmp_path: Path) -> None:
    version = json.loads(
        run(
            "sql", "SELECT max(catalog_version) AS v FROM batches", "-f", "json", env=ingested
        ).stdout
    )[0]["v"]
    more = tmp_path / "more"
    from tests.series import write_ct_series

    write_ct_series(more, 3)
    run("ingest", "--scheduler", "sync", "-q", str(more), env=ingested)
    now = json.loads(
        run("sql", "SELECT count(*) AS n FROM instances", "-f", "json", env=ingested).stdout
    )
    then = json.loads(
        run(
            "sql",
            "SELECT count(*) AS n FROM instances",
            "-f",
            "json",
            "--as-of",
            str(version),
            env=ingested,
        ).stdout
    )
    assert now[0]["n"] == then[0]["n"] + 3


def test_info(ingested: dict[str, str]) -> None:
    text = run("info", env=ingested).stdout
    for label in ("catalog version", "instances", "series", "dedup ratio", "pixel blobs"):
        assert label in text


def test_bad_input_exit_code_3_and_summary(
    env: dict[str, str], ct_folder: Path, tmp_path: Path
) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "Doe^John.txt").write_text("Doe^John, MRN 12345678")
    (bad / "empty.dcm").write_bytes(b"")
    run("init", env=env)
    (bad / "garbage.dcm").write_bytes(b"Doe^John\0" * 100)
    proc = run("ingest", "--scheduler", "sync", str(ct_folder), str(bad), env=env, check_code=3)
    assert "quarantined" in proc.stderr and "not_dicom" in proc.stderr and "empty" in proc.stderr
    assert "skipped: plain text" in proc.stderr  # the notes file is not an image
    assert "Doe" not in proc.stderr + proc.stdout and "12345678" not in proc.stderr + proc.stdout
    n = json.loads(run("sql", "SELECT count(*) AS n FROM instances", "-f", "json", env=env).stdout)
    assert n == [{"n": 12}]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("sql", "SELECT * FROM nowhere"), "query failed"),
        (("sql", "SELECT 1", "--as-of", "999"), "version 999"),
        (("info",), "lake init"),
    ],
)
def test_errors_are_one_line(
    args: tuple[str, ...], needle: str, tmp_path: Path, env: dict[str, str]
) -> None:
    if args[0] == "info":
        env = {"LAKE_ROOT": str(tmp_path / "nothing-here")}
    else:
        run("init", env=env)
    proc = run(*args, env=env, check_code=1)
    assert needle in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_no_lake_given_is_a_clear_error() -> None:
    proc = run("info", check_code=1)
    assert "--lake ROOT or set LAKE_ROOT" in proc.stderr  # the library says root=ROOT


def test_ingest_without_vault_refuses(tmp_path: Path, ct_folder: Path) -> None:
    lake_root = str(tmp_path / "lake")
    run("init", "--lake", lake_root, "--vault", str(tmp_path / "vault"))
    proc = run("ingest", "--lake", lake_root, str(ct_folder), check_code=1)
    assert "vault" in proc.stderr.lower()
    n = json.loads(
        run("sql", "--lake", lake_root, "SELECT count(*) AS n FROM instances", "-f", "json").stdout
    )
    assert n == [{"n": 0}]


def test_verify_exit_codes(ingested: dict[str, str]) -> None:
    assert "0 corrupt" in run("verify", env=ingested).stdout
    blobs = sorted(p for p in (Path(ingested["LAKE_ROOT"]) / "blobs").rglob("*") if p.is_file())
    blobs[0].write_bytes(b"tampered")
    proc = run("verify", env=ingested, check_code=4)
    assert "corrupt blob" in proc.stderr


def test_unknown_scheduler_is_a_usage_error(env: dict[str, str], ct_folder: Path) -> None:
    run("init", env=env)
    proc = run("ingest", "--scheduler", "bogus", str(ct_folder), env=env, check_code=1)
    assert "unknown scheduler" in proc.stderr


def test_demo_builds_a_lake_offline(tmp_path: Path) -> None:
    proc = run(
        "demo",
        "--lake",
        str(tmp_path / "demo"),
        "--vault",
        str(tmp_path / "v"),
        "--scheduler",
        "threads",
    )
    assert "cohort query" in proc.stdout
    assert "CT" in proc.stdout and "MR" in proc.stdout
    # pydicom's warnings quote original values: none may reach the terminal, also from threads.
    assert "Warning" not in proc.stderr + proc.stdout
    shutil.rmtree(tmp_path / "demo")


def test_sql_json_writes_maps_as_objects_and_non_finite_numbers_as_null(
    env: dict[str, str],
) -> None:
    """Maps with date, number or list keys, nested in lists and structs; NaN and infinity."""
    run("init", env=env)
    query = (
        "SELECT map([DATE '2020-01-01'], [1]) AS d, map([[1, 2]], ['x']) AS l, "
        "{'a': map([1], [2])} AS s, [map([DATE '2021-02-03'], [3])] AS m, "
        "'nan'::DOUBLE AS n, 'inf'::DOUBLE AS i, histogram(x) AS h "
        "FROM (SELECT DATE '2020-01-01' AS x)"
    )
    proc = run("sql", query, "--format", "json", env=env)
    assert json.loads(proc.stdout) == [
        {"d": {"2020-01-01": 1}, "l": {"[1, 2]": "x"}, "s": {"a": {"1": 2}},
         "m": [{"2021-02-03": 3}], "n": None, "i": None, "h": {"2020-01-01": 1}}
    ]


_ENDING = """
import atexit, sys, threading, time
from pathlib import Path

folder = Path(sys.argv[1])

def late() -> None:
    time.sleep(1.5)
    (folder / "thread").write_text("joined")

atexit.register(lambda: (folder / "atexit").write_text("ran"))
if sys.argv[2] == "thread":
    threading.Thread(target=late).start()
sys.argv = ["lake", *sys.argv[3:]]
from pipelines.cli import main
main()
"""


@pytest.mark.parametrize("thread", ["thread", "none"])
def test_the_console_script_ends_as_python_would(tmp_path: Path, thread: str) -> None:
    """`lake` skips the interpreter's teardown at exit (issue 14.2) only when that changes
    nothing but the time: the at-exit functions run, a thread still running is waited for,
    the output is complete and the exit code is the command's."""
    for args, code, text in ((["sql", "--help"], 0, "Usage: lake sql"),
                             (["nosuch"], 2, "No such command")):
        for name in ("thread", "atexit"):
            (tmp_path / name).unlink(missing_ok=True)
        proc = subprocess.run([sys.executable, "-c", _ENDING, str(tmp_path), thread, *args],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == code, proc.stderr
        assert text in proc.stdout + proc.stderr
        assert (tmp_path / "atexit").read_text() == "ran"
        assert (tmp_path / "thread").exists() == (thread == "thread")


_LATE_WRITE = """
import atexit, sys
atexit.register(lambda: print("written at exit"))  # buffered: flushed only after atexit
from pipelines.cli import _exit_now
_exit_now(SystemExit(0))  # how main() ends a command that printed nothing and returned 0
"""


def test_a_failed_flush_at_exit_is_exit_120_not_success(tmp_path: Path) -> None:
    """What is written to stdout during the at-exit functions is flushed after them; when that
    fails (here a pipe whose reader has gone) the console script says so in one line and ends
    with 120, as Python's own exit does (review S7), instead of 0."""
    read, write = os.pipe()
    os.close(read)  # the reader is gone before anything is written: every write is EPIPE
    err = tmp_path / "stderr"
    # buffered, as a user's stdout to a pipe is (the write fails at the flush, not the print)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    with open(err, "wb") as stderr:
        proc = subprocess.run([sys.executable, "-c", _LATE_WRITE], stdout=write, stderr=stderr,
                              env=env, timeout=120, check=False)
    os.close(write)
    message = err.read_text()
    assert proc.returncode == 120, message
    assert "lake: could not write stdout at exit" in message
    assert "Traceback" not in message
    # the negative control: the same program with a reader ends with the command's code
    ok = subprocess.run([sys.executable, "-c", _LATE_WRITE], capture_output=True, text=True,
                        env=env, timeout=120, check=False)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.rstrip().endswith("written at exit")


def test_a_closed_stdout_at_exit_is_no_traceback() -> None:
    """A command that closed sys.stdout exits as Python does (closed streams are skipped), not
    with a ValueError traceback from the flush before the at-exit functions (review s21 N2)."""
    program = ("import sys\nfrom pipelines.cli import _exit_now\n"
               "sys.stdout.close()\n_exit_now(SystemExit(3))\n")
    proc = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                          timeout=120, check=False)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 0, proc.stderr  # the ordinary exit: the script itself ends with 0
