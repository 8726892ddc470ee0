"""Typer's parameter coercion for the common cases, without pydantic (issue 14.2).

Typer 0.29 coerces every command-line value (but a flag's) through a pydantic
``TypeAdapter`` it builds on first use (``typer.core._TyperParameter.get_runtime_param``);
importing pydantic and building a command's adapters takes ~0.055 s of CPU, a tenth of a
small ``lake export nifti``, and typer has no switch to skip it.

:class:`LakeGroup` (the ``cls`` of ``lake``'s Typer apps) gives each parameter of the command
tree a :class:`PlainCoercion` before parsing. It converts only values whose result is plain:
a ``str``; a decimal integer or float inside the parameter's bounds; an Enum choice; a path
(through typer's own ``coerce_cli_path``); lists of these. Any other value (an out-of-range
number, ``1e3``, a bad choice, a custom parser...) goes to typer's own pydantic coercion,
which converts it or raises its own error: results and messages are typer's
(``tests/test_cli_params.py`` compares the two for every parameter of every command).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Final, get_args, get_origin

from typer import _click
from typer._click.exceptions import BadParameter
from typer._coercion import RuntimeParam, TypeDescriptor, build_runtime_param
from typer._param_types import coerce_cli_choice, coerce_cli_path
from typer.core import TyperGroup, _TyperParameter

__all__ = ["LakeGroup", "PlainCoercion", "plain_coercion"]

_INT = re.compile(r"-?[0-9]{1,18}")
_FLOAT = re.compile(r"-?[0-9]{1,15}(\.[0-9]{1,15})?")


class _Typer:
    """The value is typer's to convert."""


_TYPER: Final = _Typer()


def _number(value: Any, kind: type[int] | type[float], info: Any) -> Any:
    if kind is int and type(value) is int:
        number: int | float = value
    elif kind is float and type(value) is float:
        number = value
    elif isinstance(value, str) and (_INT if kind is int else _FLOAT).fullmatch(value):
        number = kind(value)
    else:
        return _TYPER
    if info.clamp or (info.min is not None and number < info.min) or (
        info.max is not None and number > info.max
    ):
        return _TYPER  # typer's own message says which bound
    return number


def _path(value: Any, annotation: Any, info: Any, param: _TyperParameter,
          ctx: _click.Context) -> Any:
    path_type = info.path_type
    if path_type is None and isinstance(annotation, type) and issubclass(annotation, Path):
        path_type = annotation
    if path_type is Path and isinstance(value, str) and value:
        value = Path(value)  # pydantic's str -> Path, as coerce_cli_path would ask it
    elif path_type not in (None, str, bytes) and not isinstance(value, Path):
        return _TYPER
    try:
        return coerce_cli_path(value, info, path_type=path_type, param=param, ctx=ctx)
    except BadParameter:
        return _TYPER  # typer says it in its own words


def _leaf(annotation: Any, value: Any, info: Any, param: _TyperParameter,
          ctx: _click.Context) -> Any:
    if info.parser is not None:
        return _TYPER
    if annotation is str:
        return value if isinstance(value, str) else _TYPER
    if annotation is int or annotation is float:
        return _number(value, annotation, info)
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        try:
            return coerce_cli_choice(value, choices=tuple(annotation),
                                     case_sensitive=info.case_sensitive, ctx=ctx)
        except ValueError:
            return _TYPER
    if annotation is Path or info.path_type is not None:
        return _path(value, annotation, info, param, ctx)
    return _TYPER


def plain_coercion(descriptor: TypeDescriptor, value: Any, param: _TyperParameter,
                   ctx: _click.Context) -> Any:
    """``value`` converted for ``descriptor``, or ``_TYPER`` when typer must convert it."""
    if descriptor.file_annotation is not None:
        return _TYPER
    annotation: Any = descriptor.annotation
    info = descriptor.parameter_info
    if get_origin(annotation) is list:
        if not isinstance(value, list | tuple):
            return _TYPER
        (item,) = get_args(annotation)
        items = [_leaf(item, v, info, param, ctx) for v in value]
        return _TYPER if any(i is _TYPER for i in items) else items
    return _leaf(annotation, value, info, param, ctx)


@dataclass(frozen=True)
class PlainCoercion(RuntimeParam):
    """A parameter's coercion: plain values here, the rest by typer's own (pydantic)."""

    descriptor: TypeDescriptor

    def _coerce_value(self, value: Any, param: _TyperParameter, ctx: _click.Context) -> Any:
        result = plain_coercion(self.descriptor, value, param, ctx)
        if result is _TYPER:
            typer_own = build_runtime_param(self.descriptor)
            return typer_own._coerce_value(value, param=param, ctx=ctx)
        return result


def _give_plain_coercion(command: _click.Command, parent: _click.Context | None) -> None:
    """Every parameter of ``command`` and its subcommands, and their help options (made on
    first use, with the names their context gives: made here in a context like it)."""
    ctx = _click.Context(command, parent=parent, **command.context_settings)
    help_option = command.get_help_option(ctx)
    for param in [*command.params, *([help_option] if help_option is not None else [])]:
        if isinstance(param, _TyperParameter) and param._runtime_param is None:
            desc = param.type_descriptor
            param._runtime_param = PlainCoercion(desc.parameter_info, desc.annotation, desc)
    for sub in getattr(command, "commands", {}).values():
        _give_plain_coercion(sub, ctx)


class LakeGroup(TyperGroup):
    """Typer's group, whose commands' parameters convert plain values without pydantic."""

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None,
             complete_var: str | None = None, standalone_mode: bool = True,
             windows_expand_args: bool = True, **extra: Any) -> Any:
        _give_plain_coercion(self, None)
        return super().main(args, prog_name, complete_var, standalone_mode,
                            windows_expand_args, **extra)
