"""STOW-RS: stored exactly like ``lake ingest``, durable, the PS3.18 store response, limits.

And the planted-identifier corpus stored over STOW-RS leaves no token in anything the server
returns or logs.
"""

from __future__ import annotations

import io
import json
import logging
import multiprocessing
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom import dcmread

import lake
from lake.access import create_token
from lake.ingest import Ingestor
from lake.web import WebServer
from lake.web._multipart import MalformedMultipartError, MultipartReader
from tests.deid_corpus import UID_ROOT, expected_absent, write_corpus
from tests.series import write_ct_series
from tests.web_peers import WebLake, build_web_lake, dicomweb, parts_of, serving

DICOM_MULTIPART = 'multipart/related; type="application/dicom"; boundary=XyZ'


def _body(*parts: bytes, boundary: str = "XyZ", close: bool = True) -> bytes:
    out = b""
    for part in parts:
        out += f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + part + b"\r\n"
    return out + (f"--{boundary}--\r\n".encode() if close else b"")


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> WebLake:
    return build_web_lake(tmp_path_factory.mktemp("stow"), slices=2)


@pytest.fixture(scope="module")
def live(web: WebLake) -> Iterator[tuple[WebServer, httpx.Client]]:
    # No background commit within a test: what a read sees right after a STOW-RS response,
    # the read itself committed (lake.web._guard.read_your_writes).
    with serving(web, commit_interval=3600) as pair:
        yield pair


@pytest.fixture
def files(tmp_path: Path) -> list[bytes]:
    folder = tmp_path / "ct"
    write_ct_series(folder, 3, patient_id="STOW-PATIENT", patient_name="Stow^Person")
    return [p.read_bytes() for p in sorted(folder.glob("*.dcm"))]


def _steward(web: WebLake) -> dict[str, str]:
    return {"Authorization": f"Bearer {web.tokens['steward']}"}


def _read_through(live: tuple[WebServer, httpx.Client], web: WebLake) -> None:
    """A read through the server: it commits what STOW-RS stored before it answers."""
    assert live[1].get("/dicomweb/studies?limit=1", headers=_steward(web)).status_code == 200


def _post(live: tuple[WebServer, httpx.Client], web: WebLake, body: bytes, path: str = "",
          content_type: str = DICOM_MULTIPART) -> httpx.Response:
    return live[1].post("/dicomweb/studies" + path, content=body,
                        headers={**_steward(web), "Content-Type": content_type})


def test_round_trip_with_dicomweb_client(web: WebLake, live: tuple[WebServer, httpx.Client],
                                         files: list[bytes], tmp_path: Path) -> None:
    client: Any = dicomweb(live[0], web.tokens["steward"])
    response = client.store_instances([dcmread(io.BytesIO(f)) for f in files])
    refs = response.ReferencedSOPSequence
    assert len(refs) == 3 and "FailedSOPSequence" not in response
    sops = {str(r.ReferencedSOPInstanceUID) for r in refs}
    originals = {str(dcmread(io.BytesIO(f)).SOPInstanceUID) for f in files}
    assert not sops & originals  # the lake's UIDs, never the sender's
    study = response.RetrieveURL.rsplit("/", 1)[-1]
    # Searchable right away through the same server (the search commits what the response
    # acknowledged first: no background commit in this module), by the de-identified UID.
    found = client.search_for_instances(study_instance_uid=study)
    assert {i["00080018"]["Value"][0] for i in found} == sops
    web.lake.refresh()
    out = tmp_path / "export"
    web.lake.export_dicom(f"SELECT SeriesInstanceUID FROM instances WHERE StudyInstanceUID = "
                          f"'{study}'", out, scheduler="sync")
    exported = {str(dcmread(p).SOPInstanceUID): p.read_bytes() for p in out.rglob("*.dcm")}
    for ref in refs:
        served = live[1].get(ref.RetrieveURL, headers={
            **_steward(web), "Accept": 'multipart/related; type="application/dicom"; '
                                       "transfer-syntax=*"})
        ((_, body),) = parts_of(served)
        assert body == exported[str(ref.ReferencedSOPInstanceUID)]
    # De-identified exactly as 'lake ingest' does (same profile, same keys).
    ingestor = Ingestor(web.lake, web.lake.secret(web.vault))
    for data in files:
        row = ingestor.process(data).row  # type: ignore[union-attr]
        stored = web.lake.sql("SELECT header_dicom FROM instances WHERE SOPInstanceUID = "
                              f"'{row['SOPInstanceUID']}'").fetchall()
        assert stored[0][0] == row["header_dicom"]
    # Storing again is idempotent: same UIDs, nothing new.
    again = client.store_instances([dcmread(io.BytesIO(f)) for f in files])
    assert {str(r.ReferencedSOPInstanceUID) for r in again.ReferencedSOPSequence} == sops
    _read_through(live, web)
    web.lake.refresh()
    count = web.lake.sql(f"SELECT count(*) FROM instances WHERE StudyInstanceUID = '{study}'")
    assert count.fetchall()[0][0] == 3


