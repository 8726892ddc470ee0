"""The mutation corpus: a few hundred hostile variants of real DICOM files, reproducibly.

Every front door (file ingest, ``lake deid``, C-STORE, STOW-RS) must turn each of them into an
ingested instance or a quarantine record with a reason (``lake deid``: a one-line error, exit
1) - never a crash, a hang, a traceback or an identifier in an output. API::

    from tests.mutants import mutants, write_mutants, SEED_FILES
    for mutant in mutants(count=300, seed=0):   # the same bytes for the same arguments
        mutant.name        # "CT_small.length.017": seed file, operator, index; no original value
        mutant.operator    # one of OPERATORS
        mutant.data        # the bytes of a (damaged) Part-10 file
    paths = write_mutants(folder, count=300, seed=0)        # one file per mutant
    mutants(sources={"mine": data})  # mutate other files (e.g. the planted-identifier corpus)

The seeds are pydicom's own test files (explicit and implicit VR little endian, big endian,
deflated, JPEG 2000, RLE; CT, MR, RT plan, SR, segmentation, multi-frame), mutated where parsers
break: truncations, bit flips, length fields, VRs, tags, values, value multiplicity, sequence
delimiters and nesting depth, transfer syntaxes, the file meta, huge lengths, pixel module
attributes and character sets. Operators use the seed's element layout (read with pydicom), so
mutations land on element boundaries rather than only at random bytes.
"""

from __future__ import annotations

import io
import random
import struct
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataelem import RawDataElement
from pydicom.filewriter import write_file_meta_info

from lake._capture import capture

__all__ = ["OPERATORS", "SEED_FILES", "Mutant", "mutants", "seeds", "write_mutants"]

SEED_FILES = (
    "CT_small.dcm",
    "MR_small.dcm",
    "rtplan.dcm",
    "MR_small_bigendian.dcm",
    "MR_small_jp2klossless.dcm",
    "MR_small_RLE.dcm",
    "image_dfl.dcm",
    "test-SR.dcm",
    "emri_small.dcm",
    "liver.dcm",
    "JPEG2000.dcm",
)
"""pydicom's test files the corpus is made from."""

_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT",
             b"UV"}
_TEXT_VRS = {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC",
             "UI", "UR", "UT"}
_SYNTAXES = (
    "1.2.840.10008.1.2",  # implicit VR little endian
    "1.2.840.10008.1.2.1",  # explicit VR little endian
    "1.2.840.10008.1.2.2",  # explicit VR big endian
    "1.2.840.10008.1.2.1.99",  # deflated
    "1.2.840.10008.1.2.4.50",  # JPEG baseline
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 lossless
    "1.2.840.10008.1.2.5",  # RLE
    "1.2.3.4.5.6.7",  # unknown
    "",  # empty
    "NOT A UID",
)


@dataclass(frozen=True)
class Mutant:
    """One damaged file: ``name`` is ``<seed>.<operator>.<index>`` and holds no value."""

    name: str
    seed: str
    operator: str
    data: bytes


@dataclass(frozen=True)
class _Element:
    tag: int
    vr: str | None
    header: int  # offset of the element's first byte
    length_at: int
    length_size: int  # 2 or 4
    value_at: int
    length: int  # 0xFFFFFFFF when undefined


@dataclass(frozen=True)
class _Layout:
    data: bytes
    meta_end: int  # first byte of the dataset
    implicit: bool
    little: bool
    deflated: bool
    elements: tuple[_Element, ...]  # top level, in file order

    @property
    def endian(self) -> str:
        return "<" if self.little else ">"

    def pick(self, rng: random.Random, want: Callable[[_Element], bool] | None = None) -> _Element:
        chosen = [e for e in self.elements if want is None or want(e)] or list(self.elements)
        return rng.choice(chosen)


