"""lake.nifti.read_part10: the converter's fast reader gives exactly what pydicom gives.

Equivalence is checked element by element (tests/part10_equivalence.py: every element,
private ones and nested sequences included, same value and same type) on every corpus the
converter sees: all of pydicom's test files and pydicom-data's that are present, generated
series, de-identified lake output under each built-in profile, and (slow, when present) every
vendor file of ../shared/data and the lakes the vendor parity test fills under each profile
(tests/test_nifti_vendor_parity.py). What the reader does not handle goes to pydicom, and the
conversion is the same either way.
"""

from __future__ import annotations

import io
import re
import struct
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from pydicom.data import get_testdata_file, get_testdata_files
from pydicom.dataset import Dataset
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

import lake
from lake.nifti import (
    NiftiVolume,
    Part10,
    ValueCache,
    _part10,
    derive_acquisition,
    read_part10,
    series_to_nifti,
)
from tests.conftest import SHARED_DATA
from tests.deid_corpus import write_corpus
from tests.nifti_synth import enhanced_from, synthetic_series
from tests.part10_equivalence import compare_bytes, differences, lake_differences

PROFILES = ("basic", "research", "teaching")


def _pydicom_corpus() -> list[Path]:
    """pydicom's test files and pydicom-data's, those present (no download)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "download failures": nothing to download here
        found = get_testdata_files("**/*")
    return sorted({Path(f) for f in found if Path(f).is_file()})


def test_every_element_of_pydicoms_test_files_equals_pydicoms() -> None:
    files = _pydicom_corpus()
    assert len(files) > 150
    fast = 0
    problems: list[str] = []
    for path in files:
        data = path.read_bytes()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                pydicom.dcmread(io.BytesIO(data))
        except Exception:  # noqa: BLE001 - not a Part-10 file pydicom reads (DICOMDIR parts...)
            continue
        quick, found = compare_bytes(data)
        fast += quick
        problems += [f"{path.name}: {d}" for d in found]
    assert problems == []
    assert fast > 100  # most are read by the fast reader, not handed to pydicom


@pytest.mark.parametrize("profile", PROFILES)
def test_deidentified_lake_output_reads_as_pydicom_reads_it(profile: str,
                                                            tmp_path: Path) -> None:
    """What the export reads: headers the lake stored after de-identification, and blobs."""
    folder = tmp_path / "in"
    folder.mkdir()
    for path in _pydicom_corpus():
        if path.suffix.lower() == ".dcm":
            (folder / f"{len(list(folder.iterdir())):04d}.dcm").write_bytes(path.read_bytes())
    series = synthetic_series(n_slices=4, rows=8, cols=8)
    for i, ds in enumerate([*series, enhanced_from(series)]):
        ds.save_as(folder / f"synth{i}.dcm", enforce_file_format=True)
    write_corpus(folder / "planted", 1)  # identifiers everywhere, private elements, UN...
    vault = tmp_path / "vault"
    lk = lake.init(tmp_path / "lake", vault=vault)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lk.ingest([str(folder)], vault=vault, profile=profile, scheduler="sync")
    fast, slow, problems = lake_differences(lk)
    assert problems == []
    # both readers were exercised; compressed pixel data, kept apart from the header, is
    # read by the fast reader (it went to pydicom before session 26: 10 objects here)
    assert fast >= 30 and slow >= 1


def _bytes(ds: Dataset, syntax: str | None = None) -> bytes:
    if syntax is not None:
        ds.file_meta.TransferSyntaxUID = syntax
    out = io.BytesIO()
    pydicom.dcmwrite(out, ds, enforce_file_format=True,
                     implicit_vr=syntax == ImplicitVRLittleEndian if syntax else None)
    return out.getvalue()


def test_implicit_vr_and_sequences() -> None:
    series = synthetic_series(n_slices=3, rows=8, cols=8)
    enhanced = enhanced_from(series)
    for syntax in (ImplicitVRLittleEndian, ExplicitVRLittleEndian):
        data = _bytes(enhanced, syntax)
        got = read_part10(data)
        assert isinstance(got, Part10)
        assert got.is_implicit_VR == (syntax == ImplicitVRLittleEndian)
        assert list(differences(pydicom.dcmread(io.BytesIO(data)), got)) == []
        frames = got.PerFrameFunctionalGroupsSequence
        assert len(frames) == 3
        assert frames[2].PlanePositionSequence[0].ImagePositionPatient == \
            [float(v) for v in series[2].ImagePositionPatient]


def test_dataset_protocol() -> None:
    ds = read_part10(Path(str(get_testdata_file("MR_small.dcm"))).read_bytes())
    assert isinstance(ds, Part10)
    assert "Rows" in ds and 0x00280010 in ds and (0x0028, 0x0010) in ds
    assert "NoSuchKeyword" not in ds and "PixelSpacing" in ds
    assert ds.get("PatientWeight", 1.5) is not None
    assert ds.get("AccessionNumber", "x") in ("", None, "x")
    assert ds.get("Gantry/DetectorTilt", 7) == 7
    with pytest.raises(AttributeError):
        _ = ds.NoSuchKeyword
    with pytest.raises(KeyError):
        _ = ds[0x00191234]
    assert ds[0x00280010].value == 64 and ds[0x00280010].VR == "US"
    raw = ds.get_item(0x00280010)
    assert raw is not None and raw.value == b"\x40\x00"
    assert ds.file_meta is not None and ds.file_meta.get("TransferSyntaxUID")
    assert isinstance(ds.PixelData, bytes) and len(ds.PixelData) == 64 * 64 * 2


def test_pixel_data_kept_apart_is_attached() -> None:
    path = Path(str(get_testdata_file("CT_small.dcm")))
    full = pydicom.dcmread(path)
    pixels = full.PixelData
    del full.PixelData
    header = _bytes(full)
    got = read_part10(header, pixels, "OW")
    assert isinstance(got, Part10)
    assert got.PixelData == pixels and got[0x7FE00010].VR == "OW"


@pytest.mark.parametrize("name", ["MR_small_bigendian.dcm", "image_dfl.dcm"])
def test_big_endian_and_deflated_go_to_pydicom(name: str) -> None:
    path = Path(str(get_testdata_file(name)))
    got = read_part10(path.read_bytes())
    assert isinstance(got, Dataset)
    assert got.Rows == pydicom.dcmread(path).Rows


def test_compressed_pixels_go_to_pydicom() -> None:
    path = Path(str(get_testdata_file("JPEG2000.dcm")))
    got = read_part10(path.read_bytes())
    assert isinstance(got, Dataset)


@pytest.mark.parametrize("damage", [lambda b: b[:200], lambda b: b[:-7], lambda b: b"x" * 300,
                                    lambda b: b[:140] + b"\xff" * 40 + b[180:]])
def test_damaged_bytes_never_raise_past_pydicom(damage: Any) -> None:
    data = damage(Path(str(get_testdata_file("MR_small.dcm"))).read_bytes())
    try:
        with warnings.catch_warnings():  # pydicom's warnings reach the caller, which scopes them
            warnings.simplefilter("ignore")
            got = read_part10(data)
    except Exception as exc:  # noqa: BLE001 - only pydicom's own errors may surface
        assert type(exc).__module__.startswith("pydicom") or isinstance(exc, EOFError | OSError |
                                                                         ValueError)
        return
    assert isinstance(got, Part10 | Dataset)


def test_rgb_pixels_read_natively_equal_pydicoms() -> None:
    path = Path(str(get_testdata_file("SC_rgb.dcm")))
    expected = pydicom.dcmread(path).pixel_array
    got = read_part10(path.read_bytes())
    assert isinstance(got, Part10)
    volumes, refusals = series_to_nifti([got])
    assert refusals == []
    image = np.asanyarray(volumes[0].image.dataobj)
    reference, _ = series_to_nifti([pydicom.dcmread(path)])
    assert np.array_equal(image, np.asanyarray(reference[0].image.dataobj))
    assert image.size * 3 == expected.size  # RGB24: one voxel holds the three samples


def test_conversion_is_the_same_from_either_reader() -> None:
    series = synthetic_series(n_slices=5, rows=16, cols=12, noise=3.0)
    for datasets in (series, [enhanced_from(series)]):
        data = [_bytes(ds) for ds in datasets]
        fast = [read_part10(d) for d in data]
        assert all(isinstance(d, Part10) for d in fast)
        slow = [pydicom.dcmread(io.BytesIO(d)) for d in data]
        (a,), _ = series_to_nifti(fast)
        (b,), _ = series_to_nifti(slow)
        assert np.array_equal(a.image.affine, b.image.affine)
        assert np.array_equal(np.asanyarray(a.image.dataobj), np.asanyarray(b.image.dataobj))
        assert a.sidecar == b.sidecar


def _vendor_files() -> list[Path]:
    roots = [SHARED_DATA / "dcm_qa" / "In", *sorted((SHARED_DATA / "vendors").glob("*/In"))]
    return [p for root in roots if root.is_dir() for p in sorted(root.rglob("*")) if p.is_file()]


@pytest.mark.slow
@pytest.mark.vendor
def test_every_vendor_file_reads_as_pydicom_reads_it() -> None:
    files = _vendor_files()
    if not files:
        pytest.skip("../shared/data is absent")
    fast = 0
    problems: list[str] = []
    cache = ValueCache()  # one for every vendor: values of all series, charsets and syntaxes
    for path in files:
        data = path.read_bytes()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                pydicom.dcmread(io.BytesIO(data))
        except Exception:  # noqa: BLE001 - not DICOM (READMEs, scripts)
            continue
        quick, found = compare_bytes(data, cache=cache)
        fast += quick
        problems += [f"{path.name}: {d}" for d in found]
    assert problems == []
    assert fast > 1500  # of about 1,700: the rest is compressed, big endian or deflated


def test_a_vr_pydicom_infers_from_other_elements_goes_to_pydicom() -> None:
    """Implicit VR "US or SS" (SmallestImagePixelValue) depends on PixelRepresentation,
    possibly of an enclosing dataset: pydicom settles it."""
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    ds.SmallestImagePixelValue = 0
    data = _bytes(ds, ImplicitVRLittleEndian)
    assert isinstance(read_part10(data), Dataset)
    del ds.SmallestImagePixelValue, ds.LargestImagePixelValue
    assert isinstance(read_part10(_bytes(ds, ImplicitVRLittleEndian)), Part10)


def test_a_character_set_of_an_item_applies_to_that_item() -> None:
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = "Müller^Jürgen"
    item = Dataset()
    item.SpecificCharacterSet = "ISO_IR 192"
    item.PatientName = "Якушев^Иван"
    inner = Dataset()
    inner.PersonName = "Ωμέγα^Άλφα"  # no character set: the item's
    item.ContentSequence = [inner]
    ds.OtherPatientIDsSequence = [item]
    data = _bytes(ds)
    got = read_part10(data)
    assert isinstance(got, Part10)
    assert list(differences(pydicom.dcmread(io.BytesIO(data)), got)) == []
    assert str(got.OtherPatientIDsSequence[0].ContentSequence[0].PersonName) == "Ωμέγα^Άλφα"


def test_a_value_cache_gives_each_object_its_own_values() -> None:
    """Values shared through a ValueCache are those pydicom gives each object (a name under
    another character set is converted again), and changing one
    object's multi-valued value changes no other's."""

    def encoded(charset: str) -> bytes:
        ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
        ds.SpecificCharacterSet = charset
        ds.add_new(0x00100010, "PN", b"\xe0\xe1^\xe2")  # the same bytes in either
        return _bytes(ds)

    latin, cyrillic = encoded("ISO_IR 100"), encoded("ISO_IR 144")
    cache = ValueCache()
    names = []
    for data in (latin, cyrillic, latin, cyrillic):
        got = read_part10(data, cache=cache)
        assert isinstance(got, Part10)
        assert list(differences(pydicom.dcmread(io.BytesIO(data)), got)) == []
        names.append(str(got.PatientName))
    assert names[0] == names[2] != names[1] == names[3]
    assert len(cache) > 0
    one, two = read_part10(latin, cache=cache), read_part10(latin, cache=cache)
    assert isinstance(one, Part10) and isinstance(two, Part10)
    assert one.PixelSpacing == two.PixelSpacing and one.PixelSpacing is not two.PixelSpacing
    one.PixelSpacing[0] = 9.0
    one.ImageType.append("CHANGED")
    again = read_part10(latin, cache=cache)
    assert isinstance(again, Part10)
    assert two.PixelSpacing == again.PixelSpacing == [0.3125, 0.3125]
    assert "CHANGED" not in two.ImageType and "CHANGED" not in again.ImageType


def test_sequences_are_checked_when_read_and_indexed_when_asked_for() -> None:
    """A sequence's items are checked by the walk that indexes the dataset (damage deep in a
    nested item sends the bytes to pydicom at once, never an error on a later access) and
    indexed only when the sequence is first asked for."""
    series = synthetic_series(n_slices=3, rows=8, cols=8)
    data = _bytes(enhanced_from(series), ExplicitVRLittleEndian)
    got = read_part10(data)
    assert isinstance(got, Part10)
    per_frame_tag = 0x52009230
    assert len(got._elements[per_frame_tag]) == 4  # not indexed yet: where, not what
    assert len(got._source.ends) >= 3 * 2  # each frame's nested macros were walked past
    frames = got.PerFrameFunctionalGroupsSequence
    assert len(got._elements[per_frame_tag]) == 2 and got._elements[per_frame_tag][1] is frames
    assert got.PerFrameFunctionalGroupsSequence is frames  # read once
    assert frames[0]._parent is got  # character sets are inherited from the holder
    assert list(differences(pydicom.dcmread(io.BytesIO(data)), got)) == []
    # the VR of ImagePositionPatient in the last frame's PlanePositionSequence, damaged
    ipp = data.rindex(b"\x20\x00\x32\x00DS")
    damaged = data[: ipp + 4] + b"Q!" + data[ipp + 6 :]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fallback = read_part10(damaged)
    assert not isinstance(fallback, Part10)  # pydicom's reader, decided when read


def _enhanced_bytes(syntax: str = ExplicitVRLittleEndian, charset: str | None = None,
                    label: bytes | None = None) -> bytes:
    """An enhanced object of three frames; each frame's FrameContentSequence carries
    ``label`` (raw bytes, to be decoded under ``charset``) as its FrameLabel."""
    enhanced = enhanced_from(synthetic_series(n_slices=3, rows=8, cols=8))
    if charset is not None:
        enhanced.SpecificCharacterSet = charset
    for item in enhanced.PerFrameFunctionalGroupsSequence:
        item.MRImageFrameTypeSequence = [Dataset()]
        item.MRImageFrameTypeSequence[0].FrameType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
        if label is not None:
            item.FrameContentSequence[0].add_new(0x00209453, "LO", label)
    return _bytes(enhanced, syntax)


def _item_values(ds: Dataset, frame: int) -> dict[tuple[str, str], Any]:
    """pydicom's value of every (macro, keyword) of one frame's per-frame functional
    groups (the first item of each macro)."""
    values = {}
    reference = ds.PerFrameFunctionalGroupsSequence[frame]
    for macro in reference:
        if macro.VR != "SQ" or not macro.keyword:
            continue
        for element in macro.value[0]:
            if element.keyword:
                values[(macro.keyword, element.keyword)] = element.value
    return values


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_item_value_is_pydicoms_value_converted_once_per_batch(syntax: str) -> None:
    """Part10.item_value (the converter's per-frame look-ups) gives the value pydicom gives
    for the first item of a macro, whether the ValueCache has it (the items then are not
    even indexed) or not, and whatever the order of the look-ups."""
    data = _enhanced_bytes(syntax)
    expected = pydicom.dcmread(io.BytesIO(data))
    cache = ValueCache()
    for round_ in range(2):  # the first converts and keeps, the second finds them kept
        for frame in range(3):
            wanted = _item_values(expected, frame)
            for (macro, keyword), value in wanted.items():
                fresh = read_part10(data, cache=cache)  # one look-up per dataset: every
                assert isinstance(fresh, Part10)         # one goes through the cache
                item = fresh.PerFrameFunctionalGroupsSequence[frame]
                got = item.item_value(macro, keyword)
                assert got == value and type(got) is type(value), (macro, keyword)
                tag = int(pydicom.datadict.tag_for_keyword(macro) or 0)
                if round_:  # found in the cache: the macro's items were not read
                    assert len(item._elements[tag]) == 4
    # and without a cache, or once the sequence is read, the same values
    uncached = read_part10(data)
    assert isinstance(uncached, Part10)
    item = uncached.PerFrameFunctionalGroupsSequence[1]
    for (macro, keyword), value in _item_values(expected, 1).items():
        assert item.item_value(macro, keyword) == value
        assert item.item_value(macro, keyword) == value  # the sequence is read by now
    assert item.item_value("PlanePositionSequence", "NoSuchKeyword") is None
    assert item.item_value("ReferencedImageSequence", "ReferencedSOPInstanceUID") is None


def test_item_value_of_a_long_sequence_reads_it_as_get_does() -> None:
    """A macro sequence too long to be a cache key (over 16 KiB) is read item by item."""
    enhanced = enhanced_from(synthetic_series(n_slices=2, rows=8, cols=8))
    for item in enhanced.PerFrameFunctionalGroupsSequence:
        item.FrameContentSequence[0].add_new(0x00211010, "UT", "long " * 4000)
    data = _bytes(enhanced)
    expected = pydicom.dcmread(io.BytesIO(data))
    cache = ValueCache()
    for _ in range(2):
        got = read_part10(data, cache=cache)
        assert isinstance(got, Part10)
        item = got.PerFrameFunctionalGroupsSequence[1]
        for (macro, keyword), value in _item_values(expected, 1).items():
            assert item.item_value(macro, keyword) == value
        assert len(item._elements[0x00209111]) == 2  # FrameContentSequence: read, not keyed


def test_item_value_keys_on_the_inherited_character_set_and_hands_out_copies() -> None:
    """The same item bytes under another character set of the enclosing object are decoded
    under that one; a multi-valued value a caller changes changes no other's."""
    latin = _enhanced_bytes(charset="ISO_IR 100", label=b"\xe0\xe1\xe2 ")
    cyrillic = _enhanced_bytes(charset="ISO_IR 144", label=b"\xe0\xe1\xe2 ")
    cache = ValueCache()
    labels = []
    for data in (latin, cyrillic, latin, cyrillic):
        got = read_part10(data, cache=cache)
        assert isinstance(got, Part10)
        frames = got.PerFrameFunctionalGroupsSequence
        assert frames[-1]._shape is not None  # later frames: read where a shape located it
        for frame, expected in zip(frames, pydicom.dcmread(io.BytesIO(data))
                                   .PerFrameFunctionalGroupsSequence, strict=True):
            label = frame.item_value("FrameContentSequence", "FrameLabel")
            assert label == expected.FrameContentSequence[0].FrameLabel
        labels.append(label)
    assert labels[0] == labels[2] != labels[1] == labels[3]
    one, two = (read_part10(latin, cache=cache) for _ in range(2))
    assert isinstance(one, Part10) and isinstance(two, Part10)
    for frame in (0, -1):
        kinds = one.PerFrameFunctionalGroupsSequence[frame].item_value(
            "MRImageFrameTypeSequence", "FrameType")
        kinds.append("CHANGED")
        again = two.PerFrameFunctionalGroupsSequence[frame].item_value(
            "MRImageFrameTypeSequence", "FrameType")
        assert again == ["ORIGINAL", "PRIMARY", "M", "NONE"]


def _indexed(item: Part10) -> bool:
    """Whether ``item`` holds its index (reading ``_elements`` would make it)."""
    try:
        Part10.__dict__["_elements"].__get__(item, Part10)
    except AttributeError:
        return False
    return True


@pytest.mark.parametrize("own_character_set", [False, True])
def test_an_item_a_shape_checked_is_indexed_when_first_needed(own_character_set: bool) -> None:
    """Per-frame items checked by a shape are not indexed while ``item_numbers`` and
    ``item_value`` read where the shape located their values (the converter asks every
    frame): only each shape's first item is. Whether an item declares character sets of
    its own is known from the shape's tags, and its values are decoded under them; the
    index made when first needed is the walk's."""
    enhanced = enhanced_from(synthetic_series(n_slices=5, rows=8, cols=8))
    enhanced.SpecificCharacterSet = "ISO_IR 100"
    for item in enhanced.PerFrameFunctionalGroupsSequence:
        if own_character_set:
            item.SpecificCharacterSet = "ISO_IR 144"
        item.FrameContentSequence[0].add_new(0x00209453, "LO", b"\xe0\xe1\xe2 ")
    data = _bytes(enhanced)
    expected = pydicom.dcmread(io.BytesIO(data)).PerFrameFunctionalGroupsSequence
    cache = ValueCache()
    for _ in range(2):
        got = read_part10(data, cache=cache)
        assert isinstance(got, Part10)
        frames = got.PerFrameFunctionalGroupsSequence
        shaped = [frame for frame in frames if frame._shape is not None]
        assert len(shaped) >= 3
        for frame, reference in zip(frames, expected, strict=True):
            label = frame.item_value("FrameContentSequence", "FrameLabel")
            assert label == reference.FrameContentSequence[0].FrameLabel
            position = frame.item_numbers("PlanePositionSequence", "ImagePositionPatient")
            assert position == [float(v) for v in
                                reference.PlanePositionSequence[0].ImagePositionPatient]
        if not own_character_set:
            assert sum(map(_indexed, shaped)) <= len({id(frame._shape) for frame in shaped})
    fresh, walked = read_part10(data, cache=cache), _walked(data)
    assert isinstance(fresh, Part10) and isinstance(walked, Part10)
    frames = fresh.PerFrameFunctionalGroupsSequence
    assert not any(_indexed(frame) for frame in frames if frame._shape is not None)
    for frame, plain in zip(frames, walked.PerFrameFunctionalGroupsSequence, strict=True):
        assert _deep_index(frame) == _deep_index(plain)  # the index, made when asked


@pytest.mark.vendor
@pytest.mark.parametrize("repository", ["dcm_qa_enh", "dcm_qa_xa30"])
def test_enhanced_vendor_series_convert_alike_from_either_reader(repository: str) -> None:
    """Enhanced vendor objects read by the fast reader through one cache per series (the
    per-frame look-ups by item_value) and by pydicom convert to the same volumes."""
    compared = 0
    for members in _vendor_series(repository).values():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cache = ValueCache()
            fast = [read_part10(d, cache=cache) for d in members]
            slow = [pydicom.dcmread(io.BytesIO(d)) for d in members]
            if not any(isinstance(d, Part10) and "PerFrameFunctionalGroupsSequence" in d
                       for d in fast):
                continue
            acquisitions = [derive_acquisition(d) for d in slow]  # as the lake's export
            mine, mine_refused = series_to_nifti(fast, acquisitions)
            theirs, theirs_refused = series_to_nifti(slow, acquisitions)
        assert [r.reason_code for r in mine_refused] == [r.reason_code for r in theirs_refused]
        _assert_same_volumes(mine, theirs)
        compared += len(mine)
    assert compared > 0


def _with_value(keyword: str, vr: str, raw: bytes, syntax: str) -> bytes:
    """A generated MR slice with ``keyword``'s value replaced by the bytes ``raw`` (padded
    to even)."""
    ds = synthetic_series(n_slices=1, rows=4, cols=4)[0]
    tag = int(pydicom.datadict.tag_for_keyword(keyword) or 0)
    ds.add_new(tag, vr, "7")
    data = _bytes(ds, syntax)
    raw = raw + b" " * (len(raw) % 2)
    head = struct.pack("<HH", tag >> 16, tag & 0xFFFF)
    if syntax == ImplicitVRLittleEndian:
        at = data.index(head + struct.pack("<I", 2) + b"7 ")
        return data[:at] + head + struct.pack("<I", len(raw)) + raw + data[at + 10 :]
    at = data.index(head + vr.encode() + struct.pack("<H", 2) + b"7 ")
    return data[:at] + head + vr.encode() + struct.pack("<H", len(raw)) + raw + data[at + 10 :]


@settings(max_examples=150, deadline=None)
@given(st.text(alphabet=" +-.0123456789eE\\\x00", max_size=18),
       st.sampled_from([("InstanceNumber", "IS"), ("TriggerTime", "DS")]),
       st.sampled_from([ExplicitVRLittleEndian, ImplicitVRLittleEndian]))
def test_a_number_read_from_its_bytes_is_the_float_of_pydicoms_value(
        text: str, element: tuple[str, str], syntax: str) -> None:
    """Part10.number (the converter's per-instance numbers) is float() of the value pydicom
    gives, or None (then the converter asks get()); plain numbers take the fast path."""
    keyword, vr = element
    data = _with_value(keyword, vr, text.encode(), syntax)
    got = read_part10(data)
    assert isinstance(got, Part10)
    number = got.number(keyword)
    plain = re.fullmatch(_PLAIN[vr], text)
    if plain and len(text) + len(text) % 2 <= 16:
        assert number is not None
    if number is None:
        return
    value = _pydicom_value(data, keyword)
    assert not isinstance(value, list | str) and value is not None
    assert number == float(value) and type(number) is float


def test_number_leaves_everything_else_to_get() -> None:
    ds = read_part10(_with_value("InstanceNumber", "IS", b"1\\2", ExplicitVRLittleEndian))
    assert isinstance(ds, Part10)
    assert ds.number("InstanceNumber") is None and ds.get("InstanceNumber") == [1, 2]
    assert ds.number("PatientName") is None and ds.number("NoSuchKeyword") is None
    assert ds.number("Rows") is None  # US: pydicom's value is the number already
    weight = read_part10(_with_value("PatientWeight", "DS", b"72.5", ExplicitVRLittleEndian))
    assert isinstance(weight, Part10)
    assert weight.number("PatientWeight") == float(weight.get("PatientWeight")) == 72.5


# --------------------------------------------------------------- a series' header layouts


def _index(ds: Part10 | Dataset) -> tuple[object, ...]:
    """Everything the walk decides for one object: its file meta's and its own index, and
    where each sequence it passed ends (pydicom's reader when the walk refused it)."""
    if not isinstance(ds, Part10):
        return ("read by pydicom",)
    assert ds.file_meta is not None
    return (ds.file_meta._elements, ds._elements, ds.is_implicit_VR, ds._source.ends)


def _read(data: bytes, cache: ValueCache | None = None) -> Part10 | Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return read_part10(data, cache=cache)


def _walked_and_laid_out(datas: list[bytes]) -> tuple[int, list[str]]:
    """Read every object by the walk alone and through one ValueCache (its layouts); (how
    many the layouts indexed, every object whose index or values differ)."""
    problems = []
    cache = ValueCache()
    for i, data in enumerate(datas):
        walked, laid_out = _read(data), _read(data, cache)
        if _index(walked) != _index(laid_out):
            problems.append(f"#{i}: another index")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected = pydicom.dcmread(io.BytesIO(data))
        if isinstance(laid_out, Part10):
            problems += [f"#{i}: {d}" for d in differences(expected, laid_out)]
    return cache.indexed_by_layout, problems


def _vendor_objects(repository: str, count: int) -> list[bytes]:
    """The Part-10 bytes of the first ``count`` files of a vendor repository, in order."""
    root = SHARED_DATA / "vendors" / repository / "In"
    if not root.is_dir():
        pytest.skip("../shared/data is absent")
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return [d for d in (p.read_bytes() for p in files[:count]) if d[128:132] == b"DICM"]


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_a_series_header_indexed_by_its_layout_is_the_walks(syntax: str) -> None:
    """A header of the layout of an earlier one of its series (same elements, lengths and
    transfer syntax) is indexed in one step into what the walk makes of it, with pydicom's
    values; the others are walked (lengths that differ: positions, UIDs)."""
    series = synthetic_series(n_slices=12, rows=8, cols=8)
    datas = [_bytes(ds, syntax) for ds in series]
    datas.append(_bytes(enhanced_from(series), syntax))
    datas.append(_bytes(enhanced_from(series), syntax))  # sequences: checked, same ends
    applied, problems = _walked_and_laid_out(datas)
    assert problems == []
    assert applied >= 3  # the layout path was taken (and the walk for the others)


@pytest.mark.vendor
@pytest.mark.parametrize("repository", ["dcm_qa_ge", "dcm_qa_philips", "dcm_qa_xa30"])
def test_vendor_series_indexed_by_their_layouts_are_the_walks(repository: str) -> None:
    """Every original file of a vendor repository, in order, through one cache: the layout
    path (most of them) gives the walk's index and pydicom's values."""
    datas = _vendor_objects(repository, 120)
    applied, problems = _walked_and_laid_out(datas)
    assert problems == []
    assert applied > len(datas) // 4  # XA30: 17 of 51


def test_a_layout_is_not_taken_for_other_bytes_of_the_same_size() -> None:
    """Same size, other bytes where the walk decides something: another VR, a big-endian
    transfer syntax, damage inside a sequence: each is read as without the layout (walked,
    refused, or handed to pydicom)."""
    enhanced = enhanced_from(synthetic_series(n_slices=3, rows=8, cols=8))
    data = _bytes(enhanced, ExplicitVRLittleEndian)
    cache = ValueCache()
    assert isinstance(read_part10(data, cache=cache), Part10)  # the layout is kept
    assert isinstance(read_part10(data, cache=cache), Part10) and cache.indexed_by_layout == 1

    def same_as_walk(changed: bytes) -> None:
        assert len(changed) == len(data)
        assert _index(_read(changed, cache)) == _index(_read(changed))

    # another VR of the same length (Modality CS -> SH): a header byte differs
    modality = data.index(b"\x08\x00\x60\x00CS")
    same_as_walk(data[: modality + 4] + b"SH" + data[modality + 6 :])
    # the same inside a sequence (SliceThickness DS -> IS in the shared functional
    # group): the layout indexes it (the sequence's items are checked, and read when
    # asked for), as the walk does
    thickness = data.index(b"\x18\x00\x50\x00DS")
    same_as_walk(data[: thickness + 4] + b"IS" + data[thickness + 6 :])
    assert cache.indexed_by_layout == 2
    # big endian: only the transfer syntax's value differs
    syntax = data.index(ExplicitVRLittleEndian.encode())
    big = data[:syntax] + b"1.2.840.10008.1.2.2" + data[syntax + 19 :]
    same_as_walk(big)
    assert not isinstance(_read(big, cache), Part10)
    # damage in the last frame's PlanePositionSequence: pydicom's reader, as without
    ipp = data.rindex(b"\x20\x00\x32\x00DS")
    damaged = data[: ipp + 4] + b"Q!" + data[ipp + 6 :]
    same_as_walk(damaged)
    assert not isinstance(_read(damaged, cache), Part10)
    assert cache.indexed_by_layout == 2  # none of the others by a layout


def test_a_sequence_that_ends_elsewhere_is_walked() -> None:
    """Two objects of one size whose undefined-length sequence holds 2 bytes more in one and
    a later value 2 bytes less: the layout of the first does not index the second."""
    def made(inner: str, later: str) -> bytes:
        ds = synthetic_series(n_slices=1, rows=4, cols=4)[0]
        item = Dataset()
        item.CodeValue = inner
        ds.ProcedureCodeSequence = [item]  # (0008,1032): before ImageComments (0020,4000)
        ds.ImageComments = later
        return _bytes(ds, ExplicitVRLittleEndian)

    first, second = made("AB", "ABCD"), made("ABCD", "AB")
    assert len(first) == len(second)
    cache = ValueCache()
    read_part10(first, cache=cache)
    got = read_part10(second, cache=cache)
    assert isinstance(got, Part10) and cache.indexed_by_layout == 0
    assert _index(got) == _index(read_part10(second))
    assert got.ProcedureCodeSequence[0].CodeValue == "ABCD" and got.ImageComments == "AB"


def test_objects_indexed_by_one_layout_are_independent() -> None:
    """Reading a sequence, or attaching pixels, in one object leaves the other's index
    as the walk made it."""
    enhanced = enhanced_from(synthetic_series(n_slices=3, rows=8, cols=8))
    pixels = enhanced.PixelData
    del enhanced.PixelData
    data = _bytes(enhanced, ExplicitVRLittleEndian)
    cache = ValueCache()
    one, two = read_part10(data, cache=cache), read_part10(data, pixels, cache=cache)
    assert isinstance(one, Part10) and isinstance(two, Part10)
    assert len(one.PerFrameFunctionalGroupsSequence) == 3
    assert len(two._elements[0x52009230]) == 4  # not read in the other
    assert 0x7FE00010 not in one and 0x7FE00010 in two
    third = read_part10(data, cache=cache)
    assert isinstance(third, Part10) and cache.indexed_by_layout == 2
    assert len(third._elements[0x52009230]) == 4 and 0x7FE00010 not in third


# --------------------------------------------------------------- sequence items' shapes


def _deep_index(ds: Part10) -> list[object]:
    """Every dataset's index, items of every sequence indexed (read) first, depth first."""
    found: list[object] = [dict(ds._elements)]  # before its sequences are read
    for tag in list(ds.keys()):
        if ds._elements[tag][0] == "SQ":
            found.append([_deep_index(item) for item in ds.get(tag)])
    return found


def _walked(data: bytes) -> Part10 | Dataset:
    """``read_part10(data)`` with no item shapes: every item walked."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_part10._Shapes, "remember", lambda *_, **__: None)
        return _read(data)


def _shaped_and_walked(datas: list[bytes]) -> tuple[int, list[str]]:
    """Read every object through one ValueCache (its item shapes) and walked without
    shapes; (how many items the shapes checked, every object whose index differs: the
    dataset's, every item's at every depth, where each sequence ends, or pydicom's
    values)."""
    problems = []
    cache = ValueCache()
    for i, data in enumerate(datas):
        shaped, walked = _read(data, cache), _walked(data)
        if _index(shaped) != _index(walked):
            problems.append(f"#{i}: another index")
        if isinstance(shaped, Part10) and isinstance(walked, Part10):
            if (_deep_index(shaped) != _deep_index(walked)
                    or shaped._source.ends != walked._source.ends):
                problems.append(f"#{i}: other items")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                expected = pydicom.dcmread(io.BytesIO(data))
            problems += [f"#{i}: {d}" for d in differences(expected, shaped)]
            problems += [f"#{i}: {d}" for d in _item_numbers_differences(data, cache)]
    return sum(known.hits for known in cache._shapes.values()), problems


def _item_numbers_differences(data: bytes, cache: ValueCache) -> list[str]:
    """``item_numbers`` and ``item_value`` of every (macro, keyword) of every per-frame item
    read through ``cache`` (items checked by a shape read the value where the shape's first
    item held it) against the same read without shapes (type and value)."""
    shaped, walked = _read(data, cache), _walked(data)
    if not isinstance(shaped, Part10) or not isinstance(walked, Part10):
        return []
    frames = shaped.get("PerFrameFunctionalGroupsSequence") or []
    plain = walked.get("PerFrameFunctionalGroupsSequence") or []
    found = []
    for number, (frame, reference) in enumerate(zip(frames, plain, strict=True)):
        for tag in reference.keys():  # noqa: SIM118 - Part10 has no iteration
            macro = pydicom.datadict.keyword_for_tag(tag)
            items = reference.get(tag)
            if not macro or not isinstance(items, list) or not items:
                continue
            present = items[0].keys()
            for keyword in [*map(pydicom.datadict.keyword_for_tag, present), "Rows"]:
                if not keyword:
                    continue
                value = frame.item_numbers(macro, keyword)
                if value != reference.item_numbers(macro, keyword):
                    found.append(f"frame {number}: {macro}/{keyword} by item_numbers")
                if value is not None and frame.item_numbers(macro, keyword) is value:
                    found.append(f"frame {number}: {macro}/{keyword} handed out twice")
                converted = frame.item_value(macro, keyword)
                expected = reference.item_value(macro, keyword)
                if type(converted) is not type(expected) or repr(converted) != repr(expected):
                    found.append(f"frame {number}: {macro}/{keyword} by item_value")
    if frames and not any(frame._shape is not None for frame in frames[1:]):
        found.append("no frame indexed by a shape")
    return found


@settings(max_examples=25, deadline=None)
@given(st.lists(st.floats(-300, 300, allow_nan=False).map(lambda z: round(z, 3)),
                min_size=2, max_size=12),
       st.sampled_from([ExplicitVRLittleEndian, ImplicitVRLittleEndian]))
def test_items_checked_by_an_earlier_items_shape_are_what_the_walk_makes(
        positions: list[float], syntax: str) -> None:
    """Per-frame items whose positions have other lengths (other shapes) or the same
    (one shape): with shapes, every item at every depth is indexed as the walk alone
    indexes it, each sequence ends where it does, and the values are pydicom's."""
    series = synthetic_series(rows=4, cols=4, positions=positions)
    one = enhanced_from(series)
    two = enhanced_from(series[::-1])
    for frame in two.PerFrameFunctionalGroupsSequence[::2]:
        frame.FrameContentSequence[0].FrameLabel = "LABEL"  # another shape every other
    hits, problems = _shaped_and_walked([_bytes(one, syntax), _bytes(two, syntax)])
    assert problems == []
    assert hits > 0  # the shapes were used (the frames' shared macros at least)


@pytest.mark.vendor
@pytest.mark.parametrize("repository", ["dcm_qa_enh", "dcm_qa_xa30", "dcm_qa_philips"])
def test_vendor_items_checked_by_shapes_are_what_the_walk_makes(repository: str) -> None:
    """Every original file of a vendor repository with enhanced objects, through one cache:
    the items checked by shapes (most of them) give the walk's index at every depth."""
    hits, problems = _shaped_and_walked(_vendor_objects(repository, 60))
    assert problems == []
    assert hits > 0


def test_an_item_of_a_known_shape_with_other_header_bytes_is_walked() -> None:
    """Items that fit a shape's key (same first element) but differ in a header byte,
    or do not fit before the end: walked, so damage sends the object to pydicom as
    before, and an undamaged one is indexed as the walk indexes it."""
    enhanced = enhanced_from(synthetic_series(n_slices=6, rows=4, cols=4,
                                              positions=[10.0] * 6))  # one shape
    data = _bytes(enhanced, ExplicitVRLittleEndian)
    cache = ValueCache()
    assert isinstance(_read(data, cache), Part10)
    assert sum(known.hits for known in cache._shapes.values()) >= 4
    # the last frame's RescaleSlope (DS) read as IS: a header byte, same length
    slope = data.rindex(b"\x28\x00\x53\x10DS")
    other_vr = data[: slope + 4] + b"IS" + data[slope + 6 :]
    shaped = _read(other_vr, cache)
    assert isinstance(shaped, Part10)
    assert _deep_index(shaped) == _deep_index(_walked(other_vr))
    assert _index(_read(other_vr, cache)) == _index(_walked(other_vr))
    # the last frame's PlanePositionSequence's VR damaged: pydicom's reader
    ipp = data.rindex(b"\x20\x00\x32\x00DS")
    damaged = data[: ipp + 4] + b"Q!" + data[ipp + 6 :]
    assert not isinstance(_read(damaged, cache), Part10)
    # cut inside the last frame: no shape fits, the walk refuses
    per_frame = data.index(b"\x00\x52\x30\x92")  # (5200,9230)
    cut = data[: (per_frame + len(data)) // 2]
    assert not isinstance(_read(cut, cache), Part10) and not isinstance(_walked(cut), Part10)


# --------------------------------------------------------------- numbers read from bytes


def _floats_of(value: Any) -> list[float] | None:
    """pydicom's value as the converter takes it: float() of each value."""
    if value is None or value == "":
        return None
    if isinstance(value, list) or type(value).__name__ == "MultiValue":
        return [float(v) for v in value]
    return [float(value)]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(alphabet=" +-.0123456789eE\x00", max_size=17), min_size=1, max_size=4),
       st.sampled_from([("ImagePositionPatient", "DS"), ("InstanceNumber", "IS"),
                        ("TriggerTime", "DS")]),
       st.sampled_from([ExplicitVRLittleEndian, ImplicitVRLittleEndian]))
