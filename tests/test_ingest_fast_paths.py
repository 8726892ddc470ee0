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
