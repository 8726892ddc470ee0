"""QIDO-RS and WADO-RS against a live server, driven by dicomweb-client and plain HTTP.

Bytes served are compared with ``lake export dicom`` of the same instances; frames with the
stored pixel data; rendered images are decoded and must not be blank.
"""

from __future__ import annotations

import gzip
import io
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread
from pydicom.uid import UID, generate_uid

from lake.access import create_token
from lake.ingest import ingest
from lake.web import WebServer
from tests.web_peers import WebLake, build_web_lake, dicomweb, parts_of, serving

SAMPLES = ("MR_small.dcm", "MR_small_RLE.dcm", "MR_small_jp2klossless.dcm",
           "MR_small_jpeg_ls_lossless.dcm", "emri_small.dcm")


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> WebLake:
    from pydicom.data import get_testdata_file

    root = tmp_path_factory.mktemp("dicomweb")
    built = build_web_lake(root)
    folder = root / "in" / "samples"
    folder.mkdir(parents=True)
    for name in SAMPLES:  # pydicom's MR_small variants share their UIDs: give each its own
        path = get_testdata_file(name)
        assert path is not None
        ds = dcmread(path)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.save_as(folder / name, enforce_file_format=True)
    ingest(built.lake, [str(folder)], built.lake.secret(built.vault), scheduler="sync")
    built.lake.refresh()
    return built


@pytest.fixture(scope="module")
def live(web: WebLake) -> Iterator[tuple[WebServer, httpx.Client]]:
    with serving(web) as pair:
        yield pair


@pytest.fixture(scope="module")
def client(web: WebLake, live: tuple[WebServer, httpx.Client]) -> Any:
    return dicomweb(live[0], web.tokens["steward"])


