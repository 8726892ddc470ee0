"""Cohorts: a saved query, the catalog version it ran on, and frozen members with hashes."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

import lake
from lake.export import (
    COHORTS,
    create_cohort,
    list_cohorts,
    load_cohort,
    resolve_cohort,
)
from tests.series import write_ct_series

CT_QUERY = "SELECT SeriesInstanceUID FROM series WHERE Modality = 'CT'"


@pytest.fixture
def populated(lk: lake.Lake, vault_dir: Path, samples: Path, ct_folder: Path) -> lake.Lake:
    lk.ingest([str(samples), str(ct_folder)], vault=vault_dir, scheduler="sync")
    return lk


def test_create_freezes_query_version_and_members_with_hashes(populated: lake.Lake) -> None:
    cohort = create_cohort(populated, "ct", CT_QUERY, description="all CT")
    assert cohort.name == "ct" and cohort.query == CT_QUERY
    assert cohort.catalog_version == populated.version
    rows = [
        r[1:]
        for r in populated.sql(
            "SELECT Modality, SeriesInstanceUID, SOPInstanceUID, pixel_hash, header_dicom "
            "FROM instances ORDER BY SeriesInstanceUID, SOPInstanceUID"
        ).fetchall()
        if r[0] == "CT"
    ]
    assert len(rows) == 13  # the generated 12-slice series and CT_small.dcm
    assert [(m.series_uid, m.sop_uid, m.pixel_hash) for m in cohort.members] == [
        (r[0], r[1], r[2]) for r in rows
    ]
    assert [m.header_sha256 for m in cohort.members] == [
        hashlib.sha256(r[3]).hexdigest() for r in rows
    ]
    assert all(populated.blobs.exists(m.pixel_hash) for m in cohort.members if m.pixel_hash)
    assert len(cohort.series) == 2
    assert cohort.profiles == ("basic",)

    saved = load_cohort(populated, "ct")
    assert saved.members == cohort.members
    assert saved.catalog_version == cohort.catalog_version
    assert saved.description == "all CT" and saved.created_at is not None


def test_saved_in_a_delta_table_one_row_per_cohort(populated: lake.Lake) -> None:
    create_cohort(populated, "ct", CT_QUERY)
    create_cohort(populated, "mr", "SELECT SeriesInstanceUID FROM series WHERE Modality = 'MR'")
    table = populated.tables.open(COHORTS.name).to_pyarrow_dataset().to_table()
    assert sorted(table.column("name").to_pylist()) == ["ct", "mr"]
    assert table.schema.names == [c.name for c in COHORTS.columns]
    summaries = list_cohorts(populated)
    assert [s.name for s in summaries] == ["ct", "mr"]
    assert summaries[0].instance_count == 13 and summaries[0].series_count == 2


def test_name_is_immutable_unless_replaced(populated: lake.Lake) -> None:
    first = create_cohort(populated, "ct", CT_QUERY)
    with pytest.raises(lake.ExportError, match=r"exists already.*replace=True"):
        create_cohort(populated, "ct", "SELECT SeriesInstanceUID FROM series")
    assert load_cohort(populated, "ct").members == first.members
    history_before = populated.tables.open(COHORTS.name).version()

    narrower = CT_QUERY + " AND instance_count > 1"
    replaced = create_cohort(populated, "ct", narrower, replace=True)
    assert load_cohort(populated, "ct").query == narrower
    assert len(replaced.members) == 12
    assert [s.name for s in list_cohorts(populated)] == ["ct"]
    # The earlier definition stays readable in the table's history.
    old = populated.tables.open(COHORTS.name, history_before).to_pyarrow_dataset().to_table()
    assert old.column("query").to_pylist() == [CT_QUERY]


def test_instance_level_cohorts(populated: lake.Lake) -> None:
    query = "SELECT SOPInstanceUID FROM instances WHERE Modality = 'CT' AND InstanceNumber <= 3;"
    cohort = resolve_cohort(populated, query)
    rows = populated.sql("SELECT SOPInstanceUID, Modality, InstanceNumber FROM instances").fetchall()
    expected = sorted(uid for uid, modality, n in rows if modality == "CT" and n is not None and n <= 3)
    assert sorted(m.sop_uid for m in cohort.members) == expected
    assert len(expected) == 4  # three slices of the generated series and CT_small
    assert cohort.name is None and cohort.query == query.rstrip(";")


def test_a_trailing_comment_does_not_break_the_query(populated: lake.Lake) -> None:
    cohort = resolve_cohort(populated, CT_QUERY + " -- CT only")
    assert len(cohort.members) == 13


def test_members_are_pinned_to_the_version(
    populated: lake.Lake, vault_dir: Path, tmp_path: Path
) -> None:
    cohort = create_cohort(populated, "ct", CT_QUERY)
    write_ct_series(tmp_path / "more", 4, patient_id="PAT-0002")
    populated.ingest([str(tmp_path / "more")], vault=vault_dir, scheduler="sync")
    assert populated.version > cohort.catalog_version
    assert load_cohort(populated, "ct").members == cohort.members
    assert len(resolve_cohort(populated, CT_QUERY).members) == 17
    again = resolve_cohort(populated, CT_QUERY, as_of=cohort.catalog_version)
    assert again.members == cohort.members


@pytest.mark.parametrize(
    ("query", "error", "match"),
    [
        ("SELECT Modality FROM series", lake.QueryError, "SeriesInstanceUID column"),
        ("SELEC SeriesInstanceUID FROM series", lake.QueryError, "query failed"),
        ("  ;  ", lake.QueryError, "empty"),
        ("SELECT SeriesInstanceUID FROM series WHERE Modality = 'XX'", lake.ExportError,
         "selects no instance"),
    ],
)
def test_bad_queries_are_refused_with_a_reason(
    populated: lake.Lake, query: str, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        create_cohort(populated, "bad", query)
    assert list_cohorts(populated) == []


def test_unknown_cohort_names_the_saved_ones(populated: lake.Lake) -> None:
    assert list_cohorts(populated) == []
    with pytest.raises(lake.ExportError, match="none yet"):
        load_cohort(populated, "ct")
    create_cohort(populated, "ct", CT_QUERY)
    with pytest.raises(lake.ExportError, match=r"saved cohorts: ct"):
        load_cohort(populated, "mr")


@given(st.text(min_size=1, max_size=80))
def test_names_that_could_break_paths_are_refused(name: str) -> None:
    from lake.export._cohort import _NAME, _check_name

    if _NAME.match(name):
        _check_name(name)
        assert "/" not in name and "\\" not in name and not name.startswith(".")
        assert len(name) <= 64 and name.isascii()
    else:
        with pytest.raises(lake.ExportError, match="invalid cohort name"):
            _check_name(name)


_QUERIES = (
    "SELECT SeriesInstanceUID FROM series",
    "SELECT SeriesInstanceUID FROM series WHERE SeriesDate IS NULL",
    CT_QUERY,
    "SELECT SOPInstanceUID FROM instances WHERE InstanceNumber < 5",
)


@pytest.mark.parametrize("commits", [1, 2])
def test_members_are_the_same_without_the_date_condition(
    lk: lake.Lake, vault_dir: Path, samples: Path, ct_folder: Path,
    monkeypatch: pytest.MonkeyPatch, commits: int,
) -> None:
    """resolve_cohort skips the StudyDate condition (a query of its own) when the instances
    rows are one row group of one data file, where it can prune nothing, and reads the
    member rows from that file with pyarrow (DuckDB runs the cohort query for its keys
    alone): the members are the same as DuckDB's member query with the condition, undated
    instances and instances without pixels included, for series and instance queries. With
    two data files the condition and the member query still run."""
    from lake.export import _cohort

    sources = [str(samples), str(ct_folder)]
    for part in ([sources] if commits == 1 else [sources[:1], sources[1:]]):
        lk.ingest(part, vault=vault_dir, scheduler="sync")
    assert lk.sql("SELECT count(*) FROM instances WHERE StudyDate IS NULL").fetchall()[0][0]
    assert _cohort._one_row_group(lk, lk.tables.data_files("instances")) is (commits == 1)
    assert _cohort._one_row_group(lk, None) is False  # an as_of= version: not looked at
    ran: list[str] = []
    bounds = _cohort._date_bounds

    def spy(lake_: lake.Lake, query: str, version: int) -> str:
        ran.append(query)
        return bounds(lake_, query, version)

    monkeypatch.setattr(_cohort, "_date_bounds", spy)
    read: list[pa.Table | None] = []
    one_file = _cohort._rows_holding

    def read_spy(*args: Any) -> pa.Table | None:
        read.append(one_file(*args))
        return read[-1]

    monkeypatch.setattr(_cohort, "_rows_holding", read_spy)
    assert lk.sql("SELECT count(*) FROM instances WHERE pixel_hash IS NULL").fetchall()[0][0]
    for query in _QUERIES:
        skipped = resolve_cohort(lk, query)
        assert bool(ran) is (commits == 2 and "SeriesInstanceUID" in query), query
        assert len(read) == (commits == 1) and all(t is not None for t in read), query
        read.clear()
        with monkeypatch.context() as forced:
            forced.setattr(_cohort, "_one_row_group", lambda *_: False)
            bounded = resolve_cohort(lk, query)
        assert skipped == bounded and len(skipped.members) > 0, query
        ran.clear()


@pytest.mark.parametrize("query", [
    "SELECT [SeriesInstanceUID] AS SeriesInstanceUID FROM series",
    "SELECT SeriesInstanceUID::BLOB AS SeriesInstanceUID FROM series",
    "SELECT 1 AS SOPInstanceUID",
    "SELECT NULL AS SeriesInstanceUID",
])
def test_a_key_that_is_no_string_fails_alike_on_a_one_file_lake(
    populated: lake.Lake, monkeypatch: pytest.MonkeyPatch, query: str,
) -> None:
    """A key column of another type than text is refused the same way whether the member
    rows would come from the one data file (pyarrow) or from DuckDB's member query."""
    from lake.export import _cohort

    assert _cohort._one_row_group(populated, populated.tables.data_files("instances"))
    outcomes = []
    for forced in (False, True):
        with monkeypatch.context() as patch:
            if forced:
                patch.setattr(_cohort, "_one_row_group", lambda *_: False)
            with pytest.raises(lake.LakeError) as raised:
                resolve_cohort(populated, query)
            outcomes.append((type(raised.value), str(raised.value)))
    assert outcomes[0] == outcomes[1]



