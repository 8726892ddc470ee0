"""Burned-in text: OCR of pixels (Tesseract through pytesseract) and masking what it finds.

Each image is read twice by Tesseract as a block of text (``--psm 6``), each time as a
black-on-white picture made of the pixels that stand out from their neighbourhood: those at
least 30 grey levels *darker* than the mean of the 41x41 pixels around them (dark text on
a light label, a page), then those at least 30 levels *lighter* (light text on a dark band or
over a photograph). Textures do not stand out that much, so nothing is left for Tesseract
to misread in them, and what is left is text a person can read. Measured on rendered
overlays and photographs: Tesseract's own layout analysis (``--psm 3``, ``--psm 11``) misses
a single word on a band, reads two to four letters of "text" in textures at confidences up
to 81, and takes up to 13 s on a textured 1600x1200 photograph; the two binarised readings
find every overlay, read nothing in the textures and take 0.1-0.7 s. A word counts when it
has at least three letters or digits and a confidence of at least :attr:`Ocr.min_confidence`.
The words are then judged by the document's
:class:`~lake.documents._text.TextPolicy`, like the text layer of a PDF.

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
_RADIUS = 20  # the neighbourhood a pixel is compared with: 41x41 pixels
_CONTRAST = 30  # grey levels a pixel of text differs from its neighbourhood at least
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


def _standing_out(gray: Image.Image, sign: int) -> Image.Image:
    """Black where a pixel is 30 grey levels darker (sign -1) or lighter (+1) than around it."""
    around = np.asarray(gray.filter(ImageFilter.BoxBlur(_RADIUS)), np.int16)
    pixels = np.asarray(gray, np.int16)
    stands_out = pixels < around - _CONTRAST if sign < 0 else pixels > around + _CONTRAST
    return Image.fromarray(np.where(stands_out, 0, 255).astype(np.uint8))


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
        for sign in (-1, 1):
            try:
                data = pytesseract.image_to_data(
                    _standing_out(gray, sign), lang=self.language, config="--psm 6",
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
