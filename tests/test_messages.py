"""Library errors name the library's parameters, never the command line's options (issue 10.7).

A notebook user who is told to "pass --out" or to "run 'lake verify'" has no such thing to
pass or run. Library messages write each parameter as Python does (``root=ROOT``,
``replace=True``, ``via='get'``) and list it in the error's ``parameters``, and each function
as called (``Lake.verify()``), listed in its ``functions``; the command line shows the option
that sets the parameter and the command that runs the function
(``pipelines._common.cli_message``: ``--lake ROOT``, ``--replace``, ``--via get``,
``'lake verify'``).
"""

from __future__ import annotations

import ast
import importlib
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer

import lake
from lake import ExportError, LakeError, LakeNotFoundError, QueryError, VaultError
from lake.export import create_cohort
from lake.net._pull_query import pull_identifier
from lake.vault import Vault
from pipelines._common import COMMANDS, OPTIONS, cli_message
from pipelines.cli import app

LAKE = str(Path(sys.executable).with_name("lake"))

LAKE_PACKAGE = Path(lake.__file__).parent
FLAG = re.compile(r"(?<![\w-])--[a-z]")

# String literals with a double dash that are not messages to a user of the library.
NOT_MESSAGES = {
    ("documents/_ocr.py", "--psm 6"),  # an argument of the Tesseract command
}
# Column descriptions of the catalog (docs/catalog.md) that say which command wrote a row.
DESCRIPTIONS = "catalog/_schema.py"
# lake.web renders errors for browsers, as pipelines/ does for the shell (and calls npm).
PRESENTATION = "web/"


def _docstrings(tree: ast.AST) -> set[int]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            first = node.body[0] if node.body else None
            if (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
                    and isinstance(first.value.value, str)):
                found.add(id(first.value))
    return found


def _sources() -> list[tuple[str, ast.AST]]:
    found = []
    for path in sorted(LAKE_PACKAGE.rglob("*.py")):
        name = path.relative_to(LAKE_PACKAGE).as_posix()
        if not name.startswith(PRESENTATION):
            found.append((name, ast.parse(path.read_text(), name)))
    return found


def _strings_matching(pattern: re.Pattern[str]) -> list[str]:
    """Every string of lake/ (docstrings, column descriptions and NOT_MESSAGES aside) that
    ``pattern`` finds something in."""
    named = []
    for name, tree in _sources():
        docstrings = _docstrings(tree)
        for node in ast.walk(tree):
            if (isinstance(node, ast.Constant) and isinstance(node.value, str)
                    and id(node) not in docstrings and pattern.search(node.value)
                    and (name, node.value) not in NOT_MESSAGES and name != DESCRIPTIONS):
                named.append(f"lake/{name}:{node.lineno}: {node.value[:80]!r}")
    return named


def test_no_library_string_names_a_command_line_option() -> None:
    assert _strings_matching(FLAG) == []


def _text(node: ast.expr) -> str:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(_text(v) for v in node.values)
    if isinstance(node, ast.BinOp):
        return _text(node.left) + _text(node.right)
    return "{}"


def _named(keyword: str) -> list[tuple[str, str, str]]:
    """(where, name, message) for each name an error call of lake/ lists in ``keyword``."""
    found = []
    for name, tree in _sources():
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            for given in node.keywords:
                if given.arg != keyword or not isinstance(given.value, ast.Tuple):
                    continue
                message = "".join(_text(a) for a in node.args)
                for element in given.value.elts:
                    assert isinstance(element, ast.Constant), f"lake/{name}:{node.lineno}"
                    found.append((f"lake/{name}:{node.lineno}", str(element.value), message))
    return found


def test_every_parameter_an_error_names_is_in_its_message_and_has_an_option() -> None:
    named = _named("parameters")
    for where, parameter, message in named:
        assert parameter in OPTIONS, f"{where}: {parameter}"
        assert f"{parameter}=" in message, f"{where}: {message}"
    assert len(named) >= 15


def _commands(group: typer.core.TyperGroup, prefix: str) -> Iterator[tuple[str, object]]:
    for name, command in group.commands.items():
        yield f"{prefix} {name}", command
        if isinstance(command, typer.core.TyperGroup):
            yield from _commands(command, f"{prefix} {name}")


_APP = typer.main.get_group(app)
assert isinstance(_APP, typer.core.TyperGroup)
CLI = dict(_commands(_APP, "lake"))


def test_no_library_string_names_a_command() -> None:
    top = sorted({name.split()[1] for name in CLI}, key=len, reverse=True)
    assert _strings_matching(re.compile(rf"(?<![\w-])lake (?:{'|'.join(top)})\b")) == []


def _function(dotted: str) -> object:
    owner, _, attribute = dotted.rpartition(".")
    return getattr(lake.Lake if owner == "Lake" else importlib.import_module(owner), attribute)


def test_every_function_an_error_names_is_in_its_message_and_has_a_command() -> None:
    named = _named("functions")
    for where, function, message in named:
        assert callable(_function(function)), f"{where}: {function}"
        assert COMMANDS[function] in CLI, f"{where}: {function}"
        assert f"{function}()" in message, f"{where}: {message}"
    assert len(named) >= 20


