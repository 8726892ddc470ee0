"""BIDS export on real vendor MRI and generated series, under every built-in profile.

The datasets go through the npm BIDS validator (zero errors; warnings are printed), are
byte-identical when exported again, resume after an interruption, follow a config, and hold
none of the identifiers planted in the originals (file names, TSV, JSON, every byte).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from typer.testing import CliRunner

import lake
from lake.deid import load_profile
from lake.export import export_bids
from lake.export._manifest import JOURNAL_NAME
from pipelines.cli import app
from tests.bids_validator import validate, validator
from tests.conftest import SHARED_DATA
from tests.nifti_synth import synthetic_series
from tests.test_export import tree

PROFILES = ("basic", "research", "teaching")
ALL = "SELECT SeriesInstanceUID FROM series"

#: A subset of the vendor data: every vendor and datatype, a few hundred files.
VENDOR_SUBSET = (
    "vendors/dcm_qa_xa30/In",  # Siemens XA30 enhanced: T1w, BOLD, GRE field map, ASL, DWI maps
    "vendors/dcm_qa_enh/In",  # enhanced multi-frame: Philips, Siemens
    "vendors/dcm_qa_philips/In/Magdeburg_2014",  # Philips classic EPI
    "vendors/dcm_qa_ge/In/01_Ax_DWI_TENSOR_R2",  # GE DWI
    "vendors/dcm_qa_stc/In/UIH",  # United Imaging
    "dcm_qa/In/Orientation/ax/axasc35",  # Siemens mosaic fMRI
    "dcm_qa/In/TotalReadoutTime/PF_PAT_POS_PFOV_PEres_INTERP_test2/"
    "NOPF_NOPAT_NOPOS_PERES100_ES0P59_BW2222_AP_0008",  # Siemens spin-echo EPI, AP
    "dcm_qa/In/TotalReadoutTime/PF_PAT_POS_PFOV_PEres_INTERP_test2/"
    "NOPF_NOPAT_NOPOS_PERES100_ES0P59_BW2222_PA_0009",  # and PA
)

#: Identifiers planted in the generated series: none may reach the dataset.
PLANTED = {
    "PatientName": "Quillfeather^Ottoline",
    "PatientID": "MRN99173524",
    "OtherPatientIDs": "ALT55129931",
    "PatientBirthDate": "19610417",
    "InstitutionName": "Saint Quillfeather Clinic",
    "ReferringPhysicianName": "Brackenridge^Augustin",
    "AccessionNumber": "ACC77218845",
    "StudyID": "STQ48812",
    "StationName": "QUILLMR01",
    "StudyDate": "20210309",
    "SeriesDate": "20210309",
    "AcquisitionDate": "20210309",
}
TOKENS = ("Quillfeather", "Ottoline", "MRN99173524", "99173524", "ALT55129931", "19610417",
          "Brackenridge", "Augustin", "ACC77218845", "STQ48812", "QUILLMR01", "20210309",
          "2021-03-09")


def _series(description: str, number: int, study: str, **kwargs: object) -> list[Dataset]:
    series = synthetic_series(modality="MR", rows=48, cols=48, noise=4.0,
                              series_tag=f"bids-{description}-{number}", **kwargs)  # type: ignore[arg-type]
    uid = generate_uid(entropy_srcs=["bids-series", description, str(number)])
    for ds in series:
        for keyword, value in PLANTED.items():
            setattr(ds, keyword, value)
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = uid
        ds.FrameOfReferenceUID = generate_uid(entropy_srcs=["bids-for", study])
        ds.SeriesNumber = number
        ds.SeriesDescription = description
        ds.ProtocolName = description
        ds.PatientSex = "F"
        ds.PatientAge = "047Y"
        ds.StudyTime = "101500"
        ds.SeriesTime = "101500"
    return series


def generated_session(folder: Path) -> dict[str, list[Dataset]]:
    """One session: MPRAGE, two resting BOLD runs, multi-echo BOLD, DWI, GRE field map."""
    study = generate_uid(entropy_srcs=["bids-study"])
    sessions = {
        "t1": _series("t1_mprage Quillfeather", 2, study, n_slices=24),
        "rest1": _series("fMRI rest", 3, study, n_slices=12, n_volumes=6,
                         repetition_time=2000.0),
        "rest2": _series("fMRI rest", 4, study, n_slices=12, n_volumes=6,
                         repetition_time=2000.0),
        "me": _series("fMRI task-nback ME", 5, study, n_slices=10, n_volumes=4,
                      echo_times=[14.0, 38.0], repetition_time=2500.0),
        "dwi": _series("dwi 4dir", 6, study, n_slices=10, n_volumes=5,
                       bvalues=[0, 1000, 1000, 1000, 1000],
                       bvecs=[[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [0.6, 0.8, 0]]),
        "fmap_mag": _series("gre_field_mapping", 7, study, n_slices=10,
                            echo_times=[4.92, 7.38], repetition_time=600.0),
        "fmap_phase": _series("gre_field_mapping", 8, study, n_slices=10, echo_times=[7.38],
                              repetition_time=600.0),
    }
    for ds in sessions["t1"]:
        ds.ScanningSequence = ["GR", "IR"]
        ds.SequenceVariant = ["SK", "SP", "MP"]
        ds.SequenceName = "*tfl3d1_16ns"
        ds.MRAcquisitionType = "3D"
        ds.InversionTime = 900
        ds.EchoTime = 2.98
        ds.RepetitionTime = 2300
        ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND", "NORM"]
    for key in ("rest1", "rest2", "me"):
        for ds in sessions[key]:
            ds.ScanningSequence = "EP"
            ds.SequenceVariant = "SK"
            ds.SequenceName = "*epfid2d1_48"
            ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
    for ds in sessions["dwi"]:
        ds.ScanningSequence = ["EP", "SE"]
        ds.SequenceName = "*ep_b1000#1"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "DIFFUSION", "NONE", "ND"]
    for key, letter in (("fmap_mag", "M"), ("fmap_phase", "P")):
        for ds in sessions[key]:
            ds.SequenceName = "*fm2d2r"
            ds.ImageType = ["ORIGINAL", "PRIMARY", letter, "ND"]
    for ds in sessions["fmap_phase"]:
        ds.EchoNumbers = 2
    folder.mkdir(parents=True, exist_ok=True)
    for key, series in sessions.items():
        for i, ds in enumerate(series):
            ds.save_as(folder / f"{key}_{i:03d}.dcm", enforce_file_format=True)
    return sessions


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    generated = tmp_path_factory.mktemp("bids-generated") / "Quillfeather_MRN99173524"
    generated_session(generated)
    paths = [str(generated)]
    if SHARED_DATA.is_dir():
        paths += [str(SHARED_DATA / p) for p in VENDOR_SUBSET if (SHARED_DATA / p).exists()]
    return paths


@pytest.fixture(scope="module")
def lakes(tmp_path_factory: pytest.TempPathFactory, sources: list[str]) -> dict[str, lake.Lake]:
    out = {}
    for profile in PROFILES:
        root = tmp_path_factory.mktemp(f"bids-lake-{profile}")
        lk = lake.init(root / "lake", vault=root / "vault")
        lk.ingest(sources, vault=root / "vault", profile=profile, scheduler="sync")
        out[profile] = lk
    return out


@pytest.fixture(scope="module")
def exported(lakes: dict[str, lake.Lake],
             tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = {}
    for profile, lk in lakes.items():
        folder = tmp_path_factory.mktemp(f"bids-out-{profile}") / "bids"
        export_bids(lk, ALL, folder, scheduler="sync")
        out[profile] = folder
    return out


def _manifest(folder: Path) -> dict[str, object]:
    data = json.loads((folder / "manifest.json").read_text())
    assert isinstance(data, dict)
    return data


def _written(folder: Path, suffix: str) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob(f"*{suffix}"))


@pytest.mark.parametrize("profile", PROFILES)
def test_validator_reports_no_error(profile: str, exported: dict[str, Path]) -> None:
    validator()
    folder = exported[profile]
    report = validate(folder)
    print(f"\nBIDS validator on the {profile} export: {len(report.errors)} errors, "
          f"{len(report.warnings)} warnings\n{report.describe()}")
    assert report.errors == [], report.describe()
    names = _written(folder, ".nii.gz")
    assert names, "nothing was exported"
    manifest = _manifest(folder)
    bids = manifest["bids"]
    assert isinstance(bids, dict) and bids["classified"] >= 7
    print(f"classified {bids['classified']}, unclassified {bids['unclassified']}; skipped by "
          f"reason: {sorted({s['reason'] for s in manifest['skipped']})}")  # type: ignore[attr-defined, index]


@pytest.mark.parametrize("profile", PROFILES)
def test_generated_session_lands_where_bids_says(profile: str, exported: dict[str, Path]) -> None:
    folder = exported[profile]
    manifest = _manifest(folder)
    series = manifest["bids"]["series"]  # type: ignore[index]
    names = [Path(f).name for s in series for f in s["files"]]
    # under every profile (descriptions removed by basic) the physics decides
    assert any(n.endswith("_T1w.nii.gz") for n in names), names
    bold = sorted(n for n in names if n.endswith("_bold.nii.gz") and "_run-" in n)
    assert len(bold) >= 2, names  # two BOLD runs of one session
    assert any("_echo-1_" in n and n.endswith("_bold.nii.gz") for n in names)
    assert any("_echo-2_" in n and n.endswith("_bold.nii.gz") for n in names)
    dwi = [n for n in names if n.endswith("_dwi.nii.gz")]
    assert dwi and all(Path(n).with_suffix("").with_suffix(".bval").name in
                       [Path(m).name for m in names] for n in dwi)
    assert any(n.endswith("_magnitude1.nii.gz") for n in names)
    assert any(n.endswith("_magnitude2.nii.gz") for n in names)
    phasediff = [p for p in folder.rglob("*_phasediff.json")]
    assert phasediff, names
    sidecars = [json.loads(p.read_text()) for p in phasediff]
    generated = [s for s in sidecars if s.get("EchoTime2") == pytest.approx(0.00738)]
    assert generated and generated[0]["EchoTime1"] == pytest.approx(0.00492)
    assert all((t.startswith("bids::sub-") and t.endswith("_bold.nii.gz")) or
               t.endswith("_dwi.nii.gz") for t in generated[0]["IntendedFor"])
    assert all((folder / t.removeprefix("bids::")).is_file()
               for s in sidecars for t in s.get("IntendedFor", []))
    for path in folder.rglob("*_bold.json"):
        side = json.loads(path.read_text())
        assert side["TaskName"] and side["RepetitionTime"] > 0, path.name
    task_names = {json.loads(p.read_text())["TaskName"] for p in folder.rglob("*_bold.json")}
    if profile in ("research", "teaching"):  # descriptions kept (cleaned): task names from them
        assert "rest" in task_names, task_names


@pytest.mark.parametrize("profile", PROFILES)
def test_participants_and_scans_hold_what_the_profile_retained(
    profile: str, exported: dict[str, Path]
) -> None:
    folder = exported[profile]
    rows = [line.split("\t") for line in (folder / "participants.tsv").read_text().splitlines()]
    assert rows[0] == ["participant_id", "sex", "age", "age_group"]
    subjects = {p.name for p in folder.glob("sub-*") if p.is_dir()}
    assert {r[0] for r in rows[1:]} == subjects
    values = {(r[1], r[2]) for r in rows[1:]}
    groups = {(r[2], r[3]) for r in rows[1:]}
    scans = list(folder.rglob("*_scans.tsv"))
    assert scans and all(s.parent.name.startswith("ses-") for s in scans)
    header = scans[0].read_text().splitlines()[0].split("\t")
    if profile == "research":  # sex and age kept, dates shifted: acq_time present, not original
        assert ("F", "47") in values and ("47", "40-49") in groups
        assert header == ["filename", "acq_time"]
        times = [line.split("\t")[1] for s in scans for line in s.read_text().splitlines()[1:]]
        assert any(t != "n/a" for t in times)
        assert not any(t.startswith("2021-03-09") for t in times)
    elif profile == "teaching":  # sex and age kept, dates removed: no acq_time
        assert ("F", "47") in values and ("47", "40-49") in groups
        assert header == ["filename"]
    else:  # basic removes them
        assert values == {("n/a", "n/a")} and groups == {("n/a", "n/a")}
        assert header == ["filename"]
    for scan in scans:  # every listed file exists, every data file is listed
        listed = {line.split("\t")[0] for line in scan.read_text().splitlines()[1:]}
        present = {p.relative_to(scan.parent).as_posix() for p in scan.parent.rglob("*.nii.gz")}
        assert listed == present


def test_labels_are_pseudonymous_hashes(exported: dict[str, Path],
                                        lakes: dict[str, lake.Lake]) -> None:
    for profile, folder in exported.items():
        patients = {r[0] for r in lakes[profile].sql(
            "SELECT DISTINCT PatientID FROM instances").fetchall()}
        for path in folder.rglob("*"):
            for part in path.relative_to(folder).parts:
                for entity in part.split("_"):
                    if entity.startswith(("sub-", "ses-")):
                        label = entity.split(".")[0][4:]
                        assert len(label) == 8 and all(c in "0123456789abcdef" for c in label)
                        assert label not in patients


@pytest.mark.parametrize("profile", PROFILES)
def test_no_planted_identifier_anywhere(profile: str, exported: dict[str, Path]) -> None:
    folder = exported[profile]
    files = tree(folder)
    assert files
    for name, data in files.items():
        lowered = data.lower()
        for token in TOKENS:
            assert token.lower() not in name.lower(), (name, token)
            assert token.lower().encode() not in lowered, (name, token)


@pytest.mark.parametrize("profile", PROFILES)
def test_reexport_is_byte_identical(profile: str, lakes: dict[str, lake.Lake],
                                    exported: dict[str, Path], tmp_path: Path) -> None:
    again = tmp_path / "again"
    result = export_bids(lakes[profile], ALL, again, scheduler="sync")
    assert result.written > 0
    assert tree(again) == tree(exported[profile])
    unchanged = export_bids(lakes[profile], ALL, again, scheduler="sync")
    assert unchanged.up_to_date


@pytest.mark.parametrize("profile", PROFILES)
def test_dataset_description_names_lake_catalog_and_profile(
    profile: str, lakes: dict[str, lake.Lake], exported: dict[str, Path]
) -> None:
    """GeneratedBy says which lake version, catalog version and profile made the dataset."""
    described = json.loads((exported[profile] / "dataset_description.json").read_text())
    assert described["DatasetType"] == "raw" and described["BIDSVersion"]
    (generated,) = described["GeneratedBy"]
    assert generated["Name"] == "imaging-lake" and generated["Version"] == lake.__version__
    assert generated["CatalogVersion"] == lakes[profile].version
    version = load_profile(profile).version
    assert generated["Profiles"] == [f"{profile} {version}"]
    assert f"catalog version {lakes[profile].version}" in generated["Description"]
    assert f"profile(s) {profile} {version}" in generated["Description"]


class _InterruptedError(Exception):
    pass


def test_resume_after_interruption(lakes: dict[str, lake.Lake], exported: dict[str, Path],
                                   tmp_path: Path) -> None:
    out = tmp_path / "resumed"

    def stop_after_two(done: int, total: int) -> None:
        if done >= 2:
            raise _InterruptedError

    with pytest.raises(_InterruptedError):
        export_bids(lakes["research"], ALL, out, scheduler="sync", on_progress=stop_after_two)
    assert (out / JOURNAL_NAME).exists() and not (out / "manifest.json").exists()
    kept = {p: p.stat().st_mtime_ns for p in out.rglob("*.nii.gz")}
    assert kept
    time.sleep(0.01)
    result = export_bids(lakes["research"], ALL, out, scheduler="sync")
    assert result.resumed == 2 and result.written > 0
    assert all(p.stat().st_mtime_ns == t for p, t in kept.items())
    assert tree(out) == tree(exported["research"])


def test_config_overrides_the_heuristic(lakes: dict[str, lake.Lake], tmp_path: Path) -> None:
    config = tmp_path / "bids.toml"
    config.write_text(
        'name = "config test"\n'
        'authors = ["A. Researcher"]\n'
        '[[descriptions]]\n'
        'id = "t1"\n'
        'datatype = "anat"\n'
        'suffix = "T1w"\n'
        'entities = { acq = "mprage" }\n'
        'criteria = { SequenceName = "*tfl3d*" }\n'
        '[[descriptions]]\n'
        'id = "rest"\n'
        'datatype = "func"\n'
        'suffix = "bold"\n'
        'entities = { task = "rest", acq = "ep" }\n'
        'criteria = { SequenceName = "*epfid2d1_48", echoes = 1 }\n'
        'sidecar_changes = { TaskDescription = "eyes open" }\n'
        '[[descriptions]]\n'
        'datatype = "exclude"\n'
        'criteria = { b_values = { gt = 0 } }\n'
        '[[descriptions]]\n'
        'id = "asl"\n'
        'datatype = "perf"\n'
        'suffix = "asl"\n'
        'criteria = { ImageType = ["ORIGINAL", "PRIMARY", "ASL", "*"] }\n'
        'aslcontext = ["m0scan", "label", "control", "label", "control", "label", "control"]\n'
        '[descriptions.sidecar_changes]\n'
        'ArterialSpinLabelingType = "PCASL"\n'  # as derived at ingest (sAsl.ulMode)
        'PostLabelingDelay = 1.8\n'
        'BackgroundSuppression = false\n'
        'M0Type = "Included"\n'
        'TotalAcquiredPairs = 3\n'
        'RepetitionTimePreparation = 4.8\n'
    )
    out = tmp_path / "configured"
    result = export_bids(lakes["research"], ALL, out, config=config, scheduler="sync")
    names = [Path(f.path).name for f in result.files]
    assert any(n.endswith("_acq-mprage_T1w.nii.gz") or "_acq-mprage_run-" in n for n in names)
    rest = [n for n in names if "_task-rest_acq-ep_run-" in n and n.endswith("_bold.nii.gz")]
    assert len(rest) == 2, names
    side = json.loads(next(out.rglob("*_task-rest_acq-ep_run-1_bold.json")).read_text())
    assert side["TaskDescription"] == "eyes open" and side["TaskName"] == "rest"
    assert not any(n.endswith("_dwi.nii.gz") for n in names)  # excluded by the config
    excluded = [s for s in result.skipped if s.reason == "bids_excluded"]
    assert excluded
    description = json.loads((out / "dataset_description.json").read_text())
    assert description["Name"] == "config test" and description["Authors"] == ["A. Researcher"]
    assert result.manifest["options"]["config"]["name"] == "config test"
    if SHARED_DATA.is_dir():  # the XA30 ASL series becomes perf/asl with its context...
        contexts = list(out.rglob("*_aslcontext.tsv"))
        if contexts:
            lines = contexts[0].read_text().splitlines()
            assert lines[0] == "volume_type" and lines[1:4] == ["m0scan", "label", "control"]
        else:  # ...once its slice timing (required for 2D ASL) is derived at ingest
            refused = [s for s in result.skipped if s.reason == "bids_missing_metadata"
                       and s.message.startswith("perf/asl")]
            assert refused and "SliceTiming" in refused[0].message, result.skipped
    validator()
    report = validate(out)
    print(f"\nBIDS validator on the configured export:\n{report.describe()}")
    assert report.errors == [], report.describe()


def test_cli_exports_bids_and_reports_skips(lakes: dict[str, lake.Lake], tmp_path: Path) -> None:
    out = tmp_path / "cli"
    runner = CliRunner()
    result = runner.invoke(app, ["export", "bids", "--sql", ALL, "--out", str(out), "--lake",
                                 lakes["basic"].root, "--scheduler", "sync", "--quiet"])
    manifest = _manifest(out)
    skipped = manifest["skipped"]
    assert result.exit_code == (4 if skipped else 0), result.output
    assert "series classified" in result.output
    assert (out / "dataset_description.json").is_file()
    bad = runner.invoke(app, ["export", "bids", "--sql", ALL, "--out", str(tmp_path / "x"),
                              "--lake", lakes["basic"].root, "--config",
                              str(tmp_path / "absent.toml")])
    assert bad.exit_code == 1 and "cannot read the BIDS config" in bad.output
    assert "Traceback" not in bad.output


def test_cli_exports_a_named_cohort(lakes: dict[str, lake.Lake], exported: dict[str, Path],
                                    tmp_path: Path) -> None:
    """``lake export bids COHORT --out DIR``: the cohort's series, the same files as by SQL,
    and dataset_description.json names the cohort."""
    lk = lakes["research"]
    lk.create_cohort("bids-everything", ALL)
    out = tmp_path / "cohort"
    result = CliRunner().invoke(app, ["export", "bids", "bids-everything", "--out", str(out),
                                      "--lake", lk.root, "--scheduler", "sync", "--quiet"])
    assert result.exit_code in (0, 4), result.output
    by_sql = exported["research"]
    assert _written(out, ".nii.gz") == _written(by_sql, ".nii.gz")
    assert _written(out, ".json") == _written(by_sql, ".json")
    (generated,) = json.loads((out / "dataset_description.json").read_text())["GeneratedBy"]
    assert "BIDS export of bids-everything at catalog version" in generated["Description"]


def test_lake_method_delegates(lakes: dict[str, lake.Lake], tmp_path: Path) -> None:
    result = lakes["basic"].export_bids(
        "SELECT SeriesInstanceUID FROM series WHERE SeriesDescription IS NULL "
        "AND Modality = 'MR'", tmp_path / "method", scheduler="sync", compress=False)
    assert result.manifest["kind"] == "bids"
    assert all(not f.path.endswith(".nii.gz") for f in result.files)
    assert any(f.path.endswith(".nii") for f in result.files)


@pytest.mark.parametrize("profile", ["basic", "research"])
def test_planted_identifier_corpus_leaves_no_token(profile: str, tmp_path: Path) -> None:
    """The project's planted-identifier corpus, every series forced into the dataset."""
    from tests.deid_corpus import expected_absent, write_corpus

    tokens = write_corpus(tmp_path / "corpus", 2)
    lk = lake.init(tmp_path / "lake", vault=tmp_path / "vault")
    lk.ingest([str(tmp_path / "corpus")], vault=tmp_path / "vault", profile=profile,
              scheduler="sync")
    config = tmp_path / "all.json"
    config.write_text(json.dumps({"descriptions": [
        {"datatype": "anat", "suffix": "T2w", "entities": {"acq": "mr"},
         "criteria": {"Modality": "MR"}},
        {"datatype": "anat", "suffix": "T1w", "entities": {"acq": "other"},
         "criteria": {"Modality": "*"}},
    ]}))
    out = tmp_path / "bids"
    result = export_bids(lk, ALL, out, config=config, scheduler="sync")
    assert any(f.path.endswith(".nii.gz") for f in result.files)
    assert any(f.path.endswith("_acq-mr_T2w.json") for f in result.files)  # the descriptor plants
    absent = expected_absent(tokens, retains_device_identity=profile == "research")
    for name, data in tree(out).items():
        text = data.decode("latin-1")
        leaked = [t for t in absent if t in name or t in text]
        assert not leaked, (name, leaked)
