"""NIfTI export of series generated in fixtures: geometry, 4D, refusals, pixels, writing.

The synthetic voxel value is ``1200 + 3x + 5y + 7z (+50 per volume, +400 per echo)`` with
``(x, y, z)`` the LPS position of the pixel centre, so checking every voxel against the
affine checks slice order, axis directions and data placement at once.
"""

from __future__ import annotations

import copy
import gzip
import io
import itertools
import json
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.pixels import get_decoder
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
    generate_uid,
)

from lake import ConfigError, ExportError
from lake.nifti import (
    FORBIDDEN_KEYS,
    NiftiRefusal,
    NiftiVolume,
    Part10,
    RefusalReason,
    ValueCache,
    _volume,
    gzip_members,
    nifti_payload,
    read_part10,
    series_to_nifti,
    write_volume,
)
from tests.conftest import SHARED_DATA
from tests.nifti_synth import (
    CORONAL,
    PHI_SENTINELS,
    SAGITTAL,
    enhanced_from,
    malformed_rle,
    synthetic_series,
)

OBLIQUE = (0.9659258, 0.2588190, 0.0, -0.0669873, 0.2500000, -0.9659258)


def _only(result: tuple[list[NiftiVolume], list[NiftiRefusal]]) -> NiftiVolume:
    volumes, refusals = result
    assert refusals == []
    assert len(volumes) == 1
    return volumes[0]


def _data(volume: NiftiVolume) -> np.ndarray[Any, Any]:
    data: np.ndarray[Any, Any] = np.asanyarray(volume.image.dataobj)
    return data


def _header(volume: NiftiVolume) -> Any:
    return volume.image.header


def _expected(volume: NiftiVolume, intercept: float = -1024.0) -> np.ndarray[Any, Any]:
    """The synthetic pattern at every voxel centre, from the image's own affine."""
    shape = volume.image.shape[:3]
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
    ras = ijk @ volume.image.affine[:3, :3].T + volume.image.affine[:3, 3]
    lps = ras * np.array([-1.0, -1.0, 1.0])
    pattern: np.ndarray[Any, Any] = np.round(1200.0 + lps @ np.array([3.0, 5.0, 7.0]))
    return pattern + intercept


@pytest.mark.parametrize(
    "orientation", [pytest.param(o, id=n) for n, o in
                    (("axial", (1.0, 0, 0, 0, 1.0, 0)), ("sagittal", SAGITTAL),
                     ("coronal", CORONAL), ("oblique", OBLIQUE))]
)
def test_every_voxel_sits_where_its_affine_says(orientation: tuple[float, ...]) -> None:
    series = synthetic_series(n_slices=9, rows=20, cols=14, orientation=orientation)
    volume = _only(series_to_nifti(series))
    assert volume.image.shape == (14, 20, 9)
    np.testing.assert_allclose(_data(volume), _expected(volume), atol=1.01)
    zooms = _header(volume).get_zooms()
    np.testing.assert_allclose(zooms, (0.7, 0.8, 2.5), atol=1e-5)
    header: Any = volume.image.header
    assert int(header["qform_code"]) == 1 and int(header["sform_code"]) == 1
    assert int(header["xyzt_units"]) == 10


@pytest.mark.parametrize("numbers", ["ordered", "reversed", "shuffled"])
def test_file_order_and_instance_numbers_do_not_matter(numbers: str) -> None:
    reference = series_to_nifti(synthetic_series(n_slices=12, rows=8, cols=8))[0][0]
    series = synthetic_series(n_slices=12, rows=8, cols=8, instance_numbers=numbers)
    order = np.random.default_rng(7).permutation(len(series))
    volume = _only(series_to_nifti([series[i] for i in order]))
    assert nifti_payload(volume.image) == nifti_payload(reference.image)


def test_rescale_kept_as_integers_with_scl_slope_and_inter() -> None:
    volume = _only(series_to_nifti(synthetic_series(n_slices=4, rows=8, cols=8)))
    assert _header(volume).get_data_dtype() == np.int16
    proxy: Any = volume.image.dataobj
    assert (proxy.slope, proxy.inter) == (1.0, -1024.0)
    raw = proxy.get_unscaled()
    np.testing.assert_array_equal(_data(volume), raw * 1.0 - 1024.0)


def test_rescale_varying_per_slice_becomes_float32() -> None:
    series = synthetic_series(n_slices=5, rows=8, cols=8, rescale_per_slice=True)
    volume = _only(series_to_nifti(series))
    assert _header(volume).get_data_dtype() == np.float32
    proxy: Any = volume.image.dataobj
    assert (proxy.slope, proxy.inter) == (1.0, 0.0)
    data = _data(volume)
    for ds in series:
        stored = np.frombuffer(ds.PixelData, dtype=np.uint16).reshape(8, 8)[::-1].T
        k = round((float(ds.ImagePositionPatient[2]) - 10.0) / 2.5)
        expected = stored * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        np.testing.assert_allclose(data[..., k], expected, rtol=1e-6, atol=1e-5)


