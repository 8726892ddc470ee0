"""DICOM export and the machinery every export shares: as-of reads, manifest, resume, atomicity.

Real files throughout: pydicom's test files (native, RLE, JPEG 2000, multi-frame, no
pixels) and a generated CT series, ingested into a temporary lake.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread, dcmwrite
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset

import lake
from lake.deid import Deidentifier, load_profile
from lake.export import create_cohort, export_dicom
from lake.export._dicom import encode, instance_bytes, reassemble
from lake.export._manifest import JOURNAL_NAME, atomic_output, sha256_file
from lake.export._runner import patient_label
from tests.series import ct_series, write_ct_series

# Native, RLE, JPEG 2000 (single and multi-frame), implicit VR without pixels, overlays.
ORIGINALS = (
    "CT_small.dcm",
    "MR_small_RLE.dcm",
    "rtplan.dcm",
    "emri_small_jpeg_2k_lossless.dcm",
    "MR2_J2KR.dcm",
    "RG1_J2KR.dcm",
    "MR-SIEMENS-DICOM-WithOverlays.dcm",
)
ALL = "SELECT SeriesInstanceUID FROM series"
CT = "SELECT SeriesInstanceUID FROM series WHERE Modality = 'CT'"
DICOM_NAME = re.compile(
    r"^[A-Za-z0-9]{1,64}/[0-9a-f]{12}/(x|m?\d+)_[0-9a-f]{12}/(x|m?\d{5,})_[0-9a-f]{12}\.dcm$"
)


def originals_folder(root: Path) -> Path:
    """Copy :data:`ORIGINALS` and write a 12-slice CT series below ``root``."""
    folder = root / "originals"
    folder.mkdir(parents=True)
    for name in ORIGINALS:
        path = get_testdata_file(name)
        assert path is not None, name
        shutil.copy(path, folder / name)
    write_ct_series(folder / "ct", 12)
    return folder


def tree(folder: Path) -> dict[str, bytes]:
    """Every file below ``folder`` by relative path."""
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def identifying_values(folder: Path) -> set[str]:
    """Identifying original values of every DICOM file below ``folder``.

    Only distinctive ones (6+ characters, 3+ different characters): a value like
    ``000000000`` also occurs by chance in pixel data. Values equal to an attribute that
    profiles retain (MR_small's InstitutionName TOSHIBA is in its Manufacturer) are left out.
    """
    keywords = (
        "PatientName", "PatientID", "OtherPatientIDs", "PatientBirthDate", "AccessionNumber",
        "InstitutionName", "InstitutionAddress", "ReferringPhysicianName", "StationName",
        "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID",
        "StudyID", "DeviceSerialNumber", "OperatorsName",
    )
    values: set[str] = set()
    retained: set[str] = set()
    for path in folder.rglob("*.dcm"):
        ds = dcmread(path, stop_before_pixels=True)
        retained |= {str(ds.get(k, "")) for k in ("Manufacturer", "ManufacturerModelName")}
        for keyword in keywords:
            value = ds.get(keyword)
            text = str(value) if value is not None else ""
            if len(text) >= 6 and len(set(text)) >= 3:
                values.add(text)
    return {v for v in values if not any(v in kept for kept in retained)}


def assert_same_elements(actual: Dataset, expected: Dataset, path: str = "") -> None:
    """Element for element: same tags in the same order, same VRs, same values (recursively)."""
    assert [e.tag for e in actual] == [e.tag for e in expected], path
    for a, e in zip(actual, expected, strict=True):
        where = f"{path}/{a.tag}"
        assert a.VR == e.VR, where
        if a.VR == "SQ":
            assert len(a.value) == len(e.value), where
            for i, (item_a, item_e) in enumerate(zip(a.value, e.value, strict=True)):
                assert_same_elements(item_a, item_e, f"{where}[{i}]")
        else:
            assert a.value == e.value, where


def deidentified(path: Path, engine: Deidentifier) -> Dataset:
    """The original at ``path`` de-identified, written and read back as ingest stores it."""
    ds = dcmread(path)
    engine.apply(ds)
    buffer = io.BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    return dcmread(io.BytesIO(buffer.getvalue()))


@pytest.fixture
def originals(tmp_path: Path) -> Path:
    return originals_folder(tmp_path / "in")


@pytest.fixture
def loaded(lk: lake.Lake, vault_dir: Path, originals: Path) -> lake.Lake:
    summary = lk.ingest([str(originals)], vault=vault_dir, scheduler="sync")
    assert summary.quarantined == 0 and summary.ingested == len(ORIGINALS) + 12
    return lk


def test_files_equal_the_deidentified_input_element_for_element(
    loaded: lake.Lake, vault_dir: Path, originals: Path, tmp_path: Path
) -> None:
    result = export_dicom(loaded, ALL, tmp_path / "out", scheduler="sync")
    exported = {
        str(ds.SOPInstanceUID): ds
        for ds in (dcmread(tmp_path / "out" / f.path) for f in result.files)
    }
    assert len(exported) == len(ORIGINALS) + 12 == len(result.files)
    engine = Deidentifier(load_profile("basic"), loaded.secret(vault_dir))
    compared = 0
    for path in sorted(originals.rglob("*.dcm")):
        expected = deidentified(path, engine)
        actual = exported[str(expected.SOPInstanceUID)]
        assert_same_elements(actual, expected)
        assert actual.file_meta.TransferSyntaxUID == expected.file_meta.TransferSyntaxUID
        assert (
            actual.file_meta.MediaStorageSOPInstanceUID
            == expected.file_meta.MediaStorageSOPInstanceUID
        )
        if "PixelData" in expected:
            assert actual.PixelData == expected.PixelData
            original = dcmread(path)
            np.testing.assert_array_equal(actual.pixel_array, original.pixel_array)
        compared += 1
    assert compared == len(ORIGINALS) + 12


def _split(path: Path) -> tuple[bytes, bytes, str] | None:
    """(header without PixelData, pixel value, VR) of a file, as ingest stores them."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds = dcmread(path)
            if "PixelData" not in ds:
                return None
            element = ds["PixelData"]
            pixels, vr = element.value, element.VR
            del ds[0x7FE00010]
            header = io.BytesIO()
            dcmwrite(header, ds, enforce_file_format=True)
            encode(reassemble(header.getvalue(), pixels, vr))
        except Exception:  # noqa: BLE001 - pydicom's deliberately broken test files
            return None
    return header.getvalue(), pixels, vr


def test_fast_reassembly_equals_reencoding_on_every_pydicom_sample() -> None:
    folder = Path(str(get_testdata_file("CT_small.dcm"))).parent
    compared = 0
    for path in sorted(folder.glob("*.dcm")):
        parts = _split(path)
        if parts is None:
            continue
        header, pixels, vr = parts
        assert instance_bytes(header, pixels, vr) == encode(reassemble(header, pixels, vr)), path
        compared += 1
    assert compared >= 40  # native, encapsulated, big endian, implicit VR, deflated...


def test_layout_uses_pseudonymous_names_only(
    loaded: lake.Lake, originals: Path, tmp_path: Path
) -> None:
    result = export_dicom(loaded, ALL, tmp_path / "out", scheduler="sync")
    names = [f.path for f in result.files]
    assert all(DICOM_NAME.match(name) for name in names), names
    rows = loaded.sql("SELECT PatientID, SeriesInstanceUID FROM instances").fetchall()
    patients = {patient_label(p) for p, _ in rows}
    assert None in {p for p, _ in rows}  # emri_small has no PatientID: a hash stands in
    assert {name.split("/")[0] for name in names} == patients
    assert len({name.rsplit("/", 1)[0] for name in names}) == len({s for _, s in rows})
    secrets = identifying_values(originals)
    assert secrets  # the originals do carry identifying values
    for name in names:
        assert not any(secret in name for secret in secrets)


def test_no_original_identifying_value_in_any_exported_byte(
    loaded: lake.Lake, originals: Path, tmp_path: Path
) -> None:
    export_dicom(loaded, ALL, tmp_path / "dicom", scheduler="sync")
    export_dicom(loaded, ALL, tmp_path / "zip", as_zip=True, scheduler="sync")
    secrets = {s.encode() for s in identifying_values(originals)}
    with zipfile.ZipFile(next((tmp_path / "zip").glob("*.zip"))) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    outputs = {**tree(tmp_path / "dicom"), **members, "zip-manifest": (
        tmp_path / "zip" / "manifest.json").read_bytes()}
    assert len(outputs) > 20
    for name, data in outputs.items():
        leaked = [s for s in secrets if s in data]
        assert not leaked, name


def test_reexport_after_new_data_is_byte_identical(
    loaded: lake.Lake, vault_dir: Path, tmp_path: Path
) -> None:
    cohort = create_cohort(loaded, "ct", CT)
    first = export_dicom(loaded, "ct", tmp_path / "first", scheduler="sync")

    # New data lands in the very series of the cohort (same original UIDs -> same pseudonyms).
    template = dcmread(originals_folder(tmp_path / "again") / "ct" / "slice0000.dcm")
    more = ct_series(3, patient_id="PAT-0001", study_uid=None)
    for ds in more:
        ds.StudyInstanceUID = template.StudyInstanceUID
        ds.SeriesInstanceUID = template.SeriesInstanceUID
    folder = tmp_path / "more"
    folder.mkdir()
    for i, ds in enumerate(more):
        ds.save_as(folder / f"extra{i}.dcm", enforce_file_format=True)
    loaded.ingest([str(folder)], vault=vault_dir, scheduler="sync")
    assert loaded.version > cohort.catalog_version

    second = export_dicom(loaded, "ct", tmp_path / "second", scheduler="sync")
    assert tree(tmp_path / "second") == tree(tmp_path / "first")
    assert second.manifest == first.manifest
    assert second.manifest["catalog_version"] == cohort.catalog_version
    # A one-off query on the current version does see the new data.
    now = export_dicom(loaded, cohort.query, tmp_path / "now", scheduler="sync")
    assert len(now.files) == len(first.files) + 3


def test_zip_is_reproducible_and_matches_the_folder_export(
    loaded: lake.Lake, tmp_path: Path
) -> None:
    create_cohort(loaded, "everything", ALL)
    folder = export_dicom(loaded, "everything", tmp_path / "folder", scheduler="sync")
    one = export_dicom(loaded, "everything", tmp_path / "one", as_zip=True, scheduler="sync")
    two = export_dicom(loaded, "everything", tmp_path / "two", as_zip=True, scheduler="threads",
                       workers=2)
    assert one.archive is not None and two.archive is not None
    assert one.archive.name == "everything-dicom.zip"
    assert one.archive.read_bytes() == two.archive.read_bytes()
    assert sorted(p.name for p in (tmp_path / "one").iterdir()) == [
        "everything-dicom.zip", "manifest.json"
    ]
    with zipfile.ZipFile(one.archive) as archive:
        infos = archive.infolist()
        assert [i.filename for i in infos] == sorted(i.filename for i in infos)
        assert {i.date_time for i in infos} == {(1980, 1, 1, 0, 0, 0)}
        contents = {i.filename: archive.read(i) for i in infos}
    assert contents == {f.path: (tmp_path / "folder" / f.path).read_bytes() for f in folder.files}
    assert one.manifest["archive"]["sha256"] == sha256_file(one.archive)
    assert one.manifest["files"] == folder.manifest["files"]


def test_manifest_records_versions_query_profiles_hashes_and_skips(
    loaded: lake.Lake, tmp_path: Path
) -> None:
    cohort = create_cohort(loaded, "everything", ALL, description="all of it")
    # Lose one pixel blob: that instance is skipped and reported, the rest is exported.
    victim = next(m for m in cohort.members if m.pixel_hash)
    assert victim.pixel_hash is not None
    Path(loaded.blobs.path_of(victim.pixel_hash)).unlink()
    result = export_dicom(loaded, "everything", tmp_path / "out", scheduler="sync")
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest == result.manifest
    assert manifest["lake_version"] == lake.__version__
    assert manifest["catalog_version"] == cohort.catalog_version
    assert manifest["query"] == ALL and manifest["kind"] == "dicom"
    assert manifest["cohort"]["name"] == "everything"
    assert manifest["cohort"]["instances"] == len(cohort.members)
    profile = load_profile("basic")
    assert manifest["profiles"] == [{
        "name": "basic", "version": profile.version, "sha256": profile.sha256,
        "instances": len(cohort.members),
    }]
    assert manifest["skipped"] == [{
        "series": victim.series_uid, "instance": victim.sop_uid, "reason": "blob_missing",
        "message": f"pixel blob {victim.pixel_hash} is missing; verify the lake",
    }]
    assert manifest["counts"]["files"] == len(cohort.members) - 1
    on_disk = {p for p in tree(tmp_path / "out") if p != "manifest.json"}
    assert on_disk == {f["path"] for f in manifest["files"]}
    for entry in manifest["files"]:
        path = tmp_path / "out" / entry["path"]
        assert sha256_file(path) == entry["sha256"] and path.stat().st_size == entry["size"]


class SimulatedInterruptError(Exception):
    """Raised from the progress callback to simulate Ctrl-C mid-export."""


def _interrupt_after(n: int) -> object:
    def progress(done: int, total: int) -> None:
        if done >= n:
            raise SimulatedInterruptError

    return progress


def _stats(folder: Path) -> dict[str, tuple[int, int]]:
    return {
        p.relative_to(folder).as_posix(): (p.stat().st_mtime_ns, p.stat().st_ino)
        for p in folder.rglob("*")
        if p.is_file()
    }


def _journaled(out: Path) -> list[dict[str, object]]:
    lines = (out / JOURNAL_NAME).read_text().splitlines()
    return [json.loads(line) for line in lines[1:]]


def test_resume_after_interruption_keeps_finished_files(
    loaded: lake.Lake, tmp_path: Path
) -> None:
    create_cohort(loaded, "everything", ALL)
    reference = export_dicom(loaded, "everything", tmp_path / "reference", scheduler="sync")
    out = tmp_path / "out"
    with pytest.raises(SimulatedInterruptError):
        export_dicom(loaded, "everything", out, scheduler="sync",
                     on_progress=_interrupt_after(3))  # type: ignore[arg-type]
    assert not (out / "manifest.json").exists()
    finished = [f["path"] for task in _journaled(out) for f in task["files"]]  # type: ignore[attr-defined]
    assert len(_journaled(out)) == 3 and finished
    before = _stats(out)
    time.sleep(0.01)  # a rewrite would now get a later mtime

    result = export_dicom(loaded, "everything", out, scheduler="sync")
    assert result.resumed == 3
    assert result.written == reference.manifest["counts"]["series_exported"] - 3
    after = _stats(out)
    for path in finished:
        assert after[path] == before[path], path  # not rewritten: same mtime, same inode
    assert tree(out) == tree(tmp_path / "reference")
    assert not (out / JOURNAL_NAME).exists()


def test_a_resumed_export_reads_only_the_headers_of_series_left_to_do(
    lk: lake.Lake, vault_dir: Path, originals: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Resuming with one series left reads ``header_dicom`` from the one data file holding
    it, not from every file holding a cohort member (the widest column, re-read for the
    whole cohort on every resume)."""
    from lake.catalog import DataFiles

    ct = originals / "ct"
    others = sorted(str(p) for p in originals.glob("*.dcm"))
    lk.ingest(others, vault=vault_dir, scheduler="sync")  # one commit, one data file
    lk.ingest([str(ct)], vault=vault_dir, scheduler="sync")  # a second data file
    assert len(lk.tables.data_files("instances").paths) == 2
    create_cohort(lk, "everything", ALL)
    series = export_dicom(lk, "everything", tmp_path / "reference", scheduler="sync").manifest[
        "counts"]["series_exported"]
    out = tmp_path / "out"
    with pytest.raises(SimulatedInterruptError):
        export_dicom(lk, "everything", out, scheduler="sync",
                     on_progress=_interrupt_after(series - 1))  # type: ignore[arg-type]

    read = DataFiles.read
    headers_from: list[str] = []

    def counted(self: DataFiles, path: str, columns: list[str]) -> object:
        if "header_dicom" in columns:
            headers_from.append(path)
        return read(self, path, columns)

    monkeypatch.setattr(DataFiles, "read", counted)
    result = export_dicom(lk, "everything", out, scheduler="sync")
    assert (result.resumed, result.written) == (series - 1, 1)
    assert len(headers_from) == 1
    assert tree(out) == tree(tmp_path / "reference")


def test_a_one_file_version_is_read_once_for_plan_and_headers(
    loaded: lake.Lake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Where the cohort's version is one data file, the export reads it once for the members'
    keys, plan columns and headers (it read it three times), and writes the same files as
    the per-purpose reads of a version of several files do."""
    from lake.catalog import DataFiles
    from lake.export import _runner

    assert len(loaded.tables.data_files("instances").paths) == 1
    create_cohort(loaded, "everything", ALL)
    read = DataFiles._decoded  # (what DataFiles.read and DataFiles.values read the file with)
    reads: list[list[str]] = []

    def counted(self: DataFiles, path: str, columns: list[str]) -> object:
        if "/tables/instances/" in path:  # (not the cohorts table's)
            reads.append(list(columns))
        return read(self, path, columns)

    monkeypatch.setattr(DataFiles, "_decoded", counted)
    once = export_dicom(loaded, "everything", tmp_path / "once", scheduler="sync")
    assert len(reads) == 1 and "header_dicom" in reads[0]
    reads.clear()
    find = _runner._MemberFiles.find.__func__  # type: ignore[attr-defined]
    with monkeypatch.context() as patch:  # as for several files: each purpose reads it
        patch.setattr(_runner._MemberFiles, "find", classmethod(
            lambda cls, files, wanted, columns=(), read=None: find(cls, files, wanted)))
        apart = export_dicom(loaded, "everything", tmp_path / "apart", scheduler="sync")
    assert len(reads) == 3
    assert once.manifest == apart.manifest and tree(tmp_path / "once") == tree(tmp_path / "apart")
    reads.clear()

    class TwoGroups:  # a larger file: read per purpose (a finished export reads no header)
        num_row_groups = 2

    with monkeypatch.context() as patch:
        patch.setattr(DataFiles, "footer", lambda self, path: TwoGroups())
        again = export_dicom(loaded, "everything", tmp_path / "once", scheduler="sync")
    assert again.up_to_date and [c for c in reads if "header_dicom" in c] == []


def test_data_files_values_are_the_rows_python_values(loaded: lake.Lake) -> None:
    """``DataFiles.values`` (read without pyarrow.compute, for an export of a saved cohort)
    gives, column by column, what ``python_rows`` of ``DataFiles.read`` gives: every column
    of ``instances`` (zoned timestamps, lists, binary headers, columns null in every row)
    and of ``cohorts`` (a list of structs), the same values of the same types and zones."""
    from lake.catalog import python_rows

    create_cohort(loaded, "everything", ALL)
    checked = 0
    for name in ("instances", "cohorts"):
        files = loaded.tables.data_files(name)
        names = list(files.schema.names)
        for path in files.paths:
            rows = python_rows(files.read(path, names))
            values = files.values(path, names)
            assert list(values) == names
            for column in names:
                expected = [row[column] for row in rows]
                assert values[column] == expected, column
                assert [type(v) for v in values[column]] == [type(v) for v in expected]
                assert [getattr(v, "tzinfo", None) for v in values[column]] == [
                    getattr(v, "tzinfo", None) for v in expected], column
                checked += 1
    assert checked > 100


def test_a_one_off_query_reads_its_one_file_once(
    loaded: lake.Lake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A one-off query's export on a version of one data file reads that file once, for the
    cohort's members and the export's plan and headers together (it read it twice: the
    members' columns, then the others), and writes the same files and manifest as when
    the two are read apart."""
    from lake.catalog import DataFiles
    from lake.export import _runner, export_nifti

    assert len(loaded.tables.data_files("instances").paths) == 1
    read = DataFiles._decoded  # (what DataFiles.read and DataFiles.values read the file with)
    reads: list[list[str]] = []

    def counted(self: DataFiles, path: str, columns: list[str]) -> object:
        if "/tables/instances/" in path:
            reads.append(list(columns))
        return read(self, path, columns)

    monkeypatch.setattr(DataFiles, "_decoded", counted)
    once = export_nifti(loaded, ALL, tmp_path / "once", scheduler="sync")
    assert len(reads) == 1
    assert {"pixel_bytes", "header_sha256", "header_dicom", "pixel_vr"} <= set(reads[0])
    reads.clear()
    find = _runner._MemberFiles.find.__func__  # type: ignore[attr-defined]
    with monkeypatch.context() as patch:  # the rows read by the resolution left unused
        patch.setattr(_runner._MemberFiles, "find", classmethod(
            lambda cls, files, wanted, columns=(), read=None: find(cls, files, wanted, columns)))
        apart = export_nifti(loaded, ALL, tmp_path / "apart", scheduler="sync")
    assert len(reads) == 2
    assert once.manifest == apart.manifest and tree(tmp_path / "once") == tree(tmp_path / "apart")


def test_rerunning_a_finished_export_writes_nothing(loaded: lake.Lake, tmp_path: Path) -> None:
    create_cohort(loaded, "everything", ALL)
    export_dicom(loaded, "everything", tmp_path / "out", scheduler="sync")
    before = _stats(tmp_path / "out")
    again = export_dicom(loaded, "everything", tmp_path / "out", scheduler="sync")
    assert again.up_to_date and again.written == 0
    assert _stats(tmp_path / "out") == before


def test_output_folder_guards(loaded: lake.Lake, tmp_path: Path) -> None:
    create_cohort(loaded, "everything", ALL)
    create_cohort(loaded, "ct", CT)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(lake.ExportError, match="not empty"):
        export_dicom(loaded, "everything", busy, scheduler="sync")
    assert [p.name for p in busy.iterdir()] == ["notes.txt"]

    export_dicom(loaded, "everything", tmp_path / "out", scheduler="sync")
    with pytest.raises(lake.ExportError, match="different cohort"):
        export_dicom(loaded, "ct", tmp_path / "out", scheduler="sync")
    with pytest.raises(lake.ExportError, match="different cohort"):
        export_dicom(loaded, "everything", tmp_path / "out", as_zip=True, scheduler="sync")

    victim = next((tmp_path / "out").rglob("*.dcm"))
    victim.write_bytes(victim.read_bytes()[:-1] + b"\x01")
    with pytest.raises(lake.ExportError, match="changed since"):
        export_dicom(loaded, "everything", tmp_path / "out", scheduler="sync")

    with pytest.raises(lake.ExportError, match="unfinished export of a different"):
        with pytest.raises(SimulatedInterruptError):
            export_dicom(loaded, "ct", tmp_path / "half", scheduler="sync",
                         on_progress=_interrupt_after(1))  # type: ignore[arg-type]
        export_dicom(loaded, "everything", tmp_path / "half", scheduler="sync")


def test_atomic_output_never_leaves_a_partial_file(tmp_path: Path) -> None:
    target = tmp_path / "a" / "file.dcm"
    with pytest.raises(OSError, match="disk full"), atomic_output(target) as tmp:
        tmp.write_bytes(b"half")
        raise OSError("disk full")
    assert not target.exists()
    assert list((tmp_path / "a").iterdir()) == []
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_output(target) as tmp:
        tmp.write_bytes(b"new but unfinished")
        raise RuntimeError
    assert target.read_bytes() == b"old"


_KILLABLE = """
import sys, time
import lake
from lake.export import export_dicom

def slow(done, total):
    if done:
        time.sleep(0.5)

export_dicom(lake.open(sys.argv[1]), sys.argv[2], sys.argv[3], scheduler="sync",
             on_progress=slow)
"""


@pytest.fixture
def killable(loaded: lake.Lake, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    create_cohort(loaded, "everything", ALL)
    out = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILLABLE, loaded.root, "everything", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    yield proc, out
    if proc.poll() is None:
        proc.kill()
    proc.wait()


@pytest.mark.slow
def test_resume_after_the_process_is_killed(
    loaded: lake.Lake, tmp_path: Path, killable: tuple[subprocess.Popen[bytes], Path]
) -> None:
    proc, out = killable
    journal = out / JOURNAL_NAME
    deadline = time.monotonic() + 120
    while not (journal.exists() and len(journal.read_text().splitlines()) >= 3):
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else b""
        assert time.monotonic() < deadline, "the export never journaled two series"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "manifest.json").exists()

    reference = export_dicom(loaded, "everything", tmp_path / "reference", scheduler="sync")
    expected = tree(tmp_path / "reference")
    # No file sits under its final name half-written: each one is the finished file.
    for name, data in tree(out).items():
        if name == JOURNAL_NAME or Path(name).name.startswith(".tmp-"):
            continue
        assert data == expected[name], name
    finished = [f["path"] for task in _journaled(out) for f in task["files"]]  # type: ignore[attr-defined]
    before = _stats(out)

    result = export_dicom(loaded, "everything", out, scheduler="sync")
    assert result.resumed >= 2
    assert result.resumed + result.written == reference.manifest["counts"]["series_exported"]
    after = _stats(out)
    assert all(after[p] == before[p] for p in finished)
    assert tree(out) == expected


@pytest.mark.slow
def test_process_scheduler(loaded: lake.Lake, tmp_path: Path) -> None:
    create_cohort(loaded, "everything", ALL)
    reference = export_dicom(loaded, "everything", tmp_path / "sync", scheduler="sync")
    progress: list[tuple[int, int]] = []
    result = export_dicom(loaded, "everything", tmp_path / "processes", workers=2,
                          scheduler="processes", on_progress=lambda d, t: progress.append((d, t)))
    assert tree(tmp_path / "processes") == tree(tmp_path / "sync")
    total = reference.manifest["counts"]["series_exported"]
    assert progress[0] == (0, total) and progress[-1] == (total, total)
    assert sorted(d for d, _ in progress) == list(range(total + 1))
    assert result.written == total


@pytest.mark.parametrize("size", [0, 1, (1 << 20) - 1, 1 << 20, (3 << 20) + 7])
def test_sha256_file_is_the_content_hash(tmp_path: Path, size: int) -> None:
    """The digest is the sha256 of the content, empty files and sizes around the reader's
    buffer included."""
    import hashlib

    data = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8).tobytes()
    path = tmp_path / "file.bin"
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()
