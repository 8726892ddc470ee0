"""Cohorts and exports: saved queries frozen to a catalog version, exported reproducibly.

A cohort is a query plus the ``instances`` version it ran on and its member instances
with their header and pixel hashes. Exports read the catalog *as of* that version, so
exporting the same cohort later gives byte-identical files. Every export runs on Dask,
resumes after an interruption, writes files atomically and ends with ``manifest.json``.

Examples
--------
>>> import lake  # doctest: +SKIP
>>> from lake.export import create_cohort, export_nifti  # doctest: +SKIP
>>> lk = lake.open("/data/lake")  # doctest: +SKIP
>>> create_cohort(lk, "ct-chest", "SELECT SeriesInstanceUID FROM series "
...               "WHERE Modality = 'CT' AND BodyPartExamined = 'CHEST'")  # doctest: +SKIP
>>> export_nifti(lk, "ct-chest", "/exports/ct-chest", compress=True)  # doctest: +SKIP
"""

from lake.export._bids import export_bids
from lake.export._bids_rules import BidsConfig, load_bids_config
from lake.export._cohort import (
    COHORTS,
    Cohort,
    CohortSummary,
    Member,
    create_cohort,
    list_cohorts,
    load_cohort,
    resolve_cohort,
)
from lake.export._dicom import export_dicom, instance_bytes, reassemble
from lake.export._documents import document_bytes, export_documents
from lake.export._manifest import FileRecord, Skip
from lake.export._runner import ExportResult, ProgressCallback
from lake.export._teaching import export_teaching, preview_png, teaching_profiles
from lake.export._to_nifti import export_nifti

__all__ = [
    "COHORTS",
    "BidsConfig",
    "Cohort",
    "CohortSummary",
    "ExportResult",
    "FileRecord",
    "Member",
    "ProgressCallback",
    "Skip",
    "create_cohort",
    "document_bytes",
    "export_bids",
    "export_dicom",
    "export_documents",
    "export_nifti",
    "export_teaching",
    "instance_bytes",
    "list_cohorts",
    "load_bids_config",
    "load_cohort",
    "preview_png",
    "reassemble",
    "resolve_cohort",
    "teaching_profiles",
]