def test_signed_data_with_bits_stored_below_bits_allocated() -> None:
    series = synthetic_series(
        n_slices=3, rows=8, cols=8, modality="MR", signed=True, bits_stored=12,
        origin=(-400.0, -300.0, -200.0),
    )
    volume = _only(series_to_nifti(series))
    data = _data(volume)
    assert data.min() < 0  # negative 12-bit values survive sign extension
    np.testing.assert_allclose(data, np.clip(_expected(volume, 0.0), -2048, 2047), atol=1.01)


def _as_stored(series: list[Dataset]) -> list[Part10 | Dataset]:
    """``series`` as the lake's export reads it: each header written without its pixel
    data, read by :func:`read_part10` with the pixels attached, one ValueCache."""
    cache = ValueCache()
    read = []
    for ds in series:
        header = copy.deepcopy(ds)
        pixels = header.PixelData
        del header.PixelData
        out = io.BytesIO()
        pydicom.dcmwrite(out, header, enforce_file_format=True)
        read.append(read_part10(out.getvalue(), pixels, "OW", cache=cache))
    return read


def _with_high_bits(ds: Dataset, allocated: int, stored: int, signed: bool, noise: int,
                    clean: bool = False) -> None:
    """``ds`` with BitsAllocated ``allocated``, BitsStored ``stored`` and every pixel's unused
    high bits set to ``noise`` (what a scanner may leave there: overlays, garbage); or, when
    ``clean``, holding the values themselves (sign-extended when ``signed``)."""
    values = np.frombuffer(ds.PixelData, dtype="<u2").astype(np.int64) & ((1 << stored) - 1)
    if clean and signed:
        top = 1 << (stored - 1)
        values = np.where(values & top, values - (top << 1), values)
    elif not clean:
        values |= (noise << stored) & ((1 << allocated) - 1)
    kind = "i" if clean and signed else "u"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = allocated, stored, stored - 1
    ds.PixelRepresentation = int(signed)
    ds.PixelData = values.astype(f"<{kind}{allocated // 8}").tobytes()


_LAYOUTS = [(16, 16), (16, 12), (16, 10), (16, 8), (8, 8), (8, 7), (8, 6)]


@settings(max_examples=40, deadline=None)
@given(
    layouts=st.lists(st.tuples(st.sampled_from(_LAYOUTS), st.booleans()), min_size=1,
                     max_size=5),
    noise=st.integers(0, 0xFF),
    volumes=st.sampled_from([1, 2]),
)
def test_unused_high_bits_are_cleared_per_instance_however_the_stack_mixes_them(
    layouts: list[tuple[tuple[int, int], bool]], noise: int, volumes: int
) -> None:
    """The bits above BitsStored are cleared (unsigned) or sign-extended (signed) for each
    instance by its own BitsAllocated, BitsStored and PixelRepresentation, whether every
    instance of a stack has the same (one operation over the stack) or they differ (slice by
    slice, in an output wider than some sources: uint16 + int16 -> int32): the volume is the
    one made from the same instances with those bits already clean."""
    slices = len(layouts)
    series = synthetic_series(n_slices=slices, n_volumes=volumes, rows=6, cols=5,
                              modality="MR", noise=300, rescale=(1.0, 0.0), seed=noise)
    clean = copy.deepcopy(series)
    for index, (dirty, plain) in enumerate(zip(series, clean, strict=True)):
        (allocated, stored), signed = layouts[index % slices]
        _with_high_bits(dirty, allocated, stored, signed, noise | 1)
        _with_high_bits(plain, allocated, stored, signed, 0, clean=True)
    stored = _as_stored(series)  # as the lake reads them: one pixel layout per format
    got, expected = series_to_nifti(series), series_to_nifti(clean)
    assert [r.reason_code for r in got[1]] == [r.reason_code for r in expected[1]]
    assert len(got[0]) == len(expected[0]) == 1
    assert _data(got[0][0]).dtype == _data(expected[0][0]).dtype
    np.testing.assert_array_equal(_data(got[0][0]), _data(expected[0][0]))
    from_lake = series_to_nifti(stored)
    assert all(isinstance(ds, Part10) for ds in stored)
    assert len(from_lake[0]) == 1 and not from_lake[1]
    assert _data(from_lake[0][0]).dtype == _data(expected[0][0]).dtype
    np.testing.assert_array_equal(_data(from_lake[0][0]), _data(expected[0][0]))


@settings(max_examples=30, deadline=None)
@given(stored_bits=st.lists(st.integers(9, 16), min_size=1, max_size=4),
       noise=st.integers(0, 0x7F), peak=st.booleans())
