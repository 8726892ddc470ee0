"""lake.catalog._bloom.BloomIndex: the files the Parquet Bloom filters let through for a value
are exactly those DuckDB's own reading of the filters lets through, every file holding the
value among them; a row group without a usable filter keeps its file."""

from __future__ import annotations

import shutil
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import lake
from lake.catalog._bloom import BloomIndex, _header_size
from lake.catalog._layout import BLOOM_COLUMNS
from lake.catalog._summary import data_files
from lake.query import InstanceLookup


def _files(lk: lake.Lake) -> list[str]:
    return data_files(lk.tables, lk.tables.open("instances"))


def _list(files: list[str]) -> str:
    return "[" + ", ".join(f"'{f}'" for f in files) + "]"


def test_candidates_are_the_files_duckdb_reads(several: lake.Lake) -> None:
    files = _files(several)
    assert len(files) > 3
    con = duckdb.connect()
    for column in BLOOM_COLUMNS["instances"]:
        index = BloomIndex(files, column)
        assert not index._unfiltered, column  # every row group's filter is read
        values = [v for (v,) in con.sql(
            f"SELECT DISTINCT {column} FROM read_parquet({_list(files)}) "
            f"WHERE {column} IS NOT NULL").fetchall()]
        assert len(values) > 1
        for value in [*values, "2.25.0", "", "no such value", "1.2.3.4.5"]:
            probed = {f for f, _, excluded in con.execute(
                f"SELECT * FROM parquet_bloom_probe({_list(files)}, ?, ?)",
                [column, value]).fetchall() if not excluded}
            holding = {f for (f,) in con.execute(
                f"SELECT DISTINCT filename FROM read_parquet({_list(files)}) "
                f"WHERE {column} = ?", [value]).fetchall()}
            got = index.candidates([value])
            assert set(got) == probed, (column, value)
            assert holding <= set(got), (column, value)
            assert got == [f for f in files if f in got]  # in the order of the files
        assert set(index.candidates(values)) == {
            f for (f,) in con.sql(f"SELECT DISTINCT filename FROM read_parquet("
                                  f"{_list(files)}) WHERE {column} IS NOT NULL").fetchall()}


def test_a_row_group_without_a_usable_filter_keeps_its_file(several: lake.Lake,
                                                            tmp_path: Path) -> None:
    source = _files(several)[0]
    uid = str(pq.read_table(source, columns=["SOPInstanceUID"])[0][0])
    # No filter at all (pyarrow writes none).
    plain = str(tmp_path / "plain.parquet")
    pq.write_table(pq.read_table(source), plain)
    # A filter whose bits were lost: its row group's own values fail it.
    spoiled = str(tmp_path / "spoiled.parquet")
    shutil.copy(source, spoiled)
    chunk = pq.read_metadata(spoiled).row_group(0).column(
        pq.read_schema(spoiled).names.index("SOPInstanceUID"))
    assert chunk.bloom_filter_offset is not None
    with open(spoiled, "r+b") as stream:
        stream.seek(chunk.bloom_filter_offset)
        blob = stream.read(chunk.bloom_filter_length)
        size = _header_size(blob)
        assert size is not None
        stream.seek(chunk.bloom_filter_offset + size)
        stream.write(bytes(len(blob) - size))
    # A file written before the column existed holds it as NULL: equal to nothing.
    older = str(tmp_path / "older.parquet")
    pq.write_table(pa.table({"PatientID": ["p"]}), older)
    index = BloomIndex([plain, spoiled, older, source], "SOPInstanceUID")
    assert index.candidates(["2.25.0"]) == [plain, spoiled]
    assert index.candidates([uid]) == [plain, spoiled, source]


@pytest.mark.parametrize("blob", [
    b"",
    bytes.fromhex("16") + bytes(40),  # another field type
    bytes.fromhex("1540" + "1c1c0000" * 3 + "00") + bytes(31),  # numBytes 32, 31 follow
    bytes.fromhex("1540" + "1c1c0000" + "1c2c0000" + "1c1c0000" + "00") + bytes(32),  # hash
    bytes.fromhex("15ffffffffff01") + bytes(40),  # varint too long
])
def test_other_filter_headers_are_not_read(blob: bytes) -> None:
    assert _header_size(blob) is None


def test_a_filter_header_is_read() -> None:
    assert _header_size(bytes.fromhex("1540" + "1c1c0000" * 3 + "00") + bytes(32)) == 15


def test_the_second_lookup_opens_only_the_files_that_may_hold_it(several: lake.Lake) -> None:
    uids = [u for (u,) in several.sql("SELECT SOPInstanceUID FROM instances").fetchall()]
    with InstanceLookup(several.tables) as lookup:
        assert lookup._candidates(uids[0]) == _files(several)  # the first: all of them
        assert lookup.row("2.25.0") is None
        assert lookup._blooms.index("SOPInstanceUID") is not None
        for uid in uids:
            want = several.sql(
                f"SELECT * FROM instances WHERE SOPInstanceUID = '{uid}'").fetchall()
            got = lookup.row(uid)
            assert got is not None and tuple(got.values()) == want[0]
            assert len(lookup._candidates(uid)) < len(_files(several))


