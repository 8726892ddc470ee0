"""Stewards' pages: batches, quarantine, accounts, tokens, share links, profiles, audit."""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from lake._errors import AccessError, LakeError, ProfileError
from lake.access import (
    Grant,
    Role,
    add_user,
    create_share,
    create_token,
    event_for,
    list_shares,
    list_tokens,
    list_users,
    parse_duration,
    remove_user,
    revoke_share,
    revoke_token,
    scope_words,
    set_password,
    teaching_sets,
)
from lake.catalog import AUDIT, BATCHES, INSTANCES, QUARANTINE, locked_connection
from lake.export import list_cohorts
from lake.web._json import base_url
from lake.web.portal._render import Column, checked_form, page, table_view

if TYPE_CHECKING:
    from lake.web.portal._portal import Portal

__all__ = ["share_url"]

SHARE_PATH = "/portal/s/"
_AUDIT_SHOWN = 5000


def share_url(base: str, token: str) -> str:
    """The URL of a share link whose token is ``token``, below the portal at ``base``."""
    return f"{base.rstrip('/')}{SHARE_PATH}{token}"


def _portal(request: Request) -> Portal:
    portal: Portal = request.app.state.portal
    return portal


def _rows(portal: Portal, name: str) -> list[dict[str, Any]]:
    if not portal.lake.tables.exists(name):
        return []
    return list(portal.lake.tables.dataset(name).to_table().to_pylist())


def _actor(grant: Grant) -> str:
    return grant.principal.id if grant.principal is not None else "unknown"


# --- overview, batches, quarantine ------------------------------------------------------


def _overview(portal: Portal) -> dict[str, Any]:
    tables = portal.lake.tables
    delta = tables.open(INSTANCES.name)
    adds = pa.table(delta.get_add_actions(flatten=True))
    instances = int(pc.sum(adds.column("num_records")).as_py() or 0) if adds.num_rows else 0
    batches = _rows(portal, BATCHES.name)
    return {
        "version": int(delta.version()),
        "instances": instances,
        "batches": len(batches),
        "files_seen": sum(b["files_seen"] or 0 for b in batches),
        "quarantined": len(_rows(portal, QUARANTINE.name)),
        "cohorts": len(list_cohorts(portal.lake)),
        "teaching_sets": len(teaching_sets(portal.lake)),
        "users": len(list_users(portal.lake)),
        "tokens": sum(1 for t in list_tokens(portal.lake) if t.is_active()),
        "shares": sum(1 for s in list_shares(portal.lake) if s.state() == "active"),
    }


async def overview_page(request: Request, grant: Grant) -> Response:
    """The steward's start page: the lake in numbers."""
    numbers = await run_in_threadpool(_overview, _portal(request))
    return page(request, grant, "steward.html", title="Steward", section="steward",
                sub="overview", numbers=numbers)


async def batches_page(request: Request, grant: Grant) -> Response:
    """Ingest batches, with counts by profile and by de-identification action."""
    rows = await run_in_threadpool(_rows, _portal(request), BATCHES.name)
    by_profile: dict[str, Counter[str]] = defaultdict(Counter)
    actions: Counter[str] = Counter()
    for row in rows:
        totals = by_profile[row["profile"] or "-"]
        totals["batches"] += 1
        for key in ("files_seen", "ingested", "duplicates", "quarantined"):
            totals[key] += int(row[key] or 0)
        for action, count in row["actions"] or ():
            actions[action] += int(count or 0)
        row["action_count"] = sum(int(c or 0) for _, c in row["actions"] or ())
    profiles = [{"profile": p, **c} for p, c in sorted(by_profile.items())]
    table = table_view(request, rows, [
        Column("finished_at", "Finished"), Column("source", "Source"),
        Column("profile", "Profile"), Column("files_seen", "Files"),
        Column("ingested", "Ingested"), Column("duplicates", "Duplicates"),
        Column("quarantined", "Quarantined"), Column("action_count", "Actions"),
        Column("batch_id", "Batch"),
    ], default_sort="finished_at", descending=True)
    return page(request, grant, "batches.html", title="Ingest batches", section="steward",
                sub="batches", table=table, profiles=profiles,
                actions=sorted(actions.items(), key=lambda kv: (-kv[1], kv[0])))