def test_partial_failure_is_202_with_phi_free_reasons(
    web: WebLake, live: tuple[WebServer, httpx.Client], files: list[bytes]
) -> None:
    before = web.lake.sql("SELECT count(*) FROM quarantine").fetchall()[0][0]
    response = _post(live, web, _body(files[0], b"not DICOM at all" * 10))
    assert response.status_code == 202
    body = response.json()
    assert len(body["00081199"]["Value"]) == 1
    (failed,) = body["00081198"]["Value"]
    assert failed["00081197"]["Value"] == [0xC000]
    assert "STOW" not in response.text and "Stow" not in response.text
    _read_through(live, web)
    web.lake.refresh()
    assert web.lake.sql("SELECT count(*) FROM quarantine").fetchall()[0][0] == before + 1


def test_all_failed_is_409(web: WebLake, live: tuple[WebServer, httpx.Client]) -> None:
    response = _post(live, web, _body(b"\0" * 200, b""))
    assert response.status_code == 409
    assert len(response.json()["00081198"]["Value"]) == 2


def test_refused_by_profile(web: WebLake, live: tuple[WebServer, httpx.Client],
                            files: list[bytes]) -> None:
    ds = dcmread(io.BytesIO(files[0]))
    ds.BurnedInAnnotation = "YES"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = UID_ROOT + "77.1"
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    response = _post(live, web, _body(out.getvalue()))
    assert response.status_code == 409
    (failed,) = response.json()["00081198"]["Value"]
    assert failed["00081197"]["Value"] == [0xC001]
    engine = Ingestor(web.lake, web.lake.secret(web.vault)).context.engine
    assert failed["00081155"]["Value"] == [engine.uid(UID_ROOT + "77.1")]  # never the sender's
    assert UID_ROOT not in response.text


def test_a_sop_class_that_is_no_uid_is_refused_and_never_echoed(
    web: WebLake, live: tuple[WebServer, httpx.Client], files: list[bytes]
) -> None:
    """Red-team finding 3: ``1.2.840.10008.5.1.4.1.1.2^TKNSMITH`` was stored and echoed in
    ReferencedSOPSequence / FailedSOPSequence."""
    import warnings

    from pydicom import config
    from pydicom.dataelem import DataElement

    ds = dcmread(io.BytesIO(files[0]))
    value = "1.2.840.10008.5.1.4.1.1.2^TKNSMITH"
    ds["SOPClassUID"] = DataElement(0x00080016, "UI", value, validation_mode=config.IGNORE)
    ds.file_meta["MediaStorageSOPClassUID"] = DataElement(0x00020002, "UI", value,
                                                          validation_mode=config.IGNORE)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = UID_ROOT + "78.1"
    out = io.BytesIO()
    with warnings.catch_warnings():  # pydicom's writer warns, quoting the value
        warnings.simplefilter("ignore")
        ds.save_as(out, enforce_file_format=True)
    response = _post(live, web, _body(out.getvalue()))
    assert response.status_code == 409
    (failed,) = response.json()["00081198"]["Value"]
    assert "00081150" not in failed or not failed["00081150"].get("Value")
    assert "TKN" not in response.text


