"""An index of the SOPInstanceUIDs of ``instances``: where a commit finds its keys.

Judging a commit's keys read the key column of every data file (or every row group a Bloom
filter let through: most of them for a thousand random UIDs), so its cost grew with the table:
0.9-1.0 s of CPU for 1,000 candidates at 10 million rows. This index answers from a sorted
array of the UIDs' hashes instead, memory-mapped: a binary search per candidate, 0.015-0.021 s
at 10 million rows and 0.011 at one million (``benchmarks/bench_key_index.py``,
``docs/performance.md``, "Judging a commit's keys").

Layout. Below the table, ``_keys/v1/`` holds *segments*: each an Arrow IPC file of one record
batch, sorted by hash, one row per stored row of the data files it covers: ``hash`` (the first
8 bytes of the UID's SHA-256, big-endian, as an unsigned integer), ``file`` (the number of the
data file in the segment's list, in the schema's metadata) and ``row`` (the row's number in
that file). A segment is a pure function of the data files it covers (its name is the hash of
their names), so it is never a second source of truth:

- Data files are immutable and uniquely named: a segment written by two writers at once is the
  same bytes, published with an atomic rename; a crash leaves at most a temporary file.
- A judgement at a snapshot uses only segments whose every data file belongs to the snapshot
  (so an index built later, or for files a compaction or a delete removed, is never wrong for
  it), chosen largest first and without overlap; the snapshot's files no chosen segment covers
  are read as before (DuckDB over the files). A hash hit is confirmed by reading the row's UID
  (hashes may collide), so the answer is exactly the rows of the snapshot holding a key.
- A segment that vanishes before it is opened (a concurrent writer merged it) leaves its files
  to be read as before.
- A segment is written without fsync and carries the XXH3-128 digest of its columns in its
  schema; one that cannot be read, or whose columns do not match the digest or its file list
  (torn by a crash, damaged on disk), is as if absent: its files are read, the judgement that
  meets it removes it (so each commit checks a segment once), and the upkeep indexes them
  afresh. The upkeep itself never fails the commit or delete it
  follows (:func:`maintain` logs the error's type and leaves the index behind).

Upkeep, after each commit and each delete of ``instances`` on a local lake (:func:`maintain`;
after a delete at once, so an erasure leaves no hash of an erased UID in the index): once
:data:`UNCOVERED_FILES` data files of the newest version are covered by no segment, segments
are written for them (of at most :data:`SEGMENT_ROWS` rows); once :data:`FAN_IN` segments of
one size class (rows, by powers of :data:`FAN_IN`) hold only live files, they are merged into
one, up to :data:`SEGMENT_ROWS` rows; a segment holding a file the newest version no longer
has is replaced by one cut from it without that file's rows (a delete rewrites one file of
many; readers of older snapshots fall back to reading the files), once the newest version
read then lacks the file too (an upkeep running late must not cut a newer writer's segment);
a segment no judgement chooses (overlapping a larger one: writers racing on the same files)
is removed. So a judgement opens
O(log n) segments per 4M rows and reads at most ``UNCOVERED_FILES - 1`` files beyond a
compaction's fresh ones. A remote lake keeps reading
the files.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import mmap
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lake.catalog._arrow_values import numpy_array
from lake.catalog._duckdb import connect
from lake.catalog._scan import _file_list
from lake.store import resolve, write_at

if TYPE_CHECKING:
    import duckdb
    import numpy as np
    import numpy.typing as npt
    import pyarrow as pa

__all__ = [
    "FAN_IN", "INDEX_DIR", "SEGMENT_ROWS", "UNCOVERED_FILES", "Segment", "located", "maintain",
    "segments",
]

INDEX_DIR = "_keys/v1"
"""Below the ``instances`` table (Delta ignores paths starting with ``_``)."""

UNCOVERED_FILES = 8
"""Data files covered by no segment before a segment is written for them."""

FAN_IN = 4
"""Segments of one size class merged into one."""

SEGMENT_ROWS = 4 * 1024 * 1024
"""No merge makes a segment larger, and the files of a new segment hold at most this many rows
(unless one file alone holds more): writing a segment sorts it in memory (about 60 bytes a
row at its peak), so the upkeep's memory is bounded whatever the table's size. A judgement
searches one segment per 4M rows (a binary search each)."""

_FILES = b"lake.files"
"""The schema metadata key listing a segment's data files (relative to the table)."""

