"""Burned-in text: OCR of pixels (Tesseract through pytesseract) and masking what it finds.

Each image is read twice: as grey levels with Tesseract's automatic page layout
(``--psm 3``, which also tries the image inverted: light text on a dark band), and as its
local contrast (the image minus a blurred copy of itself, which brings out text printed
over a photograph) in sparse-text mode (``--psm 11``). Measured on rendered overlays: the
first reads text on a band that the sparse mode misses entirely, the second reads parts
of text over a textured background that the first misses. A word counts
when Tesseract is at least :attr:`Ocr.min_confidence` sure of it and it has at least three
letters or digits (shorter reads of textures are noise). The words are then judged by the
document's :class:`~lake.documents._text.TextPolicy`, like the text layer of a PDF.

Every Tesseract call has a time limit; no call happens when the ``tesseract`` program is
absent (:meth:`Ocr.available`), and the caller refuses what it cannot check.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

from lake.documents._text import TextPolicy

__all__ = ["Ocr", "OcrWord", "mask"]

_MIN_CHARS = 3
_MAX_SIDE = 2400  # larger images are read scaled down (text stays legible)


@dataclass(frozen=True)
class OcrWord:
    """A word read from pixels, with its box in the image's pixel coordinates."""

    text: str
    confidence: float
    left: int
    top: int
    width: int
    height: int


def _local_contrast(gray: Image.Image) -> Image.Image:
    background = gray.filter(ImageFilter.GaussianBlur(15))
    diff = np.abs(np.asarray(gray, np.int16) - np.asarray(background, np.int16))
    return Image.fromarray((255 - np.clip(diff * 3, 0, 255)).astype(np.uint8))


@dataclass(frozen=True)
class Ocr:
    """Tesseract, as the lake runs it.

    Parameters
    ----------
    timeout : float
        Seconds one Tesseract call may take; a slower image is refused by the caller.
    min_confidence : float
        Tesseract's word confidence (0-100) from which a read word counts.
    language : str
        Tesseract language data (``eng`` ships with Debian's ``tesseract-ocr``).
    """

    timeout: float = 60.0
    min_confidence: float = 60.0
    language: str = "eng"

    @staticmethod
    def available() -> bool:
        """True when the ``tesseract`` program is installed."""
        return shutil.which("tesseract") is not None

    def words(self, image: Image.Image) -> list[OcrWord]:
        """Every word Tesseract reads in ``image`` (both readings, boxes in ``image`` pixels).

        Raises
        ------
        TimeoutError
            When Tesseract takes longer than :attr:`timeout`.
        """
        import pytesseract

        gray = image.convert("L")
        scale = 1.0
        if max(gray.size) > _MAX_SIDE:
            scale = _MAX_SIDE / max(gray.size)
            gray = gray.resize((max(1, round(gray.width * scale)),
                                max(1, round(gray.height * scale))), Image.Resampling.BILINEAR)
        found: list[OcrWord] = []
        for variant, mode in ((gray, "--psm 3"), (_local_contrast(gray), "--psm 11")):
            try:
                data = pytesseract.image_to_data(
                    variant, lang=self.language, config=mode,
                    output_type=pytesseract.Output.DICT, timeout=self.timeout,
                )
            except RuntimeError as exc:  # pytesseract's timeout
                raise TimeoutError("OCR took longer than its time limit") from exc
            for i, text in enumerate(data["text"]):
                word = str(text).strip()
                try:
                    confidence = float(data["conf"][i])
                except (TypeError, ValueError):
                    continue
                if confidence < self.min_confidence or sum(c.isalnum() for c in word) < _MIN_CHARS:
                    continue
                found.append(OcrWord(
                    word, confidence,
                    int(data["left"][i] / scale), int(data["top"][i] / scale),
                    int(data["width"][i] / scale) + 1, int(data["height"][i] / scale) + 1,
                ))
        return found

    def identifying(self, image: Image.Image, policy: TextPolicy) -> list[OcrWord]:
        """The words read in ``image`` that ``policy`` says must not stay."""
        return [w for w in self.words(image) if policy.is_identifying(w.text)]


def mask(image: Image.Image, words: list[OcrWord], margin: int = 4) -> Image.Image:
    """A copy of ``image`` with every word's box (plus ``margin`` pixels) painted black."""
    out = image.copy()
    pixels = np.array(out)
    for w in words:
        top, left = max(0, w.top - margin), max(0, w.left - margin)
        pixels[top : w.top + w.height + margin, left : w.left + w.width + margin] = 0
    return Image.fromarray(pixels, mode=out.mode) if out.mode != "P" else Image.fromarray(pixels)
