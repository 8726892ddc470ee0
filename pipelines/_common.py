"""What every command shares: the lake/vault options, consoles, exit codes, error handling."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

import typer
from rich.console import Console

import lake
from lake import LakeError

__all__ = [
    "EXIT_ERROR",
    "EXIT_INTERNAL",
    "EXIT_OK",
    "EXIT_PROBLEMS",
    "EXIT_QUARANTINED",
    "EXIT_USAGE",
    "LakeOption",
    "VaultOption",
    "err",
    "open_lake",
    "out",
    "reported",
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

out = Console()
err = Console(stderr=True)

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


@contextmanager
def reported() -> Iterator[None]:
    """Turn library errors into one line on stderr and an exit code."""
    try:
        yield
    except LakeError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False, markup=True, soft_wrap=True)
        raise typer.Exit(EXIT_ERROR) from None
    except KeyboardInterrupt:
        err.print("interrupted; re-run the same command to finish (no duplicates are created)")
        raise typer.Exit(130) from None
