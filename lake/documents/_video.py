"""De-identifying videos (AVI, MP4, MOV): a new H.264 stream, frames checked for burned-in text.

Whatever the container and codec, the video is decoded and encoded again with x264 (through
PyAV, whose wheels bring FFmpeg) as an MPEG-4 AVC/H.264 High Profile Level 4.1 elementary
stream (Annex B byte stream), the form DICOM encapsulates. So nothing of the original file
travels: container metadata (titles, dates, GPS, AVI ``INFO`` chunks), other streams
(audio, subtitles, data) and any user data the original encoder put in the bitstream.
The output is at most 1920x1080 (larger video is scaled down, keeping its aspect) and 30
frames per second (faster video keeps every frame whose time falls on the 30 Hz grid).

Burned-in text: one frame every :attr:`Limits.video_sample_seconds` seconds (first frame
included; at most :attr:`Limits.max_video_samples`, spread evenly over longer videos) is
read by OCR. An identifying word refuses the video (``burned_in_text``) unless the profile
cleans pixels: then the boxes of every word found in any sample are masked in every frame
(burned-in text in video is an overlay, static for long stretches), the video is encoded
again and its samples read again.
"""

from __future__ import annotations

import datetime as dt
import io
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np
from PIL import Image

from lake.documents._limits import DocumentRefusedError, Limits
from lake.documents._ocr import Ocr, OcrWord, mask
from lake.documents._text import TextPolicy

__all__ = ["CleanedVideo", "clean_video", "h264_to_mp4"]

_MAX_W, _MAX_H = 1920, 1080
_MAX_FPS = Fraction(30)
_X264 = {"preset": "veryfast", "crf": "20", "profile": "high", "level": "4.1", "bf": "0"}
_TRUNCATED = 0.9  # fewer frames than this share of the declared duration: truncated


@dataclass(frozen=True)
class CleanedVideo:
    """A de-identified video as an H.264 elementary stream, and its shape."""

    stream: bytes
    rows: int
    columns: int
    frames: int
    fps: Fraction
    masked: bool
    samples_read: int
    created: tuple[str, str] | None

    @property
    def duration(self) -> float:
        """Seconds."""
        return float(self.frames / self.fps) if self.fps else 0.0


def _refuse(reason: str, message: str) -> DocumentRefusedError:
    return DocumentRefusedError(reason, message)


def _created(metadata: dict[str, str]) -> tuple[str, str] | None:
    value = metadata.get("creation_time") or metadata.get("date")
    if not value:
        return None
    try:
        when = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return when.strftime("%Y%m%d"), when.strftime("%H%M%S")


