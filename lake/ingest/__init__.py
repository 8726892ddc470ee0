"""Ingest: files, folders and zips (or received instances) -> de-identified lake rows."""

from lake.ingest._instance import Accepted, IngestContext, Outcome, Rejected, process_bytes
from lake.ingest._quarantine import decrypt, quarantine_key
from lake.ingest._run import BatchResult, Ingestor, IngestSummary, ingest
from lake.ingest._sources import SourceItem, iter_items

__all__ = [
    "Accepted",
    "BatchResult",
    "IngestContext",
    "IngestSummary",
    "Ingestor",
    "Outcome",
    "Rejected",
    "SourceItem",
    "decrypt",
    "ingest",
    "iter_items",
    "process_bytes",
    "quarantine_key",
]
