"""Ingest's fast paths give what the plain path gives: each one switched off must not change
a single output byte, row or refusal (issue 14.3/14.4).

The plain path of each fast path is the code it replaced, patched back in; the outcomes of
``process_bytes`` under every built-in profile must be equal with and without it.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataelem import RawDataElement
from pydicom.tag import BaseTag

from lake.ingest import _instance
from lake.ingest._encode import element_value, encode_part10
from tests.deid_corpus import write_corpus
from tests.test_deid_golden import TOOL

PROFILES = ("basic", "research", "teaching")


#: UID bytes as senders write them: canonical (odd and even), padded with a space, with
#: leading or inner spaces, two NULs, several values, empty, spaces only, not a UID.
_UIDS = [b"1.2.840.113619.2.55.3", b"1.2.840.113619.2.5.3\x00", b"1.2.840.1136.2.5.3 ",
         b" 1.2.840.11.2.5.3", b"1.2.840 .11.2.5.3\x00", b"1.2.840.11.2.53\x00\x00",
         b"1.2.3\\1.2.4\x00", b"", b"  ", b"1.2.X.4\x00", b"1.2.840.10008.1.3.10"]
_TAGS = (0x00080016, 0x00080018, 0x0020000D, 0x0020000E)  # SOP class, instance, study, series


def _variants(folder: Path) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for tag in _TAGS:
        for index, value in enumerate(_UIDS):
            ds = dcmread(get_testdata_file("CT_small.dcm"))
            ds[tag] = RawDataElement(BaseTag(tag), "UI", len(value), value, 0, False, True)
            path = folder / f"{tag:08X}-{index}.dcm"
            path.write_bytes(encode_part10(ds))  # raw elements are copied as they are
            files[path.name] = path
    return files


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("fast-paths")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        files = _variants(folder)
    write_corpus(folder / "planted", 2)
    for path in sorted((folder / "planted").rglob("*.dcm")):
        files[str(path.relative_to(folder))] = path
    return files


@pytest.mark.parametrize("profile", PROFILES)
def test_canonical_uids_left_raw_by_the_checks_change_nothing(
    profile: str, inputs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``_check`` reads a canonical raw UID without converting it (``_uid_value``); the plain
    path converted every checked UID in place (``ds.get(keyword)``)."""
    fast = TOOL.outcomes(profile, inputs, tmp_path / "fast")
    monkeypatch.setattr(_instance, "_uid_value", element_value)
    plain = TOOL.outcomes(profile, inputs, tmp_path / "plain")
    assert fast == plain
    refused = [name for name, outcome in fast.items() if not TOOL.accepted(outcome)]
    assert 0 < len(refused) < len(fast)  # both kinds of outcome are compared


def test_the_pixel_entry_is_cut_from_the_header_as_the_expression_cuts_it() -> None:
    """``identity_sha256`` finds the PixelData entry with ``str.find`` (the regular expression
    scanned every character): the same text as ``_PIXEL_ENTRY.sub`` for 50,000 texts made of
    entries, near-entries, commas and braces, and for a real row's header."""
    import random

    from lake.ingest._identity import _PIXEL_ENTRY, _without_pixel_entries

    entry = '"7FE00010":{"BulkDataURI":"sha256:%s","vr":"O%s"}'
    pieces = [",", "{", "}", '"x"', entry % ("ab", "W"), entry % ("", "B"), entry % ("a1", "X"),
              entry % ("AB", "B"), '"7FE00010":{"BulkDataURI":"sha256:', "," + entry % ("0f", "B"),
              "7FE00010", ":", "sha256:"]
    rnd = random.Random(14)
    cut = 0
    for _ in range(50_000):
        text = "".join(rnd.choice(pieces) for _ in range(rnd.randint(0, 8)))
        expected = _PIXEL_ENTRY.sub("", text)
        assert _without_pixel_entries(text) == expected, text
        cut += expected != text
    assert cut > 10_000
    header = ('{"00080060":{"Value":["CT"],"vr":"CS"},"7FE00010":{"BulkDataURI":"sha256:'
              + "ab" * 32 + '","vr":"OW"}}')
    assert _without_pixel_entries(header) == '{"00080060":{"Value":["CT"],"vr":"CS"}}'


