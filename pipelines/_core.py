"""Core commands: init, ingest, sql, info, verify."""

from __future__ import annotations

import enum
import io
import json
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

import lake
from lake.compute import SCHEDULERS
from pipelines._common import (
    EXIT_PROBLEMS,
    EXIT_QUARANTINED,
    LakeOption,
    VaultOption,
    console,
    err,
    open_lake,
    out,
    print_suppressed,
    reported,
)

if TYPE_CHECKING:  # heavy imports wait for the command that needs them (issue 14.1)
    import duckdb
    from rich.progress import Progress
    from rich.table import Table

    from lake.ingest import IngestSummary

__all__ = ["info", "ingest", "init", "sql", "verify"]


def init(lake_root: LakeOption = None, vault: VaultOption = None) -> None:
    """Create a lake (idempotent) and its key in the vault (mode 0600, outside the lake)."""
    with reported():
        lk = lake.init(lake_root, vault=vault)
        out.print(f"lake ready at {lk.root} (id {lk.config.lake_id})", highlight=False)


def _progress(*, quiet: bool = False) -> Progress:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[bold]ingest"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err.console,
        transient=False,
        disable=quiet,
        # No refresh thread: the driver refreshes the bar from its progress callback
        # (_REFRESH_EVERY), so a process with no thread but its own can fork the ingest's
        # workers (lake.compute._pool.fork_safe; review s20 S1).
        auto_refresh=False,
    )


_REFRESH_EVERY = 0.1
"""Seconds between two refreshes of the ingest's progress bar (at most ten a second)."""


_SKIPPED = {
    "not_regular": "not a regular file (FIFO, device, socket)",
    "text": "plain text (notes, CSV, scripts)",
    "json": "JSON",
    "nifti": "NIfTI image",
}
_MISSING = {
    "unreadable_dir": "folders that cannot be read",
    "symlinked_dir": "links to folders, not followed (--follow-symlinks)",
    "broken_link": "links to nothing",
}


def _summary(summary: IngestSummary) -> Table:
    from rich.table import Table

    table = Table(title="ingest summary", show_header=False)
    mb = summary.bytes_in / 1e6
    rows = [
        ("files seen", f"{summary.files_seen:,}"),
        ("ingested", f"{summary.ingested:,}"),
        ("duplicates", f"{summary.duplicates:,}"),
        ("quarantined", f"{summary.quarantined:,}"),
        ("  of which uid conflicts", f"{summary.conflicts:,}"),
        ("replaced (re-profiled)", f"{summary.replaced:,}"),
        ("erased (withdrawn, dropped)", f"{summary.erased:,}"),
        ("series mixing patients", f"{summary.mixed_series:,}"),
        ("skipped", f"{sum(summary.sources.skipped.values()):,}"),
        ("bytes read", f"{mb:,.1f} MB"),
        ("new pixel blobs", f"{summary.blobs_written:,}"),
        (
            "elapsed",
            f"{summary.elapsed:.1f} s ({summary.files_per_second:,.0f} files/s, "
            f"{mb / summary.elapsed if summary.elapsed else 0:,.1f} MB/s)",
        ),
        ("catalog version", str(summary.catalog_version)),
    ]
    for reason, count in sorted(summary.reasons.items()):
        rows.append((f"  quarantined: {reason}", f"{count:,}"))
    for kind, count in sorted(summary.sources.skipped.items()):
        rows.append((f"  skipped: {_SKIPPED.get(kind, kind)}", f"{count:,}"))
    for key, value in rows:
        table.add_row(key, value)  # a quarantine reason as it is (consoles: no markup)
    return table


def _report_missing(summary: IngestSummary, sources: list[str]) -> None:
    """Name each source (as typed) below which files may not have been read, and why."""
    from rich.markup import escape

    for position, counts in sorted(summary.sources.missing.items()):
        what = "; ".join(f"{n:,} {_MISSING.get(k, k)}" for k, n in sorted(counts.items()))
        err.print(
            f"[bold yellow]incomplete:[/] below {escape(sources[position - 1])} (source "
            f"{position}): {what}; files there were not read",
            highlight=False,
            markup=True,
            soft_wrap=True,
        )


def _mib(mb: float | None) -> int | None:
    return None if mb is None else max(1, round(mb * 1024 * 1024))