PINNED = {
    "SELECT * FROM instances WHERE SOPInstanceUID = '1.2'": ("SOPInstanceUID", ["1.2"]),
    "SELECT * FROM instances WHERE '1.2' = sopinstanceuid": ("SOPInstanceUID", ["1.2"]),
    "SELECT i.Modality FROM instances AS i WHERE i.SeriesInstanceUID IN ('a', 'b') "
    "AND Modality = 'CT' ORDER BY 1 LIMIT 3": ("SeriesInstanceUID", ["a", "b"]),
    "SELECT PatientID, count(*) FROM instances WHERE StudyDate IS NULL AND "
    "\"PatientID\" = 'p''q' GROUP BY 1": ("PatientID", ["p'q"]),
    "SELECT count(*) FROM main.instances WHERE PatientID = 'p'": None,  # not the view
    "SELECT * FROM instances WHERE SOPInstanceUID = '1.2' OR Modality = 'CT'": None,
    "SELECT * FROM instances WHERE SOPInstanceUID NOT IN ('1.2')": None,
    "SELECT * FROM instances WHERE SOPInstanceUID <> '1.2'": None,
    "SELECT * FROM instances WHERE SOPInstanceUID = 12": None,
    "SELECT * FROM instances WHERE SOPInstanceUID = '1.2' COLLATE nocase": None,
    "SELECT * FROM instances WHERE lower(SOPInstanceUID) = '1.2'": None,
    "SELECT * FROM instances WHERE Modality = 'CT'": None,
    "SELECT * FROM instances": None,
    "SELECT * FROM instances a JOIN instances b USING (SeriesInstanceUID) "
    "WHERE a.SOPInstanceUID = '1.2'": None,
    "SELECT * FROM instances WHERE SOPInstanceUID = '1.2' AND SeriesInstanceUID IN "
    "(SELECT SeriesInstanceUID FROM instances)": None,
    "SELECT *, (SELECT 1) FROM instances WHERE SOPInstanceUID = '1.2'": None,
    "WITH instances AS (SELECT '1.2' AS SOPInstanceUID) SELECT * FROM instances "
    "WHERE SOPInstanceUID = '1.2'": None,
    "SELECT * FROM series WHERE SeriesInstanceUID = '1.2'": None,
    "SELECT * FROM instances WHERE SOPInstanceUID = '1.2' UNION ALL "
    "SELECT * FROM instances WHERE SOPInstanceUID = '1.3'": None,
    "SELECT * FROM instances WHERE SOPInstanceUID = '1.2'; SELECT 1": None,
    "SELECT * FROM instances x WHERE y.SOPInstanceUID = '1.2'": None,
    "SELECT * FROM instances USING SAMPLE 10 WHERE SOPInstanceUID = '1.2'": None,
    "SELECT count(*) FROM instances USING SAMPLE 5": None,
    "SELECT count(*) FROM series USING SAMPLE 10 PERCENT (bernoulli, 1)": None,
    "SELECT count(*) FROM instances TABLESAMPLE 50 PERCENT (bernoulli, 7) "
    "WHERE PatientID = 'abc'": None,
    "SELECT count(*) FROM instances AS t(SOPInstanceUID) WHERE SOPInstanceUID = 'abc'": None,
    "not sql at all": None,
}


@pytest.mark.parametrize("query", list(PINNED))
def test_pinned_values_are_read_from_duckdbs_parse(query: str) -> None:
    from lake.catalog._query import pinned_values

    got = pinned_values(duckdb.connect(), query, BLOOM_COLUMNS["instances"])
    assert got == PINNED[query]


