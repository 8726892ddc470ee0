"""Series and study summaries of each data file, written when the file is committed.

The ``series``, ``studies`` and ``patients`` views aggregate instance rows. Over ten million
rows that costs seconds, so each data file of ``instances`` gets two small summaries beside
it, computed once when the file is committed (by an ingest batch, a compaction): one row per
series (``series_parts``) and one per study (``study_parts``) of the rows in that file, with
the counts, sums and lists the views need. The views aggregate those partial rows instead,
a few hundred thousand rows for ten million instances.

Summaries are derived data, never a second source of truth:

- A data file is immutable and its name is unique, so its summary is a pure function of it:
  written with an atomic rename (or a single object put), written again identically by a
  concurrent or repeated writer, never half-written.
- A reader takes the summaries of exactly the data files of the version it reads; a data
  file whose summary is missing (a crash between the commit and the summary, a file
  written by an older release) is aggregated from its rows on the fly. Files removed by a
  compaction or a delete are simply not read, so the views stay exact at every version.
- They live below ``<table>/_summary/v1/``: Delta ignores paths starting with ``_``, so
  ``vacuum`` never takes them; :func:`prune_summaries` removes those whose data file is gone.
"""

from __future__ import annotations

import io
import json
import os
import posixpath
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from lake.catalog._arrow_values import arrow_array, python_table
from lake.catalog._schema import INSTANCES
from lake.store import atomic_write, write_at

if TYPE_CHECKING:
    import duckdb
    import pyarrow as pa
    from deltalake import DeltaTable

    from lake.catalog._tables import DeltaTables

__all__ = [
    "REP_HEADERS",
    "REP_HEADER_KEYWORDS",
    "SERIES_PARTS",
    "STUDY_PARTS",
    "SUMMARY_DIR",
    "Summaries",
    "data_files",
    "fs_path",
    "parts_sql",
    "prune_summaries",
    "rep_headers_of",
    "studies_from_series_sql",
    "summaries_of",
    "write_rep_headers",
    "write_summaries",
]

SUMMARY_DIR = "_summary/v1"
"""Below the ``instances`` table; a new layout of the parts gets a new version."""

SERIES_PARTS = "series_parts"
STUDY_PARTS = "study_parts"
REP_HEADERS = "rep_headers"
"""Per data file and series: the stored header of its first instance (lowest
SOPInstanceUID), cut to :data:`REP_HEADER_KEYWORDS`. The DICOM query index answers
patient-, study- and series-level attributes that are not catalog columns (PatientName,
AccessionNumber... of QIDO-RS's default study attributes) from these instead of reading
each study's first instance from its data file. Optional: a file written before they
existed has none, and its headers are read from its rows."""

REP_HEADER_KEYWORDS = (
    # Patient
    "PatientName", "IssuerOfPatientID", "PatientBirthDate", "PatientBirthTime",
    "OtherPatientNames", "EthnicGroup", "PatientComments", "PatientSpeciesDescription",
    "PatientBreedDescription", "ResponsiblePerson", "ResponsibleOrganization",
    # Study
    "StudyID", "AccessionNumber", "ReferringPhysicianName", "PhysiciansOfRecord",
    "NameOfPhysiciansReadingStudy", "AdmittingDiagnosesDescription", "Occupation",
    "AdditionalPatientHistory", "OtherStudyNumbers", "InstitutionName",
    "InstitutionalDepartmentName",
    # Series
    "PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime",
    "PerformedProcedureStepID", "PerformedProcedureStepDescription", "OperatorsName",
    "PerformingPhysicianName", "Laterality", "StationName", "PatientPosition",
)
"""Header attributes of the patient, study and series levels kept in :data:`REP_HEADERS`."""

# Columns each summary reads from a data file (those the views and the DICOM query levels use).
_READ = (
    "PatientID", "PatientSex", "PatientAge", "PatientWeight", "PatientSize",
    "StudyInstanceUID", "StudyDate", "StudyTime", "StudyDescription",
    "SeriesInstanceUID", "SeriesNumber", "SeriesDate", "SeriesTime", "SeriesDescription",
    "Modality", "BodyPartExamined", "ProtocolName", "Manufacturer", "ManufacturerModelName",
    "FrameOfReferenceUID", "SliceThickness", "Rows", "Columns", "NumberOfFrames",
    "SOPInstanceUID", "SOPClassUID", "size_bytes", "pixel_bytes", "ingested_at",
)

