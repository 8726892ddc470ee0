"""The header JSON's memo, its text and empty numbers give exactly what pydicom gives."""

from __future__ import annotations

import io
import json
import pickle
import warnings

import pytest
from pydicom import config, dcmread, dcmwrite
from pydicom.data import get_testdata_file
from pydicom.dataelem import RawDataElement, empty_value_for_VR
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag

from lake.ingest._encode import JsonMemo, encode_part10, header_json, header_text
from tests.test_encode import CORPUS


@pytest.fixture(autouse=True)
def _lenient(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config.settings, "reading_validation_mode", config.IGNORE)
    monkeypatch.setattr(config.settings, "writing_validation_mode", config.IGNORE)


def _handler(_elem: object) -> str:
    return "urn:x"


def _text(header: dict[str, object]) -> str:
    return json.dumps(header, separators=(",", ":"), sort_keys=True)


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("size", [4096, 7])
def test_memoised_headers_equal_pydicom(size: int) -> None:
    """Every file of pydicom's corpus, twice, through one memo (a small one is emptied
    again and again): pydicom's JSON, and ``header_text`` is ``json.dumps``'s text."""
    memo = JsonMemo(size)
    compared = 0
    for _ in range(2):
        for path in CORPUS:
            try:
                expected = dcmread(path).to_json_dict(4096, _handler)
            except ValueError:
                continue  # pydicom itself cannot serialise this file
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                header = header_json(dcmread(path), 4096, _handler, memo)
            assert _text(header) == _text(expected), path
            assert header_text(header) == _text(header), path
            compared += 1
    assert compared > 200
    assert 0 < len(memo.entries) <= size
    assert any(hasattr(entry, "text") for entry in memo.entries.values())


def test_a_memo_is_pickled_empty() -> None:
    memo = JsonMemo(100)
    header_json(dcmread(get_testdata_file("CT_small.dcm")), 4096, _handler, memo)
    assert memo.entries and memo.keys
    again = pickle.loads(pickle.dumps(memo))
    assert again.size == 100 and not again.entries and not again.keys


def test_header_text_escapes_what_json_escapes() -> None:
    header = {"00100010": {"vr": "PN", "Value": [{"Alphabetic": "Caf\u00e9^\"J\"\\"}]},
              "not a tag": {"vr": "LO", "Value": ["\u2028"]}, "00080060": {"vr": "CS"}}
    assert header_text(header) == _text(header)


@pytest.mark.parametrize("vr, tag", [("DS", 0x00101020), ("IS", 0x00180091),
                                     ("US", 0x00280010), ("UL", 0x00081160),
                                     ("SS", 0x00189219), ("SL", 0x00186020),
                                     ("FL", 0x00189087), ("FD", 0x00189089),
                                     ("LO", 0x00081030)])
def test_empty_numbers_are_written_and_serialised_as_pydicom_does(vr: str, tag: int) -> None:
    """An empty number read raw (its value ``None``) at the top level: dcmwrite's bytes and
    pydicom's JSON, without converting it."""
    def read() -> Dataset:
        ds = dcmread(get_testdata_file("CT_small.dcm"))
        key = BaseTag(tag)
        ds._dict[key] = RawDataElement(key, vr, 0, empty_value_for_VR(vr, raw=True), 0,
                                       False, True)
        return ds

    ref = io.BytesIO()
    dcmwrite(ref, read(), enforce_file_format=True)
    ds = read()
    assert encode_part10(ds) == ref.getvalue()
    assert isinstance(ds._dict[tag], RawDataElement) or vr == "LO"  # left raw
    assert _text(header_json(read(), 4096, _handler, JsonMemo())) == _text(
        read().to_json_dict(4096, _handler))
