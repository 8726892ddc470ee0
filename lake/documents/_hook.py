"""The two hooks by which file ingest and every DICOM front door reach documents.

* :func:`ingest_item` - called by file ingest for every item: a document file (recognised by
  content) is wrapped and de-identified here; anything else returns None and goes on as
  DICOM.
* :func:`lake.documents.before_deid` - called by the instance processing of every front door
  (files, C-STORE, STOW-RS) on an identified instance, before the engine: the content of
  already wrapped documents.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from lake._capture import capture
from lake._errors import IngestError
from lake.documents._ingest import document_outcome
from lake.documents._kinds import sniff
from lake.documents._limits import Limits
from lake.documents._ocr import Ocr
from lake.documents._study import FolderStudies, Study, study_from_lake

if TYPE_CHECKING:
    from lake._lake import Lake
    from lake.ingest import IngestContext, Outcome

__all__ = ["DocumentOptions", "document_options", "ingest_item"]

_HEAD = 1024


@dataclass(frozen=True)
class DocumentOptions:
    """What file ingest knows about the documents of a run (picklable, sent to workers).

    Attributes
    ----------
    study : str or None
        The original StudyInstanceUID or AccessionNumber the run's documents belong to
        (``lake ingest --study``); None: each document's folder decides.
    lake_study : Study or None
        That study as found in the lake before the run (by its keyed UID), used when the
        document's folder does not hold it.
    limits : Limits
    """

    study: str | None = None
    lake_study: Study | None = field(default=None, repr=False)
    limits: Limits = field(default_factory=Limits)


def ingest_item(path: str, member: str | None, data: bytes, ctx: IngestContext,
                folders: FolderStudies, options: DocumentOptions | None = None
                ) -> Outcome | None:
    """The outcome of one file if it is a document, else None (the caller treats it as DICOM).

    The document's study: the one study of the DICOM files in its folder (on disk or in its
    zip) - or, with ``options.study``, the folder's study with that original UID or accession
    number, else ``options.lake_study``; otherwise it is quarantined as ``no_study``.
    """
    kind = sniff(data[:_HEAD])
    if kind is None:
        return None
    options = options or DocumentOptions()
    # Reading the folder's original headers (and the document) may make pydicom warn with
    # original values: captured for this thread, never shown (lake._capture).
    with capture():
        study = folders.study(path, member, options.study)
        if study is None and options.study is not None:
            study = options.lake_study
        ocr = Ocr() if Ocr.available() else None
        return document_outcome(kind, data, study, ctx, ocr=ocr, limits=options.limits)


def document_options(lake: Lake, ctx: IngestContext, study: str) -> IngestContext:
    """``ctx`` with the documents of the run bound to ``study`` (``lake ingest --study``).

    ``study`` is an original StudyInstanceUID or AccessionNumber. A study UID that is already
    in the lake is looked up once here (by its keyed UID); otherwise only the documents'
    folders can name it.
    """
    lake_study: Study | None = None
    try:
        lake_study = study_from_lake(lake, ctx.engine, study)
    except IngestError:
        lake_study = None  # not a UID, or not in the lake (yet): folders decide
    return replace(ctx, documents=DocumentOptions(study.strip(), lake_study))