def test_unsigned_stacks_are_int16_exactly_when_every_value_fits(
    stored_bits: list[int], noise: int, peak: bool
) -> None:
    """An unsigned 16-bit stack of BitsStored < 16 is written as int16 (as dcm2niix) exactly
    when every value, once the bits above each instance's BitsStored are cleared, is below
    2**15 (the converter knows it without reading the voxels when every instance's bits
    were cleared from a BitsStored of at most 15, else reads the maximum), from pydicom's
    datasets and as the lake reads them; the voxels are the cleared values either way."""
    slices = len(stored_bits)
    series = synthetic_series(n_slices=slices, rows=5, cols=4, modality="MR", noise=300,
                              rescale=(1.0, 0.0), seed=noise)
    expected = []
    for ds, stored in zip(series, stored_bits, strict=True):
        values = np.frombuffer(ds.PixelData, dtype="<u2").astype(np.int64)
        if peak:
            values = values.copy()
            values[0] = (1 << stored) - 1  # the largest value BitsStored holds
        expected.append(values & ((1 << stored) - 1))
        dirty = (values & ((1 << stored) - 1)) | ((noise << stored) & 0xFFFF)
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, stored, stored - 1
        ds.PixelRepresentation = 0
        ds.PixelData = dirty.astype("<u2").tobytes()
    fits = max(stored_bits) < 16 and max(int(v.max()) for v in expected) < 1 << 15
    for read in (series, _as_stored(series)):
        volume = _only(series_to_nifti(read))
        data = np.asanyarray(volume.image.dataobj.get_unscaled())
        assert data.dtype == (np.int16 if fits else np.uint16)
        for z, values in enumerate(expected):
            np.testing.assert_array_equal(data[..., z], values.reshape(5, 4)[::-1].T)


def test_a_stack_mixing_pixel_representation_keeps_each_instances_stored_value() -> None:
    """review-s24 F6: unsigned 12-of-16-bit slices with garbage in bits 12-15 (0xF123: 291)
    stacked with a signed one (0x0FFF: -1) make an int32 volume of 291, 291, -1 (before: the
    correction was sized by the int32 output, giving 61731, 61731, 4095)."""
    series = synthetic_series(n_slices=3, rows=4, cols=4, modality="MR", bits_stored=12,
                              rescale=(1.0, 0.0))
    for index, ds in enumerate(series):
        ds.PixelRepresentation = int(index == 2)
        ds.PixelData = np.full((4, 4), 0x0FFF if index == 2 else 0xF123, "<u2").tobytes()
    data = _data(_only(series_to_nifti(series)))
    assert data.dtype == np.int32
    assert [np.unique(data[..., z]).tolist() for z in range(3)] == [[291], [291], [-1]]


@pytest.mark.parametrize("syntax", [RLELossless, JPEGLSLossless, JPEG2000Lossless])
def test_compressed_transfer_syntaxes_decode_to_the_same_volume(syntax: str) -> None:
    series = synthetic_series(n_slices=3, rows=64, cols=48, modality="MR", signed=True, noise=9)
    reference = _only(series_to_nifti(series))
    for ds in series:
        ds.compress(syntax)
    volume = _only(series_to_nifti(series))
    np.testing.assert_array_equal(_data(volume), _data(reference))


def _jpeg_ls_sources(shared: Path) -> list[Dataset]:
    """JPEG-LS objects: generated lossless and near-lossless, pydicom's, dcm_qa_ts's."""
    series = synthetic_series(n_slices=2, rows=64, cols=48, modality="MR", signed=True,
                              noise=9)
    series[0].compress(JPEGLSLossless)
    series[1].compress(JPEGLSNearLossless, jls_error=2)
    files = [get_testdata_file("MR_small_jpeg_ls_lossless.dcm"),
             *sorted((shared / "vendors" / "dcm_qa_ts" / "In").glob("*.dcm"))]
    found = [pydicom.dcmread(path) for path in files if path is not None]
    return series + [ds for ds in found
                     if ds.file_meta.TransferSyntaxUID in (JPEGLSLossless, JPEGLSNearLossless)]


def test_jpeg_ls_is_decoded_by_charls_to_what_pydicoms_first_plugin_gives() -> None:
    """The converter asks for pyjpegls (CharLS, faster); libjpeg, pydicom's first choice,
    decodes every JPEG-LS object to the same pixels and the same volume."""
    sources = _jpeg_ls_sources(SHARED_DATA)
    assert len(sources) >= 3
    for ds in sources:
        decoder = get_decoder(ds.file_meta.TransferSyntaxUID)
        charls = decoder.as_array(ds, decoding_plugin="pyjpegls")[0]
        libjpeg = decoder.as_array(ds, decoding_plugin="pylibjpeg")[0]
        np.testing.assert_array_equal(charls, libjpeg)
        volume = _only(series_to_nifti([ds]))
        expected = _only(series_to_nifti([_decompressed(ds, libjpeg)]))
        np.testing.assert_array_equal(_data(volume), _data(expected))


