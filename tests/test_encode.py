"""The fast encoders give exactly what pydicom gives, on pydicom's whole test corpus."""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import pytest
from pydicom import config, dcmread, dcmwrite
from pydicom.data import get_testdata_file, get_testdata_files
from pydicom.dataset import Dataset

from lake import DeidRefusedError
from lake.deid import Deidentifier, load_profile
from lake.ingest._encode import encode_part10, header_json
from lake.vault import Secret
from tests.deid_corpus import write_corpus


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


def _deidentified_sources(tmp: Path) -> list[Path]:
    write_corpus(tmp, n_patients=1)
    planted = sorted(p for p in tmp.rglob("*") if p.is_file())
    return planted + [Path(p) for p in CORPUS]


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("profile", ["basic", "research", "teaching"])
def test_deidentified_bytes_equal_pydicom(profile: str, tmp_path: Path) -> None:
    """After the engine: raw, rewritten and engine-made elements, sequences at any depth."""
    engine = Deidentifier(load_profile(profile), Secret(b"encode-test-secret-0123456789abc"))
    compared = 0
    for path in _deidentified_sources(tmp_path):
        ds = dcmread(path)
        try:
            engine.apply(ds)
        except DeidRefusedError:
            continue
        mine = encode_part10(ds)  # first: dcmwrite converts Pixel Data in place
        ref = io.BytesIO()
        try:
            dcmwrite(ref, ds, enforce_file_format=True)
        except (TypeError, ValueError):
            continue  # pydicom itself cannot write this file
        assert mine == ref.getvalue(), path.name
        compared += 1
    assert compared > 50


@pytest.mark.filterwarnings("ignore")
def test_sequences_built_in_memory_equal_pydicom() -> None:
    """Items made in memory, nested three deep, defined and undefined lengths."""
    ds = dcmread(get_testdata_file("CT_small.dcm"))

    def item(depth: int) -> Dataset:
        inner = Dataset()
        inner.CodeValue = "113100"  # SH, even length
        inner.CodeMeaning = "Basic Application Confidentiality Profile"  # LO, odd length
        inner.add_new(0x00280106, "US", 7)  # a fixed VR
        inner.add_new(0x00281101, "US or SS", b"\x00\x01")  # ambiguous: pydicom corrects it
        if depth:
            inner.ContentSequence = [item(depth - 1), Dataset()]
        return inner

    ds.DeidentificationMethodCodeSequence = [item(2), item(0)]
    ds.ReferencedImageSequence = [item(1)]
    plain = Dataset()
    plain.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    plain.ReferencedSOPInstanceUID = "1.2.3.4.5"  # odd length: padded with NUL
    plain.is_undefined_length_sequence_item = True
    ds.SourceImageSequence = [plain]
    ds["SourceImageSequence"].is_undefined_length = True
    mine = encode_part10(ds)
    ref = io.BytesIO()
    dcmwrite(ref, ds, enforce_file_format=True)
    assert mine == ref.getvalue()
    back = dcmread(io.BytesIO(mine))
    assert back.DeidentificationMethodCodeSequence[0].ContentSequence[0].CodeValue == "113100"
    assert back.SourceImageSequence[0].ReferencedSOPInstanceUID == "1.2.3.4.5"
