"""DICOM network services: the lake as a DICOM node, and pulling from a clinical PACS.

Examples
--------
>>> import lake
>>> from lake.net import DicomServer, ServerConfig
>>> lk = lake.open("/data/lake")  # doctest: +SKIP
>>> config = ServerConfig.from_settings(lk.config.dicom, port=11112)  # doctest: +SKIP
>>> with DicomServer(lk, lk.secret(), config) as server:  # doctest: +SKIP
...     ...

Other front doors (STOW-RS) receive through :class:`Intake`: durable (sealed in a receipt
journal, group-committed ``fdatasync``) when :meth:`Intake.submit` returns, de-identified,
committed in batches, UID conflicts quarantined with their sealed originals.
"""

from lake.net._config import Peer, ServerConfig, TLSConfig, parse_destination, parse_peer
from lake.net._intake import Intake
from lake.net._journal import Receipt, ReceiptJournal
from lake.net._pull import PULLS, PullSummary, RemoteStudy, find_studies, pull_studies
from lake.net._receive import ReceiveStats, StoreStatus
from lake.net._server import DicomServer, ServerReport
from lake.query import Level, identifier_from_filters

__all__ = [
    "PULLS",
    "DicomServer",
    "Intake",
    "Level",
    "Peer",
    "PullSummary",
    "Receipt",
    "ReceiptJournal",
    "ReceiveStats",
    "RemoteStudy",
    "ServerConfig",
    "ServerReport",
    "StoreStatus",
    "TLSConfig",
    "find_studies",
    "identifier_from_filters",
    "parse_destination",
    "parse_peer",
    "pull_studies",
]