def _layout(data: bytes) -> _Layout:
    ds = dcmread(io.BytesIO(data), defer_size=None)
    meta = ds.file_meta
    syntax = str(meta.TransferSyntaxUID)
    implicit = syntax == "1.2.840.10008.1.2"
    little = syntax != "1.2.840.10008.1.2.2"
    deflated = syntax == "1.2.840.10008.1.2.1.99"
    meta_end = 132 + 12 + struct.unpack_from("<I", data, 140)[0]
    elements: list[_Element] = []
    if not deflated:
        for tag, elem in ds._dict.items():
            value_at = elem.value_tell if isinstance(elem, RawDataElement) else elem.file_tell
            vr = None if implicit else str(elem.VR)
            if implicit:
                header, length_at, size = value_at - 8, value_at - 4, 4
            elif vr is not None and vr.encode() in _LONG_VRS:
                header, length_at, size = value_at - 12, value_at - 4, 4
            else:
                header, length_at, size = value_at - 8, value_at - 2, 2
            fmt = ("<" if little else ">") + ("I" if size == 4 else "H")
            length = struct.unpack_from(fmt, data, length_at)[0]
            elements.append(_Element(int(tag), vr, header, length_at, size, value_at, length))
    return _Layout(data, meta_end, implicit, little, deflated, tuple(elements))


def _with_length(lay: _Layout, elem: _Element, length: int) -> bytes:
    fmt = lay.endian + ("I" if elem.length_size == 4 else "H")
    limit = 0xFFFFFFFF if elem.length_size == 4 else 0xFFFF
    out = bytearray(lay.data)
    struct.pack_into(fmt, out, elem.length_at, length & limit)
    return bytes(out)


def _end(lay: _Layout, elem: _Element) -> int:
    index = lay.elements.index(elem)
    if index + 1 < len(lay.elements):
        return lay.elements[index + 1].header
    return len(lay.data)


# ---- operators: (layout, rng) -> bytes ---------------------------------------------------


def _truncate(lay: _Layout, rng: random.Random) -> bytes:
    where = rng.choice(("meta", "header", "value", "anywhere", "near_end"))
    size = len(lay.data)
    if where == "meta":
        return lay.data[: rng.randrange(0, lay.meta_end)]
    if where == "header" and lay.elements:
        elem = lay.pick(rng)
        return lay.data[: rng.randrange(elem.header, elem.value_at)]
    if where == "value" and lay.elements:
        elem = lay.pick(rng)
        return lay.data[: rng.randrange(elem.value_at, max(elem.value_at + 1, _end(lay, elem)))]
    if where == "near_end":
        return lay.data[: size - rng.randrange(1, min(size, 600))]
    return lay.data[: rng.randrange(1, size)]


def _bitflip(lay: _Layout, rng: random.Random) -> bytes:
    out = bytearray(lay.data)
    span = min(len(out), (lay.elements[-1].value_at if lay.elements else len(out)) + 64)
    for _ in range(rng.randint(1, 8)):
        out[rng.randrange(0, span)] ^= 1 << rng.randrange(8)
    return bytes(out)


def _length(lay: _Layout, rng: random.Random) -> bytes:
    if not lay.elements:
        return _bitflip(lay, rng)
    elem = lay.pick(rng)
    big = 0xFFFFFFF0 if elem.length_size == 4 else 0xFFFE
    choice = rng.choice((elem.length + 1, elem.length - 1, 0, big, 0xFFFFFFFF,
                         elem.length + rng.randrange(2, 5000), rng.randrange(0, 1 << 31)))
    return _with_length(lay, elem, choice)


def _vr(lay: _Layout, rng: random.Random) -> bytes:
    if lay.implicit or not lay.elements:
        return _length(lay, rng)
    elem = lay.pick(rng)
    vr = rng.choice((b"ZZ", b"\0\0", b"SQ", b"UN", b"OB", b"US", b"FD", b"AT", b"PN", b"ox",
                     bytes([rng.randrange(256), rng.randrange(256)])))
    out = bytearray(lay.data)
    out[elem.header + 4 : elem.header + 6] = vr
    return bytes(out)


