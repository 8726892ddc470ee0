"""Acquisition parameters: one declaration, strict validation, derivation that never raises,
catalog columns generated from the declaration."""

from __future__ import annotations

import copy
import math
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


@given(st.lists(st.floats(allow_nan=True, allow_infinity=True) | st.integers(-5, 5),
                max_size=12), st.booleans())
def test_a_float_list_validates_item_by_item(values: list[float], floats_only: bool) -> None:
    """Float lists (checked all at once when every item is a float) validate as each item
    would alone: the whole list when every item is a finite number within the bounds."""
    if floats_only:
        values = [float(v) if not isinstance(v, float) else v for v in values]
    for p in PARAMETERS:
        if p.kind is not Kind.FLOAT_LIST:
            continue
        fits = 0 < len(values) <= p.max_items and not len(values) % p.multiple_of and all(
            math.isfinite(v) and p.low <= v <= p.high for v in values)
        got = validate_acquisition({p.name: values}).get(p.name)
        assert got == ([float(v) for v in values] if fits else None)
        assert got is None or all(type(v) is float for v in got)


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


_GE_MULTIPHASE = "dcm_qa_ge/In/SliceTimingMPh/2_fMRI_Multiphase_Des"
_UIH_DTI = "dcm_qa_stc/In/UIH/R002/12_dti_tra_dir16_PA_rot"


def _first_file(folder: str) -> Path:
    files = sorted(p for p in (SHARED_DATA / "vendors" / folder).glob("*") if p.is_file())
    if not files:
        pytest.skip("../shared/data is absent")
    return files[0]


def _set_raw(ds: pydicom.Dataset, tag: int, raw: bytes) -> None:
    """Replace an element's value by raw bytes (VR UN, as archives without the private
    dictionary keep it): the reader decodes them with the VR the vendor documents."""
    ds[tag].VR = "UN"
    ds[tag].value = raw


@pytest.mark.vendor
def test_a_malformed_private_element_leaves_only_its_own_parameters_out(
    tmp_path: Path,
) -> None:
    """Review N9: a non-numeric item in GE's ASSET R factors (0043,1083) or UIH's gradient
    (0065,1037) loses the values read from that element (and the GE readout, which would otherwise be
    computed unaccelerated: a different number), every other parameter is kept, and the
    instance is ingested, not refused."""
    ge = pydicom.dcmread(_first_file(_GE_MULTIPHASE))
    damaged = copy.deepcopy(ge)
    _set_raw(damaged, 0x00431083, b"0.5\\abc ")
    before, after = derive_acquisition(ge), derive_acquisition(damaged)
    lost = {"parallel_reduction_factor_in_plane", "parallel_reduction_out_of_plane",
            "effective_echo_spacing", "total_readout_time"}
    assert lost <= set(before)
    assert after == {k: v for k, v in before.items() if k not in lost}
    assert {"phase_encoding_direction", "number_of_arms", "trigger_time"} <= set(after)

    uih = pydicom.dcmread(_first_file(_UIH_DTI))
    broken = copy.deepcopy(uih)
    broken[0x00651037].VR = "LO"  # as text, one item not a number
    broken[0x00651037].value = ["0.5", "x", "0.1"]
    before, after = derive_acquisition(uih), derive_acquisition(broken)
    assert "diffusion_gradients" in before and "diffusion_gradients" not in after
    assert after == {k: v for k, v in before.items()
                     if k not in ("diffusion_gradients", "diffusion_gradient_frame")}

    path = tmp_path / "damaged.dcm"
    damaged.save_as(path)
    lk = lake.init(tmp_path / "lake", vault=tmp_path / "vault")
    summary = lk.ingest([str(path)], vault=tmp_path / "vault", profile="basic",
                        scheduler="sync")
    assert summary.ingested == 1 and summary.quarantined == 0
    lk.refresh()
    assert lk.sql("SELECT number_of_arms, parallel_reduction_factor_in_plane "
                  "FROM instances").fetchall() == [(64, None)]


