"""What every command shares: the lake/vault options, consoles, exit codes, error handling."""

from __future__ import annotations

import getpass
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from types import MappingProxyType
from typing import IO, TYPE_CHECKING, Annotated

import typer

import lake
from lake import LakeError

if TYPE_CHECKING:
    from rich.console import Console

__all__ = [
    "COMMANDS",
    "EXIT_ERROR",
    "EXIT_INTERNAL",
    "EXIT_OK",
    "EXIT_PROBLEMS",
    "EXIT_QUARANTINED",
    "EXIT_USAGE",
    "OPTIONS",
    "LakeConsole",
    "LakeOption",
    "VaultOption",
    "audit_command",
    "cli_message",
    "console",
    "err",
    "open_lake",
    "out",
    "print_suppressed",
    "reported",
    "system_user",
]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_QUARANTINED = 3
EXIT_PROBLEMS = 4
EXIT_INTERNAL = 70

EXIT_CODES_HELP = (
    "Exit codes: 0 success; 1 error (message on stderr); 2 usage error; "
    "3 finished but some files were quarantined; 4 problems found (verify, export skips); "
    "70 internal error."
)


def console(*, stderr: bool = False, file: IO[str] | None = None, width: int | None = None
            ) -> Console:
    """A rich console that prints every value as it is: the lake prints data (query results,
    descriptions, profile names, quarantine reasons, AE titles, file names) that may hold
    ``[b]x[/b]`` or ``:smile:``, text rich would otherwise take for a style or an emoji.

    Neither markup nor emoji codes are interpreted, in strings printed, table cells, column
    names and titles alike; the few messages styled on purpose pass ``markup=True`` to
    ``print`` and :func:`rich.markup.escape` the values they hold (:func:`reported`). Not
    replacing emoji codes also keeps rich's emoji table unimported (~2 ms, issue 14.2).
    """
    from rich.console import Console

    return Console(stderr=stderr, file=file, width=width, markup=False, emoji=False)


class LakeConsole:
    """stdout's or stderr's :func:`console`, built when a command first prints: ``lake
    --help`` and a command that prints nothing import no rich console (~14 ms of CPU)."""

    __slots__ = ("_console", "_stderr")

    def __init__(self, *, stderr: bool = False) -> None:
        self._stderr = stderr
        self._console: Console | None = None

    @property
    def console(self) -> Console:
        """The console itself (for a progress display, which needs one)."""
        if self._console is None:
            self._console = console(stderr=self._stderr)
        return self._console

    @property
    def is_terminal(self) -> bool:
        """Whether it prints to a terminal."""
        return self.console.is_terminal

    def print(self, *objects: object, markup: bool = False, highlight: bool | None = None,
              soft_wrap: bool | None = None) -> None:
        """Print ``objects`` as :meth:`rich.console.Console.print` does; strings as they are
        unless ``markup`` (then escape any value they hold)."""
        self.console.print(*objects, markup=markup, highlight=highlight, soft_wrap=soft_wrap)


out = LakeConsole()
err = LakeConsole(stderr=True)

LakeOption = Annotated[
    str | None,
    typer.Option(
        "--lake",
        envvar="LAKE_ROOT",
        help="Lake root: a folder or an fsspec URL (s3://bucket/lake). Default: $LAKE_ROOT.",
        show_default=False,
    ),
]
VaultOption = Annotated[
    str | None,
    typer.Option(
        "--vault",
        envvar="LAKE_VAULT",
        help="Key vault folder, outside the lake. Default: $LAKE_VAULT.",
        show_default=False,
    ),
]


def print_suppressed(count: int, about: str = "received data") -> None:
    """Say (on stderr) how many parser warnings and library log records about ``about`` were
    suppressed: counts only, their text can quote original values (:mod:`lake._capture`)."""
    if count:
        err.print(
            f"{count:,} parser warnings and library log records about {about} "
            "were suppressed (they can quote original values)",
            highlight=False, soft_wrap=True,
        )


def open_lake(root: str | None) -> lake.Lake:
    """The lake named by ``--lake``/``LAKE_ROOT``.

    Object-store credentials and endpoints come from the standard variables that both fsspec
    (s3fs/botocore) and deltalake read: ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
    ``AWS_REGION``, ``AWS_ENDPOINT_URL`` (and ``AWS_ALLOW_HTTP=true`` for a plain-http endpoint).
    """
    return lake.open(root)


