"""The steward's commands: forget, quarantine review, maintenance."""

from __future__ import annotations

from typing import Annotated

import typer

from pipelines._common import LakeOption, VaultOption, err, open_lake, out, reported

__all__ = ["forget_command"]


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
    originals and spooled instances, withdraws them from saved cohorts, scrubs the Delta
    logs, and records the erasure (no identifier) in the erasures table. Versions that
    held them can no longer be queried. Interrupted: run it again to finish.
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
            f"{spans} range(s) of older versions can no longer be read",
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
        f"{plan.cohorts:,} cohorts lose members; {plan.files:,} table data files rewritten "
        "out of history",
        highlight=False,
        soft_wrap=True,
    )
