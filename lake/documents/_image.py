"""De-identifying photographs and scans (JPEG, PNG, BMP, TIFF).

* Dimensions are read from the header and checked against :class:`Limits` before any pixel
  is decoded (an image bomb declares a huge size in a few bytes); Pillow's process-wide
  bomb limit is left as it is.
* Metadata never travels: the pixels are taken, not the file. A baseline JPEG whose pixels
  are kept as they are is kept *as JPEG* without re-encoding: its marker segments are
  rewritten keeping only what decoding needs (JFIF without thumbnail, Adobe colour
  transform, tables, frame and scan), so EXIF (GPS included), XMP, IPTC, ICC, comments,
  maker notes and trailing data are gone.
* Every frame is read by OCR for burned-in text: identifying words refuse the image
  (``burned_in_text``), or, with Clean Pixel Data, are masked and the image read again.
* EXIF orientation is applied to the pixels (the tag that said how to turn them is gone);
  such a JPEG is then stored decoded.
"""

from __future__ import annotations

import io
import re
import struct
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from lake.deid import jpeg_segments, strip_jpeg
from lake.documents._kinds import DocumentKind
from lake.documents._limits import DocumentRefusedError, Limits
from lake.documents._ocr import Ocr, OcrWord, mask
from lake.documents._text import TextPolicy

__all__ = ["CleanedImage", "baseline_jpeg", "clean_image"]

_EXIF_IFD = 0x8769
_DATE_TIME_ORIGINAL = 0x9003
_DATE_TIME = 0x0132
_ORIENTATION = 0x0112
_EXIF_DATE = re.compile(r"(\d{4}):(\d{2}):(\d{2})[ T](\d{2}):(\d{2}):(\d{2})")
# Frame headers of the coding processes other than baseline (SOF1-SOF15 but DHT, JPG, DAC).
_OTHER_PROCESSES = frozenset(range(0xC1, 0xD0)) - {0xC4, 0xC8, 0xCC}


@dataclass(frozen=True)
class CleanedImage:
    """De-identified still image(s): JPEG kept as it was, or decoded 8-bit frames."""

    rows: int
    columns: int
    samples: int  # 1 (MONOCHROME2) or 3
    photometric: str  # MONOCHROME2, RGB, YBR_FULL_422, YBR_FULL
    frames: tuple[bytes, ...]  # one JPEG stream, or native pixel bytes per frame
    jpeg: bool
    lossy: bool  # the original was lossy compressed (JPEG)
    masked: bool
    images_read: int
    created: tuple[str, str] | None


def _refuse(reason: str, message: str) -> DocumentRefusedError:
    return DocumentRefusedError(reason, message)


def baseline_jpeg(data: bytes) -> bytes | None:
    """A baseline JPEG with only the segments decoding needs, or None when not baseline.

    :func:`lake.deid.strip_jpeg` removes the segments (as from every JPEG frame of pixel
    data): EXIF/GPS, XMP, IPTC, ICC, comments, maker notes and trailing data go; JFIF loses
    its thumbnail; the Adobe segment (RGB or YCbCr) stays.
    """
    markers = {m for m, _ in jpeg_segments(data)}
    if 0xC0 not in markers or markers & _OTHER_PROCESSES:
        return None
    return strip_jpeg(data)


def _jpeg_photometric(jpeg: bytes, components: int) -> str:
    if components == 1:
        return "MONOCHROME2"
    segments = jpeg_segments(jpeg)
    adobe = next((s for m, s in segments if m == 0xEE), None)
    if adobe is not None and len(adobe) >= 16 and adobe[15] == 0:
        return "RGB"
    sof = next(s for m, s in segments if m == 0xC0)
    luma = sof[11] if len(sof) > 11 else 0x11  # sampling factors of the first component
    return "YBR_FULL_422" if luma != 0x11 else "YBR_FULL"


def _exif(image: Image.Image) -> tuple[int, tuple[str, str] | None]:
    try:
        exif = image.getexif()
    except (OSError, ValueError, SyntaxError):
        return 1, None
    orientation = exif.get(_ORIENTATION, 1)
    value = None
    try:
        value = exif.get_ifd(_EXIF_IFD).get(_DATE_TIME_ORIGINAL)
    except (OSError, ValueError, KeyError):
        value = None
    value = value or exif.get(_DATE_TIME_ORIGINAL) or exif.get(_DATE_TIME)
    created = None
    if isinstance(value, str):
        m = _EXIF_DATE.match(value)
        if m:
            created = ("".join(m.groups()[:3]), "".join(m.groups()[3:]))
    return (orientation if isinstance(orientation, int) else 1), created


