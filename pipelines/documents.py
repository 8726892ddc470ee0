"""``lake attach`` and ``lake export documents``: thin commands over :mod:`lake.documents`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipelines._common import (
    EXIT_QUARANTINED,
    LakeOption,
    VaultOption,
    open_lake,
    out,
    reported,
)
from pipelines.export import (
    AsOfOption,
    CohortArgument,
    OutOption,
    QuietOption,
    SchedulerOption,
    SqlOption,
    WorkersOption,
    _cohort,
    _progress,
    _report,
)

__all__ = ["attach_command", "export_documents_command"]


def attach_command(
    study: Annotated[str, typer.Argument(help="The study's original StudyInstanceUID.")],
    files: Annotated[
        list[Path], typer.Argument(help="PDF, JPEG, PNG, BMP, TIFF, AVI, MP4 or MOV files.")
    ],
    lake_root: LakeOption = None,
    vault: VaultOption = None,
    profile: Annotated[
        str | None, typer.Option(help="De-identification profile: a built-in name or a file.")
    ] = None,
) -> None:
    """Add documents to a study already in the lake, wrapped as DICOM and de-identified.

    The study is found by its keyed UID (computed with the vault's key; the original UID is
    never stored). Refused documents are quarantined with their reason; exit code 3 then.
    """
    from lake.documents import attach  # heavy (pikepdf, PyAV): imported by the command

    with reported():
        lk = open_lake(lake_root)
        batch = attach(lk, lk.secret(vault), study, files, profile=profile)
    out.print(f"{batch.files_seen} files: {batch.ingested} attached, {batch.duplicates} "
              f"already there, {batch.quarantined} quarantined")
    for reason, count in sorted(batch.reasons.items()):
        out.print(f"  quarantined: {reason}: {count}")
    if batch.quarantined:
        raise typer.Exit(EXIT_QUARANTINED)


def export_documents_command(
    out_dir: OutOption,
    cohort: CohortArgument = None,
    sql: SqlOption = None,
    as_of: AsOfOption = None,
    lake_root: LakeOption = None,
    scheduler: SchedulerOption = "auto",
    workers: WorkersOption = None,
    quiet: QuietOption = False,
) -> None:
    """Export the cohort's documents unwrapped: PDF, JPEG, PNG, TIFF, MP4 + documents.json.

    Laid out <patient>/<study>/<series>/<instance>.<ext> (pseudonymous names only).
    Instances that are not documents are listed as skipped in manifest.json (exit code 4).
    """
    from lake.export import export_documents

    with reported():
        lk = open_lake(lake_root)
        chosen = _cohort(lk, cohort, sql, as_of)
        with _progress("documents", quiet) as progress:
            result = export_documents(lk, chosen, out_dir, scheduler=scheduler,
                                      workers=workers, on_progress=progress)
    _report(result, quiet)