_PATIENT_STUDY = (
    "PatientID", "PatientSex", "PatientAge", "PatientWeight", "PatientSize",
    "StudyDate", "StudyTime", "StudyDescription",
)
_SERIES = (
    "StudyInstanceUID", *_PATIENT_STUDY, "Modality", "SeriesNumber", "SeriesDate",
    "SeriesTime", "SeriesDescription", "BodyPartExamined", "ProtocolName", "Manufacturer",
    "ManufacturerModelName", "FrameOfReferenceUID", "SliceThickness", "Rows", "Columns",
)


def _q(name: str) -> str:
    return '"' + name + '"'


def parts_sql(kind: str, source: str, data_file: str, extra: Sequence[str] = ()) -> str:
    """The SQL that summarises the rows of ``source`` (one data file, or several when
    ``data_file`` is a column expression naming each row's file) into ``kind`` parts.

    Parameters
    ----------
    kind : str
        :data:`SERIES_PARTS` or :data:`STUDY_PARTS`.
    source : str
        A relation holding instance rows.
    data_file : str
        An SQL expression for the data file a row comes from (a quoted literal, or
        ``filename`` for ``read_parquet(..., filename=true)``).
    extra : sequence of str
        Further aggregates, each ``expression AS name``, after the part's own columns.
    """
    counts = [
        "count(*) AS instance_count",
        'CAST(sum(coalesce("NumberOfFrames", 1)) AS BIGINT) AS frame_count',
        "CAST(sum(size_bytes) AS BIGINT) AS size_bytes",
        "CAST(sum(pixel_bytes) AS BIGINT) AS pixel_bytes",
        "min(ingested_at) AS first_ingested_at",
        "max(ingested_at) AS last_ingested_at",
        "min(SOPInstanceUID) AS first_sop",
        # Exact date bounds of the rows, so a query for these series can add a date range
        # that row-group statistics prune where files hold dates in order (an archive
        # ingested chronologically).
        "min(StudyDate) AS study_date_min",
        "max(StudyDate) AS study_date_max",
        "count(*) FILTER (WHERE StudyDate IS NULL) AS study_date_nulls",
        "list_distinct(list(Modality) FILTER (WHERE Modality IS NOT NULL)) AS modalities",
        "list_distinct(list(SOPClassUID) FILTER (WHERE SOPClassUID IS NOT NULL)) AS sop_classes",
    ]
    attrs: tuple[str, ...]
    if kind == SERIES_PARTS:
        key, attrs = "SeriesInstanceUID", _SERIES
    elif kind == STUDY_PARTS:
        key, attrs = "StudyInstanceUID", _PATIENT_STUDY
        counts.append("list_distinct(list(SeriesInstanceUID) FILTER (WHERE SeriesInstanceUID "
                      "IS NOT NULL)) AS series")
    else:
        raise ValueError(kind)
    columns = [f"{data_file} AS data_file", _q(key)]
    # The attributes of the part's first instance (lowest SOPInstanceUID, as first_sop and
    # the representative header), NULL included: instances that disagree never mix in one
    # part, and the part does not depend on the order of the rows in the file.
    columns += [f"arg_min_null({_q(a)}, SOPInstanceUID) AS {_q(a)}" for a in attrs]
    return f"SELECT {', '.join(columns + counts + list(extra))} FROM {source} GROUP BY ALL"


@dataclass(frozen=True)
class Summaries:
    """Where the summaries of one table version are, and which data files lack them.

    Attributes
    ----------
    series, studies : tuple of str
        Paths (or URLs for remote lakes) of the summaries that exist.
    missing : tuple of str
        Paths of the data files whose summaries do not exist (aggregated on the fly).
    """

    series: tuple[str, ...]
    studies: tuple[str, ...]
    missing: tuple[str, ...]


def _summary_path(root: str, data_file: str, kind: str) -> str:
    name = posixpath.basename(data_file)
    return posixpath.join(root, SUMMARY_DIR, kind, name)


def _listing(tables: DeltaTables, kind: str) -> set[str]:
    folder = posixpath.join(tables.location.join("tables", INSTANCES.name), SUMMARY_DIR, kind)
    try:
        if tables.location.is_local:  # (without importing fsspec: `lake sql`, issue 14.1)
            return set(os.listdir(folder))
        return {posixpath.basename(p) for p in tables.location.fs.ls(folder, detail=False)}
    except FileNotFoundError:
        return set()


