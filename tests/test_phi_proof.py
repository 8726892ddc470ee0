"""Lake-level proof that no planted identifier escapes: not into the lake's files, its tables
(decoded), the command output, or any export. Uses the token-planted corpus of tests/deid_corpus.py.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import subprocess
import sys
import warnings
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow as pa
import pytest
import typer
from deltalake import DeltaTable
from pydicom import config
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

import lake
from lake.deid import ProfileOption, load_profile
from lake.deid._values import shift_da, shift_days
from lake.ingest import Accepted, Ingestor, Rejected
from lake.ingest._instance import IMPLEMENTATION_CLASS_UID
from lake.vault import Secret
from tests.deid_corpus import expected_absent, patient_label, write_corpus

LAKE = str(Path(sys.executable).with_name("lake"))
N_PATIENTS = 2


def _run(env: dict[str, str], *args: str, ok: tuple[int, ...] = (0,)) -> str:
    proc = subprocess.run([LAKE, *args], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode in ok, (args, proc.returncode, proc.stderr[-3000:])
    return proc.stdout + proc.stderr


def _file_texts(root: Path) -> Iterator[tuple[str, bytes]]:
    """Every file below ``root``, with zip members and gzip streams opened too."""
    for path in sorted(root.rglob("*")):
        if not path.is_file():
            continue
        data = path.read_bytes()
        yield str(path), data
        if path.suffix == ".gz":
            yield f"{path} (gunzipped)", gzip.decompress(data)
        if path.suffix == ".zip":
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                for name in archive.namelist():
                    yield f"{path}!{name}", name.encode() + b"\n" + archive.read(name)
        yield f"{path} (name)", path.name.encode()


def _table_texts(lake_root: Path) -> Iterator[tuple[str, bytes]]:
    """Every Delta table, decoded: every value of every column of every version's files."""
    for table_dir in sorted((lake_root / "tables").iterdir()):
        table = DeltaTable(str(table_dir)).to_pyarrow_dataset().to_table()
        for name in table.column_names:
            yield f"{table_dir.name}.{name}", _column_bytes(table.column(name))


def _column_bytes(column: pa.ChunkedArray) -> bytes:
    """Every value of ``column``: binary values as they are, others as their repr."""
    if pa.types.is_binary(column.type) or pa.types.is_large_binary(column.type):
        return b"".join(v for v in column.to_pylist() if v)
    return repr(column.to_pylist()).encode()


def _parquet_texts(root: Path) -> Iterator[tuple[str, bytes]]:
    """Every Parquet file below ``root`` decoded, whatever writes it: the Delta tables' files of
    every version and the catalog's summaries (series/study parts, representative headers),
    which are zstd-compressed on disk, so the raw-byte scan alone cannot see inside them."""
    import pyarrow.parquet as pq

    for path in sorted(root.rglob("*.parquet")):
        table = pq.read_table(path)
        for name in table.column_names:
            yield f"{path}:{name}", _column_bytes(table.column(name))


def test_the_proof_reads_inside_the_compressed_summaries(tmp_path: Path) -> None:
    """Review s19 N4: a summary file (``_summary/v1/rep_headers``, zstd-compressed like the
    catalog writes it) holding a planted name is invisible to the raw-byte scan; the proof
    decodes it (negative control for the helpers the proofs above use)."""
    import pyarrow.parquet as pq

    token = "TKNREPHEADER4242"
    folder = tmp_path / "lake" / "_summary" / "v1" / "rep_headers"
    folder.mkdir(parents=True)
    # one planted name among others: neither the column's minimum nor its maximum (those are
    # stored uncompressed in the footer's statistics), so only decoding finds it
    names = pa.array([f"AAA^{i:04d}" for i in range(200)] + [f"{token}^X"]
                     + [f"ZZZ^{i:04d}" for i in range(200)])
    pq.write_table(pa.table({"PatientName": names}), folder / "part-0.parquet",
                   compression="zstd")
    assert not _leaks({token}, _file_texts(tmp_path / "lake"))
    assert _leaks({token}, _parquet_texts(tmp_path / "lake")) == {
        token: [f"{folder / 'part-0.parquet'}:PatientName"]}