def test_study_in_the_path_must_match(web: WebLake, live: tuple[WebServer, httpx.Client],
                                      files: list[bytes]) -> None:
    original = str(dcmread(io.BytesIO(files[0])).StudyInstanceUID)
    assert _post(live, web, _body(files[0]), path="/1.2.3.4").status_code == 409
    assert _post(live, web, _body(files[0]), path=f"/{original}").status_code == 200


@pytest.mark.parametrize("workers", [0, 2])
def test_deidentified_alike_in_worker_processes_or_not(web: WebLake, tmp_path: Path,
                                                     workers: int) -> None:
    """``workers`` processes (the default, 2) or the server's own threads (0): each stored
    instance is what ``lake ingest`` makes of it, committed once a read asks."""
    folder = tmp_path / "ct"
    write_ct_series(folder, 4, patient_id=f"STOW-W{workers}", patient_name="Stow^Workers")
    files = [p.read_bytes() for p in sorted(folder.glob("*.dcm"))]
    before = set(multiprocessing.active_children())
    with serving(web, workers=workers) as live:
        spawned = set(multiprocessing.active_children()) - before
        assert len(spawned) == workers and all(p.is_alive() for p in spawned)
        response = _post(live, web, _body(*files))
        assert response.status_code == 200, response.text
        sops = {item["00081155"]["Value"][0] for item in response.json()["00081199"]["Value"]}
        _read_through(live, web)  # commits what the response acknowledged
        web.lake.refresh()
        ingestor = Ingestor(web.lake, web.lake.secret(web.vault))
        for data in files:
            row = ingestor.process(data).row  # type: ignore[union-attr]
            assert row["SOPInstanceUID"] in sops
            stored = web.lake.sql("SELECT header_dicom FROM instances WHERE SOPInstanceUID = "
                                  f"'{row['SOPInstanceUID']}'").fetchall()
            assert stored == [(row["header_dicom"],)]
    assert not any(p.is_alive() for p in spawned)  # stopped with the server


def test_workers_setting_is_checked() -> None:
    from lake.web import WebConfig

    with pytest.raises(lake.ConfigError, match="workers"):
        WebConfig(workers=-1)
    assert WebConfig.from_settings({"workers": 0}).workers == 0


_CRASH_AFTER_STORING = """
import os, sys
import lake
from lake.web import WebConfig
from lake.web._multipart import Part
from lake.web._stow import Store, StoreResult

lk = lake.open(sys.argv[1])
store = Store(lk, lk.secret(sys.argv[2]), WebConfig(commit_every=10_000, commit_interval=3600))
result = StoreResult()
for path in sys.argv[3:]:
    store.store(Part(headers={"content-type": "application/dicom"},
                     body=open(path, "rb").read()), None, result)
assert len(result.stored) == len(sys.argv) - 3, result
print(store.journal is not None, flush=True)
os._exit(0)  # a crash: stored (durable), never committed
"""


