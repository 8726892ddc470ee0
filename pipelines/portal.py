"""Portal commands: ``lake users`` (accounts) and ``lake share`` (share links).

Thin wrappers over :mod:`lake.access`; each change is written to the audit log with
the system account that ran the command.
"""

from __future__ import annotations

import enum
import json
import sys
from typing import TYPE_CHECKING, Annotated

import typer

from pipelines._common import (
    LakeOption,
    audit_command,
    open_lake,
    out,
    reported,
    system_user,
)

if TYPE_CHECKING:
    import lake

__all__ = ["demo_portal", "share_app", "users_app"]


class RoleName(enum.StrEnum):
    steward = "steward"
    researcher = "researcher"
    student = "student"


class ShareRole(enum.StrEnum):
    student = "student"
    researcher = "researcher"


class ListFormat(enum.StrEnum):
    table = "table"
    json = "json"


def _password(from_stdin: bool) -> str:
    if from_stdin:
        line = sys.stdin.readline()
        return line.rstrip("\r\n")
    text: str = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    return text


# --- accounts ------------------------------------------------------------------------

users_app = typer.Typer(
    name="users",
    help="Portal accounts (sign-in to 'lake serve web' at /portal).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

PasswordStdin = Annotated[
    bool,
    typer.Option("--password-stdin", help="Read the password from the first line of stdin."),
]


@users_app.command("add")
def users_add(
    name: Annotated[str, typer.Argument(help="Account name (lower-case letters, digits, . _ -).")],
    role: Annotated[RoleName, typer.Option("--role", help="steward, researcher or student.")],
    cohort: Annotated[
        list[str] | None,
        typer.Option("--cohort", help="Limit the account to this saved cohort (repeatable)."),
    ] = None,
    password_stdin: PasswordStdin = False,
    lake_root: LakeOption = None,
) -> None:
    """Add an account; the password (asked for, or read from stdin) is stored as an Argon2 hash."""
    from lake.access import add_user, scope_words

    with reported():
        lk = open_lake(lake_root)
        user = add_user(lk, name, role.value, _password(password_stdin), cohorts=cohort or ())
        audit_command(lk, "user_added", "user", user.name, user.role.value)
        out.print(f"account {user.name}: {user.role.value}, sees "
                  f"{scope_words(user.role, user.cohorts)}", highlight=False)


@users_app.command("list")
def users_list(
    lake_root: LakeOption = None,
    fmt: Annotated[ListFormat, typer.Option("--format", help="table or json.")] = ListFormat.table,
) -> None:
    """List the accounts (never their passwords)."""
    from rich.table import Table

    from lake.access import list_users, scope_words

    with reported():
        users = list_users(open_lake(lake_root))
        if fmt is ListFormat.json:
            print(json.dumps([u.as_dict() for u in users], indent=2))
            return
        table = Table(title=f"{len(users)} accounts")
        for column in ("name", "role", "scopes", "created", "password set"):
            table.add_column(column, overflow="fold")
        for u in users:
            d = u.as_dict()
            table.add_row(u.name, u.role.value, scope_words(u.role, u.cohorts), d["created"],
                          d["password_changed"])
        out.print(table)


@users_app.command("remove")
def users_remove(
    name: Annotated[str, typer.Argument(help="The account to remove.")],
    lake_root: LakeOption = None,
) -> None:
    """Remove an account; its portal sessions end on their next request."""
    from lake.access import remove_user

    with reported():
        lk = open_lake(lake_root)
        remove_user(lk, name)
        audit_command(lk, "user_removed", "user", name.strip())
        out.print(f"account {name.strip()} removed", highlight=False)


@users_app.command("passwd")
def users_passwd(
    name: Annotated[str, typer.Argument(help="The account.")],
    password_stdin: PasswordStdin = False,
    lake_root: LakeOption = None,
) -> None:
    """Set an account's password; its sessions signed in before end."""
    from lake.access import set_password

    with reported():
        lk = open_lake(lake_root)
        set_password(lk, name, _password(password_stdin))
        audit_command(lk, "password_set", "user", name.strip())
        out.print(f"password of {name.strip()} set", highlight=False)


# --- share links ---------------------------------------------------------------------

share_app = typer.Typer(
    name="share",
    help="Share links: a read-only URL to one cohort or teaching set in the portal.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _base_url(lk: lake.Lake, given: str | None) -> str:
    if given:
        return given.rstrip("/")
    from lake.web import WebConfig

    config = WebConfig.from_settings(lk.config.web)
    if config.public_url:
        return config.public_url
    host = "localhost" if config.host in ("0.0.0.0", "::") else config.host
    shown = f"[{host}]" if ":" in host else host
    return f"{config.scheme}://{shown}:{config.port}"


@share_app.command("create")
def share_create(
    cohort: Annotated[str, typer.Argument(help="A saved cohort (a teaching set for students).")],
    role: Annotated[
        ShareRole, typer.Option("--role", help="student (teaching sets) or researcher.")
    ] = ShareRole.student,
    expires: Annotated[
        str, typer.Option("--expires", help="Lifetime: 30m, 12h, 7d, 2w or 'never'.")
    ] = "30d",
    base_url: Annotated[
        str | None,
        typer.Option("--base-url", help="The portal's address as users reach it. "
                     "Default: public_url (or the address) in the web section of lake.json."),
    ] = None,
    lake_root: LakeOption = None,
) -> None:
    """Make a share link and print its URL once, as the last line (only a hash is kept)."""
    from lake.access import create_share, parse_duration
    from lake.web.portal import share_url

    with reported():
        lk = open_lake(lake_root)
        share, text = create_share(lk, cohort, role=role.value, expires_in=parse_duration(expires),
                                   created_by=system_user())
        audit_command(lk, "share_created", "share", share.share_id, f"{share.role.value} {cohort}")
        expiry = share.token.expires_at.isoformat() if share.token.expires_at else "never"
        out.print(f"share link {share.share_id}: {share.role.value} view of {cohort}; read and "
                  f"download only; expires {expiry}", highlight=False, soft_wrap=True)
        out.print("Anyone with the URL can open it; revoke: lake share revoke ID", highlight=False)
        print(share_url(_base_url(lk, base_url), text), flush=True)


@share_app.command("list")
def share_list(
    lake_root: LakeOption = None,
    fmt: Annotated[ListFormat, typer.Option("--format", help="table or json.")] = ListFormat.table,
) -> None:
    """List share links (ids, cohorts, expiry, state; never the URLs)."""
    from rich.table import Table

    from lake.access import list_shares

    with reported():
        shares = list_shares(open_lake(lake_root))
        rows = [{"id": s.share_id, "cohort": s.cohort, "role": s.role.value,
                 "created_by": s.created_by, "created": s.token.created_at.isoformat(),
                 "expires": s.token.expires_at.isoformat() if s.token.expires_at else None,
                 "state": s.state()} for s in shares]
        if fmt is ListFormat.json:
            print(json.dumps(rows, indent=2))
            return
        table = Table(title=f"{len(rows)} share links")
        for column in ("id", "cohort", "role", "created by", "created", "expires", "state"):
            table.add_column(column, overflow="fold")
        for r in rows:
            table.add_row(r["id"], r["cohort"], r["role"], r["created_by"], r["created"],
                          r["expires"] or "never", r["state"])
        out.print(table)


@share_app.command("revoke")
def share_revoke(
    share_id: Annotated[str, typer.Argument(help="The link's id (see lake share list).")],
    lake_root: LakeOption = None,
) -> None:
    """Revoke a share link; it stops working on the next request."""
    from lake.access import revoke_share

    with reported():
        lk = open_lake(lake_root)
        share = revoke_share(lk, share_id)
        audit_command(lk, "share_revoked", "share", share.share_id)
        out.print(f"share link {share.share_id} revoked", highlight=False)


def demo_portal(lk: lake.Lake, vault: str, lake_root: str, scheduler: str) -> None:
    """The end of ``lake demo``: accounts, a teaching set, and how to open the portal."""
    from lake._demo import DEMO_ACCOUNTS, DEMO_TEACHING_SET, portal_demo

    passwords = portal_demo(lk, lk.secret(vault), scheduler=scheduler)
    out.print("\n[bold]the portal[/]", highlight=False, markup=True)
    out.print(f"teaching set {DEMO_TEACHING_SET!r} and one account per role are ready. Start:",
              highlight=False)
    out.print(f"  lake serve web --lake {lake_root} --vault {vault}", highlight=False, soft_wrap=True)
    out.print("then open http://127.0.0.1:8080/portal/ and sign in as (local demo only; new "
              "passwords every run):", highlight=False, soft_wrap=True)
    for role, name in DEMO_ACCOUNTS.items():
        out.print(f"  {role:<10} {name:<16} {passwords[name]}", highlight=False, soft_wrap=True)