_CHECKSUM = b"lake.checksum"
"""The schema metadata key holding the XXH3-128 digest of a segment's three columns: a
segment is written without fsync and trusted only when its columns match it (a torn or
damaged segment would make stored UIDs look new)."""

_LOG = logging.getLogger(__name__)


class _DamagedError(Exception):
    """A segment that cannot be read or does not match its checksum: treated as absent."""


@dataclass(frozen=True)
class Segment:
    """One segment: its path, the data files it covers (relative to the table) and its rows."""

    path: str
    files: tuple[str, ...]
    rows: int

    @property
    def size_class(self) -> int:
        """``floor(log_FAN_IN(rows))``: segments merged together are of one class."""
        level, rows = 0, max(self.rows, 1)
        while rows >= FAN_IN:
            rows //= FAN_IN
            level += 1
        return level


def key_hashes(keys: Sequence[str]) -> npt.NDArray[np.uint64]:
    """The hashes of ``keys`` as the index stores them (the first 8 bytes of SHA-256)."""
    import numpy as np

    return np.array([int.from_bytes(hashlib.sha256(k.encode()).digest()[:8], "big")
                     for k in keys], dtype=np.uint64)


def _folder(table_root: str) -> str:
    return os.path.join(table_root, *INDEX_DIR.split("/"))


def _open(path: str) -> pa.RecordBatch:
    """The segment at ``path``, memory-mapped for one pass in order (its digest reads every
    page before any probe: with ``MADV_RANDOM`` a segment out of the page cache was read a
    page a fault, 0.95 s of CPU and 2.6 s for 200 MB at 10 million rows, against 0.03 s and
    0.09 s read ahead; docs/performance.md, "Judging a commit's keys")."""
    import pyarrow as pa
    import pyarrow.ipc as ipc

    with open(path, "rb") as fh:
        mapped = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    mapped.madvise(mmap.MADV_SEQUENTIAL)
    return ipc.open_file(pa.BufferReader(pa.py_buffer(mapped))).get_batch(0)


def _digest(hashes: npt.NDArray[np.uint64], numbers: npt.NDArray[np.int32],
            rows: npt.NDArray[np.int64]) -> bytes:
    import xxhash  # (imported where used, as in _bloom)

    digest = xxhash.xxh3_128()
    for column in (hashes, numbers, rows):
        digest.update(column.tobytes() if not column.flags.c_contiguous else column.data)
    return digest.hexdigest().encode()


def _columns(segment: Segment) -> tuple[
        npt.NDArray[np.uint64], npt.NDArray[np.int32], npt.NDArray[np.int64]]:
    """The segment's hash, file and row columns, memory-mapped, checked against its digest.

    Raises
    ------
    FileNotFoundError
        If the segment vanished (merged by another writer meanwhile).
    _DamagedError
        If it cannot be read, or its columns do not match its checksum or its file list.
    """
    import numpy as np
    import pyarrow as pa

    try:
        batch = _open(segment.path)
        count = batch.num_rows
        hashes = np.frombuffer(batch.column(0).buffers()[1], np.uint64, count)
        numbers = np.frombuffer(batch.column(1).buffers()[1], np.int32, count)
        rows = np.frombuffer(batch.column(2).buffers()[1], np.int64, count)
        expected = (batch.schema.metadata or {}).get(_CHECKSUM)
    except FileNotFoundError:
        raise
    except (OSError, ValueError, KeyError, IndexError, TypeError, pa.ArrowException) as exc:
        raise _DamagedError(segment.path) from exc
    if expected != _digest(hashes, numbers, rows):
        raise _DamagedError(segment.path)
    if count and (int(numbers.min()) < 0 or int(numbers.max()) >= len(segment.files)):
        raise _DamagedError(segment.path)
    return hashes, numbers, rows


