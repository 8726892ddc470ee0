"""Synthetic catalogs of realistic width, generated from real de-identified rows.

Templates are the ``instances`` rows of a lake that ingested real files (pydicom's test
files, the PHI-rich corpus of tests/deid_corpus.py with sequences, private groups and SR,
and vendor MR from ``../shared/data/vendors`` when present). Generated rows copy a template
row whole (every column, ``header_json`` and ``header_dicom`` at their real sizes) and give
it new identity: SOP, series and study UIDs (substituted inside both headers too, at the
same length, so the stored DICOM stays well formed), a patient, dates, a pixel hash, a batch.
Series, studies and patients have realistic shapes (series of 1 to 300 instances, 1 to 5
series per study, 1 to 3 studies per patient, study dates spread over 2005-2025).
"""

from __future__ import annotations

import array
import datetime as dt
import hashlib
import itertools
import random
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pyarrow as pa
import pyarrow.parquet as pq

__all__ = ["Generator", "templates"]

S = TypeVar("S", str, bytes)

_UID_COLUMNS = ("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID")
_SERIES_SIZES = (1, 2, 4, 20, 40, 60, 120, 180, 300)
_SERIES_WEIGHTS = (6, 3, 3, 10, 12, 10, 8, 4, 2)
_EPOCH = dt.date(2005, 1, 1)
_DAYS = (dt.date(2025, 12, 31) - _EPOCH).days


def _sources(shared: Path, phi: Path) -> list[str]:
    from pydicom.data import get_testdata_file

    from benchmarks._corpus import make_phi_corpus

    make_phi_corpus(phi, 600)
    sources = [str(phi)]
    for name in ("CT_small.dcm", "MR_small.dcm", "MR_small_RLE.dcm", "emri_small.dcm",
                 "MR2_J2KI.dcm", "JPEG2000.dcm"):
        path = get_testdata_file(name)
        if path is not None:
            sources.append(str(path))
    vendors = shared / "vendors"
    for sub in ("dcm_qa_ge/In/01_Ax_DWI_TENSOR_R2", "dcm_qa_xa30/In/5_anat-T1w_acq-tfl",
                "dcm_qa_philips/In", "dcm_qa_stc/In/GE/RTIA", "dcm_qa_enh/In"):
        if (vendors / sub).is_dir():
            sources.append(str(vendors / sub))
    return sources


def templates(cache: Path, shared: Path, phi: Path) -> pa.Table:
    """Real de-identified instance rows (cached in ``cache/templates.parquet``)."""
    import lake

    path = cache / "templates.parquet"
    if path.exists():
        return _plain(pq.read_table(path))
    work = cache / "template-lake"
    shutil.rmtree(work, ignore_errors=True)
    lk = lake.init(work / "lake", vault=work / "vault")
    lk.ingest(_sources(shared, phi), vault=work / "vault", scheduler="sync")
    table = lk.tables.dataset("instances").to_table()
    cache.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    shutil.rmtree(work, ignore_errors=True)
    return _plain(table)


def _plain(table: pa.Table) -> pa.Table:
    """``table`` in the declared types of ``instances`` (delta-rs reads strings back as
    ``string_view``, which ``take`` does not handle)."""
    from lake.catalog import INSTANCES

    declared = INSTANCES.schema
    names = [n for n in declared.names if n in table.schema.names]
    return table.select(names).cast(pa.schema([declared.field(n) for n in names]))


def _uid(length: int, counter: int) -> str:
    """A 2.25 UID of exactly ``length`` characters, unique per ``counter`` and as random
    looking as the lake's keyed UIDs (so files are not sorted by UID by accident)."""
    digits = length - 5
    low = 10 ** (digits - 1)
    mixed = int.from_bytes(hashlib.blake2b(counter.to_bytes(8, "little"), digest_size=16).digest(),
                           "little")
    return f"2.25.{low + (mixed * 1_000_003 + counter) % (9 * low)}"


@dataclass(frozen=True)
class _Template:
    row: int
    uid_lengths: tuple[int, int, int]
    json_parts: tuple[str, ...]
    json_slots: tuple[int, ...]  # which UID (index into _UID_COLUMNS) fills each gap
    dicom_parts: tuple[bytes, ...]
    dicom_slots: tuple[int, ...]


def _split(text: str, uids: list[str]) -> tuple[tuple[str, ...], tuple[int, ...]]:
    hits = sorted(
        (pos, which, len(uid))
        for which, uid in enumerate(uids)
        for pos in _positions(text, uid)
    )
    parts, slots, at = [], [], 0
    for pos, which, length in hits:
        if pos < at:  # overlapping matches (a UID inside another): keep the first
            continue
        parts.append(text[at:pos])
        slots.append(which)
        at = pos + length
    parts.append(text[at:])
    return tuple(parts), tuple(slots)


def _positions(text: str, needle: str) -> Iterator[int]:
    start = text.find(needle)
    while start >= 0:
        yield start
        start = text.find(needle, start + len(needle))


