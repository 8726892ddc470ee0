"""Researchers' pages: cohorts, the SQL console, exports in the background, their downloads."""

from __future__ import annotations

import re
from collections import Counter
from typing import TYPE_CHECKING, Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from lake._errors import ExportError, QueryError
from lake.access import (
    ROLE_PERMISSIONS,
    CohortView,
    Grant,
    Permission,
    event_for,
    is_teaching_material,
)
from lake.export import Cohort, create_cohort, list_cohorts, load_cohort
from lake.query import Level, identifier_from_filters, parse_identifier
from lake.web._errors import NotFoundError
from lake.web.portal._console import check_cohort_query, run_console
from lake.web.portal._exports import FORMATS, export_zip, servable, served_zip
from lake.web.portal._jobs import Job
from lake.web.portal._render import Column, checked_form, page, table_view
from lake.web.portal._sets import visible_sets

if TYPE_CHECKING:
    from lake.web.portal._portal import Portal

__all__ = ["owner_of"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_JOB = re.compile(r"^[0-9a-f]{16}$")
_SERIES_KEYS = ("StudyInstanceUID", "SeriesInstanceUID", "SeriesNumber", "Modality",
                "SeriesDescription", "BodyPartExamined", "NumberOfSeriesRelatedInstances")
DEFAULT_QUERY = (
    "SELECT SeriesInstanceUID, Modality, BodyPartExamined, SeriesDescription, instance_count\n"
    "FROM series\nWHERE Modality = 'CT'\nORDER BY instance_count DESC"
)


def _portal(request: Request) -> Portal:
    portal: Portal = request.app.state.portal
    return portal


def owner_of(grant: Grant) -> str:
    """``kind:id`` of the grant's principal (who owns the jobs it starts)."""
    principal = grant.principal
    return f"{principal.kind}:{principal.id}" if principal is not None else "anonymous:anonymous"


def _may_manage(grant: Grant) -> bool:
    principal = grant.principal
    return principal is not None and Permission.MANAGE in ROLE_PERMISSIONS[principal.role]


def _cohort_names(grant: Grant) -> set[str] | None:
    return None if grant.cohorts is None else {c.name for c in grant.cohorts}


def _cohort(portal: Portal, grant: Grant, name: str) -> tuple[CohortView, Cohort]:
    allowed = _cohort_names(grant)
    if not _NAME.match(name) or (allowed is not None and name not in allowed):
        raise NotFoundError("not found")
    try:
        cohort = load_cohort(portal.lake, name)
    except ExportError:
        raise NotFoundError("not found") from None
    for view in grant.cohorts or ():
        if view.name == name:
            return view, cohort
    return CohortView(name, cohort.catalog_version,
                      frozenset(m.sop_uid for m in cohort.members)), cohort


def _series_rows(portal: Portal, grant: Grant, view: CohortView) -> list[dict[str, Any]]:
    snapshot = portal.views.snapshot(Grant(grant.principal, Permission.READ, (view,)))
    level, keys = parse_identifier(
        identifier_from_filters(list(_SERIES_KEYS), Level.SERIES), [Level.SERIES]
    )
    rows = []
    for ds in snapshot.find(level, keys):
        rows.append({
            "study": str(ds.StudyInstanceUID), "series": str(ds.SeriesInstanceUID),
            "number": ds.get("SeriesNumber"), "modality": ds.get("Modality") or None,
            "description": ds.get("SeriesDescription") or None,
            "body_part": ds.get("BodyPartExamined") or None,
            "images": int(ds.get("NumberOfSeriesRelatedInstances") or 0),
        })
    return rows


# --- cohorts -------------------------------------------------------------------------


async def cohorts_page(request: Request, grant: Grant) -> Response:
    """The cohorts this researcher may see."""
    portal = _portal(request)
    allowed = _cohort_names(grant)
    summaries = await run_in_threadpool(list_cohorts, portal.lake)
    rows = [
        {"name": s.name, "description": s.description, "series": s.series_count,
         "instances": s.instance_count, "version": s.catalog_version, "created": s.created_at,
         "size": s.pixel_bytes, "profiles": ", ".join(s.profiles)}
        for s in summaries if allowed is None or s.name in allowed
    ]
    table = table_view(request, rows, [
        Column("name", "Cohort"), Column("description", "Description"),
        Column("series", "Series"), Column("instances", "Instances"),
        Column("size", "Pixel data"), Column("version", "Catalog version"),
        Column("created", "Saved"), Column("profiles", "Profiles"),
    ], default_sort="created", descending=True)
    return page(request, grant, "cohorts.html", title="Cohorts", section="cohorts", table=table,
                may_create=grant.cohorts is None, lake_root=portal.lake.root)


async def cohort_page(request: Request, grant: Grant) -> Response:
    """One cohort: query, catalog version, members, counts, series, export."""
    portal = _portal(request)
    name = request.path_params["name"]
    view, cohort = await run_in_threadpool(_cohort, portal, grant, name)
    rows = await run_in_threadpool(_series_rows, portal, grant, view)
    by_modality: Counter[str] = Counter()
    images: Counter[str] = Counter()
    for row in rows:
        by_modality[row["modality"] or "-"] += 1
        images[row["modality"] or "-"] += row["images"]
    counts = [{"modality": m, "series": n, "instances": images[m]}
              for m, n in sorted(by_modality.items())]
    table = table_view(request, rows, [
        Column("modality", "Modality"), Column("body_part", "Body part"),
        Column("description", "Series description"), Column("number", "Number"),
        Column("images", "Images"), Column("series", "Series UID"),
        Column("study", "Study", sortable=False),
    ], default_sort="modality")
    formats = {k: v for k, v in FORMATS.items()
               if k != "teaching" or is_teaching_material(cohort)}
    return page(request, grant, "cohort.html", title=f"Cohort {name}", section="cohorts",
                cohort=cohort, counts=counts, table=table, formats=formats,
                studies=len({r["study"] for r in rows}), lake_root=portal.lake.root)


# --- the SQL console -------------------------------------------------------------------


async def console_page(request: Request, grant: Grant) -> Response:
    """The console's form."""
    return page(request, grant, "console.html", title="SQL console", section="console",
                sql=DEFAULT_QUERY, result=None, error=None, may_create=grant.cohorts is None,
                lake_root=_portal(request).lake.root)


async def console_run(request: Request, grant: Grant) -> Response:
    """Run the console's query (one SELECT, time and row limits, no files)."""
    portal = _portal(request)
    form = await checked_form(request, grant)
    sql = str(form.get("sql") or "")[:20_000]
    result, error = None, None
    try:
        result = await run_in_threadpool(run_console, portal.lake, grant, sql)
    except QueryError as exc:
        error = str(exc)
    portal.record(event_for(grant.principal, "query_run", outcome="ok" if error is None
                            else "refused", detail="console"))
    return page(request, grant, "console.html", title="SQL console", section="console",
                sql=sql, result=result, error=error, may_create=grant.cohorts is None,
                lake_root=portal.lake.root, status=200 if error is None else 400)


async def cohort_create(request: Request, grant: Grant) -> Response:
    """Save the console's query as a cohort."""
    portal = _portal(request)
    form = await checked_form(request, grant)
    sql = str(form.get("sql") or "")[:20_000]
    name = str(form.get("name") or "").strip()
    description = str(form.get("description") or "").strip()[:500]
    if grant.cohorts is not None:
        raise QueryError("a cohort is made from the whole catalog: ask a steward for an "
                         "account that sees the whole lake")

    def make() -> Cohort:
        version = check_cohort_query(portal.lake, grant, sql)
        with portal.catalog_lock:
            return create_cohort(portal.lake, name, sql, description=description, as_of=version)

    try:
        cohort = await run_in_threadpool(make)
    except (QueryError, ExportError) as exc:
        return page(request, grant, "console.html", title="SQL console", section="console",
                    sql=sql, result=None, error=str(exc), may_create=True,
                    lake_root=portal.lake.root, status=400, name=name)
    portal.record(event_for(grant.principal, "cohort_created", resource_kind="cohort",
                            resource=cohort.name))
    return RedirectResponse(f"/portal/cohorts/{cohort.name}", status_code=303)


# --- exports and jobs --------------------------------------------------------------------


async def export_start(request: Request, grant: Grant) -> Response:
    """Start an export of a cohort in the background; show its progress page."""
    portal = _portal(request)
    form = await checked_form(request, grant)
    name = request.path_params["name"]
    kind = str(form.get("format") or "")
    _, cohort = await run_in_threadpool(_cohort, portal, grant, name)
    if kind not in FORMATS or (kind == "teaching" and not is_teaching_material(cohort)):
        raise ExportError(f"no export format {kind!r} here; choose one of the listed formats")

    def work(job: Job, progress: Any) -> Any:
        return export_zip(portal.lake, cohort, kind, job.folder, progress)

    job = portal.jobs.submit(kind, name, owner_of(grant), work, label=f"{name} ({kind})")
    portal.record(event_for(grant.principal, "export_started", resource_kind="export",
                            resource=job.job_id, detail=f"{kind} of {name}"))
    return RedirectResponse(f"/portal/jobs/{job.job_id}", status_code=303)


async def exports_page(request: Request, grant: Grant) -> Response:
    """This user's exports (a steward's too)."""
    portal = _portal(request)
    jobs = portal.jobs.of(owner_of(grant))
    return page(request, grant, "exports.html", title="Exports", section="exports", jobs=jobs,
                lake_root=portal.lake.root)


def _job(request: Request, grant: Grant) -> Job:
    portal = _portal(request)
    job_id = request.path_params["job"]
    job = portal.jobs.get(job_id) if _JOB.match(job_id) else None
    if job is None:
        raise NotFoundError("not found")
    if job.owner == owner_of(grant) or _may_manage(grant):
        return job
    if job.owner is None and job.cohort in visible_sets(portal, grant):
        return job
    raise NotFoundError("not found")


async def job_page(request: Request, grant: Grant) -> Response:
    """A job's progress (updated by the page's script) and, when done, its download."""
    job = await run_in_threadpool(_job, request, grant)
    return page(request, grant, "job.html", title=f"Export {job.label}", section="exports",
                job=job)


async def job_status(request: Request, grant: Grant) -> Response:
    """A job's progress as JSON (polled by the job page's script)."""
    job = await run_in_threadpool(_job, request, grant)
    ready = job.result is not None and await run_in_threadpool(servable, _portal(request).lake,
                                                                job)
    return JSONResponse(job.as_dict(ready=ready))


async def job_download(request: Request, grant: Grant) -> Response:
    """A finished job's zip."""
    job = await run_in_threadpool(_job, request, grant)
    response = await run_in_threadpool(served_zip, _portal(request).lake, job)
    if response is None:
        raise NotFoundError("not found")
    try:
        _portal(request).record(event_for(grant.principal, "download", resource_kind="export",
                                          resource=job.job_id,
                                          detail=f"{job.kind} of {job.cohort}"))
    except BaseException:
        response.close()
        raise
    return response