def test_a_failing_preferred_plugin_falls_back_to_pydicoms_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The JPEG-LS preference is a speed choice only: when CharLS fails on a frame, the
    converter decodes it as pydicom's plain order does (libjpeg), not refuses it (before:
    DECODE_FAILED)."""
    ds = _jpeg_ls_sources(SHARED_DATA)[0]
    decoder = get_decoder(ds.file_meta.TransferSyntaxUID)
    expected = _only(series_to_nifti([_decompressed(ds, decoder.as_array(ds)[0])]))
    as_array = type(decoder).as_array
    asked: list[object] = []

    def charls_fails(self: Any, src: Any, **kwargs: Any) -> Any:
        asked.append(kwargs.get("decoding_plugin"))
        if kwargs.get("decoding_plugin") == "pyjpegls":
            raise RuntimeError("CharLS could not decode the frame")
        return as_array(self, src, **kwargs)

    monkeypatch.setattr(type(decoder), "as_array", charls_fails)
    volume = _only(series_to_nifti([ds]))
    assert asked == ["pyjpegls", None]
    np.testing.assert_array_equal(_data(volume), _data(expected))


def _rle_sources(shared: Path) -> list[Dataset]:
    """RLE Lossless objects: generated (signed 12-bit, unsigned, several slices), pydicom's
    (8/16/32-bit, RGB, multi-frame), dcm_qa_ts's."""
    series = synthetic_series(n_slices=2, rows=64, cols=48, modality="MR", signed=True,
                              noise=9)
    series += synthetic_series(n_slices=1, rows=33, cols=17, noise=40, series_tag="rle2")
    for ds in series:
        ds.compress(RLELossless)
    names = ["MR_small_RLE.dcm", "emri_small_RLE.dcm", "SC_rgb_rle.dcm", "SC_rgb_rle_2frame.dcm",
             "SC_rgb_rle_16bit.dcm", "SC_rgb_rle_32bit.dcm", "rtdose_rle.dcm"]
    files = [get_testdata_file(name) for name in names]
    files += sorted((shared / "vendors" / "dcm_qa_ts" / "In").glob("*.dcm"))
    found = [pydicom.dcmread(path) for path in files if path is not None]
    return series + [ds for ds in found if ds.file_meta.TransferSyntaxUID == RLELossless]


def test_rle_is_decoded_to_what_pydicoms_decoder_gives() -> None:
    """Every RLE object, conformant or not, is decoded to what ``decoder.as_array(ds)``
    gives: the same volume as from those pixels stored natively (or the same refusal).
    Includes a frame whose first segment starts 4 bytes after the header, which
    pylibjpeg-rle refuses and pydicom's own decoder decodes (review-s24 F1: forcing
    pylibjpeg-rle refused it with DECODE_FAILED)."""
    sources = _rle_sources(SHARED_DATA)
    assert len(sources) >= 8
    gap = [malformed_rle(ds, "header_gap")
           for ds in synthetic_series(n_slices=3, rows=8, cols=8, modality="MR",
                                      series_tag="gap")]
    decoder = get_decoder(RLELossless)
    with pytest.raises(RuntimeError):
        decoder.as_array(gap[0], decoding_plugin="pylibjpeg")
    for series in [[ds] for ds in sources] + [gap]:
        plain = [_decompressed(ds, decoder.as_array(ds)[0]) for ds in series]
        for ds in plain:
            if "PlanarConfiguration" in ds:
                ds.PlanarConfiguration = 0  # decoded arrays are colour-by-pixel
        expected = series_to_nifti(plain)
        got = series_to_nifti(series)
        assert [r.reason_code for r in got[1]] == [r.reason_code for r in expected[1]]
        assert len(got[0]) == len(expected[0])
        for volume, reference in zip(got[0], expected[0], strict=True):
            assert _data(volume).dtype == _data(reference).dtype
            np.testing.assert_array_equal(_data(volume), _data(reference))
            assert volume.sidecar == reference.sidecar
    assert len(series_to_nifti(gap)[0]) == 1


def test_an_rle_frame_pylibjpeg_rle_panics_on_is_decoded_by_pydicoms_own_decoder() -> None:
    """review-s24 F2: pylibjpeg-rle panics (pyo3 PanicException, a BaseException) on a
    replicate run overrunning the frame; pydicom's own decoder decodes it to the original
    pixels, and so does the converter (before: the panic escaped series_to_nifti). A frame
    pydicom's decoder refuses too is refused with DECODE_FAILED, naming no value."""
    series = synthetic_series(n_slices=3, rows=8, cols=8, modality="MR", series_tag="pan")
    expected = _only(series_to_nifti(series))
    malformed_rle(series[1], "overrun")
    decoder = get_decoder(RLELossless)
    with pytest.raises(BaseException) as panic:
        decoder.as_array(series[1])
    assert type(panic.value).__module__ == "pyo3_runtime"
    with pytest.warns(UserWarning, match="non-conformant padding"):
        volume = _only(series_to_nifti(series))
    np.testing.assert_array_equal(_data(volume), _data(expected))
    malformed_rle(series[2], "overrun_miscounted")
    with pytest.warns(UserWarning, match="non-conformant padding"):
        volumes, refusals = series_to_nifti(series)
    assert volumes == []
    assert [r.reason_code for r in refusals] == [RefusalReason.DECODE_FAILED]
    assert "PixelDecodeError" in str(refusals[0])
    for value in PHI_SENTINELS.values():
        assert value not in str(refusals[0])


def _decompressed(ds: Dataset, array: np.ndarray[Any, Any]) -> Dataset:
    """A copy of ``ds`` holding ``array`` natively (explicit VR little endian)."""
    plain = copy.deepcopy(ds)
    plain.PixelData = np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<")
                                                        ).tobytes()
    plain.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return plain