def data_files(tables: DeltaTables, delta: DeltaTable) -> list[str]:
    """The data files of ``delta`` as paths on the lake's filesystem."""
    return [fs_path(uri) for uri in delta.file_uris()]


def fs_path(uri: str) -> str:
    """The fsspec path of a deltalake file URI (``file:///a/b`` -> ``/a/b``,
    ``s3://bucket/k`` -> ``bucket/k``; a local path percent-encoded as deltalake gives it,
    ``/a%20b/c`` -> ``/a b/c``)."""
    if "://" not in uri:
        return unquote(uri)
    parts = urlsplit(uri)
    path = unquote(parts.path)
    return path if parts.scheme == "file" else f"{parts.netloc}{path}"


def summaries_of(tables: DeltaTables, files: Sequence[str]) -> Summaries:
    """Which of ``files`` (data files of ``instances``) have summaries, and where."""
    root = tables.location.join("tables", INSTANCES.name)
    have = _listing(tables, SERIES_PARTS) & _listing(tables, STUDY_PARTS)
    covered = [f for f in files if posixpath.basename(f) in have]
    missing = tuple(f for f in files if posixpath.basename(f) not in have)
    return Summaries(
        tuple(_summary_path(root, f, SERIES_PARTS) for f in covered),
        tuple(_summary_path(root, f, STUDY_PARTS) for f in covered),
        missing,
    )


def _summarise(con: duckdb.DuckDBPyConnection, tables: DeltaTables, data_file: str,
               rows: pa.Table | None = None) -> None:
    """Write the summaries of ``data_file``: from ``rows`` when given (every row of the file,
    as the commit that wrote it had them), else read from the file, in one pass."""
    import pyarrow.parquet as pq

    location = tables.location
    name = posixpath.basename(data_file)
    made = None if rows is None else _arrow_parts(con, rows, name)
    if made is not None:
        series, studies, headers = made
    elif rows is not None:
        series, headers = _series_and_headers(con, rows, rows.schema, name)
    else:
        # a local lake's file without fsspec (asyncio): a commit's upkeep imports none
        # (issue 14)
        with (open(data_file, "rb") if location.is_local
              else location.fs.open(data_file, "rb")) as fh:
            reader = pq.ParquetFile(fh)
            schema = reader.schema_arrow
            series, headers = _series_and_headers(
                con, lambda columns: reader.iter_batches(columns=columns, batch_size=65_536),
                schema, name)
    if made is None:
        con.register("series_rows", series)
        try:
            studies = _table(con.sql(studies_from_series_sql("series_rows")).arrow())
        finally:
            con.unregister("series_rows")
    root = location.join("tables", INSTANCES.name)
    parts = ((REP_HEADERS, headers), (STUDY_PARTS, studies), (SERIES_PARTS, series))
    for kind, table in parts:
        sink = io.BytesIO()
        pq.write_table(table, sink, compression="zstd")
        # The series summary last: a file counts as summarised once both exist.
        write_at(location, _summary_path(root, data_file, kind), sink.getvalue())


_REP = "__lake_rep_header"
"""The series query's extra column: the ``header_json`` of the series' first instance."""


def _series_and_headers(
    con: duckdb.DuckDBPyConnection, source: pa.Table | Callable[[list[str]], Iterable[Any]],
    schema: pa.Schema, name: str,
) -> tuple[pa.Table, pa.Table]:
    """The :data:`SERIES_PARTS` and :data:`REP_HEADERS` rows of one data file named ``name``
    (``source``: its rows, or a function giving its record batches of the columns asked),
    from one query over the file's rows: the series parts with the representative header of
    each series beside them (DuckDB keeps one header per series while it reads)."""
    import pyarrow as pa

    present = set(schema.names)
    columns = [c for c in _READ if c in present]
    with_headers = {"SeriesInstanceUID", "SOPInstanceUID", "header_json"} <= present
    if with_headers:
        columns.append("header_json")
    fields = pa.schema([schema.field(c) for c in columns])
    stream = (source.select(columns) if isinstance(source, pa.Table)
              else pa.RecordBatchReader.from_batches(fields, source(columns)))
    con.register("summary_source", stream)
    try:
        missing = [c for c in _READ if c not in present]
        relation = "summary_source"
        if missing:  # a file written before a column existed: the column reads as null
            nulls = ", ".join(f"NULL AS {_q(c)}" for c in missing)
            relation = f"(SELECT *, {nulls} FROM summary_source)"
        quoted = "'" + name.replace("'", "''") + "'"
        extra = (f"arg_min(header_json, SOPInstanceUID) AS {_q(_REP)}",) if with_headers else ()
        found = _table(con.sql(parts_sql(SERIES_PARTS, relation, quoted, extra)).arrow())
    finally:
        con.unregister("summary_source")
    if not with_headers:
        return found, _rep_headers_table(name, [])
    reps = zip(found.column("SeriesInstanceUID").to_pylist(), found.column(_REP).to_pylist(),
               strict=True)
    return found.drop_columns([_REP]), _rep_headers_table(name, list(reps))


