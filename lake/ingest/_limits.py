"""Bounds on what ingest reads: sizes, value lengths, archives. Hostile input never floods memory.

Every bound has a default that real data stays well inside, can be set in the ``ingest``
section of ``lake.json`` (same names, bytes) and overridden per run (``lake ingest`` options,
in MB). An input over a bound is quarantined with a reason saying which bound and how to
raise it; it is never read further, and the rest of the batch goes on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from lake._errors import ConfigError

__all__ = ["ReadLimits"]

_MIB = 1024 * 1024
_GIB = 1024 * _MIB
_RATIO_FLOOR = _MIB  # members smaller than this are never refused for their compression ratio


@dataclass(frozen=True)
class ReadLimits:
    """What one ingest may read.

    Parameters
    ----------
    max_file_bytes : int
        Largest file, or zip member, read (it is read into memory whole). Default 1 GiB, the
        DICOM server's instance limit too.
    max_header_bytes : int
        Largest amount of everything in a file but its Pixel Data (headers, sequences,
        private and binary values). Default 256 MiB. Header values cost several times their
        size while they are de-identified and catalogued; pixel data is copied as bytes.
    max_value_bytes : int
        Longest value of one text or number element (every VR but OB, OD, OF, OL, OV, OW, UN
        and SQ) at the top level of a dataset, Pixel Data excluded. Default 4 MiB: the longest
        standard text VRs (LT, ST) hold 10,240 characters, a long RT contour a few hundred KB.
    max_archive_bytes : int
        Most uncompressed bytes read from one zip archive, nested archives included; members
        past it are quarantined. Default 256 GiB.
    max_zip_ratio : int
        Largest uncompressed/compressed size of a zip member larger than 1 MiB. Default 200;
        real DICOM deflates 2-10x, a zip bomb about 1,000x. Sparse segmentations (mostly zero
        bits) can exceed it: raise it for those.
    max_zip_depth : int
        Archives read inside archives: 1 reads only zips found on disk, the default 3 reads a
        zip inside a zip inside a zip. Deeper archives are quarantined.
    max_sequence_depth : int
        Deepest nesting of sequences (a top-level sequence is 1). Default 64. A structured
        report's content tree has no depth limit in the standard (a CAD finding may hold
        findings, each content level adds a Content Sequence and code sequences); the real
        files measured nest 4 to 6 levels (``docs/ingest.md``). The bound keeps pydicom's
        recursive reader (it gives up near 250 levels) and every recursive walk far from
        Python's recursion limit; the ingest encoder walks sequences itself, so no pydicom
        writer wraps an error once per level.

    Raises
    ------
    ConfigError
        If a bound is not a positive integer.
    """

    max_file_bytes: int = _GIB
    max_header_bytes: int = 256 * _MIB
    max_value_bytes: int = 4 * _MIB
    max_archive_bytes: int = 256 * _GIB
    max_zip_ratio: int = 200
    max_zip_depth: int = 3
    max_sequence_depth: int = 64

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"invalid {f.name}: a positive whole number is required")

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], **overrides: int | None) -> ReadLimits:
        """Build from the ``ingest`` section of ``lake.json``, then apply ``overrides``.

        ``None`` overrides are ignored, so unset command-line options keep the lake's settings.

        Raises
        ------
        ConfigError
            On unknown names or invalid values.
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted((set(settings) | {k for k, v in overrides.items() if v is not None})
                         - known)
        if unknown:
            raise ConfigError(
                f"unknown ingest setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        limits = cls(**{k: v for k, v in settings.items() if k in known})
        return replace(limits, **{k: v for k, v in overrides.items() if v is not None})

    def zip_member_problem(self, file_size: int, compress_size: int) -> tuple[str, str] | None:
        """Why a zip member of these declared sizes must not be read, or None."""
        if file_size > self.max_file_bytes:
            return "too_large", (
                f"the zip member expands to more than max_file_bytes ({describe(self.max_file_bytes)}); "
                "raise it to read this member"
            )
        if file_size > _RATIO_FLOOR and file_size > self.max_zip_ratio * max(compress_size, 1):
            return "zip_ratio", (
                f"the zip member expands more than max_zip_ratio ({self.max_zip_ratio}x) times "
                "its compressed size (a zip bomb?); raise it for very sparse data"
            )
        return None


def describe(size: int) -> str:
    """A size as people read it (``1,024 MiB``, ``512 bytes``)."""
    return f"{size / _MIB:,.0f} MiB" if size >= _MIB else f"{size:,} bytes"