@pytest.mark.vendor
def test_ge_spiral_arms_out_of_plane_factor_and_uih_displayed_direction() -> None:
    """dcm2niix's GE NumberOfPointsPerArm (0027,1060) and NumberOfArms (0027,1061) of
    GEMS_IMAG_01 (told apart by setting them to different values and running the Debian
    dcm2niix on a GE file marked as ASL, the only case its release writes them), the second
    ASSET R factor as ParallelReductionOutOfPlane, UIH's (0065,1005)."""
    ge = pydicom.dcmread(_first_file(_GE_MULTIPHASE))
    ge[0x00271060].value, ge[0x00271061].value = 77.0, 33.0
    ge[0x00431083].value = ["0.5", "0.5"]
    values = derive_acquisition(ge)
    assert values["number_of_points_per_arm"] == 77 and values["number_of_arms"] == 33
    assert values["parallel_reduction_out_of_plane"] == 2.0
    ge[0x00271061].value = 0.0  # dcm2niix writes only positive values
    assert "number_of_arms" not in derive_acquisition(ge)
    uih = pydicom.dcmread(_first_file(_UIH_DTI))
    assert derive_acquisition(uih)["phase_encoding_direction_displayed"] == "A->P"
    uih[0x00651005].value = "SMITH"
    assert "phase_encoding_direction_displayed" not in derive_acquisition(uih)


@pytest.mark.vendor
@pytest.mark.parametrize("pattern", ["random", "decreasing"])
def test_trigger_delay_time_equals_dcm2niix(pattern: str, tmp_path: Path) -> None:
    """GE TriggerDelayTime as the Debian dcm2niix writes it, on a GE multiphase series whose
    trigger times are rewritten: the last image's minus the first's (instance order) when
    positive, else the first image's; file names in the opposite order to instance numbers."""
    import json
    import shutil
    import subprocess

    from lake.nifti import series_to_nifti

    exe = shutil.which("dcm2niix")
    if exe is None:
        pytest.skip("dcm2niix is not installed")
    folder = _first_file(_GE_MULTIPHASE).parent
    rng = random.Random(pattern)
    source = tmp_path / "in"
    source.mkdir()
    datasets = []
    for path in sorted(folder.glob("*.dcm")):
        ds = pydicom.dcmread(path)
        number = int(ds.InstanceNumber)
        ds.TriggerTime = str(rng.randint(50, 30000) if pattern == "random"
                             else 20000 - 10 * number)
        ds.save_as(source / f"{1000 - number:04d}.dcm")
        datasets.append(ds)
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run([exe, "-b", "y", "-z", "n", "-f", "ref", "-o", str(out), str(source)],
                   check=True, capture_output=True)
    theirs = json.loads((out / "ref.json").read_text())["TriggerDelayTime"]
    volumes, refusals = series_to_nifti(datasets)
    assert refusals == [] and len(volumes) == 1
    assert volumes[0].sidecar["TriggerDelayTime"] == pytest.approx(theirs, rel=1e-6)


@pytest.mark.vendor
def test_philips_estimated_readout_equals_dcm2niix_reference() -> None:
    """dcm2niix's Philips estimates from the water-fat shift (no bandwidth per pixel in the
    phase direction): shift / (frequency x 3.4 x (echo train + 1)) x echo train, over the
    reconstructed phase lines - 1; on an enhanced B0 map (echo train 1, not written as
    EchoTrainLength) and a classic DTI series (echo train 31), equal to the references."""
    import json

    from lake.nifti import series_to_nifti

    cases = [("dcm_qa_enh/In/Philips", "dcm_qa_enh/Ref/Philips_WIP_B0_NS_801_e1.json"),
             ("dcm_qa_philips/In/Vanderbilt_2018/601_WIP_dti_ax",
              "dcm_qa_philips/Ref/WIP_dti_ax_601.json")]
    for folder, reference in cases:
        files = sorted(p for p in (SHARED_DATA / "vendors" / folder).glob("*") if p.is_file())
        if not files:
            pytest.skip("../shared/data is absent")
        ref = json.loads((SHARED_DATA / "vendors" / reference).read_text())
        volumes, _ = series_to_nifti([pydicom.dcmread(p) for p in files])
        sidecar = volumes[0].sidecar
        for key in ("EstimatedEffectiveEchoSpacing", "EstimatedTotalReadoutTime"):
            assert sidecar[key] == pytest.approx(ref[key], rel=1e-5), (folder, key)
