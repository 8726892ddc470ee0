"""``lake.ingest._read.read_part10`` returns the dataset ``dcmread`` returns, element for
element, with the same warnings and log records, or raises what it raises (issue 14.4).

Over pydicom's test files, the vendor data when present (``LAKE_SHARED_DATA``), and damaged
variants of explicit and implicit VR files: cut short at many points (in a header, in a
value), an unknown VR, an undefined-length value, an item delimiter at the top level, the
VR form of the first element switched, a command set, trailing bytes.
"""

from __future__ import annotations

import io
import logging
import os
import struct
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file, get_testdata_files
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from lake.ingest._read import _elements, read_part10


def _element_state(elem: Any) -> Any:
    if isinstance(elem, RawDataElement):
        return ("raw", tuple(elem), tuple(type(field) for field in elem))
    assert isinstance(elem, DataElement)
    value = elem.value
    if isinstance(value, Sequence):
        value = [_dataset_state(item) for item in value]
    return ("converted", type(elem), elem.tag, elem.VR, repr(value), elem.is_undefined_length,
            elem.file_tell, elem.private_creator)


def _dataset_state(ds: Dataset) -> Any:
    attributes = {}
    for name, value in sorted(vars(ds).items()):
        if name == "_dict":
            continue
        if isinstance(value, Dataset):
            value = _dataset_state(value)
        elif hasattr(value, "tell") and not isinstance(value, type):  # the file object read
            value = (type(value), value.tell(), getattr(value, "name", None))
        attributes[name] = repr(value)
    elements = [(type(tag), int(tag), _element_state(elem)) for tag, elem in ds._dict.items()]
    return type(ds), attributes, elements


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.seen: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.seen.append(f"{record.levelno}:{record.getMessage()}")


def _outcome(read: Any) -> Any:
    logger = logging.getLogger("pydicom")
    handler, level = _Records(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                ds = read()
            except Exception as exc:  # noqa: BLE001 - the same type must be raised
                ds = ("raised", type(exc))
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    result = _dataset_state(ds) if isinstance(ds, Dataset) else ds
    return result, [f"{w.category.__name__}:{w.message}" for w in caught], handler.seen


def _same(data: bytes) -> None:
    expected = _outcome(lambda: dcmread(io.BytesIO(data)))
    got = _outcome(lambda: read_part10(io.BytesIO(data), data))
    assert got == expected


def _files() -> Iterator[Path]:
    with warnings.catch_warnings():  # "download failures": the files held are listed
        warnings.simplefilter("ignore")
        listed = get_testdata_files("*")
    yield from (Path(p) for p in sorted(listed) if Path(p).is_file())
    shared = Path(os.environ.get("LAKE_SHARED_DATA", "/work/shared/data"))
    if shared.is_dir():
        found = sorted(p for p in shared.rglob("*") if p.is_file() and p.stat().st_size < 4 << 20)
        yield from found[:: max(1, len(found) // 300)]  # ~300 of ~2,000, every kind of folder


def test_every_test_file_reads_the_same() -> None:
    read = 0
    for path in _files():
        data = path.read_bytes()
        _same(data)
        read += 1
    assert read > 150


def _body_start(data: bytes) -> int:
    ds = dcmread(io.BytesIO(data), stop_before_pixels=True)
    meta_length = ds.file_meta["FileMetaInformationGroupLength"].value
    return 132 + 12 + int(meta_length)


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm", "rtplan.dcm",
                                  "MR_small_implicit.dcm", "SC_rgb.dcm", "JPEG2000.dcm"])
def test_damaged_files_read_the_same(name: str) -> None:
    data = Path(str(get_testdata_file(name))).read_bytes()
    start = _body_start(data)
    cuts = sorted({*range(start - 4, start + 40), *range(start, len(data), 97), len(data) - 1})
    for cut in cuts:
        _same(data[:cut])
    _same(data + b"\x00" * 5)  # trailing bytes, fewer than a header
    _same(data + b"\x00" * 11)
    body = data[start:]
    _same(data[:start] + b"\x00\x00\x00\x00" + struct.pack("<I", 2) + b"\x00\x00" + body)
    _same(data[:start] + b"\xfe\xff\x0d\xe0\x00\x00\x00\x00" + body)  # item delimiter
    _same(data[:start] + body[:4] + b"zz" + body[6:])  # first VR not a VR
    _same(data[:start] + body[:4] + b"QQ" + body[6:])  # letters, no standard VR
    _same(data[:start] + body[:6] + b"\xff\xff" + body[8:])  # a long short length


def test_the_loop_leaves_what_it_does_not_read_to_pydicom() -> None:
    header = struct.pack("<HH2sHI", 0x0009, 0x1010, b"UN", 0, 0xFFFFFFFF)
    assert _elements(header + b"\xfe\xff\xdd\xe0" + b"\0" * 4, 0, implicit=False) is None
    assert _elements(struct.pack("<HH2sH", 0x0010, 0x0010, b"PN", 10) + b"abc", 0,
                     implicit=False) is None  # the value runs past the end
    assert _elements(struct.pack("<HHI", 0x0010, 0x0010, 4) + b"ab  ", 0, implicit=True) == {
        0x00100010: RawDataElement(0x00100010, None, 4, b"ab  ", 8, True, True)}


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small_implicit.dcm"])
def test_damaged_file_meta_reads_the_same(name: str) -> None:
    data = Path(str(get_testdata_file(name))).read_bytes()
    start = _body_start(data)
    for cut in range(128, start + 14):  # every cut within the preamble and the file meta
        _same(data[:cut])
    meta, body = data[132:start], data[start:]
    head = data[:132]
    _same(head + meta[:12] + b"\xff\xff\xff\xff" + meta[16:] + body)  # group length wrong
    _same(head + meta + b"\xfe\xff\x0d\xe0\x00\x00\x00\x00" + body)  # item delimiter after
    _same(head + meta + b"\x08\x00\x05\x00OB\x00\x00\x04")  # a long header cut short after
    _same(head + meta + b"\x08\x00\x05\x00zz\x04\x00" + body)  # no VR after the meta
    _same(head + meta[:4] + b"zz" + meta[6:] + body)  # the first meta element without a VR
    _same(head + meta[:4] + b"QQ" + meta[6:] + body)
    _same(head + b"\x08\x00\x05\x00CS\x0a\x00ISO_IR 100" + body)  # no file meta at all
    _same(head + meta + meta[:12] + body)  # a group length again after the meta