def _quarantine_rows(portal: Portal) -> list[dict[str, Any]]:
    from lake.steward import list_quarantine

    return [{"id": e.id, "short": e.id[:16], "reason": e.reason, "message": e.message,
             "size_bytes": e.size_bytes, "quarantined_at": e.quarantined_at,
             "batch_id": e.batch_id, "sealed": e.sealed}
            for e in list_quarantine(portal.lake)]


async def quarantine_page(request: Request, grant: Grant, *, done: str | None = None,
                          error: str | None = None) -> Response:
    """What the lake refused, by reason, with review actions (originals are never shown)."""
    from lake.deid import list_profiles

    portal = _portal(request)
    rows = await run_in_threadpool(_quarantine_rows, portal)
    reasons = Counter(r["reason"] or "-" for r in rows)
    wanted = request.query_params.get("reason")
    shown = [r for r in rows if not wanted or r["reason"] == wanted]
    table = table_view(request, shown, [
        Column("quarantined_at", "When"), Column("reason", "Reason"),
        Column("message", "Message"), Column("size_bytes", "Size"),
        Column("short", "Content sha256", sortable=False), Column("batch_id", "Batch"),
        Column("id", "Review", sortable=False),
    ], default_sort="quarantined_at", descending=True)
    return page(request, grant, "quarantine.html", title="Quarantine", section="steward",
                sub="quarantine", table=table, reasons=sorted(reasons.items()),
                reason=wanted or "", profiles=list_profiles(),
                can_release=portal.secret is not None, done=done, error=error,
                status=400 if error else 200)


async def quarantine_review(request: Request, grant: Grant) -> Response:
    """Release a quarantined file through a profile, or purge it (``lake quarantine``)."""
    from lake.steward import purge, release

    portal = _portal(request)
    form = await checked_form(request, grant)
    ident = request.path_params["ident"]
    action = str(form.get("action") or "")
    done, error = None, None
    try:
        if action == "purge":

            def purge_one() -> None:
                # (the lock is taken in the worker thread: held on the event loop across an
                # await, a second purge would block the loop, and with it every request)
                with portal.catalog_lock:
                    purge(portal.lake, [ident])

            await run_in_threadpool(purge_one)
            done = "The file was purged: its row and its sealed original are gone."
        elif action == "release":
            secret = portal.secret
            if secret is None:
                raise AccessError("releasing needs the vault: start 'lake serve web' with "
                                  "--vault, or run 'lake quarantine release' on the server")
            profile = str(form.get("profile") or "")

            def run() -> Any:
                with portal.catalog_lock:
                    return release(portal.lake, secret, ident, _load(profile))

            outcome = await run_in_threadpool(run)
            done = (f"Released through {profile}: {outcome.outcome}"
                    + (f" ({outcome.reason})" if outcome.reason else "") + ".")
        else:
            raise AccessError("choose release or purge")
    except LakeError as exc:
        error = str(exc)
    portal.record(event_for(grant.principal, f"quarantine_{action or 'review'}",
                            resource_kind="quarantine", resource=ident[:64],
                            outcome="failed" if error else "ok"))
    return await quarantine_page(request, grant, done=done, error=error)


# --- accounts --------------------------------------------------------------------------


async def users_page(request: Request, grant: Grant) -> Response:
    """Accounts, with forms to add and remove them."""
    portal = _portal(request)
    users = await run_in_threadpool(list_users, portal.lake)
    return page(request, grant, "users.html", title="Accounts", section="steward", sub="users",
                users=users, roles=[r.value for r in Role], error=None, done=None)


