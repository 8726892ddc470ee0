"""Cohorts: a saved query, the catalog version it ran on, and its frozen member list.

A cohort pins everything an export needs to be repeatable: the ``instances`` version
the query ran on (exports read the catalog *as of* that version) and, per member
instance, the hash of its stored header and of its pixel blob. Blobs are immutable and
content-addressed, so exporting the same cohort a year later gives the same bytes,
and any drift is detected rather than exported.

Cohorts live in the Delta table ``cohorts`` (one row per cohort, members as a list
column); replacing a cohort keeps its earlier definitions in the table's history.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import pyarrow as pa

from lake._errors import ExportError, IntegrityError, QueryError
from lake.catalog import COHORTS, INSTANCES, in_set, string_set
from lake.catalog._tables import Decision, Judged

if TYPE_CHECKING:
    import duckdb

    from lake._lake import Lake
    from lake.catalog import DataFiles

__all__ = [
    "COHORTS",
    "Cohort",
    "CohortSummary",
    "FileRows",
    "Member",
    "create_cohort",
    "list_cohorts",
    "load_cohort",
    "resolve",
    "resolve_cohort",
    "resolve_reading",
]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

class Member(NamedTuple):
    """One instance of a cohort (a named tuple: cohorts hold hundreds of thousands).

    Parameters
    ----------
    series_uid : str
        The (pseudonymous) SeriesInstanceUID.
    sop_uid : str
        The (pseudonymous) SOPInstanceUID, unique in the lake.
    pixel_hash : str or None
        ``sha256:<hex>`` of the pixel blob; None for instances without pixel data.
    header_sha256 : str
        sha256 (hex) of the stored header bytes (``header_dicom``).
    """

    series_uid: str
    sop_uid: str
    pixel_hash: str | None
    header_sha256: str


@dataclass(frozen=True)
class Cohort:
    """A resolved cohort: saved (``name`` set) or one-off (``name`` is None).

    Parameters
    ----------
    name : str or None
        The saved name; None for a one-off query.
    query : str
        The SQL that selected it.
    catalog_version : int
        The ``instances`` version the query ran on.
    members : tuple of Member
        Sorted by series, then SOP instance UID.
    profiles : tuple of str
        De-identification profiles of the members, sorted.
    pixel_bytes : int
        Total stored pixel bytes.
    description : str
        Free text.
    created_at : datetime or None
        When it was saved (None for one-off cohorts).
    lake_version : str
        imaging-lake version that resolved it.
    withdrawn : int
        Members withdrawn by an erasure (``lake forget``) since it was saved.
    """

    name: str | None
    query: str
    catalog_version: int
    members: tuple[Member, ...]
    profiles: tuple[str, ...] = ()
    pixel_bytes: int = 0
    description: str = ""
    created_at: dt.datetime | None = None
    lake_version: str = ""
    withdrawn: int = 0

    @property
    def series(self) -> tuple[str, ...]:
        """Member SeriesInstanceUIDs, sorted."""
        return tuple(sorted({m.series_uid for m in self.members}))

    @property
    def label(self) -> str:
        """The name, or ``"query"`` for a one-off cohort (safe in a file name)."""
        return self.name or "query"


@dataclass(frozen=True)
class CohortSummary:
    """A saved cohort without its member list (what ``lake cohort list`` shows)."""

    name: str
    description: str
    query: str
    catalog_version: int
    created_at: dt.datetime
    series_count: int
    instance_count: int
    pixel_bytes: int
    profiles: tuple[str, ...]


def _check_name(name: str) -> None:
    if not _NAME.match(name):
        raise ExportError(
            f"invalid cohort name {name!r}: use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )


def _clean_query(sql: str) -> str:
    text = sql.strip()
    while text.endswith(";"):
        text = text[:-1].rstrip()
    if not text:
        raise QueryError("the cohort query is empty; give e.g. \"SELECT SeriesInstanceUID FROM "
                         "series WHERE Modality = 'CT'\"")
    return text


def _member_key(columns: Sequence[str]) -> str:
    if "SOPInstanceUID" in columns:
        key = "SOPInstanceUID"
    elif "SeriesInstanceUID" in columns:
        key = "SeriesInstanceUID"
    else:
        raise QueryError(
            "a cohort query must return a SeriesInstanceUID column (whole series) or a "
            "SOPInstanceUID column (single instances), e.g. SELECT SeriesInstanceUID FROM series "
            "WHERE Modality = 'CT'"
        )
    return key


def _with(query: str) -> str:
    # The newline before ')' keeps a trailing '-- comment' in the query from swallowing it.
    return f"WITH cohort_query AS (\n{query}\n)\n"


def _date_bounds(lake: Lake, query: str, version: int) -> str:
    """A StudyDate condition every member row meets, from the series summaries: exact (the
    summaries hold each series' date range and its rows without a date), and prunable
    (row groups holding other dates are skipped by their statistics)."""
    low, high, nulls = lake.sql(
        _with(query) + "SELECT min(study_date_min), max(study_date_max), sum(study_date_nulls) "
        "FROM series_parts WHERE SeriesInstanceUID IN (SELECT SeriesInstanceUID FROM "
        "cohort_query WHERE SeriesInstanceUID IS NOT NULL)",
        as_of=version,
    ).fetchall()[0]
    conditions = []
    if low is not None:
        conditions.append(f"StudyDate BETWEEN DATE '{low.isoformat()}' AND DATE "
                          f"'{high.isoformat()}'")
    if nulls:
        conditions.append("StudyDate IS NULL")
    return " OR ".join(conditions) or "FALSE"


def _one_row_group(lake: Lake, instances: DataFiles | None) -> bool:
    """Whether the ``instances`` rows of this version (None: not known here) are one Parquet
    row group of one local data file (a small lake): a StudyDate condition can then skip
    nothing, and :func:`_date_bounds`, a query of its own (a fifth of a small export's
    fixed cost), is not worth running. The condition is exact either way: the members are
    the same with it and without it."""
    if instances is None or not lake.location.is_local or len(instances.paths) != 1:
        return False
    return bool(instances.footer(instances.paths[0]).num_row_groups == 1)


def _member_query(query: str, key: str, dates: str | None = None) -> str:
    return (
        _with(query) + "SELECT SeriesInstanceUID, SOPInstanceUID, pixel_hash,"
        " header_sha256, coalesce(pixel_bytes, 0) AS pixel_bytes,"
        " profile FROM instances"
        f" WHERE {key} IN (SELECT {key} FROM cohort_query WHERE {key} IS NOT NULL)"
        + (f" AND ({dates})" if dates else "")
        + " ORDER BY SeriesInstanceUID, SOPInstanceUID"
    )


def resolve_cohort(lake: Lake, sql: str, *, as_of: int | None = None) -> Cohort:
    """Run a cohort query and freeze its members (without saving it).

    Parameters
    ----------
    lake : Lake
        An open lake.
    sql : str
        DuckDB SQL over the catalog returning ``SeriesInstanceUID`` (every instance of
        those series joins the cohort) or ``SOPInstanceUID`` (those instances only).
    as_of : int, optional
        The ``instances`` version to run on (default: the current one).

    Returns
    -------
    Cohort
        With ``name`` None.

    Raises
    ------
    QueryError
        If the query fails or returns neither UID column.
    ExportError
        If it selects no instance.
    """
    return _resolved(lake, sql, as_of, ())[0]


class FileRows(NamedTuple):
    """The rows of the one data file of a catalog version, read once to resolve a cohort:
    ``table`` holds every row of ``path`` (not only the members'), with the member columns
    and the others asked of :func:`resolve_reading` that the version's schema has."""

    path: str
    table: pa.Table


def resolve_reading(lake: Lake, cohort_or_sql: Cohort | str,
                    columns: Sequence[str]) -> tuple[Cohort, FileRows | None]:
    """:func:`resolve`, and the rows of the one data file it read the members from, with
    ``columns`` too (those the version has), when it read them so (a one-off query on a
    small lake: :func:`_one_row_group`), else None: an export reads its members' rows for
    plan and headers from them instead of reading that file a second time."""
    if isinstance(cohort_or_sql, Cohort):
        return cohort_or_sql, None
    text = cohort_or_sql.strip()
    if _NAME.match(text):
        return load_cohort(lake, text), None
    return _resolved(lake, text, None, columns)


def _resolved(lake: Lake, sql: str, as_of: int | None,
              columns: Sequence[str]) -> tuple[Cohort, FileRows | None]:
    """:func:`resolve_cohort`, and the :class:`FileRows` it read (with ``columns``), if any."""
    from lake import __version__

    query = _clean_query(sql)
    current: DataFiles | None = None
    if as_of is None:
        # what Lake.version reads, from the snapshot the lake keeps (brought up to date)
        version, current = lake.tables.latest(INSTANCES.name)
    else:
        version = as_of
    small = _one_row_group(lake, current)
    # members read from the one data file with pyarrow; not from a version that lacks a
    # column they need (a lake older than them: the query path says what is missing)
    one_file = (current if small and current is not None
                and set(_MEMBER_COLUMNS) <= set(current.schema.names) else None)
    # (the columns read from it: the members' and the caller's that this version has)
    held_names: set[str] = set() if one_file is None else set(one_file.schema.names)
    read = [c for c in dict.fromkeys([*_MEMBER_COLUMNS, *columns]) if c in held_names]
    at_once = None if one_file is None else _members_at_once(lake, query, version, one_file, read)
    held: tuple[pa.Table, FileRows] | None = None
    if at_once is not None:
        key, held = at_once
    else:
        key = _member_key(lake.sql(query, as_of=version).columns)
        if one_file is not None:
            held = _members_of_one_file(lake, query, key, version, one_file, read)
    table, rows = (None, None) if held is None else held
    if table is None:
        dates = None
        if key == "SeriesInstanceUID" and not small:
            dates = _date_bounds(lake, query, version)
        table = _fetched(lake.sql(_member_query(query, key, dates), as_of=version))
    if table.num_rows == 0:
        raise ExportError(
            f"the cohort query selects no instance at catalog version {version}; "
            "check it with Lake.sql()", functions=("Lake.sql",)
        )
    if as_of is not None and _erasure_since(lake, as_of):
        # The rows of version as_of may be those of an erasure that has run (or runs) since.
        raise ExportError(
            f"an erasure (lake.steward.forget()) ran after catalog version {as_of}: a cohort "
            "resolved on it could name withdrawn instances; pass a later as_of=, or none",
            parameters=("as_of",), functions=("lake.steward.forget",)
        )
    import pyarrow.compute as pc  # (not imported by an export of a saved cohort: ~0.03 s)

    hashes = _header_hashes(lake, table, version)
    sops = table.column("SOPInstanceUID").to_pylist()
    stored = table.column("header_sha256").to_pylist()
    if hashes:
        stored = [hashes.get(sop, h) for sop, h in zip(sops, stored, strict=True)]
    members = tuple(map(Member._make, zip(
        table.column("SeriesInstanceUID").to_pylist(), sops,
        table.column("pixel_hash").to_pylist(), stored, strict=True,
    )))
    profiles = tuple(sorted({p for p in table.column("profile").to_pylist() if p is not None}))
    cohort = Cohort(
        name=None,
        query=query,
        catalog_version=version,
        members=members,
        profiles=profiles,
        pixel_bytes=int(pc.sum(table.column("pixel_bytes")).as_py() or 0),
        lake_version=__version__,
    )
    return cohort, rows


def _fetched(relation: duckdb.DuckDBPyRelation) -> pa.Table:
    """The rows of a relation over the cohort query, its execution errors as QueryError."""
    try:
        table = relation.arrow()
    except Exception as exc:  # noqa: BLE001 - DuckDB raises many types at execution time
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise QueryError(f"query failed: {first}") from None
    return table if isinstance(table, pa.Table) else table.read_all()


_MEMBER_COLUMNS = ("SeriesInstanceUID", "SOPInstanceUID", "pixel_hash", "header_sha256",
                   "pixel_bytes", "profile")


def _members_of_one_file(lake: Lake, query: str, key: str, version: int, files: DataFiles,
                         read: Sequence[str]) -> tuple[pa.Table, FileRows] | None:
    """The rows :func:`_member_query` returns (``pixel_bytes`` null where it gives 0), for
    ``instances`` rows that are one row group of one local data file (:func:`_one_row_group`):
    DuckDB runs the cohort query for its keys alone (once: ``Lake._execute``), and the
    member rows are that file's, read with pyarrow. DuckDB's scan of the
    ``instances`` view (its typed select list over every column) was two thirds of the
    member query's CPU on a small lake, where the file is read whole anyway. ``files`` hold
    the member columns (the caller checked); ``read``: the columns read from the file, with
    the rows it holds (:func:`_rows_holding`). None when the keys are not strings or the
    file cannot be read."""
    description, found = lake._execute(
        _with(query) + f"SELECT DISTINCT {key} FROM cohort_query WHERE {key} IS NOT NULL",
        as_of=version,
    )
    if str(description[0][1]) != "VARCHAR":
        return None  # a key of another type: the member query says why it cannot compare
    return _rows_holding(files, key, [value for (value,) in found], read)


_KEYS = ("SOPInstanceUID", "SeriesInstanceUID")


def _members_at_once(
    lake: Lake, query: str, version: int, files: DataFiles, read: Sequence[str]
) -> tuple[str, tuple[pa.Table, FileRows] | None] | None:
    """The cohort's key column (:func:`_member_key`) and the rows of
    :func:`_members_of_one_file` (None where it gives None) from one run of the cohort
    query: its distinct values of whichever of the two UID columns it returns. What
    choosing the key first costs is a bind of the query of its own (~1 ms of CPU, a tenth
    of a small export's fixed cost). None when that run fails (a query returning neither
    column, or failing): the caller then takes the path that says why, in the lake's words.
    ``files``, ``read``: as for :func:`_members_of_one_file`.
    """
    try:
        description, found = lake._execute(
            _with(query) + "SELECT DISTINCT COLUMNS('^(" + "|".join(_KEYS) + ")$') "
            "FROM cohort_query", as_of=version)
    except QueryError:
        return None
    names = [str(column[0]) for column in description]
    if not names or not set(names) <= set(_KEYS) or len(set(names)) != len(names):
        return None
    key = _member_key(names)
    at = names.index(key)
    if str(description[at][1]) != "VARCHAR":
        return key, None  # a key of another type: the member query says why it cannot compare
    return key, _rows_holding(files, key, {row[at] for row in found} - {None}, read)


def _rows_holding(files: DataFiles, key: str, values: Collection[str],
                  read: Sequence[str]) -> tuple[pa.Table, FileRows] | None:
    """The :data:`_MEMBER_COLUMNS` of the rows of the one data file of ``files`` whose
    ``key`` is one of ``values``, sorted as :func:`_member_query` sorts them, and the
    file's rows as read (``read``: the member columns and others, in one read); None when
    the file cannot be read."""
    keys = string_set(values)  # (in_set's value set: large strings)
    path = files.paths[0]
    try:
        every = files.read(path, read)
    except OSError:
        return None  # removed meanwhile ('lake forget' + 'lake vacuum'): the query says so
    rows = every.select(list(_MEMBER_COLUMNS))
    rows = rows.filter(in_set(rows.column(key), keys))
    # pixel_bytes stays null where the query's coalesce gives 0: only its sum is used, and
    # a sum skips nulls (filling them from a Python 0 would import pandas: pyarrow converts
    # Python values through it)
    return (rows.sort_by([("SeriesInstanceUID", "ascending"), ("SOPInstanceUID", "ascending")]),
            FileRows(path, every))


def _header_hashes(lake: Lake, members: pa.Table, version: int) -> dict[str, str]:
    """sha256 of the stored headers of members whose row predates the header_sha256 column
    (read from header_dicom); rows that carry it are not read again."""
    import pyarrow.compute as pc

    missing = members.filter(pc.is_null(members.column("header_sha256")))
    if missing.num_rows == 0:
        return {}
    uids = missing.column("SOPInstanceUID").to_pylist()
    rows = lake.sql(
        "SELECT SOPInstanceUID, header_dicom FROM instances WHERE SOPInstanceUID IN "
        "(SELECT unnest(" + _string_list(uids) + "))",
        as_of=version,
    ).fetchall()
    return {uid: hashlib.sha256(header).hexdigest() for uid, header in rows}


def _string_list(values: Sequence[str]) -> str:
    return "[" + ", ".join("'" + v.replace("'", "''") + "'" for v in values) + "]"


def _row(cohort: Cohort) -> pa.Table:
    """The ``cohorts`` row of ``cohort``, built column by column: a hundred thousand
    members as Python dicts for ``Table.from_pylist`` took most of a second."""
    schema = COHORTS.schema
    series = list(cohort.series)
    member_type = schema.field("members").type.value_type
    columns = list(zip(*cohort.members, strict=True)) or [(), (), (), ()]
    members = pa.StructArray.from_arrays(
        [pa.array(values, type=pa.string()) for values in columns], fields=list(member_type)
    )
    scalars = {
        "name": cohort.name,
        "description": cohort.description,
        "query": cohort.query,
        "catalog_version": cohort.catalog_version,
        "created_at": cohort.created_at,
        "lake_version": cohort.lake_version,
        "series_count": len(series),
        "instance_count": len(cohort.members),
        "pixel_bytes": cohort.pixel_bytes,
        "withdrawn": cohort.withdrawn,
    }
    arrays: list[pa.Array] = []
    for field in schema:
        if field.name == "members":
            arrays.append(pa.ListArray.from_arrays(pa.array([0, len(members)], pa.int32()),
                                                   members, type=field.type))
        elif field.name == "series":
            arrays.append(pa.array([series], type=field.type))
        elif field.name == "profiles":
            arrays.append(pa.array([list(cohort.profiles)], type=field.type))
        else:
            arrays.append(pa.array([scalars[field.name]], type=field.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def _from_row(row: dict[str, Any]) -> Cohort:
    return Cohort(
        name=row["name"],
        query=row["query"],
        catalog_version=int(row["catalog_version"]),
        members=tuple(
            Member(m["SeriesInstanceUID"], m["SOPInstanceUID"], m["pixel_hash"], m["header_sha256"])
            for m in row["members"]
        ),
        profiles=tuple(row["profiles"] or ()),
        pixel_bytes=int(row["pixel_bytes"] or 0),
        description=row["description"] or "",
        created_at=row["created_at"],
        lake_version=row["lake_version"] or "",
        withdrawn=int(row.get("withdrawn") or 0),
    )


def create_cohort(
    lake: Lake,
    name: str,
    sql: str,
    *,
    description: str = "",
    replace: bool = False,
    as_of: int | None = None,
) -> Cohort:
    """Run ``sql``, freeze its members and save them as cohort ``name``.

    Parameters
    ----------
    lake : Lake
        An open lake.
    name : str
        1-64 letters, digits, ``.``, ``_``, ``-``. Immutable: saving an existing name
        fails unless ``replace`` is true (the old definition stays in the table history).
    sql : str
        See :func:`resolve_cohort`.
    description : str
        Free text for the researcher's own notes.
    replace : bool
        Overwrite an existing cohort of that name.
    as_of : int, optional
        Run the query on this ``instances`` version (default: the current one).

    Returns
    -------
    Cohort

    Raises
    ------
    ExportError
        If the name is invalid, already taken (without ``replace``) or the query selects
        nothing.
    QueryError
        If the query fails.

    Examples
    --------
    >>> import lake  # doctest: +SKIP
    >>> from lake.export import create_cohort  # doctest: +SKIP
    >>> lk = lake.open("/data/lake")  # doctest: +SKIP
    >>> ct = create_cohort(lk, "ct-chest",
    ...     "SELECT SeriesInstanceUID FROM series WHERE Modality = 'CT'")  # doctest: +SKIP
    """
    _check_name(name)
    tables = lake.tables
    tables.create(COHORTS)
    saved: list[Cohort] = []

    def plan(judged: Judged) -> Decision:
        # The query runs after the snapshot of ``cohorts`` this commit must directly follow
        # was opened: an erasure that deletes rows after it also commits to ``cohorts``
        # before it reads them (lake.steward.forget), so either this commit lands first and
        # the erasure withdraws its members, or it loses and runs the query again on the
        # catalog without them.
        # (resolve_cohort refuses an as_of= older than an erasure: see _erasure_since)
        resolved = resolve_cohort(lake, sql, as_of=as_of)
        cohort = Cohort(
            name=name,
            query=resolved.query,
            catalog_version=resolved.catalog_version,
            members=resolved.members,
            profiles=resolved.profiles,
            pixel_bytes=resolved.pixel_bytes,
            description=description,
            created_at=dt.datetime.now(dt.UTC).replace(microsecond=0),
            lake_version=resolved.lake_version,
        )
        if judged.new.num_rows == 0 and not replace:
            raise ExportError(
                f"a cohort named {name!r} exists already; choose another name, or pass "
                "replace=True to redefine it", parameters=("replace",)
            )
        saved[:] = [cohort]
        return Decision(_row(cohort), None, () if judged.new.num_rows else (name,))

    tables.insert_new(COHORTS, [{"name": name}], key="name", plan=plan)
    return saved[0]


def _erasure_since(lake: Lake, version: int) -> bool:
    """Whether an erasure changed (or is changing) ``instances`` after ``version``.

    Three records are consulted, so that none of them has to be complete:

    - ``erasures``: a finished erasure records the ``instances`` version after it
      (``catalog_version``);
    - ``tombstones``: an erasure lays its tombstones before its first commit to
      ``instances``, also one that is still running or was interrupted; one laid after
      ``version`` was committed is an erasure since;
    - the ``instances`` log: an erasure's own commit (:data:`ERASURE_KEY`) or a delete (only
      an erasure deletes instance rows) among the commits after ``version``. The log alone
      is not enough: commit files removed by a log cleanup, or a log rewritten by a tool,
      leave ``history()`` without those entries (review nit N8).
    """
    import pyarrow.compute as pc

    from lake.catalog import ERASURES, TOMBSTONES
    from lake.catalog._tombstones import ERASURE_KEY

    tables = lake.tables
    if tables.exists(ERASURES.name):
        files = tables.data_files(ERASURES.name)
        for path in files.paths if "catalog_version" in files.schema.names else ():
            after = pc.max(files.read(path, ["catalog_version"]).column(0)).as_py()
            if after is not None and after > version:
                return True
    committed = tables.commit_time(INSTANCES.name, version)
    if committed is not None and tables.exists(TOMBSTONES.name):
        files = tables.data_files(TOMBSTONES.name)
        since = int(committed.timestamp() * 1_000_000)  # laid_at is in microseconds, UTC
        for path in files.paths:
            laid = files.read(path, ["laid_at"]).column(0).cast(pa.int64())
            latest = pc.max(laid).as_py()
            if latest is not None and latest >= since:
                return True
    if tables.latest(INSTANCES.name)[0] <= version:  # (kept: no new opening of the table)
        return False
    delta = tables.open(INSTANCES.name)
    newer = int(delta.version()) - version
    return any(entry.get("operation") == "DELETE" or ERASURE_KEY in entry
               for entry in delta.history(limit=newer))


def _cohort_rows(lake: Lake, columns: list[str] | None, name: str | None) -> list[dict[str, Any]]:
    if not lake.tables.exists(COHORTS.name):
        return []
    files = lake.tables.data_files(COHORTS.name)
    names = files.schema.names if columns is None else columns
    rows: list[dict[str, Any]] = []
    for path in files.paths:
        # column by column, filtered here: what python_rows of the table filtered by name
        # gives, without pyarrow.compute (its filter and casts import it: ~0.03 s of CPU)
        values = files.values(path, names)
        held = range(len(values[names[0]])) if names else range(0)
        chosen = held if name is None else [i for i in held if values["name"][i] == name]
        rows.extend({c: values[c][i] for c in names} for i in chosen)
    return rows


def load_cohort(lake: Lake, name: str) -> Cohort:
    """The saved cohort ``name`` with its frozen members.

    Raises
    ------
    ExportError
        If there is no such cohort.
    """
    _check_name(name)
    rows = _cohort_rows(lake, None, name)
    if not rows:
        known = ", ".join(s.name for s in list_cohorts(lake)) or "none yet"
        raise ExportError(
            f"no cohort named {name!r} (saved cohorts: {known}); create it with "
            "lake.export.create_cohort() first", functions=("lake.export.create_cohort",)
        )
    if len(rows) > 1:
        raise IntegrityError(f"the cohorts table holds {len(rows)} rows named {name!r}")
    return _from_row(rows[0])


def list_cohorts(lake: Lake) -> list[CohortSummary]:
    """Every saved cohort, by name, without member lists."""
    columns = [c.name for c in COHORTS.columns if c.name not in ("members", "series")]
    rows = _cohort_rows(lake, columns, None)
    return sorted(
        (
            CohortSummary(
                name=r["name"],
                description=r["description"] or "",
                query=r["query"],
                catalog_version=int(r["catalog_version"]),
                created_at=r["created_at"],
                series_count=int(r["series_count"]),
                instance_count=int(r["instance_count"]),
                pixel_bytes=int(r["pixel_bytes"] or 0),
                profiles=tuple(r["profiles"] or ()),
            )
            for r in rows
        ),
        key=lambda s: s.name,
    )


def resolve(lake: Lake, cohort_or_sql: Cohort | str) -> Cohort:
    """A :class:`Cohort` from a cohort, a saved cohort's name, or a one-off SQL query.

    A string that is a valid cohort name (no spaces) names a saved cohort; anything
    else is run as SQL on the current catalog version.
    """
    return resolve_reading(lake, cohort_or_sql, ())[0]
