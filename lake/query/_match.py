"""DICOM query matching (PS3.4 C.2.2.2) turned into bound SQL predicates or Python tests.

A query identifier is parsed into :class:`Key` objects, one per attribute. A key with
no value (or ``*``) is a return key only. Otherwise it is matched by kind:

- ``uid``: list of UID matching (``UID1\\UID2``), never wildcards;
- ``date`` / ``time``: single values or ranges ``A-B``, ``A-``, ``-B``;
- ``string``: single value, a list of values, or wildcards ``*`` and ``?``;
- ``int`` / ``float``: single values or lists;
- ``strings`` (multi-valued, e.g. ModalitiesInStudy): matches when any value matches.

Received values are only ever passed to DuckDB as bound parameters.
"""

from __future__ import annotations

import datetime as dt
import enum
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import Tag

from lake._errors import QueryError

__all__ = [
    "Key",
    "Level",
    "Predicate",
    "identifier_from_filters",
    "parse_identifier",
    "predicate",
    "python_matcher",
]

_WILDCARDS = re.compile(r"[*?]")
_IGNORED = {"QueryRetrieveLevel", "SpecificCharacterSet", "TimezoneOffsetFromUTC"}


class Level(enum.StrEnum):
    """Query/retrieve levels."""

    PATIENT = "PATIENT"
    STUDY = "STUDY"
    SERIES = "SERIES"
    IMAGE = "IMAGE"

    @property
    def unique_key(self) -> str:
        return _UNIQUE[self]


_UNIQUE = {
    Level.PATIENT: "PatientID",
    Level.STUDY: "StudyInstanceUID",
    Level.SERIES: "SeriesInstanceUID",
    Level.IMAGE: "SOPInstanceUID",
}


@dataclass(frozen=True)
class Key:
    """One attribute of a query identifier.

    Attributes
    ----------
    keyword : str
        DICOM keyword.
    tag : int
        The tag.
    vr : str
        Its VR from the data dictionary.
    values : tuple of str
        The matching values (split on backslash); empty for a return key.
    """

    keyword: str
    tag: int
    vr: str
    values: tuple[str, ...]
    fuzzy: bool = False
    """Fuzzy semantic matching of person names (QIDO-RS ``fuzzymatching=true``)."""

    @property
    def is_return_only(self) -> bool:
        return not self.values


def _values_of(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, MultiValue | list | tuple):
        parts = [str(v) for v in value]
    elif isinstance(value, bytes):
        parts = value.decode("ascii", "replace").split("\\")
    else:
        parts = str(value).split("\\")
    parts = [p.strip(" \x00") for p in parts]
    if not any(parts) or parts == ["*"]:
        return ()  # universal matching
    return tuple(parts)


def parse_identifier(identifier: Dataset, levels: Sequence[Level]) -> tuple[Level, list[Key]]:
    """The level and keys of a C-FIND/C-GET/C-MOVE identifier.

    Parameters
    ----------
    identifier : Dataset
        The received identifier.
    levels : sequence of Level
        Levels allowed by the information model (Study Root has no PATIENT).

    Raises
    ------
    QueryError
        If the level is missing or not allowed, or an element cannot be read.
    """
    try:
        raw_level = str(identifier.get("QueryRetrieveLevel", "") or "").strip().upper()
    except Exception:  # noqa: BLE001 - a malformed element from the network
        raise QueryError("the identifier's QueryRetrieveLevel cannot be read") from None
    try:
        level = Level(raw_level)
    except ValueError:
        raise QueryError(
            "QueryRetrieveLevel must be one of " + ", ".join(lv.value for lv in levels)
        ) from None
    if level not in levels:
        raise QueryError(
            f"level {level.value} is not part of this information model; use "
            + ", ".join(lv.value for lv in levels)
        )
    keys: list[Key] = []
    try:
        elements = list(identifier)
    except Exception:  # noqa: BLE001 - a malformed identifier from the network
        raise QueryError("the identifier cannot be decoded") from None
    for elem in elements:
        tag = int(elem.tag)
        if Tag(tag).is_private or Tag(tag).group in (0x0000, 0x0002):
            continue
        keyword = keyword_for_tag(tag)
        if not keyword or keyword in _IGNORED:
            continue
        vr = dictionary_VR(tag)
        if vr == "SQ":
            keys.append(Key(keyword, tag, vr, ()))  # sequence: returned empty, never matched
            continue
        try:
            values = _values_of(elem.value)
        except Exception:  # noqa: BLE001
            raise QueryError(f"the identifier's {keyword} cannot be decoded") from None
        keys.append(Key(keyword, tag, vr, values))
    return level, keys