def _listed(table_root: str) -> tuple[list[Segment], list[str]]:
    """The readable segments below ``table_root`` as listed now (each one's schema read
    only), and the paths of those that cannot be read."""
    import pyarrow as pa
    import pyarrow.ipc as ipc

    folder = _folder(table_root)
    try:
        names = sorted(n for n in os.listdir(folder) if n.endswith(".arrow"))
    except FileNotFoundError:
        return [], []
    found, damaged = [], []
    for name in names:
        path = os.path.join(folder, name)
        try:
            with pa.memory_map(path) as source:
                reader = ipc.open_file(source)
                files = tuple(json.loads((reader.schema.metadata or {})[_FILES]))
                rows = sum(reader.get_batch(b).num_rows for b in range(reader.num_record_batches))
        except FileNotFoundError:
            continue  # merged and removed by another writer meanwhile
        except (OSError, ValueError, KeyError, TypeError, pa.ArrowException):
            damaged.append(path)  # torn or damaged: as if absent (maintain removes it)
            continue
        if not all(isinstance(f, str) for f in files):
            damaged.append(path)
            continue
        found.append(Segment(path, files, rows))
    return found, damaged


def segments(table_root: str) -> list[Segment]:
    """The readable segments below ``table_root``, as listed now (reads each one's schema
    only; a segment that cannot be read is left out: its files are read instead)."""
    return _listed(table_root)[0]


def _chosen(found: Sequence[Segment], live: set[str]) -> list[Segment]:
    """Segments whose files are all ``live``, largest first, none sharing a file."""
    chosen: list[Segment] = []
    taken: set[str] = set()
    for segment in sorted(found, key=lambda s: (-s.rows, s.path)):
        if set(segment.files) <= live and taken.isdisjoint(segment.files):
            chosen.append(segment)
            taken.update(segment.files)
    return chosen


def located(
    table_root: str, snapshot: Sequence[str], paths: Sequence[str], keys: Sequence[str]
) -> tuple[list[tuple[str, int]], list[str]]:
    """Where the index says ``keys`` may be among the data files ``paths``, and which of
    ``paths`` it does not cover.

    Parameters
    ----------
    table_root : str
        The table's local folder; every path lies below it.
    snapshot : sequence of str
        Every data file of the snapshot judged (absolute paths): segments are chosen among
        those covering only these.
    paths : sequence of str
        The data files looked in (some of ``snapshot``).
    keys : sequence of str
        The keys looked for (no nulls).

    Returns
    -------
    places : list of (str, int)
        (data file, row number) of every indexed row whose hash is a key's: to be confirmed
        by reading the row's key (hashes may collide).
    uncovered : list of str
        The paths no usable segment covers, in the order of ``paths``: to be read whole.
    """
    import numpy as np

    prefix = table_root.rstrip("/") + "/"
    relative = {p[len(prefix):]: p for p in snapshot if p.startswith(prefix)}
    looked = set(paths)
    wanted = np.unique(key_hashes(keys))
    places: list[tuple[str, int]] = []
    covered: set[str] = set()
    for segment in _chosen(segments(table_root), set(relative)):
        try:
            hashes, numbers, rows = _columns(segment)
        except FileNotFoundError:
            continue  # merged meanwhile: its files are read whole
        except _DamagedError:  # its files are read whole, and indexed afresh by the upkeep
            with contextlib.suppress(OSError):
                os.remove(segment.path)
            continue
        covered.update(segment.files)
        if not len(hashes):
            continue
        start = np.searchsorted(hashes, wanted, side="left")
        stop = np.searchsorted(hashes, wanted, side="right")
        for first, last in zip(start.tolist(), stop.tolist(), strict=True):
            for i in range(first, last):
                path = relative[segment.files[numbers[i]]]
                if path in looked:
                    places.append((path, int(rows[i])))
    return places, [p for p in paths if p[len(prefix):] not in covered or not p.startswith(prefix)]