# GE's orientations: a last number of 16 characters, padded to an even length
@example(["-0.7262333631038", "-0.0796377417515"], ("ImagePositionPatient", "DS"),
         ExplicitVRLittleEndian)
@example(["1", "-0.0796377417515"], ("ImagePositionPatient", "DS"), ImplicitVRLittleEndian)
def test_numbers_read_from_bytes_are_the_floats_of_pydicoms_values(
        texts: list[str], element: tuple[str, str], syntax: str) -> None:
    """Part10.numbers (the converter's positions, rescale, times) is float() of each of
    the values pydicom gives, or None (then the converter converts get()'s value)."""
    keyword, vr = element
    raw = "\\".join(texts).encode()
    data = _with_value(keyword, vr, raw, syntax)
    got = read_part10(data)
    assert isinstance(got, Part10)
    numbers = got.numbers(keyword)
    pattern = _PLAIN[vr]
    padded = raw + b" " * (len(raw) % 2)
    # each number at most 16 characters, the value's trailing padding not counted
    plain = all(len(t) <= 16 and re.fullmatch(pattern.encode(), t)
                for t in padded.rstrip(b" ").split(b"\\"))
    if plain and all(abs(float(t)) < 1e300 for t in padded.split(b"\\")):
        assert numbers is not None
    if numbers is None:
        return
    value = _pydicom_value(data, keyword)
    assert numbers == _floats_of(value) and all(type(n) is float for n in numbers)