def _tag(lay: _Layout, rng: random.Random) -> bytes:
    if not lay.elements:
        return _bitflip(lay, rng)
    elem = lay.pick(rng)
    index = lay.elements.index(elem)
    previous = lay.elements[index - 1].tag if index else 0x00080005
    tag = rng.choice((0x00000000, 0xFFFEE000, 0xFFFEE0DD, 0x00091099, 0x7FE00010, previous,
                      rng.randrange(1 << 32)))
    out = bytearray(lay.data)
    struct.pack_into(lay.endian + "HH", out, elem.header, tag >> 16, tag & 0xFFFF)
    return bytes(out)


def _value(lay: _Layout, rng: random.Random) -> bytes:
    """Garbage in a text value: control bytes, backslashes (VM), escapes, high bytes."""
    def text(e: _Element) -> bool:
        return (e.vr in _TEXT_VRS if e.vr else True) and 0 < e.length < 0xFFFF

    if not lay.elements:
        return _bitflip(lay, rng)
    elem = lay.pick(rng, text)
    alphabet = rng.choice((b"\\\\\\\\", b"\0\x01\x1b$B\xff\xfe", b"\x1b(B\x1b$)C\x0e\x0f",
                           b"1.2..3.\\0\\", b"-+eE.,;: ", bytes(range(128, 256))))
    length = min(elem.length, max(0, _end(lay, elem) - elem.value_at))
    garbage = bytes(rng.choice(alphabet) for _ in range(length))
    return lay.data[: elem.value_at] + garbage + lay.data[elem.value_at + length :]


def _element(lay: _Layout, tag: int, vr: bytes, value: bytes) -> bytes:
    group, element = tag >> 16, tag & 0xFFFF
    e = lay.endian
    if lay.implicit:
        return struct.pack(e + "HHI", group, element, len(value)) + value
    if vr in _LONG_VRS:
        return struct.pack(e + "HH2sHI", group, element, vr, 0, len(value)) + value
    return struct.pack(e + "HH2sH", group, element, vr, len(value)) + value


def _insert(lay: _Layout, tag: int, block: bytes) -> bytes:
    """``block`` at its place among the top-level elements (before the first larger tag)."""
    at = next((e.header for e in lay.elements if e.tag > tag), len(lay.data))
    return lay.data[:at] + block + lay.data[at:]


def _sequence(lay: _Layout, body: bytes, defined: bool) -> bytes:
    e = lay.endian
    if defined:
        item = struct.pack(e + "HHI", 0xFFFE, 0xE000, len(body)) + body
        return _element(lay, 0x0040A730, b"SQ", item)
    item = (struct.pack(e + "HHI", 0xFFFE, 0xE000, 0xFFFFFFFF) + body
            + struct.pack(e + "HHI", 0xFFFE, 0xE00D, 0))
    head = _element(lay, 0x0040A730, b"SQ", b"")[:-4] if not lay.implicit else struct.pack(
        e + "HH", 0x0040, 0xA730)
    return head + struct.pack(e + "I", 0xFFFFFFFF) + item + struct.pack(e + "HHI", 0xFFFE,
                                                                         0xE0DD, 0)


def _deep(lay: _Layout, rng: random.Random) -> bytes:
    if lay.deflated:
        return _truncate(lay, rng)
    depth = rng.choice((150, 400, 1000, 3000))
    defined = rng.random() < 0.5
    body = _element(lay, 0x0040A160, b"UT", b"TEXT")
    for _ in range(depth):
        body = _sequence(lay, body, defined)
    return _insert(lay, 0x0040A730, body)


