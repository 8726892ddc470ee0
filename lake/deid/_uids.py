"""UIDs kept as they are (classes, transfer syntaxes, registries) must be UIDs.

A kept value is copied to the lake, its exports and every response that names the class
(STOW-RS, C-STORE, QIDO), so one that is no UID (``1.2.840.10008.5.1.4.1.1.2^SMITH``) would
carry whatever was written in it. Such an instance is refused, with a reason that names the
attribute and never its value.
"""

from __future__ import annotations

import re

from pydicom.datadict import keyword_for_tag

from lake._errors import DeidRefusedError

__all__ = ["not_a_uid", "well_formed_uids"]

# Digits in dot-separated components, backslash between values; trailing NUL or space
# padding. Leading zeros in a component (invalid in PS3.5 9.1, written by some old devices)
# are tolerated: they cannot spell anything but digits.
_UIDS = re.compile(rb"(?:[0-9]+(?:\.[0-9]+)*)?(?:\\(?:[0-9]+(?:\.[0-9]+)*)?)*[\x00 ]?")
_MAX_LENGTH = 64


def well_formed_uids(value: bytes | None) -> bool:
    """Whether a UI value (raw bytes, possibly multi-valued) holds only well-formed UIDs.

    Examples
    --------
    >>> well_formed_uids(b"1.2.840.10008.5.1.4.1.1.2\\x00")
    True
    >>> well_formed_uids(b"1.2.840.10008.5.1.4.1.1.2^SMITH")
    False
    """
    if not value:
        return True
    if _UIDS.fullmatch(value) is None:
        return False
    return all(len(v) <= _MAX_LENGTH for v in value.rstrip(b"\x00 ").split(b"\\"))


def not_a_uid(tag: int) -> DeidRefusedError:
    """The refusal of an instance whose kept UID attribute ``tag`` holds no UID."""
    name = keyword_for_tag(tag) or f"({tag >> 16:04X},{tag & 0xFFFF:04X})"
    return DeidRefusedError(
        "bad_uid",
        f"{name} is not a well-formed UID (digits and dots), so it cannot be kept as it is; "
        "correct it at the source and send the instance again",
    )
