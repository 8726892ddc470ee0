"""What the console script does before a command runs (issue 14.2): checked by module, by
collection count and by output, never by timing.

``lake`` (pipelines.cli: main) imports only the module of the command it runs, builds only
that command (one command of a group: ``lake export nifti`` neither reads the other
exporters' signatures nor imports the servers' commands), and defers the cyclic garbage
collector's first collection past the command's start-up. Each test runs a fresh
interpreter, as a user's ``lake`` is one.
"""

from __future__ import annotations

import filecmp
import gc
import json
import subprocess
import sys
from pathlib import Path

import pytest

import lake

#: Runs ``main()`` as the console script does; at exit (pipelines.cli._exit_now runs the
#: at-exit functions) prints the modules loaded, the collections made from ``main()`` on,
#: and the collector's thresholds before and after a burst of allocations.
_RUN_MAIN = """
import atexit, gc, json, sys
sys.argv = ["lake", *{args!r}]
defaults = gc.get_threshold()
collections = []
gc.callbacks.append(lambda phase, info: collections.append(info["generation"])
                    if phase == "start" else None)

def report():
    during = len(collections) - imported
    loaded = sorted(sys.modules)
    during_threshold = gc.get_threshold()
    burst = [[] for _ in range(300_000)]  # more tracked objects than the first collection waits for
    del burst
    print(json.dumps({{"loaded": loaded, "collections": during, "defaults": defaults,
                      "during": during_threshold, "after": gc.get_threshold(),
                      "later": len(collections) - during}}))

atexit.register(report)
from pipelines.cli import main
imported = len(collections)  # those while the console script imports typer and the CLI
main()
"""

#: The same command through the whole app, in-process, with Python's collector settings.
_RUN_APP = """
import gc, sys
from pipelines.cli import app
collections = []
gc.callbacks.append(lambda phase, info: collections.append(1) if phase == "start" else None)
try:
    app({args!r})
except SystemExit:
    pass
print(len(collections), gc.get_threshold())
"""

#: The other commands' modules: ``lake export nifti`` imports none of them.
OTHER_COMMANDS = ("pipelines._core", "pipelines.net", "pipelines.web", "pipelines.portal",
                  "pipelines.steward", "pipelines.profiles", "pipelines.documents")


def _main(args: list[str]) -> dict[str, object]:
    proc = subprocess.run([sys.executable, "-c", _RUN_MAIN.format(args=args)],
                          capture_output=True, text=True, check=False)
    assert proc.returncode in (0, 2), proc.stderr
    report: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    return report


@pytest.fixture(scope="module")
def small_lake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from lake.export import create_cohort
    from tests.series import write_ct_series

    root = tmp_path_factory.mktemp("startup")
    lk = lake.init(root / "lake", vault=root / "vault")
    files = write_ct_series(root / "ct", n=4)
    lk.ingest([str(f) for f in files], vault=root / "vault", scheduler="sync")
    create_cohort(lk, "small", "SELECT SeriesInstanceUID FROM series")
    return root / "lake"


def test_export_imports_no_other_command(small_lake: Path, tmp_path: Path) -> None:
    """`lake export nifti` through the console script imports the export commands' module
    and none of the other commands' (the servers', the portal's, the stewards'...)."""
    out = tmp_path / "out"
    report = _main(["export", "nifti", "small", "--lake", str(small_lake), "--out", str(out),
                    "-q"])
    loaded = set(report["loaded"])  # type: ignore[call-overload]
    assert len(list(out.rglob("*.nii"))) == 1  # the export ran
    assert "pipelines.export" in loaded
    assert sorted(loaded & set(OTHER_COMMANDS)) == []
    whole = set(_main(["--help"])["loaded"])  # type: ignore[call-overload]
    assert sorted(set(OTHER_COMMANDS) - whole) == []  # the negative control: the full app


def test_export_collects_no_garbage_during_start_up(small_lake: Path, tmp_path: Path) -> None:
    """The collector's first collection waits for FIRST_COLLECTION allocations: a small
    export makes none (Python's thresholds make ~180, ~0.04 s of CPU); then Python's own
    thresholds are back, and the burst after the command is collected as usual."""
    from pipelines.cli import FIRST_COLLECTION

    args = ["export", "nifti", "small", "--lake", str(small_lake), "-q"]
    report = _main([*args, "--out", str(tmp_path / "main")])
    defaults = report["defaults"]
    assert report["collections"] == 0
    assert report["during"] == [FIRST_COLLECTION, *defaults[1:]]  # type: ignore[index]
    assert report["after"] == defaults
    assert report["later"] > 1  # collected again, at Python's thresholds
    # The negative control: the same export through the app, without the console script,
    # collects with Python's thresholds, which importing pipelines.cli leaves alone.
    proc = subprocess.run(
        [sys.executable, "-c",
         _RUN_APP.format(args=[*args, "--out", str(tmp_path / "app")])],
        capture_output=True, text=True, check=True)
    collections, threshold = proc.stdout.strip().splitlines()[-1].split(" ", 1)
    assert int(collections) > 10
    assert threshold == str(gc.get_threshold())
    # What the export wrote is the same, byte for byte (manifest.json included).
    compared = filecmp.dircmp(tmp_path / "main", tmp_path / "app")
    assert compared.left_list == compared.right_list
    assert _same_tree(tmp_path / "main", tmp_path / "app")


