"""The de-identification marks (PS3.15 Annex E attributes) in each form the engine stores them."""

from __future__ import annotations

import copy

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element

from lake.deid import Deidentifier, load_profile
from lake.ingest._encode import encode_part10, header_json
from lake.vault import Secret

SECRET = Secret(b"marks-test-secret-0123456789abcd")
CODES = 0x00120064  # DeidentificationMethodCodeSequence


def _written(elem: DataElement | RawDataElement) -> bytes:
    """``elem`` as pydicom writes it, explicit VR little endian."""
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_data_element(fp, elem)
    return bytes(fp.getvalue())


def _uri(_elem: object) -> str:
    return "urn:test"


@pytest.mark.parametrize("profile", ["basic", "research", "teaching"])
def test_the_method_code_sequence_as_bytes_is_the_sequence_built(profile: str) -> None:
    """A dataset read explicit VR little endian gets DeidentificationMethodCodeSequence as
    its encoded bytes (no datasets built): pydicom writes them as it writes the sequence
    built of datasets, converts them to the same items, and the lake's encoders give the
    same Part-10 bytes and DICOM JSON for both forms."""
    engine = Deidentifier(load_profile(profile), SECRET)
    path = get_testdata_file("CT_small.dcm")
    assert path is not None
    ds = dcmread(path)
    assert ds.original_encoding == (False, True)
    engine.apply(ds)
    stored = ds.get_item(CODES)
    assert isinstance(stored, RawDataElement) and stored.VR == "SQ"

    built = copy.deepcopy(ds)
    del built[CODES]
    engine._mark_codes(built)
    assert isinstance(built.get_item(CODES), DataElement)
    assert _written(stored) == _written(built[CODES])
    assert encode_part10(copy.deepcopy(ds)) == encode_part10(copy.deepcopy(built))
    assert header_json(copy.deepcopy(ds), 4096, _uri) == header_json(
        copy.deepcopy(built), 4096, _uri)
    assert header_json(copy.deepcopy(ds), 4096, _uri)[f"{CODES:08X}"]["Value"]
    converted = [(item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning)
                 for item in ds[CODES].value]
    assert converted == [(value, "DCM", meaning) for value, meaning in engine.plan.codes]


def test_a_dataset_built_in_memory_gets_the_sequence_built() -> None:
    """Without an explicit VR little endian reading (built in memory, implicit VR) the
    sequence is made of datasets, which every encoder writes in the dataset's encoding."""
    engine = Deidentifier(load_profile("basic"), SECRET)
    ds = Dataset()
    ds.PatientName = "Doe^Jane"
    engine.apply(ds)
    codes = ds.get_item(CODES)
    assert isinstance(codes, DataElement)
    assert [item.CodeValue for item in codes.value] == [v for v, _ in engine.plan.codes]