def identifier_from_filters(filters: Sequence[str], level: Level = Level.STUDY) -> Dataset:
    """An identifier from ``KEYWORD=VALUE`` texts (the ``--query`` syntax).

    Values use DICOM matching: ``*``/``?`` wildcards, ``A-B`` date/time ranges,
    backslash-separated lists. ``KEYWORD`` alone (or ``KEYWORD=``) asks for a return key.

    Examples
    --------
    >>> ds = identifier_from_filters(["StudyDate=20200101-20201231", "ModalitiesInStudy=CT"])
    >>> ds.QueryRetrieveLevel, ds.StudyDate
    ('STUDY', '20200101-20201231')

    Raises
    ------
    QueryError
        If a keyword is unknown.
    """
    ds = Dataset()
    ds.QueryRetrieveLevel = level.value
    for text in filters:
        keyword, _, value = text.partition("=")
        keyword = keyword.strip()
        tag = tag_for_keyword(keyword)
        if tag is None:
            raise QueryError(
                f"unknown DICOM keyword {keyword!r} in the query; use exact keywords such as "
                "PatientID, StudyDate, ModalitiesInStudy"
            )
        vr = dictionary_VR(tag)
        if vr == "SQ":
            raise QueryError(f"{keyword} is a sequence; sequence matching is not supported")
        setattr(ds, keyword, value.strip())
    return ds


# --- values ---------------------------------------------------------------------------

_TIME_RE = re.compile(r"^(\d{2})(\d{2})?(\d{2})?(?:\.(\d{1,6}))?$")


def parse_date(text: str) -> dt.date:
    """A DA value ``YYYYMMDD`` (``YYYY.MM.DD`` accepted).

    Raises
    ------
    QueryError
        If the text is not a date.
    """
    clean = text.replace(".", "").strip()
    try:
        if len(clean) != 8 or not clean.isdigit():
            raise ValueError
        return dt.date(int(clean[:4]), int(clean[4:6]), int(clean[6:8]))
    except ValueError:
        raise QueryError("a date value must be YYYYMMDD (or a range YYYYMMDD-YYYYMMDD)") from None


def parse_time(text: str, upper: bool = False) -> dt.time:
    """A TM value; partial times are padded down (or up, for the end of a range).

    Raises
    ------
    QueryError
        If the text is not a time.
    """
    match = _TIME_RE.match(text.replace(":", "").strip())
    if match is None:
        raise QueryError("a time value must be HH[MM[SS[.F]]] (or a range A-B)")
    hh, mm, ss, frac = match.groups()
    try:
        hour = int(hh)
        minute = int(mm) if mm is not None else (59 if upper else 0)
        second = int(ss) if ss is not None else (59 if upper else 0)
        if second == 60:
            second = 59  # leap second
        micro = int((frac or "").ljust(6, "9" if upper else "0"))  # pad to microseconds
        return dt.time(hour, minute, second, micro)
    except ValueError:
        raise QueryError("a time value must be HH[MM[SS[.F]]] (or a range A-B)") from None


def _range(text: str) -> tuple[str | None, str | None] | None:
    if "-" not in text:
        return None
    start, _, end = text.partition("-")
    return (start.strip() or None, end.strip() or None)


