"""The steward's commands: forget, quarantine review, maintenance."""

from __future__ import annotations

import enum
import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from pipelines._common import (
    EXIT_QUARANTINED,
    LakeOption,
    VaultOption,
    err,
    open_lake,
    out,
    reported,
)

__all__ = [
    "compact_command",
    "forget_command",
    "gc_command",
    "quarantine_app",
    "vacuum_command",
]


def forget_command(
    lake_root: LakeOption = None,
    vault: VaultOption = None,
    patient: Annotated[
        str | None,
        typer.Option("--patient", help="The PatientID as stored in the lake (the pseudonym)."),
    ] = None,
    study: Annotated[
        str | None, typer.Option("--study", help="A StudyInstanceUID as stored in the lake.")
    ] = None,
    series: Annotated[
        str | None, typer.Option("--series", help="A SeriesInstanceUID as stored in the lake.")
    ] = None,
    original_patient_id: Annotated[
        str | None,
        typer.Option(
            "--original-patient-id",
            help="The hospital's PatientID, resolved to the pseudonym with the vault's keys.",
        ),
    ] = None,
    yes: Annotated[
        bool, typer.Option("--yes", help="Erase. Without it, only show what would go.")
    ] = False,
    by: Annotated[
        str | None,
        typer.Option("--by", help="Who erases, for the record (default: your account name)."),
    ] = None,
) -> None:
    """Erase a patient, study or series from the lake for good (withdrawn consent).

    Without --yes, lists what would go (counts). With --yes, deletes the instances' rows
    from every version of every table, their pixel blobs (unless shared), quarantined
    originals and spooled instances, withdraws them from saved cohorts, redacts the audit
    rows that name them, scrubs the Delta logs, and records the erasure (no identifier) in
    the erasures table. Versions that held them can no longer be queried. Interrupted: run
    it again to finish.
    """
    from lake.steward import forget, plan_forget, target

    with reported():
        lk = open_lake(lake_root)
        secret = lk.secret(vault)
        chosen = target(
            lk,
            secret,
            patient=patient,
            study=study,
            series=series,
            original_patient_id=original_patient_id,
        )
        if not yes:
            plan = plan_forget(lk, secret, chosen)
            _show(plan, "would erase")
            err.print("dry run: nothing was erased; add --yes to erase", highlight=False)
            return
        report = forget(lk, secret, chosen, by=by)
        _show(report.plan, "erased")
        spans = sum(len(v) for v in report.unreadable.values())
        out.print(
            f"erasure {report.erasure_id} recorded; catalog version {report.catalog_version}; "
            f"{spans} range(s) of older versions can no longer be read; whatever of this "
            f"{chosen.kind} arrives later is dropped when committed",
            highlight=False,
            soft_wrap=True,
        )
        if report.maintenance_failures:
            err.print(
                f"{len(report.maintenance_failures)} maintenance step(s) after the erasure "
                f"failed (the erasure is complete): {'; '.join(report.maintenance_failures)}",
                highlight=False,
                soft_wrap=True,
            )


def _show(plan: object, verb: str) -> None:
    from lake.steward import ErasurePlan

    assert isinstance(plan, ErasurePlan)
    if not plan.instances and not plan.quarantined and not plan.spooled:
        out.print(f"nothing to erase for this {plan.target.kind}", highlight=False)
        return
    out.print(
        f"{verb}: {plan.instances:,} instances ({plan.series:,} whole series, "
        f"{plan.studies:,} whole studies), {plan.blobs:,} pixel blobs, "
        f"{plan.quarantined:,} quarantined originals, {plan.spooled:,} spooled instances; "
        f"{plan.cohorts:,} cohorts lose members, {plan.exports:,} portal exports go; "
        f"{plan.files:,} table data files rewritten "
        f"out of history; {plan.audit_rows:,} audit rows redacted",
        highlight=False,
        soft_wrap=True,
    )


quarantine_app = typer.Typer(
    help="Review quarantined files: list, show, release, export, purge, locate.",
    no_args_is_help=True,
)


class ListFormat(enum.StrEnum):
    table = "table"
    json = "json"


IdArgument = Annotated[
    str, typer.Argument(help="The file's ID (its sha256; 8+ leading digits are enough).")
]


