"""What every command shares: the lake/vault options, consoles, exit codes, error handling."""

from __future__ import annotations

import getpass
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from types import MappingProxyType
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

import lake
from lake import LakeError

__all__ = [
    "COMMANDS",
    "EXIT_ERROR",
    "EXIT_INTERNAL",
    "EXIT_OK",
    "EXIT_PROBLEMS",
    "EXIT_QUARANTINED",
    "EXIT_USAGE",
    "OPTIONS",
    "LakeOption",
    "VaultOption",
    "audit_command",
    "cli_message",
    "err",
    "open_lake",
    "out",
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

#: Emoji codes are not replaced: the lake prints data (query results, paths, descriptions)
#: that may hold ``:name:`` text, which must print as it is; and rich's emoji table is then not
#: imported (~2 ms of every command that prints, issue 14.2).
out = Console(emoji=False)
err = Console(stderr=True, emoji=False)

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
        err.print(f"[bold red]error:[/] {escape(cli_message(exc))}", highlight=False,
                  markup=True, soft_wrap=True)
        raise typer.Exit(EXIT_ERROR) from None
    except KeyboardInterrupt:
        err.print("interrupted; re-run the same command to finish (no duplicates are created)")
        raise typer.Exit(130) from None
