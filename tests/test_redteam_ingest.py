"""Red-team findings (ingest of hostile input): regression tests of findings fixed on main.

Peak memory is measured in a child process (its own ``ru_maxrss``), as in
tests/test_ingest_bounds.py; nothing is timed.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

import lake
from lake.ingest import ingest
from tests.documents_corpus import pdf_report
from tests.hostile import _insert_at, _meta_end, ct_bytes
from tests.series import write_ct_series

MIB = 1 << 20


def _child_ingest(tmp: Path, source: Path) -> dict[str, object]:
    """Ingest ``source`` in a fresh process; its summary and its peak RSS in MB."""
    tmp.mkdir(parents=True, exist_ok=True)
    script = textwrap.dedent(
        """
        import json, resource, sys
        import lake
        root, vault, source = sys.argv[1:]
        lk = lake.init(root, vault=vault)
        s = lk.ingest([source], vault=vault, scheduler="sync")
        print(json.dumps({"ingested": s.ingested, "reasons": dict(s.reasons),
                          "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024}))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, str(tmp / "lake"), str(tmp / "vault"), str(source)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def _zip_with_huge_sibling(path: Path, mib: int, *, with_pdf: bool) -> Path:
    """A zip holding (optionally) a PDF report and, in the same folder, a DICOM file whose
    private OB element inflates to ``mib`` MiB of zeros (a few hundred KB compressed: the
    member is refused unread by ingest's ratio bound)."""
    data = ct_bytes()
    pos = _insert_at(data, _meta_end(data), 0x00091010, False)
    header = struct.pack("<HH2sHI", 0x0009, 0x1010, b"UN", 0, mib * MIB)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        if with_pdf:
            archive.writestr("s/report.pdf", pdf_report(["Chest CT report", "No findings."]))
        with archive.open("s/big.dcm", "w", force_zip64=True) as member:
            member.write(data[:pos] + header)
            zeros = bytes(MIB)
            for _ in range(mib):
                member.write(zeros)
            member.write(data[pos:])
    return path


@pytest.mark.slow
def test_document_sibling_scan_is_bounded_like_every_other_read(tmp_path: Path) -> None:
    """Red-team finding, now a regression test:
    a PDF beside a DICOM member makes ingest read that member's whole header,
    unbounded: no max_file_bytes, max_header_bytes, zip ratio or size check.

    lake.documents._study.FolderStudies._siblings/_header dcmread()s every sibling (files or
    zip members) to find the document's study. Measured with `lake ingest` of a 7 MB zip
    (PDF + a member inflating to 1.5 GiB): 3.37 GB peak RSS, against 264 MB for the same zip
    without the PDF (the member alone is refused unread as too_large).
    """
    without = _child_ingest(
        tmp_path / "a", _zip_with_huge_sibling(tmp_path / "alone.zip", 300, with_pdf=False)
    )
    beside = _child_ingest(
        tmp_path / "b", _zip_with_huge_sibling(tmp_path / "beside.zip", 300, with_pdf=True)
    )
    assert without["reasons"], without  # the huge member itself is refused unread
    extra = int(beside["peak_mb"]) - int(without["peak_mb"])  # type: ignore[call-overload]
    assert extra < 150, (
        f"a PDF beside the refused member costs {extra} MB more "
        f"({beside['peak_mb']} vs {without['peak_mb']} MB): the sibling was inflated"
    )


def _damaged_deflate() -> bytes:
    """CT_small.dcm in Deflated Explicit VR Little Endian with its deflate stream damaged."""
    import io

    from pydicom import dcmread
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    ds = dcmread(io.BytesIO(ct_bytes()))
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    sink = io.BytesIO()
    ds.save_as(sink, enforce_file_format=True)
    data = bytearray(sink.getvalue())
    body = _meta_end(bytes(data))
    for offset in range(body + 40, body + 200, 7):
        data[offset] ^= 0x5A
    return bytes(data)


def test_a_malformed_sibling_does_not_refuse_the_document(tmp_path: Path) -> None:
    """Red-team finding, now a regression test: one damaged DICOM file beside a PDF makes the PDF fail as
    ``processing_error``, although the folder's real study is unambiguous.

    lake.documents._study._header catches a fixed list of exceptions; pydicom raises
    zlib.error on a deflated file whose stream is damaged (two of tests/mutants.py's 400
    mutants, seed 11, do the same), which escapes the study scan and sinks every document
    of the folder. Without the damaged file the PDF lands.
    """
    import zlib

    from pydicom import dcmread

    damaged = _damaged_deflate()
    with pytest.raises(zlib.error):
        dcmread(__import__("io").BytesIO(damaged), stop_before_pixels=True)
    folder = tmp_path / "in" / "study"
    write_ct_series(folder, 2)
    (folder / "report.pdf").write_bytes(pdf_report(["Chest CT report", "No acute findings."]))
    (folder / "a_damaged.dcm").write_bytes(damaged)
    lk = lake.init(tmp_path / "lake", vault=tmp_path / "vault")
    summary = ingest(lk, [str(tmp_path / "in")], lk.secret(tmp_path / "vault"), scheduler="sync")
    reasons = dict(summary.reasons)
    assert "processing_error" not in reasons, reasons
    assert summary.ingested == 3, reasons  # two CT slices and the PDF