@pytest.fixture(scope="module")
def exported(web: WebLake, tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """SOPInstanceUID -> the bytes ``lake export dicom`` writes."""
    out = tmp_path_factory.mktemp("export") / "out"
    web.lake.export_dicom("SELECT SeriesInstanceUID FROM series", out, scheduler="sync")
    files = {}
    for path in out.rglob("*.dcm"):
        data = path.read_bytes()
        files[str(dcmread(io.BytesIO(data), stop_before_pixels=True).SOPInstanceUID)] = data
    return files


def _auth(web: WebLake, who: str = "steward") -> dict[str, str]:
    return {"Authorization": f"Bearer {web.tokens[who]}"}


def _instances(web: WebLake) -> list[tuple[str, str, str, str]]:
    return [tuple(map(str, r)) for r in web.lake.sql(  # type: ignore[misc]
        "SELECT StudyInstanceUID, SeriesInstanceUID, SOPInstanceUID, TransferSyntaxUID "
        "FROM instances ORDER BY 1, 2, 3").fetchall()]


# --- QIDO-RS ---------------------------------------------------------------------------


def test_search_studies_has_what_ohif_shows(web: WebLake, client: Any) -> None:
    studies = client.search_for_studies()
    count = web.lake.sql("SELECT count(DISTINCT StudyInstanceUID) FROM instances").fetchall()
    assert len(studies) == count[0][0]
    for study in studies:
        for tag in ("0020000D", "00080061", "00201206", "00201208", "00100020", "00080020",
                    "00081190", "00080056"):
            assert tag in study
    ct = [s for s in studies if s["00080061"].get("Value") == ["CT"]]
    assert len(ct) == 3 and all(s["00201208"]["Value"] == [4] for s in ct)


def test_search_semantics_match_c_find(web: WebLake, client: Any) -> None:
    a_study = web.uids["a"][0]
    by_uid_list = client.search_for_studies(
        search_filters={"StudyInstanceUID": f"{a_study},{web.uids['b'][0]}"})
    assert {s["0020000D"]["Value"][0] for s in by_uid_list} == {a_study, web.uids["b"][0]}
    by_tag = client.search_for_studies(search_filters={"0020000D": a_study})
    assert [s["0020000D"]["Value"][0] for s in by_tag] == [a_study]
    mr = client.search_for_series(search_filters={"Modality": "M?"})
    assert mr and all(s["00080060"]["Value"] == ["MR"] for s in mr)
    wildcard = client.search_for_series(search_filters={"Modality": "C*"})
    assert {s["00080060"]["Value"][0] for s in wildcard} == {"CT"}
    multi = client.search_for_studies(search_filters={"ModalitiesInStudy": "CT"})
    assert len(multi) == 3
    first = client.search_for_studies(limit=2)
    rest = client.search_for_studies(offset=2)
    assert len(first) == 2
    every = client.search_for_studies()
    assert [s["0020000D"] for s in first + rest] == [s["0020000D"] for s in every]


def test_search_dates_ranges_and_includefield(web: WebLake, client: Any) -> None:
    dates = {r[0] for r in web.lake.sql(
        "SELECT strftime(StudyDate, '%Y%m%d') FROM studies WHERE StudyDate IS NOT NULL"
    ).fetchall()}
    if dates:
        day = sorted(dates)[0]
        found = client.search_for_studies(search_filters={"StudyDate": f"{day}-{day}"})
        assert found and all(s["00080020"]["Value"] == [day] for s in found)
    series = client.search_for_series(fields=["SeriesDescription", "00180050", "all"])
    assert all("0008103E" in s and "00180050" in s for s in series)


def test_date_and_time_ranges(tmp_path: Path) -> None:
    """Dates and times kept (shifted) by the research profile, matched by QIDO-RS ranges:
    single values, closed and open ranges, times, combined with other keys. (The shared web
    lake is de-identified with ``basic``, which removes every date.)"""
    from pydicom.data import get_testdata_file

    import lake

    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("CT_small.dcm", "MR_small.dcm"):
        path = get_testdata_file(name)
        assert path is not None
        ds = dcmread(path)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.PatientID = "RANGES-1"  # one patient: one date shift, the studies keep their order
        ds.save_as(folder / name, enforce_file_format=True)
    lk = lake.init(tmp_path / "lake", vault=tmp_path / "vault")
    ingest(lk, [str(folder)], lk.secret(tmp_path / "vault"), profile="research",
           scheduler="sync")
    lk.refresh()
    rows = lk.sql("SELECT Modality, StudyDate, StudyTime, StudyInstanceUID FROM instances")
    when = {str(m): (d.strftime("%Y%m%d"), t.strftime("%H%M%S"), str(uid))
            for m, d, t, uid in rows.fetchall()}
    assert set(when) == {"CT", "MR"} and when["CT"][0] < when["MR"][0]
    (ct_day, ct_time, ct), (mr_day, mr_time, mr) = when["CT"], when["MR"]
    assert ct_time < mr_time
    web = WebLake(lk, tmp_path / "vault", tokens={"steward": create_token(lk, "steward")[1]})
    with serving(web) as (_server, http):
        def found(query: str) -> set[str]:
            response = http.get(f"/dicomweb/studies?{query}", headers=_auth(web))
            assert response.status_code == 200, (query, response.text)
            return {s["0020000D"]["Value"][0] for s in response.json()}

        assert found(f"StudyDate={ct_day}") == {ct}
        assert found(f"StudyDate={ct_day}-{ct_day}") == {ct}
        assert found(f"StudyDate={ct_day}-{mr_day}") == {ct, mr}
        assert found(f"StudyDate={mr_day}-") == {mr}
        assert found(f"StudyDate=-{ct_day}") == {ct}
        assert found(f"00080020={mr_day}") == {mr}
        assert found(f"StudyTime={ct_time[:4]}-{ct_time[:4]}59") == {ct}
        assert found(f"StudyTime={mr_time}-") == {mr}
        assert found(f"StudyDate={ct_day}-{mr_day}&StudyTime=-{ct_time}") == {ct}
        assert found(f"StudyDate={ct_day}-{mr_day}&ModalitiesInStudy=MR") == {mr}
        assert found("StudyDate=19000101-19000102") == set()


def test_search_levels(web: WebLake, client: Any) -> None:
    study, series, sop = web.uids["a"]
    in_study = client.search_for_series(study_instance_uid=study)
    assert [s["0020000E"]["Value"][0] for s in in_study] == [series]
    instances = client.search_for_instances(study_instance_uid=study,
                                            series_instance_uid=series)
    assert len(instances) == 4 and sop in {i["00080018"]["Value"][0] for i in instances}
    assert all(i["00280010"]["Value"] == [128] for i in instances)
    everywhere = client.search_for_instances(search_filters={"SOPInstanceUID": sop})
    assert len(everywhere) == 1
    assert everywhere[0]["0020000D"]["Value"] == [study]


def test_series_and_instance_searches_carry_the_study_attributes(
    web: WebLake, client: Any
) -> None:
    """PS3.18 Table 10.6.3-3: a search of all series (all instances) returns the study's
    attributes too, computed ones included; an instance its series' instance count."""
    study, series, sop = web.uids["a"]
    (found,) = client.search_for_series(search_filters={"SeriesInstanceUID": series})
    (instance,) = client.search_for_instances(search_filters={"SOPInstanceUID": sop})
    for result in (found, instance):
        assert result["0020000D"]["Value"] == [study]
        assert result["00080061"]["Value"] == ["CT"]  # ModalitiesInStudy
        assert result["00201206"]["Value"] == [1]  # NumberOfStudyRelatedSeries
        assert result["00201208"]["Value"] == [4]  # NumberOfStudyRelatedInstances
    assert found["00201209"]["Value"] == [4] and instance["00201209"]["Value"] == [4]
    every = client.search_for_instances(study_instance_uid=study)
    assert [i["00201209"]["Value"] for i in every] == [[4]] * 4
    # ... and match them, as at their own level
    mr_series = client.search_for_series(search_filters={"ModalitiesInStudy": "MR"})
    assert mr_series and all(s["00080061"]["Value"] == ["MR"] for s in mr_series)
    assert series not in {s["0020000E"]["Value"][0] for s in mr_series}
    in_a = client.search_for_instances(search_filters={
        "ModalitiesInStudy": "CT", "NumberOfSeriesRelatedInstances": "4",
        "StudyInstanceUID": study})
    assert len(in_a) == 4
    assert client.search_for_instances(search_filters={
        "NumberOfSeriesRelatedInstances": "5", "StudyInstanceUID": study}) == []


def test_searches_are_bounded(web: WebLake, live: tuple[WebServer, httpx.Client],
                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A search without a limit answers at most the server's maximum, with the PS3.18 Warning
    that more can be asked for (on a 1M-instance catalog, GET /instances held 13 GB and had
    not answered after 5 minutes); a search that would read more stored headers than the
    server allows is a 400 naming how to narrow it, not an unbounded scan."""
    import lake.query._index as index
    import lake.web._qido as qido

    http = live[1]
    count = web.lake.sql("SELECT count(*) FROM instances").fetchall()[0][0]
    monkeypatch.setattr(qido, "_MAX_LIMIT", 5)
    capped = http.get("/dicomweb/instances", headers=_auth(web))
    assert capped.status_code == 200 and len(capped.json()) == 5 < count
    assert capped.headers["warning"].startswith("299 ")
    assert "additional results" in capped.headers["warning"]
    whole = http.get("/dicomweb/instances", params={"limit": "1000"}, headers=_auth(web))
    assert len(whole.json()) == 5  # an asked limit is capped too
    paged = http.get("/dicomweb/instances", params={"offset": str(count - 2)}, headers=_auth(web))
    assert len(paged.json()) == 2 and "warning" not in paged.headers
    monkeypatch.setattr(index, "_HEADER_SCAN_MAX", 3)
    scan = http.get("/dicomweb/instances", params={"PatientName": "X*"}, headers=_auth(web))
    assert scan.status_code == 400
    assert "narrow" in scan.json()["error"]
    narrowed = http.get("/dicomweb/instances", headers=_auth(web), params={
        "PatientName": "X*", "SeriesInstanceUID": web.uids["a"][1], "limit": "10"})
    assert narrowed.status_code == 400  # four instances in that series: still more than 3
    study_level = http.get("/dicomweb/studies", params={"PatientName": "X*",
                           "StudyInstanceUID": web.uids["a"][0]}, headers=_auth(web))
    assert study_level.status_code == 200 and study_level.json() == []


def test_fuzzy_person_names() -> None:
    # The lake's profiles remove names, so the rule is shown on the shared matcher itself.
    from lake.query import Key, python_matcher

    def key(value: str, fuzzy: bool) -> Key:
        return Key("PatientName", 0x00100010, "PN", (value,), fuzzy=fuzzy)

    assert not python_matcher(key("jan", False))(["Doe^Jane"])
    assert python_matcher(key("jan", True))(["Doe^Jane"])
    assert python_matcher(key("jane do", True))(["Doe^Jane"])
    assert not python_matcher(key("john", True))(["Doe^Jane"])


def test_fuzzymatching_is_accepted(client: Any) -> None:
    assert client.search_for_studies(search_filters={"PatientName": "x"},
                                     fuzzymatching=True) == []


@pytest.mark.parametrize("query", ["Foo=1", "StudyDate=2020", "limit=x", "fuzzymatching=maybe",
                                   "StudyDate=1&StudyDate=2", "00400275.00321060=x",
                                   "PixelData=x", "7FE00010=",
                                   "offset=99999999999999999999"])
def test_bad_searches_are_400(web: WebLake, live: tuple[WebServer, httpx.Client],
                              query: str) -> None:
    response = live[1].get("/dicomweb/studies?" + query, headers=_auth(web))
    assert response.status_code == 400
    assert "error" in response.json()


def test_returned_attributes_have_valid_vrs(web: WebLake, client: Any) -> None:
    """includefield of an attribute whose VR the dictionary leaves open ("OB or OW", "US or
    SS") still answers DICOM JSON with one VR each (dicomweb-client parses it)."""
    fields = ["PixelData", "SmallestImagePixelValue", "00281101", "all"]
    for found in (client.search_for_instances(fields=fields),
                  client.search_for_series(fields=fields),
                  client.search_for_studies(fields=fields)):
        assert found
        for result in found:
            for tag, element in result.items():
                assert re.fullmatch(r"[A-Z]{2}", element["vr"]), (tag, element)


# --- WADO-RS ---------------------------------------------------------------------------


def test_instances_as_stored_are_the_exported_bytes(
    web: WebLake, live: tuple[WebServer, httpx.Client], exported: dict[str, bytes]
) -> None:
    http = live[1]
    syntaxes = set()
    for study, series, sop, syntax in _instances(web):
        response = http.get(
            f"/dicomweb/studies/{study}/series/{series}/instances/{sop}",
            headers={**_auth(web),
                     "Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'},
        )
        assert response.status_code == 200
        ((headers, body),) = parts_of(response)
        assert headers["content-type"] == f"application/dicom; transfer-syntax={syntax}"
        assert body == exported[sop]
        syntaxes.add(syntax)
    assert len(syntaxes) >= 4  # uncompressed, RLE, JPEG 2000, JPEG-LS


def test_study_retrieval_with_dicomweb_client(web: WebLake, client: Any,
                                              exported: dict[str, bytes]) -> None:
    study = web.uids["a"][0]
    datasets = client.retrieve_study(study)
    assert len(datasets) == 4
    for ds in datasets:
        stored = dcmread(io.BytesIO(exported[str(ds.SOPInstanceUID)]))
        assert ds == stored
    series = client.retrieve_series(study, web.uids["a"][1])
    assert {str(d.SOPInstanceUID) for d in series} == {str(d.SOPInstanceUID) for d in datasets}


def test_every_retrieval_of_dicomweb_client(web: WebLake, client: Any,
                                            exported: dict[str, bytes]) -> None:
    """The client's instance, streaming and rendered-frame retrievals (the others above)."""
    study, series, sop = web.uids["a"]
    one = client.retrieve_instance(study, series, sop, media_types=(
        ("application/dicom", "*"),))
    assert one == dcmread(io.BytesIO(exported[sop]))
    streamed = {str(ds.SOPInstanceUID) for ds in client.iter_series(study, series)}
    assert sop in streamed and streamed == {str(ds.SOPInstanceUID)
                                            for ds in client.iter_study(study)}
    assert len(streamed) == 4
    (frame,) = list(client.iter_instance_frames(study, series, sop, frame_numbers=[1]))
    assert frame == dcmread(io.BytesIO(exported[sop])).PixelData
    for media in ("image/png", "image/jpeg"):
        rendered = client.retrieve_instance_frames_rendered(
            study, series, sop, frame_numbers=[1], media_types=(media,),
            params={"window": "40,400"})
        image = Image.open(io.BytesIO(rendered))
        assert image.format == media.split("/")[1].upper()
        assert np.asarray(image).std() > 1  # not blank


def test_explicit_little_endian_decodes_compressed(
    web: WebLake, live: tuple[WebServer, httpx.Client], exported: dict[str, bytes]
) -> None:
    http = live[1]
    compressed = [r for r in _instances(web) if UID(r[3]).is_compressed]
    assert compressed
    for study, series, sop, _ in compressed:
        url = f"/dicomweb/studies/{study}/series/{series}/instances/{sop}"
        plain = http.get(url, headers={**_auth(web), "Accept":
                         'multipart/related; type="application/dicom"'})
        assert plain.status_code == 200
        ((headers, body),) = parts_of(plain)
        assert headers["content-type"].endswith("transfer-syntax=1.2.840.10008.1.2.1")
        ds = dcmread(io.BytesIO(body))
        original = dcmread(io.BytesIO(exported[sop]))
        assert np.array_equal(ds.pixel_array, original.pixel_array)
        refused = http.get(url, headers={**_auth(web), "Accept":
                           'multipart/related; type="application/dicom"; '
                           "transfer-syntax=1.2.840.10008.1.2.4.50"})
        assert refused.status_code == 406


def test_metadata_has_bulk_data_uris_and_gzip(
    web: WebLake, live: tuple[WebServer, httpx.Client], client: Any
) -> None:
    study, series, _ = web.uids["a"]
    meta = client.retrieve_series_metadata(study, series)
    assert len(meta) == 4
    pixel = meta[0]["7FE00010"]
    assert pixel["BulkDataURI"].startswith(live[0].url + "/dicomweb/studies/")
    bulk = client.retrieve_bulkdata(pixel["BulkDataURI"])
    instance = meta[0]["00080018"]["Value"][0]
    stored = web.lake.sql(f"SELECT pixel_hash FROM instances WHERE SOPInstanceUID='{instance}'")
    digest = stored.fetchall()[0][0]
    import hashlib

    assert "sha256:" + hashlib.sha256(bulk[0]).hexdigest() == digest
    zipped = live[1].get(f"/dicomweb/studies/{study}/metadata",
                         headers={**_auth(web), "Accept-Encoding": "gzip"})
    assert zipped.headers["content-encoding"] == "gzip"
    assert zipped.headers["content-type"] == "application/dicom+json"
    assert len(json.loads(zipped.content)) == 4  # httpx decompressed it
    raw = live[1].get(f"/dicomweb/studies/{study}/metadata", headers={**_auth(web),
                      "Accept-Encoding": "identity"})
    assert "content-encoding" not in raw.headers
    assert gzip.decompress(gzip.compress(raw.content)) == zipped.content


def test_frames(web: WebLake, client: Any, exported: dict[str, bytes],
                live: tuple[WebServer, httpx.Client]) -> None:
    for study, series, sop, syntax in _instances(web):
        original = dcmread(io.BytesIO(exported[sop]))
        if "PixelData" not in original:
            continue
        decoded = client.retrieve_instance_frames(study, series, sop, frame_numbers=[1])
        expected = original.pixel_array
        first = expected if int(original.get("NumberOfFrames") or 1) == 1 else expected[0]
        if str(original.PhotometricInterpretation).startswith("YBR"):
            continue
        assert decoded[0] == first.tobytes(), syntax
        stored = live[1].get(
            f"/dicomweb/studies/{study}/series/{series}/instances/{sop}/frames/1",
            headers={**_auth(web),
                     "Accept": 'multipart/related; type="application/octet-stream"; '
                               "transfer-syntax=*"})
        ((headers, body),) = parts_of(stored)
        if UID(syntax).is_compressed:
            assert headers["content-type"].endswith(f"transfer-syntax={syntax}")
            assert body and body != first.tobytes()
        else:
            assert body == first.tobytes()


def test_multi_frame_list(web: WebLake, live: tuple[WebServer, httpx.Client]) -> None:
    row = web.lake.sql("SELECT StudyInstanceUID, SeriesInstanceUID, SOPInstanceUID, "
                       "NumberOfFrames FROM instances WHERE NumberOfFrames > 2 LIMIT 1").fetchall()
    if not row:
        pytest.skip("no multi-frame instance")
    study, series, sop, count = row[0]
    url = f"/dicomweb/studies/{study}/series/{series}/instances/{sop}/frames"
    three = live[1].get(f"{url}/1,2,{count}", headers=_auth(web))
    assert three.status_code == 200 and len(parts_of(three)) == 3
    assert live[1].get(f"{url}/{count + 1}", headers=_auth(web)).status_code == 404
    assert live[1].get(f"{url}/a", headers=_auth(web)).status_code == 400


@pytest.mark.parametrize("accept", ["image/jpeg", "image/png"])
def test_rendered_and_thumbnails(web: WebLake, live: tuple[WebServer, httpx.Client],
                                 accept: str) -> None:
    study, series, sop = web.uids["a"]
    base = f"/dicomweb/studies/{study}/series/{series}"
    for path, params in ((f"{base}/instances/{sop}/rendered", {}),
                         (f"{base}/instances/{sop}/frames/1/rendered", {"window": "40,400"}),
                         (f"{base}/instances/{sop}/rendered", {"window": "40,400,sigmoid",
                                                              "viewport": "64,64"}),
                         (f"/dicomweb/studies/{study}/thumbnail", {}),
                         (f"{base}/thumbnail", {})):
        response = live[1].get(path, params=params, headers={**_auth(web), "Accept": accept})
        assert response.status_code == 200, path
        assert response.headers["content-type"] == accept
        image = np.asarray(Image.open(io.BytesIO(response.content)))
        assert image.std() > 1, path  # not blank
        if "viewport" in params or "thumbnail" in path:
            assert max(image.shape[:2]) <= 128
    bad = live[1].get(f"{base}/instances/{sop}/rendered", params={"window": "x"},
                      headers=_auth(web))
    assert bad.status_code == 400
    gif = live[1].get(f"{base}/instances/{sop}/rendered",
                      headers={**_auth(web), "Accept": "image/gif"})
    assert gif.status_code == 406


@pytest.mark.parametrize("accept", ["image/png", 'multipart/related; type="image/jpeg"'])
def test_study_and_series_rendered_are_every_instance(
    web: WebLake, live: tuple[WebServer, httpx.Client], accept: str
) -> None:
    """PS3.18 10.4.1.1.3: a study's or series' rendered resource is multipart, one rendered
    image per instance (a thumbnail stays one image)."""
    study, series, _ = web.uids["a"]
    media = "image/png" if accept == "image/png" else "image/jpeg"
    for path in (f"/dicomweb/studies/{study}/rendered",
                 f"/dicomweb/studies/{study}/series/{series}/rendered"):
        response = live[1].get(path, headers={**_auth(web), "Accept": accept},
                               params={"window": "40,400"})
        assert response.status_code == 200, path
        assert response.headers["content-type"].startswith(f'multipart/related; type="{media}"')
        parts = parts_of(response)
        assert len(parts) == 4  # the series' four slices
        for headers, body in parts:
            assert headers["content-type"] == media
            assert np.asarray(Image.open(io.BytesIO(body))).std() > 1
    bad = live[1].get(f"/dicomweb/studies/{study}/rendered", params={"window": "x"},
                      headers=_auth(web))
    assert bad.status_code == 400


def test_resource_urls_use_public_url_never_the_host_header(web: WebLake) -> None:
    study, series, _ = web.uids["a"]
    public = "https://pacs.example.org/lake"
    with serving(web, public_url=public + "/") as (_server, http):
        headers = {**_auth(web), "Host": "evil.example"}
        found = http.get("/dicomweb/studies", headers=headers, params={"StudyInstanceUID": study})
        assert found.json()[0]["00081190"]["Value"] == [f"{public}/dicomweb/studies/{study}"]
        meta = http.get(f"/dicomweb/studies/{study}/series/{series}/metadata", headers=headers)
        assert meta.json()[0]["7FE00010"]["BulkDataURI"].startswith(public + "/dicomweb/")
        moved = http.get("/dicomweb/studies/", headers=headers, params={"limit": "1"})
        assert moved.status_code == 307
        assert moved.headers["location"] == "/lake/dicomweb/studies?limit=1"
        assert "evil" not in moved.text + json.dumps(dict(moved.headers))
    with serving(web) as (server, http):  # no public_url: the bound address, or a relative path
        moved = http.get("/dicomweb/studies/", headers={**_auth(web), "Host": "evil.example"})
        assert moved.status_code == 307 and moved.headers["location"] == "/dicomweb/studies"
        portal = http.get("/portal", headers={"Host": "evil.example"})
        assert portal.status_code == 307 and portal.headers["location"] == "/portal/"
        found = http.get("/dicomweb/studies", headers={**_auth(web), "Host": "evil.example"},
                         params={"StudyInstanceUID": study})
        assert found.json()[0]["00081190"]["Value"][0].startswith(server.url + "/dicomweb/")


@pytest.mark.parametrize("bad", ["pacs.example.org", "ftp://x", "https://x/?a=1",
                                 "https://user:pw@x"])
def test_public_url_must_be_an_address(bad: str) -> None:
    from lake import ConfigError
    from lake.web import WebConfig

    with pytest.raises(ConfigError, match="public_url"):
        WebConfig(public_url=bad)


def test_scoped_token_sees_only_its_cohort(web: WebLake,
                                           live: tuple[WebServer, httpx.Client]) -> None:
    scoped = dicomweb(live[0], web.tokens["researcher:a"])
    studies = scoped.search_for_studies()  # type: ignore[attr-defined]
    assert [s["0020000D"]["Value"][0] for s in studies] == [web.uids["a"][0]]
    assert studies[0]["00201208"]["Value"] == [4]
    study, series, sop = web.uids["b"]
    for path in (f"/studies/{study}", f"/studies/{study}/metadata",
                 f"/studies/{study}/series/{series}/instances/{sop}/frames/1"):
        response = live[1].get("/dicomweb" + path, headers=_auth(web, "researcher:a"))
        assert response.status_code == 404
        missing = live[1].get("/dicomweb" + path.replace(study, "1.2.3"),
                              headers=_auth(web, "researcher:a"))
        assert missing.status_code == 404 and missing.content == response.content


def test_scope_is_pinned_to_the_cohort_version(web: WebLake,
                                               live: tuple[WebServer, httpx.Client]) -> None:
    lk = web.lake
    _, token = create_token(lk, "researcher", cohorts=["a"])
    before = live[1].get("/dicomweb/instances", headers={"Authorization": f"Bearer {token}"})
    # New instances of the lake do not enter a cohort frozen earlier.
    assert len(before.json()) == 4
