"""The query index behind C-FIND/C-GET/C-MOVE and QIDO-RS/WADO-RS: one catalog version in DuckDB.

A :class:`Snapshot` holds one table per query level above the instance (``patient``,
``study``, ``series``), each row carrying its attributes, the counts DICOM asks for
(ModalitiesInStudy, NumberOfStudyRelatedInstances, ...), a representative instance (the
lowest SOPInstanceUID) and that instance's patient/study/series header attributes. They are
aggregated from the series summaries written beside each data file at commit time
(:mod:`lake.catalog._summary`), never from instance rows: memory grows with the number of
series, not of instances. IMAGE-level queries read the instance rows of the data files whose
summaries name the study or series asked for, with DuckDB's Parquet reader (row groups
pruned by statistics and Bloom filters). :class:`SnapshotCache` follows the newest version,
reading only the summaries of files added since.
"""

from __future__ import annotations

import bisect
import contextlib
import datetime as dt
import json
import posixpath
import threading
from collections import OrderedDict
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.valuerep import DSfloat

from lake._errors import CatalogError, QueryError
from lake.catalog import INSTANCES, DeltaTables, arrow_dataset
from lake.catalog._scan import duckdb_type
from lake.catalog._summary import (
    REP_HEADER_KEYWORDS,
    SERIES_PARTS,
    data_files,
    parts_sql,
    rep_headers_of,
    summaries_of,
)
from lake.query._match import Key, Level, predicate, python_matcher

__all__ = ["RetrieveItem", "Snapshot", "SnapshotCache", "StoredInstance"]


@dataclass(frozen=True)
class Attr:
    """A column of a level table that answers one DICOM keyword."""

    keyword: str
    kind: str  # uid, string, date, time, int, float, strings


def _kind(column: Any) -> str | None:
    type_ = column.type
    if pa.types.is_list(type_):
        return "strings" if pa.types.is_string(type_.value_type) else None
    if column.sql_cast == "TIME":
        return "time"
    if pa.types.is_date32(type_):
        return "date"
    if pa.types.is_integer(type_):
        return "int"
    if pa.types.is_floating(type_):
        return "float"
    if pa.types.is_string(type_):
        return "uid" if column.name.endswith("UID") else "string"
    return None  # timestamps: answered from the header


_COLUMN_KINDS: dict[str, str] = {}
for _column in INSTANCES.columns:
    _k = _kind(_column)
    if _k is not None and _column.name[0].isupper():
        _COLUMN_KINDS[_column.name] = _k
del _column, _k

_PATIENT = ("PatientID", "PatientSex")
_STUDY = ("StudyInstanceUID", "StudyDate", "StudyTime", "StudyDescription", "PatientAge",
          "PatientWeight", "PatientSize")
_SERIES = ("SeriesInstanceUID", "Modality", "SeriesNumber", "SeriesDate", "SeriesTime",
           "SeriesDescription", "BodyPartExamined", "ProtocolName", "Manufacturer",
           "ManufacturerModelName", "FrameOfReferenceUID")

# Attributes computed per level (name -> kind, SQL aggregate over the image table).
_COMPUTED: dict[Level, dict[str, tuple[str, str]]] = {
    Level.PATIENT: {
        "NumberOfPatientRelatedStudies": ("int", "count(DISTINCT StudyInstanceUID)"),
        "NumberOfPatientRelatedSeries": ("int", "count(DISTINCT SeriesInstanceUID)"),
        "NumberOfPatientRelatedInstances": ("int", "count(*)"),
    },
    Level.STUDY: {
        "ModalitiesInStudy": (
            "strings",
            "list_sort(list_distinct(list(Modality) FILTER (WHERE Modality IS NOT NULL)))",
        ),
        "SOPClassesInStudy": ("strings", "list_sort(list_distinct(list(SOPClassUID)))"),
        "NumberOfStudyRelatedSeries": ("int", "count(DISTINCT SeriesInstanceUID)"),
        "NumberOfStudyRelatedInstances": ("int", "count(*)"),
    },
    Level.SERIES: {
        "NumberOfSeriesRelatedInstances": ("int", "count(*)"),
    },
    Level.IMAGE: {},
}

_INHERITED: dict[Level, tuple[str, ...]] = {
    Level.PATIENT: _PATIENT,
    Level.STUDY: _PATIENT + _STUDY,
    Level.SERIES: _PATIENT + _STUDY + _SERIES,
}

# The levels whose computed attributes a search at a lower level also returns (QIDO-RS).
_ABOVE: dict[Level, tuple[Level, ...]] = {
    Level.PATIENT: (), Level.STUDY: (), Level.SERIES: (Level.STUDY,),
    Level.IMAGE: (Level.SERIES, Level.STUDY),
}

_TABLE = {Level.PATIENT: "patient", Level.STUDY: "study", Level.SERIES: "series",
          Level.IMAGE: "image"}


def _attrs(level: Level) -> dict[str, Attr]:
    if level is Level.IMAGE:
        out = {name: Attr(name, kind) for name, kind in _COLUMN_KINDS.items()}
    else:
        out = {name: Attr(name, _COLUMN_KINDS[name]) for name in _INHERITED[level]}
    for name, (kind, _) in _COMPUTED[level].items():
        out[name] = Attr(name, kind)
    return out


_LEVEL_ATTRS = {level: _attrs(level) for level in Level}

_IMAGE_EXTRA = ("pixel_hash", "pixel_vr", "size_bytes")
_SOURCE_COLUMNS = tuple(dict.fromkeys([*_COLUMN_KINDS, *_IMAGE_EXTRA, "SOPInstanceUID"]))

_HEADER_SCAN_MAX = 100_000
"""Candidates at most whose stored headers a query matching non-catalog attributes reads."""

SERVER_FILLED = frozenset({"RetrieveAETitle", "InstanceAvailability"})
"""Return keys the server fills in itself (not from the catalog or a header)."""


def _q(name: str) -> str:
    return '"' + name + '"'


