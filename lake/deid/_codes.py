"""Codes of PS3.15 Annex E: action codes, profile options and their CID 7050 codes."""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from types import MappingProxyType

__all__ = ["ALL_VRS", "EDITION", "Action", "ProfileOption"]

ALL_VRS = (
    "AE", "AS", "AT", "CS", "DA", "DS", "DT", "FD", "FL", "IS", "LO", "LT", "OB", "OD", "OF",
    "OL", "OV", "OW", "PN", "SH", "SL", "SQ", "SS", "ST", "SV", "TM", "UC", "UI", "UL", "UN",
    "UR", "US", "UT", "UV",
)
"""Every value representation of PS3.5."""

EDITION = "2024b"
"""The edition of PS3.15 whose Table E.1-1 the built-in profiles are generated from."""


class Action(StrEnum):
    """An action code of Table E.1-1, as taken on one element.

    Combined codes of the table (X/Z, X/D, X/Z/D, Z/D, X/Z/U*) resolve to one of these
    when the profile is compiled (see ``docs/deid.md``, "Type 1/2/3 rule").
    """

    REMOVE = "X"
    BLANK = "Z"
    DUMMY = "D"
    KEEP = "K"
    CLEAN = "C"
    UID = "U"


class ProfileOption(StrEnum):
    """An option of the Basic Application Level Confidentiality Profile.

    The value is the option's slug, used in profile manifests and as the name of its
    recipe layer ``profiles/opt-<slug>.dicom``.
    """

    RETAIN_FULL_DATES = "retain-full-dates"
    RETAIN_MODIFIED_DATES = "retain-modified-dates"
    RETAIN_PATIENT_CHARACTERISTICS = "retain-patient-characteristics"
    RETAIN_DEVICE_IDENTITY = "retain-device-identity"
    RETAIN_INSTITUTION_IDENTITY = "retain-institution-identity"
    RETAIN_UIDS = "retain-uids"
    RETAIN_SAFE_PRIVATE = "retain-safe-private"
    CLEAN_DESCRIPTORS = "clean-descriptors"
    CLEAN_GRAPHICS = "clean-graphics"
    CLEAN_STRUCTURED_CONTENT = "clean-structured-content"
    CLEAN_PIXEL_DATA = "clean-pixel-data"

    @property
    def code(self) -> str:
        """The CID 7050 code value (scheme DCM)."""
        return _CODES[self][0]

    @property
    def meaning(self) -> str:
        """The CID 7050 code meaning."""
        return _CODES[self][1]

    @property
    def recipe(self) -> str:
        """The file name of the option's recipe layer in ``profiles/``."""
        return f"opt-{self.value}.dicom"


BASIC_CODE = ("113100", "Basic Application Confidentiality Profile")

_CODES: Mapping[ProfileOption, tuple[str, str]] = MappingProxyType({
    ProfileOption.CLEAN_PIXEL_DATA: ("113101", "Clean Pixel Data Option"),
    ProfileOption.CLEAN_GRAPHICS: ("113103", "Clean Graphics Option"),
    ProfileOption.CLEAN_STRUCTURED_CONTENT: ("113104", "Clean Structured Content Option"),
    ProfileOption.CLEAN_DESCRIPTORS: ("113105", "Clean Descriptors Option"),
    ProfileOption.RETAIN_FULL_DATES: (
        "113106", "Retain Longitudinal Temporal Information Full Dates Option"),
    ProfileOption.RETAIN_MODIFIED_DATES: (
        "113107", "Retain Longitudinal Temporal Information Modified Dates Option"),
    ProfileOption.RETAIN_PATIENT_CHARACTERISTICS: (
        "113108", "Retain Patient Characteristics Option"),
    ProfileOption.RETAIN_DEVICE_IDENTITY: ("113109", "Retain Device Identity Option"),
    ProfileOption.RETAIN_UIDS: ("113110", "Retain UIDs Option"),
    ProfileOption.RETAIN_SAFE_PRIVATE: ("113111", "Retain Safe Private Option"),
    ProfileOption.RETAIN_INSTITUTION_IDENTITY: ("113112", "Retain Institution Identity Option"),
})
