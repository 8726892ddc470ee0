"""C-FIND matching semantics over a catalog with known values (findscu as the client)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset

import lake
from lake.catalog import INSTANCES
from lake.net import DicomServer, ServerConfig
from lake.query import Key, parse_time, python_matcher
from tests.net_peers import dcmtk, require, synthetic_rows

pytestmark = pytest.mark.network

# 3,000 synthetic instances: 30 studies of 100 (two series of 50), 15 patients, study n on
# 2015-01-01 + n days at 08:00 + n minutes, CT for even studies and MR for odd ones.
N = 3_000


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DicomServer]:
    require("findscu")
    root = tmp_path_factory.mktemp("find")
    lk = lake.init(root / "lake", vault=root / "vault")
    lk.tables.append(INSTANCES, list(synthetic_rows(N)))
    server = DicomServer(lk, lk.secret(root / "vault"), ServerConfig(port=0, workers=0))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def find(server: DicomServer, tmp_path: Path, *keys: str, model: str = "-S") -> list[Dataset]:
    out = tmp_path / f"rsp{len(list(tmp_path.iterdir()))}"
    out.mkdir()
    args = [model, "-aec", "LAKE", "-X", "-od", str(out)]
    for key in keys:
        args += ["-k", key]
    result = dcmtk("findscu", *args, "127.0.0.1", str(server.port))
    assert result.returncode == 0, result.stderr
    return [dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]


def studies(server: DicomServer, tmp_path: Path, *keys: str) -> list[int]:
    """Matching study numbers (from the synthetic StudyInstanceUID 2.25.1<n>)."""
    found = find(server, tmp_path, "QueryRetrieveLevel=STUDY", "StudyInstanceUID", *keys)
    return sorted(int(ds.StudyInstanceUID[len("2.25.1"):]) for ds in found)


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("StudyDate=20150103", [2]),
        ("StudyDate=20150103-20150105", [2, 3, 4]),
        ("StudyDate=20150128-", [27, 28, 29]),
        ("StudyDate=-20150102", [0, 1]),
        ("StudyDate=20150101\\20150110-20150111", [0, 9, 10]),
        ("StudyTime=0805-0807", [5, 6, 7]),
        ("StudyTime=0810", [10]),  # HHMM covers the whole minute
        ("StudyTime=08", list(range(30))),
        ("StudyTime=082800-", [28, 29]),
        ("StudyTime=082830-", [29]),
        ("StudyTime=-080130.5", [0, 1]),
        ("ModalitiesInStudy=MR", list(range(1, 30, 2))),
        ("ModalitiesInStudy=CT\\MR", list(range(30))),
        ("ModalitiesInStudy=M?", list(range(1, 30, 2))),
        ("PatientID=P000003", [6, 7]),
        ("PatientID=P00001*", list(range(20, 30))),
        ("PatientID=P0000?1", [2, 3, 22, 23]),
        ("PatientID=P000001\\P000002", [2, 3, 4, 5]),
        ("StudyDescription=CT HEAD 3", [10, 24]),
        ("StudyDescription=*HEAD 6", [6, 13, 20, 27]),
        ("StudyDescription=ct head 3", []),  # case-sensitive outside PN
        ("PatientName=anon^000004", [8, 9]),  # PN: case-insensitive, from the header
        ("PatientName=ANON^00001?", list(range(20, 30))),
        ("StudyInstanceUID=2.25.1000000004\\2.25.1000000011", [4, 11]),
        ("StudyInstanceUID=2.25.100000000*", []),  # no wildcards in UID matching
        ("StudyDate=20150101-20150103", [0, 1, 2]),
    ],
)
def test_study_matching(catalog: DicomServer, tmp_path: Path, key: str, expected: list[int]) -> None:
    assert studies(catalog, tmp_path, key) == expected


def test_combined_keys_and_return_values(catalog: DicomServer, tmp_path: Path) -> None:
    found = find(catalog, tmp_path, "QueryRetrieveLevel=STUDY", "StudyDate=20150101-20150110",
                 "ModalitiesInStudy=CT", "StudyTime", "StudyDescription", "PatientName",
                 "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances",
                 "SOPClassesInStudy", "InstanceAvailability", "RetrieveAETitle",
                 "StudyInstanceUID")
    assert len(found) == 5
    first = min(found, key=lambda ds: ds.StudyInstanceUID)
    assert first.StudyTime == "080000"
    assert first.StudyDescription == "CT HEAD 0"
    assert str(first.PatientName) == "ANON^000000"
    assert (int(first.NumberOfStudyRelatedSeries), int(first.NumberOfStudyRelatedInstances)) == (
        2, 100)
    assert first.SOPClassesInStudy == "1.2.840.10008.5.1.4.1.1.2"
    assert (first.InstanceAvailability, first.RetrieveAETitle) == ("ONLINE", "LAKE")


def test_series_and_image_levels(catalog: DicomServer, tmp_path: Path) -> None:
    series = find(catalog, tmp_path, "QueryRetrieveLevel=SERIES", "StudyInstanceUID=2.25.1000000003",
                  "SeriesInstanceUID", "SeriesNumber", "NumberOfSeriesRelatedInstances",
                  "Modality")
    assert sorted((int(s.SeriesNumber), int(s.NumberOfSeriesRelatedInstances)) for s in series) == [
        (1, 50), (2, 50)]
    assert {s.Modality for s in series} == {"MR"}
    images = find(catalog, tmp_path, "QueryRetrieveLevel=IMAGE",
                  "StudyInstanceUID=2.25.1000000003", f"SeriesInstanceUID={series[0].SeriesInstanceUID}",
                  "InstanceNumber=7\\8", "SOPInstanceUID")
    assert sorted(int(i.InstanceNumber) for i in images) == [7, 8]


def test_patient_level(catalog: DicomServer, tmp_path: Path) -> None:
    found = find(catalog, tmp_path, "QueryRetrieveLevel=PATIENT", "PatientID=P00000*",
                 "NumberOfPatientRelatedStudies", "NumberOfPatientRelatedSeries",
                 "NumberOfPatientRelatedInstances", model="-P")
    assert len(found) == 10
    assert {(int(p.NumberOfPatientRelatedStudies), int(p.NumberOfPatientRelatedSeries),
             int(p.NumberOfPatientRelatedInstances)) for p in found} == {(2, 4, 200)}


def test_time_parsing() -> None:
    assert parse_time("0805") == dt.time(8, 5)
    assert parse_time("0805", upper=True) == dt.time(8, 5, 59, 999999)
    assert parse_time("080530.12", upper=True) == dt.time(8, 5, 30, 129999)
    assert parse_time("08:05:30") == dt.time(8, 5, 30)
    with pytest.raises(lake.QueryError):
        parse_time("8h05")


def test_python_matcher_follows_the_sql_rules() -> None:
    def key(vr: str, *values: str) -> Key:
        return Key("X", 0, vr, values)

    assert python_matcher(key("PN", "doe*"))(["DOE^JOHN"])
    assert not python_matcher(key("LO", "doe*"))(["DOE^JOHN"])
    assert python_matcher(key("DA", "20200101-20200131"))(["20200115"])
    assert not python_matcher(key("DA", "20200101-20200131"))(["20200201"])
    assert python_matcher(key("TM", "10-11"))(["115959"])
    assert python_matcher(key("UI", "1.2", "1.3"))(["1.3"])
    assert not python_matcher(key("UI", "1.*"))(["1.3"])
    assert python_matcher(key("CS", "A?C"))(["ABC"])
