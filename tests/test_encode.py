"""The fast encoders give exactly what pydicom gives, on pydicom's whole test corpus."""

from __future__ import annotations

import io
import json
import warnings

import pytest
from pydicom import config, dcmread, dcmwrite
from pydicom.data import get_testdata_files

from lake.ingest._encode import encode_part10, header_json


def _corpus() -> list[str]:
    files = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in get_testdata_files("*.dcm"):
            try:
                ds = dcmread(path)
                if ds.file_meta.get("TransferSyntaxUID") and "SOPClassUID" in ds:
                    files.append(path)
            except Exception:  # noqa: BLE001 - pydicom's corpus has deliberately broken files
                continue
    return files


CORPUS = _corpus()


@pytest.fixture(autouse=True)
def _lenient(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config.settings, "reading_validation_mode", config.IGNORE)
    monkeypatch.setattr(config.settings, "writing_validation_mode", config.IGNORE)


def test_corpus_is_large() -> None:
    assert len(CORPUS) > 100


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("path", CORPUS, ids=lambda p: p.rsplit("/", 1)[-1])
def test_part10_bytes_equal_pydicom(path: str) -> None:
    ref = io.BytesIO()
    try:
        dcmwrite(ref, dcmread(path), enforce_file_format=True)
    except (TypeError, ValueError):
        pytest.skip("pydicom itself cannot write this file")
    assert encode_part10(dcmread(path)) == ref.getvalue()


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("path", CORPUS, ids=lambda p: p.rsplit("/", 1)[-1])
def test_json_equals_pydicom(path: str) -> None:
    def handler(_elem: object) -> str:
        return "urn:x"

    try:
        expected = dcmread(path).to_json_dict(4096, handler)
    except ValueError:
        pytest.skip("pydicom itself cannot serialise this file")
    assert json.dumps(header_json(dcmread(path), 4096, handler), sort_keys=True) == json.dumps(
        expected, sort_keys=True
    )


@pytest.mark.filterwarnings("ignore")
def test_modified_elements_are_encoded_by_pydicom() -> None:
    path = CORPUS[0]
    ds = dcmread(path)
    ds.PatientName = "Changed^Name"
    ds.add_new(0x00204000, "LT", "a comment")
    ref = io.BytesIO()
    dcmwrite(ref, ds, enforce_file_format=True)
    assert encode_part10(ds) == ref.getvalue()
    assert dcmread(io.BytesIO(encode_part10(ds))).PatientName == "Changed^Name"
