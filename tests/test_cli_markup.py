"""Every command prints values as they are, never as rich markup or emoji codes.

A value that comes from data, a user, a file name or a profile (a series description, a
profile's name or rule label, a quarantine message, an AE title, a token's note) may hold
``[b]x[/b]`` or ``:smile:``: rich would print the first as a bold ``x`` and the second as an
emoji. The consoles of ``pipelines/_common.py`` (:func:`console`, ``out``,
``err``) interpret neither; these tests plant both, one command family at a time, and look
for them, literally, in the output. (``lake sql``, ``lake cohort`` and ``lake export``:
tests/test_startup.py.)
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from typer.testing import CliRunner

import lake
from pipelines.cli import app

MARK = "[b]x[/b] :smile:"
"""Bold markup and an emoji code: printed as they are, or the test fails."""

ENV = {"COLUMNS": "240", "NO_COLOR": "1"}
runner = CliRunner()


def _site(folder: Path) -> Path:
    """A site profile named ``MARK``: basic plus a pixel blacklist rule labelled ``MARK``
    that refuses MR images."""
    (folder / "site.dicom").write_text(
        f"FORMAT dicom\n%filter blacklist\nLABEL {MARK}\n  contains Modality MR\n")
    (folder / "site.toml").write_text(
        f'name = "{MARK}"\nversion = "t1"\nextends = "basic"\noptions = []\n'
        f'description = "{MARK}"\nrecipes = ["site.dicom"]\n')
    return folder / "site.toml"


def test_profiles_and_deid_print_names_labels_and_values_as_they_are(tmp_path: Path) -> None:
    site = str(_site(tmp_path))
    shown = runner.invoke(app, ["profiles", "show", site], env=ENV)
    assert shown.exit_code == 0, shown.output
    assert shown.stdout.startswith(f"{MARK} t1 ")  # the header: the name bold, as it is
    assert f"│ {MARK} │ blacklist │" in shown.stdout  # the pixel filter's label
    diff = runner.invoke(app, ["profiles", "diff", "basic", site], env=ENV)
    assert diff.exit_code == 0, diff.output
    assert f"vs  {MARK} t1" in diff.stdout
    assert f"only in {MARK}: -" in diff.stdout
    ct = dcmread(get_testdata_file("CT_small.dcm"))
    ct.SeriesDescription = MARK
    ct.save_as(tmp_path / "ct.dcm")
    dry = runner.invoke(app, ["deid", str(tmp_path / "ct.dcm"), "--profile", site,
                              "--show-values"], env=ENV)
    assert dry.exit_code == 0, dry.output
    assert f"dry run of {MARK} t1" in dry.stdout
    assert f"│ {MARK} " in dry.stdout  # the series description, before


def test_quarantine_prints_messages_as_they_are(tmp_path: Path) -> None:
    """An MR refused by the site profile's blacklist rule: its message quotes the label."""
    root, vault = tmp_path / "lake", tmp_path / "vault"
    lk = lake.init(root, vault=vault)
    summary = lk.ingest([get_testdata_file("MR_small.dcm")], vault=vault, scheduler="sync",
                        profile=str(_site(tmp_path)))
    assert summary.quarantined == 1
    args = ["--lake", str(root), "--vault", str(vault)]
    listed = runner.invoke(app, ["quarantine", "list", "--lake", str(root)], env=ENV)
    assert listed.exit_code == 0, listed.output
    assert "pixel_blacklist" in listed.stdout
    entry = lk.sql("SELECT source_sha256 FROM quarantine").fetchall()[0][0]
    shown = runner.invoke(app, ["quarantine", "show", entry[:16], *args], env=ENV)
    assert shown.exit_code == 0, shown.output
    assert f"pixel_blacklist: the profile's blacklist rule '{MARK}' matches" in shown.stdout


def test_tokens_print_notes_as_they_are(tmp_path: Path) -> None:
    root = tmp_path / "lake"
    lake.init(root, vault=tmp_path / "vault")
    made = runner.invoke(app, ["token", "create", "--role", "researcher", "--note", MARK,
                               "--lake", str(root)], env=ENV)
    assert made.exit_code == 0, made.output
    listed = runner.invoke(app, ["token", "list", "--lake", str(root)], env=ENV)
    assert listed.exit_code == 0, listed.output
    assert f"│ {MARK} " in listed.stdout


@pytest.mark.network
def test_serve_dicom_prints_ae_titles_as_they_are(tmp_path: Path) -> None:
    from tests.net_peers import free_port, stop_server, wait_port

    root, vault = tmp_path / "lake", tmp_path / "vault"
    lake.init(root, vault=vault)
    port = free_port()
    aet, calling = "[b]x[/b]:smile:", "[i]y[/i]:cat:"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAKE_")}
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("lake")), "serve", "dicom", "--lake", str(root),
         "--vault", str(vault), "--port", str(port), "--aet", aet, "--allow", calling,
         "--workers", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        wait_port(port)
    finally:
        _, stderr = stop_server(proc)
    assert proc.returncode == 0, stderr
    assert f"{aet} listening on " in stderr and f"calling AEs: {calling};" in stderr


def test_commands_print_through_the_lake_consoles_only() -> None:
    """No command builds a rich console of its own (one that would interpret markup): each
    prints through ``out``, ``err`` or ``console()`` of pipelines/_common.py."""
    folder = Path(__file__).resolve().parents[1] / "pipelines"
    calls, inside = 0, set()
    for path in sorted(folder.glob("*.py")):
        tree = ast.parse(path.read_text())
        calls += sum(_builds_console(node) for node in ast.walk(tree))
        inside |= {f"{path.stem}.{f.name}" for f in ast.walk(tree)
                   if isinstance(f, ast.FunctionDef) and any(map(_builds_console, ast.walk(f)))}
    assert (calls, inside) == (1, {"_common.console"})


def _builds_console(node: ast.AST) -> bool:
    return (isinstance(node, ast.Call)
            and "Console" in (getattr(node.func, "id", None), getattr(node.func, "attr", None)))
