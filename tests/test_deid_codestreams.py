"""Metadata inside compressed frames (JPEG, JPEG-LS, JPEG 2000) goes; decoded pixels stay.

Red-team finding 1: COM and APPn (EXIF) segments inside encapsulated Pixel Data reached the
blob, exports, C-GET and WADO under every profile. Each test plants segments in the frames
of pydicom's own compressed files, de-identifies, and decodes before and after with pydicom.
"""

from __future__ import annotations

import copy
import io
import struct
import warnings

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, encapsulate_extended, generate_frames

from lake._errors import DeidRefusedError
from lake.deid import Deidentifier, load_profile, strip_frame, strip_jpeg
from lake.vault import Secret

SECRET = Secret(b"codestream-secret-0123456789abcde")
TOKEN = b"TKNFRAMEMETA"


def _segment(marker: int, payload: bytes) -> bytes:
    return bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload


def _plant_jpeg(frame: bytes) -> bytes:
    """EXIF, XMP, ICC and a comment after SOI; trailing data after EOI."""
    planted = (
        _segment(0xE1, b"Exif\0\0" + TOKEN)
        + _segment(0xE1, b"http://ns.adobe.com/xap/1.0/\0" + TOKEN)
        + _segment(0xE2, b"ICC_PROFILE\0\x01\x01" + TOKEN)
        + _segment(0xFE, TOKEN)
    )
    end = frame.rindex(b"\xff\xd9") + 2
    return frame[:2] + planted + frame[2:end] + TOKEN


def _plant_j2k(frame: bytes) -> bytes:
    """A COM in the main header and one in the first tile-part header (Psot corrected)."""
    siz_end = 4 + struct.unpack_from(">H", frame, 4)[0]
    com = _segment(0x64, b"\x00\x01" + TOKEN)
    frame = frame[:siz_end] + com + frame[siz_end:]
    sot = frame.index(b"\xff\x90")
    (psot,) = struct.unpack_from(">I", frame, sot + 6)
    head = bytearray(frame[: sot + 12])
    if psot:
        struct.pack_into(">I", head, sot + 6, psot + len(com))
    return bytes(head) + com + frame[sot + 12 :]


def _plant_jp2(frame: bytes) -> bytes:
    """xml and uuid boxes before the codestream box of a JP2 file (which has uuid boxes)."""
    def box(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I4s", 8 + len(body), kind) + body

    at = frame.index(b"jp2c") - 4
    return (frame[:at] + box(b"xml ", b"<x>" + TOKEN + b"</x>")
            + box(b"uuid", b"\0" * 16 + TOKEN) + frame[at:])


def _instance(name: str) -> Dataset:
    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"{name} is not in this pydicom")
    ds = dcmread(path)
    ds.BurnedInAnnotation = "NO"
    return ds


def _frames(ds: Dataset) -> list[bytes]:
    return list(generate_frames(ds.PixelData, number_of_frames=int(ds.get("NumberOfFrames", 1))))


def _pixels(ds: Dataset) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.asarray(copy.deepcopy(ds).pixel_array)


def _deid(ds: Dataset, profile: str = "basic") -> Dataset:
    out = copy.deepcopy(ds)
    Deidentifier(load_profile(profile), SECRET).apply(out)
    return out


FILES = [
    ("SC_rgb_jpeg_dcmtk.dcm", _plant_jpeg),  # baseline, YCbCr
    ("SC_jpeg_no_color_transform.dcm", _plant_jpeg),  # baseline, Adobe: RGB
    ("JPGExtended.dcm", _plant_jpeg),  # extended 12-bit
    ("JPEG-LL.dcm", _plant_jpeg),  # lossless process 14
    ("MR_small_jpeg_ls_lossless.dcm", _plant_jpeg),  # JPEG-LS
    ("JPEGLSNearLossless_16.dcm", _plant_jpeg),
    ("color3d_jpeg_baseline.dcm", _plant_jpeg),  # 120 frames
    ("MR_small_jp2klossless.dcm", _plant_j2k),
    ("JPEG2000.dcm", _plant_j2k),
    ("emri_small_jpeg_2k_lossless.dcm", _plant_j2k),  # 10 frames
    ("GDCMJ2K_TextGBR.dcm", _plant_jp2),  # a JP2 file, with uuid boxes of its own
]