def _arrow_parts(con: duckdb.DuckDBPyConnection, rows: pa.Table,
                 name: str) -> tuple[pa.Table, pa.Table, pa.Table] | None:
    """The series parts, study parts and representative headers of the data file ``name``
    holding ``rows`` (all of them), aggregated in Python: what :func:`parts_sql`,
    :func:`studies_from_series_sql` and :func:`_series_and_headers` give, row for row and
    type for type (lists in another order: DuckDB's ``list_distinct`` keeps none), without
    DuckDB binding two queries of some forty aggregates (~4.5 ms of CPU each whatever the
    rows: a commit's summaries took ~13 ms in DuckDB; docs/performance.md "DICOM receive").
    Arrow's grouped aggregation would import ``pyarrow.dataset`` and with it pandas.
    ``None`` (DuckDB then) when a row lacks its SOPInstanceUID (DuckDB's ``arg_min`` skips
    it), there are no rows, or more than :data:`PYTHON_PARTS_ROWS`.
    ``tests/test_summary_commit.py`` checks both against each other, nulls everywhere.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    from lake.catalog._tables import python_rows  # (it imports this module)

    if (not 0 < rows.num_rows <= PYTHON_PARTS_ROWS
            or rows.column("SOPInstanceUID").null_count):
        return None
    # DuckDB gives its TIMESTAMPTZ results in the database's time zone (the same instants)
    ((zone,),) = con.sql("SELECT current_setting('TimeZone')").fetchall()
    stamp = pa.timestamp("us", tz=str(zone))
    ordered = rows.select([*_READ, "header_json"])
    ordered = ordered.take(pc.sort_indices(ordered, [("SOPInstanceUID", "ascending")]))
    # in SOPInstanceUID order: a group's first row is arg_min's (only the aggregated columns
    # made Python values, the attributes of each group's first row, one header each)
    values = python_rows(ordered.select(_AGGREGATED))
    has_header = pc.is_valid(ordered.column("header_json")).to_pylist()
    members: dict[str | None, list[int]] = {}
    for number, row in enumerate(values):
        members.setdefault(row["SeriesInstanceUID"], []).append(number)
    firsts = python_rows(ordered.select(list(_SERIES)).take(
        arrow_array([group[0] for group in members.values()], pa.int64())))
    chosen = [next((n for n in group if has_header[n]), None) for group in members.values()]
    texts = ordered.column("header_json").take(
        arrow_array([0 if n is None else n for n in chosen], pa.int64())).to_pylist()
    series, headers = [], []
    for (uid, numbers), attributes, header_at, text in zip(
            members.items(), firsts, chosen, texts, strict=True):
        group = [values[n] for n in numbers]
        part: dict[str, Any] = {"data_file": name, "SeriesInstanceUID": uid}
        part.update(attributes)  # arg_min_null: NULL counts
        part["instance_count"] = len(group)
        part["frame_count"] = sum(1 if m["NumberOfFrames"] is None else m["NumberOfFrames"]
                                  for m in group)
        _aggregate(part, group, (("size_bytes", "size_bytes", sum),
                                 ("pixel_bytes", "pixel_bytes", sum),
                                 ("first_ingested_at", "ingested_at", min),
                                 ("last_ingested_at", "ingested_at", max),
                                 ("first_sop", "SOPInstanceUID", min),
                                 ("study_date_min", "StudyDate", min),
                                 ("study_date_max", "StudyDate", max)))
        part["study_date_nulls"] = sum(1 for m in group if m["StudyDate"] is None)
        part["modalities"] = _distinct(m["Modality"] for m in group) or None
        part["sop_classes"] = _distinct(m["SOPClassUID"] for m in group) or None
        series.append(part)
        headers.append((uid, None if header_at is None else text))  # arg_min: non-null
    fields = [pa.field("data_file", pa.string()), pa.field("SeriesInstanceUID", pa.string())]
    fields += [INSTANCES.schema.field(a).with_nullable(True) for a in _SERIES]
    fields += _counted(stamp)
    series_table = _built(series, fields)
    return (series_table, _studies_of(series, series_table.schema),
            _rep_headers_table(name, headers))


PYTHON_PARTS_ROWS = 640
"""Up to this many rows a commit's parts are aggregated in Python, beyond it in DuckDB (a
fixed ~12 ms of CPU, then little per row)."""

_AGGREGATED = ("SeriesInstanceUID", "SOPInstanceUID", "NumberOfFrames", "size_bytes",
               "pixel_bytes", "ingested_at", "StudyDate", "Modality", "SOPClassUID")
"""The columns :func:`_arrow_parts` aggregates row by row."""

_LIST = "l"
"""The item field's name of the lists DuckDB gives."""