_FORMAT = tuple(int(pydicom.datadict.tag_for_keyword(k) or 0) for k in (
    "SamplesPerPixel", "PhotometricInterpretation", "Rows", "Columns", "BitsAllocated",
    "BitsStored", "PixelRepresentation", "PlanarConfiguration", "PixelData"))


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_raw_key_tells_datasets_whose_values_are_the_same(syntax: str) -> None:
    """raw_key (what the converter's pixel checks are kept by): the same for instances of
    one format, whose values of those elements are the same; another for another
    BitsStored, VR or syntax; the pixel data set in memory by VR, type and length; None
    for a sequence or a value over 1 KiB."""
    series = synthetic_series(n_slices=3, rows=8, cols=8, modality="MR", noise=9)
    series[2].BitsStored = 10
    reads = []
    for ds in series:
        pixels = ds.PixelData
        del ds.PixelData
        reads.append(read_part10(_bytes(ds, syntax), pixels, "OW", cache=ValueCache()))
    assert all(isinstance(r, Part10) for r in reads)
    keys = [r.raw_key(_FORMAT) for r in reads]  # type: ignore[union-attr]
    assert keys[0] == keys[1] != keys[2]
    assert keys[0] is not None and keys[0][0] is (syntax == ImplicitVRLittleEndian)
    assert keys[0][-1] == ("OW", bytes, 8 * 8 * 2)
    for tag in _FORMAT[:-1]:
        assert reads[0].get(tag) == reads[1].get(tag)
    assert reads[0].get("BitsStored") != reads[2].get("BitsStored")
    implicit = read_part10(_bytes(series[0], ImplicitVRLittleEndian), b"\0" * 128, "OW")
    explicit = read_part10(_bytes(series[0], ExplicitVRLittleEndian), b"\0" * 128, "OW")
    assert isinstance(implicit, Part10) and isinstance(explicit, Part10)
    assert implicit.raw_key(_FORMAT) != explicit.raw_key(_FORMAT)
    enhanced = read_part10(_enhanced_bytes(syntax))
    assert isinstance(enhanced, Part10)
    per_frame = int(pydicom.datadict.tag_for_keyword("PerFrameFunctionalGroupsSequence") or 0)
    assert enhanced.raw_key((per_frame,)) is None
    long_text = read_part10(_with_value("ImageComments", "LT", b"x" * 1100, syntax))
    assert isinstance(long_text, Part10)
    assert long_text.raw_key((0x00204000,)) is None
    assert long_text.raw_key((0x00204001,)) == (syntax == ImplicitVRLittleEndian, None)


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_binary_numbers_and_item_numbers_are_pydicoms(syntax: str) -> None:
    """Binary numbers (US, UL, FL, FD...) unpacked from bytes, and item_numbers of every
    (macro, keyword) of every frame of an enhanced object, through a cache and without:
    float() of pydicom's values, or None where item_value gives nothing numeric."""
    data = _enhanced_bytes(syntax)
    expected = pydicom.dcmread(io.BytesIO(data))
    for keyword in ("Rows", "Columns", "BitsAllocated", "NumberOfFrames", "PixelSpacing",
                    "SliceThickness", "ImageType", "SeriesDescription"):
        got = read_part10(data)
        assert isinstance(got, Part10)
        numbers = got.numbers(keyword)
        value = expected.get(keyword)
        if numbers is not None:
            assert numbers == _floats_of(value), keyword
        elif keyword in ("Rows", "Columns", "BitsAllocated"):
            pytest.fail(f"{keyword} is plain numbers")
    cache = ValueCache()
    checked = 0
    for round_ in range(2):
        for frame in range(3):
            for (macro, keyword), value in _item_values(expected, frame).items():
                for shared in (cache, None):
                    fresh = read_part10(data, cache=shared)
                    assert isinstance(fresh, Part10)
                    item = fresh.PerFrameFunctionalGroupsSequence[frame]
                    numbers = item.item_numbers(macro, keyword)
                    if numbers is None:
                        continue
                    assert numbers == _floats_of(value), (macro, keyword)
                    assert numbers == _floats_of(item.item_value(macro, keyword))
                    checked += round_
    assert checked > 6  # positions, orientation, spacing, rescale, temporal index...
    binary = synthetic_series(n_slices=1, rows=4, cols=4)[0]
    binary.add_new(0x00189087, "FD", 1000.5)  # DiffusionBValue
    binary.add_new(0x00189089, "FD", [0.5, -0.25, 0.0])  # DiffusionGradientOrientation
    got = read_part10(_bytes(binary, syntax))
    assert isinstance(got, Part10)
    assert got.numbers("DiffusionBValue") == [1000.5]
    assert got.numbers("DiffusionGradientOrientation") == [0.5, -0.25, 0.0]
    assert got.numbers("Rows") == [4.0] and got.numbers("NoSuchKeyword") is None
    binary.DiffusionBValue = float("nan")
    got = read_part10(_bytes(binary, syntax))
    assert isinstance(got, Part10)
    assert got.numbers("DiffusionBValue") is None  # not finite: left to pydicom's value


