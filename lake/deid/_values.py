"""Value transforms: keyed UIDs and pseudonyms, date shifts, validation, dummies.

Cleaning of free text (C) is :mod:`lake.deid._clean`.

Every function here is pure: same input and key, same output. None of them ever returns
(part of) an original value that failed validation.
"""

from __future__ import annotations

import datetime as dt
import hmac
import re
from collections.abc import Iterable, Mapping
from types import MappingProxyType

from pydicom._uid_dict import UID_dictionary
from pydicom.charset import python_encoding

__all__ = [
    "age",
    "decode",
    "dummy_bytes",
    "keyed_ae",
    "keyed_uid",
    "pseudonym",
    "shift_da",
    "shift_days",
    "shift_dt",
    "valid_da",
    "valid_dt",
    "valid_tm",
    "valid_tz",
]

MAX_LENGTH: Mapping[str, int] = MappingProxyType(
    {"AE": 16, "CS": 16, "LO": 64, "SH": 16, "ST": 1024, "LT": 10240, "PN": 64}
)

_DUMMY_TEXT = b"ANONYMIZED"
_DUMMIES: Mapping[str, bytes] = MappingProxyType({
    "AE": b"ANONYMOUS ",
    "AS": b"000Y",
    "CS": _DUMMY_TEXT,
    "DA": b"19000101",
    "DT": b"19000101000000",
    "TM": b"000000",
    "DS": b"0 ",
    "IS": b"0 ",
    "UR": b"urn:none",
    "AT": b"\0" * 4,
    "FL": b"\0" * 4,
    "SL": b"\0" * 4,
    "UL": b"\0" * 4,
    "FD": b"\0" * 8,
    "SV": b"\0" * 8,
    "UV": b"\0" * 8,
    "SS": b"\0" * 2,
    "US": b"\0" * 2,
})
_BINARY_DUMMY = b"\0" * 8  # valid for OB, OD, OF, OL, OV, OW, UN


def dummy_bytes(vr: str) -> bytes:
    """A dummy value for ``vr``, encoded (even length, ASCII or zeros)."""
    if vr in ("OB", "OD", "OF", "OL", "OV", "OW", "UN", ""):
        return _BINARY_DUMMY
    return _DUMMIES.get(vr, _DUMMY_TEXT)


def _hmac(key: bytes, value: str) -> bytes:
    # hmac.digest: the same HMAC-SHA256 in one OpenSSL call, without an HMAC object
    return hmac.digest(key, value.encode("utf-8"), "sha256")


def keyed_uid(key: bytes, uid: str) -> str:
    """``2.25.<int>`` from HMAC-SHA256 of ``uid``; well-known UIDs are returned unchanged.

    Examples
    --------
    >>> keyed_uid(b"k" * 32, "1.2.840.10008.1.2")  # a transfer syntax: kept
    '1.2.840.10008.1.2'
    >>> keyed_uid(b"k" * 32, "1.2.3").startswith("2.25.")
    True
    """
    if uid in UID_dictionary:
        return uid
    return "2.25." + str(int.from_bytes(_hmac(key, uid)[:16], "big"))


def pseudonym(key: bytes, value: str) -> str:
    """A keyed pseudonym (24 upper-case hex digits) for an identifier such as PatientID."""
    return _hmac(key, value).hex()[:24].upper()


def keyed_ae(key: bytes, value: str) -> str:
    """A keyed AE title (16 characters, valid AE)."""
    return "AE" + _hmac(key, value).hex()[:14].upper()


def shift_days(key: bytes, patient_id: str, low: int, high: int) -> int:
    """The per-patient shift: minus a whole number of days in ``[low, high]``.

    Keyed by HMAC-SHA256 of the original PatientID (empty when absent).
    """
    n = int.from_bytes(_hmac(key, patient_id)[:8], "big")
    return -(low + n % (high - low + 1))


_DA = re.compile(r"\d{8}")
_DT = re.compile(r"(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\.\d{1,6})?([+-]\d{4})?")
_TM = re.compile(r"(\d{2})(\d{2})?(\d{2})?(\.\d{1,6})?")
_TZ = re.compile(r"[+-](\d{2})(\d{2})")
_AS = re.compile(r"(\d{3})([DWMY])")


