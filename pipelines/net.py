"""DICOM network commands: ``lake serve dicom`` and ``lake pull``.

Thin wrappers over :mod:`lake.net`; signals and terminal output live here.
"""

from __future__ import annotations

import enum
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated

import typer

from pipelines._common import (
    EXIT_PROBLEMS,
    EXIT_QUARANTINED,
    LakeOption,
    VaultOption,
    cli_message,
    err,
    open_lake,
    out,
    print_suppressed,
    reported,
)

if TYPE_CHECKING:  # pynetdicom and rich's progress wait for the command (issue 14.1)
    from rich.progress import TaskID

    from lake.net import RemoteStudy

__all__ = ["dicom", "pull_command", "serve_app"]

serve_app = typer.Typer(
    rich_markup_mode=None,  # plain help: rich's renderer costs 0.2 s a run (issue 14.1)
    name="serve",
    help="Serve the lake over the network.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@serve_app.callback()
def _serve() -> None:
    """Serve the lake over the network."""


@serve_app.command("dicom")
def dicom(
    lake_root: LakeOption = None,
    vault: VaultOption = None,
    aet: Annotated[
        str | None, typer.Option("--aet", help="The lake's AE title. Default: lake.json or LAKE.")
    ] = None,
    port: Annotated[
        int | None, typer.Option("--port", help="TCP port. Default: lake.json or 11112.")
    ] = None,
    host: Annotated[
        str | None,
        typer.Option("--host", help="Address to listen on. Default: lake.json or 127.0.0.1."),
    ] = None,
    allow: Annotated[
        list[str] | None,
        typer.Option(
            "--allow",
            help="Calling AE title allowed to associate (repeatable). Required off loopback.",
        ),
    ] = None,
    move_dest: Annotated[
        list[str] | None,
        typer.Option("--move-dest", help="C-MOVE destination AET=HOST:PORT (repeatable)."),
    ] = None,
    max_associations: Annotated[
        int | None, typer.Option("--max-associations", help="Simultaneous associations.")
    ] = None,
    profile: Annotated[
        str | None, typer.Option(help="De-identification profile. Default: the lake's.")
    ] = None,
    tls_cert: Annotated[
        Path | None, typer.Option("--tls-cert", help="PEM certificate: accept TLS only.")
    ] = None,
    tls_key: Annotated[Path | None, typer.Option("--tls-key", help="PEM private key.")] = None,
    tls_ca: Annotated[
        Path | None,
        typer.Option("--tls-ca", help="PEM CA bundle: require client certificates signed by it."),
    ] = None,
    request_timeout: Annotated[
        float | None,
        typer.Option(
            "--request-timeout",
            help="Seconds a new connection has to send its association request (holds no slot).",
        ),
    ] = None,
    acse_timeout: Annotated[
        float | None, typer.Option("--acse-timeout", help="Seconds for association messages.")
    ] = None,
    dimse_timeout: Annotated[
        float | None, typer.Option("--dimse-timeout", help="Seconds for DIMSE messages.")
    ] = None,
    network_timeout: Annotated[
        float | None, typer.Option("--network-timeout", help="Seconds of network silence.")
    ] = None,
    commit_every: Annotated[
        int | None, typer.Option("--commit-every", help="Instances per catalog commit.")
    ] = None,
    commit_interval: Annotated[
        float | None,
        typer.Option(
            "--commit-interval",
            help="Seconds received instances wait before a commit once arrivals pause "
            "(up to 4x while they keep arriving; at most 225).",
        ),
    ] = None,
    max_instance_mb: Annotated[
        int | None, typer.Option("--max-instance-mb", help="Refuse larger instances.")
    ] = None,
    acknowledge: Annotated[
        Ack | None,
        typer.Option(
            "--acknowledge",
            help="receipt: answer a C-STORE once the instance is durable (sealed), de-identify "
            "after; outcome: once de-identified, reporting refusals. Default: receipt.",
        ),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option("--workers", help="Processes de-identifying received instances. Default: 2."),
    ] = None,
    receive_memory_mb: Annotated[
        int | None,
        typer.Option(
            "--receive-memory-mb",
            help="Received instances held in memory at once (all peers); beyond, refused.",
        ),
    ] = None,
) -> None:
    """Run the lake as a DICOM node until SIGINT/SIGTERM.

    C-ECHO; C-STORE of every storage SOP class (de-identified on the way in,
    acknowledged once durable, committed in batches); C-FIND, C-GET and C-MOVE
    (Patient and Study Root) over the de-identified catalog. Settings default to the
    "dicom" section of lake.json. On SIGINT/SIGTERM the server stops accepting,
    lets open associations finish and commits everything received.
    """
    from lake.net import DicomServer, ServerConfig, TLSConfig, parse_destination

    with reported():
        lk = open_lake(lake_root)
        secret = lk.secret(vault)
        tls = None
        if tls_cert is not None or tls_key is not None:
            if tls_cert is None or tls_key is None:
                raise typer.BadParameter("--tls-cert and --tls-key go together")
            tls = TLSConfig(tls_cert, tls_key, tls_ca)
        config = ServerConfig.from_settings(
            lk.config.dicom,
            aet=aet,
            port=port,
            host=host,
            allow=tuple(allow or ()),
            move_destinations={p.aet: p for p in map(parse_destination, move_dest or [])},
            max_associations=max_associations,
            profile=profile,
            tls=tls,
            request_timeout=request_timeout,
            acse_timeout=acse_timeout,
            dimse_timeout=dimse_timeout,
            network_timeout=network_timeout,
            commit_every=commit_every,
            commit_interval=commit_interval,
            max_instance_bytes=None if max_instance_mb is None else max_instance_mb * 2**20,
            receive_memory_bytes=None if receive_memory_mb is None else receive_memory_mb * 2**20,
            acknowledge=None if acknowledge is None else acknowledge.value,
            workers=workers,
        )
        server = DicomServer(lk, secret, config)
        stop = threading.Event()

        def on_signal(signum: int, _frame: FrameType | None) -> None:
            stop.set()

        previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            server.start()
            if server.report.recovered:
                err.print(f"committed {server.report.recovered} instances left in the spool")
            allowed = ", ".join(config.allow) if config.allow else "any (loopback only)"
            err.print(
                f"{config.aet} listening on {config.host}:{server.port}"
                f"{' (TLS)' if config.tls else ''}; calling AEs: {allowed}; "
                "stop with Ctrl-C or SIGTERM",
                highlight=False,
                soft_wrap=True,
            )
            shown: str | None = None
            while not stop.wait(1.0):
                problem = server.committer.last_error
                if problem != shown and problem is not None:
                    err.print(problem)  # once per distinct problem, not every second
                shown = problem
            err.print("stopping: finishing open associations and committing")
            report = server.stop()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if server.running:
                server.stop()
        stats = report.received
        err.print(
            f"received {stats.received}: {stats.accepted} stored, {stats.quarantined} "
            f"quarantined, {stats.too_large} too large, {stats.busy} refused while busy"
            f"{f', {stats.refused} refused (a request UID not ASCII)' if stats.refused else ''}; "
            f"{report.committed_instances} new in the "
            f"catalog over {report.committed_batches} commits",
            highlight=False,
            soft_wrap=True,
        )
        refused = {k: v for k, v in report.admission.as_dict().items()
                   if v and k not in ("connections", "admitted")}
        if refused:
            detail = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in refused.items())
            err.print(f"connections closed before association: {detail}", highlight=False,
                      soft_wrap=True)
        print_suppressed(report.captured.total)


