"""Documents into the lake: wrap, de-identify, and hand the ingest seam an outcome.

:func:`document_outcome` turns one document file into an
:class:`~lake.ingest.Accepted` row (or a :class:`~lake.ingest.Rejected` record with the
original sealed in the quarantine), ready for :meth:`lake.ingest.Ingestor.commit` like any
DICOM instance: the catalog, exports and network services then treat it as one.

UIDs: a document's series and instance UIDs are derived from the study's keyed UID and the
sha256 of the original file, then keyed like every UID, so the same file attached to the
same study always gives the same instance (a re-run adds nothing) whether it came through a
folder, ``--study`` or ``lake attach``, and another study gets another instance.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset

from lake._errors import DeidRefusedError
from lake.deid import Deidentifier
from lake.documents._image import clean_image
from lake.documents._iod import (
    encapsulated_pdf,
    multiframe_sc,
    video_photographic,
    vl_photographic,
)
from lake.documents._keys import keyed, study_keys
from lake.documents._kinds import DocumentKind
from lake.documents._limits import Limits
from lake.documents._ocr import Ocr
from lake.documents._pdf import clean_pdf
from lake.documents._study import Study
from lake.documents._text import TextPolicy
from lake.documents._video import clean_video
from lake.ingest import IngestContext, Outcome, accept, reject

__all__ = ["Wrapped", "document_columns", "document_outcome", "wrap_document"]

_NAMESPACE = "imaging-lake document v1"


@dataclass(frozen=True)
class Wrapped:
    """A document as a DICOM instance, and what the catalog says of it."""

    dataset: Dataset
    content: bytes | None  # the encapsulated document, restored after de-identification
    columns: dict[str, Any]


def _pre_uid(keyed_study: str, digest: str, role: str) -> str:
    value = hashlib.sha256(f"{_NAMESPACE}:{keyed_study}:{digest}:{role}".encode()).digest()
    return "2.25." + str(int.from_bytes(value[:16], "big"))


def document_columns(mime: str | None, pages: int | None, duration: float | None
                     ) -> dict[str, Any]:
    """The catalog's document columns for one instance."""
    return {"document_mime_type": mime, "document_pages": pages,
            "document_duration": duration}


def wrap_document(kind: DocumentKind, data: bytes, study: Study, engine: Deidentifier, *,
                  ocr: Ocr | None, limits: Limits | None = None) -> Wrapped:
    """Clean ``data`` and wrap it as a standard instance of ``study``.

    The instance's Patient and Study modules are ``study.modules``: identified ones (to be
    de-identified by ``engine`` with the document) or the lake's de-identified ones (then the
    instance is final and its UIDs are keyed here).

    Raises
    ------
    DocumentRefusedError
        When the content is refused (see :mod:`lake.documents`).
    """
    known = study.keyed_words
    policy = TextPolicy.for_engine(
        engine, study.identifiers, study.id_digits,
        keyed=(lambda word: keyed(engine, "word", word) in known) if known else None)
    clean_pixels = engine.plan.clean_pixels
    digest = hashlib.sha256(data).hexdigest()
    series, sop = (_pre_uid(study.keyed_study_uid, digest, r) for r in ("series", "instance"))
    if not study.identified:
        series, sop = engine.uid(series), engine.uid(sop)
    keep_dates = study.identified  # original dates can be shifted only with the engine
    if kind is DocumentKind.PDF:
        pdf = clean_pdf(data, policy, ocr=ocr, clean_pixels=clean_pixels, limits=limits)
        ds = encapsulated_pdf(study.modules, pdf.data, series_uid=series, sop_uid=sop,
                              created=pdf.created if keep_dates else None)
        return Wrapped(ds, pdf.data, document_columns("application/pdf", pdf.pages, None))
    if kind.is_image:
        image = clean_image(data, kind, policy, ocr=ocr, clean_pixels=clean_pixels,
                            limits=limits)
        if not keep_dates:
            image = _undated(image)
        single = len(image.frames) == 1 or image.jpeg
        build = vl_photographic if single else multiframe_sc
        ds = build(study.modules, image, series_uid=series, sop_uid=sop)
        mime = "image/jpeg" if image.jpeg else "image/png" if single else "image/tiff"
        return Wrapped(ds, None, document_columns(mime, len(image.frames), None))
    video = clean_video(data, policy, ocr=ocr, clean_pixels=clean_pixels, limits=limits)
    if not keep_dates:
        video = _undated(video)
    ds = video_photographic(study.modules, video, series_uid=series, sop_uid=sop)
    return Wrapped(ds, None, document_columns("video/mp4", None, round(video.duration, 3)))


def _undated(content: Any) -> Any:
    from dataclasses import replace

    return replace(content, created=None)


def document_outcome(kind: DocumentKind, data: bytes, study: Study | None,
                     ctx: IngestContext, *, ocr: Ocr | None = None,
                     limits: Limits | None = None) -> Outcome:
    """Ingest one document file up to (not including) the catalog commit.

    Never raises for bad input: a document without a study (``no_study``), refused content
    or a failure becomes a :class:`~lake.ingest.Rejected` with the original sealed.
    """
    if study is None:
        return reject(ctx, data, "no_study", f"a {kind.value} document with no study: put it "
                      "beside its study's DICOM files, or name its study when ingesting or "
                      "attaching it")
    try:
        wrapped = wrap_document(kind, data, study, ctx.engine, ocr=ocr, limits=limits)
        ds = wrapped.dataset
        actions: Counter[str] = Counter()
        columns = dict(wrapped.columns)
        if study.identified:
            columns.update(study_keys(ds, ctx.engine))
            result = ctx.engine.apply(ds)
            actions = Counter(result.actions)
            if wrapped.content is not None:  # the engine dummies Encapsulated Document
                content = wrapped.content
                ds.EncapsulatedDocument = content + (b"\0" if len(content) % 2 else b"")
        else:
            columns.update(accession_key=study.accession_key,
                           identity_keys=sorted(study.keyed_words) or None)
        return accept(ds, ctx, actions, len(data),
                      pixels_cleaned="DERIVED" in (ds.get("ImageType") or []), columns=columns)
    except DeidRefusedError as exc:
        return reject(ctx, data, exc.reason, str(exc))
    except Exception as exc:  # noqa: BLE001 - one bad document must not sink the batch
        return reject(ctx, data, "processing_error", f"processing failed ({type(exc).__name__}); "
                      "the original is kept sealed for review")