@quarantine_app.command("list")
def quarantine_list(
    lake_root: LakeOption = None,
    reason: Annotated[str | None, typer.Option(help="Only files of this reason code.")] = None,
    fmt: Annotated[ListFormat, typer.Option("--format", "-f", help="Output format.")] = (
        ListFormat.table
    ),
) -> None:
    """One line per quarantined file: ID, reason, size, when, batch (no path, no value)."""
    from lake.steward import list_quarantine

    with reported():
        entries = list_quarantine(open_lake(lake_root), reason)
    if fmt is ListFormat.json:
        rows = [
            {
                "id": e.id or None,
                "reason": e.reason,
                "message": e.message,
                "size_bytes": e.size_bytes,
                "quarantined_at": e.quarantined_at.isoformat() if e.quarantined_at else None,
                "batch_id": e.batch_id,
                "sealed": e.sealed,
            }
            for e in entries
        ]
        sys.stdout.write(json.dumps(rows) + "\n")
        return
    from rich.table import Table

    table = Table(title=f"{len(entries)} quarantined file(s)")
    for column in ("id", "reason", "size", "when", "batch", "sealed"):
        table.add_column(column, overflow="fold")
    for e in entries:
        table.add_row(
            e.id[:16] if e.id else "-",
            e.reason,
            "" if e.size_bytes is None else f"{e.size_bytes:,}",
            e.quarantined_at.strftime("%Y-%m-%d %H:%M") if e.quarantined_at else "",
            (e.batch_id or "")[:12],
            "yes" if e.sealed else "no",
        )
    out.print(table)


@quarantine_app.command("show")
def quarantine_show(
    ident: IdArgument,
    lake_root: LakeOption = None,
    vault: VaultOption = None,
    show_values: Annotated[
        bool,
        typer.Option("--show-values", help="Show the original values (identifying: steward only)."),
    ] = False,
) -> None:
    """The header of a quarantined original, decrypted with the vault; values masked by default."""
    from lake.steward import show

    with reported():
        lk = open_lake(lake_root)
        entry, lines = show(lk, lk.secret(vault), ident, show_values=show_values)
    out.print(f"{entry.id}  {entry.reason}: {entry.message}", highlight=False, soft_wrap=True)
    if not lines:
        out.print(
            "(no DICOM header: a document (PDF, picture, video) or an unreadable file; "
            "'lake quarantine export' writes the original out)",
            highlight=False,
        )
    for line in lines:
        out.print(
            f"{'  ' * line.depth}{line.tag} {line.keyword or '?'} {line.vr} {line.value}",
            highlight=False,
            soft_wrap=True,
        )


@quarantine_app.command("release")
def quarantine_release(
    ident: IdArgument,
    profile: Annotated[str, typer.Option(help="Profile to re-run it through (name or file).")],
    lake_root: LakeOption = None,
    vault: VaultOption = None,
    study: Annotated[
        str | None,
        typer.Option(
            "--study",
            help="For a document (PDF, picture, video): the original StudyInstanceUID or "
            "AccessionNumber of the study of the lake it belongs to.",
        ),
    ] = None,
) -> None:
    """Re-run a quarantined original through a profile: it lands, or stays with the new reason.

    Exit code 3 when it stays quarantined.
    """
    from lake.steward import release

    with reported():
        lk = open_lake(lake_root)
        result = release(lk, lk.secret(vault), ident, profile, study=study)
    if result.outcome == "quarantined":
        err.print(f"{result.entry.id[:16]} stays quarantined: {result.reason}", highlight=False)
        raise typer.Exit(EXIT_QUARANTINED)
    out.print(
        f"{result.entry.id[:16]} {result.outcome} (catalog version {result.catalog_version})",
        highlight=False,
    )


@quarantine_app.command("export")
def quarantine_export(
    ident: IdArgument,
    output: Annotated[Path, typer.Option("--out", help="Folder outside the lake.")],
    lake_root: LakeOption = None,
    vault: VaultOption = None,
) -> None:
    """Write the decrypted original of a quarantined file to a folder (for the steward)."""
    from lake.steward import export_original

    with reported():
        lk = open_lake(lake_root)
        path = export_original(lk, lk.secret(vault), ident, output)
    out.print(f"written: {path}", highlight=False, soft_wrap=True)


