"""Document de-identification throughput against floors measured in the same run.

    python benchmarks/bench_documents.py [--pdfs 40] [--photos 20] [--video-seconds 60]

Generated inputs (nothing is downloaded): one-page text reports as PDF, one-page scans as
PDF, 1600x1200 JPEG photographs with EXIF, and an MJPEG AVI of 640x480 at 25 frames/s.
For each kind it prints the floor (what any tool must do at least), the lake's cleaning
(`clean_pdf`, `clean_image`, `clean_video`) and the end-to-end ingest into a lake, with the
share of time spent in OCR (Tesseract) and the ratio to the floor:

- PDF floor: read the text of every page with PDFium (what any redaction must at least do);
- photo floor: decode the JPEG with Pillow;
- video floor: decode every frame with PyAV; the transcode line adds x264 encoding without
  OCR; video rates are seconds of work per minute of video (lower is better).
"""

from __future__ import annotations

import argparse
import io
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REPORT = (
    "Patient: {name} MRN {mrn} DOB 1954-03-12 Accession A{mrn}",
    "CT CHEST WITH CONTRAST",
    "Findings: There is no evidence of pneumothorax or pleural effusion. The heart size is",
    "normal. No mediastinal lymph node enlargement. The lungs are clear bilaterally.",
    "Impression: No acute cardiopulmonary abnormality. Follow up in 12 months.",
    "Dictated by Dr {name} at St Elsewhere Hospital on 03/12/2020 10:15.",
)


@dataclass(frozen=True)
class TimedOcr:
    """An Ocr that adds the seconds it spends to ``spent[0]``."""

    spent: list[float] = field(default_factory=lambda: [0.0])

    def __post_init__(self) -> None:
        from lake.documents import Ocr

        object.__setattr__(self, "_ocr", Ocr())

    def words(self, image: object) -> list[object]:
        start = time.perf_counter()
        try:
            return self._ocr.words(image)  # type: ignore[attr-defined, no-any-return]
        finally:
            self.spent[0] += time.perf_counter() - start

    def identifying(self, image: object, policy: object) -> list[object]:
        return [w for w in self.words(image)
                if policy.is_identifying(w.text)]  # type: ignore[attr-defined]


def _reports(count: int) -> list[bytes]:
    from tests.documents_corpus import pdf_report

    out = []
    for i in range(count):
        lines = [line.format(name=f"Heart{i}", mrn=f"{1000000 + i}") for line in REPORT]
        out.append(pdf_report(lines * 3, info={"Author": f"Heart{i}", "Title": "CT report"}))
    return out


def _scans(count: int) -> list[bytes]:
    from tests.documents_corpus import photo

    out = []
    for i in range(count):
        buffer = io.BytesIO()
        photo(None, size=(1275, 1650), seed=i).save(buffer, "PDF", resolution=150)
        out.append(buffer.getvalue())
    return out


def _photos(count: int, text: bool = False) -> list[bytes]:
    from PIL import Image

    from tests.documents_corpus import photo

    out = []
    for i in range(count):
        exif = Image.Exif()
        exif[0x013B] = f"Heart{i}"
        buffer = io.BytesIO()
        label = f"HEART{i} 1954-03-12 MRN {1000000 + i}" if text else None
        photo(label, size=(1600, 1200), seed=i).save(buffer, "JPEG", quality=90, exif=exif)
        out.append(buffer.getvalue())
    return out


