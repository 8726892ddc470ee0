"""Conflicts are not duplicates (issue 10.6): two different objects with one SOP Instance UID keep
the first and quarantine the others as uid_conflict; the same instance again, in any transfer
syntax, is a duplicate."""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)

import lake
from lake.ingest import UID_CONFLICT, Ingestor, decrypt, quarantine_key

LAKE = str(Path(sys.executable).with_name("lake"))


def _ingest(lk: lake.Lake, vault: Path, *sources: Path, **kw: object) -> lake.ingest.IngestSummary:
    kw.setdefault("scheduler", "sync")
    summary = lk.ingest([str(s) for s in sources], vault=vault, **kw)  # type: ignore[arg-type]
    lk.refresh()
    return summary


def _ct() -> Dataset:
    return dcmread(get_testdata_file("CT_small.dcm"))


def _encode(ds: Dataset, syntax: UID, path: Path) -> Path:
    ds = copy.deepcopy(ds)
    if syntax.is_compressed:
        ds.compress(syntax, generate_instance_uid=False)
    else:
        ds.file_meta.TransferSyntaxUID = syntax
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture
def encodings(tmp_path: Path) -> list[Path]:
    """One CT instance in six transfer syntaxes (big endian by dcmtk when installed)."""
    ct = _ct()
    folder = tmp_path / "encodings"
    folder.mkdir()
    files = [Path(shutil.copy(get_testdata_file("CT_small.dcm"), folder / "explicit.dcm"))]
    for syntax in (
        ImplicitVRLittleEndian,
        DeflatedExplicitVRLittleEndian,
        RLELossless,
        JPEGLSLossless,
        JPEG2000Lossless,
    ):
        files.append(_encode(ct, syntax, folder / f"{syntax.keyword}.dcm"))
    if shutil.which("dcmconv"):
        big = folder / "big-endian.dcm"
        subprocess.run(["dcmconv", "+tb", str(files[0]), str(big)], check=True)
        files.append(big)
    return files


def test_the_same_instance_in_other_transfer_syntaxes_is_a_duplicate(
    lk: lake.Lake, vault_dir: Path, encodings: list[Path]
) -> None:
    summary = _ingest(lk, vault_dir, encodings[0].parent)  # one batch: judged within it
    assert (summary.ingested, summary.conflicts, summary.quarantined) == (1, 0, 0)
    assert summary.duplicates == len(encodings) - 1
    again = _ingest(lk, vault_dir, *reversed(encodings), batch_size=1)  # against the lake
    assert (again.ingested, again.duplicates, again.conflicts) == (0, len(encodings), 0)
    assert lk.sql("SELECT count(*) FROM instances").fetchall() == [(1,)]
    assert lk.sql("SELECT count(*) FROM quarantine").fetchall() == [(0,)]


def test_a_different_object_with_the_same_uid_is_a_conflict_even_compressed(
    lk: lake.Lake, vault_dir: Path, tmp_path: Path
) -> None:
    """Same header, one pixel changed, stored in another transfer syntax: only decoding tells
    them apart (the rare path); a changed header is told without decoding."""
    ct = _ct()
    first = tmp_path / "a" / "first.dcm"
    first.parent.mkdir()
    ct.save_as(first, enforce_file_format=True)
    other = copy.deepcopy(ct)
    pixels = bytearray(other.PixelData)
    pixels[100] ^= 0x01
    other.PixelData = bytes(pixels)
    changed_pixels = _encode(other, RLELossless, tmp_path / "b" / "pixels.dcm")
    renamed = copy.deepcopy(ct)
    renamed.SliceLocation = 12.5  # survives de-identification
    changed_header = tmp_path / "c" / "header.dcm"
    changed_header.parent.mkdir()
    renamed.save_as(changed_header, enforce_file_format=True)

    assert _ingest(lk, vault_dir, first).ingested == 1
    summary = _ingest(lk, vault_dir, changed_pixels, changed_header)
    assert (summary.ingested, summary.duplicates, summary.conflicts) == (0, 0, 2)
    assert summary.quarantined == 2 and summary.reasons == {UID_CONFLICT: 2}
    rows = lk.sql("SELECT batch_id FROM instances").fetchall()
    assert len(rows) == 1  # the first one is kept


