"""Expanding ingest sources (files, folders, .zip archives) into items to read.

Source paths are never stored or echoed: they may hold a patient's name.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from lake._errors import IngestError

__all__ = ["SourceItem", "iter_items", "read_item"]


@dataclass(frozen=True)
class SourceItem:
    """One file to read: a path, or a member of a zip archive at that path."""

    path: str
    member: str | None = None


def _is_zip(path: Path) -> bool:
    return path.suffix.lower() == ".zip" and zipfile.is_zipfile(path)


def _walk(folder: Path) -> Iterator[SourceItem]:
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        for name in sorted(filenames):
            yield from _one(Path(dirpath) / name)


def _one(path: Path) -> Iterator[SourceItem]:
    if _is_zip(path):
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if not info.is_dir():
                    yield SourceItem(str(path), info.filename)
    else:
        yield SourceItem(str(path))


def iter_items(sources: Iterable[str | os.PathLike[str]]) -> Iterator[SourceItem]:
    """Every file below ``sources``, lazily, in a stable order.

    Raises
    ------
    IngestError
        If a source does not exist (named by its position, never its path).
    """
    checked = [Path(s) for s in sources]
    for position, path in enumerate(checked, start=1):
        if not path.exists():
            raise IngestError(f"source argument {position} does not exist; check the path")
    for path in checked:
        if path.is_dir():
            yield from _walk(path)
        else:
            yield from _one(path)


def read_item(item: SourceItem) -> bytes:
    """The bytes of ``item`` (raises OSError or zipfile errors on failure)."""
    if item.member is None:
        return Path(item.path).read_bytes()
    with zipfile.ZipFile(item.path) as archive:
        return archive.read(item.member)
