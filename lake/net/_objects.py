"""Stored instances as datasets to send, and choosing how to send them.

An instance is rebuilt from its exact de-identified header bytes plus its pixel
blob, in the transfer syntax it was stored in. It is converted only when the peer
accepted no context for that syntax: compressed pixel data is then decoded to
Explicit VR Little Endian (the one syntax nearly every peer accepts) or, for a peer
that takes only compressed data, re-encoded losslessly (RLE, JPEG-LS or JPEG 2000
lossless). Nothing is ever converted lossily.
"""

from __future__ import annotations

import copy
import io
from collections.abc import Iterable, Sequence
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)
from pynetdicom.presentation import PresentationContext, build_context

from lake._errors import NetError
from lake.nifti import decode_past_panic
from lake.query import RetrieveItem
from lake.store import BlobStore

__all__ = [
    "LOSSLESS_ENCODABLE",
    "UNCOMPRESSED",
    "RequestorSyntaxes",
    "contexts_for",
    "load_instance",
    "prepare_for",
]

_PIXEL_DATA = 0x7FE00010
UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
LOSSLESS_ENCODABLE = (RLELossless, JPEGLSLossless, JPEG2000Lossless)
_MAX_CONTEXTS = 127


def load_instance(header: bytes, item: RetrieveItem, blobs: BlobStore) -> Dataset:
    """The stored instance: its de-identified header plus its pixel blob.

    Raises
    ------
    BlobNotFoundError
        If the pixel blob is missing (run ``lake verify``).
    """
    ds = dcmread(io.BytesIO(header))
    if item.pixel_hash:
        ds.add_new(_PIXEL_DATA, item.pixel_vr or "OB", blobs.get(item.pixel_hash))
        if UID(ds.file_meta.TransferSyntaxUID).is_encapsulated:
            ds[_PIXEL_DATA].is_undefined_length = True
    return ds


def _accepts(syntax: UID, offered: UID) -> bool:
    """Whether pynetdicom can send a dataset in ``syntax`` over a context of ``offered``."""
    if syntax == offered:
        return True
    if syntax.is_compressed or offered.is_compressed:
        return False
    return bool(syntax.is_little_endian == offered.is_little_endian)


def prepare_for(ds: Dataset, accepted: Sequence[PresentationContext]) -> Dataset:
    """``ds`` as stored if a context accepts its syntax, else decoded to Explicit VR LE.

    Parameters
    ----------
    ds : Dataset
        A stored instance (see :func:`load_instance`).
    accepted : sequence of PresentationContext
        The accepted contexts in which the lake acts as the Storage SCU.

    Raises
    ------
    NetError
        If the peer accepts the SOP class in no usable syntax, or decoding fails.
    """
    sop_class = UID(ds.SOPClassUID)
    syntax = UID(ds.file_meta.TransferSyntaxUID)
    offered = [UID(cx.transfer_syntax[0]) for cx in accepted if cx.abstract_syntax == sop_class]
    if any(_accepts(syntax, o) for o in offered):
        return ds
    if syntax == ExplicitVRBigEndian:
        raise NetError("big-endian instances can only be sent to peers that accept big endian")
    uncompressed = [o for o in offered if not o.is_compressed and o.is_little_endian]
    lossless = [o for o in offered if o in LOSSLESS_ENCODABLE]
    if not uncompressed and not lossless:
        raise NetError(f"the peer accepted no usable presentation context for {sop_class.name}")
    try:
        if syntax.is_compressed:
            decode_past_panic(ds.decompress)
        if not uncompressed:
            ds.compress(lossless[0])
    except Exception as exc:  # noqa: BLE001 - codec failures come in many types
        raise NetError(
            f"the instance is stored as {syntax.name}, which the peer does not accept, and "
            f"converting it losslessly failed ({type(exc).__name__})"
        ) from None
    return ds


def contexts_for(items: Iterable[RetrieveItem]) -> list[PresentationContext]:
    """Presentation contexts to propose for sending ``items`` (C-MOVE sub-operations).

    One context per (SOP class, stored syntax) so the peer can take each instance
    as stored, plus one uncompressed fallback per SOP class that is stored compressed.
    """
    pairs: dict[tuple[str, str], None] = {}
    for item in items:
        pairs.setdefault((item.sop_class_uid, item.transfer_syntax_uid), None)
    exact: list[PresentationContext] = []
    fallback: dict[str, PresentationContext] = {}
    for sop, syntax in pairs:
        uid = UID(syntax)
        if uid.is_compressed:
            exact.append(build_context(sop, [uid]))
            fallback.setdefault(sop, build_context(sop, list(UNCOMPRESSED)))
        elif uid == DeflatedExplicitVRLittleEndian:
            exact.append(build_context(sop, [uid, *UNCOMPRESSED]))
        else:
            exact.append(build_context(sop, [uid, *[u for u in UNCOMPRESSED if u != uid]]))
    contexts = list(fallback.values()) + exact
    if len(contexts) > _MAX_CONTEXTS:
        raise NetError(
            f"the matches need {len(contexts)} presentation contexts (at most {_MAX_CONTEXTS} "
            "fit in one association); retrieve fewer SOP classes at a time"
        )
    return contexts


class RequestorSyntaxes:
    """EVT_REQUESTED handler: accept, per SOP class, the syntax the requestor lists first.

    pynetdicom otherwise picks by the acceptor's own order. Following the requestor
    keeps received instances as sent (a modality proposes its file's syntax first)
    and serves C-GET in the syntax the retriever prefers. The association's supported
    contexts are shared with the server, so reordered ones are replaced by copies.

    A copy holds the server's own transfer syntax UIDs, already validated, in the new
    order: ``build_context`` would validate every one again, and storescu proposes ~120
    storage SOP classes, which cost ~40 ms of CPU per association (all of it on a
    fresh server's first associations, which a cache of copies did not help).
    """

    def __call__(self, event: Any) -> None:
        request = event.assoc.requestor.primitive
        preferred: dict[str, list[str]] = {}
        for cx in request.presentation_context_definition_list or []:
            preferred.setdefault(str(cx.abstract_syntax), [str(t) for t in cx.transfer_syntax])
        contexts = []
        for cx in event.assoc.acceptor.supported_contexts:
            wanted = preferred.get(str(cx.abstract_syntax))
            if wanted:
                cx = reordered(cx, wanted)
            contexts.append(cx)
        event.assoc.acceptor.supported_contexts = contexts


def reordered(cx: PresentationContext, wanted: list[str]) -> PresentationContext:
    """``cx`` with the syntaxes of ``wanted`` it holds first, in that order (else ``cx``).

    A shallow copy (roles included) whose transfer syntaxes are ``cx``'s own UID objects:
    nothing is validated again.
    """
    ours = cx.transfer_syntax
    index = {str(t): t for t in ours}
    first = list(dict.fromkeys(index[t] for t in wanted if t in index))
    if not first or first == ours[: len(first)]:
        return cx
    context = copy.copy(cx)
    context._transfer_syntax = [*first, *(t for t in ours if t not in first)]
    return context
