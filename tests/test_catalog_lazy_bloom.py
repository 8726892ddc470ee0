"""lake.catalog._lazy_bloom.LazyBlooms: the one lazy Bloom state of the SQL catalog and of the
instance lookup. Every file the first time a column is asked for, then the files its Bloom
filters let through (read once), and every file again while they cannot be read."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pyarrow as pa

from lake.catalog import INSTANCES, DeltaTables
from lake.catalog._bloom import BloomIndex
from lake.catalog._lazy_bloom import LazyBlooms
from lake.store import Location

KEY = "SOPInstanceUID"


def _lake(tmp_path: Path) -> tuple[DeltaTables, list[str], list[list[str]]]:
    """A lake of four appends of five rows: its tables, data files and each file's UIDs."""
    tables = DeltaTables(Location(str(tmp_path / "lake")))
    tables.create_all()
    rng = random.Random(5)
    uids = []
    for n in range(4):
        batch = [f"2.25.{rng.getrandbits(90)}" for _ in range(5)]
        uids.append(batch)
        tables.append(INSTANCES, pa.Table.from_pylist(
            [{KEY: u, "batch_id": f"b{n}", "SeriesInstanceUID": f"1.2.{n}"} for u in batch],
            schema=INSTANCES.schema))
    return tables, list(tables.data_files(INSTANCES.name).paths), uids


def test_the_filters_are_read_on_a_columns_second_use(tmp_path: Path) -> None:
    _, files, uids = _lake(tmp_path)
    blooms = LazyBlooms(files)
    assert blooms.candidates(KEY, [uids[1][0]]) is None  # the first use: every file
    assert blooms.index(KEY) is None
    got = blooms.candidates(KEY, [uids[1][0]])
    assert got == BloomIndex(files, KEY).candidates([uids[1][0]])
    assert got is not None and len(got) < len(files)
    index = blooms.index(KEY)
    assert index is not None
    assert blooms.candidates(KEY, [uids[2][3], "2.25.0"]) == index.candidates([uids[2][3]])
    assert blooms.index(KEY) is index  # read once
    # another column has its own first use
    assert blooms.candidates("SeriesInstanceUID", ["1.2.3"]) is None
    assert blooms.candidates("SeriesInstanceUID", ["1.2.3"]) == \
        BloomIndex(files, "SeriesInstanceUID").candidates(["1.2.3"])


def test_unreadable_filters_mean_every_file_until_they_can_be_read(tmp_path: Path) -> None:
    _, files, uids = _lake(tmp_path)
    moved = files[1] + ".away"
    os.rename(files[1], moved)  # (a vacuum removed it)
    blooms = LazyBlooms(files)
    for _ in range(3):
        assert blooms.candidates(KEY, [uids[0][0]]) is None
        assert blooms.index(KEY) is None
    os.rename(moved, files[1])
    assert blooms.candidates(KEY, [uids[0][0]]) == BloomIndex(files, KEY).candidates([uids[0][0]])


def test_the_catalog_and_the_lookup_share_it(tmp_path: Path) -> None:
    """Both ask LazyBlooms (the state they each kept before): the lookup's second call and
    the catalog's second pinned query read only the files the filters let through."""
    from lake.catalog import Catalog
    from lake.query import InstanceLookup

    tables, files, uids = _lake(tmp_path)
    with InstanceLookup(tables) as lookup:
        assert lookup._candidates(uids[3][1]) == files
        assert lookup._candidates(uids[3][1]) == BloomIndex(files, KEY).candidates([uids[3][1]])
        assert lookup._blooms.index(KEY) is not None
    catalog = Catalog(tables)
    try:
        query = f"SELECT batch_id FROM instances WHERE SOPInstanceUID = '{uids[3][1]}'"
        assert catalog.sql(query).fetchall() == [("b3",)]
        assert catalog._blooms.index(KEY) is None
        assert catalog.sql(query).fetchall() == [("b3",)]
        assert catalog._blooms.index(KEY) is not None
    finally:
        catalog.close()
