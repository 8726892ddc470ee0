"""A document's study is read from the DICOM files beside it within ingest's bounds.

The sibling scan reads only headers (pixel data skipped), only regular files, and refuses a
declared value length past ``max_header_bytes`` before allocating it, a deflated dataset that
inflates past ``max_file_bytes`` before inflating it, and sequences past
``max_sequence_depth``. Peak memory is measured in a child process (its own ``ru_maxrss``) and
asserted as a ceiling; nothing here is timed.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import lake
from lake.ingest import ReadLimits
from tests.documents_corpus import pdf_report
from tests.hostile import ct_bytes, deflate_bomb, nested_sequence, sparse_value
from tests.ingest_helpers import ingest_sync

MIB = 1 << 20


def _scan_in_child(document: Path) -> dict[str, object]:
    """The study ``FolderStudies`` finds for ``document`` in a fresh process, and the
    growth of its peak RSS (MB) during the scan."""
    script = textwrap.dedent(
        """
        import json, os, resource, sys
        from pydicom import dcmread
        from lake.deid import Deidentifier, load_profile
        from lake.documents import FolderStudies
        from lake.ingest import ReadLimits
        from lake.vault import Secret
        document, reference = sys.argv[1:]
        engine = Deidentifier(load_profile("basic"), Secret(os.urandom(32)))
        expected = engine.uid(str(dcmread(reference).StudyInstanceUID))
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        study = FolderStudies(engine, ReadLimits()).study(document, None)
        grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024
        print(json.dumps({"found": study is not None and study.keyed_study_uid == expected,
                          "grown_mb": grown}))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, str(document), str(document.parent / "ct.dcm")],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_hostile_siblings_cost_no_memory_and_the_study_is_found(tmp_path: Path) -> None:
    folder = tmp_path / "visit"
    folder.mkdir()
    (folder / "ct.dcm").write_bytes(ct_bytes())
    # 900 MiB of header (a sparse file under max_file_bytes): refused at max_header_bytes,
    # before the value is read.
    sparse_value(folder / "a_long_private.dcm", 900 * MIB)
    # A value declaring 4 GiB in a small file.
    data = ct_bytes()
    pos = data.find(b"\xe0\x7f\x10\x00OW")
    (folder / "b_declared.dcm").write_bytes(
        data[:pos] + struct.pack("<HH2sHI", 0x0009, 0x1099, b"UN", 0, 0xFFFFFFF0) + b"x" * 64)
    # A 1 MB deflated file that inflates to 1.2 GiB, past max_file_bytes: never inflated.
    deflate_bomb(folder / "c_bomb.dcm", 1200)
    # 1,000 levels of sequences: refused before anything recurses into them.
    (folder / "d_deep.dcm").write_bytes(nested_sequence(1000, defined=False))
    os.mkfifo(folder / "e_fifo.dcm")  # never opened
    (folder / "report.pdf").write_bytes(pdf_report(["CT chest"]))
    result = _scan_in_child(folder / "report.pdf")
    assert result["found"] is True, result
    # Without the bounds the scan reads the 900 MiB value and inflates the 1.2 GiB dataset.
    assert isinstance(result["grown_mb"], int) and result["grown_mb"] < 100, result


def test_file_ingest_scans_siblings_with_the_run_s_limits(
    lk: lake.Lake, vault_dir: Path, tmp_path: Path
) -> None:
    """A sibling of another study over the run's ``max_header_bytes`` is not read by the
    scan either: the folder holds one readable study and the document joins it."""
    folder = tmp_path / "visit"
    folder.mkdir()
    data = ct_bytes()
    (folder / "ct.dcm").write_bytes(data)
    uid = b"1.3.6.1.4.1.5962.1.2.1.20040119072730.12322"
    assert uid in data
    other = data.replace(uid, uid[:-1] + b"9")  # another study, same length
    sparse_value(folder / "other_study.dcm", 4 * MIB, data=other)
    (folder / "report.pdf").write_bytes(pdf_report(["CT chest"]))
    summary = ingest_sync(lk, vault_dir, folder, profile="research",
                          limits=ReadLimits(max_header_bytes=2 * MIB))
    assert dict(summary.reasons) == {"header_too_large": 1}, summary.reasons
    assert summary.ingested == 2  # the CT and its report
    lk.refresh()
    ((count,),) = lk.sql("SELECT count(DISTINCT StudyInstanceUID) FROM instances").fetchall()
    assert count == 1
