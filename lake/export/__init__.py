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

from importlib import import_module
from typing import TYPE_CHECKING

if TYPE_CHECKING:
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

# Each exporter is imported when first named (PEP 562): `lake export nifti` does not pay for
# the BIDS rules, the teaching-set renderer or de-identification (issue 14.2).
_MODULE_OF = {
    "BidsConfig": "lake.export._bids_rules",
    "COHORTS": "lake.export._cohort",
    "Cohort": "lake.export._cohort",
    "CohortSummary": "lake.export._cohort",
    "ExportResult": "lake.export._runner",
    "FileRecord": "lake.export._manifest",
    "Member": "lake.export._cohort",
    "ProgressCallback": "lake.export._runner",
    "Skip": "lake.export._manifest",
    "create_cohort": "lake.export._cohort",
    "document_bytes": "lake.export._documents",
    "export_bids": "lake.export._bids",
    "export_dicom": "lake.export._dicom",
    "export_documents": "lake.export._documents",
    "export_nifti": "lake.export._to_nifti",
    "export_teaching": "lake.export._teaching",
    "instance_bytes": "lake.export._dicom",
    "list_cohorts": "lake.export._cohort",
    "load_bids_config": "lake.export._bids_rules",
    "load_cohort": "lake.export._cohort",
    "preview_png": "lake.export._teaching",
    "reassemble": "lake.export._dicom",
    "resolve_cohort": "lake.export._cohort",
    "teaching_profiles": "lake.export._teaching",
}


def __getattr__(name: str) -> object:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The public names, including the exporters not imported yet (tab completion)."""
    return sorted(set(globals()) | set(__all__))
