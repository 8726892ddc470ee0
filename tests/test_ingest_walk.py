"""Walking sources: no silent skips. What cannot be walked is counted and reported, with exit 4;
files that are plainly not medical images are skipped and counted (quarantined with --strict);
anything that could be DICOM is still tried.
"""

from __future__ import annotations

import gzip
import os
import tracemalloc
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file

import lake
from lake.ingest import ContentKind, SourceReport, _sources, count_items, iter_items, sniff
from tests.hostile import ct_bytes
from tests.ingest_helpers import ingest_cli, ingest_sync, summary_count


def _tree(root: Path) -> Path:
    """root/a/one.dcm, and root/b -> ../elsewhere (a link to a folder of two instances)."""
    (root / "a").mkdir(parents=True)
    (root / "a" / "one.dcm").write_bytes(ct_bytes())
    elsewhere = root.parent / "elsewhere"
    elsewhere.mkdir()
    for name in ("MR_small.dcm", "rtplan.dcm"):
        (elsewhere / name).write_bytes(Path(get_testdata_file(name)).read_bytes())  # type: ignore[arg-type]
    (root / "b").symlink_to(elsewhere, target_is_directory=True)
    return root


def test_a_link_to_a_folder_is_reported_not_silently_skipped(tmp_path: Path) -> None:
    root = _tree(tmp_path / "Doe^Jane_MRN1234")
    proc = ingest_cli(tmp_path, str(root))
    assert proc.returncode == 4, proc.stderr[-2000:]
    (line,) = [x for x in proc.stderr.splitlines() if x.startswith("incomplete:")]
    assert f"below {root} (source 1)" in line  # named only by the path the user typed
    assert "1 links to folders, not followed" in line
    assert "elsewhere" not in proc.stderr and "/b" not in line
    followed = ingest_cli(tmp_path, "--follow-symlinks", str(root))
    assert followed.returncode == 0, followed.stderr[-2000:]
    count = lake.open(tmp_path / "lake").sql("SELECT count(*) FROM instances").fetchall()
    assert count == [(3,)]


def test_following_links_ends_on_a_cycle(tmp_path: Path) -> None:
    root = _tree(tmp_path / "src")
    (root / "a" / "loop").symlink_to(root, target_is_directory=True)
    (root / "again").symlink_to(root / "a", target_is_directory=True)
    items = list(iter_items([root], follow_symlinks=True))
    assert sorted(Path(i.path).name for i in items) == ["MR_small.dcm", "one.dcm", "rtplan.dcm"]


def test_broken_links_and_unreadable_folders_are_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "src"
    (root / "locked").mkdir(parents=True)
    (root / "locked" / "x.dcm").write_bytes(ct_bytes())
    (root / "gone.dcm").symlink_to(tmp_path / "nowhere.dcm")
    real_scandir = os.scandir

    def scandir(path: str) -> object:  # what a folder without read permission does, even as root
        if Path(path).name == "locked":
            raise PermissionError(13, "Permission denied")
        return real_scandir(path)

    monkeypatch.setattr(_sources.os, "scandir", scandir)
    report = SourceReport()
    assert list(iter_items([root], report=report)) == []
    assert report.missing == {1: {"unreadable_dir": 1, "broken_link": 1}}
    assert report.incomplete


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every folder")
def test_a_folder_without_read_permission(
    lk: lake.Lake, vault_dir: Path, tmp_path: Path
) -> None:
    locked = tmp_path / "src" / "locked"
    locked.mkdir(parents=True)
    (locked / "x.dcm").write_bytes(ct_bytes())
    locked.chmod(0)
    try:
        summary = ingest_sync(lk, vault_dir, tmp_path / "src")
    finally:
        locked.chmod(0o700)
    assert summary.sources.missing == {1: {"unreadable_dir": 1}}


def _not_images(folder: Path) -> dict[str, str]:
    folder.mkdir(parents=True)
    (folder / "README").write_text("Study of Doe^John, see notes.\n")
    (folder / "notes.md").write_text("# notes\nscanner restarted twice\n", encoding="utf-8")
    (folder / "series.json").write_text('{"PatientName": "Doe^John"}')
    (folder / "convert.sh").write_text("#!/bin/sh\ndcm2niix -o out in\n")
    (folder / "table.csv").write_bytes("name;age\nJürgen;44\n".encode("latin-1"))
    image = nib.Nifti1Image(np.zeros((4, 4, 2), dtype=np.int16), np.eye(4))
    nib.save(image, folder / "t1.nii")
    (folder / "t1.nii.gz").write_bytes(gzip.compress((folder / "t1.nii").read_bytes()))
    nib.save(nib.Nifti2Image(np.zeros((2, 2, 2), dtype=np.float32), np.eye(4)), folder / "t2.nii")
    return {"README": "text", "notes.md": "text", "series.json": "json", "convert.sh": "text",
            "table.csv": "text", "t1.nii": "nifti", "t1.nii.gz": "nifti", "t2.nii": "nifti"}


def test_plainly_not_images_are_skipped_unless_strict(tmp_path: Path, ct_folder: Path) -> None:
    kinds = _not_images(tmp_path / "others")
    for name, kind in kinds.items():
        assert sniff((tmp_path / "others" / name).read_bytes()).value == kind, name
    proc = ingest_cli(tmp_path, str(ct_folder), str(tmp_path / "others"))
    assert proc.returncode == 0, proc.stderr[-2000:]  # skipped files do not change the exit code
    assert summary_count(proc.stderr, "skipped: plain text (notes, CSV, scripts)") == 4
    assert summary_count(proc.stderr, "skipped: NIfTI image") == 3
    assert summary_count(proc.stderr, "skipped: JSON") == 1
    strict = ingest_cli(tmp_path / "strict", "--strict", str(tmp_path / "others"))
    assert strict.returncode == 3
    assert summary_count(strict.stderr, "quarantined: not_dicom") == 8


