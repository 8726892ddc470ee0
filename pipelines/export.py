"""``lake cohort ...`` and ``lake export ...``: thin commands over :mod:`lake.export`."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated

import typer

import lake
from lake.compute import SCHEDULERS
from pipelines._common import EXIT_PROBLEMS, LakeOption, err, open_lake, out, reported

if TYPE_CHECKING:  # heavy imports wait for the command that needs them (issue 14.1)
    from rich.progress import TaskID

    from lake.export import Cohort, ExportResult

__all__ = [
    "cohort_app",
    "cohort_create",
    "cohort_list",
    "cohort_show",
    "export_app",
    "export_bids_command",
    "export_dicom_command",
    "export_nifti_command",
    "export_teaching_command",
]

cohort_app = typer.Typer(
    rich_markup_mode=None,  # plain help: rich's renderer costs 0.2 s a run (issue 14.1)
    name="cohort",
    help="Save cohort queries frozen to a catalog version; list and show them.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
export_app = typer.Typer(
    rich_markup_mode=None,  # plain help: rich's renderer costs 0.2 s a run (issue 14.1)
    name="export",
    help="Export a saved cohort (or a one-off --sql query) as NIfTI, BIDS, DICOM or a teaching "
    "set. "
    "Every export writes manifest.json, resumes when re-run after an interruption, and exits "
    "with code 4 when something was skipped (listed in the manifest).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

CohortArgument = Annotated[
    str | None,
    typer.Argument(help="Name of a saved cohort (see 'lake cohort list'). Or use --sql.",
                   show_default=False),
]
SqlOption = Annotated[
    str | None,
    typer.Option("--sql", help="A one-off cohort query returning SeriesInstanceUID (or "
                 "SOPInstanceUID), instead of a saved cohort.", show_default=False),
]
AsOfOption = Annotated[
    int | None,
    typer.Option("--as-of", help="Run --sql on this catalog version (see 'lake info').",
                 show_default=False),
]
OutOption = Annotated[
    str,
    typer.Option("--out", "-o", help="Output folder: new or empty, or that of an interrupted "
                 "run of the same export (it resumes).", show_default=False),
]
SchedulerOption = Annotated[
    str,
    typer.Option(help=f"Where to run: {', '.join(SCHEDULERS)}, or a Dask scheduler address "
                 "tcp://HOST:PORT. auto: in this process below a measured job size, else a local "
                 "cluster."),
]
WorkersOption = Annotated[int | None, typer.Option(help="Local workers (default: CPU count).")]
QuietOption = Annotated[
    bool, typer.Option("--quiet", "-q", help="No progress bar; the summary as plain lines.")
]


def cohort_create(
    name: Annotated[str, typer.Argument(help="Cohort name: letters, digits, '.', '_', '-'.")],
    sql: Annotated[
        str,
        typer.Option("--sql", help="Query returning SeriesInstanceUID (whole series) or "
                     "SOPInstanceUID (single instances).", show_default=False),
    ],
    lake_root: LakeOption = None,
    description: Annotated[str, typer.Option(help="A note for yourself.")] = "",
    replace: Annotated[
        bool, typer.Option("--replace", help="Redefine an existing cohort of that name.")
    ] = False,
    as_of: AsOfOption = None,
) -> None:
    """Run a query and save its members, frozen to the current catalog version.

    Exports of the cohort read the catalog as of that version, so they give the same
    files whatever was ingested since.
    """
    with reported():
        lk = open_lake(lake_root)
        from lake.export import create_cohort

        cohort = create_cohort(lk, name, sql, description=description, replace=replace,
                               as_of=as_of)
        out.print(
            f"cohort {cohort.name}: {len(cohort.series)} series, {len(cohort.members)} instances "
            f"at catalog version {cohort.catalog_version}",
            highlight=False,
        )


def cohort_list(
    lake_root: LakeOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """List saved cohorts."""
    with reported():
        from lake.export import list_cohorts

        summaries = list_cohorts(open_lake(lake_root))
    if as_json:
        rows = [
            {
                "name": s.name,
                "description": s.description,
                "catalog_version": s.catalog_version,
                "created_at": s.created_at.isoformat(),
                "series": s.series_count,
                "instances": s.instance_count,
                "pixel_bytes": s.pixel_bytes,
                "profiles": list(s.profiles),
                "query": s.query,
            }
            for s in summaries
        ]
        typer.echo(json.dumps(rows, indent=2))
        return
    from rich.table import Table

    table = Table(title="cohorts")
    for column in ("name", "version", "series", "instances", "MB", "profiles", "created", "note"):
        table.add_column(column, overflow="fold")
    for s in summaries:
        table.add_row(
            s.name, str(s.catalog_version), f"{s.series_count:,}", f"{s.instance_count:,}",
            f"{s.pixel_bytes / 1e6:,.1f}", ", ".join(s.profiles),
            s.created_at.strftime("%Y-%m-%d %H:%M"), s.description,
        )
    out.print(table)


def cohort_show(
    name: Annotated[str, typer.Argument(help="Cohort name.")],
    lake_root: LakeOption = None,
    members: Annotated[
        bool, typer.Option("--members", help="Also list member series and instance counts.")
    ] = False,
) -> None:
    """Show a saved cohort: query, catalog version, counts, profiles (and members)."""
    with reported():
        from lake.export import load_cohort

        cohort = load_cohort(open_lake(lake_root), name)
    from rich.table import Table

    table = Table(title=f"cohort {cohort.name}", show_header=False)
    created = cohort.created_at.isoformat() if cohort.created_at else ""
    for key, value in (
        ("description", cohort.description),
        ("query", cohort.query),
        ("catalog version", str(cohort.catalog_version)),
        ("created", created),
        ("series", f"{len(cohort.series):,}"),
        ("instances", f"{len(cohort.members):,}"),
        ("pixel MB", f"{cohort.pixel_bytes / 1e6:,.1f}"),
        ("profiles", ", ".join(cohort.profiles)),
        ("saved by", f"imaging-lake {cohort.lake_version}"),
    ):
        table.add_row(key, value)  # a description or query as it is (consoles: no markup)
    out.print(table)
    if members:
        counts = Counter(m.series_uid for m in cohort.members)
        listing = Table(title="member series")
        listing.add_column("SeriesInstanceUID")
        listing.add_column("instances", justify="right")
        for uid in cohort.series:
            listing.add_row(uid, str(counts[uid]))
        out.print(listing)


def _cohort(lk: lake.Lake, name: str | None, sql: str | None, as_of: int | None) -> Cohort | str:
    from lake.export import load_cohort, resolve_cohort

    if (name is None) == (sql is None):
        raise typer.BadParameter("give a saved cohort NAME or --sql QUERY (exactly one)")
    if sql is not None:
        return resolve_cohort(lk, sql, as_of=as_of)
    if as_of is not None:
        raise typer.BadParameter("--as-of applies to --sql; a saved cohort has its own version")
    assert name is not None
    return load_cohort(lk, name)


def _silent(done: int, total: int) -> None:
    """Progress not shown (--quiet)."""


@contextmanager
def _progress(kind: str, quiet: bool) -> Iterator[Callable[[int, int], None]]:
    if quiet:  # rich's progress machinery is not even imported (issue 14.2)
        yield _silent
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    progress = Progress(
        TextColumn(f"[bold]export {kind}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("series"),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err.console,
    )
    tasks: list[TaskID] = []

    def update(done: int, total: int) -> None:
        # The bar appears once the export is planned (a refused export shows no bar).
        if not tasks:
            tasks.append(progress.add_task(kind, total=total))
        progress.update(tasks[0], completed=done, total=total)

    with progress:
        yield update


def _report(result: ExportResult, quiet: bool = False) -> None:
    """The export's summary on stderr: a table, or with ``quiet`` the same rows as plain
    lines (rich is then not imported at all: its console and table cost ~0.02 s of CPU, a
    thirtieth of a small ``lake export nifti -q``, issue 14.2). Exit code 4 when something
    was skipped."""
    manifest = result.manifest
    title = f"export {manifest['kind']}"
    rows = [
        ("folder", str(result.out)),
        ("catalog version", str(manifest["catalog_version"])),
        ("series exported", f"{manifest['counts']['series_exported']:,}"),
        ("files", f"{manifest['counts']['files']:,}"),
    ]
    if manifest["counts"].get("series_skipped"):  # nothing written for them: not exported
        rows.insert(3, ("series skipped", f"{manifest['counts']['series_skipped']:,}"))
    if result.archive is not None:
        rows.append(("archive", result.archive.name))
    bids = manifest.get("bids")
    if bids is not None:
        rows.append(("series classified", f"{bids['classified']:,}"))
        rows.append(("series unclassified", f"{bids['unclassified']:,}"))
    if result.up_to_date:
        rows.append(("status", "already complete and intact; nothing written"))
    else:
        rows.append(("written now", f"{result.written:,} series"))
        if result.resumed:
            rows.append(("resumed", f"{result.resumed:,} series finished by an earlier run"))
    reasons = Counter(s["reason"] for s in manifest["skipped"])
    for reason, count in sorted(reasons.items()):
        rows.append((f"  skipped: {reason}", f"{count:,}"))
    rows.append(("manifest", "manifest.json"))
    if quiet:
        width = max(len(key) for key, _ in rows)
        typer.echo("\n".join([title, *(f"  {key:<{width}}  {value}" for key, value in rows)]),
                   err=True)
    else:
        from rich.table import Table

        table = Table(title=title, show_header=False)
        for key, value in rows:
            table.add_row(key, value)  # a folder or reason as it is (consoles: no markup)
        err.print(table)
    if reasons:
        raise typer.Exit(EXIT_PROBLEMS)


@export_app.command("nifti")
def export_nifti_command(
    out_dir: OutOption,
    cohort: CohortArgument = None,
    sql: SqlOption = None,
    as_of: AsOfOption = None,
    lake_root: LakeOption = None,
    gzip: Annotated[bool, typer.Option("--gzip", help="Write .nii.gz instead of .nii.")] = False,
    level: Annotated[int, typer.Option(help="gzip level 1-9 (with --gzip).", min=1, max=9)] = 6,
    scheduler: SchedulerOption = "auto",
    workers: WorkersOption = None,
    quiet: QuietOption = False,
) -> None:
    """Export as NIfTI-1 + JSON sidecars: sub-<patient>/ses-<study>/<series>.nii[.gz].

    Series the converter refuses (gantry tilt, missing slices...) are listed with their
    reason in manifest.json; the exit code is then 4.
    """
    with reported():
        lk = open_lake(lake_root)
        chosen = _cohort(lk, cohort, sql, as_of)
        with _progress("nifti", quiet) as progress:
            from lake.export import export_nifti

            result = export_nifti(lk, chosen, out_dir, compress=gzip, level=level,
                                  scheduler=scheduler, workers=workers, on_progress=progress)
    _report(result, quiet)


@export_app.command("bids")
def export_bids_command(
    out_dir: OutOption,
    cohort: CohortArgument = None,
    sql: SqlOption = None,
    as_of: AsOfOption = None,
    lake_root: LakeOption = None,
    config: Annotated[
        str | None,
        typer.Option("--config", help="A BIDS config (JSON or TOML, dcm2bids style: "
                     "descriptions with criteria -> datatype, suffix, entities); its rules run "
                     "before the default heuristic.", show_default=False),
    ] = None,
    gzip: Annotated[
        bool, typer.Option("--gzip/--no-gzip", help="Write .nii.gz (default) or .nii.")
    ] = True,
    level: Annotated[int, typer.Option(help="gzip level 1-9.", min=1, max=9)] = 6,
    scheduler: SchedulerOption = "auto",
    workers: WorkersOption = None,
    quiet: QuietOption = False,
) -> None:
    """Export a BIDS dataset: sub-<label>/ses-<label>/{anat,func,dwi,fmap,perf}/.

    Series are classified by a documented default heuristic (or --config); series it
    cannot classify, and those the converter refuses, are listed in manifest.json and the
    exit code is 4.
    """
    with reported():
        lk = open_lake(lake_root)
        chosen = _cohort(lk, cohort, sql, as_of)
        from lake.export import export_bids, load_bids_config

        rules = load_bids_config(config) if config is not None else None
        with _progress("bids", quiet) as progress:
            result = export_bids(lk, chosen, out_dir, config=rules, compress=gzip, level=level,
                                 scheduler=scheduler, workers=workers, on_progress=progress)
    _report(result, quiet)


@export_app.command("dicom")
def export_dicom_command(
    out_dir: OutOption,
    cohort: CohortArgument = None,
    sql: SqlOption = None,
    as_of: AsOfOption = None,
    lake_root: LakeOption = None,
    as_zip: Annotated[
        bool, typer.Option("--zip", help="Gather the files into one reproducible zip.")
    ] = False,
    level: Annotated[int, typer.Option(help="Deflate level 0-9 (with --zip).", min=0, max=9)] = 6,
    scheduler: SchedulerOption = "auto",
    workers: WorkersOption = None,
    quiet: QuietOption = False,
) -> None:
    """Export de-identified DICOM Part-10 files: <patient>/<study>/<series>/<instance>.dcm.

    Each file equals the instance as ingested after de-identification; re-exports are
    byte-identical (zips too: sorted entries, fixed timestamps).
    """
    with reported():
        lk = open_lake(lake_root)
        chosen = _cohort(lk, cohort, sql, as_of)
        with _progress("dicom", quiet) as progress:
            from lake.export import export_dicom

            result = export_dicom(lk, chosen, out_dir, as_zip=as_zip, compresslevel=level,
                                  scheduler=scheduler, workers=workers, on_progress=progress)
    _report(result, quiet)


@export_app.command("teaching")
def export_teaching_command(
    out_dir: OutOption,
    cohort: CohortArgument = None,
    sql: SqlOption = None,
    as_of: AsOfOption = None,
    lake_root: LakeOption = None,
    skip_weaker: Annotated[
        bool,
        typer.Option("--skip-weaker", help="Leave out instances de-identified with a profile "
                     "weaker than 'teaching' (listed in manifest.json) instead of refusing."),
    ] = False,
    preview_size: Annotated[
        int, typer.Option(help="Longest side of the PNG previews, in pixels.", min=16)
    ] = 1024,
    scheduler: SchedulerOption = "auto",
    workers: WorkersOption = None,
    quiet: QuietOption = False,
) -> None:
    """Export a teaching zip: DICOM, a PNG preview per series, manifest.csv/json, README.

    Refuses instances de-identified with a profile weaker than 'teaching' (only 'teaching'
    and profiles that extend it are accepted).
    """
    with reported():
        lk = open_lake(lake_root)
        chosen = _cohort(lk, cohort, sql, as_of)
        with _progress("teaching", quiet) as progress:
            from lake.export import export_teaching

            result = export_teaching(lk, chosen, out_dir, skip_weaker=skip_weaker,
                                     preview_size=preview_size, scheduler=scheduler,
                                     workers=workers, on_progress=progress)
    _report(result, quiet)


cohort_app.command("create")(cohort_create)
cohort_app.command("list")(cohort_list)
cohort_app.command("show")(cohort_show)
