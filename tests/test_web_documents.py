"""Documents over DICOMweb (issue 13.4): an Encapsulated PDF as application/pdf bulk data, a
video as MP4, with the BulkDataURIs in /metadata that OHIF fetches.

The documents are ingested beside a CT study (``lake ingest`` wraps them); what the server
returns must equal what ``lake export documents`` writes from the same instances.
"""

from __future__ import annotations

import io
import shutil
from collections.abc import Iterator
from typing import Any

import av
import httpx
import pytest

import lake
from lake.access import create_token
from lake.ingest import ingest
from lake.web import WebServer
from tests.documents_corpus import pdf_report, video
from tests.series import write_ct_series
from tests.web_peers import WebLake, dicomweb, parts_of, serving

pytestmark = pytest.mark.skipif(shutil.which("tesseract") is None,
                                reason="tesseract not installed (video frames are OCR'd)")

_PDF_CLASS = "1.2.840.10008.5.1.4.1.1.104.1"


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> WebLake:
    root = tmp_path_factory.mktemp("web-documents")
    lk = lake.init(root / "lake", vault=root / "vault")
    folder = root / "in" / "visit"
    write_ct_series(folder, 2, patient_id="DOC-PATIENT")
    (folder / "report.pdf").write_bytes(pdf_report(["CT chest", "no finding"] * 40))
    (folder / "note.pdf").write_bytes(pdf_report(["CT"]))  # small: stored inline in header_json
    (folder / "clip.avi").write_bytes(video(seconds=2, fps=10))
    summary = ingest(lk, [str(folder)], lk.secret(root / "vault"), profile="research",
                     scheduler="sync")
    assert summary.ingested == 5, summary
    lk.refresh()
    built = WebLake(lk, root / "vault")
    built.tokens["steward"] = create_token(lk, "steward")[1]
    return built


@pytest.fixture(scope="module")
def live(web: WebLake) -> Iterator[tuple[WebServer, httpx.Client]]:
    with serving(web) as pair:
        yield pair