def _counted(stamp: pa.DataType) -> list[pa.Field]:
    """The fields of a part after its attributes (as DuckDB types them)."""
    import pyarrow as pa

    strings = pa.list_(pa.field(_LIST, pa.string()))
    return [pa.field(n, t) for n, t in (
        ("instance_count", pa.int64()), ("frame_count", pa.int64()),
        ("size_bytes", pa.int64()), ("pixel_bytes", pa.int64()),
        ("first_ingested_at", stamp), ("last_ingested_at", stamp),
        ("first_sop", pa.string()), ("study_date_min", pa.date32()),
        ("study_date_max", pa.date32()), ("study_date_nulls", pa.int64()),
        ("modalities", strings), ("sop_classes", strings))]


def _aggregate(part: dict[str, Any], group: Sequence[dict[str, Any]],
               columns: Sequence[tuple[str, str, Callable[[list[Any]], Any]]]) -> None:
    """``part[name] = pick(the values of column in group that are not null)`` per
    (name, column, pick), or None without any (SQL's sum, min and max)."""
    for name, column, pick in columns:
        values = [m[column] for m in group if m[column] is not None]
        part[name] = pick(values) if values else None


def _distinct(values: Iterable[Any]) -> list[Any]:
    """The values that are not null, each once, in order."""
    return list(dict.fromkeys(v for v in values if v is not None))


def _built(rows: list[dict[str, Any]], fields: list[pa.Field]) -> pa.Table:
    """``rows`` as a table of ``fields``, its timestamps built as UTC (the writer's own
    conversion: the same instants), then in the fields' zone."""
    import pyarrow as pa

    utc = pa.timestamp("us", tz="UTC")
    built = [f.with_type(utc) if pa.types.is_timestamp(f.type) else f for f in fields]
    return python_table(rows, pa.schema(built)).cast(pa.schema(fields))


def _studies_of(series: list[dict[str, Any]], schema: pa.Schema) -> pa.Table:
    """:func:`studies_from_series_sql` over one file's series parts (``series``, of
    ``schema``), in Python."""
    import pyarrow as pa

    studies: dict[str | None, list[dict[str, Any]]] = {}
    for part in sorted(series, key=lambda p: p["first_sop"]):  # (never null here)
        studies.setdefault(part["StudyInstanceUID"], []).append(part)
    rows = []
    for study, parts in studies.items():
        first = parts[0]  # the lowest first_sop: arg_min_null(..., first_sop)
        row: dict[str, Any] = {"data_file": first["data_file"], "StudyInstanceUID": study}
        row.update({a: first[a] for a in _PATIENT_STUDY})
        _aggregate(row, parts, (
            *((c, c, sum) for c in ("instance_count", "frame_count", "size_bytes",
                                    "pixel_bytes", "study_date_nulls")),
            ("first_ingested_at", "first_ingested_at", min),
            ("last_ingested_at", "last_ingested_at", max), ("first_sop", "first_sop", min),
            ("study_date_min", "study_date_min", min),
            ("study_date_max", "study_date_max", max)))
        row["modalities"] = _distinct(v for p in parts for v in p["modalities"] or ())
        row["sop_classes"] = _distinct(v for p in parts for v in p["sop_classes"] or ())
        row["series"] = _distinct(p["SeriesInstanceUID"] for p in parts) or None
        rows.append(row)
    fields = [schema.field(c) for c in (
        "data_file", "StudyInstanceUID", *_PATIENT_STUDY, "instance_count", "frame_count",
        "size_bytes", "pixel_bytes", "first_ingested_at", "last_ingested_at", "first_sop",
        "study_date_min", "study_date_max", "study_date_nulls", "modalities", "sop_classes")]
    fields.append(pa.field("series", pa.list_(pa.field(_LIST, pa.string()))))
    return _built(rows, fields)


