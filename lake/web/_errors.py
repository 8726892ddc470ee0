"""Errors of the web layer, each one HTTP status (mapped in :mod:`lake.web._app`)."""

from __future__ import annotations

from lake._errors import LakeError

__all__ = [
    "NotAcceptableError",
    "NotFoundError",
    "TooLargeError",
    "UnavailableError",
    "UnsupportedMediaError",
]


class NotFoundError(LakeError, LookupError):
    """The resource is not there (or not within the caller's scope: the same answer)."""


class NotAcceptableError(LakeError, ValueError):
    """The Accept header asks for nothing the server can produce (HTTP 406)."""


class UnsupportedMediaError(LakeError, ValueError):
    """The request body's Content-Type is not one the route takes (HTTP 415)."""


class TooLargeError(LakeError, ValueError):
    """The request body exceeds the server's limit (HTTP 413)."""


class UnavailableError(LakeError, RuntimeError):
    """The server cannot do this now (HTTP 503)."""