@pytest.mark.vendor
@pytest.mark.parametrize("repository", ["dcm_qa_ge", "dcm_qa_philips", "dcm_qa_stc",
                                        "dcm_qa_xa30"])
def test_vendor_series_convert_alike_from_bytes_and_from_pydicoms_values(
        repository: str) -> None:
    """Series read through one cache per series (layouts; positions, orientation, spacing,
    rescale, echo and temporal values read from bytes by FrameLookup.numbers) convert to
    exactly what pydicom's datasets convert to: affines, scaling and sidecars compared
    exactly (a position off by 1e-9 fails)."""
    compared = laid_out = 0
    for members in _vendor_series(repository).values():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cache = ValueCache()
            fast = [read_part10(d, cache=cache) for d in members]
            slow = [pydicom.dcmread(io.BytesIO(d)) for d in members]
            acquisitions = [derive_acquisition(d) for d in slow]
            mine, mine_refused = series_to_nifti(fast, acquisitions)
            theirs, theirs_refused = series_to_nifti(slow, acquisitions)
        laid_out += cache.indexed_by_layout
        assert [r.message for r in mine_refused] == [r.message for r in theirs_refused]
        _assert_same_volumes(mine, theirs)
        compared += len(mine)
    assert compared > 0 and laid_out > 0


