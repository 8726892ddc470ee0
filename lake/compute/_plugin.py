"""What every task of a map needs, held by each Dask worker in memory (imports distributed)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from distributed import get_worker
from distributed.diagnostics.plugin import WorkerPlugin

__all__ = ["Shared", "call_with_shared"]

T = TypeVar("T")
R = TypeVar("R")


class Shared(WorkerPlugin):
    """A worker plugin holding a value: plugins live in the worker's memory, unlike scattered
    data, which a worker may spill to its disk (the value may hold keys)."""

    def __init__(self, value: Any) -> None:
        self.value = value


def call_with_shared(func: Callable[[T, Any], R], task: T, name: str) -> R:
    """``func(task, value)`` with the value of the :class:`Shared` plugin ``name``."""
    plugin = get_worker().plugins[name]
    assert isinstance(plugin, Shared)
    return func(task, plugin.value)