def _leaks(tokens: set[str], texts: Iterator[tuple[str, bytes]]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    encoded = {t: t.encode() for t in tokens}
    for where, data in texts:
        for token, needle in encoded.items():
            if needle in data:
                found.setdefault(token, []).append(where)
    return found


def _shift_coincidences(secret: Secret, profile: str, tokens: set[str]) -> set[str]:
    """Planted dates that a profile shifting dates may produce from *another* planted date.

    The lake's secret is random, so a shifted date can equal some other planted date by
    chance (the shift is a whole number of days): that value is an output of the keyed
    shift, not a leak. These coincidences are computed exactly and set aside; the
    engine-level proof (tests/test_deid_proof.py) runs with a fixed secret and no exemption.
    """
    plan = load_profile(profile)
    if ProfileOption.RETAIN_MODIFIED_DATES not in plan.options:
        return set()
    low, high = plan.date_shift
    dates = {t for t in tokens if len(t) == 8 and t.isdigit()}
    shifted: set[str] = set()
    for patient in range(N_PATIENTS):
        days = shift_days(secret.derive("date-shift"), patient_label(patient), low, high)
        shifted |= {v for d in dates if (v := shift_da(d, days)) is not None}
    return dates & shifted


@pytest.mark.slow
@pytest.mark.parametrize("profile", ["basic", "research", "teaching"])
def test_no_planted_token_anywhere(profile: str, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    tokens = write_corpus(corpus / "visit1", N_PATIENTS, batch=0)
    tokens |= write_corpus(corpus / "visit2", N_PATIENTS, batch=1)
    lake_root, exports = tmp_path / "lake", tmp_path / "exports"
    env = dict(os.environ, LAKE_ROOT=str(lake_root), LAKE_VAULT=str(tmp_path / "vault"))
    logs = _run(env, "init")
    for visit in ("visit1", "visit2"):  # two batches: the same patients come back
        logs += _run(
            env,
            "ingest",
            "--profile",
            profile,
            "--scheduler",
            "sync",
            str(corpus / visit),
            ok=(0, 3),
        )
    every_series = "SELECT SeriesInstanceUID FROM series"
    logs += _run(env, "sql", "SELECT * FROM instances", "-f", "json")
    logs += _run(env, "sql", "SELECT * FROM quarantine", "-f", "csv")
    logs += _run(env, "info")
    logs += _run(env, "cohort", "create", "everything", "--sql", every_series)
    logs += _run(env, "cohort", "show", "everything")
    logs += _run(
        env,
        "export",
        "dicom",
        "everything",
        "--out",
        str(exports / "dicom"),
        "--zip",
        "--scheduler",
        "sync",
        "-q",
        ok=(0, 4),
    )
    logs += _run(
        env,
        "export",
        "nifti",
        "everything",
        "--out",
        str(exports / "nifti"),
        "--gzip",
        "--scheduler",
        "sync",
        "-q",
        ok=(0, 4),
    )
    if profile == "teaching":
        logs += _run(
            env,
            "export",
            "teaching",
            "everything",
            "--out",
            str(exports / "teaching"),
            "--scheduler",
            "sync",
            "-q",
            ok=(0, 4),
        )

    lk = lake.open(lake_root)
    ingested = lk.sql("SELECT count(*) FROM instances").fetchall()[0][0]
    assert ingested >= N_PATIENTS * 2 * 3  # at least the CT slices of every visit landed
    must_be_absent = expected_absent(tokens, retains_device_identity=profile == "research")
    must_be_absent -= _shift_coincidences(lk.secret(tmp_path / "vault"), profile, tokens)
    texts = [
        *_file_texts(lake_root),
        *_table_texts(lake_root),
        *_parquet_texts(lake_root),
        ("command output", logs.encode()),
        *_file_texts(exports),
    ]
    assert any("rep_headers" in where for where, _ in texts)  # the summaries were decoded too
    leaks = _leaks(must_be_absent, iter(texts))
    assert not leaks, f"{len(leaks)} planted values escaped: {sorted(leaks.items())[:5]}"

    # What must survive: one pseudonym per patient across both visits, consistently.
    patients = lk.sql(
        "SELECT PatientID, count(DISTINCT batch_id) AS visits FROM instances "
        "WHERE Modality = 'CT' GROUP BY PatientID"
    ).fetchall()
    assert len(patients) == N_PATIENTS
    assert all(visits >= 2 for _, visits in patients)


def _hostile_corpus(root: Path, tokens: set[str]) -> tuple[Path, list[Path]]:
    """Malformed input made of the planted corpus, with identifiers in every place an error,
    a warning or a walk report could quote: mutants of the planted files, file and folder
    names, a FIFO, a link to a folder, a broken link, zip member names, a damaged member,
    an invalid UID and an unknown character set holding tokens. Returns the folder and the
    files ``lake deid`` is run on."""
    from pydicom import dcmread

    from lake._capture import capture
    from tests.hostile import damaged_member_zip, nested_zip
    from tests.mutants import write_mutants

    clean = root / "clean"
    tokens |= write_corpus(clean, N_PATIENTS, batch=2)
    files = sorted(p for p in clean.rglob("*.dcm"))
    name = next(t for t in sorted(tokens) if t.startswith("TKN") and not t.startswith("TKNDEV"))
    hostile = root / "hostile"
    inner = hostile / f"{name}_files"
    sources = {f"p{i}": p.read_bytes() for i, p in enumerate(files)}
    mutated = write_mutants(inner / "mutants", 90, seed=3, sources=sources)
    (inner / f"{name}_notes.txt").write_text(f"Patient {name} scanned twice\n")
    os.mkfifo(inner / f"{name}.dcm")
    (inner / f"{name}_link").symlink_to(clean, target_is_directory=True)
    (inner / f"{name}_gone.dcm").symlink_to(root / f"{name}_nowhere.dcm")
    members = {f"{name}/{p.name}": p.read_bytes() for p in files[:3]}
    nested_zip(inner / f"{name}.zip", members, depth=2)
    damaged_member_zip(inner / f"{name}_damaged.zip", members, "flipped")
    # Values pydicom warns about, quoting them: an invalid UID and an unknown character set.
    with capture():  # pydicom warns here too, quoting the token
        ds = dcmread(files[0])
        ds.StudyInstanceUID = f"{name}^1.2"
        ds.SpecificCharacterSet = f"{name}X"
        ds.save_as(inner / "warns.dcm")
    return hostile, [inner / "warns.dcm", inner / f"{name}.dcm", *mutated[::10]]


@pytest.mark.slow
def test_no_planted_token_in_any_output_under_malformed_input(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]
                                                            ) -> None:
    """16.5: lake ingest (in this process and on a process cluster) and lake deid print no
    original value, UID or path, whatever the input."""
    from pipelines.profiles import deid_command
    from tests.mutants import mutants

    tokens: set[str] = set()
    hostile, deid_files = _hostile_corpus(tmp_path, tokens)
    env = dict(os.environ, LAKE_ROOT=str(tmp_path / "lake"), LAKE_VAULT=str(tmp_path / "vault"),
               COLUMNS="200")
    logs = _run(env, "init")
    logs += _run(env, "ingest", "--scheduler", "sync", str(hostile), ok=(4,))
    logs += _run(env, "ingest", "--scheduler", "processes", "--workers", "2", "--strict",
                 str(hostile), ok=(4,))
    logs += _run(env, "sql", "SELECT reason, message FROM quarantine", "-f", "csv")
    for path in deid_files:
        logs += _run(env, "deid", str(path), ok=(0, 1))
    assert "incomplete:" in logs and "Traceback" not in logs
    sources = {"warns": deid_files[0].read_bytes()}
    for mutant in mutants(60, seed=5, sources=sources):  # the same command in this process
        path = tmp_path / "one.dcm"
        path.write_bytes(mutant.data)
        with contextlib.suppress(typer.Exit):
            deid_command(path, profile="basic", show_values=False)
    captured = capsys.readouterr()
    logs += captured.out + captured.err
    leaks = _leaks(expected_absent(tokens, retains_device_identity=False),
                   iter([("command output", logs.encode())]))
    assert not leaks, f"{len(leaks)} planted values escaped: {sorted(leaks.items())[:5]}"


@pytest.mark.slow
@pytest.mark.vendor
@pytest.mark.parametrize("profile", ["basic", "research", "teaching"])
def test_acquisition_parameters_carry_no_planted_token(profile: str, tmp_path: Path) -> None:
    """Identifiers planted in every private element the acquisition-parameter readers parse
    (tests/nifti_plants.py) reach neither the lake nor a NIfTI export: what is derived before
    de-identification is validated numbers and codes only."""
    from lake.catalog import ACQUISITION_COLUMNS
    from lake.export import export_nifti
    from tests.conftest import SHARED_DATA
    from tests.nifti_plants import planted_files

    if not (SHARED_DATA / "vendors").is_dir():
        pytest.skip("../shared/data is absent")
    tokens = planted_files(SHARED_DATA / "vendors", tmp_path / "planted")
    assert len(tokens) > 1000
    vault = tmp_path / "vault"
    lk = lake.init(tmp_path / "lake", vault=vault)
    lk.ingest([str(tmp_path / "planted")], vault=vault, profile=profile, scheduler="sync")
    export_nifti(lk, "SELECT SeriesInstanceUID FROM series", tmp_path / "nifti",
                 scheduler="sync")
    names = [c.name for c in ACQUISITION_COLUMNS]
    rows = lk.sql(f"SELECT {', '.join(names)} FROM instances").fetchall()
    assert len(rows) >= 12
    derived = 0
    found: set[str] = set()
    for row in rows:
        found.update(name for name, value in zip(names, row, strict=True) if value is not None)
        for value in row:
            items = value if isinstance(value, list) else [value]
            for item in items:
                assert item is None or isinstance(item, int | float | bool) or (
                    isinstance(item, str) and item.isascii() and len(item) <= 12
                    and not item.startswith("TKN")
                ), item
                derived += item is not None
    assert derived > 100  # the readers still found the values left unplanted
    # the sidecar parameters of the Siemens protocol, CSA image header, GE and Philips readers
    # ran on the planted files too
    assert {"base_resolution", "partial_fourier", "shim_setting", "table_position",
            "coil_combination", "nonlinear_gradient_correction",
            "phase_encoding_polarity"} <= found, found
    texts = [*_file_texts(tmp_path / "lake"), *_table_texts(tmp_path / "lake"),
             *_parquet_texts(tmp_path / "lake"),
             *_file_texts(tmp_path / "nifti")]
    leaks = _leaks(tokens, iter(texts))
    assert not leaks, f"{len(leaks)} planted values escaped: {sorted(leaks.items())[:5]}"


# ---- Damaged headers through the ingest path (red-team findings 2, 3, 11) -------------------


def _ct_small_bytes(change: Callable[[Dataset], None]) -> bytes:
    from pydicom import dcmread
    from pydicom.data import get_testdata_file

    ds = dcmread(str(get_testdata_file("CT_small.dcm")))
    change(ds)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _outcome(tmp_path: Path, data: bytes) -> Accepted | Rejected:
    lk = lake.init(tmp_path / "lake", vault=tmp_path / "vault")
    return Ingestor(lk, lk.secret(tmp_path / "vault"), "basic", source="test").process(data)


def _stored(outcome: Accepted | Rejected) -> str:
    """Everything the lake stores of an accepted instance: header JSON, bytes, typed row."""
    assert isinstance(outcome, Accepted), outcome
    row = outcome.row
    return str(row["header_json"]) + bytes(row["header_dicom"]).decode("latin-1") + repr(
        sorted((k, v) for k, v in row.items() if isinstance(v, str)))


@pytest.mark.parametrize("tag", [b"\xfe\xff\x00\xe0", b"\xfe\xff\xdd\xe0"],
                         ids=["item-FFFE,E000", "sequence-delimiter-FFFE,E0DD"])
def test_an_element_whose_tag_became_an_item_or_delimiter_tag_is_not_stored(
    tag: bytes, tmp_path: Path
) -> None:
    """Found by STOWing mutants of the planted corpus: PatientName's tag damaged into
    (FFFE,E000) or (FFFE,E0DD) kept its value in /metadata and the WADO bytes."""

    def name(ds: Dataset) -> None:
        ds.PatientName = "TKNPATIENTNAME1"

    data = _ct_small_bytes(name)
    original = b"\x10\x00\x10\x00PN"
    assert original in data
    damaged = data.replace(original, tag + b"PN", 1)
    assert "TKNPATIENTNAME1" not in _stored(_outcome(tmp_path, damaged))


@pytest.mark.parametrize("value", ["1.2.TKNSOPCLASS01", "1.2.840.10008.5.1.4.1.1.2^TKNSMITH"])
def test_a_sop_class_uid_that_is_no_uid_is_refused_without_its_value(
    value: str, tmp_path: Path
) -> None:
    def sop_class(ds: Dataset) -> None:
        ds["SOPClassUID"] = DataElement(0x00080016, "UI", value, validation_mode=config.IGNORE)
        ds.file_meta["MediaStorageSOPClassUID"] = DataElement(
            0x00020002, "UI", value, validation_mode=config.IGNORE)

    with warnings.catch_warnings():  # pydicom's writer warns, quoting the value
        warnings.simplefilter("ignore")
        data = _ct_small_bytes(sop_class)
    outcome = _outcome(tmp_path, data)
    assert isinstance(outcome, Rejected)
    assert outcome.record["reason"] == "bad_uid"
    assert "TKN" not in repr(outcome.record)


def test_the_stored_file_meta_names_the_lake_not_the_sender(tmp_path: Path) -> None:
    def meta(ds: Dataset) -> None:
        ds.file_meta.ImplementationClassUID = "1.2.3.4.5.6.7"
        ds.file_meta.ImplementationVersionName = "TKNSTATION01"
        ds.file_meta.SourceApplicationEntityTitle = "TKNSOURCEAE"

    outcome = _outcome(tmp_path, _ct_small_bytes(meta))
    stored = _stored(outcome)
    assert "TKN" not in stored and "1.2.3.4.5.6.7" not in stored
    assert isinstance(outcome, Accepted)
    from pydicom import dcmread

    written = dcmread(io.BytesIO(bytes(outcome.row["header_dicom"])))
    assert written.file_meta.ImplementationClassUID == IMPLEMENTATION_CLASS_UID
    assert written.file_meta.ImplementationVersionName.startswith("IMAGINGLAKE")


# ---- Metadata inside compressed frames (red-team finding 1) ----------------------------------

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
OPHTHALMIC_8BIT = "1.2.840.10008.5.1.4.1.1.77.1.5.1"
JPEG_COMMENT = "TKNJPEGCOMMENT1"
JPEG_EXIF = "TKNJPEGEXIFAPP1"


def _jpeg_with_metadata(folder: Path, sop_class: str) -> None:
    """A JPEG Baseline instance whose frame carries a COM and an EXIF APP1 segment, as fundus
    cameras, dental and ultrasound devices write them (capture time, operator, patient)."""
    from pydicom import dcmread
    from pydicom.data import get_testdata_file
    from pydicom.encaps import encapsulate, generate_frames
    from pydicom.uid import UID

    def segment(marker: int, payload: bytes) -> bytes:
        return bytes([0xFF, marker]) + (len(payload) + 2).to_bytes(2, "big") + payload

    ds = dcmread(str(get_testdata_file("SC_rgb_jpeg_dcmtk.dcm")))
    frame = next(iter(generate_frames(ds.PixelData, number_of_frames=1)))
    frame = (frame[:2] + segment(0xE1, b"Exif\x00\x00" + JPEG_EXIF.encode())
             + segment(0xFE, JPEG_COMMENT.encode()) + frame[2:])
    ds.PixelData = encapsulate([frame])
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = UID(sop_class)
    ds.Modality = "CT" if sop_class == CT_IMAGE else "OP"
    ds.PatientName, ds.PatientID = "Planted^Patient", "PLANTED-ID"
    ds.BurnedInAnnotation = "NO"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    folder.mkdir(parents=True, exist_ok=True)
    ds.save_as(folder / "jpeg.dcm", enforce_file_format=True)


@pytest.mark.parametrize("sop_class", [CT_IMAGE, OPHTHALMIC_8BIT], ids=["ct", "ophthalmic"])
@pytest.mark.parametrize("profile", ["basic", "research", "teaching"])
def test_jpeg_comment_and_exif_inside_pixel_data_reach_no_lake_file(
    profile: str, sop_class: str, tmp_path: Path
) -> None:
    lk = lake.init(tmp_path / "lake", vault=tmp_path / "vault")
    _jpeg_with_metadata(tmp_path / "in", sop_class)
    lk.ingest([str(tmp_path / "in")], vault=tmp_path / "vault", profile=profile,
              scheduler="sync")
    lk.refresh()
    assert lk.sql("SELECT count(*) FROM instances").fetchall() == [(1,)]
    found = {
        token
        for path in (tmp_path / "lake").rglob("*") if path.is_file()
        for token in (JPEG_COMMENT, JPEG_EXIF) if token.encode() in path.read_bytes()
    }
    assert not found, f"planted JPEG segments stored in the lake under {profile}: {found}"