def _with_uid(raw: bytes, syntax: str) -> bytes:
    """A generated MR slice whose SOPInstanceUID's value is the bytes ``raw`` (padded to
    even with a null)."""
    ds = synthetic_series(n_slices=1, rows=4, cols=4)[0]
    ds.SOPInstanceUID = "7"
    data = _bytes(ds, syntax)
    raw = raw + b"\0" * (len(raw) % 2)
    head = struct.pack("<HH", 0x0008, 0x0018)
    if syntax == ImplicitVRLittleEndian:
        at = data.index(head + struct.pack("<I", 2) + b"7\0")
        return data[:at] + head + struct.pack("<I", len(raw)) + raw + data[at + 10 :]
    at = data.index(head + b"UI" + struct.pack("<H", 2) + b"7\0")
    return data[:at] + head + b"UI" + struct.pack("<H", len(raw)) + raw + data[at + 10 :]


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.text(alphabet="0123456789. \x00\\a", max_size=70),
                 st.lists(st.integers(0, 10**12), min_size=1, max_size=12).map(
                     lambda parts: ".".join(map(str, parts)))),
       st.sampled_from([ExplicitVRLittleEndian, ImplicitVRLittleEndian]))
def test_a_uid_read_from_its_bytes_is_str_of_pydicoms_value(text: str, syntax: str) -> None:
    """Part10.uid (the converter's SOPInstanceUID) is str() of pydicom's value, or None
    (then the converter asks get()); valid UIDs take the fast path."""
    data = _with_uid(text.encode(), syntax)
    got = read_part10(data)
    assert isinstance(got, Part10)
    uid = got.uid("SOPInstanceUID")
    if re.fullmatch(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*", text) and len(text) <= 64:
        assert uid == text
    if uid is None:
        return
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and pydicom found nothing to warn about
        value = pydicom.dcmread(io.BytesIO(data)).get("SOPInstanceUID")
    assert uid == str(value) and type(uid) is str
    assert got.uid("Rows") is None and got.uid("NoSuchKeyword") is None


def _assert_same_volumes(mine: list[NiftiVolume], theirs: list[NiftiVolume]) -> None:
    """Two conversions' volumes are the same: names, sidecars, geometry, scaling, voxels,
    bval/bvec."""
    assert len(mine) == len(theirs)
    for a, b in zip(mine, theirs, strict=True):
        assert a.suffix == b.suffix and a.sidecar == b.sidecar
        assert np.array_equal(a.image.affine, b.image.affine)
        assert a.image.header.get_slope_inter() == b.image.header.get_slope_inter()
        assert a.image.header.get_data_dtype() == b.image.header.get_data_dtype()
        assert np.array_equal(np.asanyarray(a.image.dataobj), np.asanyarray(b.image.dataobj))
        for mine_b, theirs_b in ((a.bval, b.bval), (a.bvec, b.bvec)):
            assert (mine_b is None) == (theirs_b is None)
            assert mine_b is None or np.array_equal(mine_b, theirs_b)


_PLAIN = {"IS": r" *[+-]?[0-9]+ *",
          "DS": r" *[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)? *"}
"""IS and DS text in plain decimal notation (what Part10.number(s) read from bytes)."""


def _pydicom_value(data: bytes, keyword: str) -> Any:
    """pydicom's value of ``keyword`` in the Part-10 bytes ``data`` (its warnings silenced)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(io.BytesIO(data)).get(keyword)


def _vendor_series(repository: str) -> dict[str, list[bytes]]:
    """The Part-10 files of a vendor repository's ``In/`` folder by SeriesInstanceUID, in
    path order (skips the test when the shared data is absent)."""
    root = SHARED_DATA / "vendors" / repository / "In"
    if not root.is_dir():
        pytest.skip("../shared/data is absent")
    series: dict[str, list[bytes]] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            data = path.read_bytes()
            if data[128:132] == b"DICM":
                uid = str(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
                          .get("SeriesInstanceUID", ""))
                series.setdefault(uid, []).append(data)
    return series
