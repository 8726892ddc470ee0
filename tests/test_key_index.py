"""The index of instances' SOPInstanceUIDs (lake/catalog/_key_index.py) judges exactly as
reading every data file does: through appends, a delete, a compaction, merges, segments that
vanish, hash collisions and concurrent writers."""

from __future__ import annotations

import multiprocessing
import os
import random
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

import lake.catalog._key_index as index_module
import lake.catalog._tables as tables_module
from lake.catalog import INSTANCES, DeltaTables
from lake.catalog._tables import _key_index_of
from lake.store import Location

KEY = "SOPInstanceUID"
FETCH = [KEY, "batch_id", "Modality", "Rows"]


def _rows(owner: str, uids: list[str]) -> pa.Table:
    return pa.Table.from_pylist(
        [{KEY: u, "batch_id": owner, "Modality": "CT", "Rows": i} for i, u in enumerate(uids)],
        schema=INSTANCES.schema,
    )


@pytest.fixture
def small_index(monkeypatch: pytest.MonkeyPatch) -> None:
    """Segments after 3 uncovered files, merged by twos: every path is taken in a few commits."""
    monkeypatch.setattr(index_module, "UNCOVERED_FILES", 3)
    monkeypatch.setattr(index_module, "FAN_IN", 2)


def _judged_both_ways(tables: DeltaTables, keys: list[str | None], version: int | None = None
                      ) -> None:
    """``_matching`` with the index equals ``_matching`` reading every file, for the key alone
    and with fetched columns, at the newest version or at ``version``."""
    delta = tables.open(INSTANCES.name, version)
    files = tables.data_files(INSTANCES.name, version)
    index = _key_index_of(delta, INSTANCES, KEY, files)
    assert index is not None
    wanted = pa.chunked_array([pa.array(keys, pa.string())])
    for columns in ([KEY], FETCH):
        expected = tables_module._matching(files, INSTANCES, columns, wanted)
        got = tables_module._matching(files, INSTANCES, columns, wanted, index=index)
        assert got.schema == expected.schema
        assert got.to_pylist() == expected.to_pylist()


def _uids(rng: random.Random, count: int) -> list[str]:
    return [f"2.25.{rng.getrandbits(100)}" for _ in range(count)]


def _indexed_lake(tmp_path: Path, seed: int, files: int, per_file: int
                  ) -> tuple[DeltaTables, random.Random, list[str], str]:
    """A lake of ``files`` appends of ``per_file`` random UIDs each: its tables, the random
    generator (to make more), the UIDs in order, and the instances table's folder."""
    tables = DeltaTables(Location(str(tmp_path / "lake")))
    tables.create_all()
    rng = random.Random(seed)
    stored: list[str] = []
    for n in range(files):
        uids = _uids(rng, per_file)
        stored += uids
        tables.append(INSTANCES, _rows(f"b{n}", uids))
    return tables, rng, stored, str(tmp_path / "lake" / "tables" / INSTANCES.name)