def _image_select(
    source: str, src: int = 0, where: str = "", *, file: str = "_file", row: str = "_row"
) -> str:
    cols = []
    for name in _COLUMN_KINDS:
        column = next(c for c in INSTANCES.columns if c.name == name)
        cols.append(f"CAST({_q(name)} AS TIME) AS {_q(name)}" if column.sql_cast else _q(name))
    cols.extend(_q(c) for c in _IMAGE_EXTRA)
    return (
        f"SELECT {', '.join(cols)}, SOPInstanceUID AS _rep, {int(src)} AS _src, "
        f"{file} AS _file, {row} AS _row FROM {source}"
        + (f" WHERE {where}" if where else "")
    )


_EMPTY_DDL = ", ".join(
    [f"{_q(c.name)} {duckdb_type(c.type)}" for c in INSTANCES.columns]
    + ["filename VARCHAR", "file_row_number BIGINT"]
)
"""The ``instances`` columns, typed, plus what DuckDB's Parquet reader adds (file, row)."""

_PRUNING = ("StudyInstanceUID", "SeriesInstanceUID")
"""Keys whose values select the data files to read by the series summaries."""

_PART_COLUMNS = tuple(dict.fromkeys([
    "data_file", "SeriesInstanceUID", *_INHERITED[Level.SERIES],
    "instance_count", "first_sop", "modalities", "sop_classes",
]))
"""The columns of the series parts a snapshot keeps."""

_REP_KEYWORDS = frozenset(REP_HEADER_KEYWORDS)

_LOCATED_KEPT = 200_000
"""Instances whose place (data file, row) a snapshot remembers for reading their headers."""


def _file_list(files: Sequence[str]) -> str:
    return "[" + ", ".join("'" + f.replace("'", "''") + "'" for f in files) + "]"


def _read_instances(files: Sequence[str], *, rows: bool = False) -> str:
    """DuckDB's Parquet reader over ``files`` (with each row's file and row number)."""
    flag = "true" if rows else "false"
    return (f"read_parquet({_file_list(files)}, union_by_name = true, hive_partitioning = "
            f"false, filename = true, file_row_number = {flag})")


def _level_from_image_sql(level: Level) -> str:
    """A level table aggregated from the in-memory image table (a scoped snapshot)."""
    computed = {name: sql for name, (_, sql) in _COMPUTED[level].items()}
    select = _level_sql(level, "image", computed, order="SOPInstanceUID", file="_file")
    return f"CREATE OR REPLACE TABLE {_TABLE[level]} AS {select}"


def _level_sql(level: Level, source: str, computed: Mapping[str, str], *, order: str,
               file: str, where: str = "") -> str:
    """The SELECT of a level table over ``source``: per key, the ``computed`` aggregates and
    every inherited attribute of the representative, the row with the lowest ``order`` (the
    lowest SOPInstanceUID), with its ``file``.

    The attributes are the representative's, NULL included, whatever the order of the rows:
    one answer never mixes the values of instances that disagree (arg_min_null: also the
    file of the very first instance when its name is unknown). One arg_min_null of a struct
    costs half the CPU of one per column.
    """
    key = level.unique_key
    times = {c.name for c in INSTANCES.columns if c.sql_cast}
    inherited = [name for name in _INHERITED[level] if name != key]
    fields = [f"{_q(name)} := {_q(name)}" for name in inherited] + [f"_rep_file := {file}"]
    grouped = ", ".join([
        _q(key),
        *(f"{sql} AS {_q(name)}" for name, sql in computed.items()),
        f"min({order}) AS _rep",
        f"arg_min_null(struct_pack({', '.join(fields)}), {order}) AS _of_rep",
    ])
    condition = f"{_q(key)} IS NOT NULL" + (f" AND {where}" if where else "")
    cols = [_q(key)]
    for name in inherited:
        value = f"_of_rep.{_q(name)}"
        cols.append(f"CAST({value} AS TIME) AS {_q(name)}" if name in times
                    else f"{value} AS {_q(name)}")
    cols += [_q(name) for name in computed]
    cols += ["_rep", "_of_rep._rep_file AS _rep_file"]
    return (f"SELECT {', '.join(cols)} FROM (SELECT {grouped} FROM {source} "
            f"WHERE {condition} GROUP BY {_q(key)})")


# The computed attributes of each level from series parts (lake/catalog/_summary.py).
_COMPUTED_FROM_PARTS: dict[Level, dict[str, str]] = {
    Level.PATIENT: {
        "NumberOfPatientRelatedStudies": "count(DISTINCT StudyInstanceUID)",
        "NumberOfPatientRelatedSeries": "count(DISTINCT SeriesInstanceUID)",
        "NumberOfPatientRelatedInstances": "CAST(sum(instance_count) AS BIGINT)",
    },
    Level.STUDY: {
        "ModalitiesInStudy": "list_sort(list_distinct(flatten(list(modalities))))",
        "SOPClassesInStudy": "list_sort(list_distinct(flatten(list(sop_classes))))",
        "NumberOfStudyRelatedSeries": "count(DISTINCT SeriesInstanceUID)",
        "NumberOfStudyRelatedInstances": "CAST(sum(instance_count) AS BIGINT)",
    },
    Level.SERIES: {
        "NumberOfSeriesRelatedInstances": "CAST(sum(instance_count) AS BIGINT)",
    },
}


def _level_from_parts_sql(level: Level, where: str = "") -> str:
    """The SELECT of a level table from the series parts (``where``: only some keys).

    A part's attributes are its first instance's (lake/catalog/_summary.py), so the part with
    the lowest ``first_sop`` gives the representative's."""
    return _level_sql(level, "parts", _COMPUTED_FROM_PARTS[level], order="first_sop",
                      file="data_file", where=where)


# --- rendering typed values as DICOM ----------------------------------------------------


def _render(kind: str, value: Any) -> Any:
    if value is None:
        return None
    if kind == "date":
        return value.strftime("%Y%m%d") if isinstance(value, dt.date) else str(value)
    if kind == "time":
        if isinstance(value, dt.time):
            text = value.strftime("%H%M%S")
            return text + (f".{value.microsecond:06d}" if value.microsecond else "")
        return str(value)
    if kind == "int":
        return str(int(value))
    if kind == "float":
        return DSfloat(float(value), auto_format=True)
    if kind == "strings":
        return [str(v) for v in value]
    return str(value)


