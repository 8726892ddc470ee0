"""``lake attach``: documents added to a study that is already in the lake."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from lake._capture import capture
from lake._errors import IngestError
from lake.deid import Profile
from lake.documents._ingest import document_outcome
from lake.documents._kinds import sniff
from lake.documents._limits import Limits
from lake.documents._ocr import Ocr
from lake.documents._study import study_from_lake
from lake.ingest import BatchResult, Ingestor, Outcome, reject
from lake.vault import Secret

if TYPE_CHECKING:
    from lake._lake import Lake

__all__ = ["attach"]


def attach(lake: Lake, secret: Secret, study_uid: str,
           files: Iterable[str | os.PathLike[str]], *, profile: str | Profile | None = None,
           limits: Limits | None = None) -> BatchResult:
    """Add document files to a study of the lake, in one batch.

    Parameters
    ----------
    lake : Lake
    secret : Secret
        The lake's key: the study is found by its keyed UID.
    study_uid : str
        The study's *original* StudyInstanceUID.
    files : iterable of path
        PDF, JPEG, PNG, BMP, TIFF, AVI, MP4 or MOV files (recognised by content).
    profile : str or Profile, optional
        The de-identification profile (default: the lake's).

    Returns
    -------
    BatchResult
        Refused files are quarantined with their reason, the rest committed.

    Raises
    ------
    IngestError
        When the study is not in the lake or a file does not exist (named by position).
    """
    paths = [Path(f) for f in files]
    for position, path in enumerate(paths, start=1):
        if not path.is_file():
            raise IngestError(f"file argument {position} does not exist or is not a file")
    ingestor = Ingestor(lake, secret, profile, source="attach")
    study = study_from_lake(lake, ingestor.context.engine, study_uid)
    ocr = Ocr() if Ocr.available() else None
    outcomes: list[Outcome] = []
    for path in paths:
        data = path.read_bytes()
        kind = sniff(data[:1024])
        if kind is None:
            outcomes.append(reject(
                ingestor.context, data, "not_a_document",
                "not a PDF, JPEG, PNG, BMP, TIFF, AVI, MP4 or MOV file"))
            continue
        with capture():  # warnings of the parsers may quote original values: never shown
            outcomes.append(document_outcome(kind, data, study, ingestor.context, ocr=ocr,
                                             limits=limits))
    return ingestor.commit(outcomes)
