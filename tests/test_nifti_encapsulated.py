"""Compressed pixel data kept apart from the header (the lake's blobs) is read by the fast
reader and decoded by pydicom's decoders with the options pydicom reads from a dataset.

Before session 26, :func:`lake.nifti.read_part10` gave every header of a compressed object to
``pydicom.dcmread`` (a third of dcm_qa_ts's conversion outside decoding); it now returns a
:class:`lake.nifti.Part10` and the converter passes its pixel data to
``Decoder.as_array`` with the Image Pixel values, keyword and VR that pydicom would take
from its own dataset. Checked here on every compressed object of the test data: the options
pydicom's decode runner ends up with are the same, and so are the volumes, sidecars and
refusals of ``series_to_nifti``.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_files
from pydicom.dataset import Dataset
from pydicom.pixels.decoders.base import DecodeRunner
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, JPEGLSNearLossless, RLELossless

from lake.nifti import NiftiVolume, Part10, nifti_payload, read_part10, series_to_nifti
from tests.conftest import SHARED_DATA
from tests.nifti_synth import synthetic_series


def _compressed_corpus() -> list[Dataset]:
    """Every compressed object of pydicom's test files (and pydicom-data's, when present),
    dcm_qa_ts's and dcm_qa's (when present), and generated RLE, JPEG-LS and JPEG 2000."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        paths = [Path(f) for f in get_testdata_files("**/*")]
        for name in ("vendors/dcm_qa_ts/In", "dcm_qa/In"):
            paths += sorted((SHARED_DATA / name).rglob("*"))
        found: list[Dataset] = []
        for path in sorted(set(paths)):
            try:
                ds = pydicom.dcmread(path)
            except Exception:  # noqa: BLE001 - not a Part-10 file pydicom reads
                continue
            syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
            if syntax is not None and syntax.is_encapsulated and "PixelData" in ds:
                try:
                    _written(ds)
                except Exception:  # noqa: BLE001 - pydicom cannot write it (implicit VR 'UN')
                    continue
                found.append(ds)
    made = synthetic_series(n_slices=4, rows=64, cols=48, modality="MR", signed=True, noise=9)
    for ds, (syntax, options) in zip(made, [(RLELossless, {}), (JPEGLSLossless, {}),
                                            (JPEGLSNearLossless, {"jls_error": 2}),
                                            (JPEG2000Lossless, {})], strict=True):
        ds.compress(syntax, **options)
    return found + made


def _apart(ds: Dataset) -> tuple[bytes, bytes, str]:
    """The header without its pixel data, the pixel data, its VR: what the lake stores."""
    header = pydicom.dcmread(io.BytesIO(_written(ds)))
    element = header["PixelData"]
    pixels, vr = element.value, element.VR
    del header.PixelData
    return _written(header), pixels, vr


def _written(ds: Dataset) -> bytes:
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _outcome(datasets: list[Any]) -> tuple[list[tuple[bytes, bytes, dict[str, Any]]],
                                           list[tuple[str, str]], list[dict[str, Any]]]:
    """Volumes (header, voxels, sidecar), refusals and the decode runners' options."""
    seen: list[dict[str, Any]] = []
    validate = DecodeRunner.validate

    def recording(runner: DecodeRunner) -> None:
        seen.append(dict(runner.options))
        validate(runner)

    with pytest.MonkeyPatch.context() as patch, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        patch.setattr(DecodeRunner, "validate", recording)
        volumes, refusals = series_to_nifti(datasets)
    return ([_volume_bytes(v) for v in volumes],
            [(r.reason_code.value, r.message) for r in refusals], seen)


def _volume_bytes(volume: NiftiVolume) -> tuple[bytes, bytes, dict[str, Any]]:
    header, voxels = nifti_payload(volume.image)
    return header, bytes(voxels), volume.sidecar


def test_compressed_pixels_apart_decode_as_from_pydicoms_dataset() -> None:
    corpus = _compressed_corpus()
    assert len(corpus) >= 40
    syntaxes = set()
    decoded = 0
    for ds in corpus:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom's about the test files' odd values
            header, pixels, vr = _apart(ds)
            fast = read_part10(header, pixels, vr)
            plain = pydicom.dcmread(io.BytesIO(header))
        assert isinstance(fast, Part10), ds.filename  # before session 26: a pydicom Dataset
        plain.add_new(0x7FE00010, vr, pixels)
        plain["PixelData"].is_undefined_length = True
        got, expected = _outcome([fast]), _outcome([plain])
        assert got[2] == expected[2]  # the same options reached pydicom's decoders
        assert got[1] == expected[1]
        assert len(got[0]) == len(expected[0])
        for (head, voxels, sidecar), (head_e, voxels_e, sidecar_e) in zip(
                got[0], expected[0], strict=True):
            assert head == head_e and sidecar == sidecar_e
            assert np.array_equal(np.frombuffer(voxels, np.uint8),
                                  np.frombuffer(voxels_e, np.uint8))
        syntaxes.add(str(ds.file_meta.TransferSyntaxUID))
        decoded += bool(got[0])
    assert len(syntaxes) >= 8 and decoded >= 30  # 71 objects, 8 syntaxes (2026-12-07)


def test_an_option_pydicom_reads_from_the_dataset_is_passed_on() -> None:
    """The runner's options from a Part10 include every Image Pixel value and the pixel
    element's VR: a dataset whose NumberOfFrames is absent decodes one frame either way,
    and the options differ from pydicom's when the VR is not passed on."""
    ds = synthetic_series(n_slices=1, rows=16, cols=8, modality="MR", noise=3)[0]
    ds.compress(RLELossless)
    header, pixels, vr = _apart(ds)
    fast = read_part10(header, pixels, vr)
    assert isinstance(fast, Part10)
    got = _outcome([fast])[2]
    assert got and got[0]["pixel_vr"] == vr and got[0]["number_of_frames"] == 1
    assert {"rows", "columns", "bits_allocated", "bits_stored", "pixel_representation",
            "samples_per_pixel", "photometric_interpretation"} <= set(got[0])