def _even(value: float) -> int:
    return max(2, int(value) // 2 * 2)


@dataclass
class _Probe:
    width: int
    height: int
    fps: Fraction
    duration: float
    created: tuple[str, str] | None
    out_w: int = 0
    out_h: int = 0
    out_fps: Fraction = field(default_factory=lambda: Fraction(25))


def _probe(data: bytes, limits: Limits) -> _Probe:
    import av

    try:
        with av.open(io.BytesIO(data), "r", metadata_errors="ignore") as container:
            if not container.streams.video:
                raise _refuse("video_unsupported", "the file holds no video stream")
            stream = container.streams.video[0]
            ctx = stream.codec_context
            if ctx is None:  # FFmpeg knows no codec for the stream's tag
                raise _refuse("video_unsupported", "the video's codec cannot be decoded")
            width, height = int(ctx.width or 0), int(ctx.height or 0)
            rate = stream.average_rate or stream.guessed_rate or Fraction(25)
            if container.duration is not None:
                duration = container.duration / 1_000_000
            elif stream.duration is not None and stream.time_base is not None:
                duration = float(stream.duration * stream.time_base)
            else:
                duration = 0.0
            created = _created(dict(container.metadata))
            declared = int(stream.frames or 0)  # the container's frame count (AVI header)
            if ctx.codec is None or not ctx.codec.is_decoder:
                raise _refuse("video_unsupported", "the video's codec cannot be decoded")
    except DocumentRefusedError:
        raise
    except (av.error.FFmpegError, ValueError, OSError, ZeroDivisionError) as exc:
        raise _refuse("video_malformed", f"the video cannot be read ({type(exc).__name__})") \
            from None
    if width <= 0 or height <= 0:
        raise _refuse("video_malformed", "the video declares no frame size")
    if width * height > limits.max_pixels:
        raise _refuse("video_too_large", "the video's frames are larger than the lake's limit")
    if duration > limits.max_video_seconds:
        raise _refuse("video_too_large", "the video is longer than the lake's limit")
    if declared and rate:
        duration = max(duration, float(declared / Fraction(rate)))
    probe = _Probe(width, height, Fraction(rate), duration, created)
    scale = min(1.0, _MAX_W / width, _MAX_H / height)
    probe.out_w, probe.out_h = _even(width * scale), _even(height * scale)
    probe.out_fps = min(Fraction(rate).limit_denominator(1001), _MAX_FPS) or Fraction(25)
    return probe


def _sample_times(duration: float, limits: Limits) -> list[float]:
    step = limits.video_sample_seconds
    if duration / step > limits.max_video_samples:
        step = duration / limits.max_video_samples
    count = max(1, int(duration / step) + 1) if duration > 0 else 1
    return [i * step for i in range(min(count, limits.max_video_samples))]


def _ocr(ocr: Ocr, image: Image.Image, policy: TextPolicy) -> list[OcrWord]:
    try:
        return ocr.identifying(image, policy)
    except TimeoutError:
        raise _refuse("ocr_timeout", "burned-in text could not be checked in time") from None


@dataclass
class _Pass:
    stream: bytes
    frames: int
    found: list[OcrWord]
    samples: int


def _transcode(data: bytes, probe: _Probe, policy: TextPolicy, ocr: Ocr, limits: Limits,
               boxes: list[OcrWord], stop_on_text: bool) -> _Pass:
    import av

    out = io.BytesIO()
    times = _sample_times(probe.duration, limits)
    found: list[OcrWord] = []
    samples = 0
    written = 0
    next_time = Fraction(0)
    period = 1 / probe.out_fps
    try:
        with av.open(io.BytesIO(data), "r", metadata_errors="ignore") as source, \
                av.open(out, "w", format="h264") as sink:
            video = source.streams.video[0]
            video.thread_type = "AUTO"
            encoder = sink.add_stream("libx264", rate=probe.out_fps)
            encoder.width, encoder.height = probe.out_w, probe.out_h
            encoder.pix_fmt = "yuv420p"
            encoder.options = dict(_X264)
            for frame in source.decode(video):
                t = Fraction(frame.time or 0).limit_denominator(1_000_000) if frame.time else \
                    Fraction(written) * period
                if t + period / 2 < next_time:
                    continue  # faster than 30 fps: keep frames on the output grid
                next_time = max(next_time + period, t + period / 2)
                picture = frame.to_image()  # type: ignore[no-untyped-call]
                if boxes:
                    picture = mask(picture, boxes)
                if times and float(t) + 1e-6 >= times[0]:
                    times.pop(0)
                    samples += 1
                    hits = _ocr(ocr, picture, policy)
                    if hits and stop_on_text:
                        raise _refuse("burned_in_text", "a frame of the video shows identifying "
                                      "text; a profile with Clean Pixel Data masks it")
                    found.extend(hits)
                if picture.size != (probe.out_w, probe.out_h):
                    picture = picture.resize((probe.out_w, probe.out_h), Image.Resampling.BILINEAR)
                out_frame = av.VideoFrame.from_ndarray(np.asarray(picture.convert("RGB")),
                                                       format="rgb24")
                out_frame.pts = written
                for packet in encoder.encode(out_frame):
                    sink.mux(packet)
                written += 1
            for packet in encoder.encode(None):
                sink.mux(packet)
    except DocumentRefusedError:
        raise
    except (av.error.FFmpegError, ValueError, OSError) as exc:
        raise _refuse("video_malformed", f"the video cannot be decoded ({type(exc).__name__})") \
            from None
    if written == 0:
        raise _refuse("video_malformed", "the video has no decodable frame")
    if probe.duration and written / probe.out_fps < _TRUNCATED * probe.duration - 1:
        raise _refuse("video_truncated", "the video ends before its declared duration")
    return _Pass(out.getvalue(), written, found, samples)


def clean_video(data: bytes, policy: TextPolicy, *, ocr: Ocr | None, clean_pixels: bool = False,
                limits: Limits | None = None) -> CleanedVideo:
    """De-identify a video (see the module docstring).

    Raises
    ------
    DocumentRefusedError
        ``video_malformed``, ``video_truncated``, ``video_unsupported``, ``video_too_large``,
        ``ocr_unavailable``, ``burned_in_text``.
    """
    limits = limits or Limits()
    if len(data) > limits.max_bytes:
        raise _refuse("video_too_large", "the video file is larger than the lake's limit")
    if ocr is None:
        raise _refuse("ocr_unavailable", "no OCR engine is installed to check the video for "
                      "burned-in text (install tesseract-ocr)")
    probe = _probe(data, limits)
    first = _transcode(data, probe, policy, ocr, limits, [], stop_on_text=not clean_pixels)
    result, masked = first, False
    if first.found:
        result = _transcode(data, probe, policy, ocr, limits, first.found, stop_on_text=False)
        if result.found:
            raise _refuse("burned_in_text", "identifying text remains in the video after masking")
        masked = True
    return CleanedVideo(result.stream, probe.out_h, probe.out_w, result.frames, probe.out_fps,
                        masked, first.samples + (result.samples if masked else 0),
                        probe.created)


def h264_to_mp4(stream: bytes, fps: Fraction) -> bytes:
    """An MP4 file holding ``stream`` (an H.264 elementary stream) as it is, without metadata."""
    import av

    out = io.BytesIO()
    with av.open(io.BytesIO(stream), "r", format="h264") as source, \
            av.open(out, "w", format="mp4") as sink:
        video = source.streams.video[0]
        target = sink.add_stream_from_template(video)
        target.time_base = Fraction(1, 90000)
        tick = int(Fraction(90000) / fps)
        index = 0
        for packet in source.demux(video):
            if packet.size == 0:
                continue
            packet.stream = target
            packet.pts = packet.dts = None
            packet.time_base = target.time_base
            packet.pts = packet.dts = index * tick
            packet.duration = tick
            sink.mux(packet)
            index += 1
    return out.getvalue()
