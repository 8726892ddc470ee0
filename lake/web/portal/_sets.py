"""Students' pages (and share links'): teaching sets as cases, thumbnails, viewer, downloads.

A set is a saved cohort the grant may see as a whole: a teaching set (students, and
anyone who sees it), or the one cohort a share link opens. Its cases are numbered
exactly as in the teaching-set zip (``case-NNN``, in the order of the pseudonymous
patient labels), so "case 3" on the page is ``case-003`` in the download. Pages show
only what the lake holds after de-identification: modality, body part, the retained
patient characteristics and the cleaned descriptions; never a patient identifier.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from lake._errors import ExportError
from lake.access import CohortView, Grant, Permission, event_for, is_teaching_material
from lake.export import Cohort, load_cohort
from lake.export._runner import patient_label
from lake.query import Level, identifier_from_filters, parse_identifier
from lake.web._errors import NotFoundError
from lake.web.portal._exports import export_zip, served_zip
from lake.web.portal._jobs import Job
from lake.web.portal._render import page

if TYPE_CHECKING:
    from lake.web.portal._portal import Portal

__all__ = ["SetCase", "set_cases", "visible_sets"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_SERIES_KEYS = (
    "PatientID", "PatientSex", "PatientAge", "PatientWeight", "PatientSize",
    "StudyInstanceUID", "StudyDescription", "SeriesInstanceUID", "SeriesNumber", "Modality",
    "SeriesDescription", "BodyPartExamined", "NumberOfSeriesRelatedInstances",
)


def _portal(request: Request) -> Portal:
    portal: Portal = request.app.state.portal
    return portal


def visible_sets(portal: Portal, grant: Grant) -> list[str]:
    """The sets ``grant`` may open: its share link's cohort, or the teaching sets it sees."""
    from lake.access import teaching_sets

    principal = grant.principal
    if principal is not None and principal.kind == "share":
        return sorted(c.name for c in grant.cohorts or ())
    teaching = teaching_sets(portal.lake)
    if grant.cohorts is None:
        return teaching
    named = {c.name for c in grant.cohorts}
    return [n for n in teaching if n in named]


def _view(portal: Portal, grant: Grant, name: str) -> tuple[CohortView, Cohort]:
    if not _NAME.match(name) or name not in visible_sets(portal, grant):
        raise NotFoundError("not found")
    try:
        cohort = load_cohort(portal.lake, name)
    except ExportError:
        raise NotFoundError("not found") from None
    for view in grant.cohorts or ():
        if view.name == name:
            return view, cohort
    members = frozenset(m.sop_uid for m in cohort.members)
    return CohortView(name, cohort.catalog_version, members), cohort


@dataclass
class SetCase:
    """One case (a pseudonymous patient) of a set, numbered as in the teaching zip."""

    number: int
    sex: str | None
    age: str | None
    weight: float | None
    size: float | None
    series: list[dict[str, Any]] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"case-{self.number:03d}"

    @property
    def studies(self) -> list[str]:
        return sorted({s["study"] for s in self.series})


def _value(ds: Any, keyword: str) -> Any:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    return value


def set_cases(portal: Portal, grant: Grant, view: CohortView) -> list[SetCase]:
    """The cases of a set, read from its frozen members (what DICOMweb serves for it)."""
    scoped = Grant(grant.principal, Permission.READ, (view,))
    snapshot = portal.views.snapshot(scoped)
    level, keys = parse_identifier(
        identifier_from_filters(list(_SERIES_KEYS), Level.SERIES), [Level.SERIES]
    )
    found = snapshot.find(level, keys)
    by_patient: dict[str, list[Any]] = defaultdict(list)
    for ds in found:
        by_patient[patient_label(_value(ds, "PatientID"))].append(ds)
    cases = []
    for number, label in enumerate(sorted(by_patient), start=1):
        rows = by_patient[label]
        first = rows[0]
        case = SetCase(number, _value(first, "PatientSex"), _value(first, "PatientAge"),
                       _value(first, "PatientWeight"), _value(first, "PatientSize"))
        for ds in rows:
            case.series.append({
                "study": str(ds.StudyInstanceUID),
                "series": str(ds.SeriesInstanceUID),
                "number": _value(ds, "SeriesNumber"),
                "modality": _value(ds, "Modality"),
                "body_part": _value(ds, "BodyPartExamined"),
                "description": _value(ds, "SeriesDescription"),
                "study_description": _value(ds, "StudyDescription"),
                "images": _value(ds, "NumberOfSeriesRelatedInstances"),
            })
        case.series.sort(key=lambda s: (s["study"], s["number"] is None, s["number"] or 0,
                                        s["series"]))
        cases.append(case)
    return cases


