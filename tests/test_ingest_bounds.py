"""Bounded ingest: hostile files and archives are quarantined with a reason, unread when they are
over a bound, never hang, never flood memory, and the rest of the batch lands.

Peak memory is measured in a child process (its own ``ru_maxrss``) and asserted only as a
ceiling in MB; nothing here is timed.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset

import lake
from lake._capture import capture
from lake.ingest import ReadLimits
from lake.ingest._nesting import deeper_than
from tests.conftest import SHARED_DATA
from tests.hostile import (
    ct_bytes,
    damaged_member_zip,
    deflate_bomb,
    long_value,
    lying_zip,
    nested_sequence,
    nested_zip,
    zip_bomb,
)
from tests.ingest_helpers import LAKE, cli_env, ingest_cli, ingest_sync, summary_count

MIB = 1 << 20


def _child_ingest(tmp: Path, sources: list[Path], limits: dict[str, int] | None = None) -> dict:
    """Ingest in a fresh process; its summary and its peak RSS in MB."""
    tmp.mkdir(parents=True, exist_ok=True)
    script = textwrap.dedent(
        """
        import json, resource, sys
        import lake
        from lake.ingest import ReadLimits
        root, vault, limits, *sources = sys.argv[1:]
        lk = lake.init(root, vault=vault)
        s = lk.ingest(sources, vault=vault, scheduler="sync",
                      limits=ReadLimits(**json.loads(limits)))
        print(json.dumps({"ingested": s.ingested, "quarantined": s.quarantined,
                          "reasons": dict(s.reasons), "skipped": dict(s.sources.skipped),
                          "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024}))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, str(tmp / "lake"), str(tmp / "vault"),
         json.dumps(limits or {}), *map(str, sources)],
        capture_output=True, text=True, timeout=600, cwd=tmp,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def _baseline_mb(tmp: Path) -> int:
    folder = tmp / "baseline"
    folder.mkdir()
    (folder / "ct.dcm").write_bytes(ct_bytes())
    return int(_child_ingest(tmp / "b", [folder])["peak_mb"])


@pytest.mark.slow
def test_special_files_are_skipped_and_never_block(tmp_path: Path, ct_folder: Path) -> None:
    """A FIFO, a link to /dev/zero and a socket in the source folder: skipped, counted, exit 0."""
    folder = tmp_path / "mixed"
    folder.mkdir()
    for path in sorted(ct_folder.iterdir())[:3]:
        (folder / path.name).write_bytes(path.read_bytes())
    os.mkfifo(folder / "pipe.dcm")
    (folder / "zero.dcm").symlink_to("/dev/zero")
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(folder / "sock.dcm"))
    try:
        proc = ingest_cli(tmp_path, str(folder))
    finally:
        server.close()
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert summary_count(proc.stderr, "skipped: not a regular file (FIFO, device, socket)") == 3
    rows = lake.open(tmp_path / "lake").sql("SELECT count(*) FROM instances").fetchall()
    assert rows == [(3,)]


@pytest.mark.slow
def test_a_zip_bomb_is_refused_unread(tmp_path: Path) -> None:
    """A 4 MB zip of 4 GiB of zeros: refused from its declared sizes, next to a member that lands."""
    bomb = zip_bomb(tmp_path / "bomb.zip", gib=4)
    assert bomb.stat().st_size < 5 * MIB
    good = tmp_path / "good.zip"
    nested_zip(good, {"ct.dcm": ct_bytes()}, depth=1)
    baseline = _baseline_mb(tmp_path)
    result = _child_ingest(tmp_path / "r1", [bomb, good])
    assert result["ingested"] == 1 and result["reasons"] == {"too_large": 1}
    assert result["peak_mb"] < baseline + 64, result  # nothing of the 4 GiB was inflated
    # Allowed by size, the member is still refused for its ratio (about 1,000x), unread.
    ratio = _child_ingest(tmp_path / "r2", [bomb], {"max_file_bytes": 8 << 30})
    assert ratio["reasons"] == {"zip_ratio": 1}
    assert ratio["peak_mb"] < baseline + 64, ratio


def test_zip_ratio_bound(lk: lake.Lake, vault_dir: Path, tmp_path: Path) -> None:
    """64 MiB of zeros in a 66 KB member (about 1,000x) is refused unread; raising the bound
    reads it (and it is not DICOM); a member under 1 MiB is never refused for its ratio."""
    bomb = zip_bomb(tmp_path / "sparse.zip", gib=1 / 16)
    assert ingest_sync(lk, vault_dir, bomb).reasons == {"zip_ratio": 1}
    raised = ingest_sync(lk, vault_dir, bomb, limits=ReadLimits(max_zip_ratio=2000))
    assert raised.reasons == {"not_dicom": 1}
    small = zip_bomb(tmp_path / "small.zip", gib=1 / 1024)  # 1 MiB exactly: not over the floor
    assert ingest_sync(lk, vault_dir, small, limits=ReadLimits(max_zip_ratio=1)).reasons == {
        "not_dicom": 1
    }


@pytest.mark.parametrize("how", ["truncated", "flipped"])
def test_a_damaged_zip_member_is_quarantined_and_the_rest_lands(
    lk: lake.Lake, vault_dir: Path, ct_folder: Path, tmp_path: Path, how: str
) -> None:
    good = {p.name: p.read_bytes() for p in sorted(ct_folder.iterdir())[:4]}
    archive = damaged_member_zip(tmp_path / f"{how}.zip", good, how)
    summary = ingest_sync(lk, vault_dir, archive)
    assert summary.ingested == 4
    assert summary.reasons == {"bad_zip_member": 1}
    (message,) = [r[0] for r in lk.sql("SELECT message FROM quarantine").fetchall()]
    assert "zip member cannot be" in message


def test_a_member_inflating_past_its_declared_size_is_cut_there(
    lk: lake.Lake, vault_dir: Path, tmp_path: Path
) -> None:
    summary = ingest_sync(lk, vault_dir, lying_zip(tmp_path / "liar.zip", mib=64))
    assert summary.reasons == {"bad_zip_member": 1}  # 1,000 bytes read, then a bad CRC


@pytest.mark.slow
@pytest.mark.parametrize("implicit", [False, True])
def test_a_50_mb_value_is_refused_cheaply(tmp_path: Path, implicit: bool) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(3):  # as in the report: three files with a 50 MB Manufacturer
        (folder / f"long{i}.dcm").write_bytes(long_value(50 * MIB, implicit=implicit))
    (folder / "ct.dcm").write_bytes(ct_bytes())
    baseline = _baseline_mb(tmp_path)
    result = _child_ingest(tmp_path / "r", [folder])
    assert result["ingested"] == 1 and result["reasons"] == {"value_too_long": 3}, result
    assert result["peak_mb"] < baseline + 4 * 50 + 64, result  # a few copies of one file


@pytest.mark.slow
def test_a_deflated_dataset_is_inflated_only_within_max_file_bytes(tmp_path: Path) -> None:
    """A 300 KB deflated file whose dataset inflates to 256 MiB, past max_file_bytes (64 MiB
    here): refused before pydicom inflates it, at the cost of a small file."""
    folder = tmp_path / "in"
    folder.mkdir()
    deflate_bomb(folder / "bomb.dcm", 256)
    (folder / "ct.dcm").write_bytes(ct_bytes())
    limits = {"max_file_bytes": 64 * MIB}
    baseline = _baseline_mb(tmp_path)
    result = _child_ingest(tmp_path / "r", [folder], limits)
    assert result["ingested"] == 1 and result["reasons"] == {"too_large": 1}, result
    assert result["peak_mb"] < baseline + 64, result


def test_value_and_header_bounds(lk: lake.Lake, vault_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "manufacturer.dcm").write_bytes(long_value(200_000))
    (folder / "private.dcm").write_bytes(long_value(200_000, tag=0x00091099))
    limits = ReadLimits(max_value_bytes=100_000)
    summary = ingest_sync(lk, vault_dir, folder, limits=limits)
    # A long private value is binary to the dictionary: only the header bound applies to it.
    assert summary.reasons == {"value_too_long": 1} and summary.ingested == 1
    (message,) = [r[0] for r in lk.sql("SELECT message FROM quarantine").fetchall()]
    assert "max_value_bytes" in message
    header = ingest_sync(lk, vault_dir, folder / "private.dcm",
                     limits=ReadLimits(max_header_bytes=150_000))
    assert header.reasons == {"header_too_large": 1}


def test_file_size_bound(lk: lake.Lake, vault_dir: Path, ct_folder: Path, tmp_path: Path) -> None:
    size = min(p.stat().st_size for p in ct_folder.iterdir())
    summary = ingest_sync(lk, vault_dir, ct_folder, limits=ReadLimits(max_file_bytes=size - 1))
    assert summary.reasons == {"too_large": 12} and summary.ingested == 0
    rows = lk.sql("SELECT size_bytes, object_key, message FROM quarantine").fetchall()
    assert all(key is None and "max_file_bytes" in message for _, key, message in rows)


def _depth(ds: Dataset) -> int:
    """Sequence nesting of ``ds`` as pydicom parses it (the reference for the scanner)."""
    deepest = 0
    stack = [(ds, 0)]
    while stack:
        current, level = stack.pop()
        for elem in current:
            if elem.VR == "SQ":
                deepest = max(deepest, level + 1)
                stack.extend((item, level + 1) for item in elem.value)
    return deepest


def _real_files() -> list[Path]:
    names = ("rtplan.dcm", "test-SR.dcm", "liver.dcm", "emri_small.dcm", "MR_small_bigendian.dcm",
             "image_dfl.dcm", "gdcm-US-ALOKA-16.dcm", "reportsi.dcm", "nested_priv_SQ.dcm",
             "waveform_ecg.dcm", "JPEG2000.dcm", "SC_rgb_rle.dcm")
    files = [Path(p) for n in names if (p := get_testdata_file(n))]
    if SHARED_DATA.is_dir():  # the vendor data: enhanced multi-frame, private sequences
        found = sorted(p for p in SHARED_DATA.glob("vendors/*/In/**/*") if p.is_file())
        files += [p for p in found[::40] if p.read_bytes()[128:132] == b"DICM"]
    return files


@pytest.mark.parametrize("path", _real_files(), ids=lambda p: p.name)
def test_the_nesting_scan_agrees_with_pydicom(path: Path) -> None:
    with capture():
        depth = _depth(dcmread(path))
        for limit in range(max(1, depth - 1), depth + 2):
            fresh = dcmread(path)  # sequences still raw: the scan reads their bytes
            assert deeper_than(fresh, limit) == (depth > limit), (depth, limit)


@pytest.mark.parametrize("defined", [True, False])
@pytest.mark.parametrize("deep", [65, 1000])
def test_the_sequence_depth_bound(
    lk: lake.Lake, vault_dir: Path, tmp_path: Path, defined: bool, deep: int
) -> None:
    """64 levels land, 65 and 1,000 are quarantined (before anything recurses into them)."""
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "sixty-four.dcm").write_bytes(nested_sequence(64, defined=defined))
    (folder / "deep.dcm").write_bytes(nested_sequence(deep, defined=defined))
    summary = ingest_sync(lk, vault_dir, folder)
    assert summary.reasons == {"too_deep": 1} and summary.ingested == 1
    if deep == 65:
        raised = ingest_sync(lk, vault_dir, folder, limits=ReadLimits(max_sequence_depth=65))
        assert "too_deep" not in raised.reasons  # (the other copy of the instance: a conflict)


