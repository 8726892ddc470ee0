"""The derivation reads ImageType and Manufacturer from their raw bytes at ingest: the same
results as through pydicom's conversion, on vendor files and on odd values.

The synthetic datasets carry one private element of each vendor's reader (a Siemens table
position, a GE multiband factor, a Philips scale slope, a UIH b-value), so the vendor the
derivation recognised shows in what it returns, and ImageType shows in ``complex_components``.
"""

from __future__ import annotations

import copy
import io
from pathlib import Path

import pydicom
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.data import get_testdata_file
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from lake.nifti import derive_acquisition, read_part10
from tests.conftest import SHARED_DATA

_IMAGE_TYPE, _MANUFACTURER = 0x00080008, 0x00080070


def _converted(ds: Dataset) -> Dataset:
    """A copy with ImageType and Manufacturer converted by pydicom (the reference path)."""
    copied = copy.deepcopy(ds)
    for tag in (_IMAGE_TYPE, _MANUFACTURER):
        if tag in copied:
            copied[tag]  # Dataset.__getitem__ converts the raw element in place
    return copied


def _same(ds: Dataset) -> dict[str, object]:
    reference = _converted(ds)
    derived = derive_acquisition(ds)
    assert derived == derive_acquisition(reference)
    return dict(derived)


def _vendor_files() -> list[Path]:
    """A few classic (one-frame) files of each vendor repository."""
    root = SHARED_DATA / "vendors"
    if not root.is_dir():
        return []
    found = []
    for repository in sorted(root.iterdir()):
        files = sorted(p for p in (repository / "In").rglob("*") if p.is_file())
        step = max(1, len(files) // 6)
        found.extend(files[::step][:6])
    return found


@pytest.mark.vendor
def test_vendor_files_derive_the_same_from_raw_bytes() -> None:
    paths = _vendor_files()
    if not paths:
        pytest.skip("no vendor data")
    raw_seen = 0
    for path in paths:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (pydicom.errors.InvalidDicomError, OSError):
            continue
        raw_seen += isinstance(ds._dict.get(_IMAGE_TYPE), RawDataElement)
        derived = _same(ds)
        # the fast path leaves the elements raw: it was taken
        for tag in (_IMAGE_TYPE, _MANUFACTURER):
            assert tag not in ds or isinstance(ds._dict[tag], RawDataElement)
        # an export's reader (lake.nifti.Part10) takes pydicom's path: the same component
        # (its private elements are another matter: a Philips scale slope is not found there)
        part10 = derive_acquisition(read_part10(path.read_bytes()))  # type: ignore[arg-type]
        assert part10.get("complex_components") == derived.get("complex_components")
    assert raw_seen >= 20


def _with_raw(tag_values: dict[int, bytes | None], vr: str | None, implicit: bool) -> Dataset:
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"), stop_before_pixels=True)
    for tag in (_IMAGE_TYPE, _MANUFACTURER):
        del ds[tag]
    ds.add_new(0x00210010, "LO", "SIEMENS MR SDS 01")  # table position
    ds.add_new(0x00211005, "IS", [0, 0, -1200])
    ds.add_new(0x00430010, "LO", "GEMS_PARM_01")  # multiband factor
    ds.add_new(0x004310B6, "LO", "3")
    ds.add_new(0x20050010, "LO", "PHILIPS MR IMAGING DD 001")  # scale slope
    ds.add_new(0x2005100E, "FL", 2.0)
    ds.add_new(0x00650010, "LO", "IMAGE PRIVATE HEADER")  # b-value
    ds.add_new(0x00651009, "FD", 1000.0)
    for tag, value in tag_values.items():
        if value is None:
            continue
        elem_vr = None if implicit else (vr or ("CS" if tag == _IMAGE_TYPE else "LO"))
        ds._dict[Tag(tag)] = RawDataElement(Tag(tag), elem_vr, len(value), value, 0, implicit,
                                            True)
    return ds


_ODD_IMAGE_TYPES = [
    b"ORIGINAL\\PRIMARY\\M\\ND ", b"DERIVED\\PRIMARY\\P\\ND\\NORM", b"derived\\secondary\\phase",
    b"ORIGINAL", b"PHASE", b"ORIGINAL\\PRIMARY\\M_FFE\\M\\FFE", b"ORIGINAL\\PRIMARY\\R_SE\\R",
    b"ORIGINAL \\ PRIMARY \\ I ", b"ORIGINAL\\PRIMARY\\IMAGINARY\x00", b"  ", b"\x00\x00",
    b"\\\\", b"ORIGINAL\\\\M", b"", b"ORIG\xe9NAL\\P", b"MAGNITUDE\\PHASE_MAP",
]
_ODD_MANUFACTURERS = [
    b"SIEMENS ", b"Siemens Healthineers", b"siemens", b"GE MEDICAL SYSTEMS", b" Philips\x00",
    b"Philips Medical Systems ", b"UIH", b"United Imaging Healthcare", b"TOSHIBA_MEC",
    b"Canon Medical Systems", b"SIEMENS\\GE", b"\xc9GE", b"\x1b(BSIEMENS", b"", b"  ",
    b"GE\x00X", b"Agfa", None,
]


@pytest.mark.parametrize("implicit", [False, True])
@pytest.mark.parametrize("manufacturer", _ODD_MANUFACTURERS)
def test_odd_manufacturers_give_pydicoms_vendor(manufacturer: bytes | None,
                                                 implicit: bool) -> None:
    _same(_with_raw({_IMAGE_TYPE: b"ORIGINAL\\PRIMARY\\M", _MANUFACTURER: manufacturer},
                    None, implicit))


@pytest.mark.parametrize("implicit", [False, True])
@pytest.mark.parametrize("image_type", _ODD_IMAGE_TYPES)
def test_odd_image_types_give_pydicoms_component(image_type: bytes, implicit: bool) -> None:
    _same(_with_raw({_IMAGE_TYPE: image_type, _MANUFACTURER: b"SIEMENS"}, None, implicit))


def test_the_vendor_and_component_show_in_the_derived_values() -> None:
    """What the comparisons rest on: each vendor's reader, and the component, change them."""
    seen = {}
    for name in (b"SIEMENS", b"GE MEDICAL SYSTEMS", b"Philips", b"UIH", b"Canon"):
        derived = _same(_with_raw({_IMAGE_TYPE: b"ORIGINAL\\PRIMARY\\P",
                                   _MANUFACTURER: name}, None, False))
        assert derived.pop("complex_components") == ["phase"]
        seen[name] = derived
    assert seen[b"SIEMENS"] == {"table_position": [0.0, 0.0, -1200.0]}
    assert seen[b"GE MEDICAL SYSTEMS"]["multiband_acceleration_factor"] == 3
    assert seen[b"Philips"] == {"scale_slopes": [2.0]}
    assert seen[b"UIH"] == {"diffusion_b_values": [1000.0]}
    assert seen[b"Canon"] == {}  # no reader of its own (nor any other's)


def test_other_vrs_go_through_pydicom() -> None:
    """An element of another VR (UN from an archive) is converted by pydicom, as before."""
    ds = _with_raw({_IMAGE_TYPE: b"ORIGINAL\\PRIMARY\\P", _MANUFACTURER: b"GE MEDICAL"}, "UN",
                   False)
    derived = _same(ds)
    assert derived["multiband_acceleration_factor"] == 3
    assert derived["complex_components"] == ["phase"]


_PIECES = st.sampled_from(["ORIGINAL", "PRIMARY", "M", "P", "R", "I", "PHASE", "REAL",
                           "IMAGINARY", "MAGNITUDE", "_", "\\", " ", "\x00", "m", "p", "ND",
                           "SIEMENS", "GE", "Philips", "é"])


@settings(max_examples=200, deadline=None)
@given(st.lists(_PIECES, max_size=8), st.lists(_PIECES, max_size=4), st.booleans())
def test_any_mix_of_pieces_gives_pydicoms_results(image_type: list[str],
                                                  manufacturer: list[str],
                                                  implicit: bool) -> None:
    _same(_with_raw({_IMAGE_TYPE: "".join(image_type).encode("latin-1"),
                     _MANUFACTURER: "".join(manufacturer).encode("latin-1")}, None, implicit))


#: ImageType and Manufacturer as senders may pad them: not as pydicom writes them (odd
#: lengths, NULs, more than one trailing space), and as pydicom writes them (which stay raw).
_PADDED = {
    "type-odd-space": (_IMAGE_TYPE, "CS", b"ORIGINAL\\PRIMARY\\AXIAL "),
    "type-nul": (_IMAGE_TYPE, "CS", b"ORIGINAL\\PRIMARY\\AXIAL\x00"),
    "type-two-spaces": (_IMAGE_TYPE, "CS", b"ORIGINAL\\PRIMARY\\AX  "),
    "type-odd-leading-space": (_IMAGE_TYPE, "CS", b" ORIGINAL\\PRIMARY"),
    "type-odd": (_IMAGE_TYPE, "CS", b"ORIGINAL\\PRIMARY\\AXIA"),
    "maker-odd": (_MANUFACTURER, "LO", b"SIEMENS"),
    "maker-nuls": (_MANUFACTURER, "LO", b"GE MEDICAL SYSTEMS\x00\x00"),
    "maker-three-spaces": (_MANUFACTURER, "LO", b"Philips   "),
    "maker-nul-odd": (_MANUFACTURER, "LO", b"SIEMENS\x00"),
    "type-canonical": (_IMAGE_TYPE, "CS", b"ORIGINAL\\PRIMARY\\AXIAL\\ "),
    "maker-canonical": (_MANUFACTURER, "LO", b"SIEMENS "),
    "maker-leading-space": (_MANUFACTURER, "LO", b" Philips"),
}


def _padded_files(folder: Path) -> dict[str, Path]:
    """CT_small and MR_small (explicit VR) with one of :data:`_PADDED`."""
    from lake.ingest._encode import encode_part10

    files = {}
    for name, (tag, vr, value) in _PADDED.items():
        for base in ("CT_small.dcm", "MR_small.dcm"):
            ds = pydicom.dcmread(get_testdata_file(base))
            ds[tag] = RawDataElement(Tag(tag), vr, len(value), value, 0, False, True)
            path = folder / f"{name}-{base}"
            path.write_bytes(encode_part10(ds))  # raw elements are copied as they are
            files[path.name] = path
    return files


@pytest.mark.parametrize("profile", ["basic", "research"])
def test_padded_image_types_and_manufacturers_are_stored_as_before(
    profile: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ingest stores the same header and row as when the derivation converted ImageType and
    Manufacturer (the plain path, patched back in): a value that is not padded as pydicom
    pads it is converted, so the stored header has pydicom's bytes (an even length), as
    before; a value padded as pydicom pads it may stay raw, its bytes are the same."""
    from lake.nifti import _derive, _siemens
    from tests.test_deid_golden import TOOL

    files = _padded_files(tmp_path)
    fast = TOOL.outcomes(profile, files, tmp_path / "fast")
    monkeypatch.setattr(_derive, "manufacturer", lambda ds: str(ds.get("Manufacturer") or ""))
    monkeypatch.setattr(_derive, "image_type", lambda ds: ds.get("ImageType"))
    monkeypatch.setattr(_siemens, "image_type", lambda ds: ds.get("ImageType"))
    plain = TOOL.outcomes(profile, files, tmp_path / "plain")
    assert len(plain) == 2 * len(_PADDED)
    assert all(TOOL.accepted(outcome) for outcome in plain.values())
    assert {name: fast[name] for name in fast if fast[name] != plain[name]} == {}


def test_padded_values_leave_the_stored_header_with_even_lengths(tmp_path: Path) -> None:
    """What the comparison above rests on: the stored header of a converted value has
    pydicom's bytes (padded with one space to an even length), of a canonical one its own."""
    from lake.deid import Deidentifier, load_profile
    from lake.ingest import Accepted, IngestContext, process_bytes
    from lake.ingest._quarantine import quarantine_key
    from lake.store import Location
    from lake.vault import Secret
    from tests.test_deid_golden import TOOL

    files = _padded_files(tmp_path)
    names = {f"{name}-CT_small.dcm" for name in _PADDED}

    secret = Secret(TOOL.SECRET)
    context = IngestContext(location=Location(str((tmp_path / "lake").resolve())),
                            engine=Deidentifier(load_profile("basic"), secret),
                            quarantine_key=quarantine_key(secret))
    for name in sorted(names):
        tag, _vr, value = _PADDED[name.removesuffix("-CT_small.dcm")]
        outcome = process_bytes(files[name].read_bytes(), context)
        assert isinstance(outcome, Accepted), name
        stored = pydicom.dcmread(io.BytesIO(outcome.row["header_dicom"]), force=True)
        raw = stored.get_item(tag).value
        assert len(raw) % 2 == 0, name
        stripped = value.rstrip(b" \x00")
        assert raw == stripped + b" " * (len(stripped) % 2), name


@settings(max_examples=200, deadline=None)
@given(st.lists(_PIECES, max_size=8), st.lists(_PIECES, max_size=4), st.booleans())
def test_any_mix_of_pieces_is_written_as_when_converted(image_type: list[str],
                                                       manufacturer: list[str],
                                                       implicit: bool) -> None:
    """The header written after the derivation (raw values copied as they are) has the bytes
    it had when the derivation converted ImageType and Manufacturer, whatever their padding."""
    from lake.ingest._encode import encode_part10

    ds = _with_raw({_IMAGE_TYPE: "".join(image_type).encode("latin-1"),
                    _MANUFACTURER: "".join(manufacturer).encode("latin-1")}, None, implicit)
    ds.file_meta = pydicom.dcmread(get_testdata_file("MR_small.dcm")).file_meta
    reference = _converted(ds)
    derive_acquisition(ds)
    derive_acquisition(reference)
    assert encode_part10(ds) == encode_part10(reference)
