"""The README and docs stay true to the code."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import typer.main

from pipelines.cli import app

ROOT = Path(__file__).resolve().parents[1]


def _commands() -> list[str]:
    group = typer.main.get_command(app)
    names = []
    for name, command in group.commands.items():  # type: ignore[attr-defined]
        sub = getattr(command, "commands", None)
        if sub:
            names.extend(f"{name} {child}" for child in sub)
        else:
            names.append(name)
    return names


def test_readme_opens_with_the_two_commands() -> None:
    text = (ROOT / "README.md").read_text()
    block = text.split("```sh", 1)[1].split("```", 1)[0].strip().splitlines()
    assert [line.split("#")[0].strip() for line in block] == ["make demo", "make test"]


def test_every_command_is_in_the_readme() -> None:
    text = (ROOT / "README.md").read_text()
    missing = [c for c in _commands() if f"lake {c}" not in text]
    assert not missing, f"commands not documented in README.md: {missing}"


def test_catalog_docs_are_generated_from_the_schema() -> None:
    proc = subprocess.run(
        [sys.executable, "tools/gen_catalog_docs.py", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout


def test_makefile_targets() -> None:
    text = (ROOT / "Makefile").read_text()
    for target in ("demo:", "test:", "bench:", "lint:"):
        assert f"\n{target}" in text
    assert "make test" in (ROOT / ".ci" / "run").read_text()
