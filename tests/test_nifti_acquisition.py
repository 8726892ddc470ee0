"""Acquisition parameters: one declaration, strict validation, derivation that never raises,
catalog columns generated from the declaration."""

from __future__ import annotations

import copy
import random
from pathlib import Path

import pydicom
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.data import get_testdata_file

import lake
from lake.catalog import ACQUISITION_COLUMNS, INSTANCES
from lake.nifti import (
    ACQUISITION_NAMES,
    PARAMETERS,
    Kind,
    derive_acquisition,
    validate_acquisition,
)
from tests.conftest import SHARED_DATA


def test_each_parameter_is_declared_once_with_unit_doc_and_sources() -> None:
    names = [p.name for p in PARAMETERS]
    assert len(names) == len(set(names))
    for p in PARAMETERS:
        assert p.name.islower() and " " not in p.name
        assert p.doc and p.sources, p.name
        if p.kind in (Kind.ENUM, Kind.ENUM_LIST):
            assert p.choices and all(len(c) <= 12 for c in p.choices), p.name


def test_catalog_columns_are_the_declared_parameters() -> None:
    assert [c.name for c in ACQUISITION_COLUMNS] == [p.name for p in PARAMETERS]
    schema = INSTANCES.schema
    for p in PARAMETERS:
        assert p.name in schema.names
        assert p.doc.split(",")[0] in next(c.doc for c in ACQUISITION_COLUMNS if c.name == p.name)


@given(st.text(min_size=1, max_size=40))
def test_no_free_text_passes_validation(text: str) -> None:
    for p in PARAMETERS:
        value = validate_acquisition({p.name: text}).get(p.name)
        assert value is None or value in p.choices
        listed = validate_acquisition({p.name: [text]}).get(p.name)
        assert listed is None or all(v in p.choices for v in listed)


@given(st.floats(allow_nan=True, allow_infinity=True))
def test_numbers_are_finite_and_within_bounds(number: float) -> None:
    for p in PARAMETERS:
        if p.kind is Kind.FLOAT:
            value = validate_acquisition({p.name: number}).get(p.name)
            assert value is None or (p.low <= value <= p.high)


def test_lists_are_bounded_and_typed() -> None:
    assert validate_acquisition({"slice_timing": [0.0] * 5000}) == {}
    assert validate_acquisition({"slice_positions": [0.0, 1.0]}) == {}  # not x, y, z
    assert validate_acquisition({"mosaic_grid": [6, 6]}) == {"mosaic_grid": [6, 6]}
    assert validate_acquisition({"mosaic_grid": [6.5, 6]}) == {}
    assert validate_acquisition({"complex_components": ["phase", "PHASE"]}) == {}
    assert validate_acquisition({"unknown": 1, "mosaic_tiles": True}) == {}


def _vendor_files() -> list[str]:
    root = SHARED_DATA / "vendors"
    if not root.is_dir():
        return []
    picks = [
        "dcm_qa_ts/In/1.dcm",
        "dcm_qa_stc/In/GE/ProtocolDataBlock/mr_0004/axial_epi_fmri_interleaved_i_to_s-00001.dcm",
        "dcm_qa_enh/In/Philips/IM_0027_fMAP.dcm",
    ]
    return [str(root / p) for p in picks if (root / p).is_file()]


@pytest.mark.vendor
@pytest.mark.parametrize("path", _vendor_files())
def test_damaged_private_elements_never_raise(path: str) -> None:
    """Random bytes in every private element: derivation still returns (validated) values."""
    original = pydicom.dcmread(path)
    rng = random.Random(path)
    for _ in range(15):
        ds = copy.deepcopy(original)
        for elem in ds.iterall():
            if elem.tag.is_private and elem.tag.element >= 0x1000 and rng.random() < 0.5:
                size = rng.choice([0, 1, 3, 8, 64, 4096])
                elem.VR = "UN"
                elem.value = bytes(rng.randrange(256) for _ in range(size))
        values = derive_acquisition(ds)
        assert validate_acquisition(values) == values