def test_every_option_is_an_option_of_the_command_line() -> None:
    options = {opt for command in CLI.values() for param in getattr(command, "params", ())
               for opt in param.opts}
    assert set(OPTIONS.values()) <= options


def _said(exc: LakeError, library: str, shell: str) -> None:
    assert library in str(exc) and not FLAG.search(str(exc)), str(exc)
    assert shell in cli_message(exc), cli_message(exc)


def test_no_lake_and_no_vault(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LAKE_ROOT", raising=False)
    monkeypatch.delenv("LAKE_VAULT", raising=False)
    with pytest.raises(LakeNotFoundError) as no_lake:
        lake.open()
    _said(no_lake.value, "pass root=ROOT or set LAKE_ROOT", "pass --lake ROOT or set LAKE_ROOT")
    with pytest.raises(VaultError) as no_vault:
        Vault.from_option(None)
    _said(no_vault.value, "pass vault=DIR", "pass --vault DIR")


def test_cohorts_and_exports(lk: lake.Lake, vault_dir: Path, ct_folder: Path,
                             tmp_path: Path) -> None:
    lk.ingest([str(ct_folder)], vault=vault_dir, scheduler="sync")
    create_cohort(lk, "ct", "SELECT SeriesInstanceUID FROM series")
    with pytest.raises(ExportError) as exists:
        create_cohort(lk, "ct", "SELECT SeriesInstanceUID FROM series")
    _said(exists.value, "pass replace=True", "pass --replace")
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    from lake.export import export_dicom

    with pytest.raises(ExportError) as not_a_folder:
        export_dicom(lk, "ct", a_file)
    _said(not_a_folder.value, "out= names a file", "--out names a file")


def test_pull_queries() -> None:
    with pytest.raises(QueryError) as everything:
        pull_identifier([])
    _said(everything.value, "pass all_studies=True", "pass --all")
    _said(everything.value, "give filters=KEYWORD=VALUE", "give --query KEYWORD=VALUE")
    with pytest.raises(QueryError) as unknown:
        pull_identifier(["PatientNmae=X"])
    assert "in the query" in str(unknown.value) and not FLAG.search(str(unknown.value))


def test_a_message_without_parameters_is_shown_as_it_is() -> None:
    """Only the parameters an error lists are rewritten: text quoted from elsewhere stays."""
    plain = QueryError("Binder Error: column out=1 in SQL")
    assert cli_message(plain) == str(plain)


def test_every_kind_of_value_stays_apart_from_its_flag() -> None:
    """A value written after '=' becomes the option's argument, whatever its kind."""
    error = LakeError("pass port=104, replace=True, root=ROOT or via='get'",
                      parameters=("port", "replace", "root", "via"))
    assert cli_message(error) == "pass --port 104, --replace, --lake ROOT or --via get"


def test_functions_are_shown_as_commands(tmp_path: Path) -> None:
    with pytest.raises(LakeNotFoundError) as no_lake:
        lake.open(tmp_path / "nowhere")
    _said(no_lake.value, "create one with lake.init() first", "create one with 'lake init' first")
    error = LakeError("run Lake.verify(); Lake.verify is a method", functions=("Lake.verify",))
    assert cli_message(error) == "run 'lake verify'; Lake.verify is a method"


def _lake(*args: str, env: dict[str, str], code: int) -> str:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("LAKE_")}
    proc = subprocess.run([LAKE, *args], capture_output=True, text=True, env=full_env | env,
                          timeout=300)
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
    return proc.stderr


def test_the_command_line_names_its_options_and_commands(tmp_path: Path, lk: lake.Lake,
                                                          vault_dir: Path) -> None:
    """The same failures through ``lake``: one line, exit code 1, the flag and the command."""
    nowhere = _lake("info", env={}, code=1)
    assert "no lake given: pass --lake ROOT or set LAKE_ROOT" in nowhere, nowhere
    absent = _lake("info", "--lake", str(tmp_path / "absent"), env={}, code=1)
    assert "create one with 'lake init' first" in absent and "lake.init" not in absent, absent
    env = {"LAKE_ROOT": lk.root, "LAKE_VAULT": str(vault_dir)}
    no_cohort = _lake("export", "dicom", "nope", "--out", str(tmp_path / "o"), env=env, code=1)
    assert "create it with 'lake cohort create' first" in no_cohort, no_cohort
    wrong_vault = _lake("ingest", str(tmp_path), "--vault", str(tmp_path / "other"), env=env,
                        code=1)
    assert "(--vault or LAKE_VAULT)" in wrong_vault and "vault=" not in wrong_vault, wrong_vault
    steward_share = _lake("token", "create", "--role", "steward", "--cohort", "x", env=env,
                          code=1)
    assert "give --cohort only to" in steward_share, steward_share
    everything = subprocess.run([LAKE, "pull", "--from", "PACS@127.0.0.1:1"], capture_output=True,
                                text=True, env={k: v for k, v in os.environ.items()
                                                if not k.startswith("LAKE_")}, timeout=300)
    assert everything.returncode == 2 and "Traceback" not in everything.stderr  # usage error
    assert "give --query KEYWORD=VALUE" in everything.stderr
    assert "or pass --all to pull everything" in everything.stderr, everything.stderr