def _rep_headers_table(name: str, rows: Sequence[tuple[str | None, str | None]]) -> pa.Table:
    """The :data:`REP_HEADERS` rows of the data file ``name``: per (series, ``header_json`` of
    its first instance) of ``rows``, the header cut to :data:`REP_HEADER_KEYWORDS`."""
    import pyarrow as pa
    from pydicom.datadict import tag_for_keyword

    parts = pa.schema([(c, pa.string()) for c in ("data_file", "SeriesInstanceUID", "rep_header")])
    tags = [f"{int(tag_for_keyword(k) or 0):08X}" for k in REP_HEADER_KEYWORDS]
    kept = []
    for _, text in rows:
        header = json.loads(text) if text else {}
        kept.append(json.dumps({t: header[t] for t in tags if t in header},
                               separators=(",", ":")))
    return pa.Table.from_arrays([arrow_array([name] * len(rows), pa.string()),
                                 arrow_array([r[0] for r in rows], pa.string()),
                                 arrow_array(kept, pa.string())], schema=parts)


def _rep_headers(con: duckdb.DuckDBPyConnection, reader: Any, name: str) -> pa.Table:
    """The :data:`REP_HEADERS` rows of one data file (``reader``), its ``header_json``
    streamed once (DuckDB keeps one header per series while it reads)."""
    import pyarrow as pa

    present = set(reader.schema_arrow.names)
    columns = ["SeriesInstanceUID", "SOPInstanceUID", "header_json"]
    if not set(columns) <= present:
        return _rep_headers_table(name, [])
    schema = reader.schema_arrow
    stream = pa.RecordBatchReader.from_batches(
        pa.schema([schema.field(c) for c in columns]),
        reader.iter_batches(columns=columns, batch_size=16_384),
    )
    con.register("header_source", stream)
    try:
        rows = con.execute(
            "SELECT SeriesInstanceUID, arg_min(header_json, SOPInstanceUID) FROM header_source "
            "GROUP BY SeriesInstanceUID").fetchall()
    finally:
        con.unregister("header_source")
    return _rep_headers_table(name, rows)


def rep_headers_of(tables: DeltaTables, files: Sequence[str]) -> tuple[str, ...]:
    """The paths of the :data:`REP_HEADERS` parts that exist for ``files``."""
    root = tables.location.join("tables", INSTANCES.name)
    have = _listing(tables, REP_HEADERS)
    return tuple(_summary_path(root, f, REP_HEADERS) for f in files
                 if posixpath.basename(f) in have)


def _table(result: object) -> pa.Table:
    """A whole Arrow table from DuckDB's ``.arrow()`` (a table, or a reader to drain)."""
    import pyarrow as pa

    if isinstance(result, pa.Table):
        return result
    read_all = getattr(result, "read_all", None)
    if read_all is None:
        raise TypeError(f"unexpected DuckDB result {type(result).__name__}")
    table = read_all()
    assert isinstance(table, pa.Table)
    return table


def studies_from_series_sql(source: str) -> str:
    """The SQL that turns series parts (``source``) into study parts, per data file."""
    attrs = ", ".join(f"arg_min_null({_q(a)}, first_sop) AS {_q(a)}" for a in _PATIENT_STUDY)
    return (
        f"SELECT data_file, StudyInstanceUID, {attrs}, "
        "CAST(sum(instance_count) AS BIGINT) AS instance_count, "
        "CAST(sum(frame_count) AS BIGINT) AS frame_count, "
        "CAST(sum(size_bytes) AS BIGINT) AS size_bytes, "
        "CAST(sum(pixel_bytes) AS BIGINT) AS pixel_bytes, "
        "min(first_ingested_at) AS first_ingested_at, max(last_ingested_at) AS "
        "last_ingested_at, min(first_sop) AS first_sop, "
        "min(study_date_min) AS study_date_min, max(study_date_max) AS study_date_max, "
        "CAST(sum(study_date_nulls) AS BIGINT) AS study_date_nulls, "
        "list_distinct(flatten(list(modalities))) AS modalities, "
        "list_distinct(flatten(list(sop_classes))) AS sop_classes, "
        "list_distinct(list(SeriesInstanceUID) FILTER (WHERE SeriesInstanceUID IS NOT NULL)) "
        f"AS series FROM {source} GROUP BY data_file, StudyInstanceUID"
    )