def _write(table_root: str, files: Sequence[str], table: pa.Table) -> Segment:
    """Write the segment of ``files`` (``table``: hash, file, row; any order)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.ipc as ipc

    table = table.sort_by([("hash", "ascending"), ("file", "ascending"), ("row", "ascending")])
    schema = pa.schema([("hash", pa.uint64()), ("file", pa.int32()), ("row", pa.int64())])
    table = table.cast(schema).combine_chunks()
    digest = _digest(_numpy(table.column("hash"), np.uint64),
                     _numpy(table.column("file"), np.int32), _numpy(table.column("row"), np.int64))
    schema = schema.with_metadata({_FILES: json.dumps(list(files)), _CHECKSUM: digest})
    table = table.replace_schema_metadata(schema.metadata)
    sink = pa.BufferOutputStream()
    with ipc.new_file(sink, schema) as writer:
        writer.write_table(table, max_chunksize=max(1, table.num_rows))
    name = hashlib.sha256("\n".join(files).encode()).hexdigest() + ".arrow"
    path = os.path.join(_folder(table_root), name)
    # the lake's local write (its folder made on first use), without importing fsspec: the
    # index is kept on a local lake only, after every commit
    write_at(resolve(table_root), path, sink.getvalue().to_pybytes(), fsync=False)
    return Segment(path, tuple(files), table.num_rows)


def _numpy(column: pa.ChunkedArray, dtype: type[np.generic]) -> npt.NDArray[Any]:
    """A column of at most one chunk of fixed-width values and no nulls, as NumPy, sharing its
    memory (``to_numpy`` imports pandas: 0.2 s of CPU at a process's first commit)."""
    import numpy as np

    if column.num_chunks == 0:
        return np.empty(0, dtype)
    (chunk,) = column.chunks
    width = np.dtype(dtype).itemsize
    return np.frombuffer(chunk.buffers()[1], dtype, len(chunk), offset=chunk.offset * width)


def _indexed(table_root: str, files: Sequence[str], key: str,
             con: duckdb.DuckDBPyConnection | None = None) -> pa.Table:
    """hash, file (number in ``files``), row of every non-null ``key`` of ``files``; queried
    through ``con`` when given, else a database of its own (one thread)."""
    prefix = table_root.rstrip("/") + "/"
    listed = _file_list([prefix + f for f in files])
    column = '"' + key.replace('"', '""') + '"'
    own = con is None
    if con is None:
        con = connect()
        con.execute("SET threads = 1")
    try:
        return con.sql(
            f"SELECT ('0x' || left(sha256({column}), 16))::UBIGINT AS hash, "
            f"(list_position({listed}, filename) - 1)::INTEGER AS file, "
            f"file_row_number AS row FROM read_parquet({listed}, filename = true, "
            f"file_row_number = true, hive_partitioning = false) WHERE {column} IS NOT NULL"
        ).to_arrow_table()
    finally:
        if own:
            con.close()


def _bounded(table_root: str, files: Sequence[str]) -> list[list[str]]:
    """``files`` in runs of at most :data:`SEGMENT_ROWS` rows (by their Parquet footers)."""
    import pyarrow.parquet as pq

    prefix = table_root.rstrip("/") + "/"
    runs: list[list[str]] = [[]]
    rows = 0
    for name in files:
        count = pq.read_metadata(prefix + name).num_rows
        if runs[-1] and rows + count > SEGMENT_ROWS:
            runs.append([])
            rows = 0
        runs[-1].append(name)
        rows += count
    return runs


def _without(table_root: str, segment: Segment, kept: Sequence[str]) -> Segment:
    """The segment of the files ``kept`` (some of ``segment``'s, in its order), cut from it:
    the same bytes as indexing those files afresh."""
    import numpy as np
    import pyarrow as pa

    hashes, numbers_of, rows = _columns(segment)
    numbers = np.full(len(segment.files), -1, dtype=np.int32)
    position = {name: n for n, name in enumerate(kept)}
    for n, name in enumerate(segment.files):
        numbers[n] = position.get(name, -1)
    renumbered = numbers[numbers_of]
    keep = renumbered >= 0
    table = pa.table({"hash": numpy_array(hashes[keep], pa.uint64()),
                      "file": numpy_array(renumbered[keep], pa.int32()),
                      "row": numpy_array(rows[keep], pa.int64())})
    return _write(table_root, kept, table)


def _merged(table_root: str, group: Sequence[Segment]) -> Segment:
    import pyarrow as pa

    files: list[str] = []
    parts = []
    for segment in group:
        hashes, numbers, rows = _columns(segment)
        parts.append(pa.table({"hash": numpy_array(hashes, pa.uint64()),
                               "file": numpy_array(numbers + len(files), pa.int32()),
                               "row": numpy_array(rows, pa.int64())}))
        files.extend(segment.files)
    return _write(table_root, files, pa.concat_tables(parts))


def maintain(table_root: str, paths: Sequence[str], key: str,
             newest: Callable[[], Sequence[str]] | None = None,
             con: duckdb.DuckDBPyConnection | None = None) -> None:
    """Bring the index of ``key`` up to the data files ``paths`` (the newest version's).

    Never fails the commit or delete it follows (which has landed): the index is derived,
    and judgements read whatever files it does not cover, so an error here (a full disk, a
    data file vacuumed meanwhile) is logged, by its type only, and leaves the index behind.
    ``newest`` gives the newest version's data files, asked for only when a segment holds a
    file ``paths`` lacks; new segments are read through ``con`` when given (a commit's DuckDB
    cursor). See :func:`_maintain`.
    """
    import duckdb
    import pyarrow as pa
    from deltalake.exceptions import DeltaError

    from lake._errors import LakeError

    try:
        _maintain(table_root, paths, key, newest, con)
    except (OSError, ValueError, KeyError, pa.ArrowException, duckdb.Error, DeltaError,
            LakeError) as exc:  # (the last two: reading the newest version's files)
        _LOG.warning("the UID index was not brought up to date (%s); commits read the data "
                     "files it does not cover", type(exc).__name__)


def _maintain(table_root: str, paths: Sequence[str], key: str,
              newest: Callable[[], Sequence[str]] | None = None,
              con: duckdb.DuckDBPyConnection | None = None) -> None:
    """Bring the index of ``key`` up to the data files ``paths`` (the newest version's).

    Writes a segment for the files no segment covers once there are
    :data:`UNCOVERED_FILES` of them, merges :data:`FAN_IN` segments of one size class, and
    replaces each segment that covers a file ``paths`` lacks by one without that file's rows
    (cut from it: a delete rewrites one file, and a compaction leaves nothing to keep). Safe
    to run concurrently: segments are pure functions of immutable files, published
    atomically; a segment removed by another writer meanwhile is simply not merged.

    Concurrent writers (churn bounded): ``paths`` may be older than a segment another
    writer wrote after a later commit, so a segment holding a file ``paths`` lacks is cut
    only once ``newest()`` (the newest version's files, read then) lacks it too: every file
    of a segment was committed before the segment was written, so before it was listed here,
    and a stale writer never cuts a newer segment (to have it rebuilt by the next). And a
    segment no judgement chooses (its files also in a larger one, which writers racing on
    the same uncovered files leave) is removed: it would never be merged nor used.
    """
    prefix = table_root.rstrip("/") + "/"
    live = {p[len(prefix):] for p in paths if p.startswith(prefix)}
    found, damaged = _listed(table_root)
    for path in damaged:  # unreadable: its files are indexed afresh
        _discard(path)
    if newest is not None and any(not set(s.files) <= live for s in found):
        live = {p[len(prefix):] for p in newest() if p.startswith(prefix)}
    usable = [s for s in found if set(s.files) <= live]
    for segment in found:
        if segment in usable:
            continue
        kept = [f for f in segment.files if f in live]
        if kept:  # a delete rewrote some of its files: keep the rest, reading no data file
            with contextlib.suppress(FileNotFoundError, _DamagedError):
                usable.append(_without(table_root, segment, kept))
        _discard(segment.path)
    chosen = _chosen(usable, live)
    for segment in usable:
        if segment not in chosen:  # overlaps a larger one: never chosen, merged or cut
            _discard(segment.path)
    usable = chosen
    covered = {f for s in chosen for f in s.files}
    fresh = sorted(live - covered)
    if len(fresh) >= UNCOVERED_FILES:
        for files in _bounded(table_root, fresh):
            usable.append(_write(table_root, files, _indexed(table_root, files, key, con)))
    while True:
        chosen = _chosen(usable, live)
        classes: dict[int, list[Segment]] = {}
        for segment in chosen:
            classes.setdefault(segment.size_class, []).append(segment)
        group = next((sorted(g, key=lambda s: s.path)[:FAN_IN]
                      for _, g in sorted(classes.items()) if len(g) >= FAN_IN
                      and sum(s.rows for s in sorted(g, key=lambda s: s.path)[:FAN_IN])
                      <= SEGMENT_ROWS), None)
        if group is None:
            break
        try:
            merged = _merged(table_root, group)
        except FileNotFoundError:
            break  # another writer merged them meanwhile
        except _DamagedError as damaged_one:  # its files are indexed afresh next time
            _discard(str(damaged_one))
            usable = [s for s in usable if s.path != str(damaged_one)]
            continue
        for segment in group:
            _discard(segment.path)
        usable = [s for s in usable if s not in group] + [merged]


def _discard(path: str) -> None:
    """Remove the file at ``path`` if it is still there."""
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)
