"""Photographs, scans and videos: metadata gone, bombs refused, burned-in text refused or masked."""

from __future__ import annotations

import io
import shutil

import av
import numpy as np
import pytest
from PIL import Image

from lake.deid import ProfileOption, load_profile
from lake.documents import (
    DocumentKind,
    DocumentRefusedError,
    Limits,
    Ocr,
    TextPolicy,
    clean_image,
    clean_video,
    h264_to_mp4,
    sniff,
)
from lake.documents._image import baseline_jpeg
from tests.documents_corpus import (
    avi_with_info,
    find_tokens,
    jpeg_with_metadata,
    photo,
    png_bomb,
    video,
)

pytestmark = pytest.mark.skipif(shutil.which("tesseract") is None,
                                reason="tesseract not installed")
TOKEN = "TKNMEDIAQWERT"


def _policy(profile: str = "research") -> TextPolicy:
    prof = load_profile(profile)
    return TextPolicy(prof.vocabulary, frozenset({"smith"}),
                      redact=ProfileOption.CLEAN_DESCRIPTORS in prof.options)


def _scan(jpeg: bytes) -> bytes:
    return jpeg[jpeg.index(b"\xff\xda"):]


def test_jpeg_is_kept_without_reencoding_and_without_metadata() -> None:
    data = jpeg_with_metadata(TOKEN)
    assert find_tokens(data, {TOKEN}) == {TOKEN}
    image = clean_image(data, DocumentKind.JPEG, _policy(), ocr=Ocr())
    assert image.jpeg and len(image.frames) == 1
    kept = image.frames[0]
    assert _scan(kept) == _scan(data)  # the entropy-coded pixels are the original bytes
    assert find_tokens(kept, {TOKEN}) == set()
    assert b"Photoshop 3.0" in data  # IPTC planted too
    for marker in (b"Exif", b"http://ns.adobe.com", b"\xff\xfe", b"Photoshop 3.0", b"8BIM"):
        assert marker not in kept
    assert image.created == ("20200312", "101112")
    assert image.photometric == "YBR_FULL_422"
    assert Image.open(io.BytesIO(kept)).size == (640, 480)


def test_exif_orientation_is_applied_to_the_pixels() -> None:
    image = clean_image(jpeg_with_metadata(TOKEN, orientation=6), DocumentKind.JPEG,
                        _policy(), ocr=Ocr())
    assert not image.jpeg and (image.rows, image.columns) == (640, 480)


def test_png_text_chunks_do_not_travel() -> None:
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("Author", TOKEN)
    out = io.BytesIO()
    photo().save(out, "PNG", pnginfo=info)
    image = clean_image(out.getvalue(), DocumentKind.PNG, _policy(), ocr=Ocr())
    assert find_tokens(b"".join(image.frames), {TOKEN}) == set()
    assert (image.rows, image.columns, image.photometric) == (480, 640, "RGB")


def test_an_image_bomb_is_refused_before_decoding() -> None:
    data = png_bomb()
    assert sniff(data) is DocumentKind.PNG
    with pytest.raises(DocumentRefusedError) as refused:
        clean_image(data, DocumentKind.PNG, _policy(), ocr=Ocr())
    assert refused.value.reason == "image_too_large"
    with pytest.raises(DocumentRefusedError) as refused:  # below Pillow's own limit too
        clean_image(png_bomb(5000, 5000), DocumentKind.PNG, _policy(), ocr=Ocr(),
                    limits=Limits(max_pixels=1_000_000))
    assert refused.value.reason == "image_too_large"
    assert Image.MAX_IMAGE_PIXELS == 89_478_485  # Pillow's process-wide setting untouched