def write_summaries(
    tables: DeltaTables, delta: DeltaTable | None = None, files: Sequence[str] | None = None,
    rows: pa.Table | None = None,
) -> int:
    """Write the summaries of data files of ``instances``; returns how many were written.

    Parameters
    ----------
    tables : DeltaTables
        The lake's tables.
    delta : DeltaTable, optional
        The version whose files lacking a summary are summarised (default: the newest).
    files : sequence of str, optional
        Summarise exactly these data files (paths, as :func:`data_files` gives them):
        what a commit just added, without listing the summaries already written.
    rows : pyarrow.Table, optional
        With ``files`` of one data file: every row of that file, in the table's columns (the
        rows a commit just appended as that one file), summarised without reading the file
        back. The summary is the same (a pure function of the rows).

    Safe to run concurrently and to repeat: a summary is a pure function of its immutable
    data file, written with an atomic rename or a single object put.
    """
    if files is not None:
        todo: Sequence[str] = files
    else:
        delta = delta if delta is not None else tables.open(INSTANCES.name)
        todo = summaries_of(tables, data_files(tables, delta)).missing
    if not todo:
        return 0
    if rows is not None and len(todo) != 1:
        raise ValueError("rows are the rows of one data file")
    with tables.cursor() as con:  # (the tables' own DuckDB database: one thread)
        for data_file in todo:
            _summarise(con, tables, data_file, rows)
    return len(todo)


def write_rep_headers(tables: DeltaTables, delta: DeltaTable | None = None) -> int:
    """Write the :data:`REP_HEADERS` parts the data files of ``delta`` (default: the newest
    version) lack (files summarised before they existed); returns how many were written.
    Reads each such file's ``header_json`` once. Safe to repeat and to run concurrently."""
    import duckdb
    import pyarrow.parquet as pq

    delta = delta if delta is not None else tables.open(INSTANCES.name)
    files = data_files(tables, delta)
    have = {posixpath.basename(p) for p in rep_headers_of(tables, files)}
    todo = [f for f in files if posixpath.basename(f) not in have]
    fs = tables.location.fs
    root = tables.location.join("tables", INSTANCES.name)
    con = duckdb.connect()
    written: dict[str, str] = {}
    try:
        con.execute("SET threads = 1")
        for data_file in todo:
            with fs.open(data_file, "rb") as fh:
                table = _rep_headers(con, pq.ParquetFile(fh), posixpath.basename(data_file))
            sink = io.BytesIO()
            pq.write_table(table, sink, compression="zstd")
            written[data_file] = _summary_path(root, data_file, REP_HEADERS)
            atomic_write(fs, written[data_file], sink.getvalue())
    finally:
        con.close()
    # A file an erasure (or a compaction) removed meanwhile: its header values must not outlive
    # it. forget prunes the summaries of the files it removed after its commit; a part written
    # after that prune is removed here (a commit after this check is followed by its prune).
    current = set(data_files(tables, tables.open(INSTANCES.name)))
    for data_file, part in written.items():
        if data_file not in current:
            fs.rm(part)
    return len(todo)


def prune_summaries(tables: DeltaTables, keep: Iterable[str]) -> int:
    """Remove the summaries whose data file is not in ``keep`` (the names of data files
    still on storage, e.g. after ``vacuum``); returns how many were removed."""
    names = {posixpath.basename(f) for f in keep}
    fs = tables.location.fs
    root = tables.location.join("tables", INSTANCES.name)
    removed = 0
    for kind in (SERIES_PARTS, STUDY_PARTS, REP_HEADERS):
        for name in _listing(tables, kind) - names:
            fs.rm(posixpath.join(root, SUMMARY_DIR, kind, name))
            removed += 1
    return removed