def test_a_data_file_gone_before_the_one_file_read_falls_back_to_the_query(
    lk: lake.Lake, vault_dir: Path, ct_folder: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The one-file member read meets a data file removed meanwhile ('lake forget' then
    'lake vacuum' between the keys query and the read) as the member query does: that path
    runs (and says what is wrong), never an internal error from pyarrow."""
    from lake.catalog import DataFiles
    from lake.export import _cohort

    lk.ingest([str(ct_folder)], vault=vault_dir, scheduler="sync")
    expected = resolve_cohort(lk, CT_QUERY)

    def gone(*_: Any) -> pa.Table:
        raise FileNotFoundError("removed meanwhile")

    monkeypatch.setattr(DataFiles, "read", gone)
    read = _cohort._MEMBER_COLUMNS
    assert _cohort._members_of_one_file(lk, CT_QUERY, "SeriesInstanceUID", lk.version,
                                        lk.tables.data_files("instances"), read) is None
    assert _cohort._members_at_once(lk, CT_QUERY, lk.version,
                                    lk.tables.data_files("instances"), read) == (
        "SeriesInstanceUID", None)
    assert resolve_cohort(lk, CT_QUERY) == expected


@pytest.mark.parametrize("query", [
    "SELECT SeriesInstanceUID FROM series",
    "SELECT seriesinstanceuid FROM series",
    "SELECT SOPInstanceUID FROM instances WHERE InstanceNumber < 5",
    "SELECT SeriesInstanceUID, SOPInstanceUID FROM instances WHERE InstanceNumber < 5",
    "SELECT SOPInstanceUID, SeriesInstanceUID FROM instances WHERE InstanceNumber > 2",
    "SELECT SeriesInstanceUID, SeriesInstanceUID FROM series",
    "SELECT NULL::VARCHAR AS SeriesInstanceUID UNION ALL SELECT SeriesInstanceUID FROM series",
    "SELECT SOPInstanceUID, 1 AS SeriesInstanceUID FROM instances",
    "SELECT StudyInstanceUID FROM studies",
    "SELECT SeriesInstanceUID AS seriesinstanceuid FROM series",
    "SELECT SeriesInstanceUID AS \"SeriesInstanceUIDs\" FROM series",
    "SELECT SeriesInstanceUID FROM nowhere",
    "SELECT error('no such thing') AS SeriesInstanceUID FROM series",
    "SELECT SeriesInstanceUID FROM series WHERE FALSE",
    "SELECT 1 AS SOPInstanceUID",
])
def test_the_key_and_its_values_from_one_query_resolve_as_the_key_first(
    populated: lake.Lake, monkeypatch: pytest.MonkeyPatch, query: str,
) -> None:
    """On a one-file lake the cohort query runs once for its key column and that column's
    values (``_members_at_once``): the cohort, or the error (type and message), is the one
    of choosing the key first from the query's columns, then running it for the key's
    values, which is what runs when that one query fails."""
    from lake.export import _cohort

    assert _cohort._one_row_group(populated, populated.tables.data_files("instances"))
    outcomes: list[object] = []
    for forced in (False, True):
        with monkeypatch.context() as patch:
            if forced:
                patch.setattr(_cohort, "_members_at_once", lambda *_: None)
            try:
                outcomes.append(resolve_cohort(populated, query))
            except lake.LakeError as exc:
                outcomes.append((type(exc), str(exc)))
    assert outcomes[0] == outcomes[1]


def test_a_one_file_lake_runs_the_cohort_query_once(
    populated: lake.Lake, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """resolve_cohort on a one-file lake asks DuckDB once (its key and values together),
    not a bind for the key column, then a run for its values."""
    ran: list[str] = []
    for name in ("sql", "_execute"):
        method = getattr(lake.Lake, name)

        def spy(self: lake.Lake, query: str, *args: Any, _method: Any = method,
                _name: str = name, **kwargs: Any) -> Any:
            ran.append(_name)
            return _method(self, query, *args, **kwargs)

        monkeypatch.setattr(lake.Lake, name, spy)
    cohort = resolve_cohort(populated, "SELECT SeriesInstanceUID FROM series")
    assert cohort.members and ran == ["_execute"]