def _queries(lk: lake.Lake) -> list[str]:
    rows = lk.sql("SELECT SOPInstanceUID, SeriesInstanceUID, StudyInstanceUID, PatientID "
                  "FROM instances ORDER BY 1").fetchall()
    sop, series, study, patient = rows[len(rows) // 2]
    return [
        f"SELECT * FROM instances WHERE SOPInstanceUID = '{sop}'",
        f"SELECT * FROM instances WHERE SOPInstanceUID IN ('{sop}', '{rows[0][0]}', '2.25.0')",
        "SELECT * FROM instances WHERE SOPInstanceUID = '2.25.0'",
        f"SELECT SOPInstanceUID, StudyTime FROM instances i WHERE i.SeriesInstanceUID = "
        f"'{series}' ORDER BY 1",
        f"SELECT count(*), sum(size_bytes) FROM instances WHERE StudyInstanceUID = '{study}'",
        f"SELECT Modality, count(*) FROM instances WHERE PatientID = '{patient}' GROUP BY 1 "
        "ORDER BY 1",
        f"SELECT * FROM instances WHERE PatientID = '{patient}' AND SOPInstanceUID <> '{sop}' "
        "ORDER BY SOPInstanceUID LIMIT 2",
    ]


def test_sql_pinning_a_uid_reads_fewer_files_and_answers_the_same(several: lake.Lake) -> None:
    """From the second query pinning a column, ``instances`` reads only the files its Bloom
    filters let through: every answer equals the one over every file (the catalog's own
    connection, which reads them all), with the same columns."""
    catalog = several.catalog()
    everything = len(_files(several))
    read = []
    for _ in range(2):
        for query in _queries(several):
            got = catalog.sql(query)
            want = catalog.con.sql(query)
            assert got.columns == want.columns and got.types == want.types
            rows = want.fetchall()
            assert got.fetchall() == rows, query
            body = catalog._files_for(query)
            assert body is not None
            read.append(body.count(".parquet"))
    assert max(read) <= everything
    assert read[0] < everything and read[2] == 0  # one UID: fewer files; an absent one: none
    some = [r for q in _queries(several) for r in catalog.con.sql(q).fetchall()]
    assert some  # the queries found rows


def test_sampled_and_renamed_queries_read_every_file(several: lake.Lake) -> None:
    """Sampling (whose size DuckDB serialises as a typed value) and a column-alias list
    (``instances AS t(SOPInstanceUID)`` names the first column so) are not pinned: the
    answers are those over every file, also once the filters are loaded."""
    catalog = several.catalog()
    (first,) = catalog.con.sql("SELECT * FROM instances LIMIT 0").columns[:1]
    ((value,),) = catalog.con.sql(f'SELECT "{first}" FROM instances LIMIT 1').fetchall()
    pinning = _queries(several)[0]
    queries = [
        "SELECT count(*) FROM series USING SAMPLE 5 ROWS",
        "SELECT count(*) FROM instances USING SAMPLE 5 ROWS",
        f"SELECT count(*) FROM instances AS t(SOPInstanceUID) WHERE SOPInstanceUID = '{value}'",
    ]
    for _ in range(2):
        catalog.sql(pinning).fetchall()  # (the second round has the filters loaded)
        for query in queries:
            assert catalog.sql(query).fetchall() == catalog.con.sql(query).fetchall(), query
            assert catalog._files_for(query) is None
    assert catalog.con.sql(queries[-1]).fetchall() != [(0,)]


def test_a_relation_keeps_its_files_after_other_queries(several: lake.Lake) -> None:
    catalog = several.catalog()
    first, second = _queries(several)[:2]
    catalog.sql(first).fetchall()  # (the second query builds the filters)
    relation = catalog.sql(first)
    catalog.sql(second).fetchall()
    catalog.sql("SELECT count(*) FROM instances").fetchall()
    assert relation.fetchall() == catalog.con.sql(first).fetchall() != []


def test_after_a_user_defines_instances_every_file_is_read(several: lake.Lake) -> None:
    catalog = several.catalog()
    query = _queries(several)[0]
    catalog.sql(query).fetchall()
    assert catalog._files_for(query) is not None
    catalog.sql("CREATE OR REPLACE TEMP VIEW instances AS SELECT * FROM instances_empty "
                "WHERE false").fetchall()
    assert catalog._files_for(query) is None
    assert catalog.sql(query).fetchall() == []


def test_the_cursors_keep_the_cache_of_footers(several: lake.Lake) -> None:
    """The Parquet metadata cache is the database's, so a pinned query's cursor does not
    parse every footer again (at 10M compacted that had cost 117 against 13 ms)."""
    cursor = several.catalog().con.cursor()
    assert cursor.sql("SELECT current_setting('parquet_metadata_cache')").fetchall() == [
        (True,)]


def test_a_damaged_footer_is_duckdbs_error_not_a_traceback(several: lake.Lake) -> None:
    """The filters of a damaged file cannot be read (pyarrow raises OSError here; an
    ArrowInvalid, a ValueError, is caught the same way): the query reads every file, and
    DuckDB reports the damage as it would without the filters."""
    catalog = several.catalog()
    query = _queries(several)[0]
    catalog.sql(query).fetchall()  # (the second pinning query loads the filters)
    damaged = Path(_files(several)[0])
    data = damaged.read_bytes()
    damaged.write_bytes(data[:-12] + b"\0" * 8 + data[-4:])  # the footer's length and more
    with pytest.raises((duckdb.Error, lake.QueryError)):
        catalog.sql(query).fetchall()
    with InstanceLookup(several.tables) as lookup, pytest.raises((duckdb.Error, lake.QueryError)):
        lookup.row("2.25.0")
        lookup.row("2.25.0")
