"""Burned-in text: OCR of pixels (Tesseract through pytesseract) and masking what it finds.

Where to read: the rows of the image that hold pixels standing out from their
neighbourhood (at least 30 grey levels lighter or darker than the mean of the 41x41 pixels
around them: light text on a dark band or over a photograph, dark text on a label or a
page). Consecutive such rows make a strip; each strip is cut out of the grey image with a
margin and read by Tesseract as a block of text (``--psm 6``); a tall strip is read in
overlapping pieces. Textures do not stand out that much, so a photograph without text gives
no strip and costs almost nothing. Measured on rendered overlays and photographs: Tesseract's
own layout analysis of the whole image (``--psm 3``, ``--psm 11``) missed a single word on a
band, misread a token framed by its band, read two to four letters of "text" in textures at
confidences up to 81 and took up to 13 s on a textured 1600x1200 photograph; reading strips
found every overlay (bands, light and dark text over a photograph, 90-pixel letters, pages),
read nothing in textures and took 0.05-0.8 s. A word counts when it has at least three
letters or digits and a confidence of at least :attr:`Ocr.min_confidence` (20: Tesseract
reads a random identifier such as ``TKNHQEHRNBRPOQPO`` right at confidence 31, its language
model being unsure of letters that form no word; strips keep textures out, so a low
threshold costs little). The words are then
judged by the document's :class:`~lake.documents._text.TextPolicy`, like the text layer of a
PDF.

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
_GAP = 3  # rows without such pixels that still join two parts of a strip
_MIN_STRIP = 6  # rows: lower strips hold no legible text
_MARGIN = 6  # rows of context above and below a strip
_PIECE, _OVERLAP = 320, 80  # a tall strip is read in pieces of 320 rows, 80 shared
_MAX_STRIPS = 48  # more strips than this: the image is read whole, in pieces
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


def _strips(gray: Image.Image) -> list[tuple[int, int]]:
    """(top, bottom) of the horizontal strips that may hold text."""
    around = np.asarray(gray.filter(ImageFilter.BoxBlur(_RADIUS)), np.int16)
    pixels = np.asarray(gray, np.int16)
    height, width = pixels.shape
    rows = (np.abs(pixels - around) > _CONTRAST).sum(axis=1) >= max(3, width // 200)
    strips: list[tuple[int, int]] = []
    row = 0
    while row < height:
        if not rows[row]:
            row += 1
            continue
        end = row
        while end < height and rows[end : end + _GAP].any():
            end += 1
        if end - row >= _MIN_STRIP:
            top, bottom = max(0, row - _MARGIN), min(height, end + _MARGIN)
            for start in range(top, bottom, _PIECE - _OVERLAP):  # tall strips: in pieces
                strips.append((start, min(bottom, start + _PIECE)))
                if start + _PIECE >= bottom:
                    break
        row = end + 1
    if len(strips) > _MAX_STRIPS:  # busy everywhere: read the whole image in pieces
        strips = [(start, min(height, start + _PIECE))
                  for start in range(0, height, _PIECE - _OVERLAP)]
    return strips


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
    min_confidence: float = 20.0
    language: str = "eng"

    @staticmethod
    def available() -> bool:
        """True when the ``tesseract`` program is installed."""
        return shutil.which("tesseract") is not None

    def words(self, image: Image.Image) -> list[OcrWord]:
        """Every word Tesseract reads in ``image``'s strips (boxes in ``image`` pixels).

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
        for top, bottom in _strips(gray):
            strip = gray.crop((0, top, gray.width, bottom))
            try:
                data = pytesseract.image_to_data(
                    strip, lang=self.language, config="--psm 6",
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
                    int(data["left"][i] / scale), int((data["top"][i] + top) / scale),
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