class Ack(enum.StrEnum):
    receipt = "receipt"
    outcome = "outcome"


class Via(enum.StrEnum):
    get = "get"
    move = "move"


def pull_command(
    source: Annotated[
        str, typer.Option("--from", help="The PACS: AET@HOST:PORT.", show_default=False)
    ],
    query: Annotated[
        list[str] | None,
        typer.Option(
            "--query",
            "-q",
            help="Filter KEYWORD=VALUE (repeatable): wildcards * ?, ranges A-B, lists A\\B.",
        ),
    ] = None,
    via: Annotated[Via, typer.Option(help="Retrieve with C-GET or C-MOVE.")] = Via.get,
    lake_root: LakeOption = None,
    vault: VaultOption = None,
    aet: Annotated[
        str | None,
        typer.Option("--aet", help="The lake's AE title as the PACS knows it. Default: lake.json."),
    ] = None,
    host: Annotated[
        str | None, typer.Option("--host", help="Address the C-MOVE receiver listens on.")
    ] = None,
    port: Annotated[
        int | None, typer.Option("--port", help="Port the C-MOVE receiver listens on.")
    ] = None,
    profile: Annotated[
        str | None, typer.Option(help="De-identification profile. Default: the lake's.")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only show the matching studies.")
    ] = False,
    timeout: Annotated[float, typer.Option(help="Seconds for network operations.")] = 120.0,
    all_studies: Annotated[
        bool, typer.Option("--all", help="Allow a query that matches every study of the PACS.")
    ] = False,
) -> None:
    """Query a PACS, show the matching studies, retrieve them de-identified.

    Resumable: a second run fetches only what is missing (the lake keeps a keyed
    hash of each pulled remote instance, never its UID). Identified query results
    are printed only to a terminal and never stored. Exit code 3 when instances
    were quarantined, 4 when some could not be retrieved.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from lake import QueryError
    from lake.net import ServerConfig, find_studies, parse_peer, pull_studies
    from lake.net._pull_query import pull_identifier

    try:  # a query a PACS cannot match as meant is a usage error (exit 2), before any I/O
        pull_identifier(query or [], all_studies=all_studies)
    except QueryError as exc:
        raise typer.BadParameter(cli_message(exc), param_hint="--query") from None
    with reported():
        lk = open_lake(lake_root)
        secret = lk.secret(vault)
        settings = ServerConfig.from_settings(lk.config.dicom, aet=aet, port=port, host=host)
        peer = parse_peer(source)
        studies = find_studies(
            peer, query or [], calling_aet=settings.aet, timeout=timeout, all_studies=all_studies
        )
        _show(studies)
        if dry_run or not studies:
            return
        progress = Progress(
            TextColumn("study {task.fields[n]}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), console=err.console, transient=False,
        )
        tasks: dict[int, TaskID] = {}

        def on_progress(index: int, done: int, total: int) -> None:
            if index not in tasks:
                label = f"{index + 1}/{len(studies)}"
                tasks[index] = progress.add_task("pull", total=total, n=label)
            progress.update(tasks[index], completed=done, total=total)

        with progress:
            summary = pull_studies(
                lk, secret, peer, studies, via=via.value, calling_aet=settings.aet,
                listen=(settings.host, settings.port), profile=profile, timeout=timeout,
                on_progress=on_progress,
            )
        err.print(
            f"{summary.studies} studies ({summary.up_to_date} already complete): "
            f"{summary.listed} instances listed, {summary.already} pulled before, "
            f"{summary.requested} requested, {summary.completed} retrieved, "
            f"{summary.failed} failed; {summary.ingested} new in the catalog, "
            f"{summary.quarantined} quarantined",
            highlight=False,
            soft_wrap=True,
        )
        print_suppressed(summary.suppressed)
    if summary.failed:
        raise typer.Exit(EXIT_PROBLEMS)
    if summary.quarantined:
        raise typer.Exit(EXIT_QUARANTINED)


def _show(studies: list[RemoteStudy]) -> None:
    if not out.is_terminal:
        # Identified values go to a terminal only, never into a file or a pipe.
        err.print(f"{len(studies)} matching studies (details shown on a terminal only)")
        return
    from rich.table import Table

    table = Table(title=f"{len(studies)} matching studies (identified: do not copy)")
    columns = ("PatientID", "PatientName", "StudyDate", "AccessionNumber", "StudyDescription",
               "ModalitiesInStudy", "NumberOfStudyRelatedInstances")
    for name in ("#", *columns):
        table.add_column(name, overflow="fold")
    for i, study in enumerate(studies, 1):
        attrs = study.attributes
        table.add_row(str(i), *(attrs.get(c, "") for c in columns))
    out.print(table)