class Generator:
    """Rows for ``instances``, batch by batch, reproducible from ``seed``.

    Parameters
    ----------
    table : pyarrow.Table
        Template rows (see :func:`templates`).
    schema : pyarrow.Schema
        The schema of the rows to make (the lake's ``instances``); columns the templates
        lack are null.
    seed : int
        Random seed.
    """

    def __init__(self, table: pa.Table, schema: pa.Schema, seed: int = 14) -> None:
        self.table = table
        self.schema = schema
        self.random = random.Random(seed)
        rows = table.select([*_UID_COLUMNS, "header_json", "header_dicom"]).to_pylist()
        self.templates: list[_Template] = []
        for i, row in enumerate(rows):
            uids = [row[c] for c in _UID_COLUMNS]
            if any(u is None for u in uids) or row["header_json"] is None:
                continue
            jparts, jslots = _split(row["header_json"], uids)
            text = row["header_dicom"].decode("latin-1")
            dparts, dslots = _split(text, uids)
            self.templates.append(_Template(
                i, (len(uids[0]), len(uids[1]), len(uids[2])), jparts, jslots,
                tuple(p.encode("latin-1") for p in dparts), dslots,
            ))
        # Series to copy: template rows grouped by their series, in instance order.
        groups: dict[str, list[_Template]] = {}
        series = table.column("SeriesInstanceUID").to_pylist()
        for t in self.templates:
            groups.setdefault(series[t.row], []).append(t)
        self.series_templates = list(groups.values())
        self.counter = 0
        self.patients = 0

    def _instances(self) -> Iterator[tuple[_Template, tuple[str, str, str], str, dt.date, int, int]]:
        """(template, (sop, series, study) UIDs, patient, study date, instance number, series
        ordinal), forever."""
        rnd = self.random
        while True:
            self.patients += 1
            patient = hashlib.sha256(f"patient{self.patients}".encode()).hexdigest()[:24].upper()
            for _ in range(rnd.choice((1, 1, 2, 3))):
                date = _EPOCH + dt.timedelta(days=rnd.randrange(_DAYS))
                self.counter += 1
                study_n = self.counter
                for number in range(1, rnd.choice((1, 2, 3, 4, 5)) + 1):
                    group = rnd.choice(self.series_templates)
                    size = rnd.choices(_SERIES_SIZES, _SERIES_WEIGHTS)[0]
                    self.counter += 1
                    series_n = self.counter
                    for k in range(size):
                        t = group[k % len(group)]
                        self.counter += 1
                        uids = (_uid(t.uid_lengths[0], self.counter),
                                _uid(t.uid_lengths[1], series_n),
                                _uid(t.uid_lengths[2], study_n))
                        yield t, uids, patient, date, k + 1, number

    def batches(self, rows: int, batch_rows: int) -> Iterator[pa.Table]:
        """``rows`` rows in tables of ``batch_rows`` (the last one may be shorter)."""
        source = self._instances()
        done = 0
        batch_no = 0
        started = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
        while done < rows:
            n = min(batch_rows, rows - done)
            picks = [next(source) for _ in range(n)]
            batch_no += 1
            batch_id = hashlib.sha256(f"batch{batch_no}".encode()).hexdigest()[:32]
            take = pa.array([p[0].row for p in picks], type=pa.int64())
            columns: dict[str, pa.Array] = {}
            for i, name in enumerate(_UID_COLUMNS):
                columns[name] = pa.array([p[1][i] for p in picks], type=pa.string())
            columns["header_json"] = _packed(
                ["".join(_fill(t.json_parts, t.json_slots, uids)).encode()
                 for t, uids, *_ in picks], pa.string())
            columns["header_dicom"] = _packed(
                [b"".join(_fill(t.dicom_parts, t.dicom_slots, [u.encode() for u in uids]))
                 for t, uids, *_ in picks], pa.binary())
            columns["PatientID"] = pa.array([p[2] for p in picks], type=pa.string())
            dates = pa.array([p[3] for p in picks], type=pa.date32())
            for name in ("StudyDate", "SeriesDate", "ContentDate", "AcquisitionDate"):
                columns[name] = dates
            columns["InstanceNumber"] = pa.array([p[4] for p in picks], type=pa.int64())
            columns["SeriesNumber"] = pa.array([p[5] for p in picks], type=pa.int64())
            columns["pixel_hash"] = pa.array(
                [f"sha256:{hashlib.sha256(str(done + i).encode()).hexdigest()}"
                 for i in range(n)], type=pa.string())
            columns["batch_id"] = pa.array([batch_id] * n, type=pa.string())
            columns["ingested_at"] = pa.array(
                [started + dt.timedelta(seconds=done + i) for i in range(n)],
                type=pa.timestamp("us", tz="UTC"))
            # What the commit path computes from the headers.
            headers = columns["header_dicom"].to_pylist()
            columns["header_sha256"] = pa.array(
                [hashlib.sha256(h).hexdigest() for h in headers], type=pa.string())
            # identity_sha256 is a hash of header_json (without PixelData): as random per row.
            columns["identity_sha256"] = pa.array(
                [hashlib.sha256(h[:64]).hexdigest() for h in headers], type=pa.string())
            kept = self.table.drop_columns([c for c in columns if c in self.table.schema.names])
            kept = kept.take(take)
            schema = self.schema
            table = pa.Table.from_arrays(
                [columns[f.name] if f.name in columns else
                 kept.column(f.name) if f.name in kept.schema.names else
                 pa.nulls(n, f.type) for f in schema],
                schema=schema,
            )
            done += n
            yield table


def _packed(values: list[bytes], type_: pa.DataType) -> pa.Array:
    """An Arrow string/binary array built from its buffers (pa.array copies 10x slower)."""
    offsets = array.array("i", [0])
    offsets.extend(itertools.accumulate(len(v) for v in values))
    return pa.Array.from_buffers(
        type_, len(values), [None, pa.py_buffer(offsets), pa.py_buffer(b"".join(values))]
    )


def _fill(parts: tuple[S, ...], slots: tuple[int, ...], uids: Sequence[S]) -> list[S]:
    out: list[S] = [parts[0]]
    for part, slot in zip(parts[1:], slots, strict=True):
        out.append(uids[slot])
        out.append(part)
    return out
