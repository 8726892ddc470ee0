"""Ingest: files, folders and zips (or received instances) -> de-identified lake rows."""

from lake.ingest._commit import UID_CONFLICT, BatchResult, Original
from lake.ingest._content import NOT_MEDICAL, ContentKind, sniff
from lake.ingest._header import header_of_file, header_of_member
from lake.ingest._instance import (
    Accepted,
    IngestContext,
    Outcome,
    Rejected,
    accept,
    process_bytes,
    read_instance,
    reject,
)
from lake.ingest._limits import ReadLimits
from lake.ingest._quarantine import decrypt, quarantine_key
from lake.ingest._run import Ingestor, IngestSummary, Skipped, ingest
from lake.ingest._sources import (
    ZIP_ERRORS,
    NotRegularFileError,
    SourceItem,
    SourceReport,
    count_items,
    iter_items,
    read_file,
)

__all__ = [
    "NOT_MEDICAL",
    "UID_CONFLICT",
    "ZIP_ERRORS",
    "Accepted",
    "BatchResult",
    "ContentKind",
    "IngestContext",
    "IngestSummary",
    "Ingestor",
    "NotRegularFileError",
    "Original",
    "Outcome",
    "ReadLimits",
    "Rejected",
    "Skipped",
    "SourceItem",
    "SourceReport",
    "accept",
    "count_items",
    "decrypt",
    "header_of_file",
    "header_of_member",
    "ingest",
    "iter_items",
    "process_bytes",
    "quarantine_key",
    "read_file",
    "read_instance",
    "reject",
    "sniff",
]