def test_gap_is_refused_with_a_reason() -> None:
    volumes, refusals = series_to_nifti(
        synthetic_series(n_slices=10, rows=8, cols=8, gap_after=4)
    )
    assert volumes == []
    assert [r.reason_code for r in refusals] == [RefusalReason.MISSING_SLICES]
    assert "1 slice location(s) missing" in refusals[0].message


def test_uneven_spacing_is_refused() -> None:
    series = synthetic_series(rows=8, cols=8, positions=[0, 1, 2, 3, 4.6, 5.6, 6.6])
    volumes, refusals = series_to_nifti(series)
    assert volumes == []
    assert [r.reason_code for r in refusals] == [RefusalReason.UNEVEN_SPACING]


def test_small_position_jitter_is_tolerated() -> None:
    series = synthetic_series(rows=8, cols=8, positions=[0, 2.5, 5.004, 7.5, 10.0])
    volume = _only(series_to_nifti(series))
    assert _header(volume).get_zooms()[2] == pytest.approx(2.5)


def test_gantry_tilt_is_refused() -> None:
    series = synthetic_series(n_slices=10, rows=8, cols=8, tilt_degrees=12.0)
    volumes, refusals = series_to_nifti(series)
    assert volumes == []
    assert [r.reason_code for r in refusals] == [RefusalReason.GANTRY_TILT]
    assert "resampling" in refusals[0].message


def test_4d_series_with_tr_in_pixdim() -> None:
    series = synthetic_series(
        n_slices=6, rows=8, cols=10, modality="MR", n_volumes=4, repetition_time=1500.0,
        instance_numbers="shuffled",
    )
    order = np.random.default_rng(3).permutation(len(series))
    volume = _only(series_to_nifti([series[i] for i in order]))
    assert volume.image.shape == (10, 8, 6, 4)
    header: Any = volume.image.header
    assert float(header["pixdim"][4]) == pytest.approx(1.5)
    assert volume.sidecar["RepetitionTime"] == pytest.approx(1.5)
    data = _data(volume)
    for t in range(4):
        np.testing.assert_allclose(data[..., t] - data[..., 0], 50.0 * t, atol=1.01)


def test_incomplete_4d_series_is_refused() -> None:
    series = synthetic_series(n_slices=6, rows=8, cols=8, modality="MR", n_volumes=3)
    volumes, refusals = series_to_nifti(series[:-1])
    assert volumes == []
    assert [r.reason_code for r in refusals] == [RefusalReason.INCOMPLETE_VOLUMES]


def test_multi_echo_is_split_into_suffixed_volumes() -> None:
    series = synthetic_series(
        n_slices=5, rows=8, cols=8, modality="MR", echo_times=[12.0, 24.0, 36.0]
    )
    volumes, refusals = series_to_nifti(series[::-1])
    assert refusals == []
    assert [v.suffix for v in volumes] == ["_e1", "_e2", "_e3"]
    assert [v.sidecar["EchoTime"] for v in volumes] == pytest.approx([0.012, 0.024, 0.036])
    assert [v.sidecar["EchoNumber"] for v in volumes] == [1, 2, 3]
    np.testing.assert_allclose(_data(volumes[2]) - _data(volumes[0]), 800.0, atol=1.01)


def test_planes_are_shared_by_the_bytes_of_their_numbers() -> None:
    """The frames of a series read by the lake share one Plane per orientation, spacing and
    matrix (series_to_nifti's memo); an orientation of -0 is not one of 0, so each echo's
    frames have the plane of their own instances; the volumes are pydicom's datasets'."""
    series = synthetic_series(
        n_slices=3, rows=8, cols=8, modality="MR", echo_times=[12.0, 24.0],
        orientation=CORONAL,
    )
    for ds in series:
        if float(ds.EchoTime) == 24.0:
            ds.ImageOrientationPatient = [f"-{v}" if float(v) == 0 else str(v)
                                          for v in ds.ImageOrientationPatient]
    stored = _as_stored(series)
    planes: dict[tuple[Any, ...], Any] = {}  # the converter's internals: frames_of's memo
    frames = [f for i, ds in enumerate(stored)
              for f in _volume.frames_of(ds, i, {}, False, planes)]
    by_echo = {echo: {id(f.plane) for f in frames if f.echo_time == echo} for echo in (12, 24)}
    assert len(planes) == 2 and [len(p) for p in by_echo.values()] == [1, 1]
    for f in frames:
        assert f.plane is not None
        signs = np.signbit(np.concatenate([f.plane.row_cosine, f.plane.col_cosine]))
        assert signs.tolist() == [np.signbit(float(v)) for v in
                                  series[f.source].ImageOrientationPatient]
    expected, refused = series_to_nifti(series)
    got, refused_too = series_to_nifti(stored)
    assert not refused and not refused_too and len(got) == len(expected) == 2
    for mine, theirs in zip(got, expected, strict=True):
        assert mine.image.header.binaryblock == theirs.image.header.binaryblock
        np.testing.assert_array_equal(_data(mine), _data(theirs))
        assert mine.sidecar == theirs.sidecar


