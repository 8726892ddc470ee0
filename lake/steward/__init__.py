"""The steward's lifecycle of a lake: erasure (``lake forget``), quarantine review, maintenance."""

from lake.steward._forget import (
    EXPORT_MEMBERS,
    ErasurePlan,
    ErasureReport,
    Target,
    forget,
    plan_forget,
    portal_exports,
    target,
)
from lake.steward._maintenance import (
    CompactReport,
    GcReport,
    VacuumReport,
    compact,
    gc,
    vacuum,
)
from lake.steward._quarantine import (
    HeaderLine,
    QuarantineEntry,
    Release,
    export_original,
    list_quarantine,
    locate,
    purge,
    release,
    show,
)

__all__ = [
    "EXPORT_MEMBERS",
    "CompactReport",
    "ErasurePlan",
    "ErasureReport",
    "GcReport",
    "HeaderLine",
    "QuarantineEntry",
    "Release",
    "Target",
    "VacuumReport",
    "compact",
    "export_original",
    "forget",
    "gc",
    "list_quarantine",
    "locate",
    "plan_forget",
    "portal_exports",
    "purge",
    "release",
    "show",
    "target",
    "vacuum",
]
