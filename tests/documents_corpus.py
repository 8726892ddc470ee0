"""Documents made in the tests: PDFs, photographs, scans and videos with identifiers planted.

Every file is generated here (pikepdf writes PDFs, Pillow draws and encodes pictures, PyAV
encodes videos); nothing binary is committed. Burned-in text is drawn large and white on a
black band, as burned-in overlays usually are, so Tesseract reads it.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Iterable

import av
import numpy as np
import pikepdf
from PIL import Image, ImageDraw, ImageFont

__all__ = [
    "avi_with_info",
    "find_tokens",
    "jpeg_with_metadata",
    "pdf_report",
    "pdf_scan",
    "photo",
    "png_bomb",
    "video",
]


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


def _helvetica(widths: bool) -> pikepdf.Dictionary:
    font = pikepdf.Dictionary(Type=pikepdf.Name.Font, Subtype=pikepdf.Name.Type1,
                              BaseFont=pikepdf.Name.Helvetica,
                              Encoding=pikepdf.Name.WinAnsiEncoding)
    if widths:
        font.FirstChar, font.LastChar = 32, 126
        font.Widths = pikepdf.Array([556] * 95)
    return font


def pdf_report(lines: Iterable[str], *, info: dict[str, str] | None = None,
               annotation: str | None = None, attachment: str | None = None,
               javascript: str | None = None, form_field: str | None = None,
               outline: str | None = None, actual_text: str | None = None,
               form_xobject_text: str | None = None, glyph_by_glyph: str | None = None,
               xmp: str | None = None, password: str | None = None, compress: bool = True
               ) -> bytes:
    """A one-page text PDF, with identifiers in every place a PDF can hide them."""
    pdf = pikepdf.new()
    font = _helvetica(widths=glyph_by_glyph is not None)
    ops = ["BT", "/F1 11 Tf", "72 720 Td", "14 TL"]
    for line in lines:
        ops.append(f"({_escape(line)}) Tj T*")
    if actual_text is not None:
        ops.append(f"/Span <</ActualText ({_escape(actual_text)})>> BDC (see note) Tj EMC T*")
    ops.append("ET")
    if glyph_by_glyph is not None:  # one glyph per operator, positioned by its width
        ops.append("BT /F1 11 Tf 72 500 Td")
        for char in glyph_by_glyph:
            ops.append(f"({_escape(char)}) Tj 6.116 0 Td")
        ops.append("ET")
    resources = pikepdf.Dictionary(Font=pikepdf.Dictionary(F1=font))
    if form_xobject_text is not None:
        form = pdf.make_stream(f"BT /F1 11 Tf 0 0 Td ({_escape(form_xobject_text)}) Tj ET"
                               .encode())
        form.Type, form.Subtype = pikepdf.Name.XObject, pikepdf.Name.Form
        form.BBox = [0, 0, 400, 40]
        form.Resources = pikepdf.Dictionary(Font=pikepdf.Dictionary(F1=font))
        resources.XObject = pikepdf.Dictionary(Fm1=form)
        ops.append("q 1 0 0 1 72 600 cm /Fm1 Do Q")
    page = pikepdf.Dictionary(Type=pikepdf.Name.Page, MediaBox=[0, 0, 612, 792],
                              Resources=resources,
                              Contents=pdf.make_stream("\n".join(ops).encode()))
    pdf.pages.append(pikepdf.Page(page))
    page_obj = pdf.pages[0].obj
    if info:
        pdf.trailer.Info = pdf.make_indirect(
            pikepdf.Dictionary({"/" + k: pikepdf.String(v) for k, v in info.items()}))
    if xmp is not None:
        meta = pdf.make_stream(f'<x:xmpmeta xmlns:x="adobe:ns:meta/"><dc:creator>{xmp}'
                               "</dc:creator></x:xmpmeta>".encode())
        meta.Type, meta.Subtype = pikepdf.Name.Metadata, pikepdf.Name.XML
        pdf.Root.Metadata = meta
    annots = []
    if annotation is not None:
        annots.append(pdf.make_indirect(pikepdf.Dictionary(
            Type=pikepdf.Name.Annot, Subtype=pikepdf.Name.Text, Rect=[100, 100, 120, 120],
            Contents=pikepdf.String(annotation), T=pikepdf.String(annotation))))
    if attachment is not None:
        embedded = pdf.make_stream(attachment.encode())
        embedded.Type = pikepdf.Name.EmbeddedFile
        spec = pdf.make_indirect(pikepdf.Dictionary(
            Type=pikepdf.Name.Filespec, F=pikepdf.String(f"{attachment}.txt"),
            EF=pikepdf.Dictionary(F=embedded)))
        pdf.Root.Names = pikepdf.Dictionary(EmbeddedFiles=pikepdf.Dictionary(
            Names=pikepdf.Array([pikepdf.String(attachment), spec])))
        annots.append(pdf.make_indirect(pikepdf.Dictionary(
            Type=pikepdf.Name.Annot, Subtype=pikepdf.Name.FileAttachment,
            Rect=[130, 100, 150, 120], FS=spec)))
    if form_field is not None:
        widget = pdf.make_indirect(pikepdf.Dictionary(
            Type=pikepdf.Name.Annot, Subtype=pikepdf.Name.Widget, FT=pikepdf.Name.Tx,
            T=pikepdf.String("name"), V=pikepdf.String(form_field), Rect=[200, 100, 300, 120]))
        annots.append(widget)
        pdf.Root.AcroForm = pikepdf.Dictionary(Fields=pikepdf.Array([widget]))
    if annots:
        page_obj.Annots = pikepdf.Array(annots)
    if javascript is not None:
        action = pdf.make_indirect(pikepdf.Dictionary(
            S=pikepdf.Name.JavaScript, JS=pikepdf.String(f"app.alert('{javascript}');")))
        pdf.Root.OpenAction = action
    if outline is not None:
        item = pdf.make_indirect(pikepdf.Dictionary(Title=pikepdf.String(outline)))
        outlines = pdf.make_indirect(pikepdf.Dictionary(Type=pikepdf.Name.Outlines,
                                                        First=item, Last=item, Count=1))
        item.Parent = outlines
        pdf.Root.Outlines = outlines
    out = io.BytesIO()
    encryption = pikepdf.Encryption(owner=password, user=password) if password else False
    # deterministic_id: the trailer's /ID from the content, not the clock (QPDF refuses it
    # with encryption), so that the same arguments give the same bytes (tools/deid_golden.py)
    pdf.save(out, encryption=encryption, fix_metadata_version=False, compress_streams=compress,
             deterministic_id=not password)
    return out.getvalue()


def _band(image: Image.Image, text: str) -> Image.Image:
    draw = ImageDraw.Draw(image)
    width, height = image.size
    size = max(20, min(36, width // 18))
    draw.rectangle([10, height - 2 * size - 10, width - 10, height - 10], fill=(0, 0, 0))
    draw.text((20, height - 2 * size), text, font=ImageFont.load_default(size=size),
              fill=(255, 255, 255))
    return image


def photo(text: str | None = None, size: tuple[int, int] = (640, 480), seed: int = 0
          ) -> Image.Image:
    """A smooth photograph-like picture, with ``text`` burned in on a band when given."""
    rng = np.random.default_rng(seed)
    width, height = size
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([x / width * 120 + 60, y / height * 100 + 80,
                       (x + y) / (width + height) * 80 + 90], -1)
    pixels += rng.normal(0, 4, pixels.shape)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    return _band(image, text) if text else image


def jpeg_with_metadata(token: str, *, text: str | None = None, orientation: int = 1) -> bytes:
    """A JPEG whose EXIF (artist, description, GPS, date), XMP, IPTC and comment hold ``token``."""
    exif = Image.Exif()
    exif[0x013B] = token  # Artist
    exif[0x010E] = f"patient {token}"  # ImageDescription
    exif[0x0112] = orientation
    exif[0x0132] = "2020:03:12 10:11:12"
    gps = exif.get_ifd(0x8825)
    gps[1], gps[2] = "N", (48.0, 51.0, 24.0)
    out = io.BytesIO()
    xmp = f'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:li>{token}</rdf:li></x:xmpmeta>'
    photo(text).save(out, "JPEG", quality=90, exif=exif, comment=token.encode(),
                     xmp=xmp.encode())
    return _with_iptc(out.getvalue(), token)


def _with_iptc(jpeg: bytes, token: str) -> bytes:
    """``jpeg`` with an IPTC By-line holding ``token`` (APP13 'Photoshop 3.0' IRB 0x0404)."""
    record = b"\x1c\x02\x50" + struct.pack(">H", len(token)) + token.encode()  # 2:80 By-line
    record += b"\0" * (len(record) % 2)
    irb = b"8BIM\x04\x04\0\0" + struct.pack(">I", len(record)) + record
    body = b"Photoshop 3.0\0" + irb
    segment = b"\xff\xed" + struct.pack(">H", len(body) + 2) + body
    after_jfif = 4 + struct.unpack(">H", jpeg[4:6])[0] if jpeg[2:4] == b"\xff\xe0" else 2
    return jpeg[:after_jfif] + segment + jpeg[after_jfif:]


def pdf_scan(text: str) -> bytes:
    """A one-page image-only PDF (a scan), ``text`` burned into it."""
    out = io.BytesIO()
    photo(text, size=(850, 1100)).save(out, "PDF", resolution=100)
    return out.getvalue()


def png_bomb(width: int = 200_000, height: int = 200_000) -> bytes:
    """A tiny PNG whose header declares ``width`` x ``height`` pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def video(fmt: str = "avi", codec: str = "mjpeg", *, text: str | None = None,
          seconds: int = 2, fps: int = 10, size: tuple[int, int] = (320, 240),
          metadata: dict[str, str] | None = None) -> bytes:
    """A short video (``text`` burned into every frame when given)."""
    out = io.BytesIO()
    with av.open(out, "w", format=fmt) as container:
        if metadata:
            container.metadata.update(metadata)
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = size
        stream.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
        for i in range(seconds * fps):
            frame = av.VideoFrame.from_image(photo(text, size, seed=i))
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return out.getvalue()


def avi_with_info(token: str, *, text: str | None = None) -> bytes:
    """An AVI whose INFO chunks (title, artist, comment) hold ``token``."""
    return video(text=text, metadata={"title": token, "artist": token, "comment": token})


def find_tokens(blob: bytes, tokens: Iterable[str]) -> set[str]:
    """The tokens found in ``blob`` as bytes (ASCII, case-insensitive, or UTF-16)."""
    low = blob.lower()
    found = set()
    for token in tokens:
        if token.lower().encode() in low or token.encode("utf-16-be") in blob \
                or token.encode("utf-16-le") in blob:
            found.add(token)
    return found
