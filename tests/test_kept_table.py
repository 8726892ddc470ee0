"""A kept Delta table that deltalake cannot bring up to date (``lake/catalog/_kept_table.py``):
opened again when deltalake says the log changed under it (``DeltaError``, ``OSError``), but
any other error is raised, not hidden behind a fresh open, by the committer and the readers."""

from __future__ import annotations

import pytest
from deltalake.exceptions import DeltaError

from lake.catalog._committer import Committer, Writing
from lake.catalog._kept import KeptSnapshots

ERRORS = [DeltaError("log changed"), OSError("object store"), RuntimeError("a bug")]


class _Table:
    """Stands for a DeltaTable on an object store whose ``update_incremental`` raises ``error``."""

    def __init__(self, version: int) -> None:
        self._version = version
        self.error: BaseException | None = None

    def version(self) -> int:
        return self._version

    def update_incremental(self) -> None:
        if self.error is not None:
            raise self.error

    def file_uris(self) -> list[str]:
        return []


def _no_local_log(name: str, version: int) -> str:
    return ""


@pytest.mark.parametrize("error", ERRORS, ids=type)
def test_the_committer_opens_again_on_a_delta_error_and_raises_any_other(
        error: BaseException) -> None:
    """(The RuntimeError case fails before: ``except Exception`` opened the table again.)"""
    kept, fresh = _Table(3), _Table(4)
    kept.error = error
    committer = Committer(lambda name: fresh, _no_local_log)  # type: ignore[arg-type, return-value]
    committer.keep("instances", Writing(kept, 3, ""))  # type: ignore[arg-type]
    if isinstance(error, RuntimeError):
        with pytest.raises(RuntimeError, match="a bug"):
            committer.table("instances")
    else:
        assert committer.table("instances").delta is fresh


@pytest.mark.parametrize("error", ERRORS, ids=type)
def test_the_readers_open_again_on_a_delta_error_and_raise_any_other(
        error: BaseException) -> None:
    """(The RuntimeError case fails before: ``except Exception`` opened the table again.)"""
    kept, fresh = _Table(3), _Table(4)
    tables = [kept, fresh]
    snapshots = KeptSnapshots(lambda name: tables.pop(0),  # type: ignore[arg-type, return-value]
                              lambda delta: ("files", delta.version()),  # type: ignore[arg-type, return-value]
                              _no_local_log)
    assert snapshots.latest("instances") == (3, ("files", 3))
    kept.error = error
    if isinstance(error, RuntimeError):
        with pytest.raises(RuntimeError, match="a bug"):
            snapshots.latest("instances")
        assert tables == [fresh]
    else:
        assert snapshots.latest("instances") == (4, ("files", 4))
        assert tables == []