async def user_add(request: Request, grant: Grant) -> Response:
    """Add an account."""
    portal = _portal(request)
    form = await checked_form(request, grant)
    name = str(form.get("name") or "").strip().lower()
    role = str(form.get("role") or "")
    password = str(form.get("password") or "")
    cohorts = [c.strip() for c in str(form.get("cohorts") or "").split(",") if c.strip()]
    error = None
    try:
        if role not in {r.value for r in Role}:
            raise AccessError("choose a role: steward, researcher or student")
        await run_in_threadpool(add_user, portal.lake, name, role, password, cohorts=cohorts)
    except (LakeError, ValueError) as exc:
        error = str(exc)
    else:
        portal.record(event_for(grant.principal, "user_added", resource_kind="user",
                                resource=name, detail=role))
    users = await run_in_threadpool(list_users, portal.lake)
    return page(request, grant, "users.html", title="Accounts", section="steward", sub="users",
                users=users, roles=[r.value for r in Role], error=error,
                done=None if error else f"Account {name} added.",
                status=400 if error else 200)


async def user_remove(request: Request, grant: Grant) -> Response:
    """Remove an account and end its sessions."""
    portal = _portal(request)
    await checked_form(request, grant)
    name = request.path_params["name"]
    await run_in_threadpool(remove_user, portal.lake, name)
    portal.access.sessions.end_user(name)
    portal.record(event_for(grant.principal, "user_removed", resource_kind="user",
                            resource=name))
    return RedirectResponse("/portal/steward/users", status_code=303)


async def user_password(request: Request, grant: Grant) -> Response:
    """Set an account's password (its sessions end)."""
    portal = _portal(request)
    form = await checked_form(request, grant)
    name = request.path_params["name"]
    await run_in_threadpool(set_password, portal.lake, name, str(form.get("password") or ""))
    portal.access.sessions.end_user(name)
    portal.record(event_for(grant.principal, "password_set", resource_kind="user",
                            resource=name))
    return RedirectResponse("/portal/steward/users", status_code=303)


# --- tokens and share links --------------------------------------------------------------


def _token_rows(portal: Portal) -> list[dict[str, Any]]:
    shares = {s.share_id for s in list_shares(portal.lake)}
    rows = []
    for t in list_tokens(portal.lake):
        if t.token_id in shares:
            continue
        state = "revoked" if t.revoked_at else ("active" if t.is_active() else "expired")
        rows.append({"id": t.token_id, "role": t.role.value,
                     "scopes": scope_words(t.role, t.cohorts), "note": t.note,
                     "created": t.created_at, "expires": t.expires_at, "state": state})
    return rows


async def tokens_page(request: Request, grant: Grant) -> Response:
    """Bearer tokens of the web services, with revocation."""
    portal = _portal(request)
    rows = await run_in_threadpool(_token_rows, portal)
    table = table_view(request, rows, [
        Column("id", "Id"), Column("role", "Role"), Column("scopes", "Sees"),
        Column("note", "Note"), Column("created", "Created"), Column("expires", "Expires"),
        Column("state", "State"),
    ], default_sort="created", descending=True)
    return page(request, grant, "tokens.html", title="Tokens", section="steward", sub="tokens",
                table=table, roles=[r.value for r in Role], created=None, error=None)


async def token_create(request: Request, grant: Grant) -> Response:
    """Create a token; its text is shown on this page once."""
    portal = _portal(request)
    form = await checked_form(request, grant)
    role = str(form.get("role") or "")
    cohorts = [c.strip() for c in str(form.get("cohorts") or "").split(",") if c.strip()]
    note = str(form.get("note") or "")[:200]
    created, error = None, None
    try:
        if role not in {r.value for r in Role}:
            raise AccessError("choose a role: steward, researcher or student")
        expires = parse_duration(str(form.get("expires") or "30d"))
        record, created = await run_in_threadpool(
            lambda: create_token(portal.lake, role, cohorts=cohorts, expires_in=expires,
                                 note=note))
    except LakeError as exc:
        error = str(exc)
    else:
        portal.record(event_for(grant.principal, "token_created", resource_kind="token",
                                resource=record.token_id, detail=role))
    rows = await run_in_threadpool(_token_rows, portal)
    table = table_view(request, rows, [
        Column("id", "Id"), Column("role", "Role"), Column("scopes", "Sees"),
        Column("note", "Note"), Column("created", "Created"), Column("expires", "Expires"),
        Column("state", "State"),
    ], default_sort="created", descending=True)
    return page(request, grant, "tokens.html", title="Tokens", section="steward", sub="tokens",
                table=table, roles=[r.value for r in Role], created=created, error=error,
                status=400 if error else 200)


