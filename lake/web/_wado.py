"""WADO-RS (PS3.18 10.4): instances, metadata, frames, bulk data and rendered images.

Instances are served as stored (``transfer-syntax=*``, the bytes of ``lake export
dicom``) or in Explicit VR Little Endian (the default of ``application/dicom``; pixel
data decoded by pydicom's handlers); anything else is 406. Responses stream one part at
a time, so memory does not grow with the size of a study.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterator, Sequence
from typing import Any

from pydicom.uid import UID
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from lake.access import Grant, Permission
from lake.query import Snapshot, StoredInstance
from lake.store import BlobStore
from lake.web._documents import (
    ENCAPSULATED_DOCUMENT,
    PDF,
    DocumentCache,
    document_kind,
    document_response,
    wanted_form,
)
from lake.web._errors import NotAcceptableError, NotFoundError
from lake.web._guard import route
from lake.web._json import DICOM_JSON, accepts_gzip, base_url, retrieve_url
from lake.web._media import (
    EXPLICIT_LE,
    MediaRange,
    frame_media_type,
    multipart,
    new_boundary,
    parse_accept,
)
from lake.web._render import IMAGE_TYPES, render
from lake.web._stored import (
    as_explicit_le,
    decoded_pixels,
    frames_of,
    load_bytes,
    locate,
    pixels_of,
    with_headers,
)

__all__ = ["instance_syntax", "wado_routes"]

_DICOM = "application/dicom"
_OCTETS = "application/octet-stream"
_HEADER_URN = "urn:imaging-lake:header_dicom"
_PIXEL_TAG = "7FE00010"
_FRAMES = re.compile(r"^\d{1,6}(,\d{1,6}){0,9999}$")
_SEGMENT = re.compile(r"^(?:[0-9A-Fa-f]{8}|\d{1,6})$")
_UNCOMPRESSED_LE = frozenset({EXPLICIT_LE, "1.2.840.10008.1.2"})


# --- negotiation ---------------------------------------------------------------------------


def instance_syntax(ranges: Sequence[MediaRange], stored: set[str]) -> str:
    """The transfer syntax to serve instances in: ``*`` (as stored) or a UID.

    Raises
    ------
    NotAcceptableError
        If no acceptable range can be served for every instance.
    """
    for r in ranges:
        inner = r.inner
        if inner not in (_DICOM, "*/*", "multipart/related", "application/*"):
            continue
        syntax = r.transfer_syntax or EXPLICIT_LE
        if syntax == "*" or stored == {syntax}:
            return "*"
        if syntax == EXPLICIT_LE:
            return EXPLICIT_LE
    raise NotAcceptableError(
        "instances are served as stored (transfer-syntax=*) or as Explicit VR Little Endian "
        "(multipart/related; type=\"application/dicom\"; transfer-syntax=1.2.840.10008.1.2.1)"
    )


def _frame_mode(ranges: Sequence[MediaRange], stored: str) -> str:
    """``stored`` (frames as stored) or ``decoded`` (Explicit VR Little Endian)."""
    compressed = UID(stored).is_compressed
    for r in ranges:
        inner = r.inner
        syntax = r.transfer_syntax
        if inner in ("*/*", "multipart/related", "application/*"):
            return "decoded" if compressed else "stored"
        if inner == _OCTETS:
            if syntax == "*" or syntax == stored:
                return "stored"
            if syntax in (None, EXPLICIT_LE):
                return "stored" if stored in _UNCOMPRESSED_LE else "decoded"
            continue
        if compressed and inner == frame_media_type(stored) and syntax in (None, "*", stored):
            return "stored"
    raise NotAcceptableError(
        "frames are served as stored (transfer-syntax=*) or decoded as "
        "application/octet-stream (Explicit VR Little Endian)"
    )


def _frame_part_type(syntax: str) -> str:
    if UID(syntax).is_compressed:
        return f"{frame_media_type(syntax)}; transfer-syntax={syntax}"
    return f"{_OCTETS}; transfer-syntax={EXPLICIT_LE}"


def _multipart_response(parts: Iterator[tuple[str, bytes]], part_type: str) -> Response:
    boundary = new_boundary()
    return StreamingResponse(
        multipart(parts, boundary),
        media_type=f'multipart/related; type="{part_type}"; boundary={boundary}',
    )


# --- shared plumbing ---------------------------------------------------------------------


async def _snapshot(request: Request, grant: Grant) -> Snapshot:
    snapshot: Snapshot = await run_in_threadpool(request.app.state.views.snapshot, grant)
    return snapshot


def _blobs(request: Request) -> BlobStore:
    blobs: BlobStore = request.app.state.lake.blobs
    return blobs


def _path_uids(request: Request) -> tuple[str, str | None, str | None]:
    p = request.path_params
    return p["study"], p.get("series"), p.get("instance")


# --- instances -------------------------------------------------------------------------


async def retrieve(request: Request, grant: Grant) -> Response:
    """Study, series or instance as ``multipart/related; type="application/dicom"``."""
    snapshot = await _snapshot(request, grant)
    items = await run_in_threadpool(locate, snapshot, *_path_uids(request))
    syntax = instance_syntax(
        parse_accept(request.headers.get("accept")), {i.transfer_syntax_uid for i in items}
    )
    blobs = _blobs(request)

    def parts() -> Iterator[tuple[str, bytes]]:
        for item, header in with_headers(snapshot, items, "header_dicom"):
            data = load_bytes(blobs, item, bytes(header))
            if syntax == "*":
                yield f"{_DICOM}; transfer-syntax={item.transfer_syntax_uid}", data
            else:
                yield f"{_DICOM}; transfer-syntax={EXPLICIT_LE}", as_explicit_le(data)

    return _multipart_response(parts(), _DICOM)


# --- metadata ----------------------------------------------------------------------------


def _rewrite(node: Any, url: str, path: list[str]) -> None:
    if isinstance(node, dict):
        for tag, entry in node.items():
            if not isinstance(entry, dict):
                continue
            if entry.get("BulkDataURI") == _HEADER_URN:
                entry["BulkDataURI"] = f"{url}/bulkdata/{'/'.join([*path, tag])}"
            for index, item in enumerate(entry.get("Value") or []):
                if isinstance(item, dict) and entry.get("vr") == "SQ":
                    _rewrite(item, url, [*path, tag, str(index)])


def metadata_text(item: StoredInstance, text: str, base: str) -> str:
    """One instance's stored DICOM JSON with BulkDataURIs that point at this server.

    An Encapsulated PDF's document is always a BulkDataURI (served as ``application/pdf``),
    even when it is small enough to be stored inline.
    """
    url = retrieve_url(base, item.study_uid, item.series_uid, item.sop_uid)
    pdf = document_kind(item) == PDF
    if _HEADER_URN in text or pdf:
        node = json.loads(text)
        _rewrite(node, url, [])
        if item.pixel_hash and _PIXEL_TAG in node:
            node[_PIXEL_TAG]["BulkDataURI"] = f"{url}/bulkdata/{_PIXEL_TAG}"
        if pdf and ENCAPSULATED_DOCUMENT in node:
            node[ENCAPSULATED_DOCUMENT] = {
                "vr": "OB", "BulkDataURI": f"{url}/bulkdata/{ENCAPSULATED_DOCUMENT}"}
        return json.dumps(node, separators=(",", ":"), ensure_ascii=False)
    if item.pixel_hash:
        return text.replace(f'"{item.pixel_hash}"', f'"{url}/bulkdata/{_PIXEL_TAG}"')
    return text


async def metadata(request: Request, grant: Grant) -> Response:
    """``/metadata``: DICOM JSON of every instance, with BulkDataURIs; gzip when asked."""
    import gzip

    snapshot = await _snapshot(request, grant)
    items = await run_in_threadpool(locate, snapshot, *_path_uids(request))
    base = base_url(request)

    def build() -> bytes:
        texts = [
            metadata_text(item, str(text), base)
            for item, text in with_headers(snapshot, items, "header_json")
        ]
        return ("[" + ",".join(texts) + "]").encode()

    body = await run_in_threadpool(build)
    headers = {"Vary": "Accept-Encoding"}
    if accepts_gzip(request):
        body = await run_in_threadpool(gzip.compress, body, 5)
        headers["Content-Encoding"] = "gzip"
    return Response(body, media_type=DICOM_JSON, headers=headers)


# --- frames ------------------------------------------------------------------------------


def _frame_numbers(text: str) -> list[int]:
    from lake._errors import QueryError

    if not _FRAMES.match(text.replace(" ", "")):
        raise QueryError("frames must be a comma-separated list of frame numbers, e.g. 1,2,3")
    return [int(n) for n in text.replace(" ", "").split(",")]


def frame_parts(
    blobs: BlobStore, snapshot: Snapshot, item: StoredInstance, numbers: list[int], mode: str
) -> list[tuple[str, bytes]]:
    """The requested frames with their part content types."""
    if item.pixel_hash is None:
        raise NotFoundError("not found")
    if mode == "stored":
        pixels = pixels_of(blobs, item)
        assert pixels is not None
        part = _frame_part_type(item.transfer_syntax_uid)
        return [(part, f) for f in frames_of(item, pixels, numbers)]
    ((_, header),) = list(with_headers(snapshot, [item], "header_dicom"))
    ds, pixels = decoded_pixels(load_bytes(blobs, item, bytes(header)))
    native = dataclasses.replace(
        item, transfer_syntax_uid=EXPLICIT_LE, rows=int(ds.Rows), columns=int(ds.Columns),
        samples_per_pixel=int(ds.get("SamplesPerPixel") or 1),
        bits_allocated=int(ds.BitsAllocated),
    )
    part = _frame_part_type(EXPLICIT_LE)
    return [(part, f) for f in frames_of(native, pixels, numbers)]


async def frames(request: Request, grant: Grant) -> Response:
    """``/frames/{list}``: one part per frame, each with its transfer syntax."""
    numbers = _frame_numbers(request.path_params["frames"])
    snapshot = await _snapshot(request, grant)
    (item,) = await run_in_threadpool(locate, snapshot, *_path_uids(request))
    mode = _frame_mode(parse_accept(request.headers.get("accept")), item.transfer_syntax_uid)
    parts = await run_in_threadpool(frame_parts, _blobs(request), snapshot, item, numbers, mode)
    return _multipart_response(iter(parts), parts[0][0].split(";")[0])


# --- bulk data ---------------------------------------------------------------------------


def bulk_value(blobs: BlobStore, snapshot: Snapshot, item: StoredInstance, path: str) -> bytes:
    """The value of the element at ``path`` (tags and item indexes separated by ``/``)."""
    segments = [s for s in path.split("/") if s]
    if not segments or not all(_SEGMENT.match(s) for s in segments) or len(segments) % 2 == 0:
        raise NotFoundError("not found")
    if segments == [_PIXEL_TAG]:
        pixels = pixels_of(blobs, item)
        if pixels is None:
            raise NotFoundError("not found")
        return pixels
    from lake.web._stored import _read

    ((_, header),) = list(with_headers(snapshot, [item], "header_dicom"))
    node: Any = _read(bytes(header))
    try:
        for index, segment in enumerate(segments):
            node = node[int(segment, 16)].value if index % 2 == 0 else node[int(segment)]
    except (KeyError, IndexError, TypeError, ValueError):
        raise NotFoundError("not found") from None
    if not isinstance(node, bytes | bytearray):
        raise NotFoundError("not found")
    return bytes(node)


def _document_bytes(
    request: Request, snapshot: Snapshot, item: StoredInstance, kind: str
) -> bytes:
    cache: DocumentCache = request.app.state.documents
    try:
        return cache.get(item, kind)
    except KeyError:
        pass
    ((_, header),) = list(with_headers(snapshot, [item], "header_dicom"))
    try:
        return cache.get(item, kind, load_bytes(_blobs(request), item, bytes(header)))
    except Exception as exc:  # a document that cannot be unwrapped (any codec error): 406
        if isinstance(exc, (NotFoundError, NotAcceptableError)):
            raise
        raise NotAcceptableError(f"the document cannot be unwrapped as {kind}") from None


async def _as_document(
    request: Request, snapshot: Snapshot, item: StoredInstance, element: str | None
) -> Response | None:
    """The instance's document when ``element`` holds it (None: the whole instance, as
    /rendered) and the request asks for it as a file; else None."""
    kind = document_kind(item)
    if kind is None:
        return None
    holder = ENCAPSULATED_DOCUMENT if kind == PDF else _PIXEL_TAG
    if element is not None and element.strip("/").upper() != holder:
        return None
    form = wanted_form(parse_accept(request.headers.get("accept")), kind)
    if form is None:
        return None
    data = await run_in_threadpool(_document_bytes, request, snapshot, item, kind)
    if form == "multipart":
        return _multipart_response(iter([(kind, data)]), kind)
    return document_response(request, data, kind)


async def bulkdata(request: Request, grant: Grant) -> Response:
    """``/bulkdata/{path}``: an element's value (``application/octet-stream``); an
    Encapsulated PDF's document as ``application/pdf`` and a video's pixel data as
    ``video/mp4`` when asked for (or for ``*/*``)."""
    snapshot = await _snapshot(request, grant)
    (item,) = await run_in_threadpool(locate, snapshot, *_path_uids(request))
    document = await _as_document(request, snapshot, item, request.path_params["path"])
    if document is not None:
        return document
    value = await run_in_threadpool(
        bulk_value, _blobs(request), snapshot, item, request.path_params["path"]
    )
    ranges = parse_accept(request.headers.get("accept"))
    if ranges and ranges[0].type == _OCTETS:
        return Response(value, media_type=_OCTETS)
    if not any(r.inner in (_OCTETS, "*/*", "multipart/related") for r in ranges):
        raise NotAcceptableError("bulk data is served as application/octet-stream")
    part = _OCTETS
    if request.path_params["path"].strip("/") == _PIXEL_TAG:
        part += f"; transfer-syntax={item.transfer_syntax_uid}"
    return _multipart_response(iter([(part, value)]), _OCTETS)


# --- rendered ----------------------------------------------------------------------------


def _image_type(request: Request) -> str:
    for r in parse_accept(request.headers.get("accept")):
        if r.inner in IMAGE_TYPES:
            return r.inner
        if r.inner in ("*/*", "image/*", "multipart/related"):
            return "image/jpeg"
    raise NotAcceptableError("rendered images are image/jpeg or image/png")


def _render_one(
    blobs: BlobStore, snapshot: Snapshot, item: StoredInstance, number: int, media: str,
    params: dict[str, str], size: int | None,
) -> bytes:
    if number < 1 or number > int(item.frames or 1):
        raise NotFoundError("not found")
    ((_, header),) = list(with_headers(snapshot, [item], "header_dicom"))
    data = load_bytes(blobs, item, bytes(header))
    return render(data, number, media, params, size)


def _thumbnail_bytes(
    blobs: BlobStore, snapshot: Snapshot, items: list[StoredInstance], frame: int | None,
    media: str, params: dict[str, str], size: int | None,
) -> bytes:
    """One image: the instance or frame asked for; a study's or series' thumbnail is the middle
    instance of its first series (the middle frame of a multi-frame instance)."""
    first = [i for i in items if i.series_uid == items[0].series_uid and i.pixel_hash]
    if not first:
        raise NotAcceptableError("there is no image to render")
    item = first[len(first) // 2] if len(items) > 1 else first[0]
    number = frame if frame is not None else (int(item.frames or 1) + 1) // 2 if size else 1
    return _render_one(blobs, snapshot, item, number, media, params, size)


def _rendered(size: int | None) -> Any:
    async def endpoint(request: Request, grant: Grant) -> Response:
        snapshot = await _snapshot(request, grant)
        items = await run_in_threadpool(locate, snapshot, *_path_uids(request))
        params = dict(request.query_params)
        frame = request.path_params.get("frames")
        blobs = _blobs(request)
        if size is None and frame is None and "instance" in request.path_params:
            # A document's rendering is the document (PS3.18 8.3.5.1.2: application/pdf,
            # video/mp4), which is what OHIF's <video> element plays.
            document = await _as_document(request, snapshot, items[0], None)
            if document is not None:
                return document
        media = _image_type(request)
        if size is None and "instance" not in request.path_params:
            # PS3.18 10.4.1.1.3: a study's or series' rendered resource is every instance's
            # rendering (the first frame of each), one part each, rendered as streamed.
            images = [i for i in items if i.pixel_hash]
            if not images:
                raise NotAcceptableError("there is no image to render")

            # The first one here: a bad parameter is a 400, not a broken stream.
            first = await run_in_threadpool(
                _render_one, blobs, snapshot, images[0], 1, media, params, None)

            def parts() -> Iterator[tuple[str, bytes]]:
                yield media, first
                for item in images[1:]:
                    yield media, _render_one(blobs, snapshot, item, 1, media, params, None)

            return _multipart_response(parts(), media)
        number = _frame_numbers(frame)[0] if frame is not None else None
        body = await run_in_threadpool(
            _thumbnail_bytes, blobs, snapshot, items, number, media, params, size,
        )
        return Response(body, media_type=media)

    endpoint.__name__ = "thumbnail" if size else "rendered"
    return endpoint


def wado_routes(prefix: str) -> list[Route]:
    """The WADO-RS routes below ``prefix`` (``/dicomweb``)."""
    study = prefix + "/studies/{study}"
    series = study + "/series/{series}"
    instance = series + "/instances/{instance}"
    frame = instance + "/frames/{frames}"
    rendered, thumbnail = _rendered(None), _rendered(128)
    table: list[tuple[str, Any]] = [
        (study, retrieve), (series, retrieve), (instance, retrieve),
        (study + "/metadata", metadata), (series + "/metadata", metadata),
        (instance + "/metadata", metadata),
        (frame, frames),
        (instance + "/bulkdata/{path:path}", bulkdata),
        (study + "/rendered", rendered), (series + "/rendered", rendered),
        (instance + "/rendered", rendered), (frame + "/rendered", rendered),
        (study + "/thumbnail", thumbnail), (series + "/thumbnail", thumbnail),
        (instance + "/thumbnail", thumbnail), (frame + "/thumbnail", thumbnail),
    ]
    return [route(path, endpoint, Permission.READ, name=f"wado{i}")
            for i, (path, endpoint) in enumerate(table)]