@pytest.mark.parametrize(("name", "plant"), FILES,
                         ids=[f"{n.removesuffix('.dcm')}-{p.__name__[7:]}" for n, p in FILES])
def test_planted_frame_metadata_goes_and_pixels_stay(name: str, plant: object) -> None:
    ds = _instance(name)
    before = _pixels(ds)
    assert callable(plant)
    frames = [plant(f) for f in _frames(ds)]
    assert all(TOKEN in f for f in frames)
    ds.PixelData = encapsulate(frames, has_bot=True)
    out = _deid(ds)
    assert TOKEN not in out.PixelData
    assert np.array_equal(_pixels(out), before)
    again = _deid(out)  # idempotent: a cleaned value is kept byte for byte
    assert again.PixelData == out.PixelData


@pytest.mark.parametrize("name", ["SC_rgb_jpeg_dcmtk.dcm", "JPGExtended.dcm",
                                  "MR_small_jpeg_ls_lossless.dcm", "MR_small_RLE.dcm",
                                  "CT_small.dcm"])
def test_frames_without_metadata_are_not_rewritten(name: str) -> None:
    ds = _instance(name)
    assert _deid(ds).PixelData == ds.PixelData


def test_the_extended_offset_table_follows_the_new_frames() -> None:
    ds = _instance("color3d_jpeg_baseline.dcm")
    before = _pixels(ds)
    frames = [_plant_jpeg(f) for f in _frames(ds)]
    ds.PixelData, ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths = (
        encapsulate_extended(frames))
    out = _deid(ds)
    assert TOKEN not in out.PixelData
    rebuilt = encapsulate_extended([strip_jpeg(f) or f for f in frames])
    assert (out.PixelData, out.ExtendedOffsetTable, out.ExtendedOffsetTableLengths) == rebuilt
    assert np.array_equal(_pixels(out), before)


@pytest.mark.parametrize("damage", ["truncated", "not-a-stream"])
def test_a_frame_that_cannot_be_followed_refuses_the_instance(damage: str) -> None:
    ds = _instance("SC_rgb_jpeg_dcmtk.dcm")
    frame = _plant_jpeg(_frames(ds)[0])
    frame = frame[: frame.index(TOKEN) + 4] if damage == "truncated" else TOKEN + frame
    ds.PixelData = encapsulate([frame])
    with pytest.raises(DeidRefusedError) as info:
        _deid(ds)
    assert info.value.reason == "pixel_stream" and "TKN" not in str(info.value)


def test_strip_frame_keeps_jfif_without_thumbnail_and_adobe() -> None:
    scan = _segment(0xDA, b"\x01\x01\x00\x00\x3f\x00") + b"\x12\xff\x00\x34\xff\xd0\x56"
    adobe = _segment(0xEE, b"Adobe\x00\x64\x00\x00\x00\x00\x00" + TOKEN)
    jfif = _segment(0xE0, b"JFIF\0\x01\x02\x00\x00\x01\x00\x01\x01\x01\x00\x00\x00")
    frame = b"\xff\xd8" + jfif + adobe + _segment(0xDB, b"\x00" * 65) + scan + b"\xff\xd9"
    out = strip_frame(frame)
    assert out == (b"\xff\xd8" + jfif[:4].replace(b"\x00\x13", b"\x00\x10") + jfif[4:16]
                   + b"\x00\x00" + _segment(0xEE, b"Adobe\x00\x64\x00\x00\x00\x00\x00")
                   + _segment(0xDB, b"\x00" * 65) + scan + b"\xff\xd9")
    assert strip_frame(out) is None


def test_native_pixel_data_is_never_read() -> None:
    ds = _instance("CT_small.dcm")
    ds.PixelData = ds.PixelData[:-len(TOKEN)] + TOKEN  # pixel values: not metadata
    assert TOKEN in _deid(ds).PixelData


def test_stored_instance_decodes_to_the_original_pixels(tmp_path: object) -> None:
    """Through the encoder: the cleaned instance written and read again decodes alike."""
    from lake.ingest._encode import encode_part10

    ds = _instance("SC_rgb_jpeg_dcmtk.dcm")
    before = _pixels(ds)
    ds.PixelData = encapsulate([_plant_jpeg(f) for f in _frames(ds)])
    out = _deid(ds, "research")
    written = dcmread(io.BytesIO(encode_part10(out)))
    assert TOKEN not in bytes(written.PixelData)
    assert np.array_equal(_pixels(written), before)
