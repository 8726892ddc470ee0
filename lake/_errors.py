"""The exception hierarchy of imaging-lake.

Every failure that library code raises is a :class:`LakeError`. Subclasses also
subclass the fitting built-in exception so callers can catch either. Messages say
how to fix the problem and never contain an original (identifying) DICOM value.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "AccessError",
    "AuthenticationError",
    "BlobNotFoundError",
    "CatalogError",
    "ConfigError",
    "DeidRefusedError",
    "ExportError",
    "ForbiddenError",
    "IngestError",
    "InputRefusedError",
    "IntegrityError",
    "LakeError",
    "LakeNotFoundError",
    "NetError",
    "ProfileError",
    "QueryError",
    "StaleCatalogError",
    "VaultError",
    "WorkerLostError",
    "is_native_panic",
]


class LakeError(Exception):
    """Root of every error raised by :mod:`lake`.

    Parameters
    ----------
    *args
        The message: one line saying how to fix the problem.
    parameters : sequence of str, optional
        The keyword parameters the message names, written as Python writes them
        (``root=ROOT``, ``replace=True``, ``via='get'``). Library messages speak in parameter
        names; the command line shows the option that sets each one instead
        (``pipelines/_common.py``).
    functions : sequence of str, optional
        The library functions the message names, written in it as called with no arguments
        (``Lake.verify()``, ``lake.steward.forget()``) and listed here without the parentheses
        (``Lake.verify``); the command line shows the command that runs each one instead.
    """

    def __init__(self, *args: object, parameters: Sequence[str] = (),
                 functions: Sequence[str] = ()) -> None:
        super().__init__(*args)
        self.parameters: tuple[str, ...] = tuple(parameters)
        self.functions: tuple[str, ...] = tuple(functions)


class ConfigError(LakeError, ValueError):
    """A setting is missing or invalid (lake root, vault, scheduler...)."""


class LakeNotFoundError(LakeError, FileNotFoundError):
    """No lake exists at the given root; create one with :func:`lake.init` first."""


class VaultError(LakeError, PermissionError):
    """The key vault is missing, unreadable, too permissive or does not match the lake."""


class BlobNotFoundError(LakeError, KeyError):
    """A content-addressed blob is absent from the store."""

    def __str__(self) -> str:  # KeyError quotes its argument; keep the message readable
        return str(self.args[0]) if self.args else ""


class IntegrityError(LakeError, RuntimeError):
    """Stored content does not match its address or the catalog."""


class ProfileError(LakeError, ValueError):
    """A de-identification profile cannot be found, parsed or compiled."""


class DeidRefusedError(LakeError, ValueError):
    """The profile refuses an instance (for example burned-in annotation).

    Parameters
    ----------
    reason : str
        A short machine-readable reason code, e.g. ``"burned_in_annotation"``.
    message : str
        A human-readable explanation that contains no original value.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class IngestError(LakeError, RuntimeError):
    """An ingest run cannot proceed (not: a single bad file, which is quarantined)."""


class InputRefusedError(LakeError, ValueError):
    """One input cannot be ingested (ingest quarantines it with ``reason``).

    Parameters
    ----------
    reason : str
        A short machine-readable reason code, e.g. ``"truncated"``, ``"too_large"``.
    message : str
        A human-readable explanation that contains no original value and no path.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class CatalogError(LakeError, RuntimeError):
    """The catalog tables cannot be read or written."""


class StaleCatalogError(CatalogError):
    """A kept catalog names data files that another process has since removed (an erasure,
    a compaction's vacuum): a catalog made now reads what is there."""


class QueryError(LakeError, ValueError):
    """A SQL query against the catalog failed."""


class ExportError(LakeError, RuntimeError):
    """An export cannot proceed."""


class NetError(LakeError, RuntimeError):
    """A DICOM network operation failed."""


class AccessError(LakeError, PermissionError):
    """Access to the lake is refused (tokens, roles, cohort scopes)."""


class AuthenticationError(AccessError):
    """No credentials, or credentials that are unknown, expired or revoked (HTTP 401)."""


class ForbiddenError(AccessError):
    """Valid credentials whose role or scope does not allow the action (HTTP 403)."""


class WorkerLostError(LakeError, RuntimeError):
    """A local worker process died before finishing its task (killed, out of memory)."""


def is_native_panic(exc: BaseException) -> bool:
    """Whether ``exc`` is a native (Rust) library's panic raised through pyo3
    (``pyo3_runtime.PanicException``: a :class:`BaseException`, so no ``except Exception``
    catches it).

    Examples
    --------
    >>> is_native_panic(ValueError("no")), is_native_panic(KeyboardInterrupt())
    (False, False)
    """
    return type(exc).__module__ == "pyo3_runtime"
