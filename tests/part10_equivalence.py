"""Element-by-element comparison of lake.nifti.read_part10 with pydicom (tests only).

``differences(expected, got)`` walks every element of pydicom's dataset, private ones and
nested sequences included, and reports each one that the fast reader lacks, adds, or gives a
different value or type for (sequence items are compared recursively, the pixel data as
bytes). ``lake_differences(lk)`` does it for every instance a lake stores (its de-identified
header with the pixel blob beside it), which is what the NIfTI export reads.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from typing import Any

from pydicom.dataset import Dataset

import lake
from lake.export import reassemble
from lake.nifti import Part10, ValueCache, read_part10

_PIXEL_DATA = 0x7FE00010


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if type(a) is not type(b):
        return False
    if isinstance(a, list | tuple) or type(a).__name__ == "MultiValue":
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def differences(expected: Dataset, got: Part10 | Dataset, path: str = "") -> Iterator[str]:
    """Every element where ``got`` is not what pydicom's ``expected`` holds."""
    seen = set()
    for element in expected:
        tag = int(element.tag)
        seen.add(tag)
        where = f"{path}/{element.keyword or f'{tag:08X}'}"
        if tag not in got:
            yield f"{where} missing"
            continue
        if element.VR == "SQ" and isinstance(got, Part10) and element.keyword:
            # before the sequence is read: the path the converter's frame look-ups take
            yield from _item_value_differences(element, got, where)
        value = got.get(tag)
        if element.VR == "SQ" and not isinstance(value, bytes):
            if len(value) != len(element.value):
                yield f"{where}: {len(value)} items, not {len(element.value)}"
                continue
            for i, (a, b) in enumerate(zip(element.value, value, strict=True)):
                yield from differences(a, b, f"{where}[{i}]")
            continue
        if tag == _PIXEL_DATA:
            if bytes(value) != bytes(element.value):
                yield f"{where}: other pixel bytes"
            continue
        if not _same(element.value, value):
            yield (f"{where} ({element.VR}): {type(value).__name__} {value!r:.60} is not "
                   f"pydicom's {type(element.value).__name__} {element.value!r:.60}")
    extra = [t for t in got.keys() if t not in seen]  # noqa: SIM118 - Part10.keys is a view
    if extra:
        yield f"{path}/ extra elements {[f'{t:08X}' for t in extra]}"


def _item_value_differences(element: Any, got: Part10, where: str) -> Iterator[str]:
    """``got.item_value(sequence, keyword)`` for each keyword of the first item, against
    pydicom's value (None when absent or empty)."""
    first = element.value[0] if len(element.value) else None
    keywords = [e.keyword for e in first if e.keyword] if first is not None else []
    for keyword in keywords or ["Rows"]:
        expected = None if first is None else first.get(keyword)
        if expected == "" or (expected is not None and first[keyword].VR == "SQ"):
            continue  # a sequence in the item: not what item_value is for
        value = got.item_value(element.keyword, keyword)
        if not (value is None and expected is None) and not _same(expected, value):
            yield (f"{where}[0]/{keyword} by item_value: {type(value).__name__} "
                   f"{value!r:.60} is not pydicom's {type(expected).__name__} {expected!r:.60}")


def compare_bytes(data: bytes, pixels: bytes | None = None, pixel_vr: str | None = None,
                  cache: ValueCache | None = None) -> tuple[bool, list[str]]:
    """(read by the fast reader, differences from pydicom) for one object's bytes; read
    through ``cache`` when given (shared by many objects, as the export shares one per
    series)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = reassemble(data, pixels, pixel_vr)  # the reader the export had before
        got = read_part10(data, pixels, pixel_vr, cache=cache)
        if not isinstance(got, Part10):
            return False, []
        return True, list(differences(expected, got))


def lake_differences(lk: lake.Lake) -> tuple[int, int, list[str]]:
    """(instances read fast, instances read by pydicom, differences) over a lake's rows.

    Every row is read through one value cache (what the export does per series, here across
    every series, vendor and character set of the lake)."""
    rows = lk.sql(
        "SELECT SOPInstanceUID, header_dicom, pixel_hash, pixel_vr FROM instances"
    ).fetchall()
    fast = slow = 0
    problems: list[str] = []
    cache = ValueCache()
    for uid, header, pixel_hash, pixel_vr in rows:
        pixels = lk.blobs.get(pixel_hash) if pixel_hash else None
        quick, found = compare_bytes(header, pixels, pixel_vr, cache)
        fast += quick
        slow += not quick
        problems += [f"{uid}: {d}" for d in found]
    return fast, slow, problems