def test_stored_parts_survive_a_crash_before_the_commit(files: list[bytes], tmp_path: Path) -> None:
    """What STOW-RS counted as stored is durable before the commit: a process that dies right
    after storing leaves it in the receipt journal, and the next start commits it."""
    from lake.web import WebConfig
    from lake.web._stow import Store

    web = WebLake(lake.init(tmp_path / "lake", vault=tmp_path / "vault"), tmp_path / "vault")
    paths = []
    for number, data in enumerate(files):
        paths.append(tmp_path / f"{number}.dcm")
        paths[-1].write_bytes(data)
    crashed = subprocess.run(
        [sys.executable, "-c", _CRASH_AFTER_STORING, web.lake.root, str(web.vault),
         *map(str, paths)],
        capture_output=True, text=True, timeout=300, cwd=Path(__file__).resolve().parents[1])
    assert crashed.returncode == 0, crashed.stderr
    assert crashed.stdout.strip() == "True"  # a local lake: the receipt journal was used
    receipts = Path(web.lake.root) / "spool" / "stow" / "receipts"
    assert any(receipts.glob("*.journal"))
    ingestor = Ingestor(web.lake, web.lake.secret(web.vault))
    sops = [ingestor.process(data).row["SOPInstanceUID"] for data in files]  # type: ignore[union-attr]
    store = Store(web.lake, web.lake.secret(web.vault), WebConfig())
    try:
        assert store.recovered == len(files)
    finally:
        store.close()
    web.lake.refresh()
    listed = "', '".join(sops)
    found = web.lake.sql(f"SELECT count(*) FROM instances WHERE SOPInstanceUID IN ('{listed}')")
    assert found.fetchall()[0][0] == len(files)
    assert not any(receipts.glob("*.journal"))  # committed: the journal is empty


def test_malformed_multipart_is_400_and_loses_nothing_else(
    web: WebLake, live: tuple[WebServer, httpx.Client], files: list[bytes]
) -> None:
    body = _body(files[0], files[1], close=False) + b"--XyZ\r\nContent-Type: application/dicom"
    response = _post(live, web, body)
    assert response.status_code == 400
    assert "closing boundary" in response.json()["error"]
    _read_through(live, web)
    web.lake.refresh()
    ingestor = Ingestor(web.lake, web.lake.secret(web.vault))
    for data in files[:2]:
        sop = ingestor.process(data).row["SOPInstanceUID"]  # type: ignore[union-attr]
        found = web.lake.sql(f"SELECT count(*) FROM instances WHERE SOPInstanceUID = '{sop}'")
        assert found.fetchall()[0][0] == 1
    bad_header = _post(live, web, b"--XyZ\r\nno colon here\r\n\r\nx\r\n--XyZ--\r\n")
    assert bad_header.status_code == 400


def test_a_stalled_body_is_closed_and_what_arrived_is_kept(
    web: WebLake, files: list[bytes], caplog: pytest.LogCaptureFixture
) -> None:
    """A client that stops sending its STOW-RS body is closed after request_timeout seconds
    without a byte; the complete parts before the stall are stored; no traceback is logged."""
    caplog.set_level(logging.INFO, logger="lake")
    body = _body(files[0], close=False) + b"--XyZ\r\nContent-Type: application/dicom\r\n\r\nDI"
    with serving(web, request_timeout=1) as (server, _http):
        head = (f"POST /dicomweb/studies HTTP/1.1\r\nHost: x\r\n"
                f"Authorization: Bearer {web.tokens['steward']}\r\n"
                f"Content-Type: {DICOM_MULTIPART}\r\nContent-Length: {len(body) + 10_000}\r\n\r\n")
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.sendall(head.encode() + body)
            sock.settimeout(60)
            try:
                while sock.recv(65536):
                    pass  # until the server closes it
            except ConnectionResetError:
                pass
        assert server.guard.closed_idle == 1
    web.lake.refresh()
    sop = Ingestor(web.lake, web.lake.secret(web.vault)).process(files[0]).row["SOPInstanceUID"]  # type: ignore[union-attr]
    found = web.lake.sql(f"SELECT count(*) FROM instances WHERE SOPInstanceUID = '{sop}'")
    assert found.fetchall()[0][0] == 1
    assert not any(r.exc_info for r in caplog.records)
    assert not any("internal error" in r.getMessage() for r in caplog.records)


