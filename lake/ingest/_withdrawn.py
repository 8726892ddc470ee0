"""Whose a refused file is, in the lake's terms: for erasure tombstones and ``lake forget``.

A quarantine record names no patient (its message and reason are free of original values),
so telling whether a refused file belongs to an erased patient, study or series takes its
sealed original: decrypted with the vault's quarantine key, its PatientID and UIDs read and
mapped as ingest stores them (the pseudonym, the keyed UIDs). Original values are held only
in memory and never shown.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

from lake._capture import capture
from lake.ingest._quarantine import decrypt

if TYPE_CHECKING:
    from lake.deid import Deidentifier
    from lake.store import Location

__all__ = [
    "IDENTITY",
    "original_identity",
    "pseudonym",
    "refused_identity",
    "sealed_identity",
    "stored_identity",
]

IDENTITY = ("PatientID", "StudyInstanceUID", "SeriesInstanceUID")
"""The columns that say whose an instance is (what lake.steward.forget selects by)."""


def pseudonym(engine: Deidentifier, original: str) -> str:
    """The PatientID that ingest stores for ``original`` under ``engine``'s profile."""
    from pydicom.dataset import Dataset

    ds = Dataset()
    ds.PatientID = original
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = "1.2.3"
    engine.apply(ds)
    return str(ds.get("PatientID", ""))


def sealed_identity(sealed: bytes, key: bytes) -> dict[str, str] | None:
    """The original PatientID and UIDs of a sealed original (None: unreadable, no one's)."""
    try:
        data = decrypt(sealed, key)
    except Exception:  # noqa: BLE001 - a refused file may be anything: no one's
        return None
    return original_identity(data)


def original_identity(data: bytes) -> dict[str, str] | None:
    """The original PatientID and UIDs of an instance as received (None: unreadable)."""
    from pydicom import dcmread

    # pydicom's warnings and log records quote original values: captured, never shown.
    with capture():
        try:
            ds = dcmread(io.BytesIO(data), force=True, stop_before_pixels=True)
            values = {k: str(ds.get(k, "") or "").strip() for k in IDENTITY}
        except Exception:  # noqa: BLE001 - a refused file may be anything: no one's
            return None
    return {k: v for k, v in values.items() if v}


def stored_identity(engine: Deidentifier, original: dict[str, str]) -> dict[str, str]:
    """``original`` (from :func:`sealed_identity`) as ingest under ``engine`` stores it."""
    with capture():
        return {
            column: pseudonym(engine, value) if column == "PatientID" else engine.uid(value)
            for column, value in original.items()
        }


def refused_identity(location: Location, object_key: str, engine: Deidentifier,
                     key: bytes) -> dict[str, str] | None:
    """The stored identity of the sealed original at ``object_key`` (None: unreadable)."""
    try:
        with location.fs.open(location.join(object_key), "rb") as fh:
            original = sealed_identity(fh.read(), key)
    except FileNotFoundError:
        return None
    return None if original is None else stored_identity(engine, original)