def test_a_truncated_image_is_refused() -> None:
    data = jpeg_with_metadata(TOKEN)
    with pytest.raises(DocumentRefusedError) as refused:
        clean_image(data[: len(data) // 2], DocumentKind.JPEG, _policy(), ocr=Ocr())
    assert refused.value.reason == "image_malformed"


def test_burned_in_text_is_refused_or_masked() -> None:
    out = io.BytesIO()
    photo(f"SMITH {TOKEN}").save(out, "PNG")
    with pytest.raises(DocumentRefusedError) as refused:
        clean_image(out.getvalue(), DocumentKind.PNG, _policy(), ocr=Ocr())
    assert refused.value.reason == "burned_in_text"
    masked = clean_image(out.getvalue(), DocumentKind.PNG, _policy("teaching"), ocr=Ocr(),
                         clean_pixels=True)
    assert masked.masked and not masked.jpeg
    picture = Image.frombytes("RGB", (masked.columns, masked.rows), masked.frames[0])
    assert not Ocr().identifying(picture, _policy())


def test_a_multipage_scan_keeps_every_page() -> None:
    out = io.BytesIO()
    pages = [photo(seed=i).convert("L") for i in range(3)]
    pages[0].save(out, "TIFF", save_all=True, append_images=pages[1:])
    image = clean_image(out.getvalue(), DocumentKind.TIFF, _policy(), ocr=Ocr())
    assert len(image.frames) == 3 and image.photometric == "MONOCHROME2"


def test_strip_jpeg_refuses_progressive() -> None:
    out = io.BytesIO()
    photo().save(out, "JPEG", progressive=True)
    assert baseline_jpeg(out.getvalue()) is None


def _frames(stream: bytes) -> int:
    with av.open(io.BytesIO(stream), format="h264") as container:
        return sum(1 for _ in container.decode(video=0))


def test_video_becomes_h264_without_container_metadata() -> None:
    data = avi_with_info(TOKEN)
    assert find_tokens(data, {TOKEN}) == {TOKEN}  # the INFO chunks hold it
    cleaned = clean_video(data, _policy(), ocr=Ocr())
    assert find_tokens(cleaned.stream, {TOKEN}) == set()
    assert cleaned.stream.startswith(b"\0\0\0\x01")  # Annex B byte stream
    assert (cleaned.frames, cleaned.rows, cleaned.columns) == (20, 240, 320)
    assert cleaned.duration == pytest.approx(2.0)
    assert _frames(cleaned.stream) == 20
    mp4 = h264_to_mp4(cleaned.stream, cleaned.fps)
    assert sniff(mp4) is DocumentKind.MP4 and find_tokens(mp4, {TOKEN}) == set()
    with av.open(io.BytesIO(mp4)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264" and stream.frames == 20


def test_mov_is_transcoded_too() -> None:
    cleaned = clean_video(video("mov", "mpeg4", seconds=1), _policy(), ocr=Ocr())
    assert cleaned.frames == 10


def test_burned_in_text_in_video_is_refused_or_masked() -> None:
    data = video(text=f"SMITH {TOKEN}")
    with pytest.raises(DocumentRefusedError) as refused:
        clean_video(data, _policy(), ocr=Ocr())
    assert refused.value.reason == "burned_in_text"
    masked = clean_video(data, _policy("teaching"), ocr=Ocr(), clean_pixels=True)
    assert masked.masked and masked.samples_read >= 2
    with av.open(io.BytesIO(masked.stream), format="h264") as container:
        first = next(container.decode(video=0)).to_image()
    assert not Ocr().identifying(first, _policy())


@pytest.mark.parametrize(
    ("mutate", "reasons"),
    [
        (lambda d: d[: len(d) // 3], {"video_truncated", "video_malformed"}),
        (lambda d: b"RIFF\0\0\0\0AVI " + bytes(200), {"video_malformed", "video_unsupported"}),
        # a codec FFmpeg does not know (FourCC MJPG renamed): PyAV gives no codec context
        (lambda d: d.replace(b"MJPG", b"ZZZZ"), {"video_unsupported"}),
    ],
)
def test_bad_videos_are_refused(mutate: object, reasons: set[str]) -> None:
    with pytest.raises(DocumentRefusedError) as refused:
        clean_video(mutate(video(seconds=3)), _policy(), ocr=Ocr())  # type: ignore[operator]
    assert refused.value.reason in reasons


def test_huge_declared_video_frames_are_refused() -> None:
    with pytest.raises(DocumentRefusedError) as refused:
        clean_video(video(), _policy(), ocr=Ocr(), limits=Limits(max_pixels=1000))
    assert refused.value.reason == "video_too_large"


def test_masking_is_black() -> None:
    from lake.documents import OcrWord
    from lake.documents._ocr import mask

    picture = photo()
    out = np.asarray(mask(picture, [OcrWord("x", 99, 10, 10, 20, 20)]))
    assert out[15, 15].tolist() == [0, 0, 0] and out[100, 100].tolist() != [0, 0, 0]
