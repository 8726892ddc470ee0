"""The BIDS classification: the default heuristic as a table, configs, names and labels."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import lake
from lake.export._bids_names import bids_name, check_entities, direction_label, hashed_labels
from lake.export._bids_rules import (
    Classification,
    SeriesFeatures,
    Unclassified,
    classify,
    load_bids_config,
    matches,
    parse_bids_config,
)

MPRAGE = SeriesFeatures(Modality="MR", ScanningSequence=("GR", "IR"), MRAcquisitionType="3D",
                        SequenceName="*tfl3d1_16ns", EchoTime=(2.98,), RepetitionTime=2300.0,
                        InversionTime=900.0, ImageType=("ORIGINAL", "PRIMARY", "M", "ND"))
BOLD = SeriesFeatures(Modality="MR", ScanningSequence=("EP",), MRAcquisitionType="2D",
                      SequenceName="*epfid2d1_64", EchoTime=(30.0,), RepetitionTime=2000.0,
                      ImageType=("ORIGINAL", "PRIMARY", "M", "ND", "MOSAIC"), mosaic=True,
                      volumes=200)
SE_EPI = SeriesFeatures(Modality="MR", ScanningSequence=("EP",), MRAcquisitionType="2D",
                        SequenceName="epse2d1_90", EchoTime=(60.0,), RepetitionTime=6100.0,
                        ImageType=("ORIGINAL", "PRIMARY", "M", "ND", "MOSAIC"), volumes=1)
GRE_FMAP = SeriesFeatures(Modality="MR", ScanningSequence=("GR",), SequenceName="*fm2d2r",
                          EchoTime=(4.92, 7.38), echoes=2, RepetitionTime=600.0,
                          ImageType=("ORIGINAL", "PRIMARY", "M", "ND"))

# (name, features, expected): expected is (datatype, suffix, entities) or an Unclassified reason
TABLE: list[tuple[str, SeriesFeatures, tuple[str, str, dict[str, str]] | str]] = [
    ("CT is not MR", SeriesFeatures(Modality="CT"), "bids_unclassified"),
    ("a report", SeriesFeatures(Modality="MR", image=False), "bids_unclassified"),
    ("ADC map", SeriesFeatures(Modality="MR", derived=True,
                               ImageType=("DERIVED", "PRIMARY", "DIFFUSION", "ADC")),
     "bids_unclassified"),
    ("3-plane localizer", SeriesFeatures(Modality="MR", ScanningSequence=("GR",),
                                         orientations=3), "bids_unclassified"),
    ("localizer by name", SeriesFeatures(Modality="MR", SeriesDescription="AAHead_Scout"),
     "bids_unclassified"),
    ("ReproIn T1w", SeriesFeatures(Modality="MR", ProtocolName="anat-T1w_acq-tfl"),
     ("anat", "T1w", {"acq": "tfl"})),
    ("ReproIn bold, run renumbered", SeriesFeatures(
        Modality="MR", ProtocolName="func-bold_task-fa_run-1"), ("func", "bold", {"task": "fa"})),
    ("ReproIn dwi dir", SeriesFeatures(Modality="MR", ProtocolName="dwi_dir-PA"),
     ("dwi", "dwi", {"dir": "PA"})),
    ("MPRAGE by physics (basic profile: no description)", MPRAGE, ("anat", "T1w", {})),
    ("MPRAGE by description", SeriesFeatures(Modality="MR", SeriesDescription="t1_mprage_sag"),
     ("anat", "T1w", {})),
    ("FLAIR by description", SeriesFeatures(Modality="MR", SeriesDescription="t2_flair_tra",
                                            ScanningSequence=("SE", "IR")), ("anat", "FLAIR", {})),
    ("T2 TSE by TR/TE", SeriesFeatures(Modality="MR", ScanningSequence=("SE",),
                                       RepetitionTime=5000.0, EchoTime=(100.0,)),
     ("anat", "T2w", {})),
    ("PD by TR/TE", SeriesFeatures(Modality="MR", ScanningSequence=("SE",),
                                   RepetitionTime=3000.0, EchoTime=(15.0,)), ("anat", "PDw", {})),
    ("FLAIR by TI", SeriesFeatures(Modality="MR", ScanningSequence=("SE", "IR"),
                                   RepetitionTime=9000.0, EchoTime=(90.0,),
                                   InversionTime=2500.0), ("anat", "FLAIR", {})),
    ("enhanced, AcquisitionContrast T2", SeriesFeatures(Modality="MR", AcquisitionContrast="T2"),
     ("anat", "T2w", {})),
    ("multi-echo GRE (T2*)", SeriesFeatures(Modality="MR", ScanningSequence=("GR",),
                                            SeriesDescription="gre_me", echoes=4,
                                            EchoTime=(5.0, 10.0, 15.0, 20.0)),
     ("anat", "MEGRE", {})),
    ("3D GRE without a clue stays unclassified", SeriesFeatures(
        Modality="MR", ScanningSequence=("GR",), MRAcquisitionType="3D", RepetitionTime=20.0,
        EchoTime=(3.0,)), "bids_unclassified"),
    ("BOLD mosaic, task unknown", BOLD, ("func", "bold", {"task": "unknown"})),
    ("BOLD, task from description", SeriesFeatures(
        Modality="MR", ScanningSequence=("EP",), SeriesDescription="fMRI_task-nback_AP",
        volumes=100), ("func", "bold", {"task": "nback"})),
    ("resting state", SeriesFeatures(Modality="MR", ScanningSequence=("EP",),
                                     SeriesDescription="rs_fMRI", volumes=100),
     ("func", "bold", {"task": "rest"})),
    ("XA enhanced bold (ImageType FMRI)", SeriesFeatures(
        Modality="MR", SequenceName="epfid2d1_64", ImageType=("ORIGINAL", "PRIMARY", "FMRI"),
        volumes=20), ("func", "bold", {"task": "unknown"})),
    ("Philips EPI (GR, long echo train)", SeriesFeatures(
        Modality="MR", ScanningSequence=("GR",), MRAcquisitionType="2D", EchoTrainLength=39,
        volumes=3), ("func", "bold", {"task": "unknown"})),
    ("bold with a known phase-encoding direction", SeriesFeatures(
        Modality="MR", ScanningSequence=("EP",), volumes=50, direction="PA"),
     ("func", "bold", {"task": "unknown", "dir": "PA"})),
    ("single-band reference", SeriesFeatures(Modality="MR", ScanningSequence=("EP",),
                                             SeriesDescription="rest_SBRef", volumes=1),
     ("func", "sbref", {"task": "rest"})),
    ("one GRE-EPI volume, no clue", SeriesFeatures(Modality="MR", ScanningSequence=("EP",),
                                                   volumes=1), "bids_unclassified"),
    ("DWI by b-values (derived at ingest)", SeriesFeatures(
        Modality="MR", ScanningSequence=("EP", "SE"), b_values=(0.0, 1000.0), volumes=33),
     ("dwi", "dwi", {})),
    ("DWI by Siemens sequence name", SeriesFeatures(
        Modality="MR", ScanningSequence=("EP",), SequenceName="*ep_b1000#12", volumes=33),
     ("dwi", "dwi", {})),
    ("DWI by description (research)", SeriesFeatures(
        Modality="MR", ScanningSequence=("EP", "SE"), SeriesDescription="Ax DWI TENSOR R2",
        volumes=14), ("dwi", "dwi", {})),
    ("DWI, enhanced contrast, dir known", SeriesFeatures(
        Modality="MR", AcquisitionContrast="DIFFUSION", direction="AP", volumes=10),
     ("dwi", "dwi", {"dir": "AP"})),
    ("spin-echo EPI pair member, direction derived", SE_EPI.__class__(
        **{**SE_EPI.__dict__, "direction": "AP"}), ("fmap", "epi", {"dir": "AP"})),
    ("spin-echo EPI without direction (before derivation)", SE_EPI, "bids_unclassified"),
    ("GRE field map magnitude", GRE_FMAP, ("fmap", "magnitude", {})),
    ("GRE field map phase", GRE_FMAP.__class__(**{**GRE_FMAP.__dict__, "components": ("phase",),
                                                 "EchoTime": (7.38,), "echoes": 1}),
     ("fmap", "phasediff", {})),
    ("Philips B0 map (frame type B0 MAP), whatever its contrast", SeriesFeatures(
        Modality="MR", AcquisitionContrast="T1", b0_map=True), ("fmap", "fieldmap", {})),
    ("ASL (Siemens ImageType)", SeriesFeatures(Modality="MR", ImageType=("ORIGINAL", "PRIMARY",
                                                                        "ASL", "NONE"),
                                               ScanningSequence=("EP",), volumes=7),
     ("perf", "asl", {})),
    ("nothing matches", SeriesFeatures(Modality="MR", ScanningSequence=("RM",)),
     "bids_unclassified"),
]


@pytest.mark.parametrize(("name", "features", "expected"), TABLE, ids=[t[0] for t in TABLE])
def test_default_heuristic(name: str, features: SeriesFeatures,
                           expected: tuple[str, str, dict[str, str]] | str) -> None:
    decision = classify(features)
    if isinstance(expected, str):
        assert isinstance(decision, Unclassified), decision
        assert decision.reason == expected and decision.message
        return
    assert isinstance(decision, Classification), decision
    assert (decision.datatype, decision.suffix, dict(decision.entities)) == expected
    check_entities(decision.datatype, decision.suffix, decision.entities)


def test_unclassified_messages_hold_no_description() -> None:
    planted = "Doe John 1970-01-01"
    for features in (
        SeriesFeatures(Modality="MR", SeriesDescription=planted, ScanningSequence=("RM",)),
        SeriesFeatures(Modality="MR", ProtocolName=planted, derived=True),
        SeriesFeatures(Modality="MR", SeriesDescription=planted, ScanningSequence=("EP",)),
    ):
        decision = classify(features)
        assert isinstance(decision, Unclassified)
        assert "Doe" not in decision.message and "1970" not in decision.message


def test_config_rules_come_first_and_can_exclude(tmp_path: Path) -> None:
    path = tmp_path / "bids.toml"
    path.write_text(
        'name = "nback study"\n'
        'authors = ["A. Researcher"]\n'
        '[[descriptions]]\n'
        'id = "nback"\n'
        'datatype = "func"\n'
        'suffix = "bold"\n'
        'entities = { task = "nback", acq = "mb4" }\n'
        'criteria = { SeriesDescription = "*bold*", RepetitionTime = { lt = 1000 } }\n'
        'sidecar_changes = { TaskDescription = "n-back" }\n'
        '[[descriptions]]\n'
        'datatype = "exclude"\n'
        'criteria = { SeriesDescription = "*phantom*" }\n'
        '[[descriptions]]\n'
        'id = "fmri-as-anat"\n'
        'datatype = "anat"\n'
        'suffix = "T2starw"\n'
        'criteria = { ImageType = ["ORIGINAL", "PRIMARY", "*", "ND"], volumes = 1 }\n'
    )
    config = load_bids_config(path)
    assert config.name == "nback study" and config.authors == ("A. Researcher",)
    fast = SeriesFeatures(Modality="MR", SeriesDescription="MB_BOLD", RepetitionTime=800.0,
                          ScanningSequence=("EP",), volumes=300)
    decision = classify(fast, config)
    assert isinstance(decision, Classification)
    assert (decision.rule, decision.datatype, dict(decision.entities)) == (
        "nback", "func", {"task": "nback", "acq": "mb4"})
    assert dict(decision.sidecar) == {"TaskDescription": "n-back"}
    slow = SeriesFeatures(**{**fast.__dict__, "RepetitionTime": 2000.0})
    decision = classify(slow, config)  # falls through to the default heuristic
    assert isinstance(decision, Classification) and decision.rule == "bold"
    excluded = classify(SeriesFeatures(Modality="MR", SeriesDescription="phantom QA"), config)
    assert isinstance(excluded, Unclassified) and excluded.reason == "bids_excluded"
    # a config can classify what the defaults would exclude (here: a derived series)
    derived = SeriesFeatures(Modality="MR", derived=True,
                             ImageType=("ORIGINAL", "PRIMARY", "M", "ND"))
    decision = classify(derived, config)
    assert isinstance(decision, Classification) and decision.suffix == "T2starw"
    no_defaults = parse_bids_config({"defaults": False, "descriptions": []})
    assert isinstance(classify(BOLD, no_defaults), Unclassified)


def test_dcm2bids_style_json_config(tmp_path: Path) -> None:
    path = tmp_path / "dcm2bids.json"
    path.write_text(json.dumps({"descriptions": [{
        "datatype": "fmap", "suffix": "epi", "custom_entities": "acq-se_dir-AP",
        "criteria": {"SequenceName": "epse2d*", "volumes": {"lte": 3}},
        "intended_for": ["func"],
    }]}))
    decision = classify(SE_EPI, load_bids_config(path))
    assert isinstance(decision, Classification)
    assert dict(decision.entities) == {"acq": "se", "dir": "AP"}
    assert decision.intended_for == ("func",)


@pytest.mark.parametrize(("raw", "message"), [
    ({"descriptions": [{"datatype": "anat", "suffix": "T1", "criteria": {"Modality": "MR"}}]},
     "does not write anat/T1"),
    ({"descriptions": [{"datatype": "func", "suffix": "bold", "criteria": {"Modality": "MR"}}]},
     "need the entities"),
    ({"descriptions": [{"datatype": "anat", "suffix": "T1w", "entities": {"dir": "AP"},
                        "criteria": {"Modality": "MR"}}]}, "no 'dir' entity"),
    ({"descriptions": [{"datatype": "anat", "suffix": "T1w", "entities": {"acq": "a_b"},
                        "criteria": {"Modality": "MR"}}]}, "letters and digits"),
    ({"descriptions": [{"datatype": "anat", "suffix": "T1w", "criteria": {"Colour": "red"}}]},
     "unknown criterion"),
    ({"descriptions": [{"datatype": "anat", "suffix": "T1w",
                        "criteria": {"EchoTime": {"around": 3}}}]}, "unknown operator"),
    ({"descriptions": [{"datatype": "perf", "suffix": "asl", "criteria": {"Modality": "MR"}}]},
     "aslcontext"),
    ({"descriptions": [{"datatype": "anat", "suffix": "T1w", "entities": {"run": "1"},
                        "criteria": {"Modality": "MR"}}]}, "set by the export"),
    ({"rules": []}, "unknown BIDS config keys"),
])
def test_invalid_configs_are_refused_with_a_reason(raw: object, message: str) -> None:
    with pytest.raises(lake.ConfigError, match=message):
        parse_bids_config(raw)


def test_config_file_errors_are_config_errors(tmp_path: Path) -> None:
    broken = tmp_path / "bids.json"
    broken.write_text("{not json")
    with pytest.raises(lake.ConfigError, match="not valid JSON"):
        load_bids_config(broken)
    with pytest.raises(lake.ConfigError, match="cannot read"):
        load_bids_config(tmp_path / "absent.toml")


def test_criteria_semantics() -> None:
    assert matches("*T1*", "t1_mprage")  # case-insensitive glob
    assert not matches("T1", "t1_mprage")
    assert matches({"any": ["*rest*", "*nback*"]}, "fmri_nback")
    assert matches({"not": "*sbref*"}, "fmri_rest")
    assert matches({"btwe": [2, 3]}, 3.0) and not matches({"btw": [2, 3]}, 3.0)
    assert matches({"gte": 1000}, (0.0, 1000.0))  # any b-value
    assert matches(30, (30.0,)) and not matches(["M"], ("M", "ND"))
    assert matches(True, True) and not matches(True, 1)


def test_direction_labels() -> None:
    axial, coronal, sagittal = [1, 0, 0, 0, 1, 0], [1, 0, 0, 0, 0, -1], [0, 1, 0, 0, 0, -1]
    # j: towards increasing row index (the DICOM column cosine); i: along the row cosine
    assert direction_label("j", axial) == "AP" and direction_label("j-", axial) == "PA"
    assert direction_label("i", axial) == "RL" and direction_label("i-", axial) == "LR"
    assert direction_label("j", coronal) == "SI" and direction_label("j-", coronal) == "IS"
    assert direction_label("i", sagittal) == "AP"
    assert direction_label("j", [1, 0, 0, 0, 0.7071, 0.7071]) is None  # oblique: no label
    assert direction_label("k", axial) is None


def test_labels_are_short_stable_and_collision_free() -> None:
    values = [f"PSEUDO{i:04d}" for i in range(3000)]
    labels = hashed_labels(values)
    assert len(set(labels.values())) == len(values)
    assert {len(v) for v in labels.values()} == {8}
    assert labels == hashed_labels(reversed(values))  # order does not matter
    forced = hashed_labels(values, minimum=1)  # 3000 values cannot be told apart by 1-2 digits
    assert len(set(forced.values())) == len(values)
    assert len({len(v) for v in forced.values()}) == 1 and len(next(iter(forced.values()))) >= 3
    assert bids_name("a1", "b2", [("run", "2"), ("echo", "1"), ("task", "x")], "bold") == (
        "sub-a1_ses-b2_task-x_run-2_echo-1_bold")
    with pytest.raises(lake.ConfigError):
        bids_name("a1", "b2", [("acq", "a/b")], "T1w")