def test_multipart_reader_bounds_padding_preamble_and_headers() -> None:
    """Red-team finding 8: whitespace after a delimiter was buffered without bound and re-scanned
    on every chunk (quadratic, on the event loop). Every buffered piece is bounded now."""
    reader = MultipartReader("BB", 1 << 30)
    reader.feed(b"--BB")
    with pytest.raises(MalformedMultipartError, match="padding"):
        for _ in range(64):  # up to 4 MiB of spaces
            reader.feed(b" " * (1 << 16))
            assert len(reader._buffer) <= 1 << 16
    preamble = MultipartReader("BB", 1 << 30)
    with pytest.raises(MalformedMultipartError, match="no multipart boundary"):
        for _ in range(64):
            preamble.feed(b"x" * (1 << 16))
            assert len(preamble._buffer) < 64
    headers = MultipartReader("BB", 1 << 30)
    headers.feed(b"--BB\r\n")
    with pytest.raises(MalformedMultipartError, match="headers are too long"):
        for _ in range(64):
            headers.feed(b"X-Long: " + b"a" * 1000)


def test_multipart_reader_parses_byte_by_byte_with_padding() -> None:
    body = (b"preamble\r\n--BB  \t\r\nContent-Type: application/dicom\r\n\r\nfirst\r\n"
            b"--BB\r\n\r\nsecond\r\n--BB-- \r\nepilogue")
    reader = MultipartReader("BB", 1 << 20)
    parts = [part for i in range(len(body)) for part in reader.feed(body[i:i + 1])]
    reader.finish()
    assert [p.body for p in parts] == [b"first", b"second"]
    assert parts[0].headers == {"content-type": "application/dicom"} and parts[1].headers == {}


def test_stow_with_endless_padding_is_400_at_once(
    web: WebLake, live: tuple[WebServer, httpx.Client], files: list[bytes]
) -> None:
    def padded() -> Iterator[bytes]:
        yield _body(files[0], close=False) + b"--XyZ"
        for _ in range(512):  # 32 MiB offered; refused after the first KiB
            yield b" " * (1 << 16)

    response = live[1].post("/dicomweb/studies", content=padded(),
                            headers={**_steward(web), "Content-Type": DICOM_MULTIPART})
    assert response.status_code == 400 and "padding" in response.json()["error"]


@pytest.mark.parametrize("content_type", ["application/dicom", "multipart/related; boundary=XyZ; "
                                          'type="application/dicom+json"', "text/plain", ""])
def test_wrong_content_type_is_415(web: WebLake, live: tuple[WebServer, httpx.Client],
                                   content_type: str, files: list[bytes]) -> None:
    assert _post(live, web, _body(files[0]), content_type=content_type).status_code == 415


def test_size_limits_hold_while_streaming(web: WebLake, files: list[bytes]) -> None:
    size = len(files[0])
    with serving(web, max_request_bytes=size * 2 + 500, max_instance_bytes=size + 10) as (_, http):
        headers = {**_steward(web), "Content-Type": DICOM_MULTIPART}

        def chunks() -> Iterator[bytes]:  # streamed without a Content-Length
            data = _body(*files)
            for i in range(0, len(data), 8192):
                yield data[i : i + 8192]

        too_big = http.post("/dicomweb/studies", content=chunks(), headers=headers)
        assert too_big.status_code == 413
        big = files[0] + b"\0" * 64  # one instance over the per-instance limit
        response = http.post("/dicomweb/studies", content=_body(files[1], big), headers=headers)
        assert response.status_code == 202
        assert response.json()["00081198"]["Value"][0]["00081197"]["Value"] == [0xA700]