def ingest(
    sources: Annotated[
        list[Path], typer.Argument(help="Files, folders (recursive) and .zip archives.")
    ],
    lake_root: LakeOption = None,
    vault: VaultOption = None,
    profile: Annotated[
        str | None, typer.Option(help="De-identification profile: a built-in name or a file.")
    ] = None,
    scheduler: Annotated[
        str,
        typer.Option(
            help=f"Where to run: {', '.join(SCHEDULERS)}, or a Dask scheduler address "
            "tcp://HOST:PORT. auto: in this process below a measured job size, else a pool "
            "of worker processes (docs/performance.md, 'Choosing the engine')."
        ),
    ] = "auto",
    workers: Annotated[int | None, typer.Option(help="Local workers (default: CPU count).")] = None,
    batch_size: Annotated[int, typer.Option(help="Instances per catalog commit.")] = 1000,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    study: Annotated[
        str | None,
        typer.Option(help="Original StudyInstanceUID or AccessionNumber the documents (PDF, "
                     "pictures, videos) belong to; default: the study of their folder."),
    ] = None,
    strict: Annotated[
        bool,
        typer.Option(
            "--strict",
            help="Quarantine files that are plainly not medical images (text, JSON, NIfTI) "
            "instead of skipping them.",
        ),
    ] = False,
    follow_symlinks: Annotated[
        bool, typer.Option("--follow-symlinks", help="Walk links to folders (each folder once).")
    ] = False,
    replace: Annotated[
        bool,
        typer.Option(
            "--replace",
            help="Re-profile: replace the rows of instances already in the lake that were "
            "de-identified otherwise, in a new catalog version (older versions and cohorts "
            "keep the old rows).",
        ),
    ] = False,
    max_file_mb: Annotated[
        float | None,
        typer.Option(help="Largest file or zip member read, in MiB (default 1024).",
                     show_default=False),
    ] = None,
    max_header_mb: Annotated[
        float | None,
        typer.Option(help="Largest size of all but the pixel data of a file, in MiB "
                     "(default 256).", show_default=False),
    ] = None,
    max_value_mb: Annotated[
        float | None,
        typer.Option(help="Longest text or number value of one element, in MiB (default 4).",
                     show_default=False),
    ] = None,
    max_archive_gb: Annotated[
        float | None,
        typer.Option(help="Most uncompressed data read from one zip, nested zips included, in "
                     "GiB (default 256).", show_default=False),
    ] = None,
    max_zip_ratio: Annotated[
        int | None,
        typer.Option(help="Largest expansion of a zip member over 1 MiB (default 200).",
                     show_default=False),
    ] = None,
    max_zip_depth: Annotated[
        int | None,
        typer.Option(help="Zips read inside zips: 1 reads only zips on disk (default 3).",
                     show_default=False),
    ] = None,
    max_sequence_depth: Annotated[
        int | None,
        typer.Option(help="Deepest nesting of sequences in a file (default 64).",
                     show_default=False),
    ] = None,
) -> None:
    """De-identify and ingest DICOM files, folders and zips.

    Bad files (not DICOM, empty, truncated, DICOMDIR, refused by the profile, over a size
    bound) are quarantined with a reason, sealed with a vault key; the rest of the batch
    lands. An instance whose SOP Instance UID the lake holds is a duplicate when it is the
    same object (in any transfer syntax); a different object reusing the UID is quarantined
    as uid_conflict (the first one is kept). Files that are plainly not medical images
    (text, JSON, NIfTI) and special files (FIFOs, devices, sockets) are skipped and
    counted. Bounds default to the ingest section
    of lake.json. Exit code 3 when anything was quarantined, 4 when some folders could not
    be walked (unreadable, links to folders not followed, broken links).
    """
    with reported():
        lk = open_lake(lake_root)
        secret = lk.secret(vault)
        from lake.ingest import ReadLimits, count_items

        limits = ReadLimits.from_settings(
            lk.config.ingest,
            max_file_bytes=_mib(max_file_mb),
            max_header_bytes=_mib(max_header_mb),
            max_value_bytes=_mib(max_value_mb),
            max_archive_bytes=_mib(None if max_archive_gb is None else max_archive_gb * 1024),
            max_zip_ratio=max_zip_ratio,
            max_zip_depth=max_zip_depth,
            max_sequence_depth=max_sequence_depth,
        )
        typed = [str(s) for s in sources]
        # the bar's total, a walk of every source before the first file is read: not without
        # a bar (-q)
        total = None if quiet else count_items(
            typed, limits=limits, follow_symlinks=follow_symlinks)
        with _progress(quiet=quiet) as progress:
            task = progress.add_task("ingest", total=total, rate="")
            started = progress.get_time()
            shown = [started]  # when the bar was last drawn

            def advance(files: int, _bytes: int) -> None:
                progress.advance(task, files)
                done = progress.tasks[0].completed
                now = progress.get_time()
                elapsed = now - started
                rate = f"{done / elapsed:,.0f} files/s" if elapsed > 0 else ""
                progress.update(task, rate=rate)
                if now - shown[0] >= _REFRESH_EVERY:
                    shown[0] = now
                    progress.refresh()

            from lake.ingest import ingest as run_ingest

            summary = run_ingest(
                lk,
                typed,
                secret,
                profile=profile,
                scheduler=scheduler,
                workers=workers,
                batch_size=batch_size,
                on_progress=advance,
                study=study,
                limits=limits,
                strict=strict,
                follow_symlinks=follow_symlinks,
                replace=replace,
            )
        err.print(_summary(summary))
        print_suppressed(summary.suppressed, f"{summary.warned_files:,} of the files read")
        _report_missing(summary, typed)
    if summary.sources.incomplete:
        raise typer.Exit(EXIT_PROBLEMS)
    if summary.quarantined:
        raise typer.Exit(EXIT_QUARANTINED)


