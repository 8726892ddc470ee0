"""Web commands: ``lake serve web``, ``lake token``, ``lake teaching``, ``lake viewer``.

Thin wrappers over :mod:`lake.web` and :mod:`lake.access`; signals and terminal output
live here.
"""

from __future__ import annotations

import enum
import json
import logging
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer

from lake import ConfigError, VaultError
from pipelines._common import (
    LakeOption,
    VaultOption,
    audit_command,
    err,
    open_lake,
    out,
    reported,
)

__all__ = ["serve_web", "teaching_app", "token_app", "viewer_app"]


def serve_web(
    lake_root: LakeOption = None,
    vault: VaultOption = None,
    host: Annotated[
        str | None,
        typer.Option("--host", help="Address to listen on. Default: lake.json or 127.0.0.1."),
    ] = None,
    port: Annotated[
        int | None, typer.Option("--port", help="TCP port (0: any free port). Default: 8080.")
    ] = None,
    tls_cert: Annotated[
        Path | None, typer.Option("--tls-cert", help="PEM certificate: serve HTTPS only.")
    ] = None,
    tls_key: Annotated[Path | None, typer.Option("--tls-key", help="PEM private key.")] = None,
    allow_anonymous: Annotated[
        bool | None,
        typer.Option(
            "--allow-anonymous/--no-anonymous",
            help="Let requests without a token read the lake (loopback only; never store).",
        ),
    ] = None,
    profile: Annotated[
        str | None, typer.Option(help="De-identification profile for STOW-RS. Default: the lake's.")
    ] = None,
    max_request_mb: Annotated[
        int | None, typer.Option("--max-request-mb", help="Largest STOW-RS request (MiB).")
    ] = None,
    viewer_dir: Annotated[
        Path | None,
        typer.Option("--viewer-dir", help="OHIF's built files. Default: <lake>/viewer."),
    ] = None,
    request_timeout: Annotated[
        float | None,
        typer.Option("--request-timeout",
                     help="Seconds a client has to send its request headers (and most seconds "
                          "without a byte of a body). Default: lake.json or 10."),
    ] = None,
    public_url: Annotated[
        str | None,
        typer.Option("--public-url",
                     help="The address clients use (behind a reverse proxy): the base of "
                          "returned URLs. Default: lake.json or the listening address."),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option("--workers",
                     help="Processes de-identifying STOW-RS instances (0: the server's own "
                          "threads). Default: lake.json or 2."),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No access log.")] = False,
) -> None:
    """Serve DICOMweb (QIDO-RS, WADO-RS, STOW-RS) below /dicomweb and OHIF at /viewer.

    Every request needs a token ('lake token create'), sent as 'Authorization: Bearer
    TOKEN' or, for viewer links, as ?token=TOKEN. Listens on loopback unless told
    otherwise, and never on another address without TLS. Settings default to the "web"
    section of lake.json. SIGINT/SIGTERM stop it cleanly (requests in flight finish,
    stored instances are committed).
    """
    from lake.web import WebConfig, WebServer

    with reported():
        lk = open_lake(lake_root)
        secret = None
        try:
            secret = lk.secret(vault)
        except (VaultError, ConfigError) as exc:  # without the vault the server only reads
            if vault is not None:
                raise
            err.print(f"no vault ({type(exc).__name__}): serving read-only (STOW-RS answers 503)")
        config = WebConfig.from_settings(
            lk.config.web,
            host=host,
            port=port,
            tls_cert=tls_cert,
            tls_key=tls_key,
            allow_anonymous=allow_anonymous,
            profile=profile,
            max_request_bytes=None if max_request_mb is None else max_request_mb * 2**20,
            viewer_dir=viewer_dir,
            request_timeout=request_timeout,
            public_url=public_url,
            workers=workers,
        )
        if not quiet:
            handler = logging.StreamHandler()
            handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
            logging.getLogger("lake.web").addHandler(handler)
            logging.getLogger("lake.web").setLevel(logging.INFO)
        server = WebServer(lk, config, secret)
        stop = threading.Event()

        def on_signal(signum: int, _frame: FrameType | None) -> None:
            stop.set()

        previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            server.start()
            err.print(
                f"serving {server.url}/dicomweb (viewer: {server.url}/viewer; "
                f"portal: {server.url}/portal/)"
                f"{'; anonymous read allowed' if config.allow_anonymous else ''}; "
                "stop with Ctrl-C or SIGTERM",
                highlight=False,
                soft_wrap=True,
            )
            while not stop.wait(0.5):
                if not server.running:
                    break
            err.print("stopping: finishing requests in flight")
        finally:
            server.stop()
            for sig, handler_ in previous.items():
                signal.signal(sig, handler_)
        err.print("stopped")


# --- tokens --------------------------------------------------------------------------

token_app = typer.Typer(
    name="token",
    help="Access tokens for the web services (DICOMweb, viewer).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


class RoleName(enum.StrEnum):
    steward = "steward"
    researcher = "researcher"
    student = "student"


class ListFormat(enum.StrEnum):
    table = "table"
    json = "json"


@token_app.command("create")
def token_create(
    role: Annotated[RoleName, typer.Option("--role", help="steward, researcher or student.")],
    cohort: Annotated[
        list[str] | None,
        typer.Option("--cohort", help="Limit the token to this saved cohort (repeatable)."),
    ] = None,
    expires: Annotated[
        str, typer.Option("--expires", help="Lifetime: 30m, 12h, 7d, 2w or 'never'.")
    ] = "30d",
    note: Annotated[str, typer.Option("--note", help="Who or what uses it (no patient data).")] = "",
    lake_root: LakeOption = None,
) -> None:
    """Create a token and print it once, as the last line (only its hash is stored)."""
    from lake.access import Role, create_token, parse_duration, scope_words

    with reported():
        lk = open_lake(lake_root)
        token, text = create_token(
            lk, Role(role.value), cohorts=cohort or (), expires_in=parse_duration(expires), note=note
        )
        audit_command(lk, "token_created", "token", token.token_id, token.role.value)
        scope = scope_words(token.role, token.cohorts)
        expiry = token.expires_at.isoformat() if token.expires_at else "never"
        out.print(
            f"token {token.token_id}: {token.role.value}, sees {scope}; expires {expiry}",
            highlight=False, soft_wrap=True,
        )
        out.print("Keep it secret; it is not shown again (revoke: lake token revoke ID):",
                  highlight=False)
        print(text, flush=True)


@token_app.command("list")
def token_list(
    lake_root: LakeOption = None,
    fmt: Annotated[ListFormat, typer.Option("--format", help="table or json.")] = ListFormat.table,
) -> None:
    """List tokens (ids, roles, scopes, expiry, revocation; never the tokens)."""
    from rich.table import Table

    from lake.access import list_tokens, scope_words

    with reported():
        tokens = list_tokens(open_lake(lake_root))
        if fmt is ListFormat.json:
            print(json.dumps([t.as_dict() for t in tokens], indent=2))
            return
        table = Table(title=f"{len(tokens)} tokens")
        for name in ("id", "role", "scopes", "note", "created", "expires", "state"):
            table.add_column(name, overflow="fold")
        for t in tokens:
            d = t.as_dict()
            state = "revoked" if t.revoked_at else ("active" if t.is_active() else "expired")
            table.add_row(t.token_id, t.role.value, scope_words(t.role, t.cohorts), t.note,
                          d["created"], d["expires"] or "never", state)
        out.print(table)


@token_app.command("revoke")
def token_revoke(
    token_id: Annotated[str, typer.Argument(help="The token's id (see lake token list).")],
    lake_root: LakeOption = None,
) -> None:
    """Revoke a token; a running server refuses it from the next request on."""
    from lake.access import revoke_token

    with reported():
        lk = open_lake(lake_root)
        token = revoke_token(lk, token_id)
        audit_command(lk, "token_revoked", "token", token.token_id)
        out.print(f"token {token.token_id} revoked", highlight=False)


# --- teaching sets -----------------------------------------------------------------

teaching_app = typer.Typer(
    name="teaching",
    help="Teaching sets: the cohorts student tokens can see.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@teaching_app.command("add")
def teaching_add(
    cohort: Annotated[str, typer.Argument(help="A saved cohort de-identified for teaching.")],
    lake_root: LakeOption = None,
) -> None:
    """Make a cohort a teaching set (its members must be de-identified with 'teaching')."""
    from lake.access import mark_teaching_set

    with reported():
        mark_teaching_set(open_lake(lake_root), cohort)
        out.print(f"{cohort} is a teaching set", highlight=False)


@teaching_app.command("remove")
def teaching_remove(
    cohort: Annotated[str, typer.Argument(help="A teaching set.")],
    lake_root: LakeOption = None,
) -> None:
    """Stop a cohort being a teaching set (student tokens lose sight of it at once)."""
    from lake.access import unmark_teaching_set

    with reported():
        unmark_teaching_set(open_lake(lake_root), cohort)
        out.print(f"{cohort} is no longer a teaching set", highlight=False)


@teaching_app.command("list")
def teaching_list(lake_root: LakeOption = None) -> None:
    """List the teaching sets."""
    from lake.access import teaching_sets

    with reported():
        for name in teaching_sets(open_lake(lake_root)):
            print(name)


# --- viewer ------------------------------------------------------------------------

viewer_app = typer.Typer(
    name="viewer",
    help="The OHIF viewer served by 'lake serve web' at /viewer.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@viewer_app.command("install")
def viewer_install(
    lake_root: LakeOption = None,
    dest: Annotated[
        Path | None,
        typer.Option("--dest", help="Viewer folder. Default: <lake>/viewer (what the server reads)."),
    ] = None,
    version: Annotated[str, typer.Option("--version", help="@ohif/app version.")] = "3.13.2",
    tarball: Annotated[
        Path | None,
        typer.Option("--tarball", help="An already downloaded ohif-app-*.tgz (no npm needed)."),
    ] = None,
) -> None:
    """Fetch OHIF v3 from npm (npm pack @ohif/app) and configure it for this lake's DICOMweb."""
    from lake.web._viewer import install_viewer

    with reported():
        folder = dest
        if folder is None:
            lk = open_lake(lake_root)
            if not lk.location.is_local:
                raise ConfigError("the lake is not a local folder: pass --dest and give the same "
                                  "folder to 'lake serve web --viewer-dir'")
            folder = Path(lk.location.path) / "viewer"
        err.print(f"fetching @ohif/app {version}" + (" from npm" if tarball is None else ""))
        done = install_viewer(folder, version=version, tarball=tarball)
        out.print(f"OHIF {version} installed in {done}; 'lake serve web' serves it at /viewer",
                  highlight=False, soft_wrap=True)

