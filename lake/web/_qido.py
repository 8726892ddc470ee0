"""QIDO-RS (PS3.18 10.6): searching studies, series and instances.

Query parameters become :class:`lake.query.Key` objects and are answered by the same
:class:`lake.query.Snapshot` that answers C-FIND, so both speak one set of matching
rules (wildcards, date/time ranges, UID lists, multi-valued attributes). Results are
DICOM JSON (``application/dicom+json``) with the default attributes of PS3.18 Table
10.6.3-3 for the level, plus ``includefield`` attributes (or ``all``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from lake._errors import QueryError
from lake.access import Grant, Permission
from lake.query import Key, Level, Snapshot
from lake.web._errors import NotFoundError
from lake.web._guard import route
from lake.web._json import DICOM_JSON, base_url, json_response, retrieve_url

__all__ = ["DEFAULT_ATTRIBUTES", "qido_routes", "search"]

_STUDY = (
    "StudyDate", "StudyTime", "AccessionNumber", "InstanceAvailability", "ModalitiesInStudy",
    "ReferringPhysicianName", "PatientName", "PatientID", "PatientBirthDate", "PatientSex",
    "StudyInstanceUID", "StudyID", "StudyDescription", "NumberOfStudyRelatedSeries",
    "NumberOfStudyRelatedInstances",
)
_SERIES = (
    "Modality", "SeriesDescription", "SeriesNumber", "SeriesInstanceUID",
    "NumberOfSeriesRelatedInstances", "PerformedProcedureStepStartDate",
    "PerformedProcedureStepStartTime", "BodyPartExamined",
)
_INSTANCE = (
    "SOPClassUID", "SOPInstanceUID", "InstanceAvailability", "InstanceNumber", "Rows",
    "Columns", "BitsAllocated", "NumberOfFrames",
)

DEFAULT_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "studies": _STUDY,
    "study-series": _SERIES,
    "study-instances": _SERIES + _INSTANCE,
    "series-instances": _INSTANCE,
    "all-series": _STUDY + _SERIES,
    "all-instances": _STUDY + _SERIES + _INSTANCE,
}
"""Attributes returned without ``includefield``, by resource (PS3.18 Table 10.6.3-3)."""

_LEVEL_OF = {"studies": Level.STUDY, "series": Level.SERIES, "instances": Level.IMAGE}
_CONTROL = frozenset({"limit", "offset", "fuzzymatching", "includefield", "token"})
_TAG = re.compile(r"^[0-9A-Fa-f]{8}$")
_MAX_LIMIT = 10_000
"""Results of one search at most (``limit`` or not); page through more with ``offset``."""
_MAX_OFFSET = 2**62
_BULK_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
_COMPUTED = frozenset({
    "ModalitiesInStudy", "SOPClassesInStudy", "NumberOfStudyRelatedSeries",
    "NumberOfStudyRelatedInstances", "NumberOfSeriesRelatedInstances",
})


def _attribute(name: str) -> tuple[str, int, str]:
    """(keyword, tag, VR) of a query parameter naming an attribute by keyword or tag."""
    if "." in name:
        raise QueryError(f"sequence matching ({name}) is not supported; match top-level attributes")
    if _TAG.match(name):
        tag = int(name, 16)
        keyword = keyword_for_tag(tag)
    else:
        found = tag_for_keyword(name)
        tag, keyword = (int(found), name) if found is not None else (0, "")
    if not keyword:
        raise QueryError(
            f"unknown query parameter {name!r}: use a DICOM keyword or tag (StudyDate, 00080020), "
            "or limit, offset, fuzzymatching, includefield"
        )
    # One VR where the dictionary leaves it open ("OB or OW", "US or SS"): DICOM JSON
    # carries exactly one.
    vr = dictionary_VR(tag).split(" or ")[0]
    return keyword, tag, vr


def _values(vr: str, text: str) -> tuple[str, ...]:
    parts = re.split(r"[\\,]", text) if vr == "UI" else text.split("\\")
    parts = [p.strip() for p in parts]
    if not any(parts) or parts == ["*"]:
        return ()
    return tuple(parts)


def _count(name: str, text: str) -> int:
    if not text.isdigit() or int(text) > _MAX_OFFSET:
        raise QueryError(f"{name} must be a whole number from 0 to {_MAX_OFFSET}")
    return int(text)


def parse_query(
    params: Sequence[tuple[str, str]], resource: str, fixed: dict[str, str]
) -> tuple[list[Key], int | None, int]:
    """Keys, limit and offset of a QIDO-RS request.

    Parameters
    ----------
    params : sequence of (name, value)
        The query parameters.
    resource : str
        A key of :data:`DEFAULT_ATTRIBUTES`.
    fixed : dict
        Keys fixed by the path (``StudyInstanceUID`` of ``/studies/{uid}/series``).

    Raises
    ------
    QueryError
        On unknown or repeated parameters and malformed values.
    """
    limit: int | None = None
    offset = 0
    fuzzy = False
    include: set[str] = set()
    include_all = False
    matching: dict[str, Key] = {}
    for name, value in params:
        if name == "limit":
            limit = min(_count(name, value), _MAX_LIMIT)
        elif name == "offset":
            offset = _count(name, value)
        elif name == "fuzzymatching":
            if value.lower() not in ("true", "false"):
                raise QueryError("fuzzymatching must be true or false")
            fuzzy = value.lower() == "true"
        elif name == "includefield":
            for item in filter(None, (v.strip() for v in value.split(","))):
                if item == "all":
                    include_all = True
                else:
                    include.add(_attribute(item)[0])
        elif name == "token":
            continue
        else:
            keyword, tag, vr = _attribute(name)
            if keyword in matching or keyword in fixed:
                raise QueryError(f"{keyword} is given more than once")
            if vr == "SQ":
                raise QueryError(f"{keyword} is a sequence; sequence matching is not supported")
            if vr in _BULK_VRS:
                raise QueryError(f"{keyword} holds binary data ({vr}): it cannot be matched; "
                                 "ask for it with includefield")
            matching[keyword] = Key(keyword, tag, vr, _values(vr, value), fuzzy=False)
    for keyword, value in fixed.items():
        tag = int(tag_for_keyword(keyword) or 0)
        matching[keyword] = Key(keyword, tag, "UI", (value,))
    if fuzzy:
        matching = {
            k: Key(v.keyword, v.tag, v.vr, v.values, fuzzy=v.vr == "PN")
            for k, v in matching.items()
        }
    wanted = list(DEFAULT_ATTRIBUTES[resource]) + sorted(include)
    if include_all:
        wanted += _all_attributes(resource)
    keys = list(matching.values())
    for keyword in dict.fromkeys(wanted):
        if keyword not in matching:
            tag = int(tag_for_keyword(keyword) or 0)
            keys.append(Key(keyword, tag, dictionary_VR(tag).split(" or ")[0], ()))
    return keys, limit, offset


def _all_attributes(resource: str) -> list[str]:
    from lake.query._index import _LEVEL_ATTRS

    level = _LEVEL_OF[resource.split("-")[-1]]
    return sorted(_LEVEL_ATTRS[level])


def _fill(result: dict[str, Any], level: Level, base: str) -> dict[str, Any]:
    def uid(tag: str) -> str:
        return str((result.get(tag) or {}).get("Value", [""])[0])

    if "00080056" in result:
        result["00080056"] = {"vr": "CS", "Value": ["ONLINE"]}
    result["00081190"] = {"vr": "UR", "Value": [retrieve_url(
        base,
        uid("0020000D"),
        uid("0020000E") if level is not Level.STUDY else None,
        uid("00080018") if level is Level.IMAGE else None,
    )]}
    return dict(sorted(result.items()))


def search(
    snapshot: Snapshot,
    resource: str,
    params: Sequence[tuple[str, str]],
    fixed: dict[str, str],
    base: str,
) -> tuple[list[dict[str, Any]], bool]:
    """Run one QIDO-RS search: DICOM JSON objects, one per match, and whether the server's
    maximum number of results cut the answer short (more can be asked for with ``offset``).

    Raises
    ------
    QueryError
        On a malformed query.
    """
    keys, limit, offset = parse_query(params, resource, fixed)
    level = _LEVEL_OF[resource.split("-")[-1]]
    # At most _MAX_LIMIT results, asked for or not: one more tells whether the answer is cut.
    most = _MAX_LIMIT if limit is None else limit
    found = snapshot.find_json(level, keys, limit=most + (most == _MAX_LIMIT), offset=offset)
    cut = len(found) > most
    return [_fill(result, level, base) for result in found[:most]], cut


def _endpoint(resource: str, fixed_names: tuple[str, ...]) -> Any:
    async def endpoint(request: Request, grant: Grant) -> Response:
        fixed = {name: request.path_params[name] for name in fixed_names}
        snapshot = await run_in_threadpool(request.app.state.views.snapshot, grant)
        results, cut = await run_in_threadpool(
            search,
            snapshot,
            resource,
            request.query_params.multi_items(),
            {_FIXED[k]: v for k, v in fixed.items()},
            base_url(request),
        )
        if fixed and not results:
            found = await run_in_threadpool(snapshot.locate, *[fixed[n] for n in fixed_names])
            if not found:  # the same answer whether absent or outside the caller's scope
                raise NotFoundError("not found")
        response = json_response(request, results, DICOM_JSON)
        if cut:  # PS3.18 8.3.4.4: the server limited the results
            response.headers["Warning"] = (
                '299 imaging-lake "There are additional results that can be requested"')
        return response

    endpoint.__name__ = f"qido_{resource.replace('-', '_')}"
    return endpoint


_FIXED = {"study": "StudyInstanceUID", "series": "SeriesInstanceUID"}


def qido_routes(prefix: str) -> list[Route]:
    """The QIDO-RS routes below ``prefix`` (``/dicomweb``)."""
    table = (
        ("/studies", "studies", ()),
        ("/series", "all-series", ()),
        ("/instances", "all-instances", ()),
        ("/studies/{study}/series", "study-series", ("study",)),
        ("/studies/{study}/instances", "study-instances", ("study",)),
        ("/studies/{study}/series/{series}/instances", "series-instances", ("study", "series")),
    )
    return [
        route(prefix + path, _endpoint(resource, fixed), Permission.READ, methods=("GET",))
        for path, resource, fixed in table
    ]