def _eight_bit(frame: Image.Image) -> Image.Image:
    if frame.mode in ("L", "RGB"):
        return frame
    if frame.mode in ("1", "LA"):
        return frame.convert("L")
    if frame.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(frame, dtype=np.uint32)
        peak = int(array.max()) or 1
        return Image.fromarray((array * 255 // peak).astype(np.uint8), "L")
    return frame.convert("RGB")


def _ocr(ocr: Ocr, image: Image.Image, policy: TextPolicy) -> list[OcrWord]:
    try:
        return ocr.identifying(image, policy)
    except TimeoutError:
        raise _refuse("ocr_timeout", "burned-in text could not be checked in time") from None


def clean_image(data: bytes, kind: DocumentKind, policy: TextPolicy, *, ocr: Ocr | None,
                clean_pixels: bool = False, limits: Limits | None = None) -> CleanedImage:
    """De-identify a photograph or scan.

    Raises
    ------
    DocumentRefusedError
        ``image_too_large``, ``image_malformed``, ``ocr_unavailable``, ``burned_in_text``.
    """
    limits = limits or Limits()
    if len(data) > limits.max_bytes:
        raise _refuse("image_too_large", "the image file is larger than the lake's limit")
    if ocr is None:
        raise _refuse("ocr_unavailable", "no OCR engine is installed to check the image for "
                      "burned-in text (install tesseract-ocr)")
    try:
        image = Image.open(io.BytesIO(data))
        width, height = image.size
        count = getattr(image, "n_frames", 1)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise _refuse("image_too_large", "the image declares more pixels than the lake's limit") \
            from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, struct.error):
        raise _refuse("image_malformed", "the image cannot be read") from None
    if width * height > limits.max_pixels or width <= 0 or height <= 0:
        raise _refuse("image_too_large", "the image declares more pixels than the lake's limit")
    if count > limits.max_frames:
        raise _refuse("image_too_large", f"the image has more than {limits.max_frames} pages")
    orientation, created = _exif(image)
    frames: list[Image.Image] = []
    try:
        for index in range(count):
            image.seek(index)
            if image.size[0] * image.size[1] > limits.max_pixels:
                raise _refuse("image_too_large", "a page of the image is larger than the limit")
            frame = image.copy()
            frame.load()
            frames.append(_eight_bit(ImageOps.exif_transpose(frame) if orientation != 1
                                     else frame))
    except DocumentRefusedError:
        raise
    except (OSError, ValueError, SyntaxError, EOFError, struct.error):
        raise _refuse("image_malformed", "the image's pixels cannot be decoded (truncated?)") \
            from None
    sizes = {f.size for f in frames}
    modes = {f.mode for f in frames}
    if len(sizes) != 1 or len(modes) != 1:
        raise _refuse("image_unsupported", "the pages of the image differ in size or colour; "
                      "split it into one file per page")
    masked = False
    out: list[Image.Image] = []
    for frame in frames:
        found = _ocr(ocr, frame, policy)
        if found:
            if not clean_pixels:
                raise _refuse("burned_in_text", "the image shows identifying text; a profile "
                              "with Clean Pixel Data masks it")
            frame = mask(frame, found)
            if _ocr(ocr, frame, policy):
                raise _refuse("burned_in_text", "identifying text remains after masking")
            masked = True
        out.append(frame)
    first = out[0]
    samples = 1 if first.mode == "L" else 3
    lossy = kind is DocumentKind.JPEG
    kept = baseline_jpeg(data) if lossy and not masked and orientation == 1 and count == 1 else None
    if kept is not None:
        return CleanedImage(first.height, first.width, samples,
                            _jpeg_photometric(kept, samples), (kept,), True, True, False,
                            len(out), created)
    return CleanedImage(first.height, first.width, samples,
                        "MONOCHROME2" if samples == 1 else "RGB",
                        tuple(f.tobytes() for f in out), False, lossy, masked, len(out), created)
