"""Lake-level proof that no planted identifier escapes: not into the lake's files, its tables
(decoded), the command output, or any export. Uses the token-planted corpus of tests/deid_corpus.py.
"""

from __future__ import annotations

import gzip
import io
import os
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable

import lake
from lake.deid import ProfileOption, load_profile
from lake.deid._values import shift_da, shift_days
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
            column = table.column(name)
            if pa.types.is_binary(column.type) or pa.types.is_large_binary(column.type):
                blob = b"".join(v for v in column.to_pylist() if v)
            else:
                blob = repr(column.to_pylist()).encode()
            yield f"{table_dir.name}.{name}", blob


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
        ("command output", logs.encode()),
        *_file_texts(exports),
    ]
    leaks = _leaks(must_be_absent, iter(texts))
    assert not leaks, f"{len(leaks)} planted values escaped: {sorted(leaks.items())[:5]}"

    # What must survive: one pseudonym per patient across both visits, consistently.
    patients = lk.sql(
        "SELECT PatientID, count(DISTINCT batch_id) AS visits FROM instances "
        "WHERE Modality = 'CT' GROUP BY PatientID"
    ).fetchall()
    assert len(patients) == N_PATIENTS
    assert all(visits >= 2 for _, visits in patients)