@settings(max_examples=300, deadline=None)
@given(st.lists(st.floats(allow_nan=False, allow_infinity=False, width=64), min_size=3,
                max_size=3)
       | st.lists(st.integers(-20000, 20000).map(lambda i: i / 10000 + 0.00005), min_size=3,
                  max_size=3))
def test_gradient_keys_are_rounded_as_numpy_rounds(values: list[float]) -> None:
    """A diffusion gradient's grouping key (4 decimals, in Python floats) is numpy's
    np.round(gradient, 4), halves and signs of zero included."""
    gradient = np.array(values, dtype=np.float64)
    with np.errstate(over="ignore"):  # beyond 1.8e304: inf, as x * 10.0**4 in Python
        expected = tuple(np.round(gradient, 4).tolist())
    got = _volume._rounded(gradient)
    assert got == expected
    assert [np.signbit(v) for v in got] == [np.signbit(v) for v in expected]


def test_phase_images_get_their_own_volume() -> None:
    magnitude = synthetic_series(n_slices=4, rows=8, cols=8, modality="MR", series_tag="mp")
    phase = synthetic_series(n_slices=4, rows=8, cols=8, modality="MR", series_tag="mp", seed=1)
    for ds in phase:
        ds.ImageType = ["ORIGINAL", "PRIMARY", "P", "ND"]
        ds.SOPInstanceUID = generate_uid()
    volumes, refusals = series_to_nifti(magnitude + phase)
    assert refusals == []
    assert [v.suffix for v in volumes] == ["", "_ph"]


def test_dwi_writes_fsl_bval_and_bvec_in_image_space() -> None:
    directions = [[0.0, 0, 0], [1.0, 0, 0], [0.0, 0.6, 0.8], [0.48, -0.6, 0.64]]
    series = synthetic_series(
        n_slices=4, rows=8, cols=8, modality="MR", n_volumes=4,
        bvalues=[0, 1000, 1000, 2000], bvecs=directions,
    )
    volume = _only(series_to_nifti(series))
    assert volume.bval is not None and volume.bvec is not None
    np.testing.assert_array_equal(volume.bval, [0, 1000, 1000, 2000])
    # axial, slices ascending: image axes are (+x, -y, +z) in LPS; det < 0 so no x flip
    expected = np.array(directions, dtype=float) * np.array([1.0, -1.0, 1.0])
    np.testing.assert_allclose(volume.bvec.T, expected, atol=1e-6)


def test_enhanced_multiframe_matches_the_classic_series() -> None:
    series = synthetic_series(n_slices=7, rows=12, cols=10, modality="MR", n_volumes=3)
    classic = _only(series_to_nifti(series))
    shuffled = np.random.default_rng(5).permutation(len(series))
    enhanced = _only(series_to_nifti([enhanced_from(series, shuffled.tolist())]))
    assert nifti_payload(enhanced.image) == nifti_payload(classic.image)
    assert enhanced.sidecar["EchoTime"] == classic.sidecar["EchoTime"]
    assert enhanced.sidecar["RepetitionTime"] == classic.sidecar["RepetitionTime"]


def test_single_2d_image() -> None:
    volume = _only(series_to_nifti(synthetic_series(n_slices=1, rows=8, cols=6)))
    assert volume.image.shape == (6, 8, 1)
    assert _header(volume).get_zooms()[2] == pytest.approx(2.5)  # SliceThickness
    np.testing.assert_allclose(_data(volume), _expected(volume), atol=1.01)


def test_mixed_series_and_mixed_geometry_are_refused() -> None:
    a = synthetic_series(n_slices=3, rows=8, cols=8, series_tag="a")
    b = synthetic_series(n_slices=3, rows=8, cols=8, series_tag="b")
    assert series_to_nifti(a + b)[1][0].reason_code is RefusalReason.MIXED_SERIES
    sagittal = synthetic_series(n_slices=3, rows=8, cols=8, series_tag="a", orientation=SAGITTAL)
    for ds in sagittal:
        ds.SOPInstanceUID = generate_uid()
    volumes, refusals = series_to_nifti(a + sagittal)
    assert volumes == [] and refusals[0].reason_code is RefusalReason.MIXED_GEOMETRY


_NEAR_TOLERANCE = st.sampled_from([0.0, 1e-4, -1e-4, 1.00001e-4, -1.00001e-4, 1.1e-4, 9e-5,
                                    2e-4, 1e-12, -5e-5, 3e-3])


@settings(max_examples=60, deadline=None)
@given(shifts=st.lists(st.lists(_NEAR_TOLERANCE, min_size=6, max_size=6), min_size=2,
                       max_size=4),
       oblique=st.booleans())
