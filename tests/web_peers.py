"""Helpers for the web tests: a small lake with cohorts and tokens, and a live server."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

import lake
from lake.access import create_token, mark_teaching_set
from lake.ingest import ingest
from lake.web import WebConfig, WebServer
from tests.series import write_ct_series

__all__ = ["WebLake", "build_web_lake", "serving"]


@dataclass
class WebLake:
    """A lake of three CT series in three cohorts, and a token per role and scope.

    ``a`` and ``b`` are de-identified with ``basic``; ``teach`` with ``teaching`` and
    marked a teaching set. ``uids[name]`` is (study, series, first instance).
    """

    lake: lake.Lake
    vault: Path
    uids: dict[str, tuple[str, str, str]] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)


def _uids(lk: lake.Lake, cohort: str) -> tuple[str, str, str]:
    members = lk.cohort(cohort).members
    row = lk.sql(
        "SELECT StudyInstanceUID, SeriesInstanceUID, SOPInstanceUID FROM instances "
        f"WHERE SOPInstanceUID = '{members[0].sop_uid}'"
    ).fetchall()[0]
    return (str(row[0]), str(row[1]), str(row[2]))


def build_web_lake(root: Path, slices: int = 4) -> WebLake:
    """Ingest three generated CT series and make the cohorts and tokens."""
    lk = lake.init(root / "lake", vault=root / "vault")
    secret = lk.secret(root / "vault")
    for name, profile, patient in (("a", "basic", "PAT-A"), ("b", "basic", "PAT-B"),
                                   ("teach", "teaching", "PAT-T")):
        folder = root / "in" / name
        write_ct_series(folder, slices, patient_id=patient)
        ingest(lk, [str(folder)], secret, profile=profile, scheduler="sync")
        lk.refresh()
        lk.create_cohort(
            name,
            "SELECT SeriesInstanceUID FROM instances WHERE SeriesInstanceUID NOT IN "
            "(SELECT unnest(series) FROM cohorts)",
        )
    mark_teaching_set(lk, "teach")
    web = WebLake(lk, root / "vault")
    for name in ("a", "b", "teach"):
        web.uids[name] = _uids(lk, name)
    web.tokens["steward"] = create_token(lk, "steward")[1]
    web.tokens["researcher"] = create_token(lk, "researcher")[1]
    web.tokens["researcher:a"] = create_token(lk, "researcher", cohorts=["a"])[1]
    web.tokens["student"] = create_token(lk, "student")[1]
    web.tokens["student:teach"] = create_token(lk, "student", cohorts=["teach"])[1]
    return web


@contextmanager
def serving(web: WebLake, **settings: object) -> Iterator[tuple[WebServer, httpx.Client]]:
    """A live server on a free loopback port, and an HTTP client for it."""
    config = WebConfig(port=0, **settings)  # type: ignore[arg-type]
    server = WebServer(web.lake, config, web.lake.secret(web.vault))
    server.start()
    try:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            yield server, client
    finally:
        server.stop()