def test_the_index_judges_as_every_file_does(tmp_path: Path, small_index: None,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    tables = DeltaTables(Location(str(tmp_path / "lake")))
    tables.create_all()
    rng = random.Random(31)
    stored: list[str] = []
    for n in range(30):
        uids = _uids(rng, rng.randrange(1, 30))
        if stored and n % 7 == 0:
            uids.append(rng.choice(stored))  # one UID in two files
        stored += uids
        tables.append(INSTANCES, _rows(f"b{n}", uids))
        if n == 12:
            tables.delete(INSTANCES, f"{KEY} = '{stored[5]}'")
        if n == 20:
            tables.open(INSTANCES.name).optimize.compact(target_size=8192)
    root = str(tmp_path / "lake" / "tables" / INSTANCES.name)
    found = index_module.segments(root)
    live = {p[len(root) + 1:] for p in tables.data_files(INSTANCES.name).paths}
    assert found and all(set(s.files) <= live for s in found)  # stale ones were removed
    covered = {f for s in index_module._chosen(found, live) for f in s.files}
    assert len(covered) >= len(live) - 2  # at most UNCOVERED_FILES - 1 read whole

    opened: list[int] = []
    holding = tables_module.files_holding

    def counted(paths: list[str], key: str, keys: pa.Array, **options: Any) -> pa.Table:
        opened.append(len(paths))
        return holding(paths, key, keys, **options)

    monkeypatch.setattr(tables_module, "files_holding", counted)
    for trial in range(6):
        present = rng.sample(stored, 1 + trial * 5)
        keys: list[str | None] = [*present, *_uids(rng, 20), present[0], None, "it's", "é"]
        rng.shuffle(keys)
        _judged_both_ways(tables, keys)
    assert opened and max(opened[1::2]) <= 2  # the indexed calls read only uncovered files

    # An older snapshot (the index now covers files it lacks), and a compaction that no
    # commit followed yet (the segments cover files the snapshot no longer has).
    _judged_both_ways(tables, [*rng.sample(stored, 20), "2.25.0"], version=9)
    tables.open(INSTANCES.name).optimize.compact(target_size=1 << 20)
    assert index_module.segments(root)
    _judged_both_ways(tables, [*rng.sample(stored, 20), "2.25.0"])

    # Through insert_new and lookup: only absent keys are new; present ones are found.
    absent = _uids(rng, 5)
    result = tables.insert_new(INSTANCES, _rows("new", [*stored[10:15], *absent]), key=KEY)
    assert sorted(result.rows.column(KEY).to_pylist()) == sorted(absent)
    assert sorted(tables.lookup(INSTANCES, KEY, [*absent, "2.25.0"], []).column(KEY)
                  .to_pylist()) == sorted(absent)


def test_hash_collisions_and_vanished_segments(tmp_path: Path, small_index: None,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A hash hit whose stored UID is another is not a match; a segment removed between the
    listing and its opening leaves its files to be read whole. Same answers both times."""
    tables = DeltaTables(Location(str(tmp_path / "lake")))
    tables.create_all()
    rng = random.Random(8)
    stored: list[str] = []
    for n in range(10):
        uids = _uids(rng, 10)
        stored += uids
        tables.append(INSTANCES, _rows(f"b{n}", uids))
    keys: list[str | None] = [*rng.sample(stored, 6), *_uids(rng, 6)]
    _judged_both_ways(tables, keys)

    located = index_module.located

    def colliding(root: str, snapshot: list[str], paths: list[str], wanted: list[str]
                  ) -> tuple[list[tuple[str, int]], list[str]]:
        places, uncovered = located(root, snapshot, paths, wanted)
        covered = [p for p in paths if p not in uncovered]
        extra = [(covered[0], 0), (covered[-1], 3)]  # rows holding keys not looked for
        return sorted({*places, *extra}), uncovered

    monkeypatch.setattr(tables_module, "located", colliding)
    _judged_both_ways(tables, [k for k in keys if k not in (stored[0], stored[-7])])
    monkeypatch.undo()
    monkeypatch.setattr(index_module, "UNCOVERED_FILES", 3)
    monkeypatch.setattr(index_module, "FAN_IN", 2)

    def vanished(path: str) -> pa.RecordBatch:
        raise FileNotFoundError(path)

    monkeypatch.setattr(index_module, "_open", vanished)
    _judged_both_ways(tables, keys)


def _writer(root: str, seed: int, shared: list[str], count: int) -> None:
    os.environ.pop("LAKE_ROOT", None)
    index_module.UNCOVERED_FILES, index_module.FAN_IN = 3, 2
    tables = DeltaTables(Location(root))
    rng = random.Random(seed)
    for n in range(count):
        uids = [*_uids(rng, 5), shared[n]]  # every writer offers the same shared UIDs
        tables.insert_new(INSTANCES, _rows(f"w{seed}-{n}", uids), key=KEY)


def test_concurrent_writers_keep_each_uid_once(tmp_path: Path) -> None:
    """Three processes commit batches that all offer the same UIDs while each maintains the
    index (writing, merging and removing segments): every UID is stored once."""
    root = str(tmp_path / "lake")
    DeltaTables(Location(root)).create_all()
    shared = _uids(random.Random(99), 12)
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_writer, args=(root, seed, shared, 12))
               for seed in (1, 2, 3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=600)
        assert worker.exitcode == 0
    tables = DeltaTables(Location(root))
    uids = tables.dataset(INSTANCES.name).to_table(columns=[KEY]).column(KEY).to_pylist()
    assert len(uids) == len(set(uids)) == 3 * 12 * 5 + 12
    assert index_module.segments(str(Path(root) / "tables" / INSTANCES.name))
    _judged_both_ways(tables, [*shared, *uids[::7], "2.25.0"])
    # The churn is bounded: after one more commit's upkeep, every segment on disk is one a
    # judgement uses (none left overlapping by writers racing on the same uncovered files),
    # fewer than FAN_IN of each size class, and fewer than UNCOVERED_FILES files uncovered.
    tables.append(INSTANCES, _rows("last", _uids(random.Random(7), 5)))
    table_root = str(Path(root) / "tables" / INSTANCES.name)
    live = {os.path.relpath(p, table_root) for p in tables.data_files(INSTANCES.name).paths}
    found = index_module.segments(table_root)
    assert set(index_module._chosen(found, live)) == set(found)
    classes = [s.size_class for s in found]
    assert all(classes.count(c) < index_module.FAN_IN for c in classes)
    covered = {f for s in found for f in s.files}
    assert len(live - covered) < index_module.UNCOVERED_FILES


def test_segments_stay_within_their_bound(tmp_path: Path, small_index: None,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Writing and merging segments sorts them in memory: none grows past ``SEGMENT_ROWS``
    rows unless one data file alone holds more, and the judgement is unchanged."""
    monkeypatch.setattr(index_module, "SEGMENT_ROWS", 40)
    tables = DeltaTables(Location(str(tmp_path / "lake")))
    tables.create_all()
    rng = random.Random(4)
    stored: list[str] = []
    for n in range(24):
        uids = _uids(rng, 60 if n == 5 else rng.randrange(5, 15))
        stored += uids
        tables.append(INSTANCES, _rows(f"b{n}", uids))
    found = index_module.segments(str(tmp_path / "lake" / "tables" / INSTANCES.name))
    assert len(found) > 3
    assert all(s.rows <= 40 or len(s.files) == 1 for s in found)
    assert any(s.rows == 60 for s in found)  # the one large file, alone
    _judged_both_ways(tables, [*rng.sample(stored, 25), *_uids(rng, 10)])


def test_a_delete_cuts_its_file_from_the_segment_without_reading_data_files(
        tmp_path: Path, small_index: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """After a delete rewrites one data file, the next commit's upkeep keeps the segment's
    other files indexed, cut from the segment (no data file read but the new ones), in the
    same bytes as indexing those files afresh; the judgement is unchanged."""
    tables, rng, stored, root = _indexed_lake(tmp_path, 6, 6, 10)
    (before,) = [s for s in index_module.segments(root) if len(s.files) >= 5]
    tables.delete(INSTANCES, f"{KEY} = '{stored[12]}'")  # rewrites the second file
    read: list[list[str]] = []
    indexed = index_module._indexed

    def recorded(table_root: str, files: list[str], key: str) -> pa.Table:
        read.append(list(files))
        return indexed(table_root, files, key)

    monkeypatch.setattr(index_module, "_indexed", recorded)
    tables.append(INSTANCES, _rows("after", _uids(rng, 3)))
    found = index_module.segments(root)
    assert not any(s.path == before.path for s in found)
    cut = [s for s in found if set(s.files) < set(before.files)]
    assert len(cut) == 1 and len(cut[0].files) == len(before.files) - 1
    assert all(not set(files) & set(cut[0].files) for files in read)  # not read again
    with open(cut[0].path, "rb") as fh:
        cut_bytes = fh.read()
    os.remove(cut[0].path)
    fresh = index_module._write(root, cut[0].files, indexed(root, cut[0].files, KEY))
    with open(fresh.path, "rb") as fh:
        assert fh.read() == cut_bytes
    _judged_both_ways(tables, [*stored[::3], stored[12], *_uids(rng, 5)])


def test_a_delete_leaves_no_hash_of_its_keys_in_the_index(
        tmp_path: Path, small_index: None) -> None:
    """An erasure ('lake forget' deletes through DeltaTables.delete) takes the erased UIDs'
    hashes out of the index at once, not at the next commit (which may never come)."""
    tables, rng, stored, root = _indexed_lake(tmp_path, 9, 4, 10)

    def hashes() -> set[int]:
        return {h for s in index_module.segments(root)
                for h in index_module._open(s.path).column("hash").to_pylist()}

    erased = stored[12:14]
    assert set(index_module.key_hashes(erased).tolist()) <= hashes()
    tables.delete(INSTANCES, f"{KEY} IN ('{erased[0]}', '{erased[1]}')")
    assert not set(index_module.key_hashes(erased).tolist()) & hashes()
    # the other files' keys stay indexed (the rewritten file's are read from it)
    assert set(index_module.key_hashes(stored[:10] + stored[20:30]).tolist()) <= hashes()
    _judged_both_ways(tables, [*stored[::3], *erased, *_uids(rng, 5)])


@pytest.mark.parametrize("damage", ["hashes zeroed", "rows changed", "truncated", "emptied",
                                    "garbage"])
def test_a_damaged_segment_is_never_trusted(tmp_path: Path, small_index: None,
                                            damage: str) -> None:
    """A segment is written without fsync and may be torn by a crash or damaged on disk: a
    segment that cannot be read or does not match its checksum is as if absent (its files
    are read), so stored UIDs are never judged new, and no commit, lookup or delete fails;
    the next upkeep removes it and indexes its files afresh (review H1, H2)."""
    tables, rng, stored, root = _indexed_lake(tmp_path, 17, 4, 50)
    (segment,) = index_module.segments(root)
    data = bytearray(Path(segment.path).read_bytes())
    with pa.memory_map(segment.path) as source:
        batch = pa.ipc.open_file(source).get_batch(0)
        hashes, rows = batch.column(0).to_numpy().copy(), batch.column(2).to_numpy().copy()
    if damage == "hashes zeroed":  # a still valid IPC file, its sorted hashes partly zero
        at = data.find(hashes[20:21].tobytes())
        data[at:at + 8 * 20] = bytes(8 * 20)
    elif damage == "rows changed":
        at = data.find(rows.tobytes())
        data[at:at + 8] = (int(rows[0]) + 1).to_bytes(8, "little")
    elif damage == "truncated":
        data = data[: len(data) // 2]
    elif damage == "emptied":
        data = bytearray()
    else:
        data = bytearray(rng.randbytes(len(data)))
    Path(segment.path).write_bytes(bytes(data))

    _judged_both_ways(tables, [*stored[::4], *_uids(rng, 5)])
    again = tables.insert_new(INSTANCES, _rows("again", stored[10:40]), key=KEY)
    assert again.count == 0  # every stored UID found: no duplicate
    assert sorted(tables.lookup(INSTANCES, KEY, stored[:3], []).column(KEY).to_pylist()) \
        == sorted(stored[:3])
    tables.append(INSTANCES, _rows("later", _uids(rng, 5)))  # the upkeep replaces it
    assert segment.path not in [s.path for s in index_module.segments(root)] or \
        Path(segment.path).read_bytes() != bytes(data)
    tables.delete(INSTANCES, f"{KEY} = '{stored[0]}'")
    _judged_both_ways(tables, [*stored[::3], *_uids(rng, 5)])
    table = tables.open(INSTANCES.name).to_pyarrow_table(columns=[KEY])
    assert table.num_rows == len(set(table.column(KEY).to_pylist())) == len(stored) + 4


_COMMITS_WITHOUT_FSSPEC = """
import json, random, sys
import pyarrow as pa
import lake.catalog._key_index as index_module
from lake.catalog import INSTANCES, DeltaTables
from lake.store import Location

index_module.UNCOVERED_FILES = 2
tables = DeltaTables(Location(sys.argv[1]))
tables.create_all()
rng = random.Random(3)
for n in range(3):
    rows = pa.Table.from_pylist([{"SOPInstanceUID": f"2.25.{rng.getrandbits(90)}",
                                  "batch_id": f"b{n}"} for _ in range(4)], schema=INSTANCES.schema)
    tables.insert_new(INSTANCES, rows, key="SOPInstanceUID")
print(json.dumps([len(index_module.segments(sys.argv[1] + "/tables/instances")),
                  sorted(m for m in sys.modules if m.split(".")[0] in ("fsspec", "asyncio"))]))
"""


def test_a_local_commit_and_its_upkeep_import_no_fsspec(tmp_path: Path) -> None:
    """A local lake's commit, its summaries and its index segments are written with the
    lake's own local write: fsspec (which imports asyncio) is never loaded by the committing
    process (the ingest driver's commits; its workers load none either)."""
    import json
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", _COMMITS_WITHOUT_FSSPEC, str(tmp_path / "lake")],
                          capture_output=True, text=True, check=True)
    segments, loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    assert segments == 1  # the upkeep wrote a segment
    assert loaded == []


def test_a_stale_writer_keeps_a_newer_writers_segments(
        tmp_path: Path, small_index: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Concurrent writers: a writer whose upkeep runs after another writer's later commit
    and upkeep sees a segment holding a file its own version lacks. That file is newer, not
    deleted: the segment is kept (once, it was cut and rebuilt by the next upkeep: churn),
    and the upkeep neither writes nor reads anything."""
    tables, rng, stored, root = _indexed_lake(tmp_path, 21, 2, 10)
    stale = tables.open(INSTANCES.name)  # a writer's version, before the other's commit
    tables.append(INSTANCES, _rows("other", _uids(rng, 10)))  # the other writer: 3 files
    (segment,) = index_module.segments(root)
    assert len(segment.files) == 3
    written: list[list[str]] = []
    write = index_module._write

    def recorded(table_root: str, files: list[str], table: pa.Table) -> index_module.Segment:
        written.append(list(files))
        return write(table_root, files, table)

    monkeypatch.setattr(index_module, "_write", recorded)
    tables._maintain_key_index(stale)  # the first writer's upkeep, late
    assert index_module.segments(root) == [segment]
    assert written == []
    _judged_both_ways(tables, [*stored[::3], *_uids(rng, 5)])


def test_a_segment_no_judgement_chooses_is_removed(tmp_path: Path, small_index: None) -> None:
    """Two writers racing on the uncovered files of two versions write overlapping
    segments; the smaller would never be chosen, merged or cut (its files stay live): the
    next upkeep removes it, so the segments on disk are those judgements use."""
    tables, rng, stored, root = _indexed_lake(tmp_path, 23, 5, 10)
    (first,) = index_module.segments(root)  # files 1-3; files 4-5 uncovered
    live = sorted(os.path.relpath(p, root) for p in tables.data_files(INSTANCES.name).paths)
    rest = [f for f in live if f not in first.files]
    smaller = index_module._write(root, rest[:1], index_module._indexed(root, rest[:1], KEY))
    larger = index_module._write(root, rest, index_module._indexed(root, rest, KEY))
    assert set(index_module._chosen(index_module.segments(root), set(live))) == {first, larger}
    tables._maintain_key_index(tables.open(INSTANCES.name))
    paths = {s.path for s in index_module.segments(root)}
    assert smaller.path not in paths
    found = index_module.segments(root)
    assert index_module._chosen(found, set(live)) == sorted(found, key=lambda s: (-s.rows,
                                                                                   s.path))
    _judged_both_ways(tables, [*stored[::3], *_uids(rng, 5)])