def test_only_stewards_store(web: WebLake, live: tuple[WebServer, httpx.Client],
                             files: list[bytes]) -> None:
    for who in ("researcher", "student", "researcher:a"):
        response = live[1].post("/dicomweb/studies", content=_body(files[0]), headers={
            "Authorization": f"Bearer {web.tokens[who]}", "Content-Type": DICOM_MULTIPART})
        assert response.status_code == 403
    cookie = httpx.Client(base_url=str(live[1].base_url),
                          cookies={"lake_token": web.tokens["steward"]})
    with cookie:  # a cookie never authorises a write
        assert cookie.post("/dicomweb/studies", content=_body(files[0]),
                           headers={"Content-Type": DICOM_MULTIPART}).status_code == 401


def test_without_the_vault_storing_is_503(web: WebLake, files: list[bytes]) -> None:
    from lake.web import WebConfig

    server = WebServer(web.lake, WebConfig(port=0), secret=None)
    with server, httpx.Client(base_url=server.url) as http:
        response = http.post("/dicomweb/studies", content=_body(files[0]),
                             headers={**_steward(web), "Content-Type": DICOM_MULTIPART})
        assert response.status_code == 503


def _bulk_data_uris(node: Any) -> Iterator[str]:
    """Every BulkDataURI in DICOM JSON, sequences included."""
    if isinstance(node, list):
        for item in node:
            yield from _bulk_data_uris(item)
    elif isinstance(node, dict):
        if isinstance(node.get("BulkDataURI"), str):
            yield node["BulkDataURI"]
        for value in node.values():
            yield from _bulk_data_uris(value)


def test_planted_identifiers_never_come_back(tmp_path: Path,
                                             caplog: pytest.LogCaptureFixture) -> None:
    corpus = tmp_path / "corpus"
    tokens = expected_absent(write_corpus(corpus, 2), retains_device_identity=False)
    originals = [p for p in sorted(corpus.rglob("*")) if p.is_file()]
    lk = lake.init(tmp_path / "lake", vault=tmp_path / "vault")
    _, steward = create_token(lk, "steward")
    web = WebLake(lk, tmp_path / "vault", tokens={"steward": steward})
    caplog.set_level(logging.DEBUG)
    seen = []
    with serving(web) as (server, http):
        headers = {"Authorization": f"Bearer {steward}"}
        for path in originals:  # one request per file: the sender's study UID in the path
            uid = None
            try:
                uid = str(dcmread(path, stop_before_pixels=True).StudyInstanceUID)
            except Exception:  # noqa: BLE001 - non-DICOM files of the corpus
                uid = None
            response = http.post("/dicomweb/studies" + (f"/{uid}" if uid else ""),
                                 content=_body(path.read_bytes()),
                                 headers={**headers, "Content-Type": DICOM_MULTIPART})
            seen.append(response.text)
        client: Any = dicomweb(server, steward)
        bulk = 0
        for study in client.search_for_studies(fields=["all"]):
            seen.append(json.dumps(study))
            uid = study["0020000D"]["Value"][0]
            metadata = client.retrieve_study_metadata(uid)
            seen.append(json.dumps(metadata))
            for uri in _bulk_data_uris(metadata):  # every value served as bulk data
                seen.append(b"".join(client.retrieve_bulkdata(uri)).decode("latin-1"))
                bulk += 1
            seen.append(http.get(f"/dicomweb/studies/{uid}", headers=headers).content.decode(
                "latin-1"))
            seen.append(http.get(f"/dicomweb/studies/{uid}/thumbnail",
                                 headers=headers).content.decode("latin-1"))
        for kind in ("series", "instances"):
            seen.append(http.get(f"/dicomweb/{kind}?includefield=all", headers=headers).text)
    # What the server logged (not the test's own HTTP client, which logs the URLs it calls).
    server_logs = [r.getMessage() for r in caplog.records
                   if r.name.startswith(("lake", "uvicorn", "starlette"))]
    assert any("POST /dicomweb/studies/{study}" in m for m in server_logs)
    seen.extend(server_logs)
    text = "\n".join(seen)
    assert len(seen) > len(originals)
    assert bulk > 0
    leaked = sorted(t for t in tokens if t in text)
    assert leaked == []
    assert UID_ROOT not in text
