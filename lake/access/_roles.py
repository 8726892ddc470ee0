"""Roles and permissions: who may do what, in one table."""

from __future__ import annotations

import enum
from collections.abc import Sequence

__all__ = ["ROLE_PERMISSIONS", "Permission", "Role", "scope_words"]


class Role(enum.StrEnum):
    """The three kinds of users of the lake."""

    STEWARD = "steward"
    """Runs the lake: sees everything, may store (STOW-RS)."""
    RESEARCHER = "researcher"
    """Reads the lake, or only the cohorts named in the credential."""
    STUDENT = "student"
    """Reads teaching sets only (every teaching set, or those named in the credential)."""


class Permission(enum.StrEnum):
    """What a route needs. Every web route declares exactly one."""

    PUBLIC = "public"
    """No credential needed (the viewer's static files, which hold no data)."""
    READ = "read"
    """Query and retrieve de-identified data within the credential's scope."""
    STORE = "store"
    """Add instances to the lake (STOW-RS)."""
    QUERY = "query"
    """See saved cohorts, run read-only SQL over the catalog, save cohorts (the portal)."""
    EXPORT = "export"
    """Start NIfTI/BIDS/DICOM exports of cohorts (the portal)."""
    MANAGE = "manage"
    """Steward pages: batches, quarantine, accounts, tokens, share links, profiles, audit."""


ROLE_PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.STEWARD: frozenset({Permission.PUBLIC, Permission.READ, Permission.STORE,
                             Permission.QUERY, Permission.EXPORT, Permission.MANAGE}),
    Role.RESEARCHER: frozenset({Permission.PUBLIC, Permission.READ, Permission.QUERY,
                                Permission.EXPORT}),
    Role.STUDENT: frozenset({Permission.PUBLIC, Permission.READ}),
}
"""The permissions of each role (a new permission is added here, and nowhere else)."""


def scope_words(role: Role, cohorts: Sequence[str]) -> str:
    """What a credential of ``role`` limited to ``cohorts`` sees, in words.

    Examples
    --------
    >>> scope_words(Role.STUDENT, ())
    'every teaching set'
    >>> scope_words(Role.RESEARCHER, ("a", "b"))
    'a, b'
    """
    if cohorts:
        return ", ".join(cohorts)
    return "every teaching set" if role is Role.STUDENT else "the whole lake"