def _delimiters(lay: _Layout, rng: random.Random) -> bytes:
    """Sequences whose items overrun, never end, or hold something that is not an item."""
    if lay.deflated:
        return _bitflip(lay, rng)
    e = lay.endian
    leaf = _element(lay, 0x00081150, b"UI", b"1.2.3\0")
    kind = rng.choice(("overrun", "unterminated", "not_item", "stray_delimiter"))
    if kind == "overrun":
        item = struct.pack(e + "HHI", 0xFFFE, 0xE000, len(leaf) + 400) + leaf
        block = _element(lay, 0x00081140, b"SQ", item)
    elif kind == "unterminated":
        block = _sequence(lay, leaf, defined=False)[:-16]
    elif kind == "not_item":
        block = _element(lay, 0x00081140, b"SQ", struct.pack(e + "HHI", 0x0008, 0x1150, 6) + b"1.2.3\0")
    else:
        block = struct.pack(e + "HHI", 0xFFFE, 0xE0DD, 0) + struct.pack(e + "HHI", 0xFFFE,
                                                                        0xE00D, 0)
    return _insert(lay, 0x00081140, block)


def _meta(data: bytes, **changes: str) -> bytes:
    ds = dcmread(io.BytesIO(data), stop_before_pixels=True)
    meta = ds.file_meta
    for keyword, value in changes.items():
        if value:
            setattr(meta, keyword, value)
        elif keyword in meta:
            delattr(meta, keyword)
    sink = io.BytesIO()
    write_file_meta_info(sink, meta, enforce_standard=False)  # type: ignore[arg-type]
    old_end = 132 + 12 + struct.unpack_from("<I", data, 140)[0]
    return data[:132] + sink.getvalue() + data[old_end:]


def _syntax(lay: _Layout, rng: random.Random) -> bytes:
    return _meta(lay.data, TransferSyntaxUID=rng.choice(_SYNTAXES))


def _file_meta(lay: _Layout, rng: random.Random) -> bytes:
    kind = rng.choice(("no_preamble", "no_dicm", "group_length", "no_syntax", "meta_only",
                       "no_sop_class"))
    data = lay.data
    if kind == "no_preamble":
        return data[lay.meta_end :]
    if kind == "no_dicm":
        return data[:128] + b"DICX" + data[132:]
    if kind == "group_length":
        out = bytearray(data)
        struct.pack_into("<I", out, 140, rng.choice((0, 2, 0xFFFFFFFF, len(data) * 2)))
        return bytes(out)
    if kind == "no_syntax":
        return _meta(data, TransferSyntaxUID="")
    if kind == "meta_only":
        return data[: lay.meta_end]
    return _meta(data, MediaStorageSOPClassUID="")


def _huge(lay: _Layout, rng: random.Random) -> bytes:
    """An element declaring gigabytes, at the end or before the pixel data."""
    e = lay.endian
    tag = rng.choice((0x00091010, 0x00204000, 0x7FE00010))
    if lay.implicit:
        block = struct.pack(e + "HHI", tag >> 16, tag & 0xFFFF, 0xFFFFFFF0) + b"AAAA"
    else:
        block = struct.pack(e + "HH2sHI", tag >> 16, tag & 0xFFFF, b"UN", 0, 0xFFFFFFF0) + b"AAAA"
    if lay.deflated or rng.random() < 0.5:
        return lay.data + block
    return _insert(lay, tag, block)


def _pixels(lay: _Layout, rng: random.Random) -> bytes:
    """Rows, Columns, Bits Allocated, Samples per Pixel or Number of Frames made absurd."""
    targets = {0x00280010, 0x00280011, 0x00280100, 0x00280002, 0x00280008, 0x00280004}
    candidates = [e for e in lay.elements if e.tag in targets]
    if not candidates:
        return _length(lay, rng)
    elem = rng.choice(candidates)
    out = bytearray(lay.data)
    if elem.tag in (0x00280008, 0x00280004):  # IS / CS text
        text = rng.choice((b"-1", b"99999999", b"abc", b"1\\2", b"  ", b"\xff\xff"))
        value = text.ljust(elem.length, b" ")[: elem.length]
    else:
        value = struct.pack(lay.endian + "H", rng.choice((0, 1, 3, 0xFFFF, 64)))[: elem.length]
    out[elem.value_at : elem.value_at + len(value)] = value
    return bytes(out)