async def token_revoke(request: Request, grant: Grant) -> Response:
    """Revoke a token."""
    portal = _portal(request)
    await checked_form(request, grant)
    token_id = request.path_params["token_id"]
    record = await run_in_threadpool(revoke_token, portal.lake, token_id)
    portal.record(event_for(grant.principal, "token_revoked", resource_kind="token",
                            resource=record.token_id))
    return RedirectResponse("/portal/steward/tokens", status_code=303)


def _share_rows(portal: Portal) -> list[dict[str, Any]]:
    return [{"id": s.share_id, "cohort": s.cohort, "role": s.role.value,
             "by": s.created_by, "created": s.token.created_at, "expires": s.token.expires_at,
             "state": s.state()} for s in list_shares(portal.lake)]


async def _shares(request: Request, grant: Grant, *, url: str | None = None,
                  error: str | None = None) -> Response:
    portal = _portal(request)
    rows = await run_in_threadpool(_share_rows, portal)
    cohorts = [s.name for s in await run_in_threadpool(list_cohorts, portal.lake)]
    table = table_view(request, rows, [
        Column("id", "Id"), Column("cohort", "Cohort"), Column("role", "View"),
        Column("by", "Made by"), Column("created", "Created"), Column("expires", "Expires"),
        Column("state", "State"),
    ], default_sort="created", descending=True)
    return page(request, grant, "shares.html", title="Share links", section="steward",
                sub="shares", table=table, cohorts=cohorts,
                teaching=teaching_sets(portal.lake), url=url, error=error,
                status=400 if error else 200)


async def shares_page(request: Request, grant: Grant) -> Response:
    """Share links, with forms to make and revoke them."""
    return await _shares(request, grant)


async def share_create(request: Request, grant: Grant) -> Response:
    """Make a share link; its URL is shown on this page once."""
    portal = _portal(request)
    form = await checked_form(request, grant)
    cohort = str(form.get("cohort") or "")
    role = str(form.get("role") or "student")
    try:
        if role not in ("student", "researcher"):
            raise AccessError("a share link gives a student's or a researcher's view")
        expires = parse_duration(str(form.get("expires") or "30d"))
        share, text = await run_in_threadpool(
            lambda: create_share(portal.lake, cohort, role=role, expires_in=expires,
                                 created_by=_actor(grant)))
    except LakeError as exc:
        return await _shares(request, grant, error=str(exc))
    portal.record(event_for(grant.principal, "share_created", resource_kind="share",
                            resource=share.share_id, detail=f"{role} {cohort}"))
    return await _shares(request, grant, url=share_url(base_url(request), text))


async def share_revoke(request: Request, grant: Grant) -> Response:
    """Revoke a share link; it stops working on its next request."""
    portal = _portal(request)
    await checked_form(request, grant)
    share = await run_in_threadpool(revoke_share, portal.lake, request.path_params["share_id"])
    portal.record(event_for(grant.principal, "share_revoked", resource_kind="share",
                            resource=share.share_id))
    return RedirectResponse("/portal/steward/shares", status_code=303)


# --- profiles ------------------------------------------------------------------------------


def _profiles() -> list[dict[str, Any]]:
    from lake.deid import list_profiles, load_profile

    out = []
    for name in list_profiles():
        p = load_profile(name)
        out.append({"name": p.name, "version": p.version, "sha": p.sha256[:12],
                    "options": ", ".join(o.value for o in p.options) or "-",
                    "description": p.description})
    return out


async def profiles_page(request: Request, grant: Grant) -> Response:
    """The built-in de-identification profiles."""
    profiles = await run_in_threadpool(_profiles)
    return page(request, grant, "profiles.html", title="Profiles", section="steward",
                sub="profiles", profiles=profiles, names=[p["name"] for p in profiles])


_PROFILE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


def _load(name: str) -> Any:
    from lake.deid import list_profiles, load_profile

    if not _PROFILE.match(name) or name not in list_profiles():  # built-ins only: no paths
        raise ProfileError(f"no built-in profile named {name!r}")
    return load_profile(name)