def system_user() -> str:
    """Who runs the command: the operating system's account name (``unknown`` if none)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def audit_command(lk: lake.Lake, action: str, kind: str, resource: str, detail: str = "") -> None:
    """Append one row to the audit log for a command run on the server (actor kind ``system``,
    the account running it), as the portal records the same action."""
    from lake.access import AuditEvent, record_events

    record_events(lk, [AuditEvent(action, "system", system_user(), None, kind, resource,
                                  "ok", detail)])


OPTIONS: Mapping[str, str] = MappingProxyType({
    "all_studies": "--all",
    "allow": "--allow",
    "as_of": "--as-of",
    "cohorts": "--cohort",
    "commit_interval": "--commit-interval",
    "filters": "--query",
    "listen": "--port",
    "no_writers_running": "--no-writers-running",
    "out": "--out",
    "port": "--port",
    "profile": "--profile",
    "replace": "--replace",
    "role": "--role",
    "root": "--lake",
    "scheduler": "--scheduler",
    "skip_weaker": "--skip-weaker",
    "vault": "--vault",
    "via": "--via",
})
"""The option of the command line that sets each library parameter an error may name."""

COMMANDS: Mapping[str, str] = MappingProxyType({
    "Lake.info": "lake info",
    "Lake.sql": "lake sql",
    "Lake.verify": "lake verify",
    "lake.access.list_shares": "lake share list",
    "lake.access.list_tokens": "lake token list",
    "lake.access.list_users": "lake users list",
    "lake.access.mark_teaching_set": "lake teaching add",
    "lake.access.teaching_sets": "lake teaching list",
    "lake.export.create_cohort": "lake cohort create",
    "lake.init": "lake init",
    "lake.steward.forget": "lake forget",
    "lake.steward.list_quarantine": "lake quarantine list",
    "lake.steward.purge": "lake quarantine purge",
    "lake.steward.vacuum": "lake vacuum",
})
"""The command that runs each library function an error may name."""

_VALUE = r"=(True\b|'([^'\s]*)'|([^\s,;:)'\"]+))?"


def cli_message(exc: LakeError) -> str:
    """``exc``'s message as the command line says it.

    Each parameter it names (``root=ROOT``, ``replace=True``, ``via='get'``, listed in
    ``exc.parameters``) is written as the option that sets it (``--lake ROOT``, ``--replace``,
    ``--via get``), each function it names (``Lake.verify()``, listed in ``exc.functions``) as
    the command that runs it (``'lake verify'``).

    Examples
    --------
    >>> cli_message(LakeError("pass root=ROOT, replace=True or via='get'",
    ...                       parameters=("root", "replace", "via")))
    'pass --lake ROOT, --replace or --via get'
    >>> cli_message(LakeError("give port=104", parameters=("port",)))
    'give --port 104'
    >>> cli_message(LakeError("run Lake.verify()", functions=("Lake.verify",)))
    "run 'lake verify'"
    """
    text = str(exc)
    for name in exc.parameters:
        option = OPTIONS.get(name)
        if option is None:
            continue

        def flag(match: re.Match[str], option: str = option) -> str:
            value = match.group(2) or match.group(3)
            return f"{option} {value}" if value else option

        text = re.sub(rf"(?<![\w.]){re.escape(name)}{_VALUE}", flag, text)
    for function in exc.functions:
        command = COMMANDS.get(function)
        if command is not None:
            text = text.replace(f"{function}()", f"'{command}'")
    return text


@contextmanager
def reported() -> Iterator[None]:
    """Turn library errors into one line on stderr and an exit code."""
    try:
        yield
    except LakeError as exc:
        from rich.markup import escape

        err.print(f"[bold red]error:[/] {escape(cli_message(exc))}", highlight=False,
                  markup=True, soft_wrap=True)
        raise typer.Exit(EXIT_ERROR) from None
    except KeyboardInterrupt:
        err.print("interrupted; re-run the same command to finish (no duplicates are created)")
        raise typer.Exit(130) from None