@settings(max_examples=30)
@given(st.binary(max_size=512))
def test_garbage_csa_header_never_raises(garbage: bytes) -> None:
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    ds.Manufacturer = "SIEMENS"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "MOSAIC"]
    ds.add_new(0x00290010, "LO", "SIEMENS CSA HEADER")
    ds.add_new(0x00291010, "OB", garbage)
    ds.add_new(0x00291020, "OB", garbage)
    assert validate_acquisition(derive_acquisition(ds)) == derive_acquisition(ds)


_MOSAICS = "dcm_qa/In/TotalReadoutTime/PF_PAT_POS_PFOV_PEres_INTERP_test2"
_QUERY = (f"SELECT SeriesNumber, InstanceNumber, {', '.join(ACQUISITION_NAMES)} "
          "FROM instances ORDER BY SeriesNumber, InstanceNumber")


def _mosaics_from_files(tmp_path: Path) -> tuple[list[Path], list[tuple[object, ...]]]:
    """Siemens EPI mosaics of dcm_qa and their parameters as file ingest derives them."""
    files = sorted((SHARED_DATA / _MOSAICS).rglob("*.IMA"))
    if not files:
        pytest.skip("../shared/data is absent")
    by_files = lake.init(tmp_path / "files", vault=tmp_path / "vault-files")
    by_files.ingest([str(f) for f in files], vault=tmp_path / "vault-files", profile="basic",
                    scheduler="sync")
    rows = by_files.sql(_QUERY).fetchall()
    assert len(rows) == len(files) > 20
    tiles = ACQUISITION_NAMES.index("mosaic_tiles") + 2
    readout = ACQUISITION_NAMES.index("total_readout_time") + 2
    assert all(row[tiles] and row[readout] for row in rows)  # mosaics, from the CSA header
    return files, rows


@pytest.mark.vendor
@pytest.mark.parametrize("workers", [0, 2])
def test_cstore_derives_what_file_ingest_derives(workers: int, tmp_path: Path) -> None:
    """Issue 10.1 end to end over the network: Siemens EPI mosaics sent with dcmtk's storescu
    to ``lake serve dicom`` (in the server's process, and in its spawned de-identification
    workers) get the same acquisition parameters as the same files ingested from disk."""
    from lake.net import DicomServer, ServerConfig
    from tests.net_peers import dcmtk, require

    require("storescu")
    files, from_files = _mosaics_from_files(tmp_path)
    by_net = lake.init(tmp_path / "net", vault=tmp_path / "vault-net")
    config = ServerConfig(port=0, workers=workers, profile="basic")
    with DicomServer(by_net, by_net.secret(tmp_path / "vault-net"), config) as server:
        sent = dcmtk("storescu", "-aec", "LAKE", "-nh", "127.0.0.1", str(server.port), *files)
        assert sent.returncode == 0, sent.stderr[-500:]
        server.flush()
    by_net.refresh()
    assert by_net.sql(_QUERY).fetchall() == from_files


@pytest.mark.vendor
@pytest.mark.network
@pytest.mark.parametrize("via", ["get", "move"])
def test_pull_derives_what_file_ingest_derives(via: str, tmp_path: Path) -> None:
    """Issue 10.1, the third front door: the same mosaics on a PACS (Orthanc), pulled by
    C-GET and by C-MOVE, get the parameters file ingest derives."""
    from lake.net import find_studies, parse_peer, pull_studies
    from tests.net_peers import Orthanc, free_port, require

    require("Orthanc")
    files, from_files = _mosaics_from_files(tmp_path)
    port = free_port()
    pulled = lake.init(tmp_path / "pulled", vault=tmp_path / "vault-pulled")
    with Orthanc(tmp_path / "orthanc", modalities={"LAKE": ("127.0.0.1", port)}) as pacs:
        assert pacs.upload(files) == len(files)
        peer = parse_peer(f"ORTHANC@127.0.0.1:{pacs.dicom_port}")
        studies = find_studies(peer, ["ModalitiesInStudy=MR"], all_studies=True)
        summary = pull_studies(pulled, pulled.secret(tmp_path / "vault-pulled"), peer, studies,
                               via=via, listen=("127.0.0.1", port), profile="basic")
    assert summary.ingested == len(files)
    pulled.refresh()
    assert pulled.sql(_QUERY).fetchall() == from_files
