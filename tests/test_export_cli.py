"""`lake cohort ...` and `lake export ...` as a user runs them: the console script, real files."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import click
import pytest
import typer.main

from pipelines.export import cohort_app, export_app

DOCS = Path(__file__).resolve().parents[1] / "docs" / "export.md"
LAKE = str(Path(sys.executable).with_name("lake"))
CT = "SELECT SeriesInstanceUID FROM series WHERE Modality = 'CT'"


def run(
    *args: str, env: dict[str, str], check_code: int = 0
) -> subprocess.CompletedProcess[str]:
    """Run the `lake` console script with only ``env``'s LAKE_* variables."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("LAKE_")} | env
    proc = subprocess.run([LAKE, *args], capture_output=True, text=True, env=full, timeout=300)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == check_code, (proc.returncode, proc.stdout, proc.stderr)
    return proc


@pytest.fixture
def ingested(tmp_path: Path, ct_folder: Path, samples: Path) -> dict[str, str]:
    env = {"LAKE_ROOT": str(tmp_path / "lake"), "LAKE_VAULT": str(tmp_path / "vault")}
    run("init", env=env)
    run("ingest", "--scheduler", "sync", "-q", str(ct_folder), str(samples), env=env)
    return env


def test_cohort_create_list_show_replace(ingested: dict[str, str]) -> None:
    created = run("cohort", "create", "ct", "--sql", CT, "--description", "CT series", env=ingested)
    assert re.search(r"cohort ct: 2 series, 13 instances at catalog version \d+", created.stdout)
    again = run("cohort", "create", "ct", "--sql", CT, env=ingested, check_code=1)
    assert again.stderr.count("\n") == 1 and "exists already" in again.stderr
    assert "pass --replace to redefine it" in again.stderr  # the library says replace=True
    listed = json.loads(run("cohort", "list", "--json", env=ingested).stdout)
    assert [(c["name"], c["series"], c["instances"], c["description"]) for c in listed] == [
        ("ct", 2, 13, "CT series")
    ]
    shown = run("cohort", "show", "ct", "--members", env=ingested).stdout
    assert CT in shown and "member series" in shown
    replaced = run("cohort", "create", "ct", "--sql", CT + " AND instance_count > 1",
                   "--replace", env=ingested)
    assert "1 series, 12 instances" in replaced.stdout
    missing = run("cohort", "show", "nope", env=ingested, check_code=1)
    assert "no cohort named 'nope'" in missing.stderr


def test_export_commands(ingested: dict[str, str], tmp_path: Path) -> None:
    run("cohort", "create", "ct", "--sql", CT, env=ingested)
    dicom = run("export", "dicom", "ct", "--out", str(tmp_path / "dicom"), "--scheduler", "sync",
                "-q", env=ingested)
    assert "manifest.json" in dicom.stderr
    manifest = json.loads((tmp_path / "dicom" / "manifest.json").read_text())
    assert manifest["kind"] == "dicom" and manifest["counts"]["files"] == 13

    run("export", "dicom", "--sql", CT, "--out", str(tmp_path / "zip"), "--zip", "--scheduler",
        "threads", "-q", env=ingested)
    with zipfile.ZipFile(tmp_path / "zip" / "query-dicom.zip") as archive:
        assert len(archive.namelist()) == 13

    nifti = run("export", "nifti", "ct", "--out", str(tmp_path / "nifti"), "--gzip", "--level",
                "3", "--scheduler", "sync", "-q", env=ingested)
    assert "skipped" not in nifti.stderr
    assert len(list((tmp_path / "nifti").rglob("*.nii.gz"))) == 2

    # Something skipped (the RT plan has no pixels): reported, exit code 4.
    skipped = run("export", "nifti", "--sql", "SELECT SeriesInstanceUID FROM series", "--out",
                  str(tmp_path / "all"), "--scheduler", "sync", "-q", env=ingested,
                  check_code=4)
    assert "skipped: no_pixel_data" in skipped.stderr

    resumed = run("export", "dicom", "ct", "--out", str(tmp_path / "dicom"), "--scheduler",
                  "sync", "-q", env=ingested)
    assert "already complete" in resumed.stderr
    # -q prints the summary table's rows as plain lines (rich not imported: test_imports.py)
    table = run("export", "dicom", "ct", "--out", str(tmp_path / "dicom"), "--scheduler",
                "sync", env=ingested)
    cells = [[c.strip() for c in line.split("\u2502")[1:-1]]
             for line in table.stderr.splitlines() if line.count("\u2502") == 3]
    rows = [c for c in cells if c[0]]  # (not a long folder's continuation lines)
    plain = [line.strip() for line in resumed.stderr.splitlines()]
    assert plain[0] == "export dicom" and len(plain) == len(rows) + 1 > 4
    assert [" ".join(line.split()[:len(k.split())]) for line, (k, _) in zip(
        plain[1:], rows, strict=True)] == [k for k, _ in rows]
    assert [line.endswith(v) for line, (k, v) in zip(plain[1:], rows, strict=True)
            if k != "folder"] == [True] * (len(rows) - 1)
    assert plain[1] == f"folder           {tmp_path / 'dicom'}"


def test_export_usage_and_refusals(ingested: dict[str, str], tmp_path: Path) -> None:
    run("cohort", "create", "ct", "--sql", CT, env=ingested)
    both = run("export", "dicom", "ct", "--sql", CT, "--out", str(tmp_path / "x"),
               env=ingested, check_code=2)
    assert "exactly one" in both.stderr
    neither = run("export", "dicom", "--out", str(tmp_path / "x"), env=ingested, check_code=2)
    assert "exactly one" in neither.stderr
    refused = run("export", "teaching", "ct", "--out", str(tmp_path / "t"), "--scheduler", "sync",
                  env=ingested, check_code=1)
    assert "weaker than 'teaching'" in refused.stderr and "--skip-weaker" in refused.stderr
    assert "--profile teaching" in refused.stderr
    assert not (tmp_path / "t").exists()


def _options(app: typer.Typer) -> dict[str, list[str]]:
    group = typer.main.get_group(app)
    commands: dict[str, list[str]] = {}
    for name, command in group.commands.items():
        commands[name] = [
            opt for p in command.params if isinstance(p, click.Option) for opt in p.opts
            if opt.startswith("--") and opt not in ("--lake", "--help")
        ]
    return commands


def test_every_command_and_option_is_documented() -> None:
    text = DOCS.read_text()
    for group, app in (("cohort", cohort_app), ("export", export_app)):
        for command, options in _options(app).items():
            assert f"lake {group} {command}" in text, (group, command)
            for option in options:
                assert option in text, (group, command, option)