class Format(enum.StrEnum):
    table = "table"
    csv = "csv"
    json = "json"
    parquet = "parquet"


def sql(
    query: Annotated[
        str, typer.Argument(help="DuckDB SQL over instances, series, studies, patients.")
    ],
    lake_root: LakeOption = None,
    fmt: Annotated[
        Format,
        typer.Option(
            "--format", "-f",
            help="Output format. json: an array of row objects; a MAP is an object keyed by its "
                 "keys as text, dates in ISO 8601, bytes in base64, NaN and infinity null.",
        ),
    ] = Format.table,
    as_of: Annotated[
        int | None, typer.Option(
            "--as-of",
            help="Time travel: every table as it was at this catalog version (see 'lake info').",
        )
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write to this file instead of stdout.")
    ] = None,
) -> None:
    """Run SQL against the catalog.

    Tables: instances, batches, quarantine, cohorts, pulls. Views: series, studies, patients.
    json prints an array of row objects; parquet needs --output or a redirected stdout.
    Queries cannot read or write files, attach databases or load extensions (exit 1).
    """
    with reported():
        lk = open_lake(lake_root)
        relation = lk.sql(query, as_of=as_of)
        if relation is None:  # a statement without a result (CREATE VIEW ...): done
            return
        _emit(relation, fmt, output)  # the CLI writes --output itself: DuckDB cannot


def _emit(relation: duckdb.DuckDBPyRelation, fmt: Format, output: Path | None) -> None:
    """Print (or write to ``output``) the rows of ``relation`` in ``fmt``.

    The table and JSON formats read DuckDB's Python values (``fetchall``): no pyarrow, no
    numpy (a quarter of a second of ``lake sql``'s start-up, issue 14.1). Time-zone-aware
    timestamps come in the connection's time zone, as ``Lake.sql(...).fetchall()`` gives
    them. CSV and Parquet are written by pyarrow.

    Raises
    ------
    QueryError
        If DuckDB fails while running the query.
    """
    from lake.catalog import query_error

    if fmt is Format.parquet and output is None and sys.stdout.isatty():
        raise lake.ConfigError("parquet output is binary: pass --output FILE or redirect stdout")
    try:
        if fmt in (Format.parquet, Format.csv):
            arrow = relation.arrow()
            if hasattr(arrow, "read_all"):
                arrow = arrow.read_all()
        else:
            names = list(relation.columns)
            rows = relation.fetchall()
    except Exception as exc:  # noqa: BLE001 - DuckDB raises many types at execution
        raise query_error(exc) from None
    if fmt in (Format.parquet, Format.csv):
        _write_bytes(_arrow_bytes(arrow, fmt), output)
        return
    if fmt is Format.json:
        maps = [t.id == "map" for t in relation.types]
        records = [
            {name: _map_object(v) if is_map else _plain(v)
             for name, v, is_map in zip(names, values, maps, strict=True)}
            for values in rows
        ]
        text = json.dumps(records, default=_json_default, indent=None, allow_nan=False) + "\n"
        _write_bytes(text.encode(), output)
        return
    from rich.table import Table

    table = Table(show_lines=False)
    for name in names:
        table.add_column(name, overflow="fold")
    for values in rows:
        table.add_row(*("" if v is None else _cell(v) for v in values))
    if output is not None:
        with output.open("w") as fh:
            console(file=fh, width=200).print(table)
    else:
        out.print(table)