@pytest.fixture(scope="module")
def exported(web: WebLake, tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """``lake export documents`` of every document: file bytes by extension and size order."""
    from lake.export import create_cohort, export_documents

    create_cohort(web.lake, "docs", "SELECT SeriesInstanceUID FROM instances")
    out = tmp_path_factory.mktemp("exported")
    export_documents(web.lake, "docs", out)
    return {p.name: p.read_bytes() for p in out.rglob("*") if p.suffix in (".pdf", ".mp4")}


def _auth(web: WebLake) -> dict[str, str]:
    return {"Authorization": f"Bearer {web.tokens['steward']}"}


def _documents(web: WebLake) -> list[tuple[str, str, str, str]]:
    rows = web.lake.sql(
        "SELECT StudyInstanceUID, SeriesInstanceUID, SOPInstanceUID, document_mime_type "
        "FROM instances WHERE document_mime_type IN ('application/pdf', 'video/mp4') "
        "ORDER BY document_mime_type, SOPInstanceUID").fetchall()
    return [(str(a), str(b), str(c), str(d)) for a, b, c, d in rows]


def test_metadata_names_the_documents_bulk_data(
    web: WebLake, live: tuple[WebServer, httpx.Client]
) -> None:
    docs = _documents(web)
    assert sorted(d[3] for d in docs) == ["application/pdf", "application/pdf", "video/mp4"]
    for study, series, sop, mime in docs:
        meta = live[1].get(f"/dicomweb/studies/{study}/series/{series}/instances/{sop}/metadata",
                           headers=_auth(web)).json()[0]
        url = f"{live[0].url}/dicomweb/studies/{study}/series/{series}/instances/{sop}/bulkdata/"
        if mime == "application/pdf":
            assert meta["00080016"]["Value"] == [_PDF_CLASS]
            assert meta["00420011"] == {"vr": "OB", "BulkDataURI": url + "00420011"}
        else:
            assert meta["7FE00010"]["BulkDataURI"] == url + "7FE00010"


def test_pdf_is_served_as_application_pdf(
    web: WebLake, live: tuple[WebServer, httpx.Client], exported: dict[str, bytes]
) -> None:
    pdfs = {data for name, data in exported.items() if name.endswith(".pdf")}
    assert len(pdfs) == 2
    served = set()
    for study, series, sop, mime in _documents(web):
        if mime != "application/pdf":
            continue
        base = f"/dicomweb/studies/{study}/series/{series}/instances/{sop}"
        for accept in ("application/pdf", "*/*"):
            single = live[1].get(f"{base}/bulkdata/00420011",
                                 headers={**_auth(web), "Accept": accept})
            assert single.status_code == 200
            assert single.headers["content-type"] == "application/pdf"
            assert single.content.startswith(b"%PDF-") and single.content.rstrip().endswith(
                b"%%EOF")  # trimmed to EncapsulatedDocumentLength: no padding byte
            served.add(single.content)
        rendered = live[1].get(f"{base}/rendered", headers={**_auth(web),
                                                             "Accept": "application/pdf"})
        assert rendered.headers["content-type"] == "application/pdf"
        assert rendered.content == single.content
        octets = live[1].get(f"{base}/bulkdata/00420011", headers={
            **_auth(web), "Accept": "application/octet-stream"})
        assert octets.headers["content-type"] == "application/octet-stream"
        assert octets.content[: len(single.content)] == single.content
    assert served == pdfs  # byte for byte what `lake export documents` writes


def test_documents_with_dicomweb_client(web: WebLake, live: tuple[WebServer, httpx.Client],
                                        exported: dict[str, bytes]) -> None:
    """dicomweb-client reads each document as its rendering (application/pdf, video/mp4) and
    the PDF's element as bulk data (octets, the stored value: the PDF and its padding)."""
    client: Any = dicomweb(live[0], web.tokens["steward"])
    for study, series, sop, mime in _documents(web):
        rendered = client.retrieve_instance_rendered(study, series, sop, media_types=(mime,))
        assert rendered in exported.values()
        if mime == "application/pdf":
            meta = client.retrieve_instance_metadata(study, series, sop)
            (value,) = client.retrieve_bulkdata(meta["00420011"]["BulkDataURI"])
            assert value[: len(rendered)] == rendered and len(value) - len(rendered) <= 1


def test_video_is_served_as_mp4_with_ranges(
    web: WebLake, live: tuple[WebServer, httpx.Client], exported: dict[str, bytes]
) -> None:
    ((study, series, sop, _),) = [d for d in _documents(web) if d[3] == "video/mp4"]
    base = f"/dicomweb/studies/{study}/series/{series}/instances/{sop}"
    mp4 = live[1].get(f"{base}/bulkdata/7FE00010", headers={**_auth(web), "Accept": "video/mp4"})
    assert mp4.status_code == 200 and mp4.headers["content-type"] == "video/mp4"
    assert [data for name, data in exported.items() if name.endswith(".mp4")] == [mp4.content]
    with av.open(io.BytesIO(mp4.content)) as container:
        assert sum(1 for _ in container.decode(video=0)) == 20
    # What OHIF's <video> element asks: the instance's /rendered, any type, by byte ranges.
    whole = live[1].get(f"{base}/rendered", headers={**_auth(web), "Accept": "*/*"})
    assert whole.headers["content-type"] == "video/mp4" and whole.content == mp4.content
    assert whole.headers["accept-ranges"] == "bytes"
    part = live[1].get(f"{base}/rendered", headers={**_auth(web), "Range": "bytes=100-199"})
    assert part.status_code == 206 and part.content == mp4.content[100:200]
    assert part.headers["content-range"] == f"bytes 100-199/{len(mp4.content)}"
    tail = live[1].get(f"{base}/rendered", headers={**_auth(web), "Range": "bytes=-10"})
    assert tail.status_code == 206 and tail.content == mp4.content[-10:]
    beyond = live[1].get(f"{base}/rendered",
                         headers={**_auth(web), "Range": f"bytes={len(mp4.content)}-"})
    assert beyond.status_code == 416
    multipart = live[1].get(f"{base}/bulkdata/7FE00010", headers={
        **_auth(web), "Accept": 'multipart/related; type="video/mp4"'})
    assert parts_of(multipart) == [({"content-type": "video/mp4",
                                     "content-length": str(len(mp4.content))}, mp4.content)]
    stored = live[1].get(f"{base}/bulkdata/7FE00010", headers={
        **_auth(web), "Accept": "application/octet-stream"})
    assert stored.headers["content-type"] == "application/octet-stream"  # the stored stream


def test_documents_are_scoped_like_everything_else(
    web: WebLake, live: tuple[WebServer, httpx.Client]
) -> None:
    from lake.export import create_cohort

    ct = web.lake.sql("SELECT SeriesInstanceUID FROM instances WHERE Modality = 'CT' "
                      "LIMIT 1").fetchall()[0][0]
    create_cohort(web.lake, "ct-only",
                  f"SELECT SeriesInstanceUID FROM instances WHERE SeriesInstanceUID = '{ct}'")
    token = create_token(web.lake, "researcher", cohorts=["ct-only"])[1]
    for study, series, sop, _ in _documents(web):
        base = f"/dicomweb/studies/{study}/series/{series}/instances/{sop}"
        for path in ("/bulkdata/00420011", "/bulkdata/7FE00010", "/rendered"):
            denied = live[1].get(base + path, headers={"Authorization": f"Bearer {token}"})
            assert denied.status_code == 404