def test_real_structured_reports_are_far_inside_the_depth_bound() -> None:
    """The deepest real files at hand (pydicom's SRs: 4 and 5 levels; the Siemens Enhanced
    SRs of dcm_qa: 6) nest far less than the default bound allows."""
    files = [Path(p) for n in ("test-SR.dcm", "reportsi.dcm") if (p := get_testdata_file(n))]
    if SHARED_DATA.is_dir():
        files += sorted(SHARED_DATA.glob("dcm_qa/In/**/*.SR"))[:5]
    with capture():
        depths = [_depth(dcmread(p)) for p in files]
    assert len(depths) >= 2 and 4 <= max(depths) <= 6, depths
    assert ReadLimits().max_sequence_depth >= 10 * max(depths)


_DEEP_CHILD = """
import json, resource, sys
resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))  # a regression fails, not the host
import lake
from lake.ingest import ReadLimits
from lake.ingest._encode import encode_part10
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
root, vault, *folders = sys.argv[1:]
lk = lake.init(root, vault=vault)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
out = {}
for folder in folders:
    deep = folder.endswith("400")
    limits = ReadLimits(max_sequence_depth=1000) if deep else None
    s = lk.ingest([folder], vault=vault, scheduler="sync", limits=limits)
    out[folder.rsplit("/", 1)[-1]] = [s.ingested, dict(s.reasons)]
leaf = Dataset()
leaf.add_new(0x00189219, "SS or US or OW", 5)  # nothing resolves this VR: writing it fails
ds = dcmread(get_testdata_file("MR_small_bigendian.dcm"))
for _ in range(64):
    item = Dataset()
    item.ContentSequence = [leaf]
    leaf = item
ds.ContentSequence = leaf.ContentSequence
try:
    encode_part10(ds)
except ValueError as exc:
    out["error_chars"] = len(str(exc))
out["grown_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024 - before
print(json.dumps(out))
"""


