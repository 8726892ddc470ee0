"""Hostile inputs made from real files: zip bombs, damaged zip members, nested archives, deep
sequences and huge values. Each is built in milliseconds (no GiB ever passes through a compressor)
and shared by the ingest, ``lake deid``, C-STORE and STOW tests.
"""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from collections.abc import Iterable
from pathlib import Path

from pydicom.data import get_testdata_file

__all__ = [
    "ct_bytes",
    "damaged_member_zip",
    "deflate_bomb",
    "long_value",
    "lying_zip",
    "nested_sequence",
    "nested_zip",
    "sparse_value",
    "zip_bomb",
]

_MIB = 1 << 20


def ct_bytes() -> bytes:
    """pydicom's CT_small.dcm (explicit VR little endian, 39 KB)."""
    return Path(get_testdata_file("CT_small.dcm")).read_bytes()  # type: ignore[arg-type]


def _zeros_deflated(mib: int) -> tuple[bytes, int]:
    """A raw deflate stream of ``mib`` MiB of zeros, and its CRC-32, without compressing GiBs.

    Each MiB is compressed with a full flush, which byte-aligns the output and resets the
    compressor, so every MiB compresses to the same bytes: the stream is one unit repeated.
    """
    unit_z = zlib.compressobj(9, zlib.DEFLATED, -15)
    unit = unit_z.compress(bytes(_MIB)) + unit_z.flush(zlib.Z_FULL_FLUSH)
    final = unit_z.flush()
    crc = 0
    block = bytes(_MIB)
    for _ in range(mib):
        crc = zlib.crc32(block, crc)
    return unit * mib + final, crc


def zip_bomb(path: Path, gib: float = 4, name: str = "scan.dcm") -> Path:
    """A zip whose one member inflates to ``gib`` GiB of zeros (about 1 MB of zip per GiB).

    The member uses ZIP64 sizes, as any zip tool writes them for a member over 4 GiB.
    """
    mib = round(gib * 1024)
    data, crc = _zeros_deflated(mib)
    size = mib * _MIB
    encoded = name.encode()
    extra = struct.pack("<HHQQ", 1, 16, size, len(data))
    local = struct.pack(
        "<IHHHHHIIIHH", 0x04034B50, 45, 0, 8, 0, 0x21, crc, 0xFFFFFFFF, 0xFFFFFFFF,
        len(encoded), len(extra),
    ) + encoded + extra
    central = struct.pack(
        "<IHHHHHHIIIHHHHHII", 0x02014B50, 45, 45, 0, 8, 0, 0x21, crc, 0xFFFFFFFF, 0xFFFFFFFF,
        len(encoded), len(extra), 0, 0, 0, 0, 0,
    ) + encoded + extra
    offset = len(local) + len(data)
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 1, 1, len(central), offset, 0)
    path.write_bytes(local + data + central + end)
    return path