def _same_tree(left: Path, right: Path) -> bool:
    files = sorted(p.relative_to(left) for p in left.rglob("*") if p.is_file())
    others = sorted(p.relative_to(right) for p in right.rglob("*") if p.is_file())
    return bool(files) and files == others and all(
        (left / f).read_bytes() == (right / f).read_bytes() for f in files)


def test_every_command_has_its_lean_app() -> None:
    """Each of the whole app's commands and groups is in the registry the console script
    reads, in the same order as before the registry (`lake --help` lists them so), and gets
    an app of its own with that one command; a group named with one of its commands gets
    that command alone."""
    import typer.main

    from pipelines.cli import _app_for, app

    commands = [c.name for c in app.registered_commands]
    groups = [g.name for g in app.registered_groups]
    assert commands == ["init", "ingest", "sql", "info", "verify", "deid", "attach", "pull",
                        "forget", "compact", "gc", "vacuum", "demo"]
    assert groups == ["profiles", "cohort", "export", "serve", "token", "teaching", "viewer",
                      "users", "share", "quarantine"]
    for name in (*commands, *groups):
        chosen = _app_for([name])
        assert chosen is not app
        assert [c.name for c in chosen.registered_commands] + [
            g.name for g in chosen.registered_groups] == [name]
    lean = typer.main.get_command(_app_for(["export", "nifti", "--help"]))
    export = lean.commands["export"]  # type: ignore[attr-defined]
    assert list(export.commands) == ["nifti"]
    whole = typer.main.get_command(app).commands["export"]  # type: ignore[attr-defined]
    assert list(whole.commands) == ["nifti", "bids", "dicom", "teaching", "documents"]


def test_deferring_twice_registers_one_callback() -> None:
    """main() run again in the same process (a test, a notebook) re-arms its one collector
    callback rather than adding another."""
    program = (
        "import gc, json\n"
        "from pipelines.cli import _collect_after_start_up, _Thresholds, FIRST_COLLECTION\n"
        "defaults = gc.get_threshold()\n"
        "_collect_after_start_up(); gc.collect(); _collect_after_start_up()\n"
        "armed = gc.get_threshold()[0] == FIRST_COLLECTION\n"
        "gc.collect()\n"
        "print(json.dumps([sum(isinstance(c, _Thresholds) for c in gc.callbacks), armed,\n"
        "                  gc.get_threshold() == defaults]))\n"
    )
    proc = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                          check=True)
    assert json.loads(proc.stdout) == [1, True, True]


def test_help_builds_no_rich_console() -> None:
    """``lake --help`` imports no rich module at all: the consoles of pipelines/_common.py
    are built when a command first prints (rich's console took ~14 ms of every run)."""
    loaded = _main(["--help"])["loaded"]
    assert isinstance(loaded, list)
    assert "pipelines.steward" in loaded and "pipelines.profiles" in loaded  # the whole app
    assert [m for m in loaded if m == "rich" or m.startswith("rich.")] == []


def test_sql_table_prints_values_as_they_are(small_lake: Path) -> None:
    """A value (or a column name) holding rich markup or an emoji code prints as it is, on
    the terminal's table and in a --output file: the consoles replace no emoji codes and the
    cells escape markup (``[bold]x[/bold]`` printed ``x``, ``:smile:`` an emoji)."""
    from typer.testing import CliRunner

    from pipelines.cli import app

    query = "SELECT '[bold]x[/bold] :smile: \\[y]' AS \"[i]v[/i]\""
    shown = CliRunner().invoke(app, ["sql", "--lake", str(small_lake), query])
    assert shown.exit_code == 0, shown.output
    assert "[bold]x[/bold] :smile: \\[y]" in shown.output
    assert "[i]v[/i]" in shown.output
    written = small_lake.parent / "sql-table.txt"
    saved = CliRunner().invoke(app, ["sql", "--lake", str(small_lake), "--output",
                                     str(written), query])
    assert saved.exit_code == 0, saved.output
    assert "[bold]x[/bold] :smile: \\[y]" in written.read_text()


def test_cohort_and_export_tables_print_values_as_they_are(
        small_lake: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A cohort's query and description, and an export's folder, print as they are in the
    tables of `lake cohort show` and `lake export nifti` (a folder named ``[b]odd[/b]``
    printed as ``odd``)."""
    from typer.testing import CliRunner

    from lake.export import create_cohort
    from pipelines.cli import app

    query = "SELECT SeriesInstanceUID FROM series WHERE '[b]x[/b]' <> ''"
    create_cohort(lake.open(small_lake), "marked", query, description="[i]note[/i] :smile:")
    runner = CliRunner()
    shown = runner.invoke(app, ["cohort", "show", "marked", "--lake", str(small_lake)])
    assert shown.exit_code == 0, shown.output
    assert "'[b]x[/b]'" in shown.output and "[i]note[/i] :smile:" in shown.output
    monkeypatch.chdir(tmp_path)  # a short folder name, so that the cell shows it whole
    exported = runner.invoke(app, ["export", "nifti", "marked", "--lake", str(small_lake),
                                   "--out", "[b]odd[/b]", "-q"])
    assert exported.exit_code == 0, exported.output
    assert len(list((tmp_path / "[b]odd[/b]").rglob("*.nii"))) == 1
    assert "[b]odd[/b]" in exported.output
