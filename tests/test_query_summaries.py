"""The DICOM query index answers from the series summaries, not from a copy of every instance.

Issue 14.5: at ten million instances the index that served C-FIND and QIDO-RS copied every
instance row into memory (more than 4 GB). The lake-wide :class:`lake.query.Snapshot` now
builds its PATIENT, STUDY and SERIES tables from the series summaries written at commit
time and reads instance rows only for IMAGE-level queries, retrieves and WADO-RS, and then
only from the data files whose summaries name the study or series asked for. These tests
prove the behaviour (what is read, what is held, that results do not change), not timing.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import duckdb
import pytest
from pydicom.dataset import Dataset

import lake
from lake.catalog import INSTANCES
from lake.catalog._summary import data_files
from lake.query import (
    Key,
    Level,
    Snapshot,
    SnapshotCache,
    identifier_from_filters,
    parse_identifier,
)
from tests.net_peers import synthetic_rows

# Three commits (three data files): studies 0-9, 10-19 and 20-29 of 100 instances each.
PER_COMMIT = 1_000

STUDY_QUERIES = [
    ["StudyDate=20150103-20150112", "PatientID", "ModalitiesInStudy",
     "NumberOfStudyRelatedInstances", "NumberOfStudyRelatedSeries", "StudyTime",
     "StudyDescription", "SOPClassesInStudy"],
    ["ModalitiesInStudy=MR", "StudyDate", "NumberOfStudyRelatedInstances"],
    ["PatientID=P00001*", "StudyInstanceUID", "StudyTime=0805-0825"],
    ["StudyInstanceUID=2.25.1000000004\\2.25.1000000025", "PatientName", "AccessionNumber"],
]
SERIES_QUERIES = [
    ["QueryRetrieveLevel=SERIES", "StudyInstanceUID=2.25.1000000012", "SeriesInstanceUID",
     "Modality", "SeriesNumber", "NumberOfSeriesRelatedInstances"],
    ["QueryRetrieveLevel=SERIES", "Modality=CT", "ModalitiesInStudy=CT", "StudyDate",
     "NumberOfSeriesRelatedInstances"],
]
PATIENT_QUERIES = [
    ["QueryRetrieveLevel=PATIENT", "PatientID=P00000*", "NumberOfPatientRelatedStudies",
     "NumberOfPatientRelatedSeries", "NumberOfPatientRelatedInstances", "PatientSex"],
]
IMAGE_QUERIES = [
    ["QueryRetrieveLevel=IMAGE", "StudyInstanceUID=2.25.1000000021",
     "SeriesInstanceUID=2.25.2000000043", "SOPInstanceUID", "InstanceNumber", "PatientName",
     "SOPClassUID"],
    ["QueryRetrieveLevel=IMAGE", "SeriesInstanceUID=2.25.2000000004", "InstanceNumber=7",
     "SOPInstanceUID", "NumberOfSeriesRelatedInstances", "ModalitiesInStudy"],
]


def _keys(filters: Sequence[str]) -> tuple[Level, list[Key]]:
    return parse_identifier(identifier_from_filters(list(filters)), list(Level))


def _answers(snapshot: Snapshot, queries: Sequence[Sequence[str]]) -> list[list[Dataset]]:
    out = []
    for filters in queries:
        level, keys = _keys(filters)
        out.append(snapshot.find(level, keys))
    return out


def _json_answers(
    snapshot: Snapshot, queries: Sequence[Sequence[str]]
) -> list[list[dict[str, Any]]]:
    out = []
    for filters in queries:
        level, keys = _keys(filters)
        out.append(snapshot.find_json(level, keys))
    return out


def _rows_snapshot(lk: lake.Lake) -> Snapshot:
    """The reference: an index over every instance row (the former design, kept for a
    grant's cohorts), here scoped to every instance of the catalog."""
    uids = [r[0] for r in lk.sql("SELECT SOPInstanceUID FROM instances").fetchall()]
    return Snapshot(lk.tables, lk.version, members=[(lk.version, uids)])


@pytest.fixture
def three_files(tmp_path: Path) -> lake.Lake:
    lk = lake.init(tmp_path / "lake", vault=tmp_path / "vault")
    for start in range(0, 3 * PER_COMMIT, PER_COMMIT):
        lk.tables.append(INSTANCES, list(synthetic_rows(PER_COMMIT, start=start)))
    lk.refresh()
    return lk


def _names_holding(files: Sequence[str], study: str) -> set[str]:
    """The names of the data files holding instances of ``study`` (read from the rows)."""
    rows = duckdb.execute(
        f"SELECT DISTINCT parse_filename(filename) FROM read_parquet({list(files)!r}, "
        f"filename = true) WHERE StudyInstanceUID = '{study}'").fetchall()
    return {r[0] for r in rows}


def _spoil(files: Sequence[str]) -> None:
    """Overwrite data files with bytes no reader can parse (any read of them fails)."""
    for path in files:
        Path(path).write_bytes(b"not a Parquet file")


def test_study_series_patient_levels_never_read_the_instance_table(
    three_files: lake.Lake, tmp_path: Path
) -> None:
    """With every data file of ``instances`` spoilt (only the Delta log and the summaries
    readable), the index still builds and answers PATIENT, STUDY and SERIES queries (C-FIND,
    and QIDO-RS with its default attributes, PatientName included) exactly as an index over
    every instance row did: those levels are answered from the summaries."""
    from lake.web._qido import search

    lk = three_files
    queries = PATIENT_QUERIES + SERIES_QUERIES + STUDY_QUERIES
    rows = _rows_snapshot(lk)
    reference = _answers(rows, queries)
    assert all(reference), "every query matches something"
    # QIDO-RS with PS3.18's default study attributes: PatientName, AccessionNumber,
    # ReferringPhysicianName... come from the stored headers of each study's first instance.
    qido = [("StudyDate", "20150101-20150110")]
    expected = search(rows, "studies", qido, {}, "http://lake")
    assert [e["00100010"] for e in expected[0]][:2] == [
        {"vr": "PN", "Value": [{"Alphabetic": "ANON^000000"}]}] * 2
    _spoil(data_files(lk.tables, lk.tables.open("instances")))
    snapshot = Snapshot(lk.tables, lk.version)
    try:
        assert _answers(snapshot, queries) == reference
        assert search(snapshot, "studies", qido, {}, "http://lake") == expected
    finally:
        snapshot.close()


def test_image_level_reads_only_the_files_of_the_series_asked_for(
    three_files: lake.Lake, tmp_path: Path
) -> None:
    """An IMAGE-level query, a retrieve and WADO-RS's locate for a series of the third
    commit answer with the other two data files spoilt: only the files whose summaries name
    the study or series are read."""
    lk = three_files
    level, keys = _keys(IMAGE_QUERIES[0])
    reference = _rows_snapshot(lk)
    expected = reference.find(level, keys)
    assert len(expected) == 50
    files = data_files(lk.tables, lk.tables.open("instances"))
    snapshot = Snapshot(lk.tables, lk.version)
    try:
        # Study 21 is in the third commit's file: move the first two away.
        third = [f for f in files if Path(f).name in _names_holding(files, "2.25.1000000021")]
        assert len(third) == 1
        _spoil([f for f in files if f not in third])
        assert snapshot.find(level, keys) == expected
        series = [k for k in keys if k.keyword in ("StudyInstanceUID", "SeriesInstanceUID")]
        items = snapshot.retrieve(Level.SERIES, series)
        assert [i.sop_instance_uid for i in items] == [
            i.sop_instance_uid for i in reference.retrieve(Level.SERIES, series)]
        located = snapshot.locate("2.25.1000000021", "2.25.2000000043")
        assert len(located) == 50
        headers = snapshot.headers([i.sop_instance_uid for i in items], "header_dicom")
        assert headers == reference.headers([i.sop_instance_uid for i in items], "header_dicom")
    finally:
        snapshot.close()


def test_answers_equal_an_index_over_every_row(three_files: lake.Lake) -> None:
    """Every level, C-FIND datasets and QIDO-RS JSON, with header keys (PatientName from
    the stored header), computed keys of the levels above, wildcards and ranges: the same
    answers as the index that held every instance row."""
    lk = three_files
    queries = PATIENT_QUERIES + STUDY_QUERIES + SERIES_QUERIES + IMAGE_QUERIES
    reference = _rows_snapshot(lk)
    snapshot = Snapshot(lk.tables, lk.version)
    try:
        assert _answers(snapshot, queries) == _answers(reference, queries)
        assert _json_answers(snapshot, queries) == _json_answers(reference, queries)
        named = _json_answers(snapshot, [STUDY_QUERIES[3]])[0]
        assert [e["00100010"]["Value"] for e in named] == [
            [{"Alphabetic": "ANON^000002"}], [{"Alphabetic": "ANON^000012"}]]
    finally:
        snapshot.close()
        reference.close()


def test_the_index_holds_summaries_not_instance_rows(three_files: lake.Lake) -> None:
    """Memory is bounded by the number of series, not of instances: no table of the index
    has a row per instance."""
    lk = three_files
    snapshot = Snapshot(lk.tables, lk.version)
    try:
        sizes = dict(snapshot._con.execute(
            "SELECT table_name, estimated_size FROM duckdb_tables()").fetchall())
        assert "image" not in sizes
        assert sizes["parts"] == 60  # one per series and data file
        assert max(sizes.values()) <= 60 < 3 * PER_COMMIT
    finally:
        snapshot.close()


def test_new_commits_update_the_counts_of_the_studies_they_touch(three_files: lake.Lake) -> None:
    """A commit adding instances to an existing series and a new study: the cached index
    follows it (reading only the new file's summary) and answers as a fresh index does."""
    lk = three_files
    cache = SnapshotCache(lk.tables)
    try:
        level, keys = _keys(STUDY_QUERIES[0])
        before = cache.current()
        first = before.find(level, keys)
        # 10 more instances of series 2.25.2000000004 (study 2) and a new study 30.
        extra = [dict(r, SOPInstanceUID=f"2.25.39{n:08d}", InstanceNumber=51 + n)
                 for n, r in enumerate(synthetic_rows(10, start=200))]
        lk.tables.append(INSTANCES, extra + list(synthetic_rows(100, start=3_000)))
        lk.refresh()
        after = cache.current()
        assert after is before and after.version == lk.version  # advanced in place
        found = after.find(level, keys)
        counts = {ds.StudyInstanceUID: int(ds.NumberOfStudyRelatedInstances) for ds in found}
        assert counts["2.25.1000000002"] == 110
        assert {ds.StudyInstanceUID: int(ds.NumberOfStudyRelatedInstances) for ds in first}[
            "2.25.1000000002"] == 100
        queries = PATIENT_QUERIES + STUDY_QUERIES + SERIES_QUERIES + IMAGE_QUERIES + [
            ["StudyInstanceUID=2.25.1000000030", "NumberOfStudyRelatedInstances"]]
        fresh = Snapshot(lk.tables, lk.version)
        try:
            assert _answers(after, queries) == _answers(fresh, queries)
            assert _answers(after, queries) == _answers(_rows_snapshot(lk), queries)
        finally:
            fresh.close()
    finally:
        cache.close()


def test_real_files_answer_as_before(
    lk: lake.Lake, vault_dir: Path, samples: Path, ct_folder: Path
) -> None:
    """Real DICOM (pydicom's test files and a generated CT series), ingested through the
    lake: every study, series and instance answers as the index over every row did."""
    lk.ingest([str(ct_folder)], vault=vault_dir, scheduler="sync", batch_size=4)
    lk.ingest([str(samples)], vault=vault_dir, scheduler="sync")
    lk.refresh()
    queries = [
        ["QueryRetrieveLevel=PATIENT", "PatientID", "NumberOfPatientRelatedInstances"],
        ["StudyInstanceUID", "StudyDate", "StudyTime", "ModalitiesInStudy", "PatientName",
         "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances", "SOPClassesInStudy",
         "AccessionNumber", "StudyDescription"],
        ["QueryRetrieveLevel=SERIES", "SeriesInstanceUID", "Modality", "SeriesDescription",
         "SeriesNumber", "NumberOfSeriesRelatedInstances", "BodyPartExamined"],
        ["QueryRetrieveLevel=IMAGE", "SOPInstanceUID", "SOPClassUID", "InstanceNumber",
         "ImageType"],
    ]
    reference = _rows_snapshot(lk)
    snapshot = Snapshot(lk.tables, lk.version)
    try:
        answers = _answers(snapshot, queries)
        assert all(answers)
        assert answers == _answers(reference, queries)
        assert _json_answers(snapshot, queries) == _json_answers(reference, queries)
    finally:
        snapshot.close()
        reference.close()


def _disagreeing(sop: int, study: str, series: str, sex: str | None, age: str | None,
                 name: str) -> dict[str, Any]:
    row = next(synthetic_rows(1))
    return dict(row, SOPInstanceUID=f"2.25.3{sop:09d}", StudyInstanceUID="2.25.1000000777",
                SeriesInstanceUID="2.25.2000000777", PatientID="P000777",
                StudyDescription=study, SeriesDescription=series, PatientSex=sex,
                PatientAge=age, InstanceNumber=sop,
                header_json=json.dumps({"00100010": {"vr": "PN",
                                                     "Value": [{"Alphabetic": name}]}}))


# Two instances of one study and series that disagree: the representative (lowest
# SOPInstanceUID) has no PatientAge.
_FIRST = _disagreeing(1, "MR HEAD ONE", "AX T1", "F", None, "ANON^ONE")
_SECOND = _disagreeing(2, "MR HEAD TWO", "AX T2", "M", "040Y", "ANON^TWO")
_DISAGREEING_QUERIES = [
    ["QueryRetrieveLevel=PATIENT", "PatientID=P000777", "PatientSex", "PatientName"],
    ["StudyInstanceUID=2.25.1000000777", "StudyDescription", "PatientName", "PatientSex",
     "PatientAge", "PatientID", "StudyDate", "NumberOfStudyRelatedInstances"],
    ["QueryRetrieveLevel=SERIES", "SeriesInstanceUID=2.25.2000000777", "SeriesDescription",
     "StudyDescription", "PatientSex", "NumberOfSeriesRelatedInstances"],
]


@pytest.mark.parametrize("layout", ["files, first one first", "files, second one first",
                                    "one file, first row first", "one file, second row first",
                                    "compacted"])
def test_a_study_whose_instances_disagree_answers_from_its_representative(
    tmp_path: Path, layout: str
) -> None:
    """Review N1: every attribute of a PATIENT, STUDY or SERIES answer comes from the one
    representative instance (the lowest SOPInstanceUID), catalog columns as well as header
    attributes: one answer never mixes the values of instances that disagree, and it does
    not change with the order of the data files, of the rows in a file, or after
    compaction. The same holds for an index scoped to chosen instances (a grant's cohorts)."""
    from lake.steward import compact

    lk = lake.init(tmp_path / "lake", vault=tmp_path / "vault")
    commits = {
        "files, first one first": [[_FIRST], [_SECOND]],
        "files, second one first": [[_SECOND], [_FIRST]],
        "one file, first row first": [[_FIRST, _SECOND]],
        "one file, second row first": [[_SECOND, _FIRST]],
        "compacted": [[_SECOND], [_FIRST]],
    }[layout]
    for rows in commits:
        lk.tables.append(INSTANCES, rows)
    if layout == "compacted":
        compact(lk)
    lk.refresh()
    for snapshot in (Snapshot(lk.tables, lk.version), _rows_snapshot(lk)):
        try:
            patient, study, series = _json_answers(snapshot, _DISAGREEING_QUERIES)
            assert [a["00100040"]["Value"] for a in patient + study + series] == [["F"]] * 3
            assert patient[0]["00100010"]["Value"] == [{"Alphabetic": "ANON^ONE"}]
            (found,) = study
            assert found["00081030"]["Value"] == ["MR HEAD ONE"]
            assert found["00100010"]["Value"] == [{"Alphabetic": "ANON^ONE"}]
            assert "Value" not in found["00101010"]  # the representative has no PatientAge
            assert found["00201208"]["Value"] == [2]
            assert series[0]["0008103E"]["Value"] == ["AX T1"]
            assert series[0]["00081030"]["Value"] == ["MR HEAD ONE"]
            datasets = _answers(snapshot, _DISAGREEING_QUERIES)
            assert [str(ds.PatientSex) for level in datasets for ds in level] == ["F"] * 3
            assert str(datasets[1][0].StudyDescription) == "MR HEAD ONE"
            assert str(datasets[1][0].PatientName) == "ANON^ONE"
            assert str(datasets[2][0].SeriesDescription) == "AX T1"
        finally:
            snapshot.close()
