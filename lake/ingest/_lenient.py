"""pydicom's lenient reading and a silenced parser, for exactly as long as ingest needs them.

Originals are read as they come (IGNORE validation, for reading and writing), and
pydicom's warnings are dropped: they quote original values, which must never reach a
log. Both are process-wide settings of pydicom and of :mod:`warnings`, so
:func:`lenient_pydicom` sets them while at least one caller is inside it and restores
what was there before when the last one leaves. It is safe from several threads (the
DICOM receiver processes instances on association threads) and re-entrant, unlike
``warnings.catch_warnings``, which restores the whole filter list and so undoes other
threads' changes.
"""

from __future__ import annotations

import re
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import cast

from pydicom import config

__all__ = ["lenient_pydicom"]

_PYDICOM_MODULES = re.compile(r"pydicom(\.|$)")


@dataclass
class _Scope:
    """Who is inside, and what the settings were before the first one came in."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    depth: int = 0
    saved: tuple[int, int] = (0, 0)
    entry: tuple[object, ...] | None = None


# The one piece of module state: it guards process-wide settings, which are module state
# of pydicom and of the warnings module themselves.
_SCOPE = _Scope()


def _enter() -> None:
    with _SCOPE.lock:
        _SCOPE.depth += 1
        if _SCOPE.depth > 1:
            return
        settings = config.settings
        _SCOPE.saved = (settings.reading_validation_mode, settings.writing_validation_mode)
        settings.reading_validation_mode = config.IGNORE
        settings.writing_validation_mode = config.IGNORE
        mine = ("ignore", None, Warning, _PYDICOM_MODULES, 0)
        if mine in warnings.filters:  # the caller silences pydicom already: leave it be
            _SCOPE.entry = None
        else:
            warnings.filterwarnings("ignore", module=_PYDICOM_MODULES.pattern)
            _SCOPE.entry = warnings.filters[0]


def _leave() -> None:
    with _SCOPE.lock:
        _SCOPE.depth -= 1
        if _SCOPE.depth > 0:
            return
        settings = config.settings
        settings.reading_validation_mode, settings.writing_validation_mode = _SCOPE.saved
        filters = cast(list[tuple[object, ...]], warnings.filters)  # a list, typed Sequence
        if _SCOPE.entry is not None and _SCOPE.entry in filters:
            filters.remove(_SCOPE.entry)
            warnings._filters_mutated()  # type: ignore[attr-defined]  # what catch_warnings calls
        _SCOPE.entry = None


@contextmanager
def lenient_pydicom() -> Iterator[None]:
    """Read originals leniently and drop pydicom's warnings inside this block.

    Examples
    --------
    >>> from pydicom import config
    >>> before = config.settings.reading_validation_mode
    >>> with lenient_pydicom():
    ...     config.settings.reading_validation_mode == config.IGNORE
    True
    >>> config.settings.reading_validation_mode == before
    True
    """
    _enter()
    try:
        yield
    finally:
        _leave()