def _like(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")


def _regex(value: str, ignore_case: bool) -> re.Pattern[str]:
    pattern = "".join(
        ".*" if ch == "*" else "." if ch == "?" else re.escape(ch) for ch in value
    )
    return re.compile(f"^{pattern}$", re.DOTALL | (re.IGNORECASE if ignore_case else 0))


# --- SQL ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Predicate:
    """A SQL condition with its bound parameters."""

    sql: str
    params: tuple[Any, ...]


def _quote(column: str) -> str:
    return '"' + column.replace('"', '""') + '"'


def predicate(column: str, kind: str, key: Key) -> Predicate:
    """The SQL condition matching ``key`` against ``column`` of the given kind.

    Raises
    ------
    QueryError
        If a value cannot be used for this kind (a malformed date, a number that is
        not a number).
    """
    col = _quote(column)
    values = key.values
    if kind == "uid":
        marks = ", ".join("?" for _ in values)
        return Predicate(f"{col} IN ({marks})", tuple(values))
    if kind in ("date", "time"):
        parts: list[str] = []
        params: list[Any] = []
        for value in values:
            bounds = _range(value)
            if bounds is None:
                if kind == "date":
                    parts.append(f"{col} = ?")
                    params.append(parse_date(value))
                else:  # a single time matches the whole precision it was given with
                    parts.append(f"{col} BETWEEN ? AND ?")
                    params.extend([parse_time(value), parse_time(value, upper=True)])
                continue
            start, end = bounds
            if start is None and end is None:
                raise QueryError(f"an empty range in {key.keyword}")
            lo = None if start is None else (
                parse_date(start) if kind == "date" else parse_time(start)
            )
            hi = None if end is None else (
                parse_date(end) if kind == "date" else parse_time(end, upper=True)
            )
            if lo is not None and hi is not None:
                parts.append(f"{col} BETWEEN ? AND ?")
                params.extend([lo, hi])
            elif lo is not None:
                parts.append(f"{col} >= ?")
                params.append(lo)
            else:
                parts.append(f"{col} <= ?")
                params.append(hi)
        return Predicate("(" + " OR ".join(parts) + ")", tuple(params))
    if kind in ("int", "float"):
        convert: Callable[[str], Any] = int if kind == "int" else float
        try:
            numbers = tuple(convert(v) for v in values)
        except ValueError:
            raise QueryError(f"{key.keyword} takes numeric values") from None
        marks = ", ".join("?" for _ in numbers)
        return Predicate(f"{col} IN ({marks})", numbers)
    if kind == "strings":
        exact = [v for v in values if not _WILDCARDS.search(v)]
        wild = [v for v in values if _WILDCARDS.search(v)]
        parts = []
        params = []
        if exact:
            parts.append(f"list_has_any({col}, ?::VARCHAR[])")
            params.append(exact)
        for value in wild:
            parts.append(f"len(list_filter({col}, lambda x: x LIKE ? ESCAPE '\\')) > 0")
            params.append(_like(value))
        return Predicate("(" + " OR ".join(parts) + ")", tuple(params))
    # plain strings
    exact = [v for v in values if not _WILDCARDS.search(v)]
    wild = [v for v in values if _WILDCARDS.search(v)]
    parts = []
    params = []
    if exact:
        parts.append(f"{col} IN ({', '.join('?' for _ in exact)})")
        params.extend(exact)
    for value in wild:
        parts.append(f"{col} LIKE ? ESCAPE '\\'")
        params.append(_like(value))
    return Predicate("(" + " OR ".join(parts) + ")", tuple(params))


# --- Python (for attributes that are not catalog columns) -------------------------------


def _norm_time(text: str, upper: bool = False) -> str | None:
    try:
        return parse_time(text, upper).isoformat(timespec="microseconds")
    except QueryError:
        return None


def python_matcher(key: Key) -> Callable[[Sequence[str]], bool]:
    """A test of the attribute's stored values against ``key`` (same rules as SQL).

    Used for attributes kept only in the instance header (``header_json``).

    Raises
    ------
    QueryError
        If a value cannot be used for the attribute's VR.
    """
    values = key.values
    vr = key.vr
    if vr == "UI":
        wanted = set(values)
        return lambda stored: any(s in wanted for s in stored)
    if vr in ("DA", "TM", "DT"):
        checks: list[Callable[[str], bool]] = []
        for value in values:
            bounds = _range(value) if vr != "DT" or value.count("-") == 1 else None
            checks.append(_range_check(vr, value, bounds))
        return lambda stored: any(check(s) for s in stored for check in checks)
    if vr == "PN" and key.fuzzy:
        words = [_name_words(v.replace("*", " ").replace("?", " ")) for v in values]
        return lambda stored: any(
            _fuzzy_name(w, _name_words(s)) for s in stored for w in words
        )
    ignore_case = vr == "PN"
    patterns = [_regex(v, ignore_case) for v in values]
    return lambda stored: any(p.match(s) for s in stored for p in patterns)


def _name_words(text: str) -> list[str]:
    return [w for w in re.split(r"[\s^=,.]+", text.casefold()) if w]


def _fuzzy_name(wanted: list[str], stored: list[str]) -> bool:
    """Every query word starts some word of the name, in any order, ignoring case."""
    return bool(wanted) and all(any(s.startswith(w) for s in stored) for w in wanted)


def _range_check(
    vr: str, value: str, bounds: tuple[str | None, str | None] | None
) -> Callable[[str], bool]:
    if vr == "DA":
        if bounds is None:
            day = parse_date(value).isoformat()
            return lambda s: _iso_date(s) == day
        lo = parse_date(bounds[0]).isoformat() if bounds[0] else None
        hi = parse_date(bounds[1]).isoformat() if bounds[1] else None
        return lambda s: _between(_iso_date(s), lo, hi)
    if vr == "TM":
        if bounds is None:
            lo_t, hi_t = _norm_time(value), _norm_time(value, upper=True)
            if lo_t is None:
                raise QueryError("a time value must be HH[MM[SS[.F]]] (or a range A-B)")
            return lambda s: _between(_norm_time(s), lo_t, hi_t)
        lo_t = _norm_time(bounds[0]) if bounds[0] else None
        hi_t = _norm_time(bounds[1], upper=True) if bounds[1] else None
        return lambda s: _between(_norm_time(s), lo_t, hi_t)
    # DT: compare digit strings padded to the same precision
    if bounds is None:
        return lambda s: s.startswith(value)
    lo_s = bounds[0] or ""
    hi_s = (bounds[1] or "").ljust(21, "9") if bounds[1] else None
    return lambda s: s >= lo_s and (hi_s is None or s <= hi_s)


def _iso_date(text: str) -> str | None:
    try:
        return parse_date(text).isoformat()
    except QueryError:
        return None


def _between(value: str | None, lo: str | None, hi: str | None) -> bool:
    if value is None:
        return False
    return (lo is None or value >= lo) and (hi is None or value <= hi)
