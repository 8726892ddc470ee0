"""Thread-scoped capture of what pydicom and pynetdicom warn and log about the data they parse.

Those libraries report malformed input with warnings and log records that quote the
offending value (``Invalid value for VR UI: '<an original UID>'``). Code that handles
identified data runs inside :func:`capture`: every :func:`warnings.warn` call and every
record of the ``pydicom``/``pynetdicom`` loggers made *on that thread* while the scope is
open is counted (category or logger and level only, never the text) and dropped. Scopes
nest: each distinct scope open on the thread counts it once (the inner scope of
``lake.ingest.process_bytes`` and the worker's or server's scope around it both see it; a
:class:`Captured` opened twice on the stack counts it once), so code never copies an inner
scope's counts into an outer one. Other threads see no difference, and no warning filter
or pydicom setting is changed.

Why a hook, and why this one: before Python 3.14 warnings have no thread-safe scope.
``warnings.catch_warnings`` swaps module-wide state (another thread's warnings land in
the wrong place, and the state it restores may undo a concurrent change), and a filter
added with :func:`warnings.filterwarnings` silences every thread for good. So the first
:func:`capture` installs, once per process, a pass-through wrapper around
:func:`warnings.warn` and a pass-through :class:`logging.Filter` on the two libraries'
loggers; both act only on a thread inside a scope. The wrapper sits before the filters on
purpose: a captured warning never reaches the interpreter's per-module "already warned"
registry, which under the default filter would keep every distinct message (and the
original value it quotes) in memory for the life of the process, and a ``-W error`` run
behaves like a production one. ``catch_warnings`` does not save or restore
``warnings.warn``, so a concurrent one cannot undo the wrapper.

Examples
--------
>>> import warnings
>>> with capture() as captured:
...     warnings.warn("Invalid value for VR UI: '1.2.3^ORIGINAL'")
>>> captured.warnings
{'UserWarning': 1}
"""

from __future__ import annotations

import functools
import logging
import threading
import warnings
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["Captured", "capture"]

_LIBRARIES = ("pydicom", "pynetdicom")


class Captured:
    """Counts of what a scope captured (thread-safe; no message text is kept).

    Attributes
    ----------
    warnings : dict of str to int
        Warning category name -> number of warnings.
    records : dict of str to int
        ``"<logger> <LEVEL>"`` -> number of log records.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._warnings: Counter[str] = Counter()
        self._records: Counter[str] = Counter()

    @property
    def warnings(self) -> dict[str, int]:
        with self._lock:
            return dict(self._warnings)

    @property
    def records(self) -> dict[str, int]:
        with self._lock:
            return dict(self._records)

    @property
    def total(self) -> int:
        """Warnings plus log records."""
        with self._lock:
            return sum(self._warnings.values()) + sum(self._records.values())

    def merge(self, warnings: dict[str, int], records: dict[str, int]) -> None:
        """Add counts captured elsewhere (another process's :attr:`warnings`, :attr:`records`)."""
        with self._lock:
            self._warnings.update(warnings)
            self._records.update(records)

    def _warned(self, category: str) -> None:
        with self._lock:
            self._warnings[category] += 1

    def _logged(self, key: str) -> None:
        with self._lock:
            self._records[key] += 1


class _Local(threading.local):
    scopes: list[Captured]

    def __init__(self) -> None:
        self.scopes = []


_local = _Local()
_install_lock = threading.Lock()
_installed = False


def _open_scopes() -> list[Captured]:
    """Every distinct scope open on this thread, innermost first (empty outside any).

    A warning counts once in each of them: an inner scope (``process_bytes``' own) does not
    hide it from the scope around it (a worker's, a server's), and a :class:`Captured`
    opened twice on the stack (``capture(into=shared)`` within itself) counts it once.
    """
    scopes = _local.scopes
    if len(scopes) < 2:
        return list(scopes)
    return list(dict.fromkeys(reversed(scopes)))  # Captured hashes by identity


def _category_name(message: object, category: object) -> str:
    if isinstance(message, Warning):
        return type(message).__name__
    if isinstance(category, type):
        return category.__name__
    return "UserWarning"


class _LibraryRecords(logging.Filter):
    """Drops (and counts) records made on a thread inside :func:`capture`."""

    def filter(self, record: logging.LogRecord) -> bool:
        scopes = _open_scopes()
        if not scopes:
            return True
        key = f"{record.name} {record.levelname}"
        for scope in scopes:
            scope._logged(key)
        return False


_FILTER = _LibraryRecords()


def _install() -> None:
    global _installed
    with _install_lock:
        if _installed:
            return
        original = warnings.warn

        @functools.wraps(original)
        def warn(
            message: Any, category: Any = None, stacklevel: int = 1, source: Any = None,
            **kwargs: Any,
        ) -> None:
            scopes = _open_scopes()
            if not scopes:
                # One frame deeper than the caller's call: the same frame is blamed.
                original(message, category, stacklevel + 1, source, **kwargs)
                return
            name = _category_name(message, category)
            for scope in scopes:
                scope._warned(name)

        setattr(warnings, "warn", warn)  # noqa: B010 - a module attribute, replaced on purpose
        _installed = True


_PREFIXES = tuple(f"{lib}." for lib in _LIBRARIES)
_seen_loggers = -1


def _filter_library_loggers() -> None:
    """Put the filter on every logger of the libraries (again when new loggers appear).

    A logger's filters see only the records made on that very logger, not its children's,
    so each module logger (``pynetdicom.dul``, ...) needs its own; the modules create them
    when imported, which may be after the first scope.
    """
    global _seen_loggers
    registry = logging.root.manager.loggerDict
    if len(registry) == _seen_loggers:
        return
    with _install_lock:
        _seen_loggers = len(registry)
        for name in list(registry):
            if name in _LIBRARIES or name.startswith(_PREFIXES):
                logger = logging.getLogger(name)
                if _FILTER not in logger.filters:
                    logger.addFilter(_FILTER)


@contextmanager
def capture(into: Captured | None = None) -> Iterator[Captured]:
    """Capture this thread's library warnings and log records until the block ends.

    Parameters
    ----------
    into : Captured, optional
        Count into this object (e.g. one shared by every thread of a server); a new one
        by default.

    Yields
    ------
    Captured
        The counts (categories and logger names only).
    """
    _install()
    _filter_library_loggers()
    scope = into if into is not None else Captured()
    _local.scopes.append(scope)
    try:
        yield scope
    finally:
        _local.scopes.pop()