def test_orientations_that_differ_in_their_last_digits_are_judged_as_numpy_judges_them(
    shifts: list[list[float]], oblique: bool
) -> None:
    """Instances whose ImageOrientationPatient differs from the first instance's by about
    the tolerance (1e-4) are one stack exactly when ``np.allclose(first, other,
    atol=1e-4)`` says so for both cosines, else the series is refused as mixed geometry."""
    base = OBLIQUE if oblique else (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    series = synthetic_series(n_slices=len(shifts), rows=4, cols=4, orientation=base)
    shifts[0] = [0.0] * 6  # the first instance's plane must stay orthonormal
    cosines = []
    for ds, shift in zip(series, shifts, strict=True):
        ds.ImageOrientationPatient = [f"{v + d:.12g}" for v, d in zip(base, shift, strict=True)]
        cosines.append(np.array([float(v) for v in ds.ImageOrientationPatient]))
    first = cosines[0]
    together = all(
        np.array_equal(first, other)
        or (np.allclose(first[:3], other[:3], atol=1e-4)
            and np.allclose(first[3:], other[3:], atol=1e-4))
        for other in cosines[1:]
    )
    volumes, refusals = series_to_nifti(series)
    mixed = [r for r in refusals if r.reason_code is RefusalReason.MIXED_GEOMETRY
             and r.message.startswith("frames differ in orientation")]
    assert bool(mixed) is not together
    if together and not refusals:
        assert len(volumes) == 1


def test_instances_without_pixels_or_geometry() -> None:
    series = synthetic_series(n_slices=4, rows=8, cols=8)
    del series[2].PixelData
    volumes, refusals = series_to_nifti(series)
    # the hole left by the pixel-less instance is a missing slice...
    assert [r.reason_code for r in refusals] == [
        RefusalReason.NO_PIXEL_DATA, RefusalReason.MISSING_SLICES
    ]
    assert volumes == []
    series = synthetic_series(n_slices=4, rows=8, cols=8)
    del series[3].PixelData
    volumes, refusals = series_to_nifti(series)  # ...at the end it shortens the stack
    assert volumes[0].image.shape == (8, 8, 3)
    series = synthetic_series(n_slices=4, rows=8, cols=8)
    del series[1].ImagePositionPatient
    volumes, refusals = series_to_nifti(series)
    assert volumes == [] and refusals[0].reason_code is RefusalReason.MISSING_GEOMETRY
    with pytest.raises(ExportError):
        series_to_nifti([])


def test_palette_colour_is_refused() -> None:
    from pydicom.data import get_testdata_file

    path = get_testdata_file("OBXXXX1A.dcm")
    if not isinstance(path, str):
        pytest.skip("OBXXXX1A.dcm needs pydicom-data")
    ds = pydicom.dcmread(path)
    volumes, refusals = series_to_nifti([ds])
    assert volumes == []
    assert refusals[0].reason_code is RefusalReason.UNSUPPORTED_PIXELS


def test_input_datasets_are_not_modified() -> None:
    series = synthetic_series(n_slices=3, rows=8, cols=8)
    before = [ds.to_json_dict() for ds in series]
    series_to_nifti(series)
    assert [ds.to_json_dict() for ds in series] == before
    assert all(getattr(ds, "_pixel_array", None) is None for ds in series)


# ------------------------------------------------------------------------------ writing


def test_write_is_byte_deterministic_and_thread_count_independent(tmp_path: Path) -> None:
    series = synthetic_series(n_slices=30, rows=64, cols=64, noise=20.0)
    volume = _only(series_to_nifti(series))
    first = write_volume(volume, tmp_path / "a" / "ct", compress=True, level=6, threads=1)
    again = _only(series_to_nifti(list(reversed(series))))
    second = write_volume(again, tmp_path / "b" / "ct", compress=True, level=6, threads=4)
    for p, q in zip(first, second, strict=True):
        assert p.read_bytes() == q.read_bytes(), p.name
    blob = first[0].read_bytes()
    assert blob[:4] == b"\x1f\x8b\x08\x00" and blob[4:8] == b"\x00\x00\x00\x00"  # no FNAME, mtime 0
    plain = write_volume(volume, tmp_path / "c" / "ct", compress=False, level=6)
    assert gzip.decompress(blob) == plain[0].read_bytes()
    loaded: Any = nib.load(first[0])
    np.testing.assert_array_equal(np.asanyarray(loaded.dataobj), _data(volume))
    assert not list(tmp_path.rglob("*.part"))


@pytest.mark.parametrize("size", [0, 1, (1 << 20) - 1, 1 << 20, (1 << 20) + 1, 3 * (1 << 20) + 5])
def test_parallel_gzip_round_trips_any_length(size: int) -> None:
    data = np.random.default_rng(size).integers(0, 4, size, dtype=np.uint8).tobytes()
    chunks = [data[: size // 3], data[size // 3 :]]
    packed = b"".join(gzip_members(chunks, 1, threads=3))
    assert gzip.decompress(packed) == data


def test_gzip_level_is_validated(tmp_path: Path) -> None:
    volume = _only(series_to_nifti(synthetic_series(n_slices=2, rows=4, cols=4)))
    with pytest.raises(ConfigError):
        write_volume(volume, tmp_path / "x", compress=True, level=12)


def test_write_failure_raises_export_error_and_leaves_nothing(tmp_path: Path) -> None:
    volume = _only(series_to_nifti(synthetic_series(n_slices=2, rows=4, cols=4)))
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(ExportError):
        write_volume(volume, blocker / "ct", compress=False, level=6)
    readonly = tmp_path / "ro"
    readonly.mkdir()
    (readonly / "ct.nii").mkdir()  # a folder where the image should go
    with pytest.raises(ExportError):
        write_volume(volume, readonly / "ct", compress=False, level=6)
    assert [p.name for p in readonly.iterdir()] == ["ct.nii"]


def test_dwi_files_are_written(tmp_path: Path) -> None:
    series = synthetic_series(
        n_slices=3, rows=4, cols=4, modality="MR", n_volumes=2, bvalues=[0, 1000],
        bvecs=[[0, 0, 0], [0, 0, 1]],
    )
    paths = write_volume(_only(series_to_nifti(series)), tmp_path / "dwi", False, 6)
    assert [p.name for p in paths] == ["dwi.nii", "dwi.json", "dwi.bval", "dwi.bvec"]
    assert paths[2].read_text() == "0 1000\n"
    assert paths[3].read_text() == "0 0\n0 0\n0 1\n"


def test_no_phi_reaches_any_output(tmp_path: Path) -> None:
    series = synthetic_series(n_slices=4, rows=8, cols=8, modality="MR", n_volumes=2,
                              bvalues=[0, 1000], bvecs=[[0, 0, 0], [1, 0, 0]])
    volume = _only(series_to_nifti(series))
    assert not FORBIDDEN_KEYS & set(volume.sidecar)
    written = write_volume(volume, tmp_path / "out", compress=False, level=6)
    for path in written:
        content = path.read_bytes()
        for value in PHI_SENTINELS.values():
            assert value.encode() not in content, (path.name, value)
    sidecar = json.loads(written[1].read_text())
    assert "PatientName" not in sidecar and "PatientID" not in sidecar
    # the sentinels are really in the input, so the check above can fail
    assert all(str(series[0].get(k)) == v for k, v in PHI_SENTINELS.items())


@settings(max_examples=40, deadline=None)
@given(
    data=st.binary(min_size=0, max_size=3 * 4096),
    cuts=st.lists(st.integers(min_value=0, max_value=3 * 4096), max_size=4),
    level=st.integers(min_value=0, max_value=9),
)
def test_parallel_gzip_round_trip_property(data: bytes, cuts: list[int], level: int) -> None:
    bounds = sorted({0, len(data), *(min(c, len(data)) for c in cuts)})
    chunks = [data[a:b] for a, b in itertools.pairwise(bounds)]
    assert gzip.decompress(b"".join(gzip_members(chunks, level, threads=2))) == data


def test_enhanced_multi_echo_is_split_by_echo_time_rank() -> None:
    series = synthetic_series(
        n_slices=4, rows=8, cols=8, modality="MR", echo_times=[9.0, 18.0, 27.0]
    )
    volumes, refusals = series_to_nifti([enhanced_from(series)])
    assert refusals == []
    assert [v.suffix for v in volumes] == ["_e1", "_e2", "_e3"]
    assert [v.sidecar["EchoTime"] for v in volumes] == pytest.approx([0.009, 0.018, 0.027])


def test_zero_pixel_spacing_is_refused_not_raised() -> None:
    """A CR with PixelSpacing 0\\0 (seen in the demo lake) has no valid affine: refuse it."""
    from pydicom import dcmread
    from pydicom.data import get_testdata_file

    ds = dcmread(get_testdata_file("RG1_UNCR.dcm"))  # a real CR with PixelSpacing 0.000\\0.000
    assert [float(v) for v in ds.PixelSpacing] == [0.0, 0.0]
    volumes, refusals = series_to_nifti([ds])
    assert volumes == []
    assert [r.reason_code for r in refusals] == [RefusalReason.INVALID_GEOMETRY]


@pytest.mark.parametrize(
    ("technique", "direction", "written"),
    [("GRAPPA", "PHASE", True), ("SMITHJ", "JONES", False)],
)
def test_coded_sidecar_values_come_from_a_closed_vocabulary(
    technique: str, direction: str, written: bool
) -> None:
    """A CS element can hold any upper-case word, a surname too: only defined terms pass."""
    series = synthetic_series(n_slices=4, rows=8, cols=8, modality="MR")
    enhanced = enhanced_from(series)
    modifier = Dataset()
    modifier.ParallelAcquisitionTechnique = technique
    modifier.PartialFourierDirection = direction
    modifier.PartialFourier = "YES"
    enhanced.SharedFunctionalGroupsSequence[0].MRModifierSequence = [modifier]
    sidecar = _only(series_to_nifti([enhanced])).sidecar
    assert ("ParallelAcquisitionTechnique" in sidecar) is written
    assert ("PartialFourierDirection" in sidecar) is written
    if written:
        assert sidecar["ParallelAcquisitionTechnique"] == technique
        assert sidecar["PartialFourierDirection"] == direction
    else:
        assert not {technique, direction} & {str(v) for v in sidecar.values()}