@pytest.mark.slow
def test_deep_sequences_in_every_byte_order_cost_bounded_memory(tmp_path: Path) -> None:
    """What made pydicom's writer crash or flood memory: 64 levels land in big and little
    endian, 65 are refused; 400 levels in big endian (the bound raised to 1,000) are refused
    as too deep, not a segmentation fault or gigabytes of exception text (5.4 GB and
    processing_error with pydicom writing them); an error 64 levels deep is raised once."""
    folders = []
    for name, depth, big, defined in (("be64", 64, True, False), ("le64", 64, False, True),
                                      ("be65", 65, True, True), ("be400", 400, True, True)):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "x.dcm").write_bytes(nested_sequence(depth, defined=defined, big_endian=big))
        folders.append(str(folder))
    proc = subprocess.run(
        [sys.executable, "-c", _DEEP_CHILD, str(tmp_path / "lake"), str(tmp_path / "vault"),
         *folders], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["be64"] == [1, {}] and result["le64"] == [1, {}], result
    assert result["be65"] == [0, {"too_deep": 1}], result
    assert result["be400"] == [0, {"too_deep": 1}], result
    assert result["error_chars"] < 1000, result
    assert result["grown_mb"] < 150, result


def test_nested_zips_are_read_to_the_depth_bound(
    lk: lake.Lake, vault_dir: Path, ct_folder: Path, tmp_path: Path
) -> None:
    members = {p.name: p.read_bytes() for p in sorted(ct_folder.iterdir())}
    three = nested_zip(tmp_path / "three.zip", members, depth=3)
    four = nested_zip(tmp_path / "four.zip", {"x.dcm": ct_bytes()}, depth=4)
    summary = ingest_sync(lk, vault_dir, three, four)
    assert summary.ingested == 12
    assert summary.reasons == {"zip_too_deep": 1}
    shallow = ingest_sync(lk, vault_dir, three, limits=ReadLimits(max_zip_depth=1))
    assert shallow.reasons == {"zip_too_deep": 1} and shallow.files_seen == 1


def test_archive_budget(lk: lake.Lake, vault_dir: Path, ct_folder: Path, tmp_path: Path) -> None:
    paths = sorted(ct_folder.iterdir())
    members = {p.name: p.read_bytes() for p in paths}
    archive = nested_zip(tmp_path / "two.zip", members, depth=2)
    budget = sum(len(v) for v in list(members.values())[:5])
    summary = ingest_sync(lk, vault_dir, archive, limits=ReadLimits(max_archive_bytes=budget))
    assert summary.ingested == 5
    assert summary.reasons == {"archive_too_large": 7}


def test_limits_come_from_lake_json_and_are_checked(lk: lake.Lake, lake_root: Path) -> None:
    config = json.loads((lake_root / "lake.json").read_text())
    config["ingest"] = {"max_file_bytes": 1000, "max_zip_depth": 1}
    (lake_root / "lake.json").write_text(json.dumps(config))
    opened = lake.open(lake_root)
    limits = ReadLimits.from_settings(opened.config.ingest, max_zip_depth=2)
    assert (limits.max_file_bytes, limits.max_zip_depth) == (1000, 2)
    with pytest.raises(lake.ConfigError, match="unknown ingest setting"):
        ReadLimits.from_settings({"max_files": 3})
    with pytest.raises(lake.ConfigError, match="max_zip_ratio"):
        ReadLimits(max_zip_ratio=0)


def test_every_front_door_applies_the_lakes_bounds(
    lk: lake.Lake, lake_root: Path, vault_dir: Path
) -> None:
    """Ingestor.process (C-STORE, STOW-RS) uses the ingest section of lake.json too."""
    from lake.ingest import Ingestor, Rejected

    config = json.loads((lake_root / "lake.json").read_text())
    config["ingest"] = {"max_value_bytes": 100_000}
    (lake_root / "lake.json").write_text(json.dumps(config))
    opened = lake.open(lake_root)
    outcome = Ingestor(opened, opened.secret(vault_dir)).process(long_value(200_000))
    assert isinstance(outcome, Rejected) and outcome.record["reason"] == "value_too_long"


def test_cli_options_set_the_bounds(tmp_path: Path, ct_folder: Path) -> None:
    proc = ingest_cli(tmp_path, "--max-file-mb", "0.001", str(ct_folder))
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert summary_count(proc.stderr, "quarantined: too_large") == 12
    bad = subprocess.run([LAKE, "ingest", "--max-zip-depth", "0", str(ct_folder)],
                         env=cli_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "max_zip_depth" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


def _meta(*elements: tuple[int, bytes, bytes]) -> bytes:
    """A preamble and file meta of explicit VR little endian ``(element, VR, value)``s."""
    import struct

    out = b"\0" * 128 + b"DICM"
    for element, vr, value in elements:
        if vr in (b"OB", b"UN"):
            out += struct.pack("<HH2s2xI", 2, element, vr, len(value)) + value
        else:
            out += struct.pack("<HH2sH", 2, element, vr, len(value)) + value
    return out


def test_the_deflated_syntax_is_looked_for_in_the_file_meta_pydicom_reads() -> None:
    """Only a file whose meta names the deflated syntax is read through the inflation bound:
    looked for up to the end of the meta as pydicom reads it (a long meta value before the
    transfer syntax included), or in the whole file when the meta is read some other way
    (an unknown VR, no preamble); never in the pixel data of an ordinary file."""
    from lake.ingest._header import _Bounded, _meta_end, within

    deflated = b"1.2.840.10008.1.2.1.99\0"
    body = b"\x08\x00\x60\x00CS\x02\x00CT" + b"\xe0\x7f\x10\x00OW\0\0" + b"\4\0\0\0" + deflated[:4]
    limits = ReadLimits()
    long_meta = _meta((0x0001, b"OB", b"\0\1" * 50_000), (0x0002, b"UI", b"1.2.3\0"),
                      (0x0010, b"UI", deflated))
    assert _meta_end(long_meta + body) == len(long_meta)
    assert isinstance(within(long_meta + body, limits), _Bounded)
    plain = _meta((0x0001, b"OB", b"\0\1"), (0x0010, b"UI", b"1.2.840.10008.1.2.1\0"))
    text = b"\x08\x00\x30\x10LO\x18\x00" + deflated + b" "  # the UID as text, after the meta
    assert _meta_end(plain + text) == len(plain)
    assert not isinstance(within(plain + text, limits), _Bounded)
    odd = _meta((0x0001, b"ZZ", b"\0\1"), (0x0010, b"UI", b"1.2.840.10008.1.2.1\0"))
    assert _meta_end(odd + text) == len(odd + text)  # searched whole, as before
    assert isinstance(within(odd + text, limits), _Bounded)
    assert isinstance(within(text + long_meta, limits), _Bounded)  # no DICM at 128
    ct = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    assert ct[_meta_end(ct):_meta_end(ct) + 2] == b"\x08\x00"  # the dataset's first group