async def sets_page(request: Request, grant: Grant) -> Response:
    """The sets this visitor may open."""
    portal = _portal(request)
    names = await run_in_threadpool(visible_sets, portal, grant)
    from lake.export import list_cohorts

    summaries = {s.name: s for s in await run_in_threadpool(list_cohorts, portal.lake)}
    rows = [summaries[n] for n in names if n in summaries]
    return page(request, grant, "sets.html", title="Teaching sets", section="teaching",
                sets=rows)


async def set_page(request: Request, grant: Grant) -> Response:
    """One set: its cases with thumbnails, viewer links and downloads."""
    portal = _portal(request)
    name = request.path_params["name"]
    view, cohort = await run_in_threadpool(_view, portal, grant, name)
    cases = await run_in_threadpool(set_cases, portal, grant, view)
    return page(request, grant, "set.html", title=f"Teaching set {name}", section="teaching",
                cohort=cohort, cases=cases, teaching=is_teaching_material(cohort))


def _download_job(portal: Portal, set_name: str, cohort: Cohort, key: str) -> Job:
    """The shared job packing ``cohort`` (a set, or one case of it) for download."""
    kind = "teaching" if is_teaching_material(cohort) else "dicom"

    def work(job: Job, progress: Any) -> Any:
        return export_zip(portal.lake, cohort, kind, job.folder, progress)

    return portal.jobs.submit(kind, set_name, None, work, label=cohort.label, shared_key=key)


async def _deliver(request: Request, grant: Grant, job: Job, resource_kind: str,
                   resource: str) -> Response:
    """The zip when it is ready; otherwise the job's progress page."""
    portal = _portal(request)
    if job.state == "done":
        response = await run_in_threadpool(served_zip, portal.lake, job)
        if response is not None:
            try:
                portal.record(event_for(grant.principal, "download",
                                        resource_kind=resource_kind, resource=resource,
                                        detail=job.kind))
            except BaseException:
                response.close()
                raise
            return response
    return RedirectResponse(f"/portal/jobs/{job.job_id}", status_code=303)


async def set_download(request: Request, grant: Grant) -> Response:
    """The whole set as one zip (built once per set version, then served to everyone)."""
    portal = _portal(request)
    name = request.path_params["name"]
    _, cohort = await run_in_threadpool(_view, portal, grant, name)
    key = f"set:{name}:{cohort.catalog_version}:{len(cohort.members)}"
    job = _download_job(portal, name, cohort, key)
    return await _deliver(request, grant, job, "teaching_set", name)


async def case_download(request: Request, grant: Grant) -> Response:
    """One case of a set as a zip."""
    portal = _portal(request)
    name = request.path_params["name"]
    number = int(request.path_params["case"])
    view, cohort = await run_in_threadpool(_view, portal, grant, name)
    cases = await run_in_threadpool(set_cases, portal, grant, view)
    if not 1 <= number <= len(cases):
        raise NotFoundError("not found")
    series = {s["series"] for s in cases[number - 1].series}
    label = f"{name}-case-{number:03d}"
    subset = Cohort(
        name=label, query=cohort.query, catalog_version=cohort.catalog_version,
        members=tuple(m for m in cohort.members if m.series_uid in series),
        profiles=cohort.profiles, description=cohort.description,
        created_at=cohort.created_at, lake_version=cohort.lake_version,
    )
    key = f"case:{name}:{cohort.catalog_version}:{number}:{len(subset.members)}"
    job = _download_job(portal, name, subset, key)
    return await _deliver(request, grant, job, "case", label)
