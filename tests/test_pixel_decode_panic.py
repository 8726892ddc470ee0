"""A native decoding plugin's panic at the lake's pixel decode sites (review-s24 F2).

pylibjpeg-rle 2.2.0 panics (pyo3 ``PanicException``, a BaseException, not an Exception) on an
RLE segment whose last replicate run overruns the frame; pydicom's own RLE decoder decodes the
frame. Before the fix the panic passed every ``except Exception``: a whole ``lake ingest`` batch
failed (nothing landed, nothing quarantined) and a whole export failed with a traceback. Now
the frame is decoded by pydicom's own decoder, and a frame that decoder refuses too is the
site's own refusal (quarantined ``pixel_decode``, export skip ``decode_failed``).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from pydicom import dcmread
from pydicom.pixels import get_decoder
from pydicom.uid import RLELossless

import lake
from lake.nifti import PixelDecodeError, decode_past_panic, is_native_panic, series_to_nifti
from tests.ingest_helpers import LAKE, cli_env
from tests.nifti_synth import PHI_SENTINELS, malformed_rle, synthetic_series


def _panics(ds: object) -> BaseException:
    """What pylibjpeg-rle raises decoding ``ds`` (a real panic, not a stand-in)."""
    try:
        get_decoder(RLELossless).as_array(ds, decoding_plugin="pylibjpeg")
    except BaseException as exc:  # noqa: BLE001 - the panic is what is looked at
        return exc
    raise AssertionError("pylibjpeg-rle decoded the malformed frame")


def test_a_panic_is_decoded_past_or_becomes_an_exception_naming_no_value() -> None:
    ds = synthetic_series(n_slices=1, rows=8, cols=8, modality="MR")[0]
    original = ds.pixel_array.copy()
    malformed_rle(ds, "overrun")
    panic = _panics(ds)
    assert is_native_panic(panic) and not isinstance(panic, Exception)
    decoder = get_decoder(RLELossless)
    with pytest.warns(UserWarning, match="non-conformant padding"):
        array = decode_past_panic(lambda **plugin: decoder.as_array(ds, **plugin)[0])
    np.testing.assert_array_equal(array, original)

    malformed_rle(bad := synthetic_series(n_slices=1, rows=8, cols=8, modality="MR")[0],
                  "overrun_miscounted")
    assert is_native_panic(_panics(bad))
    with pytest.raises(PixelDecodeError) as refused:
        decode_past_panic(lambda **plugin: decoder.as_array(bad, **plugin)[0])
    assert isinstance(refused.value, lake.LakeError)
    assert refused.value.__cause__ is None and refused.value.__context__ is None
    assert not any(value in str(refused.value) for value in PHI_SENTINELS.values())


def test_only_a_native_panic_is_retried() -> None:
    calls: list[dict[str, object]] = []

    def interrupted(**plugin: object) -> None:
        calls.append(plugin)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        decode_past_panic(interrupted)
    with pytest.raises(SystemExit):
        decode_past_panic(lambda **plugin: (_ for _ in ()).throw(SystemExit(3)))
    with pytest.raises(ValueError, match="plain"):
        decode_past_panic(lambda **plugin: (_ for _ in ()).throw(ValueError("plain")))
    assert calls == [{}]


def _write(folder: Path, kinds: list[str | None], **series: object) -> list[Path]:
    """The synthetic series, slice ``i`` RLE-compressed with ``malformed_rle(kinds[i])``."""
    folder.mkdir(parents=True)
    paths = []
    for index, (ds, kind) in enumerate(zip(synthetic_series(n_slices=len(kinds), **series),
                                           kinds, strict=True)):
        if kind is None:
            ds.compress(RLELossless)
        else:
            malformed_rle(ds, kind)
        paths.append(folder / f"{index}.dcm")
        ds.save_as(paths[-1], enforce_file_format=True)
    return paths


def _no_phi(text: str) -> None:
    assert "Traceback" not in text
    assert not any(value in text for value in PHI_SENTINELS.values())


@pytest.mark.parametrize("scheduler", ["sync", "pool"])
def test_ingest_keeps_a_frame_past_the_panic_and_quarantines_an_undecodable_one(
    tmp_path: Path, scheduler: str
) -> None:
    """The reviewer's GE CT probe (burned-in annotation: the teaching profile masks pixels,
    so ingest decodes them): the good slice lands, the slice pylibjpeg-rle panics on lands
    through pydicom's own decoder, the slice no decoder can decode is quarantined with its
    reason, and the exit code says "quarantined" (before: rc 1 or 70, nothing landed)."""
    _write(tmp_path / "in", [None, "overrun", "overrun_miscounted"], rows=512, cols=512,
           modality="CT", series_tag="pan")
    for path in (tmp_path / "in").iterdir():
        ds = dcmread(path)
        ds.Manufacturer, ds.BurnedInAnnotation = "GE MEDICAL SYSTEMS", "YES"
        ds.save_as(path, enforce_file_format=True)
    env = cli_env(tmp_path)
    done = subprocess.run([LAKE, "ingest", str(tmp_path / "in"), "--profile", "teaching",
                           "--scheduler", scheduler, "--workers", "2", "-q"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 3, done.stderr[-3000:]
    _no_phi(done.stdout + done.stderr)
    lk = lake.open(tmp_path / "lake")
    assert lk.sql("SELECT count(*) FROM instances").fetchall() == [(2,)]
    rows = lk.sql("SELECT reason, message FROM quarantine").fetchall()
    assert [reason for reason, _ in rows] == ["pixel_decode"]
    _no_phi(rows[0][1])
    assert "PixelDecodeError" in rows[0][1]


def test_export_decodes_past_the_panic_and_refuses_an_undecodable_series(
    tmp_path: Path,
) -> None:
    """The reviewer's MR probe: a series with a slice pylibjpeg-rle panics on is exported
    through pydicom's own decoder, to the volume of its original pixels; a series with a slice
    no decoder can decode is refused with decode_failed; the good series is exported too
    (before: rc 1, a traceback, no output)."""
    _write(tmp_path / "in" / "good", [None] * 3, rows=8, cols=8, modality="MR",
           series_tag="good")
    _write(tmp_path / "in" / "kept", [None, "overrun", None], rows=8, cols=8, modality="MR",
           series_tag="kept")
    _write(tmp_path / "in" / "bad", [None, "overrun_miscounted", None], rows=8, cols=8,
           modality="MR", series_tag="bad")
    env = cli_env(tmp_path)
    done = subprocess.run([LAKE, "ingest", str(tmp_path / "in"), "--scheduler", "sync", "-q"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / "out"
    exported = subprocess.run([LAKE, "export", "nifti", "--sql",
                               "SELECT SeriesInstanceUID FROM series", "--out", str(out), "-q"],
                              env=env, capture_output=True, text=True, timeout=300)
    _no_phi(exported.stdout + exported.stderr)
    assert exported.returncode == 4, exported.stderr[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert [skip["reason"] for skip in manifest["skipped"]] == ["decode_failed"]
    _no_phi(json.dumps(manifest))
    volumes = sorted(np.asanyarray(nib.load(path).dataobj).tobytes()  # type: ignore[attr-defined]
                     for path in out.rglob("*.nii"))
    expected = []
    for tag in ("good", "kept"):  # the volumes of the uncompressed originals
        result = series_to_nifti(synthetic_series(n_slices=3, rows=8, cols=8, modality="MR",
                                                  series_tag=tag))
        expected.append(np.asanyarray(result[0][0].image.dataobj).tobytes())
    assert volumes == sorted(expected)


def test_web_renders_and_converts_past_the_panic_and_refuses_an_undecodable_frame(
    tmp_path: Path,
) -> None:
    """WADO-RS rendered and Explicit VR Little Endian answers: the frame pylibjpeg-rle
    panics on is rendered / converted from pydicom's own decoding; one no decoder can decode
    is NotAcceptableError (HTTP 406, one line), not a panic (before: an escaped
    BaseException, the server's internal error)."""
    from lake.web._errors import NotAcceptableError
    from lake.web._render import render
    from lake.web._stored import decoded_pixels

    kept, bad = _write(tmp_path / "in", ["overrun", "overrun_miscounted"], rows=8, cols=8,
                       modality="MR")
    original = synthetic_series(n_slices=2, rows=8, cols=8, modality="MR")[0]
    assert render(kept.read_bytes(), 1, "image/png", {}, None)[:8] == b"\x89PNG\r\n\x1a\n"
    _, pixels = decoded_pixels(kept.read_bytes())
    assert pixels == original.PixelData
    for call in (lambda: render(bad.read_bytes(), 1, "image/png", {}, None),
                 lambda: decoded_pixels(bad.read_bytes())):
        with pytest.raises(NotAcceptableError) as refused:
            call()
        assert "PixelDecodeError" in str(refused.value)
        _no_phi(str(refused.value))


def test_sending_to_a_peer_transcodes_past_the_panic_and_refuses_an_undecodable_frame(
    tmp_path: Path,
) -> None:
    """C-GET/C-MOVE to a peer accepting only Explicit VR Little Endian: the frame
    pylibjpeg-rle panics on is decompressed by pydicom's own decoder; one no decoder can
    decode is a NetError (that sub-operation fails, the association goes on), not a panic."""
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage
    from pynetdicom.presentation import build_context

    from lake.net._objects import prepare_for

    kept, bad = _write(tmp_path / "in", ["overrun", "overrun_miscounted"], rows=8, cols=8,
                       modality="MR")
    original = synthetic_series(n_slices=2, rows=8, cols=8, modality="MR")[0]
    accepted = [build_context(MRImageStorage, ExplicitVRLittleEndian)]
    with pytest.warns(UserWarning, match="non-conformant padding"):
        sent = prepare_for(dcmread(kept), accepted)
    assert sent.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert sent.PixelData == original.PixelData
    with pytest.raises(lake.NetError) as refused:
        prepare_for(dcmread(bad), accepted)
    assert "PixelDecodeError" in str(refused.value)
    _no_phi(str(refused.value))


def test_ingest_tells_the_same_instance_past_the_panic(
    lk: lake.Lake, vault_dir: Path, tmp_path: Path
) -> None:
    """An instance stored uncompressed, then received again as RLE in another batch: its
    pixels are compared decoded (ingest's identity check); the frame pylibjpeg-rle panics on
    is decoded by pydicom's own decoder and found the same (a duplicate); one no decoder can
    decode is not shown to be the same (a uid_conflict, quarantined), the lake keeps the
    first (before: the panic failed the batch)."""
    folders = [tmp_path / name for name in ("plain", "kept", "bad")]
    for folder, kind in zip(folders, (None, "overrun", "overrun_miscounted"), strict=True):
        ds = synthetic_series(n_slices=1, rows=8, cols=8, modality="MR")[0]
        if kind is not None:
            malformed_rle(ds, kind)
        folder.mkdir()
        ds.save_as(folder / "1.dcm", enforce_file_format=True)
    assert lk.ingest([str(folders[0])], vault=vault_dir, scheduler="sync").ingested == 1
    with pytest.warns(UserWarning, match="non-conformant padding"):
        kept = lk.ingest([str(folders[1])], vault=vault_dir, scheduler="sync")
    assert (kept.ingested, kept.duplicates, kept.conflicts) == (0, 1, 0)
    bad = lk.ingest([str(folders[2])], vault=vault_dir, scheduler="sync")
    assert (bad.ingested, bad.duplicates, bad.conflicts, bad.quarantined) == (0, 0, 1, 1)
    assert lk.sql("SELECT count(*) FROM instances").fetchall() == [(1,)]


def test_a_teaching_preview_renders_past_the_panic(tmp_path: Path) -> None:
    """The teaching set's series preview: the frame pylibjpeg-rle panics on is rendered from
    pydicom's own decoding; one no decoder can decode raises PixelDecodeError, an Exception
    the writer reports as preview_failed (before: the panic ended the whole export)."""
    from lake.export._teaching import preview_png

    kept, bad = _write(tmp_path / "in", ["overrun", "overrun_miscounted"], rows=8, cols=8,
                       modality="MR")
    png = preview_png([(dcmread(kept), kept.read_bytes())])
    assert png is not None and png[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(PixelDecodeError):
        preview_png([(dcmread(bad), bad.read_bytes())])