@quarantine_app.command("purge")
def quarantine_purge(
    idents: Annotated[list[str] | None, typer.Argument(help="IDs of the files to discard.")] = None,
    lake_root: LakeOption = None,
    reason: Annotated[
        str | None, typer.Option(help="Discard every file quarantined for this reason.")
    ] = None,
) -> None:
    """Discard quarantined files for good: their rows and sealed originals."""
    from lake.steward import purge

    with reported():
        count = purge(open_lake(lake_root), idents or [], reason=reason)
    out.print(f"purged {count} quarantined file(s)", highlight=False)


@quarantine_app.command("locate")
def quarantine_locate(
    sources: Annotated[list[Path], typer.Argument(help="Local files and folders to look up.")],
    lake_root: LakeOption = None,
) -> None:
    """Which of these local files are quarantined (by content hash; the lake stores no path)."""
    from lake.steward import locate

    with reported():
        found = list(locate(open_lake(lake_root), [str(s) for s in sources]))
    for path, entry in found:  # paths as the steward typed them; one line each, tab-separated
        sys.stdout.write(f"{path}\t{entry.id[:16]}\t{entry.reason}\n")
    if not found:
        err.print("none of these files is quarantined", highlight=False)


def compact_command(
    lake_root: LakeOption = None,
    sort: Annotated[
        bool,
        typer.Option("--sort", help="Also sort instances by SOPInstanceUID (rewrites every file)."),
    ] = False,
    target_mb: Annotated[int, typer.Option(help="Target size of a merged data file.")] = 256,
) -> None:
    """Merge small data files (one per ingest batch) into large ones; safe while ingests run.

    No row changes: query results and --as-of stay the same.
    """
    from lake.steward import compact

    with reported():
        reports = compact(open_lake(lake_root), sort=sort, target_mb=target_mb)
    for r in reports:
        out.print(
            f"{r.table}: {r.files_before} -> {r.files_after} data files (version {r.version})",
            highlight=False,
        )


def gc_command(
    lake_root: LakeOption = None,
    grace_hours: Annotated[
        float,
        typer.Option(
            help="Only touch files older than this: it protects batches in flight, so below "
            "1 hour it needs --no-writers-running."
        ),
    ] = 1.0,
    no_writers_running: Annotated[
        bool,
        typer.Option(
            "--no-writers-running",
            help="Allow a grace below 1 hour: you make sure no ingest, DICOM receiver or "
            "upload writes to the lake until gc ends (their files in flight would go).",
        ),
    ] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only list what would go.")] = False,
) -> None:
    """Remove what crashes and lost races left and nothing references.

    Pixel blobs no row of any version, cohort or spool names; data files no version adds;
    sealed originals no quarantine row names; temporary files. Safe while ingests run with
    the grace of at least 1 hour (the default); a shorter one is refused unless
    --no-writers-running.
    """
    import datetime as dt

    from lake.steward import gc

    with reported():
        report = gc(
            open_lake(lake_root),
            grace=dt.timedelta(hours=grace_hours),
            dry_run=dry_run,
            no_writers_running=no_writers_running,
        )
    verb = "would remove" if dry_run else "removed"
    out.print(
        f"{verb} {len(report.blobs)} blobs, {len(report.data_files)} data files, "
        f"{len(report.sealed)} sealed originals, {len(report.temporary)} temporary files "
        f"({report.bytes / 1e6:,.1f} MB)",
        highlight=False,
    )


def vacuum_command(
    retain: Annotated[
        float, typer.Option("--retain", help="Keep every version committed in the last DAYS.")
    ],
    lake_root: LakeOption = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only list what would go.")] = False,
) -> None:
    """Delete data files only older versions read; versions pinned by cohorts are kept.

    Older versions can no longer be queried afterwards.
    """
    import datetime as dt

    from lake.steward import vacuum

    with reported():
        report = vacuum(open_lake(lake_root), retain=dt.timedelta(days=retain), dry_run=dry_run)
    verb = "would remove" if dry_run else "removed"
    out.print(
        f"{verb} {len(report.files)} data files ({report.bytes / 1e6:,.1f} MB); "
        f"instances readable from version {report.oldest_kept.get('instances', 0)} "
        "(and versions pinned by cohorts)",
        highlight=False,
    )