def test_anything_that_could_be_dicom_is_still_tried(
    lk: lake.Lake, vault_dir: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    data = ct_bytes()
    raw = data[128 + 4 + 12 + int.from_bytes(data[140:144], "little") :]  # no preamble, no meta
    (folder / "raw_dataset").write_bytes(raw)
    assert sniff(raw) is ContentKind.UNKNOWN
    (folder / "report.pdf").write_bytes(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n")
    (folder / "photo.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    (folder / "binary.bin").write_bytes(bytes(range(256)))
    summary = ingest_sync(lk, vault_dir, folder)
    assert summary.ingested == 1  # the dataset without preamble
    # Documents are never skipped: lake.documents takes them (no study beside them here).
    assert summary.reasons == {"no_study": 2, "not_dicom": 1}
    assert not summary.sources.skipped
    assert sniff(b"%PDF-1.1\n1 0 obj<<>>endobj\n") is ContentKind.UNKNOWN  # no zero byte, yet tried


def test_every_ingestible_instance_holds_a_zero_byte() -> None:
    """The rule behind the text test: the tag of SOP Class UID encodes with a zero byte."""
    for name in ("CT_small.dcm", "MR_small_bigendian.dcm", "rtplan.dcm"):
        ds = dcmread(get_testdata_file(name))
        assert b"\0" in bytes(ds.file_meta.MediaStorageSOPClassUID, "ascii") + b"\x08\x00\x16\x00"
    assert sniff(b"\x08\x00\x16\x00UI\x1a\x001.2.840.10008.5.1.4.1.1.2\0") is ContentKind.UNKNOWN


def test_the_walk_is_lazy_ordered_and_counts_like_ingest(tmp_path: Path) -> None:
    root = tmp_path / "src"
    for name in ("b", "a/2", "a/1"):
        (root / name).mkdir(parents=True)
    for name in ("z.dcm", "a/y.dcm", "a/2/x.dcm", "a/1/w.dcm", "b/v.dcm"):
        (root / name).write_bytes(b"x")
    paths = [Path(i.path).relative_to(root).as_posix() for i in iter_items([root])]
    assert paths == ["z.dcm", "a/y.dcm", "a/1/w.dcm", "a/2/x.dcm", "b/v.dcm"]
    assert count_items([root]) == 5
    with pytest.raises(lake.IngestError, match="source argument 2 does not exist"):
        list(iter_items([root, tmp_path / "Doe^John"]))


def test_plain_files_links_and_folders_keep_their_name_order(tmp_path: Path) -> None:
    """Plain files (listed by name only) and the other entries (links, folders, FIFOs) of one
    folder come in one name order, files before subfolders, as when every entry was kept."""
    root = tmp_path / "src"
    (root / "c_sub").mkdir(parents=True)
    (root / "c_sub" / "in.dcm").write_bytes(b"x")
    for name in ("a.dcm", "d.dcm", "f.dcm"):
        (root / name).write_bytes(b"x")
    (root / "b_link.dcm").symlink_to(root / "f.dcm")
    (root / "e_link.dcm").symlink_to(tmp_path / "nowhere")
    os.mkfifo(root / "c_fifo")
    report = SourceReport()
    paths = [Path(i.path).relative_to(root).as_posix() for i in iter_items([root], report=report)]
    assert paths == ["a.dcm", "b_link.dcm", "d.dcm", "f.dcm", "c_sub/in.dcm"]
    assert report.skipped["not_regular"] == 1
    assert report.missing == {1: {"broken_link": 1}}


def _held_while_walking(folder: Path, files: int) -> int:
    """Bytes the walk holds (tracemalloc) once it yields the first of ``files`` files."""
    folder.mkdir()
    for i in range(files):
        (folder / f"{i:08d}.dcm").touch()
    tracemalloc.start()
    try:
        items = iter_items([folder])
        next(items)
        held = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    return held


def test_a_large_folder_is_held_as_its_names_not_an_object_per_file(tmp_path: Path) -> None:
    """Issue 14.3, memory flat with the number of files: the walk holds a folder's listing
    while the ingest reads it, and the forked workers inherit it. One entry object per file
    held ~270 bytes a file (13 MB at 50,000 files, in the driver and in each worker); the
    names, joined, hold about their length (here 12 characters and a separator)."""
    small = _held_while_walking(tmp_path / "small", 1000)
    large = _held_while_walking(tmp_path / "large", 4000)
    per_file = (large - small) / 3000
    assert per_file < 32, f"{per_file:.0f} bytes held per file"


def test_a_fifo_is_never_opened_for_waiting(tmp_path: Path) -> None:
    """Between the walk and the read a file can become a FIFO: the read does not wait."""
    fifo = tmp_path / "was_a_file.dcm"
    os.mkfifo(fifo)
    with pytest.raises(_sources.NotRegularFileError):
        _sources.read_file(str(fifo), 1 << 20)
    with pytest.raises(_sources.NotRegularFileError):
        _sources.read_file("/dev/zero", 1 << 20)
