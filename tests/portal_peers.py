"""Helpers for the portal tests: a lake with accounts and share links, signed-in clients."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from lake.access import add_user, create_share
from lake.ingest import ingest
from tests.series import ct_series
from tests.web_peers import WebLake, build_web_lake

__all__ = ["PLANTED", "PortalLake", "build_portal_lake", "csrf_of", "sign_in"]

PLANTED = '<script>alert("planted")</script> CHEST CT'
"""A SeriesDescription holding markup; the research profile keeps it (it names no one)."""

ACCOUNTS = {
    # name: (role, cohorts)
    "boss": ("steward", ()),
    "res": ("researcher", ()),
    "res-a": ("researcher", ("a",)),
    "stu": ("student", ()),
    "stu-t": ("student", ("teach",)),
}


@dataclass
class PortalLake:
    """The web tests' lake (cohorts a, b, teach and their tokens) plus portal accounts.

    ``xss`` is a cohort of one series whose SeriesDescription is :data:`PLANTED` (and whose
    PatientSex, PatientAge, BodyPartExamined and StudyDescription are F, 045Y, CHEST and
    CT THORAX).
    ``shares`` holds share-link tokens: ``student:teach`` and ``researcher:xss``.
    """

    web: WebLake
    passwords: dict[str, str] = field(default_factory=dict)
    shares: dict[str, str] = field(default_factory=dict)
    xss_series: str = ""

    @property
    def lake(self):  # type: ignore[no-untyped-def]
        return self.web.lake


def build_portal_lake(root: Path) -> PortalLake:
    """The lake of :func:`tests.web_peers.build_web_lake`, accounts, a planted series, shares."""
    web = build_web_lake(root, slices=3)
    lk = web.lake
    folder = root / "in" / "xss"
    folder.mkdir(parents=True)
    for i, ds in enumerate(ct_series(3, patient_id="PAT-X", patient_name="Doe^Xavier")):
        ds.SeriesDescription = PLANTED
        # What the research profile keeps and a set page shows (patient characteristics,
        # body part, descriptions that name no one).
        ds.PatientSex, ds.PatientAge, ds.BodyPartExamined = "F", "045Y", "CHEST"
        ds.StudyDescription = "CT THORAX"
        ds.save_as(folder / f"{i}.dcm", enforce_file_format=True)
    ingest(lk, [str(folder)], lk.secret(web.vault), profile="research", scheduler="sync")
    lk.refresh()
    lk.create_cohort(
        "xss", "SELECT SeriesInstanceUID FROM instances WHERE profile = 'research'"
    )
    built = PortalLake(web)
    built.xss_series = lk.cohort("xss").members[0].series_uid
    for name, (role, cohorts) in ACCOUNTS.items():
        password = f"{name}-secret-password"
        add_user(lk, name, role, password, cohorts=cohorts)
        built.passwords[name] = password
    built.shares["student:teach"] = create_share(lk, "teach", role="student",
                                                 created_by="tests")[1]
    built.shares["researcher:xss"] = create_share(lk, "xss", role="researcher",
                                                  created_by="tests")[1]
    return built


def csrf_of(html: str) -> str:
    """The CSRF token of the first form on a page."""
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found is not None, "no form on the page"
    return found.group(1)


def sign_in(base_url: str, name: str, password: str) -> httpx.Client:
    """A client signed in to the portal as ``name`` (redirects not followed)."""
    client = httpx.Client(base_url=base_url, timeout=60)
    form = client.get("/portal/signin")
    response = client.post("/portal/signin", data={
        "name": name, "password": password, "csrf": csrf_of(form.text), "next": "/portal/",
    })
    assert response.status_code == 303, (name, response.status_code, response.text[:500])
    return client