def _video(seconds: int, fps: int = 25) -> bytes:
    import av
    import numpy as np

    out = io.BytesIO()
    height, width = 480, 640
    y, x = np.mgrid[0:height, 0:width]
    with av.open(out, "w", format="avi") as container:
        stream = container.add_stream("mjpeg", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuvj420p"
        for i in range(seconds * fps):
            shift = i * 3
            rgb = np.stack([(x + shift) % 256, (y + shift) % 256,
                            ((x + y) // 2) % 256], -1).astype(np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return out.getvalue()


def _time(run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def _line(label: str, seconds: float, count: int, base: float, unit: str,
          ocr: float | None = None) -> None:
    rate = count / seconds
    share = f"   OCR {100 * ocr / seconds:4.0f}%" if ocr is not None else ""
    print(f"{label:<46} {seconds:7.2f} s {rate:8.1f} {unit}   ratio {rate / base:6.3f}{share}")


def _video_line(label: str, seconds: float, minutes: float, base: float,
                ocr: float | None = None) -> None:
    per_minute = seconds / minutes
    share = f"   OCR {100 * ocr / seconds:4.0f}%" if ocr is not None else ""
    print(f"{label:<46} {per_minute:7.2f} s per minute of video   ratio "
          f"{per_minute / base:5.2f}{share}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pdfs", type=int, default=40)
    parser.add_argument("--photos", type=int, default=20)
    parser.add_argument("--video-seconds", type=int, default=60)
    args = parser.parse_args()
    if shutil.which("tesseract") is None:
        print("tesseract is not installed: documents need OCR; nothing measured")
        return

    from PIL import Image

    from lake.deid import load_profile
    from lake.documents import (
        DocumentKind,
        TextPolicy,
        clean_image,
        clean_pdf,
        clean_video,
        pdf_words,
    )

    policy = TextPolicy(load_profile("research").vocabulary, frozenset({"heart0"}), redact=True)
    reports, scans, photos = _reports(args.pdfs), _scans(max(1, args.pdfs // 4)), \
        _photos(args.photos)
    video = _video(args.video_seconds)

    print(f"{len(reports)} text PDFs of 1 page, {len(scans)} scanned pages, "
          f"{len(photos)} photographs 1600x1200, {args.video_seconds} s of 640x480 video")
    base = len(reports) / _time(lambda: [pdf_words(d) for d in reports])
    print(f"{'PDF floor: PDFium reads the text':<46} {len(reports) / base:7.2f} s {base:8.1f} "
          "docs/s   ratio  1.00")
    ocr = TimedOcr()
    seconds = _time(lambda: [clean_pdf(d, policy, ocr=ocr) for d in reports])  # type: ignore[arg-type]
    _line("clean_pdf: text reports (redacted, verified)", seconds, len(reports), base,
          "docs/s", ocr.spent[0])
    ocr = TimedOcr()
    seconds = _time(lambda: [clean_pdf(d, policy, ocr=ocr) for d in scans])  # type: ignore[arg-type]
    _line("clean_pdf: scanned pages (rendered + OCR)", seconds, len(scans), base, "docs/s",
          ocr.spent[0])

    def decode(data: bytes) -> None:
        Image.open(io.BytesIO(data)).load()

    base = len(photos) / _time(lambda: [decode(d) for d in photos])
    print(f"{'photo floor: Pillow decode':<46} {len(photos) / base:7.2f} s {base:8.1f} "
          "docs/s   ratio  1.00")
    ocr = TimedOcr()
    seconds = _time(lambda: [clean_image(d, DocumentKind.JPEG, policy, ocr=ocr)  # type: ignore[arg-type]
                             for d in photos])
    _line("clean_image: JPEG kept (metadata out, OCR)", seconds, len(photos), base, "docs/s",
          ocr.spent[0])
    labelled = _photos(len(photos), text=True)
    ocr = TimedOcr()
    seconds = _time(lambda: [clean_image(d, DocumentKind.JPEG, policy, ocr=ocr,  # type: ignore[arg-type]
                                         clean_pixels=True) for d in labelled])
    _line("clean_image: burned-in label masked, re-read", seconds, len(labelled), base,
          "docs/s", ocr.spent[0])

    import av

    minutes = args.video_seconds / 60

    def decode_video() -> None:
        with av.open(io.BytesIO(video)) as container:
            for _ in container.decode(video=0):
                pass

    base = _time(decode_video) / minutes
    print(f"{'video floor: PyAV decode':<46} {base:7.2f} s per minute of video   ratio  1.00")
    ocr = TimedOcr()
    seconds = _time(lambda: clean_video(video, policy, ocr=ocr))  # type: ignore[arg-type]
    _video_line("clean_video: H.264 + sampled OCR", seconds, minutes, base, ocr.spent[0])

    import lake
    from tests.series import write_ct_series

    work = Path(tempfile.mkdtemp(prefix="bench-documents-"))
    try:
        folder = work / "in" / "study"
        write_ct_series(folder, 4)
        for i, data in enumerate(reports):
            (folder / f"r{i}.pdf").write_bytes(data)
        for i, data in enumerate(photos):
            (folder / f"p{i}.jpg").write_bytes(data)
        lk = lake.init(work / "lake", vault=work / "vault")
        from lake.ingest import ingest

        seconds = _time(lambda: ingest(lk, [str(folder)], lk.secret(work / "vault"),
                                       profile="research", scheduler="sync"))
        count = len(reports) + len(photos)
        print(f"{'lake ingest, one process (PDFs + photos + 4 CT)':<46} {seconds:7.2f} s "
              f"{count / seconds:8.1f} docs/s")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