def _element_from_json(tag: int, entry: dict[str, Any]) -> DataElement | None:
    if "BulkDataURI" in entry or "InlineBinary" in entry:
        return None
    try:
        ds = Dataset.from_json({f"{tag:08X}": entry})
    except Exception:  # noqa: BLE001 - a header value pydicom cannot rebuild: return it empty
        return None
    return ds.get(tag)


_BINARY_NUMBERS: dict[str, Any] = {
    "US": int, "UL": int, "SS": int, "SL": int, "UV": int, "SV": int, "FL": float, "FD": float,
}
"""VRs whose values pydicom wants as numbers, not as the text IS/DS take."""


def _json_entry(
    key: Key, attr: Attr | None, record: dict[str, Any], header: dict[str, Any]
) -> dict[str, Any]:
    """One attribute of a QIDO-RS result as DICOM JSON."""
    if key.vr == "SQ":
        return {"vr": "SQ"}
    if attr is None:
        entry = header.get(f"{key.tag:08X}")
        if isinstance(entry, dict) and entry.get("vr") == key.vr and "Value" in entry:
            return {"vr": key.vr, "Value": entry["Value"]}
        return {"vr": key.vr}
    value = record.get(attr.keyword)
    if value is None:
        return {"vr": key.vr}
    kind = attr.kind
    if kind == "strings":
        values: list[Any] = [str(v) for v in value]
    elif kind == "int":
        values = [int(value)]
    elif kind == "float":
        values = [float(value)]
    else:
        values = [_render(kind, value)]
    if key.vr in ("IS", "DS", "US", "UL", "SS", "SL", "FL", "FD", "UV", "SV"):
        values = [_number(v) for v in values]
    return {"vr": key.vr, "Value": values}


def _number(value: Any) -> Any:
    if isinstance(value, int | float):
        return value
    text = str(value)
    try:
        return int(text)
    except ValueError:
        return float(text)


def _json_strings(entry: dict[str, Any] | None) -> list[str]:
    if not entry:
        return []
    out: list[str] = []
    for value in entry.get("Value", []):
        if isinstance(value, dict):
            out.append(str(value.get("Alphabetic", "")))
        else:
            out.append(str(value))
    return out


@dataclass(frozen=True)
class RetrieveItem:
    """One instance to send for C-GET/C-MOVE."""

    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    pixel_hash: str | None
    pixel_vr: str | None


