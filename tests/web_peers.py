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


def parts_of(response: httpx.Response) -> list[tuple[dict[str, str], bytes]]:
    """The parts of a ``multipart/related`` response: (headers, body)."""
    content_type = response.headers["content-type"]
    boundary = content_type.split("boundary=")[1].split(";")[0].strip('"')
    body = response.content
    out = []
    for chunk in body.split(b"--" + boundary.encode())[1:]:
        if chunk.startswith(b"--"):
            break
        head, _, rest = chunk.lstrip(b"\r\n").partition(b"\r\n\r\n")
        headers = {}
        for line in head.decode("ascii").split("\r\n"):
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers["content-length"]) if "content-length" in headers else len(rest) - 2
        out.append((headers, rest[:length]))
    return out


def dicomweb(server: WebServer, token: str) -> object:
    """A ``dicomweb_client.DICOMwebClient`` for ``server`` with ``token``."""
    from dicomweb_client import DICOMwebClient

    return DICOMwebClient(url=server.url + "/dicomweb",
                          headers={"Authorization": f"Bearer {token}"})
