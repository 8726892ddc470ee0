"""`lake`'s parameters are converted without pydantic where the value is plain
(pipelines/_params.py, issue 14.2), with typer's own results and messages everywhere."""

from __future__ import annotations

import enum
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args, get_origin

import pytest
from typer import _click
from typer._coercion import TypeDescriptor, build_runtime_param
from typer.core import TyperGroup, _TyperParameter
from typer.main import get_command
from typer.testing import CliRunner

from pipelines._params import _TYPER, LakeGroup, PlainCoercion, plain_coercion


def _params() -> Iterator[tuple[str, _click.Command, _TyperParameter]]:
    from pipelines.cli import app

    def walk(command: _click.Command, path: str) -> Iterator[tuple[str, _click.Command,
                                                                    _TyperParameter]]:
        for param in command.params:
            if isinstance(param, _TyperParameter):
                yield f"{path} {param.name}", command, param
        for name, sub in getattr(command, "commands", {}).items():
            yield from walk(sub, f"{path} {name}")

    yield from walk(get_command(app), "lake")


def _values(annotation: Any, tmp: Path) -> list[Any]:
    if get_origin(annotation) is list:
        (item,) = get_args(annotation)
        leaf = _values(item, tmp)
        return [leaf[:2], leaf[:1], [], tuple(leaf[:2]), leaf[0], [*leaf, "1e3"]]
    if annotation is str:
        return ["x", "", " a b ", "-", "é", "--x", "\udcff", "\x00", "a\nb", "~", 5, None]
    if annotation is int:
        return ["0", "1", "5", "9", "-3", "10", "12", "16", "-0", "007", "x", "5.0", " 5", "+5",
                "1e3", "1_000", "99999999999999999999", "٣", "٣٣", "0000", "-007",
                "999999999999999999", "-999999999999999999", 5, 0, 1.5, True, "", None]
    if annotation is float:
        return ["0.5", "1", "-2.25", "30", "x", "1e3", "nan", "inf", " 1", ".5", "1.", "+1.5",
                "-0", "-0.0", "007.5", "1.0000000000000002", "123456789012345.123456789012345",
                "١.٥", 1.5, 2, "", None]
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        members = list(annotation)
        return [*(m.value for m in members), *(str(m.value).upper() for m in members),
                *(str(m.value).title() for m in members), *(f" {m.value}" for m in members),
                *(m.name for m in members), members[0], "nosuch", "", 1, None]
    if annotation is Path:
        (tmp / "file").write_text("x")
        return ["x", "", "-", "~", "~/x", "./", "/", " ", "\udcff", str(tmp / "file"), str(tmp),
                str(tmp / "absent"), tmp, None]
    if annotation is bool:
        return [True, False, "true", "no", "", None]
    return ["x"]


def _outcome(coercion: Any, value: Any, param: _TyperParameter,
             ctx: _click.Context) -> tuple[str, Any]:
    try:
        value = coercion.coerce(value, param=param, ctx=ctx)
    except Exception as exc:  # noqa: BLE001 - the exception is the outcome compared
        return "raised", (type(exc).__name__, str(exc))
    return "value", (type(value).__name__, repr(value))  # repr: nan == nan


def test_plain_coercion_gives_typers_results_and_messages(tmp_path: Path) -> None:
    """For every parameter of every command, the same value converted by lake's coercion and
    by typer's own (pydantic) gives the same value of the same type, or the same error; and
    the plain path is taken for the values commands get every day."""
    plain = 0
    compared = 0
    kinds: set[str] = set()
    for where, command, param in _params():
        desc: TypeDescriptor = param.type_descriptor
        ctx = _click.Context(command)
        typer_own = build_runtime_param(desc)
        ours = PlainCoercion(desc.parameter_info, desc.annotation, desc)
        for value in _values(desc.annotation, tmp_path):
            expected = _outcome(typer_own, value, param, ctx)
            got = _outcome(ours, value, param, ctx)
            assert got == expected, (where, desc.annotation, value)
            compared += 1
            if value is not None and plain_coercion(desc, value, param, ctx) is not _TYPER:
                plain += 1
                kinds.add(getattr(desc.annotation, "__name__", str(desc.annotation)))
    assert compared > 2000
    assert plain > 800
    assert {"str", "int", "float", "Path", "list", "Format"} <= kinds


def _typers_own_app() -> Any:
    """``lake``'s app as typer alone would build it (its own group class)."""
    import typer

    from pipelines.cli import _SETTINGS, app

    own = typer.Typer(**{**_SETTINGS, "cls": TyperGroup}, help=app.info.help)
    own.registered_callback = app.registered_callback
    own.registered_commands.extend(app.registered_commands)
    own.registered_groups.extend(app.registered_groups)
    return own


@pytest.mark.parametrize("args", [
    ["--help"], ["export", "nifti", "--help"], ["sql", "--help"],
    ["export", "nifti", "c", "--out", "o", "--level", "12"],
    ["export", "nifti", "c", "--out", "o", "--level", "x"],
    ["export", "nifti", "c", "--out", "o", "--gzip", "--level", "3", "--lake", "/nonexistent"],
    ["sql", "-f", "nosuch", "SELECT 1"], ["sql", "-f", "JSON", "SELECT 1"],
    ["sql", "--lake", "/nonexistent", "SELECT 1"], ["nosuch"], [],
])
def test_commands_print_and_exit_as_with_typers_own_group(args: list[str]) -> None:
    from pipelines.cli import app

    assert isinstance(get_command(app), LakeGroup)
    ours = CliRunner().invoke(app, args, env={"LAKE_ROOT": None})
    own = CliRunner().invoke(_typers_own_app(), args, env={"LAKE_ROOT": None})
    assert (ours.exit_code, ours.output) == (own.exit_code, own.output)