def test_vendor_12bit_variants_sharing_a_uid(
    lk: lake.Lake, vault_dir: Path, shared_data: Path, lake_root: Path, tmp_path: Path
) -> None:
    """dcm_qa_12bit: three different objects (signed/unsigned, two pixel patterns) with one
    SOP Instance UID. Was: one ingested, two 'duplicates'. Now: the first kept, two
    quarantined as uid_conflict with their sealed originals, counted, exit code 3; the
    same files again add nothing, not even a quarantine row."""
    folder = shared_data / "vendors" / "dcm_qa_12bit" / "In"
    originals = {p.read_bytes() for p in folder.glob("*.dcm")}
    summary = _ingest(lk, vault_dir, folder)
    assert (summary.ingested, summary.duplicates, summary.conflicts) == (1, 0, 2)
    assert summary.reasons == {UID_CONFLICT: 2}
    rows = lk.sql(
        "SELECT reason, message, object_key, source_sha256 FROM quarantine ORDER BY object_key"
    ).fetchall()
    assert [r[0] for r in rows] == [UID_CONFLICT, UID_CONFLICT]
    key = quarantine_key(lk.secret(vault_dir))
    sealed = {decrypt((lake_root / r[2]).read_bytes(), key) for r in rows}
    assert len(sealed) == 2 and sealed < originals
    for _, message, _, _ in rows:
        assert "UID" in message and "0F0F" not in message and "12bit" not in message

    env = dict(os.environ, LAKE_ROOT=str(lake_root), LAKE_VAULT=str(vault_dir))
    cli = subprocess.run(
        [LAKE, "ingest", "-q", "--scheduler", "sync", str(folder)],
        env=env,
        capture_output=True,
        text=True,
    )
    assert cli.returncode == 3, cli.stderr
    assert "uid conflicts" in cli.stderr
    lk.refresh()
    assert lk.sql("SELECT count(*) FROM quarantine").fetchall() == [(2,)]
    assert lk.sql("SELECT count(*) FROM instances").fetchall() == [(1,)]
    assert lk.verify().ok


def test_vendor_transfer_syntaxes_of_one_image_are_one_object(
    lk: lake.Lake, vault_dir: Path, shared_data: Path, tmp_path: Path
) -> None:
    """dcm_qa_ts: one Siemens image stored by gdcm/dcmtk in nine transfer syntaxes (each given
    its own UID and series number by the authors). Given back one identity, the encodings
    are the same object; gdcm's JPEG lossless copy that added a derivation description
    (5.dcm) has another header, so it is a different object."""
    source = shared_data / "vendors" / "dcm_qa_ts" / "In"
    reference = dcmread(source / "1.dcm", stop_before_pixels=True)
    folder = tmp_path / "ts"
    folder.mkdir()
    for path in sorted(source.glob("*.dcm")):
        ds = dcmread(path)
        ds.SOPInstanceUID = reference.SOPInstanceUID
        ds.file_meta.MediaStorageSOPInstanceUID = reference.SOPInstanceUID
        ds.SeriesNumber = reference.SeriesNumber
        ds.save_as(folder / path.name)
    summary = _ingest(lk, vault_dir, folder)
    assert summary.ingested == 1
    assert (summary.duplicates, summary.conflicts) == (7, 1)


def test_a_front_door_without_the_original_records_the_conflict_unsealed(
    lk: lake.Lake, vault_dir: Path, tmp_path: Path
) -> None:
    """C-STORE and pull commit without originals (the spool holds no identified bytes)."""
    ingestor = Ingestor(lk, lk.secret(vault_dir), source="dicom-store")
    ct = _ct()
    path = tmp_path / "ct.dcm"
    ct.save_as(path, enforce_file_format=True)
    ingestor.commit([ingestor.process(path.read_bytes())])
    ct.SliceLocation = 12.5
    ct.save_as(path, enforce_file_format=True)
    batch = ingestor.commit([ingestor.process(path.read_bytes())])
    assert (batch.ingested, batch.conflicts, batch.quarantined) == (0, 1, 1)
    lk.refresh()
    ((object_key, message),) = lk.sql("SELECT object_key, message FROM quarantine").fetchall()
    assert object_key is None and "not kept" in message
