"""Which data files may hold a value: the Parquet Bloom filters of one column, kept in memory.

Every data file of ``instances`` carries a split-block Bloom filter per row group on
SOPInstanceUID (and the other UIDs; ``lake/catalog/_layout.py``). DuckDB reads them when it
scans, but only after it has opened each file, which costs ~0.3 ms of CPU per file even when
every row group is then skipped: 55-90 ms to find one SOPInstanceUID among the 200 files of a
lake of 10 million instances as written (docs/performance.md). :class:`BloomIndex` reads the
filters of one column once (their offsets from the footers, then the bitsets) and answers
which files may hold a value in well under a millisecond, so a lookup opens only those.

A Bloom filter has no false negatives: a file it rules out holds no row with that value. The
filter is used only where that is certain: the Parquet format's one algorithm (split blocks,
xxHash64, uncompressed) with a header this module parses completely, and a row group whose
own minimum and maximum values (which it holds) pass its filter. Any other row group (no
filter, another header, a failed check) counts as possibly holding every value. A file
without the column holds it as NULL, which equals no value.

Why not a library: pyarrow has no Python API to read or probe Bloom filters, and DuckDB's
``parquet_bloom_probe`` gives the same answers (``tests/test_query_bloom.py`` compares them)
but opens every file for each value: ~25 ms of CPU per value warm (172 ms cold) at 10 million
instances as written, as much as the scan it would spare, against ~0.06 ms here after a build
of 0.22-0.30 s. The hash is the ``xxhash`` package's.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pyarrow.parquet as pq

__all__ = ["BloomIndex"]

_SALT = np.array([0x47B6137B, 0x44974D91, 0x8824AD5B, 0xA2B7289D,
                  0x705495C7, 0x2DF1424B, 0x9EFC4947, 0x5C6BFB31], dtype=np.uint64)
"""The eight salts of the Parquet split-block Bloom filter (parquet-format, BloomFilter.md)."""

_TAIL = bytes.fromhex("1c1c0000" * 3 + "00")
"""The rest of a BloomFilterHeader (Thrift compact) after numBytes: algorithm BLOCK, hash
XXHASH, compression UNCOMPRESSED, end of struct."""


def _header_size(blob: bytes) -> int | None:
    """The length of the BloomFilterHeader at the start of ``blob`` if it is the one this
    module reads (numBytes, then the three fixed unions) and numBytes is the rest of the
    blob; otherwise None."""
    if not blob or blob[0] != 0x15:  # field 1, type i32
        return None
    value, shift, at = 0, 0, 1
    while True:
        if at >= min(len(blob), 6):
            return None
        byte = blob[at]
        value |= (byte & 0x7F) << shift
        shift += 7
        at += 1
        if not byte & 0x80:
            break
    num_bytes = (value >> 1) ^ -(value & 1)  # zigzag
    if blob[at:at + len(_TAIL)] != _TAIL:
        return None
    size = at + len(_TAIL)
    if num_bytes <= 0 or num_bytes % 32 or size + num_bytes != len(blob):
        return None
    return size


def _hash(value: str) -> int:
    """xxHash64 (seed 0) of a string's Parquet plain encoding (its UTF-8 bytes)."""
    import xxhash  # (imported where used: ``import lake.query`` does not need it)

    return int(xxhash.xxh64_intdigest(value.encode()))


def _may_hold(filters: np.ndarray, hashed: int) -> np.ndarray:
    """Whether each filter (a row of ``filters``: uint32 words, eight per block) may hold
    the value hashed to ``hashed``."""
    block = ((hashed >> 32) * (filters.shape[-1] // 8)) >> 32
    key = np.uint64(hashed & 0xFFFFFFFF)
    bits = ((key * _SALT) & np.uint64(0xFFFFFFFF)) >> np.uint64(27)
    masks = (np.uint64(1) << bits).astype(np.uint32)
    held: np.ndarray = np.all((filters[..., block * 8:block * 8 + 8] & masks) == masks, axis=-1)
    return held


class BloomIndex:
    """The Bloom filters of ``column`` in ``files``, read once.

    Parameters
    ----------
    files : sequence of str
        Local Parquet files (the data files of one catalog version).
    column : str
        A string column with Bloom filters (e.g. ``SOPInstanceUID``).

    Examples
    --------
    >>> index = BloomIndex(files, "SOPInstanceUID")  # doctest: +SKIP
    >>> index.candidates(["2.25.1234"])  # doctest: +SKIP
    ['/lake/tables/instances/part-00000-...parquet']
    """

    def __init__(self, files: Sequence[str], column: str) -> None:
        self.files = list(files)
        self.column = column
        self._unfiltered: set[int] = set()  # files with a row group of no usable filter
        by_size: dict[int, tuple[list[int], list[np.ndarray]]] = {}
        for number, path in enumerate(self.files):
            for words in self._read(path):
                if words is None:
                    self._unfiltered.add(number)
                else:
                    owners, filters = by_size.setdefault(len(words), ([], []))
                    owners.append(number)
                    filters.append(words)
        # The filters of one size stacked: one test of one block for all of them.
        self._stacks = [(np.array(owners), np.stack(filters))
                        for owners, filters in by_size.values()]

    def _read(self, path: str) -> list[np.ndarray | None]:
        """The filter of each row group of ``path`` holding rows (None: no usable one)."""
        meta = pq.read_metadata(path)
        # By the column's path, not its leaf name (a nested field may share the name).
        paths = [meta.schema.column(i).path for i in range(meta.num_columns)]
        if self.column not in paths:  # a file written before the column existed: NULL
            return []
        at = paths.index(self.column)
        found: list[np.ndarray | None] = []
        with open(path, "rb") as stream:
            for group in range(meta.num_row_groups):
                if meta.row_group(group).num_rows == 0:
                    continue
                chunk = meta.row_group(group).column(at)
                words = None
                offset, length = chunk.bloom_filter_offset, chunk.bloom_filter_length
                if offset is not None and length:
                    stream.seek(offset)
                    blob = stream.read(length)
                    size = _header_size(blob)
                    if size is not None:
                        words = np.frombuffer(blob, dtype="<u4", offset=size)
                        if not _holds_its_ends(words, chunk):
                            words = None
                found.append(words)
        return found

    def candidates(self, values: Iterable[str]) -> list[str]:
        """The files that may hold a row whose column equals one of ``values``, in the
        order of :attr:`files`."""
        hit = set(self._unfiltered)
        for value in values:
            hashed = _hash(value)
            for owners, filters in self._stacks:
                hit.update(owners[_may_hold(filters, hashed)].tolist())
        return [f for i, f in enumerate(self.files) if i in hit]


def _holds_its_ends(words: np.ndarray, chunk: pq.ColumnChunkMetaData) -> bool:
    """Whether the row group's own minimum and maximum pass its filter (else this module's
    reading of the filter is wrong, and it is not used)."""
    stats = chunk.statistics
    if stats is None or not stats.has_min_max:
        return False
    ends = (stats.min, stats.max)
    return all(isinstance(v, str) and bool(_may_hold(words, _hash(v))) for v in ends)