class Snapshot:
    """One version of the catalog, indexed for DICOM queries.

    The lake-wide snapshot never copies instance rows. Its ``patient``, ``study`` and
    ``series`` tables are aggregated from the series summaries written beside each data
    file at commit time (:mod:`lake.catalog._summary`; one row per series and data file,
    ~160,000 rows for ten million instances), so PATIENT-, STUDY- and SERIES-level queries
    never read the ``instances`` table. An IMAGE-level query (and C-GET/C-MOVE, WADO-RS)
    reads, with DuckDB's own Parquet reader, only the data files whose summaries name the
    study or series asked for, and within them only the row groups their statistics and
    Bloom filters let through.

    A scoped snapshot (``members``: a grant's cohorts) holds just those members' rows in
    memory, each read from its cohort's catalog version.

    Parameters
    ----------
    tables : DeltaTables
        The lake's tables.
    version : int
        The ``instances`` version to index.
    members : sequence of (int, collection of str), optional
        Cohorts as (catalog version, SOPInstanceUIDs): index only those instances.
    """

    def __init__(
        self,
        tables: DeltaTables,
        version: int,
        members: Sequence[tuple[int, Collection[str]]] | None = None,
    ) -> None:
        self.version = version
        self.scoped = members is not None
        self._tables = tables
        self._local = tables.location.is_local
        self._lock = threading.Lock()
        self._con = duckdb.connect()
        self._con.execute("SET threads TO 2")
        self._fragments: dict[str, Any] = {}
        self._files: dict[str, str] = {}  # data file name -> its path on the lake's filesystem
        self._located: OrderedDict[str, tuple[str, int]] = OrderedDict()
        self._headers: OrderedDict[tuple[str, str], Any] = OrderedDict()
        self._header_bytes = 0
        self._delta: Any = None
        try:
            if members is None:
                self._delta = tables.open(INSTANCES.name, version)
                self._con.execute(f"CREATE TABLE instances_empty ({_EMPTY_DDL})")
                self._add_files(data_files(tables, self._delta), first=True)
            else:
                self._create_image()
                for index, (at, uids) in enumerate(members):
                    dataset = arrow_dataset(tables.open(INSTANCES.name, at))
                    wanted = pa.array(sorted(uids), pa.string())
                    self._load(dataset, list(dataset.get_fragments()), index, wanted)
                # A member of several cohorts is read from the newest catalog version naming it.
                self._con.execute(
                    "DELETE FROM image WHERE (SOPInstanceUID, _src) IN (SELECT SOPInstanceUID, _src "
                    "FROM image QUALIFY row_number() OVER (PARTITION BY SOPInstanceUID "
                    "ORDER BY _src DESC) > 1)"
                )
                for level in (Level.SERIES, Level.STUDY, Level.PATIENT):
                    self._con.execute(_level_from_image_sql(level))
        except duckdb.Error as exc:
            raise CatalogError(
                f"the catalog cannot be indexed for DICOM queries ({type(exc).__name__}); "
                "run Lake.verify()", functions=("Lake.verify",)
            ) from None

    # --- the lake-wide snapshot: summaries in memory, instances read where they are ----

    def _add_files(self, files: Sequence[str], *, first: bool = False) -> None:
        """Add the series summaries of ``files`` (data files) and update the level tables
        for the series, studies and patients they touch."""
        for path in files:
            self._files[posixpath.basename(path)] = path
        relation = self._parts_of(files)
        self._con.execute(f"CREATE OR REPLACE TEMP TABLE new_parts AS {relation}")
        try:
            if first:
                self._con.execute("CREATE TABLE parts AS SELECT * FROM new_parts")
            else:
                self._con.execute("INSERT INTO parts BY NAME SELECT * FROM new_parts")
            for level in (Level.SERIES, Level.STUDY, Level.PATIENT):
                key = _q(level.unique_key)
                if first:
                    self._con.execute(
                        f"CREATE TABLE {_TABLE[level]} AS {_level_from_parts_sql(level)}")
                    continue
                touched = f"{key} IN (SELECT {key} FROM new_parts)"
                self._con.execute(f"DELETE FROM {_TABLE[level]} WHERE {touched}")
                self._con.execute(
                    f"INSERT INTO {_TABLE[level]} {_level_from_parts_sql(level, touched)}")
        finally:
            self._con.execute("DROP TABLE IF EXISTS new_parts")
            for name in ("_parts_stored", "_parts_missing", "_parts_headers"):
                with contextlib.suppress(duckdb.Error):
                    self._con.unregister(name)

    def _parts_of(self, files: Sequence[str]) -> str:
        """A relation of the series parts of ``files``: their stored summaries, and for a file
        without one (a crash between commit and summary, an older release), its rows
        aggregated here (only the narrow columns the summary reads)."""
        found = summaries_of(self._tables, files)
        parts = [parts_sql(SERIES_PARTS, "(FROM instances_empty)", "NULL::VARCHAR")]
        if found.series:
            if self._local:
                parts.append(f"SELECT * FROM read_parquet({_file_list(found.series)}, "
                             "union_by_name = true, hive_partitioning = false)")
            else:
                import pyarrow.parquet as pq

                fs = self._tables.location.fs
                self._con.register("_parts_stored", pa.concat_tables(
                    [pq.read_table(p, filesystem=fs) for p in found.series],
                    promote_options="default"))
                parts.append("SELECT * FROM _parts_stored")
        if found.missing:
            if self._local:
                rows = (f"(SELECT * FROM instances_empty UNION ALL BY NAME SELECT * FROM "
                        f"{_read_instances(found.missing)})")
                parts.append(parts_sql(SERIES_PARTS, rows, "parse_filename(filename)"))
            else:
                self._con.register("_parts_missing", self._remote(found.missing))
                parts.append(parts_sql(SERIES_PARTS, "_parts_missing", "NULL::VARCHAR"))
        union = " UNION ALL BY NAME ".join(f"({p})" for p in parts)
        reps = rep_headers_of(self._tables, files)
        headers = ("(SELECT NULL::VARCHAR AS data_file, NULL::VARCHAR AS SeriesInstanceUID, "
                   "NULL::VARCHAR AS rep_header WHERE false)")
        if reps and self._local:
            headers = (f"read_parquet({_file_list(reps)}, union_by_name = true, "
                       "hive_partitioning = false)")
        elif reps:
            import pyarrow.parquet as pq

            fs = self._tables.location.fs
            self._con.register("_parts_headers", pa.concat_tables(
                [pq.read_table(p, filesystem=fs) for p in reps], promote_options="default"))
            headers = "_parts_headers"
        columns = ", ".join(f"p.{_q(c)}" for c in _PART_COLUMNS)
        return (f"SELECT {columns}, h.rep_header FROM ({union}) AS p LEFT JOIN {headers} AS h "
                "ON p.data_file = h.data_file "
                "AND p.SeriesInstanceUID IS NOT DISTINCT FROM h.SeriesInstanceUID")

    def _remote(self, paths: Sequence[str]) -> Any:
        import pyarrow.dataset as pads

        from lake.catalog._tables import view_schema

        return pads.dataset(list(paths), schema=view_schema(INSTANCES.schema),
                            format="parquet", filesystem=self._tables.location.fs)

    def _candidates(self, keys: Sequence[Key]) -> list[str] | None:
        """The data files that can hold instances matching the UID keys of ``keys`` (by the
        series summaries), or None for every file."""
        clauses: list[str] = []
        params: list[Any] = []
        for key in keys:
            if key.keyword in _PRUNING and not key.is_return_only:
                pred = predicate(key.keyword, "uid", key)
                clauses.append(pred.sql)
                params.extend(pred.params)
        if not clauses:
            return None
        cursor = self._con.execute(
            f"SELECT DISTINCT data_file FROM parts WHERE {' AND '.join(clauses)}", params)
        names = [row[0] for row in cursor.fetchall()]
        if any(name is None or name not in self._files for name in names):
            return None  # a part aggregated without its file's name (remote): read them all
        return sorted(names)

    def _image(self, keys: Sequence[Key]) -> str | None:
        """The relation holding the instances ``keys`` can match (None: no file can).

        Call with the lock held (registers remote datasets on the connection)."""
        if self.scoped:
            return "image"
        names = self._candidates(keys)
        paths = list(self._files.values()) if names is None else [self._files[n] for n in names]
        if not paths:
            return None
        if self._local:
            source = (f"(SELECT * FROM instances_empty UNION ALL BY NAME SELECT * FROM "
                      f"{_read_instances(paths, rows=True)})")
            return f"({_image_select(source, file='parse_filename(filename)', row='file_row_number')})"
        self._con.register("_image_remote", self._remote(paths))
        return f"({_image_select('_image_remote', file='NULL::VARCHAR', row='NULL::BIGINT')})"

    def _remember_places(self, rows: Sequence[tuple[str, str | None, int | None]]) -> None:
        """Where instances are (UID, data file name, row), for :meth:`headers`."""
        with self._lock:
            for uid, name, row in rows:
                if name is None or row is None:
                    continue
                self._located[uid] = (name, int(row))
                self._located.move_to_end(uid)
            while len(self._located) > _LOCATED_KEPT:
                self._located.popitem(last=False)

    def _fragment(self, name: str) -> Any:
        """The Parquet fragment of data file ``name`` of this snapshot's version.

        Fragments are resolved from a ``DeltaTable`` of this snapshot's own version (opened
        again after :meth:`advance`), never from the moving table of
        :class:`SnapshotCache`: a retrieve holding an older snapshot keeps reading its own
        files after a compaction removed them from newer versions (they stay on disk until
        vacuum).

        Raises
        ------
        CatalogError
            If the file is not part of this version, or the version can no longer be read
            (erased by ``lake forget``).
        """
        with self._lock:
            found = self._fragments.get(name)
            if found is None and name in self._files:
                if self._delta is None:
                    self._delta = self._tables.open(INSTANCES.name, self.version)
                dataset = arrow_dataset(self._delta)
                self._fragments.update(
                    {posixpath.basename(f.path): f for f in dataset.get_fragments()})
                found = self._fragments.get(name)
        if found is None:
            raise CatalogError(
                f"an instance of catalog version {self.version} is no longer readable: its data "
                f"file {name} is not in that version; query again (a newer version answers)"
            )
        return found

    # --- a scoped snapshot: its members' rows in memory -------------------------------

    def _create_image(self) -> None:
        """The empty image table: query columns, representative, source, file and row."""
        empty = INSTANCES.schema.empty_table().select(list(_SOURCE_COLUMNS))
        empty = empty.append_column("_file", pa.array([], pa.string()))
        empty = empty.append_column("_row", pa.array([], pa.int64()))
        self._con.register("_empty_source", empty)
        try:
            self._con.execute(f"CREATE TABLE image AS {_image_select('_empty_source')}")
        finally:
            self._con.unregister("_empty_source")

    def _load(self, dataset: Any, fragments: Sequence[Any], src: int, wanted: Any) -> None:
        """Add the rows of ``fragments`` that are in ``wanted`` to the image table, each with
        its file and row number. Only the narrow query columns are read; the headers stay
        in the files, and :meth:`headers` reads just the row groups holding the rows asked
        for."""
        columns = [n for n in _SOURCE_COLUMNS if n in dataset.schema.names]
        batch: list[pa.Table] = []
        rows = 0
        for fragment in fragments:
            name = posixpath.basename(fragment.path)
            self._fragments[name] = fragment
            self._files[name] = fragment.path
            table = fragment.to_table(schema=dataset.schema, columns=columns)
            count = table.num_rows
            table = table.append_column("_file", pa.array([name] * count, pa.string()))
            table = table.append_column("_row", pa.array(range(count), pa.int64()))
            table = table.filter(pc.is_in(table.column("SOPInstanceUID"), value_set=wanted))
            batch.append(table)
            rows += table.num_rows
            if rows >= 200_000:
                self._insert(batch, src)
                batch, rows = [], 0
        self._insert(batch, src)

    def _insert(self, tables: list[pa.Table], src: int) -> None:
        if not tables:
            return
        combined = pa.concat_tables(tables, promote_options="default")
        self._con.register("_loading", combined)
        try:
            self._con.execute(f"INSERT INTO image {_image_select('_loading', src)}")
        finally:
            self._con.unregister("_loading")

    def advance(self, delta: Any) -> bool:
        """Catch up with a newer version of ``delta`` by reading only the summaries of its
        new files.

        Returns False (nothing changed) when files were removed since this snapshot
        (compaction, deletes): build a new :class:`Snapshot` then. A scoped snapshot
        never advances (its cohorts are pinned).
        """
        if self.scoped:
            return False
        files = {posixpath.basename(p): p for p in data_files(self._tables, delta)}
        if not self._files.keys() <= files.keys():
            return False
        new = [files[n] for n in files if n not in self._files]
        with self._lock:
            try:
                if new:
                    self._add_files(new)
            except duckdb.Error as exc:
                raise CatalogError(
                    f"the catalog cannot be indexed for DICOM queries ({type(exc).__name__}); "
                    "run Lake.verify()", functions=("Lake.verify",)
                ) from None
            # Not ``delta`` itself: the caller moves it on to later versions, where a
            # compaction removes this version's files. :meth:`_fragment` opens this
            # version's own table when it needs one.
            self._delta = None
            self.version = int(delta.version())
        return True

    def close(self) -> None:
        with self._lock:
            self._con.close()

    def _fetch(self, sql: str, params: Sequence[Any]) -> tuple[list[str], list[tuple[Any, ...]]]:
        with self._lock:
            try:
                cursor = self._con.execute(sql, list(params))
                names = [d[0] for d in cursor.description or []]
                return names, cursor.fetchall()
            except duckdb.Error as exc:
                raise QueryError(f"the query cannot be answered ({type(exc).__name__})") from None

    def _fetch_image(
        self, keys: Sequence[Key], sql: str, params: Sequence[Any]
    ) -> tuple[list[str], list[tuple[Any, ...]]]:
        """Run ``sql`` with ``{image}`` standing for the instances ``keys`` can match."""
        with self._lock:
            try:
                image = self._image(keys)
                if image is None:
                    return [], []
                cursor = self._con.execute(sql.replace("{image}", image), list(params))
                names = [d[0] for d in cursor.description or []]
                return names, cursor.fetchall()
            except duckdb.Error as exc:
                raise QueryError(f"the query cannot be answered ({type(exc).__name__})") from None
            finally:
                if not self.scoped and not self._local:
                    with contextlib.suppress(duckdb.Error):
                        self._con.unregister("_image_remote")

    def _where(self, level: Level, keys: Sequence[Key]) -> tuple[str, list[Any], list[Key]]:
        attrs = _LEVEL_ATTRS[level]
        clauses: list[str] = []
        params: list[Any] = []
        header_keys: list[Key] = []
        for key in keys:
            if key.is_return_only:
                continue
            attr = attrs.get(key.keyword)
            above = next((u for u in _ABOVE[level] if key.keyword in _COMPUTED[u]), None)
            if attr is None and above is not None:  # ModalitiesInStudy of a series...
                pred = predicate(key.keyword, _LEVEL_ATTRS[above][key.keyword].kind, key)
                uid = _q(above.unique_key)
                clauses.append(f"{uid} IN (SELECT {uid} FROM {_TABLE[above]} WHERE {pred.sql})")
                params.extend(pred.params)
                continue
            if attr is None:
                header_keys.append(key)
                continue
            pred = predicate(attr.keyword, attr.kind, key)
            clauses.append(pred.sql)
            params.extend(pred.params)
        where = " AND ".join(clauses) if clauses else "TRUE"
        return where, params, header_keys

    def _rep_headers(self, uids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The patient/study/series attributes of the representatives ``uids`` kept in the
        summaries (each the first instance of its series in its data file), where kept."""
        if self.scoped:
            return {}
        _, rows = self._fetch(
            "SELECT first_sop, any_value(rep_header) FROM parts WHERE rep_header IS NOT NULL "
            "AND first_sop IN (SELECT unnest(?::VARCHAR[])) GROUP BY first_sop", [list(uids)])
        return {uid: json.loads(text) for uid, text in rows}

    def headers(
        self,
        uids: Sequence[str],
        column: str = "header_json",
        *,
        files: Mapping[str, str | None] | None = None,
    ) -> dict[str, Any]:
        """``column`` (``header_json`` or ``header_dicom``) of the instances ``uids``.

        Each value is read from its own file, only the row groups that hold it; recently
        read headers are kept (up to 64 MB), so a repeated search reads nothing. Where an
        instance is, is known for those a query of this snapshot returned; ``files`` (UID
        -> data file name, e.g. a study's representative) narrows the search for the others.
        """
        if column not in ("header_json", "header_dicom"):
            raise ValueError(column)
        out: dict[str, Any] = {}
        missing = []
        with self._lock:
            for uid in uids:
                found = self._headers.get((column, uid))
                if found is not None:
                    self._headers.move_to_end((column, uid))
                    out[uid] = found
                else:
                    missing.append(uid)
        if not missing:
            return out
        places = self._places(missing, files or {})
        by_file: dict[str, list[tuple[str, int]]] = {}
        for uid, (name, row) in places.items():
            by_file.setdefault(name, []).append((uid, row))
        for name, found in by_file.items():
            try:
                values = _read_rows(self._fragment(name), column, [row for _, row in found])
            except OSError:
                raise CatalogError(
                    f"an instance of catalog version {self.version} is no longer readable: its "
                    f"data file {name} was removed (lake.steward.vacuum()); query again (a newer version "
                    "answers)"
                ) from None
            for (uid, _), value in zip(found, values, strict=True):
                out[uid] = value
                self._remember(column, uid, value)
        unplaced = [u for u in missing if u not in places]
        if unplaced and not self.scoped and not self._local:
            # A remote lake: DuckDB does not know rows there; read the values by UID.
            with self._lock:
                self._con.register("_headers_remote", self._remote(list(self._files.values())))
                try:
                    rows = self._con.execute(
                        f"SELECT SOPInstanceUID, {column} FROM _headers_remote WHERE "
                        "SOPInstanceUID IN (SELECT unnest(?::VARCHAR[]))", [unplaced]).fetchall()
                finally:
                    self._con.unregister("_headers_remote")
            for uid, value in rows:
                out[uid] = value
                self._remember(column, uid, value)
        return out

    def _places(
        self, uids: Sequence[str], files: Mapping[str, str | None]
    ) -> dict[str, tuple[str, int]]:
        """(data file name, row) of each of ``uids`` that this snapshot can find."""
        places: dict[str, tuple[str, int]] = {}
        with self._lock:
            for uid in uids:
                found = self._located.get(uid)
                if found is not None:
                    places[uid] = found
        todo = [u for u in uids if u not in places]
        if not todo:
            return places
        if self.scoped:
            _, rows = self._fetch(
                "SELECT SOPInstanceUID, _file, _row FROM image "
                "WHERE SOPInstanceUID IN (SELECT unnest(?::VARCHAR[]))", [todo])
        elif self._local:
            hinted = {files.get(u) for u in todo}
            names = (sorted(n for n in hinted if n is not None)
                     if None not in hinted and hinted <= self._files.keys() else list(self._files))
            paths = [self._files[n] for n in names]
            _, rows = self._fetch(
                f"SELECT SOPInstanceUID, parse_filename(filename), file_row_number FROM "
                f"{_read_instances(paths, rows=True)} "
                "WHERE SOPInstanceUID IN (SELECT unnest(?::VARCHAR[]))", [todo])
        else:
            return places
        for uid, name, row in rows:
            places[uid] = (name, int(row))
        self._remember_places([(u, n, r) for u, (n, r) in places.items()])
        return places

    def _remember(self, column: str, uid: str, value: Any) -> None:
        size = len(value) if value is not None else 0
        if size > _HEADER_CACHE // 16:
            return
        with self._lock:
            self._headers[(column, uid)] = value
            self._header_bytes += size
            while self._header_bytes > _HEADER_CACHE and self._headers:
                _, old = self._headers.popitem(last=False)
                self._header_bytes -= len(old) if old is not None else 0

    def _matches(
        self, level: Level, keys: Sequence[Key], limit: int | None, offset: int
    ) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
        """The matching records (level attributes, representative) and the headers needed."""
        attrs = _LEVEL_ATTRS[level]
        where, params, header_keys = self._where(level, keys)
        columns = sorted({k.keyword for k in keys if k.keyword in attrs} | {level.unique_key})
        place = ["_file", "_row"] if level is Level.IMAGE else ["_rep_file"]
        select = ", ".join([_q(c) for c in columns] + ["_rep", *place])
        page = ""
        if not header_keys and (limit is not None or offset):
            page = f" LIMIT {int(limit) if limit is not None else -1} OFFSET {int(offset)}"
            page = page.replace("LIMIT -1 ", "")
        elif header_keys:  # matched on stored headers, one read each: a bounded number
            page = f" LIMIT {int(_HEADER_SCAN_MAX) + 1}"
        sql = (f"SELECT {select} FROM {{image}} WHERE {where} "
               f"ORDER BY {_q(level.unique_key)}{page}")
        if level is Level.IMAGE:
            names, rows = self._fetch_image(keys, sql, params)
        else:
            names, rows = self._fetch(sql.replace("{image}", _TABLE[level]), params)
        if header_keys and len(rows) > _HEADER_SCAN_MAX:
            raise QueryError(
                f"matching {', '.join(k.keyword for k in header_keys)} reads the stored header "
                f"of every candidate, and more than {_HEADER_SCAN_MAX:,} {level.value.lower()} "
                "records are candidates: narrow the query with catalog attributes (a UID, "
                "StudyDate, Modality, PatientID) or search at the study level"
            )
        records = [dict(zip(names, row, strict=True)) for row in rows]
        if level is Level.IMAGE:
            self._remember_places([(r["_rep"], r["_file"], r["_row"]) for r in records])
        above = {name for upper in _ABOVE[level] for name in _COMPUTED[upper]}
        need_header = [
            k for k in keys
            if k.keyword not in attrs and k.keyword not in SERVER_FILLED and k.vr != "SQ"
            and k.keyword not in above
        ]
        headers: dict[str, dict[str, Any]] = {}
        if need_header and records:
            if level is not Level.IMAGE and all(k.keyword in _REP_KEYWORDS for k in need_header):
                headers = self._rep_headers([r["_rep"] for r in records])
            rest = [r for r in records if r["_rep"] not in headers]
            raw = self.headers([r["_rep"] for r in rest],
                               files={r["_rep"]: r.get("_rep_file", r.get("_file"))
                                      for r in rest})
            headers.update({uid: json.loads(text) for uid, text in raw.items() if text})
        if header_keys:
            matchers = [(f"{k.tag:08X}", python_matcher(k)) for k in header_keys]
            records = [
                r for r in records
                if all(m(_json_strings(headers.get(r["_rep"], {}).get(t))) for t, m in matchers)
            ]
            end = None if limit is None else offset + limit
            records = records[offset:end]
        return records, headers

    def find_json(
        self,
        level: Level,
        keys: Sequence[Key],
        *,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[dict[str, Any]]:
        """Like :meth:`find`, answered directly as DICOM JSON objects (QIDO-RS).

        Header attributes are copied from the stored DICOM JSON; catalog attributes are
        written from their typed values, without building pydicom datasets.

        Raises
        ------
        QueryError
            If a matching value is malformed for its attribute.
        """
        records, headers = self._matches(level, keys, limit, offset)
        attrs = {**self._computed_above(level, keys, records), **_LEVEL_ATTRS[level]}
        wanted = list(keys)
        if not any(k.keyword == level.unique_key for k in wanted):
            tag = _tag(level.unique_key)
            wanted.append(Key(level.unique_key, tag, "UI" if level is not Level.PATIENT else "LO", ()))
        results = []
        for record in records:
            header = headers.get(record["_rep"], {})
            out: dict[str, Any] = {}
            for key in wanted:
                out[f"{key.tag:08X}"] = _json_entry(key, attrs.get(key.keyword), record, header)
            results.append(dict(sorted(out.items())))
        return results

    def _computed_above(
        self, level: Level, keys: Sequence[Key], records: list[dict[str, Any]]
    ) -> dict[str, Attr]:
        """Computed attributes of the levels above ``level`` that ``keys`` ask for
        (ModalitiesInStudy of a series, NumberOfSeriesRelatedInstances of an instance), added
        to ``records`` from the study and series tables; returns their attributes."""
        found: dict[str, Attr] = {}
        asked = {k.keyword for k in keys}
        for upper in _ABOVE[level]:
            names = sorted(asked & _COMPUTED[upper].keys())
            key = upper.unique_key
            uids = sorted({r[key] for r in records if r.get(key) is not None})
            if not names or not uids:
                continue
            columns, rows = self._fetch(
                f"SELECT {_q(key)}, {', '.join(_q(n) for n in names)} FROM {_TABLE[upper]} "
                f"WHERE {_q(key)} IN (SELECT unnest(?::VARCHAR[]))",
                [uids],
            )
            values = {row[0]: dict(zip(columns[1:], row[1:], strict=True)) for row in rows}
            for record in records:
                record.update(values.get(record.get(key), {}))
            found.update({n: _LEVEL_ATTRS[upper][n] for n in names})
        return found

    def find(
        self,
        level: Level,
        keys: Sequence[Key],
        *,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[Dataset]:
        """Answer a C-FIND (or QIDO-RS) at ``level``: one response identifier per match.

        Parameters
        ----------
        level : Level
            The query level.
        keys : sequence of Key
            Matching and return keys.
        limit : int, optional
            At most this many matches (in unique-key order)...
        offset : int
            ...after skipping this many.

        Raises
        ------
        QueryError
            If a matching value is malformed for its attribute.
        """
        attrs = _LEVEL_ATTRS[level]
        records, headers = self._matches(level, keys, limit, offset)
        results = []
        for record in records:
            ds = Dataset()
            ds.QueryRetrieveLevel = level.value
            header = headers.get(record["_rep"], {})
            for key in keys:
                ds.add(self._element(key, attrs.get(key.keyword), record, header))
            if level.unique_key not in ds:
                ds.add_new(_tag(level.unique_key), "UI" if level is not Level.PATIENT else "LO",
                           record[level.unique_key])
            results.append(ds)
        return results

    @staticmethod
    def _element(
        key: Key, attr: Attr | None, record: dict[str, Any], header: dict[str, Any]
    ) -> DataElement:
        if key.vr == "SQ":
            return DataElement(key.tag, "SQ", [])
        if attr is not None:
            value = _render(attr.kind, record.get(attr.keyword))
            if value is not None and key.vr in _BINARY_NUMBERS:
                value = _BINARY_NUMBERS[key.vr](value)
            return DataElement(key.tag, key.vr, value)
        entry = header.get(f"{key.tag:08X}")
        elem = _element_from_json(key.tag, entry) if entry else None
        if elem is not None and key.vr == elem.VR:
            return elem
        return DataElement(key.tag, key.vr, None)

    def retrieve(self, level: Level, keys: Sequence[Key]) -> list[RetrieveItem]:
        """The instances a C-GET/C-MOVE identifier selects.

        Raises
        ------
        QueryError
            If the identifier lacks the level's unique key or uses non-unique keys.
        """
        if not any(k.keyword == level.unique_key and k.values for k in keys):
            raise QueryError(
                f"a {level.value} level retrieve needs a value for {level.unique_key}"
            )
        where, params, header_keys = self._where(Level.IMAGE, keys)
        if header_keys:
            raise QueryError("a retrieve identifier may hold only unique keys")
        _, rows = self._fetch_image(
            keys,
            "SELECT SOPInstanceUID, SOPClassUID, TransferSyntaxUID, pixel_hash, pixel_vr, "
            f"_file, _row FROM {{image}} WHERE {where} "
            "ORDER BY StudyInstanceUID, SeriesInstanceUID, InstanceNumber, SOPInstanceUID",
            params,
        )
        self._remember_places([(row[0], row[5], row[6]) for row in rows])
        return [RetrieveItem(*row[:5]) for row in rows]

    def locate(
        self, study: str, series: str | None = None, instance: str | None = None
    ) -> list[StoredInstance]:
        """The instances of a study (or one of its series, or one instance), in order.

        Every UID given must match: an instance asked for under the wrong study or
        series is not found. Ordered by series number, series, instance number, UID.
        """
        clauses = ["StudyInstanceUID = ?"]
        params: list[Any] = [study]
        if series is not None:
            clauses.append("SeriesInstanceUID = ?")
            params.append(series)
        if instance is not None:
            clauses.append("SOPInstanceUID = ?")
            params.append(instance)
        keys = [Key("StudyInstanceUID", 0x0020000D, "UI", (study,))]
        if series is not None:
            keys.append(Key("SeriesInstanceUID", 0x0020000E, "UI", (series,)))
        _, rows = self._fetch_image(
            keys,
            f"SELECT {', '.join(_LOCATE)}, _file, _row FROM {{image}} "
            f"WHERE {' AND '.join(clauses)} "
            "ORDER BY SeriesNumber NULLS LAST, SeriesInstanceUID, InstanceNumber NULLS LAST, "
            "SOPInstanceUID",
            params,
        )
        width = len(_LOCATE)
        self._remember_places([(row[2], row[width], row[width + 1]) for row in rows])
        return [StoredInstance(*row[:width]) for row in rows]


_LOCATE = (
    "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID",
    "TransferSyntaxUID", "pixel_hash", "pixel_vr", "Rows", "Columns", "NumberOfFrames",
    "SamplesPerPixel", "BitsAllocated", "Modality", "InstanceNumber",
)


@dataclass(frozen=True)
class StoredInstance:
    """Where a stored instance is and what its pixel data looks like (for WADO-RS)."""

    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    pixel_hash: str | None
    pixel_vr: str | None
    rows: int | None
    columns: int | None
    frames: int | None
    samples_per_pixel: int | None
    bits_allocated: int | None
    modality: str | None
    instance_number: int | None


_HEADER_CACHE = 64 * 2**20
"""Bytes of recently read headers a snapshot keeps."""


def _read_rows(fragment: Any, column: str, rows: Sequence[int]) -> list[Any]:
    """Values of ``column`` at ``rows`` of one Parquet file, reading only their row groups,
    one at a time (memory: one row group of one column, not every group asked for)."""
    groups = fragment.row_groups or []
    if not groups:  # no row-group metadata: read the column
        table = fragment.to_table(columns=[column])
        return [table.column(column)[r].as_py() for r in rows]
    starts = []
    offset = 0
    for group in groups:
        starts.append(offset)
        offset += int(group.num_rows)
    wanted: dict[int, list[int]] = {}
    for r in rows:
        wanted.setdefault(bisect.bisect_right(starts, r) - 1, []).append(r)
    found: dict[int, Any] = {}
    for group, in_group in sorted(wanted.items()):
        values = fragment.subset(row_group_ids=[group]).to_table(columns=[column]).column(column)
        for r in in_group:
            found[r] = values[r - starts[group]].as_py()
        del values
    return [found[r] for r in rows]


def _tag(keyword: str) -> int:
    from pydicom.datadict import tag_for_keyword

    tag = tag_for_keyword(keyword)
    assert tag is not None
    return int(tag)


class SnapshotCache:
    """The snapshot of the newest catalog version, rebuilt when the version changes.

    A snapshot handed out stays valid for as long as its holder needs it (a C-GET/C-MOVE
    holds one for the whole transfer, WADO-RS for a response): it reads its own version's
    files even after a compaction (until vacuum removes them; then its header reads raise
    :class:`~lake.CatalogError`). A snapshot this cache replaces is therefore *not*
    closed here: the cache drops its reference, and the snapshot (its DuckDB connection and
    in-memory tables) is freed when its last holder drops it. Only :meth:`close` closes
    the current one.

    A snapshot that advanced in place answers each call from the version it had then: the
    level query and the header reads of one C-FIND/QIDO answer run under separate locks,
    so a commit appended in between may show in the headers part of the same answer.

    Parameters
    ----------
    tables : DeltaTables
        The lake's tables.
    """

    def __init__(self, tables: DeltaTables) -> None:
        self._tables = tables
        self._lock = threading.Lock()
        self._delta = tables.open("instances")
        self._snapshot: Snapshot | None = None

    def current(self) -> Snapshot:
        """The snapshot of the newest committed version (checked on every call).

        New commits are appended to the current snapshot (only their files are read);
        a version that removed files (compaction) gets a fresh snapshot.
        """
        with self._lock:
            self._delta.update_incremental()
            version = int(self._delta.version())
            snapshot = self._snapshot
            if snapshot is not None and snapshot.version == version:
                return snapshot
            if snapshot is None or not snapshot.advance(self._delta):
                # The replaced snapshot is not closed: a retrieve may still be using it
                # (see the class docstring); it is freed with its last reference.
                self._snapshot = Snapshot(self._tables, version)
            assert self._snapshot is not None
            return self._snapshot

    def close(self) -> None:
        with self._lock:
            if self._snapshot is not None:
                self._snapshot.close()
                self._snapshot = None


def iter_chunks(items: Sequence[RetrieveItem], size: int) -> Iterator[Sequence[RetrieveItem]]:
    """``items`` in slices of ``size``."""
    for start in range(0, len(items), size):
        yield items[start : start + size]