#: Pixel module elements and Pixel Data as senders may encode them: (tag, VR, value or None
#: for the file's own pixel bytes, cut by the count given as the name's suffix).
_PIXEL_MODULE = {
    "rows": (0x00280010, "US", b"\x80\x00"),
    "rows-two-values": (0x00280010, "US", b"\x80\x00\x80\x00"),
    "rows-one-byte": (0x00280010, "US", b"\x80"),
    "rows-empty": (0x00280010, "US", b""),
    "rows-as-ss": (0x00280010, "SS", b"\x80\x00"),
    "rows-as-un": (0x00280010, "UN", b"\x80\x00"),
    "columns-large": (0x00280011, "US", b"\x00\x80"),
    "samples-three": (0x00280002, "US", b"\x03\x00"),
    "samples-as-us-text": (0x00280002, "US", b"1 "),
    "bits-allocated-eight": (0x00280100, "US", b"\x08\x00"),
    "pixels-ob": (0x7FE00010, "OB", None),
    "pixels-ss": (0x7FE00010, "SS", None),
    "pixels-short-2": (0x7FE00010, "OW", None),
}


def _pixel_variants(folder: Path) -> dict[str, Path]:
    """CT_small with one pixel module element or its Pixel Data encoded otherwise; and
    pydicom's MR in implicit VR little endian and in explicit VR big endian."""
    files: dict[str, Path] = {}
    for name, (tag, vr, value) in _PIXEL_MODULE.items():
        ds = dcmread(get_testdata_file("CT_small.dcm"))
        if value is None:
            value = ds.PixelData[:-int(name.rsplit("-", 1)[1])] if name[-1].isdigit() \
                else ds.PixelData
        ds[tag] = RawDataElement(BaseTag(tag), vr, len(value), value, 0, False, True)
        files[name] = folder / f"{name}.dcm"
        files[name].write_bytes(encode_part10(ds))
    for name in ("MR_small_implicit.dcm", "MR_small_bigendian.dcm"):
        files[name] = Path(get_testdata_file(name))
    return files


@pytest.mark.parametrize("profile", PROFILES)
def test_pixel_module_and_meta_left_raw_change_nothing(
    profile: str, inputs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The checks read a raw US value of two bytes from its bytes and the size of a raw OB or
    OW Pixel Data from its value; ``accept`` stores that value as it is; the file meta's raw
    UIDs are compared and checked without converting them; the lake's meta elements are set
    by tag. The plain paths converted every such element in place (``ds[tag]``,
    ``ds.get(keyword)``) and set them by keyword."""
    from pydicom.datadict import keyword_for_tag

    from lake.ingest import _encode

    folder = tmp_path / "variants"
    folder.mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        files = {**inputs, **_pixel_variants(folder)}
    fast = TOOL.outcomes(profile, files, tmp_path / "fast")
    monkeypatch.setattr(_instance, "_unsigned_short",
                        lambda ds, tag, default=None: element_value(ds, tag, default))
    monkeypatch.setattr(_instance, "_pixel_data",
                        lambda ds: (ds[0x7FE00010].value, ds[0x7FE00010].VR))
    monkeypatch.setattr(_instance, "_set",
                        lambda ds, tag, _vr, value: setattr(ds, keyword_for_tag(tag), value))
    monkeypatch.setattr(_encode, "_same_raw_uid", lambda *_args: False)
    monkeypatch.setattr(_encode, "_filled", lambda meta, tag: not meta[tag].is_empty)
    plain = TOOL.outcomes(profile, files, tmp_path / "plain")
    assert fast == plain
    refused = {plain[name].split()[-1] for name in _PIXEL_MODULE if not TOOL.accepted(plain[name])}
    assert {"bad_image", "truncated"} <= refused  # refusals of the checks are compared too
    assert TOOL.accepted(plain["MR_small_implicit.dcm"])
    assert TOOL.accepted(plain["MR_small_bigendian.dcm"])


def test_the_checks_and_the_row_leave_the_pixel_module_raw() -> None:
    """What the fast paths are for: the checked pixel module elements and Pixel Data stay
    raw (never converted) through ``read_instance``."""
    from lake.ingest import read_instance

    data = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    ds = read_instance(data)
    for tag in (0x00280010, 0x00280011, 0x00280002, 0x00280100, 0x7FE00010):
        assert isinstance(ds._dict[tag], RawDataElement), f"{tag:08X}"  # type: ignore[index]