def _zip(members: Iterable[tuple[str, bytes]]) -> bytes:
    sink = io.BytesIO()
    with zipfile.ZipFile(sink, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members:
            archive.writestr(name, data)
    return sink.getvalue()


def _patch_sizes(data: bytes, name: str, *, compress_size: int | None = None,
                 file_size: int | None = None) -> bytes:
    """Rewrite a member's declared sizes in its local header and its central directory entry."""
    out = bytearray(data)
    encoded = name.encode()
    for signature, sizes_at, name_at in ((b"PK\x03\x04", 18, 30), (b"PK\x01\x02", 20, 46)):
        start = 0
        while (pos := out.find(signature, start)) >= 0:
            start = pos + 4
            if out[pos + name_at : pos + name_at + len(encoded)] != encoded:
                continue
            old_c, old_f = struct.unpack_from("<II", out, pos + sizes_at)
            struct.pack_into("<II", out, pos + sizes_at,
                             old_c if compress_size is None else compress_size,
                             old_f if file_size is None else file_size)
    return bytes(out)


def damaged_member_zip(path: Path, good: dict[str, bytes], how: str = "truncated") -> Path:
    """A zip of ``good`` members plus ``broken.dcm``, a member whose deflate data is damaged.

    ``how``: ``truncated`` (its stream ends half way: the declared compressed size is halved),
    ``flipped`` (bytes in the middle of its stream inverted: zlib.error or a bad CRC).
    """
    broken = ct_bytes()
    raw = _zip([*good.items(), ("broken.dcm", broken)])
    with zipfile.ZipFile(io.BytesIO(raw)) as archive:
        info = archive.getinfo("broken.dcm")
    if how == "truncated":
        raw = _patch_sizes(raw, "broken.dcm", compress_size=info.compress_size // 2)
    else:
        start = info.header_offset + 30 + len(b"broken.dcm") + 100
        middle = bytes(b ^ 0xFF for b in raw[start : start + 64])
        raw = raw[:start] + middle + raw[start + 64 :]
    path.write_bytes(raw)
    return path


def lying_zip(path: Path, mib: int = 64) -> Path:
    """A zip whose member declares 1,000 bytes but inflates to ``mib`` MiB of zeros."""
    data, crc = _zeros_deflated(mib)
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        info = zipfile.ZipInfo("liar.dcm")
        info.compress_type = zipfile.ZIP_STORED
        zf.writestr(info, data)  # stored: the deflate stream itself, sizes patched below
    raw = bytearray(archive.getvalue())
    for signature, method_at, crc_at in ((b"PK\x03\x04", 8, 14), (b"PK\x01\x02", 10, 16)):
        pos = raw.find(signature)
        struct.pack_into("<H", raw, pos + method_at, zipfile.ZIP_DEFLATED)
        struct.pack_into("<I", raw, pos + crc_at, crc)
    path.write_bytes(_patch_sizes(bytes(raw), "liar.dcm", file_size=1000))
    return path


def nested_zip(path: Path, members: dict[str, bytes], depth: int) -> Path:
    """``members`` inside a zip inside a zip ... ``depth`` archives in all (1: a plain zip)."""
    raw = _zip(members.items())
    for level in range(depth - 1, 0, -1):
        raw = _zip([(f"level{level}/inner{level}.ZIP" if level % 2 else f"inner{level}.zip", raw)])
    path.write_bytes(raw)
    return path


def _sequence(tag: int, body: bytes, defined: bool, order: str = "<") -> bytes:
    group, element = tag >> 16, tag & 0xFFFF
    if defined:
        item = struct.pack(order + "HHI", 0xFFFE, 0xE000, len(body)) + body
        return struct.pack(order + "HH2sHI", group, element, b"SQ", 0, len(item)) + item
    item = (struct.pack(order + "HHI", 0xFFFE, 0xE000, 0xFFFFFFFF) + body
            + struct.pack(order + "HHI", 0xFFFE, 0xE00D, 0))
    return (struct.pack(order + "HH2sHI", group, element, b"SQ", 0, 0xFFFFFFFF) + item
            + struct.pack(order + "HHI", 0xFFFE, 0xE0DD, 0))


def nested_sequence(depth: int, *, defined: bool = True, big_endian: bool = False) -> bytes:
    """CT_small.dcm with a ContentSequence nested ``depth`` levels deep (one text leaf).

    ``big_endian``: MR_small_bigendian.dcm instead (explicit VR big endian).
    """
    order = ">" if big_endian else "<"
    body = struct.pack(order + "HH2sHI", 0x0040, 0xA160, b"UT", 0, 4) + b"TEXT"
    for _ in range(depth):
        body = _sequence(0x0040A730, body, defined, order)
    if big_endian:
        data = Path(get_testdata_file("MR_small_bigendian.dcm")).read_bytes()  # type: ignore[arg-type]
        pixels = data.find(b"\x7f\xe0\x00\x10OW")
    else:
        data = ct_bytes()
        pixels = data.find(b"\xe0\x7f\x10\x00OW")  # (0040,A730) sorts before Pixel Data
    return data[:pixels] + body + data[pixels:]


def long_value(size: int, *, tag: int = 0x00080070, implicit: bool = False) -> bytes:
    """CT_small.dcm with one element (Manufacturer by default) ``size`` bytes long.

    Explicit VR cannot give a LO a 4-byte length, so the value is written as UN there, as
    pydicom and most toolkits write long values; ``implicit`` writes it as implicit VR
    little endian (4-byte lengths for every element).
    """
    from pydicom import dcmread
    from pydicom.uid import ImplicitVRLittleEndian

    ds = dcmread(io.BytesIO(ct_bytes()))
    if implicit:
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    if tag in ds:
        del ds[tag]
    sink = io.BytesIO()
    ds.save_as(sink, implicit_vr=implicit, little_endian=True, enforce_file_format=True)
    data = sink.getvalue()
    group, element = tag >> 16, tag & 0xFFFF
    value = b"A" * size
    if implicit:
        header = struct.pack("<HHI", group, element, size)
    else:
        header = struct.pack("<HH2sHI", group, element, b"UN", 0, size)
    meta_end = _meta_end(data)
    pos = _insert_at(data, meta_end, tag, implicit)
    return data[:pos] + header + value + data[pos:]


def _meta_end(data: bytes) -> int:
    group_length = struct.unpack_from("<I", data, 128 + 4 + 8)[0]
    return 128 + 4 + 12 + group_length


def _insert_at(data: bytes, pos: int, tag: int, implicit: bool) -> int:
    """Where ``tag`` goes among the dataset's top-level elements (they are in tag order)."""
    while pos < len(data):
        group, element = struct.unpack_from("<HH", data, pos)
        if (group << 16 | element) > tag:
            return pos
        if implicit:
            length = struct.unpack_from("<I", data, pos + 4)[0]
            pos += 8 + length
            continue
        vr = data[pos + 4 : pos + 6]
        if vr in (b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR",
                  b"UT", b"UV"):
            length = struct.unpack_from("<I", data, pos + 8)[0]
            pos += 12 + length
        else:
            pos += 8 + struct.unpack_from("<H", data, pos + 6)[0]
    return pos


def sparse_value(path: Path, size: int, *, tag: int = 0x00091099, data: bytes | None = None
                 ) -> Path:
    """CT_small.dcm (or ``data``, explicit VR little endian) with a private UN value of
    ``size`` zero bytes before its pixel data.

    The value is a hole in a sparse file: the file is ``size`` bytes long and costs no disk,
    but reading it allocates and fills ``size`` bytes.
    """
    data = ct_bytes() if data is None else data
    pos = _insert_at(data, _meta_end(data), tag, False)
    header = struct.pack("<HH2sHI", tag >> 16, tag & 0xFFFF, b"UN", 0, size)
    with path.open("wb") as fh:
        fh.write(data[:pos] + header)
        fh.seek(size, io.SEEK_CUR)
        fh.write(data[pos:])
    return path


def deflate_bomb(path: Path, mib: int) -> Path:
    """CT_small.dcm in Deflated Explicit VR Little Endian whose dataset inflates to ``mib`` MiB.

    Its pixel data is ``mib`` MiB of zeros: about 1 KB of file per MiB inflated.
    """
    from pydicom import dcmread
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    ds = dcmread(io.BytesIO(ct_bytes()))
    del ds.PixelData
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    sink = io.BytesIO()
    ds.save_as(sink, enforce_file_format=True)
    raw = sink.getvalue()
    meta_end = _meta_end(raw)
    body = zlib.decompress(raw[meta_end:], -15)
    head_z = zlib.compressobj(9, zlib.DEFLATED, -15)
    pixels = struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OB", 0, mib * _MIB)
    head = head_z.compress(body + pixels) + head_z.flush(zlib.Z_FULL_FLUSH)
    zeros, _crc = _zeros_deflated(mib)  # a fresh stream after a full flush continues this one
    path.write_bytes(raw[:meta_end] + head + zeros)
    return path