def _charset(lay: _Layout, rng: random.Random) -> bytes:
    value = rng.choice((b"ISO_IR 9999", b"ISO 2022 IR 87\\ISO 2022 IR 999", b"\\\\\\",
                        b"GB18030\\ISO_IR 192", b"\xff\xfe", b"ISO_IR 100\\ISO 2022 IR 13"))
    if len(value) % 2:
        value += b" "
    existing = [e for e in lay.elements if e.tag == 0x00080005]
    block = _element(lay, 0x00080005, b"CS", value)
    if existing:
        elem = existing[0]
        return lay.data[: elem.header] + block + lay.data[_end(lay, elem) :]
    if lay.deflated:
        return _bitflip(lay, rng)
    return _insert(lay, 0x00080005, block)


def _shuffle(lay: _Layout, rng: random.Random) -> bytes:
    """Elements out of order, repeated, or junk between them."""
    if len(lay.elements) < 3:
        return _bitflip(lay, rng)
    kind = rng.choice(("swap", "repeat", "junk"))
    a, b = sorted(rng.sample(range(len(lay.elements) - 1), 2))
    ea, eb = lay.elements[a], lay.elements[b]
    da, db = lay.data[ea.header : _end(lay, ea)], lay.data[eb.header : _end(lay, eb)]
    if kind == "swap":
        return (lay.data[: ea.header] + db + lay.data[_end(lay, ea) : eb.header] + da
                + lay.data[_end(lay, eb) :])
    if kind == "repeat":
        return lay.data[: _end(lay, eb)] + db + lay.data[_end(lay, eb) :]
    junk = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64)))
    return lay.data[: eb.header] + junk + lay.data[eb.header :]


OPERATORS: dict[str, Callable[[_Layout, random.Random], bytes]] = {
    "truncate": _truncate,
    "bitflip": _bitflip,
    "length": _length,
    "vr": _vr,
    "tag": _tag,
    "value": _value,
    "deep": _deep,
    "delimiters": _delimiters,
    "syntax": _syntax,
    "meta": _file_meta,
    "huge": _huge,
    "pixels": _pixels,
    "charset": _charset,
    "shuffle": _shuffle,
}
"""The mutation operators, by name."""


def seeds() -> dict[str, bytes]:
    """The seed files' bytes, by name without extension (skipping any pydicom lacks)."""
    found: dict[str, bytes] = {}
    for name in SEED_FILES:
        path = get_testdata_file(name)
        if path is not None:
            found[name.removesuffix(".dcm")] = Path(path).read_bytes()
    return found


def mutants(count: int = 300, *, seed: int = 0,
            sources: Mapping[str, bytes] | None = None) -> Iterator[Mutant]:
    """``count`` mutants, every operator on every source in turn, the same for the same seed.

    Parameters
    ----------
    count : int
        How many.
    seed : int
        The random seed.
    sources : mapping of str to bytes, optional
        Valid Part-10 files to mutate, by name (default: :func:`seeds`).
    """
    rng = random.Random(seed)
    files = dict(sources) if sources is not None else seeds()
    with capture():  # pydicom warns about the values it is made to write
        layouts = {name: _layout(data) for name, data in files.items()}
    names = sorted(layouts)
    operators = list(OPERATORS)
    for index in range(count):
        name = names[index % len(names)]
        operator = operators[(index // len(names) + index) % len(operators)]
        with capture():
            data = OPERATORS[operator](layouts[name], rng)
        yield Mutant(f"{name}.{operator}.{index:03d}", name, operator, data)


def write_mutants(folder: Path, count: int = 300, *, seed: int = 0,
                  sources: Mapping[str, bytes] | None = None) -> list[Path]:
    """Write :func:`mutants` to ``folder`` (created), one ``<name>.dcm`` each."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for mutant in mutants(count, seed=seed, sources=sources):
        path = folder / f"{mutant.name}.dcm"
        path.write_bytes(mutant.data)
        paths.append(path)
    return paths
