"""The query of ``lake pull``, checked like a C-FIND identifier before any PACS is contacted.

A pull retrieves whatever the query matches from a clinical PACS, so two mistakes are refused
up front: an empty query (every study of the hospital) unless asked for explicitly, and a value
a PACS cannot match as meant (``StudyDate=2020-13-01`` would match nothing, or worse, depending
on the PACS). Values follow PS3.4 C.2.2.2: single values with ``*``/``?`` wildcards for text,
ranges ``A-B`` (either end open) for dates and times, backslash lists of UIDs and of values.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset

from lake._capture import capture
from lake._errors import QueryError
from lake.query import Level, identifier_from_filters

__all__ = ["pull_identifier"]

_TEXT_LIMITS = {"AE": 16, "CS": 16, "SH": 16, "LO": 64, "PN": 64, "AS": 4, "LT": 10240, "ST": 1024}
_NUMERIC = {"IS", "DS", "US", "UL", "SS", "SL", "FL", "FD", "SV", "UV"}
_UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")
_TIME = re.compile(r"(\d{2})(\d{2})?(\d{2})?(\.\d{1,6})?")
_DATETIME = re.compile(r"(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\.\d{1,6})?([+-]\d{4})?")
_CS = re.compile(r"[A-Z0-9 _*?]*")


def pull_identifier(filters: Sequence[str], *, all_studies: bool = False) -> Dataset:
    """The STUDY-level identifier of ``KEYWORD=VALUE`` filters, every value checked.

    Parameters
    ----------
    filters : sequence of str
        ``KEYWORD=VALUE`` texts (``KEYWORD`` alone asks for a return key).
    all_studies : bool
        Allow a query that matches every study of the PACS.

    Raises
    ------
    QueryError
        If a keyword is unknown, a value is malformed, or nothing restricts the query and
        ``all_studies`` is false.
    """
    restricting = []
    for text in filters:
        keyword, _, value = text.partition("=")
        keyword, value = keyword.strip(), value.strip()
        tag = tag_for_keyword(keyword)
        if not value or tag is None:
            continue  # identifier_from_filters names an unknown keyword, below
        _check(keyword, str(dictionary_VR(tag)), value)
        if value.strip("*") != "":
            restricting.append(keyword)
    with capture():  # pydicom warns about range values, quoting them (a PatientID...)
        identifier = identifier_from_filters(filters, Level.STUDY)
    if not restricting and not all_studies:
        raise QueryError(
            "the query matches every study of the PACS; give filters=KEYWORD=VALUE "
            "(e.g. PatientID=..., StudyDate=20200101-20201231), or pass all_studies=True to "
            "pull everything", parameters=("filters", "all_studies")
        )
    return identifier


def _check(keyword: str, vr: str, value: str) -> None:
    if any(ord(c) < 32 and c != "\x1b" for c in value):
        raise QueryError(f"{keyword}: control characters are not allowed in a query value")
    items = value.split("\\")
    if vr in ("DA", "TM", "DT"):
        if len(items) > 1:
            raise QueryError(f"{keyword}: one {vr} value or range, not a list")
        _range(keyword, vr, value)
        return
    for item in items:
        if vr == "UI":
            if not _UID.fullmatch(item) or len(item) > 64:
                raise QueryError(
                    f"{keyword}: not a UID (digits and dots, at most 64 characters, "
                    "no wildcards); list several with '\\'"
                )
        elif vr in _NUMERIC:
            try:
                float(item)
            except ValueError:
                raise QueryError(f"{keyword}: not a number") from None
        elif vr in _TEXT_LIMITS:
            limit = _TEXT_LIMITS[vr]
            if len(item.replace("*", "").replace("?", "")) > limit:
                raise QueryError(f"{keyword}: at most {limit} characters ({vr})")
            if vr == "CS" and not _CS.fullmatch(item):
                raise QueryError(
                    f"{keyword}: a code string holds upper-case letters, digits, space and '_'"
                )


def _range(keyword: str, vr: str, value: str) -> None:
    parts = value.split("-") if vr != "DT" else _split_datetime(value)
    if len(parts) > 2 or (len(parts) == 2 and not parts[0] and not parts[1]):
        raise QueryError(f"{keyword}: a {vr} value or a range START-END (one end may be open)")
    bounds = [_parse(keyword, vr, p) for p in parts if p]
    if len(bounds) == 2 and bounds[0] > bounds[1]:
        raise QueryError(f"{keyword}: the range starts after it ends")


def _split_datetime(value: str) -> list[str]:
    """A DT range splits on the '-' that is not a time-zone offset's sign."""
    match = re.fullmatch(r"([^-]*(?:-\d{4})?)-(.*)", value)
    if value.count("-") == 0 or match is None:
        return [value]
    start, end = match.group(1), match.group(2)
    if not start and not end:
        return ["", ""]
    return [start, end]


def _parse(keyword: str, vr: str, text: str) -> tuple[int, ...]:
    what = {"DA": "YYYYMMDD", "TM": "HHMMSS[.ffffff]", "DT": "YYYYMMDDHHMMSS[.ffffff][+ZZZZ]"}[vr]
    try:
        if vr == "DA":
            if not re.fullmatch(r"\d{8}", text):
                raise ValueError
            parsed = dt.datetime.strptime(text, "%Y%m%d")
            return (parsed.year, parsed.month, parsed.day)
        pattern = _TIME if vr == "TM" else _DATETIME
        match = pattern.fullmatch(text)
        if match is None:
            raise ValueError
        digits = [int(g) for g in match.groups()[:-1 if vr == "TM" else -2] if g is not None]
        if vr == "TM":
            hour, minute, second = [*digits, 0, 0, 0][:3]
            dt.time(hour, minute, min(second, 59))
            return tuple(digits)
        year, month, day, hour, minute, second = [*digits, 1, 1, 0, 0, 0][:6]
        dt.datetime(year, month, day, hour, minute, min(second, 59))
        return tuple(digits)
    except ValueError:
        raise QueryError(f"{keyword}: not a {vr} value ({what})") from None
