"""Bounds on what a document may cost, and the refusal every check raises."""

from __future__ import annotations

from dataclasses import dataclass

from lake._errors import DeidRefusedError

__all__ = ["DocumentRefusedError", "Limits"]


class DocumentRefusedError(DeidRefusedError):
    """A document the lake does not take: malformed, too large, or identifying content.

    ``reason`` is a short code recorded in the quarantine table (``pdf_encrypted``,
    ``burned_in_text``, ``image_too_large``...); the message names no original value.
    """


@dataclass(frozen=True)
class Limits:
    """What one document may hold; more is refused before it is decoded.

    Attributes
    ----------
    max_bytes : int
        Size of the original file.
    max_pages : int
        Pages of a PDF.
    max_stream_bytes : int
        Decoded size of one PDF stream other than an image (a Flate bomb is refused).
    max_pixels : int
        Pixels of one image or video frame, from the declared dimensions, checked before
        anything is decoded (Pillow's own bomb limit is process-wide and is not touched).
    max_frames : int
        Frames of a multi-page image.
    max_video_seconds : float
        Duration of a video.
    video_sample_seconds : float
        One video frame in this many seconds is read for burned-in text.
    max_video_samples : int
        Video frames read for burned-in text at most (spread over the whole video).
    """

    max_bytes: int = 1 << 30
    max_pages: int = 2000
    max_stream_bytes: int = 64 << 20
    max_pixels: int = 64_000_000
    max_frames: int = 500
    max_video_seconds: float = 3 * 3600.0
    video_sample_seconds: float = 2.0
    max_video_samples: int = 60