def _date(text: str) -> dt.date | None:
    if not _DA.fullmatch(text):
        return None
    try:
        return dt.date(int(text[:4]), int(text[4:6]), int(text[6:8]))
    except ValueError:
        return None


def valid_da(text: str) -> bool:
    """True for a well-formed DA value ``YYYYMMDD`` naming a real date."""
    return _date(text) is not None


def valid_tz(text: str) -> bool:
    """True for a UTC offset ``&HHMM`` within -12:00..+14:00."""
    m = _TZ.fullmatch(text)
    return m is not None and int(m.group(1)) <= 14 and int(m.group(2)) < 60


def valid_tm(text: str) -> bool:
    """True for a well-formed TM value ``HH[MM[SS[.F{1,6}]]]``."""
    m = _TM.fullmatch(text)
    if m is None:
        return False
    hh, mm, ss = m.group(1), m.group(2), m.group(3)
    if int(hh) > 23 or (mm is not None and int(mm) > 59):
        return False
    if ss is not None and int(ss) > 60:  # 60: leap second
        return False
    return not (ss is None and m.group(4))


def _split_dt(text: str) -> tuple[dt.date, int, str] | None:
    """(first day of the period, precision in date components 1-3, the rest) or None."""
    m = _DT.fullmatch(text)
    if m is None:
        return None
    year, month, day = m.group(1), m.group(2), m.group(3)
    if day is not None and month is None:
        return None
    try:
        first = dt.date(int(year), int(month or 1), int(day or 1))
    except ValueError:
        return None
    precision = 3 if day else 2 if month else 1
    rest = text[4 + 2 * (precision - 1):]
    time_part = rest.split("+")[0].split("-")[0]
    if time_part and (precision < 3 or not valid_tm(time_part)):
        return None
    if m.group(8) and not valid_tz(m.group(8)):
        return None
    return first, precision, rest


def valid_dt(text: str) -> bool:
    """True for a well-formed DT value (any precision, optional UTC offset)."""
    return _split_dt(text) is not None


def shift_da(text: str, days: int) -> str | None:
    """``text`` moved by ``days``; None when it is not a valid date (or leaves the calendar)."""
    date = _date(text)
    if date is None:
        return None
    try:
        return (date + dt.timedelta(days=days)).strftime("%Y%m%d")
    except OverflowError:
        return None


def shift_dt(text: str, days: int) -> str | None:
    """A DT value moved by ``days``, keeping its precision, time of day and UTC offset.

    A value with year or year-month precision moves the first day of its period and keeps
    that precision. None when ``text`` is not a valid DT.

    Examples
    --------
    >>> shift_dt("20200301120000+0100", -1)
    '20200229120000+0100'
    """
    parts = _split_dt(text)
    if parts is None:
        return None
    first, precision, rest = parts
    try:
        moved = first + dt.timedelta(days=days)
    except OverflowError:
        return None
    if moved.year < 1:
        return None
    head = moved.strftime("%Y%m%d")[: 4 + 2 * (precision - 1)]
    return head + rest


def age(text: str) -> str | None:
    """A valid AS value, with ages over 89 years written as ``090Y``; None when malformed."""
    m = _AS.fullmatch(text)
    if m is None:
        return None
    number, unit = int(m.group(1)), m.group(2)
    years = {"D": number / 365.25, "W": number * 7 / 365.25, "M": number / 12, "Y": number}[unit]
    if years > 89:
        return "090Y"
    return text


def decode(data: bytes, encodings: Iterable[str]) -> str:
    """Decode a text value with the dataset's character sets, never failing or warning."""
    if data.isascii():
        return data.decode("ascii")
    for encoding in encodings:
        codec = python_encoding.get(encoding)
        if codec is None:
            continue
        try:
            return data.decode(codec)
        except (UnicodeDecodeError, LookupError):
            continue
    return data.decode("latin-1")
