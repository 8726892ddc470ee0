"""Rendered images (PS3.18 9.5 /rendered, /thumbnail): JPEG or PNG of one frame.

Grey images go through the Modality LUT, then a window: the request's ``window``
parameter (``center,width[,function]``), else the header's VOI LUT or window, else the
frame's full range. Colour images are shown as they are.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping

import numpy as np
from numpy.typing import NDArray
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.pixels.processing import apply_modality_lut, apply_voi_lut, convert_color_space
from pydicom.pixels.utils import pixel_array

from lake._capture import capture
from lake._errors import QueryError
from lake.nifti import decode_past_panic
from lake.web._errors import NotAcceptableError

__all__ = ["IMAGE_TYPES", "render"]

IMAGE_TYPES = {"image/jpeg": "JPEG", "image/png": "PNG"}


def _window(text: str) -> tuple[float, float, str]:
    parts = [p.strip() for p in text.split(",")]
    try:
        center, width = float(parts[0]), float(parts[1])
    except (IndexError, ValueError):
        raise QueryError("window must be center,width[,linear|sigmoid]") from None
    function = parts[2].lower() if len(parts) > 2 else "linear"
    if function not in ("linear", "sigmoid") or width <= 0 or not math.isfinite(center):
        raise QueryError("window must be center,width[,linear|sigmoid] with a positive width")
    return center, width, function


def _viewport(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.split(",")[:2])
    except ValueError:
        raise QueryError("viewport must be width,height in pixels") from None
    if not (0 < width <= 8192 and 0 < height <= 8192):
        raise QueryError("viewport must be width,height between 1 and 8192")
    return width, height


def _to_uint8(values: NDArray[np.float64], low: float, high: float) -> NDArray[np.uint8]:
    scaled = (values - low) / max(high - low, 1e-9)
    return np.asarray(np.clip(scaled * 255.0 + 0.5, 0, 255), dtype=np.uint8)


def _grey(ds: Dataset, arr: NDArray[np.generic], window: str | None) -> NDArray[np.uint8]:
    values = np.asarray(apply_modality_lut(arr, ds), dtype=np.float64)
    if window:
        center, width, function = _window(window)
        if function == "sigmoid":
            out = 255.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
            return np.asarray(np.clip(out, 0, 255), dtype=np.uint8)
        return _to_uint8(values, center - 0.5 - (width - 1) / 2, center - 0.5 + (width - 1) / 2)
    has_voi = ("WindowCenter" in ds and "WindowWidth" in ds) or "VOILUTSequence" in ds
    if has_voi:
        values = np.asarray(apply_voi_lut(values, ds, index=0), dtype=np.float64)
    low, high = float(values.min()), float(values.max())
    return _to_uint8(values, low, high)


def render(
    data: bytes, frame: int, media: str, params: Mapping[str, str], default_size: int | None
) -> bytes:
    """One frame of a Part-10 instance as a JPEG or PNG image.

    Parameters
    ----------
    data : bytes
        The instance.
    frame : int
        1-based frame number.
    media : str
        ``image/jpeg`` or ``image/png``.
    params : mapping
        Query parameters: ``window``, ``viewport``, ``quality``.
    default_size : int, optional
        Longest side when no viewport is given (thumbnails); None keeps the size.

    Raises
    ------
    QueryError
        On malformed parameters.
    NotAcceptableError
        If the instance has no image that can be rendered.
    """
    from PIL import Image

    try:
        with capture():
            ds = dcmread(io.BytesIO(data), stop_before_pixels=True)
            frames = int(ds.get("NumberOfFrames") or 1)
            arr = decode_past_panic(lambda **plugin: pixel_array(
                io.BytesIO(data), index=frame - 1 if frames > 1 else None, raw=True, **plugin))
    except Exception as exc:  # noqa: BLE001 - codecs and odd pixel modules fail in many ways
        raise NotAcceptableError(f"the image cannot be decoded ({type(exc).__name__})") from None
    photometric = str(ds.get("PhotometricInterpretation", "")).upper()
    with capture():
        if photometric in ("MONOCHROME1", "MONOCHROME2"):
            image = _grey(ds, arr, params.get("window"))
            if photometric == "MONOCHROME1":
                image = 255 - image
        elif photometric == "RGB" or photometric.startswith("YBR"):
            rgb = arr if photometric == "RGB" else convert_color_space(arr, photometric, "RGB")
            image = np.asarray(rgb, dtype=np.uint8) if rgb.dtype == np.uint8 else _to_uint8(
                np.asarray(rgb, dtype=np.float64), float(rgb.min()), float(rgb.max())
            )
        else:
            raise NotAcceptableError(f"{photometric or 'this'} images are not rendered")
    if image.ndim not in (2, 3):
        raise NotAcceptableError("the image cannot be rendered")
    picture = Image.fromarray(np.ascontiguousarray(image))
    if "viewport" in params:
        picture.thumbnail(_viewport(params["viewport"]), Image.Resampling.LANCZOS)
    elif default_size is not None:
        picture.thumbnail((default_size, default_size), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    if media == "image/png":
        picture.save(out, format="PNG")
    else:
        quality = params.get("quality", "90")
        if not quality.isdigit() or not 1 <= int(quality) <= 100:
            raise QueryError("quality must be a number from 1 to 100")
        picture.save(out, format="JPEG", quality=int(quality))
    return out.getvalue()