def _arrow_bytes(arrow: object, fmt: Format) -> bytes:
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    assert isinstance(arrow, pa.Table)
    sink = io.BytesIO()
    if fmt is Format.parquet:
        pq.write_table(arrow, sink)
    else:
        pacsv.write_csv(arrow, sink)
    return sink.getvalue()


def _cell(value: object) -> str:
    """A value as the table prints it: its text (the consoles print ``[b]x[/b]`` as it is)."""
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    return str(value)


def _map_object(value: object) -> object:
    """A DuckDB MAP as one JSON object keyed by its keys as text.

    DuckDB gives a MAP as a dict, or as ``{"key": [...], "value": [...]}`` when its keys are
    not hashable (lists); dates and other keys are written as they print in JSON.
    """
    if value is None:
        return None
    assert isinstance(value, dict)
    if set(value) == {"key", "value"} and isinstance(value["key"], list):
        pairs = list(zip(value["key"], value["value"], strict=True))
    else:
        pairs = list(value.items())
    return {_key_text(k): _plain(v) for k, v in pairs}


def _key_text(key: object) -> str:
    if isinstance(key, str):
        return key
    return json.dumps(_plain(key), default=_json_default, allow_nan=False).strip('"')


def _plain(value: object) -> object:
    """``value`` with JSON's limits met: text keys, no NaN or infinity (null)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {_key_text(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _json_default(value: object) -> object:
    if isinstance(value, bytes):
        import base64

        return base64.b64encode(value).decode()
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if isinstance(value, dict | list | tuple):
        return value
    return str(value)


def _write_bytes(data: bytes, output: Path | None) -> None:
    if output is None:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    else:
        output.write_bytes(data)


def info(lake_root: LakeOption = None) -> None:
    """Counts, sizes, dedup ratio and the current catalog version."""
    with reported():
        lk = open_lake(lake_root)
        facts = lk.info()
        from rich.table import Table

        table = Table(title=f"lake {lk.root}", show_header=False)
        for key, value in [
            ("catalog version", str(facts.version)),
            ("patients", f"{facts.patients:,}"),
            ("studies", f"{facts.studies:,}"),
            ("series", f"{facts.series:,}"),
            ("instances", f"{facts.instances:,}"),
            ("pixel blobs", f"{facts.blobs:,}"),
            ("pixel bytes referenced", f"{facts.pixel_bytes_referenced / 1e6:,.1f} MB"),
            ("pixel bytes stored", f"{facts.pixel_bytes_stored / 1e6:,.1f} MB"),
            ("dedup ratio", f"{facts.dedup_ratio:.2f}"),
            ("quarantined files", f"{facts.quarantined:,}"),
            ("batches", f"{facts.batches:,}"),
        ]:
            table.add_row(key, value)
        out.print(table)


def verify(lake_root: LakeOption = None) -> None:
    """Re-hash every blob, check that every row's blob and batch exist (exit 4 on problems).

    Batch records that an interrupted ingest had not written yet are completed from the
    journal in its instances commit.
    """
    with reported():
        lk = open_lake(lake_root)
        report = lk.verify()
    for key in report.corrupt:
        err.print(f"corrupt blob: {key}")
    for key in report.missing:
        err.print(f"missing blob: {key}")
    for uid in report.duplicate_instances:
        err.print(f"instance in more than one row: {uid}")
    for batch_id in report.missing_batches:
        err.print(f"rows of a batch that has no batch record: {batch_id}")
    if report.mixed_series:
        err.print(
            f"note: {len(report.mixed_series)} series hold instances of several patients "
            "(as sent; exports keep each patient apart)"
        )
    if report.completed_batches:
        err.print(
            f"completed the records of {len(report.completed_batches)} interrupted batch(es) "
            "from their commit journal"
        )
    out.print(
        f"checked {report.blobs_checked:,} blobs and {report.rows_checked:,} rows: "
        f"{len(report.corrupt)} corrupt, {len(report.missing)} missing, "
        f"{len(report.duplicate_instances)} duplicate instances, "
        f"{len(report.missing_batches)} missing batch records, "
        f"{len(report.orphans)} unreferenced blobs (harmless; 'lake gc' removes them)"
    )
    if not report.ok:
        raise typer.Exit(EXIT_PROBLEMS)