async def profile_page(request: Request, grant: Grant) -> Response:
    """Every attribute's action in one profile (``lake profiles show``)."""
    profile = await run_in_threadpool(_load, request.path_params["name"])
    rows = profile.describe()
    needle = request.query_params.get("grep", "").strip().lower()
    if needle:
        rows = [r for r in rows if any(needle in str(v).lower() for v in r.values())]
    table = table_view(request, rows, [
        Column("field", "Field"), Column("name", "Attribute"), Column("action", "Action"),
        Column("effect", "Effect"), Column("layer", "Layer"),
    ], default_sort="field", page_size=100)
    return page(request, grant, "profile.html", title=f"Profile {profile.name}",
                section="steward", sub="profiles", profile=profile, table=table, grep=needle)


def _diff(a: Any, b: Any) -> list[dict[str, str]]:
    left = {r["field"]: r for r in a.describe()}
    right = {r["field"]: r for r in b.describe()}
    rows = []
    for key in sorted(left.keys() | right.keys()):
        ra, rb = left.get(key), right.get(key)
        shown_a = f"{ra['action']} ({ra['effect']})" if ra else "-"
        shown_b = f"{rb['action']} ({rb['effect']})" if rb else "-"
        if shown_a != shown_b:
            rows.append({"field": key, "name": (ra or rb or {}).get("name", ""),
                         "a": shown_a, "b": shown_b})
    return rows


async def profile_diff_page(request: Request, grant: Grant) -> Response:
    """The attributes whose action differs between two profiles (``lake profiles diff``)."""
    names = [p["name"] for p in await run_in_threadpool(_profiles)]
    a_name = request.query_params.get("a", names[0] if names else "")
    b_name = request.query_params.get("b", names[-1] if names else "")
    a, b = await run_in_threadpool(_load, a_name), await run_in_threadpool(_load, b_name)
    rows = await run_in_threadpool(_diff, a, b)
    table = table_view(request, rows, [
        Column("field", "Field"), Column("name", "Attribute"), Column("a", a.name),
        Column("b", b.name),
    ], default_sort="field", page_size=100)
    return page(request, grant, "profile_diff.html", title=f"{a.name} vs {b.name}",
                section="steward", sub="profiles", a=a, b=b, table=table, names=names)


# --- audit ---------------------------------------------------------------------------------


def _audit_rows(portal: Portal, action: str, actor: str) -> tuple[list[dict[str, Any]], int]:
    portal.audit.flush()
    if not portal.lake.tables.exists(AUDIT.name):
        return [], 0
    con = locked_connection({"audit": portal.lake.tables.dataset(AUDIT.name)})
    try:
        where = "WHERE (? = '' OR action = ?) AND (? = '' OR actor = ?)"
        params = [action, action, actor, actor]
        total = con.execute(f"SELECT count(*) FROM audit {where}", params).fetchall()[0][0]
        cursor = con.execute(
            f'SELECT * FROM audit {where} ORDER BY "at" DESC LIMIT {_AUDIT_SHOWN}', params
        )
        names = [d[0] for d in cursor.description or []]
        rows = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
    finally:
        con.close()
    return rows, int(total)


async def audit_page(request: Request, grant: Grant) -> Response:
    """The audit log, newest first, filtered by action or actor."""
    portal = _portal(request)
    action = request.query_params.get("action", "")[:64]
    actor = request.query_params.get("actor", "")[:64]
    rows, total = await run_in_threadpool(_audit_rows, portal, action, actor)
    table = table_view(request, rows, [
        Column("at", "When"), Column("actor_kind", "Via"), Column("actor", "Who"),
        Column("role", "Role"), Column("action", "Action"), Column("resource_kind", "On"),
        Column("resource", "Resource"), Column("outcome", "Outcome"),
        Column("detail", "Detail"),
    ], default_sort="at", descending=True, page_size=50)
    return page(request, grant, "audit.html", title="Audit log", section="steward", sub="audit",
                table=table, total=total, action=action, actor=actor,
                lake_root=portal.lake.root)

