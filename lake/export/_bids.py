"""BIDS export of a cohort: one more :class:`~lake.export._runner.ExportSpec` adapter.

Planning (in the driver) describes each series from the catalog and a few of its stored
headers (:func:`series_features`), classifies it (:mod:`lake.export._bids_rules`: a config's
rules, then the default heuristic), gives subjects and sessions short pseudonymous labels
(hashes of the lake's keyed PatientID and of the remapped StudyInstanceUID) and numbers
runs. Unclassified series are listed under ``skipped`` in the manifest. Workers convert
each classified series with :mod:`lake.nifti` and name its volumes (echo-, part-,
magnitude1/2, phasediff...). The last step writes what needs the whole dataset:
``dataset_description.json``, ``participants.tsv``, sessions and scans tables, README,
``.bidsignore`` and the field-map sidecars with ``IntendedFor``.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydicom import dcmread
from pydicom.dataset import Dataset

from lake._capture import capture
from lake._errors import BlobNotFoundError, ConfigError, IntegrityError
from lake.catalog import arrow_dataset
from lake.export._bids_names import (
    DATATYPES,
    bids_name,
    direction_label,
    hashed_labels,
    ordered,
)
from lake.export._bids_rules import (
    HEURISTIC_VERSION,
    BidsConfig,
    Classification,
    SeriesFeatures,
    Unclassified,
    classify,
    load_bids_config,
)
from lake.export._cohort import Cohort, resolve
from lake.export._dicom import blob_skip, load_pixels, reassemble
from lake.export._manifest import FileRecord, Skip, TaskResult, sha256_file, write_bytes
from lake.export._runner import (
    ExportResult,
    ExportSpec,
    InstanceRef,
    ProgressCallback,
    SeriesTask,
    TaskPlan,
    WriterContext,
    _member_rows,
    run_export,
)
from lake.nifti import ACQUISITION_NAMES, acquisition_from_row
from lake.store import BlobStore

if TYPE_CHECKING:
    from lake._lake import Lake

__all__ = ["BIDS_VERSION", "export_bids", "series_features", "write_bids_series"]

BIDS_VERSION = "1.9.0"

#: Catalog columns the plan reads for every member (when the catalog version has them).
_COLUMNS = (
    "SeriesDescription", "ProtocolName", "Manufacturer", "ImageType", "EchoTime",
    "RepetitionTime", "ImageOrientationPatient", "ImagePositionPatient", "NumberOfFrames",
    "PatientSex", "PatientAge", "StudyDate", "StudyTime", "SeriesDate", "SeriesTime",
    "AcquisitionDate", "AcquisitionTime", "AcquisitionDateTime",
    "LongitudinalTemporalInformationModified",
)
#: Stored headers read per series to describe it (evenly spread by InstanceNumber).
SAMPLE = 5

_COMPONENT_CODES = {"M": "magnitude", "MAGNITUDE": "magnitude", "P": "phase", "PHASE": "phase",
                    "R": "real", "REAL": "real", "I": "imaginary", "IMAGINARY": "imaginary"}
_SUFFIX = re.compile(r"^(?:_e(\d+))?(_ph|_real|_imaginary|_fieldmaphz)?(?:_i(\d+))?$")
_PART = {"_ph": "phase", "_real": "real", "_imaginary": "imag"}
_DATA = (".nii", ".nii.gz")
_FMAP_GRE = frozenset({"phasediff", "phase1", "phase2", "magnitude1", "magnitude2",
                       "magnitude", "fieldmap"})
#: Sidecar keys BIDS requires for ASL (ArterialSpinLabelingType decides a few more).
_ASL_REQUIRED = ("ArterialSpinLabelingType", "PostLabelingDelay", "BackgroundSuppression",
                 "M0Type", "TotalAcquiredPairs", "RepetitionTimePreparation",
                 "MagneticFieldStrength", "MRAcquisitionType")
_ASL_LABELLED = ("LabelingDuration",)


# ---------------------------------------------------------------------------------------
# Describing a series


def _value(ds: Dataset, keyword: str) -> Any:
    """``keyword`` of an instance: top level, else the shared then first per-frame groups."""
    value = ds.get(keyword)
    if value not in (None, ""):
        return value
    for name in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        groups = ds.get(name)
        if not groups:
            continue
        for macro in groups[0]:
            if macro.VR == "SQ" and macro.value and keyword in macro.value[0]:
                found = macro.value[0].get(keyword)
                if found not in (None, ""):
                    return found
    return None


def _frame_values(ds: Dataset, macro: str, keyword: str) -> list[Any]:
    """``keyword`` of ``macro`` in every per-frame item (and the shared item)."""
    out = []
    for name in ("PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence"):
        for item in ds.get(name) or []:
            seq = item.get(macro)
            if seq and keyword in seq[0] and seq[0].get(keyword) not in (None, ""):
                out.append(seq[0].get(keyword))
    return out


def _texts(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        items: Iterable[Any] = [v for v in value.split("\\")]
    elif isinstance(value, Iterable):
        items = value
    else:
        items = [value]
    return tuple(str(v).strip().upper() for v in items if str(v).strip())


def _float(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _distinct(values: Iterable[Any], digits: int = 3) -> tuple[float, ...]:
    out = {round(v, digits) for v in (_float(x) for x in values) if v is not None}
    return tuple(sorted(out))


def _scanning_sequence(ds: Dataset) -> tuple[str, ...]:
    seq = set(_texts(_value(ds, "ScanningSequence")))
    pulse = str(_value(ds, "EchoPulseSequence") or "").upper()
    if pulse in ("GRADIENT", "BOTH"):
        seq.add("GR")
    if pulse in ("SPIN", "BOTH"):
        seq.add("SE")
    if str(_value(ds, "InversionRecovery") or "").upper() == "YES":
        seq.add("IR")
    if str(_value(ds, "EchoPlanarPulseSequence") or "").upper() == "YES":
        seq.add("EP")
    return tuple(sorted(seq))


def _sample(members: Sequence[InstanceRef], count: int = SAMPLE) -> list[InstanceRef]:
    ordered_refs = sorted(members, key=lambda r: (r.instance_number is None,
                                                  r.instance_number or 0, r.sop_uid))
    if len(ordered_refs) <= count:
        return ordered_refs
    step = (len(ordered_refs) - 1) / (count - 1)
    return [ordered_refs[round(i * step)] for i in range(count)]


def _most_common(values: Iterable[Any]) -> Any:
    counted = Counter(v for v in values if v is not None)
    if not counted:
        return None
    return sorted(counted.items(), key=lambda kv: (-kv[1], str(kv[0])))[0][0]


def series_features(members: Sequence[InstanceRef], headers: Sequence[Dataset]) -> SeriesFeatures:
    """What the classification sees of a series: its catalog rows and sampled headers.

    Parameters
    ----------
    members : sequence of InstanceRef
        Every instance of the series, with the catalog columns of :data:`_COLUMNS` (and the
        derived parameters the catalog has) in ``extra``.
    headers : sequence of pydicom.dataset.Dataset
        Stored headers of some of its instances (the first by InstanceNumber first).
    """
    first = min(members, key=lambda r: (r.instance_number is None, r.instance_number or 0,
                                         r.sop_uid))
    extra = first.extra
    head = headers[0] if headers else Dataset()
    image_types = [tuple(str(v).upper() for v in (r.extra.get("ImageType") or []))
                   for r in members]
    image_type = _texts(extra.get("ImageType")) or _texts(head.get("ImageType"))
    components: set[str] = set()
    for values in image_types:
        components.update(_COMPONENT_CODES[v] for v in values[2:3] if v in _COMPONENT_CODES)
    for ds in headers:
        component = str(_value(ds, "ComplexImageComponent") or "").upper()
        if component in _COMPONENT_CODES:
            components.add(_COMPONENT_CODES[component])
        for frame_component in _frame_values(ds, "MRImageFrameTypeSequence",
                                             "ComplexImageComponent"):
            if str(frame_component).upper() in _COMPONENT_CODES:
                components.add(_COMPONENT_CODES[str(frame_component).upper()])
    for r in members:
        for c in r.extra.get("complex_components") or []:
            if c in ("magnitude", "phase", "real", "imaginary"):
                components.add(c)
    kinds = [v for values in image_types for v in values] + list(_texts(head.get("ImageType")))
    for ds in headers:
        for frame_type in _frame_values(ds, "MRImageFrameTypeSequence", "FrameType"):
            kinds += list(_texts(frame_type))
    joined = "_".join(kinds)
    b0_map = ("B0" in joined and "MAP" in joined) or "FIELD_MAP" in joined
    echo_times = [r.extra.get("EchoTime") for r in members]
    b_values: list[Any] = []
    for ds in headers:
        echo_times += _frame_values(ds, "MREchoSequence", "EffectiveEchoTime")
        b_values.append(ds.get("DiffusionBValue"))
        b_values += _frame_values(ds, "MRDiffusionSequence", "DiffusionBValue")
    for r in members:
        b_values += list(r.extra.get("diffusion_b_values") or [])
    echoes = _distinct(echo_times, 2)
    n_echoes = max(1, len(echoes), len({r.extra.get("echo_number") for r in members}
                                       - {None}))
    n_components = max(1, len(components))
    orientations = {tuple(round(float(v), 3) for v in r.extra.get("ImageOrientationPatient")
                          or []) for r in members} - {()}
    positions = {tuple(round(float(v), 2) for v in r.extra.get("ImagePositionPatient") or [])
                 for r in members} - {()}
    mosaic = "MOSAIC" in image_type
    enhanced = any((r.extra.get("NumberOfFrames") or 1) > 1 for r in members)
    temporal = _float(_value(head, "NumberOfTemporalPositions"))
    if mosaic:
        volumes = len(members) // (n_echoes * n_components)
    elif enhanced:
        volumes = int(temporal) if temporal else len(members) // (n_echoes * n_components)
    else:
        per_position = len(members) / max(1, len(positions))
        volumes = round(per_position / (n_echoes * n_components))
    derived_direction = _most_common(r.extra.get("phase_encoding_direction") for r in members)
    orientation = extra.get("ImageOrientationPatient") or []
    direction = (direction_label(derived_direction, orientation)
                 if derived_direction and len(orientation) == 6 else None)
    train = _float(_value(head, "EchoTrainLength"))
    inversion = _float(_value(head, "InversionTime"))
    if inversion is None:
        inversion = _float(_value(head, "InversionTimes"))
    repetition = _float(extra.get("RepetitionTime"))
    if repetition is None:
        repetition = _float(_value(head, "RepetitionTime"))
    return SeriesFeatures(
        Modality=first.modality,
        SeriesDescription=extra.get("SeriesDescription"),
        ProtocolName=extra.get("ProtocolName"),
        SeriesNumber=first.series_number,
        Manufacturer=extra.get("Manufacturer"),
        ImageType=image_type,
        ScanningSequence=_scanning_sequence(head),
        SequenceVariant=_texts(_value(head, "SequenceVariant")),
        SequenceName=str(_value(head, "SequenceName") or _value(head, "PulseSequenceName")
                         or "") or None,
        MRAcquisitionType=str(_value(head, "MRAcquisitionType") or "").upper() or None,
        AcquisitionContrast=str(_value(head, "AcquisitionContrast") or "").upper() or None,
        EchoTime=echoes,
        RepetitionTime=repetition,
        InversionTime=inversion,
        EchoTrainLength=int(train) if train is not None else None,
        image=any(r.pixel_hash is not None for r in members),
        derived=bool(image_type) and image_type[0] == "DERIVED",
        mosaic=mosaic,
        instances=len(members),
        volumes=max(1, volumes),
        echoes=n_echoes,
        components=tuple(sorted(components)) or ("magnitude",),
        b_values=_distinct(b_values, 1),
        orientations=max(1, len(orientations)),
        b0_map=b0_map,
        phase_encoding_direction=derived_direction,
        direction=direction,
    )


# ---------------------------------------------------------------------------------------
# Subjects, sessions, participants


def _age_years(age: str | None) -> float | None:
    """A DICOM age string (``045Y``, ``018M``, ``003W``, ``010D``) in years."""
    if not age:
        return None
    match = re.fullmatch(r"(\d{1,3})([DWMY])", age.strip().upper())
    if not match:
        return None
    number, unit = int(match.group(1)), match.group(2)
    return {"Y": float(number), "M": number / 12, "W": number * 7 / 365.25,
            "D": number / 365.25}[unit]


def _age_text(years: float | None) -> str:
    """BIDS age: years (two decimals below one year), ``89+`` from 89 on, ``n/a`` unknown."""
    if years is None:
        return "n/a"
    if years >= 89:
        return "89+"
    if years >= 1:
        return str(int(years))
    return f"{years:.2f}"


def _age_group(age: str) -> str:
    """The ten-year group of a BIDS age (``0-9`` ... ``80-88``, ``89+``, ``n/a``)."""
    if age in ("n/a", "89+"):
        return age
    low = int(float(age)) // 10 * 10
    return f"{low}-{min(low + 9, 88)}"


def _sex_text(sex: str | None) -> str:
    value = (sex or "").strip().upper()
    return value if value in ("M", "F", "O") else "n/a"


def _dates_kept(refs: Sequence[InstanceRef]) -> bool:
    flags = {r.extra.get("LongitudinalTemporalInformationModified") for r in refs}
    return bool(flags) and flags <= {"MODIFIED", "UNMODIFIED"}


def _acq_time(members: Sequence[InstanceRef]) -> str | None:
    """Earliest (shifted) acquisition date-time of a series as BIDS writes it, or None."""
    if not _dates_kept(members):
        return None
    stamps = []
    for r in members:
        x = r.extra
        moment = x.get("AcquisitionDateTime")
        if moment is not None and moment.year > 1900:
            stamps.append(moment.replace(tzinfo=None).isoformat(timespec="seconds"))
            continue
        day = x.get("AcquisitionDate") or x.get("SeriesDate") or x.get("StudyDate")
        clock = x.get("AcquisitionTime") or x.get("SeriesTime") or x.get("StudyTime")
        if day is None or day.year <= 1900 or not clock:
            continue
        stamps.append(f"{day.isoformat()}T{str(clock)[:8]}")
    return min(stamps) if stamps else None


# ---------------------------------------------------------------------------------------
# The plan


@dataclass(frozen=True)
class _Planned:
    series: str
    subject: str
    session: str
    classification: Classification
    run: int | None
    acq_time: str | None
    features: SeriesFeatures

    @property
    def entities(self) -> tuple[tuple[str, str], ...]:
        run = (("run", str(self.run)),) if self.run is not None else ()
        return ordered((*self.classification.entities, *run))

    @property
    def folder(self) -> str:
        return f"sub-{self.subject}/ses-{self.session}/{self.classification.datatype}"


class _BidsPlan:
    """The driver's state between selecting, laying out and finishing one BIDS export."""

    def __init__(self, lake: Lake, cohort: Cohort, config: BidsConfig | None) -> None:
        self.lake = lake
        self.cohort = cohort
        self.config = config
        names = set(arrow_dataset(lake.tables.open("instances", cohort.catalog_version))
                    .schema.names)
        # the acquisition parameters derived at ingest (lake.nifti.PARAMETERS): the converter
        # needs them (the de-identified headers lost their private elements), and the
        # heuristic uses some (phase-encoding direction, b-values, components, echo number)
        self.columns = tuple(c for c in (*_COLUMNS, *ACQUISITION_NAMES) if c in names)
        self.planned: dict[str, _Planned] = {}
        self.unclassified: dict[str, Unclassified] = {}
        self.members: dict[str, list[InstanceRef]] = {}

    # select: classify every series --------------------------------------------------
    def select(self, refs: list[InstanceRef]) -> tuple[list[InstanceRef], list[Skip]]:
        by_series: dict[str, list[InstanceRef]] = defaultdict(list)
        for ref in refs:
            by_series[ref.series_uid].append(ref)
        headers = self._headers(by_series)
        subjects = hashed_labels(r.patient_id or "" for r in refs)
        sessions: dict[str, dict[str, str]] = {}
        studies_of: dict[str, set[str]] = defaultdict(set)
        for r in refs:
            studies_of[r.patient_id or ""].add(r.study_uid)
        for patient, studies in studies_of.items():
            sessions[patient] = hashed_labels(studies)
        kept: list[InstanceRef] = []
        skips: list[Skip] = []
        decided: dict[str, tuple[Classification, SeriesFeatures, list[InstanceRef]]] = {}
        for uid in sorted(by_series):
            members = by_series[uid]
            features = series_features(members, headers.get(uid, []))
            decision = classify(features, self.config)
            if isinstance(decision, Unclassified):
                self.unclassified[uid] = decision
                skips.append(Skip(uid, None, decision.reason, decision.message))
                continue
            decided[uid] = (decision, features, members)
            self.members[uid] = members
            kept += members
        self._number_runs(decided, subjects, sessions)
        return kept, skips

    def _headers(self, by_series: Mapping[str, Sequence[InstanceRef]]) -> dict[str, list[Dataset]]:
        wanted: dict[str, tuple[str, int]] = {}
        for uid, members in by_series.items():
            for rank, ref in enumerate(_sample(members)):
                wanted[ref.sop_uid] = (uid, rank)
        found: dict[str, dict[int, Dataset]] = defaultdict(dict)
        if not wanted:
            return {}
        rows = _member_rows(self.lake, self.cohort.catalog_version, list(wanted),
                            ["header_dicom"])
        for table in rows:
            for sop, header in zip(table.column(0).to_pylist(), table.column(1).to_pylist(),
                                   strict=True):
                uid, rank = wanted[sop]
                with capture():
                    found[uid][rank] = dcmread(io.BytesIO(header), force=True)
        return {uid: [ds for _, ds in sorted(by_rank.items())] for uid, by_rank in found.items()}

    def _number_runs(
        self,
        decided: Mapping[str, tuple[Classification, SeriesFeatures, list[InstanceRef]]],
        subjects: Mapping[str, str],
        sessions: Mapping[str, Mapping[str, str]],
    ) -> None:
        groups: dict[tuple[Any, ...], list[tuple[tuple[Any, ...], str]]] = defaultdict(list)
        info: dict[str, tuple[str, str, str | None]] = {}
        for uid, (decision, features, members) in decided.items():
            first = members[0]
            subject = subjects[first.patient_id or ""]
            session = sessions[first.patient_id or ""][first.study_uid]
            acq_time = _acq_time(members)
            info[uid] = (subject, session, acq_time)
            family = decision.suffix
            if decision.datatype == "fmap" and decision.suffix in _FMAP_GRE:
                family = "phase" if "phase" in decision.suffix else "magnitude"
            key = (subject, session, decision.datatype, family, decision.entities)
            order = (features.SeriesNumber is None, features.SeriesNumber or 0, acq_time or "",
                     uid)
            groups[key].append((order, uid))
        for group in groups.values():
            group.sort()
            for index, (_, uid) in enumerate(group):
                decision, features, _members = decided[uid]
                subject, session, acq_time = info[uid]
                run = index + 1 if len(group) > 1 else None
                self.planned[uid] = _Planned(uid, subject, session, decision, run, acq_time,
                                             features)
        self._field_map_echoes(decided)

    def _field_map_echoes(
        self, decided: Mapping[str, tuple[Classification, SeriesFeatures, list[InstanceRef]]]
    ) -> None:
        """EchoTime1/2 of phase-difference maps from the magnitude series they pair with."""
        self.echo_times: dict[str, tuple[float, float]] = {}
        for uid, plan in self.planned.items():
            c = plan.classification
            if c.datatype != "fmap" or c.suffix not in _FMAP_GRE:
                continue
            times = set(plan.features.EchoTime)
            if len(times) < 2:
                for other in self.planned.values():
                    oc = other.classification
                    if (other.subject, other.session) != (plan.subject, plan.session):
                        continue
                    if oc.datatype != "fmap" or oc.suffix not in _FMAP_GRE or other.run != plan.run:
                        continue
                    if other.features.SequenceName != plan.features.SequenceName:
                        continue
                    times |= set(other.features.EchoTime)
            if len(times) == 2:
                first, second = sorted(times)
                self.echo_times[uid] = (first, second)

    # layout ------------------------------------------------------------------------
    def layout(self, refs: Sequence[InstanceRef]) -> list[TaskPlan]:
        by_series: dict[str, list[InstanceRef]] = defaultdict(list)
        for ref in refs:
            by_series[ref.series_uid].append(ref)
        plans = []
        for uid in sorted(by_series):
            plan = self.planned[uid]
            c = plan.classification
            sidecar: dict[str, Any] = {}
            if c.datatype == "func":
                sidecar["TaskName"] = dict(c.entities).get("task", "unknown")
            if uid in self.echo_times:
                te1, te2 = self.echo_times[uid]
                sidecar["EchoTime1"] = round(te1 / 1000.0, 9)
                sidecar["EchoTime2"] = round(te2 / 1000.0, 9)
            sidecar.update(dict(c.sidecar))
            meta = {
                "subject": plan.subject,
                "session": plan.session,
                "datatype": c.datatype,
                "suffix": c.suffix,
                "entities": [list(e) for e in plan.entities],
                "sidecar": sidecar,
                "aslcontext": list(c.aslcontext) if c.aslcontext else None,
                "fmap": c.datatype == "fmap",
            }
            members = sorted(by_series[uid], key=lambda r: r.sop_uid)
            meta["acquisitions"] = {r.sop_uid: acquisition_from_row(r.extra) for r in members}
            plans.append(TaskPlan(uid, plan.folder, tuple((r.sop_uid, "") for r in members),
                                  meta))
        return plans

    # finish ------------------------------------------------------------------------
    def extras(self, refs: Sequence[InstanceRef],
               results: Sequence[TaskResult]) -> dict[str, bytes]:
        files: dict[str, bytes] = {}
        data_of: dict[str, list[str]] = {}
        for result in results:
            data_of[result.key] = sorted(f.path for f in result.files if f.path.endswith(_DATA))
        files["dataset_description.json"] = _json(self._description(refs))
        files["README"] = self._readme(refs, results).encode()
        files[".bidsignore"] = b"manifest.json\n"
        written = {uid for uid, paths in data_of.items() if paths}
        participants, sessions = self._participants(written)
        files["participants.tsv"] = _tsv(["participant_id", "sex", "age", "age_group"],
                                         participants)
        files["participants.json"] = _json(_PARTICIPANTS_JSON)
        dates = any(self.planned[uid].acq_time for uid in written)
        columns = ["session_id", "acq_time", "age"] if dates else ["session_id", "age"]
        for subject, session_rows in sessions.items():
            stem = f"sub-{subject}/sub-{subject}_sessions"
            files[f"{stem}.tsv"] = _tsv(columns,
                                        [[r[c] for c in columns] for r in session_rows])
            files[f"{stem}.json"] = _json(_SESSIONS_JSON)
        scans: dict[tuple[str, str], list[list[str]]] = defaultdict(list)
        for uid, paths in data_of.items():
            plan = self.planned[uid]
            prefix = f"sub-{plan.subject}/ses-{plan.session}/"
            for path in paths:
                row = [path[len(prefix):]]
                if dates:
                    row.append(plan.acq_time or "n/a")
                scans[(plan.subject, plan.session)].append(row)
        scan_columns = ["filename", "acq_time"] if dates else ["filename"]
        for (subject, session), scan_rows in sorted(scans.items()):
            files[f"sub-{subject}/ses-{session}/sub-{subject}_ses-{session}_scans.tsv"] = _tsv(
                scan_columns, sorted(scan_rows))
        for result in results:
            for path, text in sorted(result.info.get("fmap_sidecars", {}).items()):
                sidecar = json.loads(text)
                targets = self._intended_for(result.key, data_of)
                if targets:
                    sidecar = {**sidecar, "IntendedFor": targets}
                files[path] = _sidecar_bytes(sidecar)
        return files

    def details(self, refs: Sequence[InstanceRef],
                results: Sequence[TaskResult]) -> dict[str, Any]:
        """The manifest's ``bids`` entry: where each classified series went, and why."""
        series = []
        for result in results:
            plan = self.planned[result.key]
            c = plan.classification
            series.append({
                "series": result.key,
                "subject": f"sub-{plan.subject}",
                "session": f"ses-{plan.session}",
                "datatype": c.datatype,
                "suffix": c.suffix,
                "entities": dict(plan.entities),
                "rule": c.rule,
                "files": sorted(f.path for f in result.files),
            })
        return {
            "bids_version": BIDS_VERSION,
            "heuristic": HEURISTIC_VERSION,
            "classified": len(self.planned),
            "unclassified": len(self.unclassified),
            "series": series,
        }

    def _intended_for(self, uid: str, data_of: Mapping[str, list[str]]) -> list[str]:
        plan = self.planned[uid]
        wanted = set(plan.classification.intended_for or ())
        targets = []
        for other_uid, paths in data_of.items():
            other = self.planned[other_uid]
            oc = other.classification
            if (other.subject, other.session) != (plan.subject, plan.session):
                continue
            if oc.datatype == "fmap" or not ({oc.datatype, oc.rule} & wanted):
                continue
            targets += [f"bids::{p}" for p in paths]
        return sorted(targets)

    def _description(self, refs: Sequence[InstanceRef]) -> dict[str, Any]:
        from lake import __version__

        profiles = sorted({f"{r.profile} {r.profile_version}" for r in refs if r.profile})
        cohort = self.cohort.name or "one-off query"
        name = self.config.name if self.config and self.config.name else (
            f"imaging-lake cohort {self.cohort.name}" if self.cohort.name else
            "imaging-lake export")
        described: dict[str, Any] = {
            "Name": name,
            "BIDSVersion": BIDS_VERSION,
            "DatasetType": "raw",
            "GeneratedBy": [
                {
                    "Name": "imaging-lake",
                    "Version": __version__,
                    "Description": (
                        f"BIDS export of {cohort} at catalog version "
                        f"{self.cohort.catalog_version}, de-identified with profile(s) "
                        f"{', '.join(profiles) or 'unknown'}; default heuristic "
                        f"{HEURISTIC_VERSION}"
                        + (" and a BIDS config" if self.config is not None else "")
                    ),
                    "CatalogVersion": self.cohort.catalog_version,
                    "Profiles": profiles,
                }
            ],
        }
        if self.config is not None and self.config.authors:
            described["Authors"] = list(self.config.authors)
        if self.config is not None and self.config.license:
            described["License"] = self.config.license
        return described

    def _readme(self, refs: Sequence[InstanceRef], results: Sequence[TaskResult]) -> str:
        counts = Counter(p.classification.datatype for p in self.planned.values())
        lines = [
            "# " + (self._description(refs)["Name"]),
            "",
            "Exported by imaging-lake from de-identified DICOM. Subject and session labels are",
            "short hashes of the lake's pseudonymous PatientID and StudyInstanceUID; nothing in",
            "this dataset names a person. Series were sorted into datatypes by the export's",
            "heuristic" + (" and a BIDS config" if self.config else "") + "; series it could "
            "not classify are listed",
            "in manifest.json (skipped), never guessed.",
            "",
            f"Series classified: {len(self.planned)} "
            f"({', '.join(f'{k} {v}' for k, v in sorted(counts.items()))}); "
            f"unclassified: {len(self.unclassified)}.",
            "",
        ]
        return "\n".join(lines)

    def _participants(
        self, written: set[str]
    ) -> tuple[list[list[str]], dict[str, list[dict[str, str]]]]:
        """participants.tsv rows and sessions.tsv rows of the subjects with written data."""
        rows = []
        sessions: dict[str, list[dict[str, str]]] = {}
        # a series belongs to one subject and session (its first member's), even when its
        # instances disagree (a series mixing patients is reported at ingest)
        by_subject: dict[str, dict[str, list[InstanceRef]]] = defaultdict(lambda: defaultdict(list))
        for uid in sorted(written):
            plan = self.planned[uid]
            by_subject[plan.subject][plan.session] += self.members[uid]
        for subject, by_session in sorted(by_subject.items()):
            sexes = {_sex_text(r.extra.get("PatientSex"))
                     for members in by_session.values() for r in members} - {"n/a"}
            session_rows = []
            firsts = []
            for session, members in sorted(by_session.items()):
                ages = [a for a in (_age_years(r.extra.get("PatientAge")) for r in members)
                        if a is not None]
                times = [self.planned[r.series_uid].acq_time for r in members]
                row = {
                    "session_id": f"ses-{session}",
                    "acq_time": min((t for t in times if t), default="n/a"),
                    "age": _age_text(min(ages) if ages else None),
                }
                session_rows.append(row)
                firsts.append((row["acq_time"] == "n/a", row["acq_time"],
                               min(ages) if ages else math.inf, row["age"]))
            sessions[subject] = session_rows
            age = min(firsts)[3]
            rows.append([f"sub-{subject}", sexes.pop() if len(sexes) == 1 else "n/a", age,
                         _age_group(age)])
        return rows, sessions


_PARTICIPANTS_JSON = {
    "sex": {
        "Description": "PatientSex as the de-identification profile retained it",
        "Levels": {"M": "male", "F": "female", "O": "other"},
    },
    "age": {
        "Description": "PatientAge at the subject's first exported session, as the profile "
                       "retained it (ages of 89 and over are given as 89+)",
        "Units": "year",
    },
    "age_group": {
        "Description": "The age column in ten-year groups, for sharing where an exact age is too "
                       "precise: 0-9, 10-19, ..., 80-88, and 89+ (n/a when the profile removed "
                       "the age)",
    },
}


_SESSIONS_JSON = {
    "age": {
        "Description": "PatientAge at this session, as the profile retained it (ages of 89 and "
                       "over are given as 89+)",
        "Units": "year",
    },
}


def _json(data: Any) -> bytes:
    return (json.dumps(data, indent=2, ensure_ascii=False, allow_nan=False) + "\n").encode()


def _sidecar_bytes(sidecar: Mapping[str, Any]) -> bytes:
    # the form lake.nifti.write_volume writes
    return (json.dumps(sidecar, indent=2, ensure_ascii=False, allow_nan=False) + "\n").encode()


def _tsv(columns: Sequence[str], rows: Iterable[Sequence[str]]) -> bytes:
    lines = ["\t".join(columns)] + ["\t".join(row) for row in rows]
    return ("\n".join(lines) + "\n").encode()


# ---------------------------------------------------------------------------------------
# The worker


@dataclass(frozen=True)
class _Part:
    echo: int | None
    component: str  # "", "_ph", "_real", "_imaginary", "_fieldmaphz"


def _names(meta: Mapping[str, Any], parts: Sequence[_Part]) -> list[tuple[str, list[tuple[str, str]]] | str]:
    """BIDS suffix and entities of each volume of a series, or a refusal message."""
    datatype, suffix = str(meta["datatype"]), str(meta["suffix"])
    base = [tuple(e) for e in meta["entities"]]
    allowed = DATATYPES[datatype][suffix]
    out: list[tuple[str, list[tuple[str, str]]] | str] = []
    if datatype == "fmap" and suffix in _FMAP_GRE:
        phases = [p for p in parts if p.component == "_ph"]
        magnitudes = sorted({p.echo or 1 for p in parts if p.component == ""})
        hz = any(p.component == "_fieldmaphz" for p in parts)
        phase_echoes = sorted({p.echo or 1 for p in phases})
        for p in parts:
            if p.component == "_ph" and hz:
                out.append("a phase image beside a field map in Hz")
            elif p.component == "_ph":
                rank = phase_echoes.index(p.echo or 1) + 1
                name = "phasediff" if len(phases) == 1 else f"phase{rank}"
                out.append(name if len(phase_echoes) <= 2 else "more than two phase images")
            elif p.component == "_fieldmaphz":
                out.append("fieldmap")
            elif p.component == "":
                rank = magnitudes.index(p.echo or 1) + 1
                if hz:
                    out.append("magnitude" if rank == 1 else "a second magnitude echo beside "
                               "a field map in Hz")
                else:
                    out.append(f"magnitude{rank}" if rank <= 2
                               else "more than two magnitude echoes")
            else:
                out.append("real/imaginary field-map images have no BIDS name")
        return [(o, list(base)) if o in _FMAP_GRE else o for o in out]
    components = {p.component for p in parts}
    for p in parts:
        entities = list(base)
        if suffix in ("MEGRE", "MESE") or (p.echo is not None
                                            and len({q.echo for q in parts}) > 1):
            if "echo" not in allowed:
                out.append(f"{datatype}/{suffix} takes no echo entity")
                continue
            entities.append(("echo", str(p.echo or 1)))
        if components - {""}:
            if "part" not in allowed or p.component == "_fieldmaphz":
                out.append(f"{datatype}/{suffix} takes no part entity")
                continue
            entities.append(("part", _PART.get(p.component, "mag")))
        out.append((suffix, entities))
    return out


def _required(meta: Mapping[str, Any], suffix: str, sidecar: Mapping[str, Any],
              has_bvals: bool, volumes: int) -> str | None:
    """Why a volume cannot be a valid BIDS file (None when it can)."""
    datatype = meta["datatype"]
    missing: list[str] = []
    if datatype == "func" and suffix == "bold":
        missing += [k for k in ("RepetitionTime", "TaskName") if k not in sidecar]
    if datatype == "dwi" and suffix == "dwi" and not has_bvals:
        return "no b-values/gradient directions for this diffusion series (bval/bvec)"
    if suffix == "phasediff":
        missing += [k for k in ("EchoTime1", "EchoTime2") if k not in sidecar]
    if suffix in ("phase1", "phase2") and "EchoTime" not in sidecar:
        missing.append("EchoTime")
    if suffix == "fieldmap" and "Units" not in sidecar:
        missing.append("Units")
    if suffix == "epi":
        missing += [k for k in ("PhaseEncodingDirection", "TotalReadoutTime") if k not in sidecar]
    if suffix == "asl":
        missing += [k for k in _ASL_REQUIRED if k not in sidecar]
        labelled = str(sidecar.get("ArterialSpinLabelingType", "")).upper() in ("CASL", "PCASL")
        if labelled:
            missing += [k for k in _ASL_LABELLED if k not in sidecar]
        if str(sidecar.get("MRAcquisitionType", "")).upper() == "2D" and "SliceTiming" not in sidecar:
            missing.append("SliceTiming")
        context = meta.get("aslcontext")
        if not context:
            missing.append("aslcontext (volume types)")
        elif volumes % len(context):
            return f"{volumes} volumes do not repeat the {len(context)} aslcontext volume types"
    if missing:
        return "missing " + ", ".join(missing)
    return None


def write_bids_series(task: SeriesTask, ctx: WriterContext) -> TaskResult:
    """Worker: convert one classified series and write its volumes under BIDS names."""
    from lake.nifti import series_to_nifti, validate_acquisition, write_volume

    meta = task.meta
    result = TaskResult(task.key)
    blobs = BlobStore(ctx.location)
    stored = meta.get("acquisitions", {})
    datasets = []
    acquisitions = []
    for item in task.items:
        try:
            datasets.append(reassemble(item.header, load_pixels(blobs, item.pixel_hash),
                                       item.pixel_vr))
        except (BlobNotFoundError, IntegrityError) as exc:
            result.skipped.append(blob_skip(task, item, exc))
            continue
        acquisitions.append(validate_acquisition(stored.get(item.sop_uid, {})))
    if not datasets:
        return result
    with capture():
        try:
            volumes, refusals = series_to_nifti(datasets, acquisitions)
        except Exception as exc:  # noqa: BLE001 - one series must not sink the export; reported
            result.skipped.append(Skip(task.key, None, "converter_error",
                                       f"the NIfTI converter failed on this series "
                                       f"({type(exc).__name__})"))
            return result
    for refusal in refusals:
        part = f" (part {refusal.suffix})" if refusal.suffix else ""
        result.skipped.append(Skip(task.key, None, refusal.reason_code.value,
                                   refusal.message + part))
    parts = []
    for volume in volumes:
        match = _SUFFIX.match(volume.suffix)
        if match is None or match.group(3) is not None:
            result.skipped.append(Skip(
                task.key, None, "bids_unsupported",
                "the series holds images without a common geometry (one volume per instance); "
                "BIDS has no name for them"))
            return result
        parts.append(_Part(int(match.group(1)) if match.group(1) else None,
                           match.group(2) or ""))
    root = Path(ctx.root)
    fmap_sidecars: dict[str, Any] = {}
    for volume, named in zip(volumes, _names(meta, parts), strict=True):
        if isinstance(named, str):
            result.skipped.append(Skip(task.key, None, "bids_unsupported",
                                       f"{named} (part {volume.suffix or 'main'})"))
            continue
        suffix, entities = named
        sidecar = {**volume.sidecar, **meta["sidecar"]}
        if suffix == "fieldmap":
            sidecar.setdefault("Units", "Hz")
        if suffix in ("phase1", "phase2", "phasediff") and suffix != "phasediff":
            sidecar.pop("EchoTime1", None)
            sidecar.pop("EchoTime2", None)
        n_volumes = int(volume.image.shape[3]) if len(volume.image.shape) > 3 else 1
        problem = _required(meta, suffix, sidecar, volume.bval is not None, n_volumes)
        if problem is not None:
            result.skipped.append(Skip(task.key, None, "bids_missing_metadata",
                                       f"{meta['datatype']}/{suffix}: {problem}"))
            continue
        name = bids_name(meta["subject"], meta["session"], entities, suffix)
        stem = root / task.folder / name
        paths = write_volume(
            replace(volume, sidecar=sidecar), stem,
            compress=bool(ctx.options["compress"]),
            level=int(ctx.options["level"] or 6),
            threads=ctx.threads,
        )
        for path in paths:
            relative = path.relative_to(root).as_posix()
            if meta["fmap"] and relative.endswith(".json"):
                # written again with IntendedFor at the end; kept as text, since the journal
                # sorts the keys of what it records
                fmap_sidecars[relative] = _sidecar_bytes(sidecar).decode()
                continue
            result.files.append(FileRecord(relative, sha256_file(path), path.stat().st_size))
        if meta["datatype"] == "perf" and suffix == "asl":
            context = list(meta["aslcontext"]) * (n_volumes // len(meta["aslcontext"]))
            data = _tsv(["volume_type"], [[c] for c in context])
            relative = f"{task.folder}/{name.removesuffix('_asl')}_aslcontext.tsv"
            result.files.append(write_bytes(root, relative, data))
    if fmap_sidecars:
        result.info["fmap_sidecars"] = fmap_sidecars
    return result


def export_bids(
    lake: Lake,
    cohort_or_sql: Cohort | str,
    out: str | os.PathLike[str],
    *,
    config: BidsConfig | str | os.PathLike[str] | None = None,
    compress: bool = True,
    level: int = 6,
    scheduler: str = "auto",
    workers: int | None = None,
    on_progress: ProgressCallback | None = None,
) -> ExportResult:
    """Export a cohort as a BIDS dataset (MRI: anat, func, dwi, fmap, perf).

    Parameters
    ----------
    lake : Lake
        An open lake.
    cohort_or_sql : Cohort or str
        A cohort, a saved cohort's name, or a one-off SQL query.
    out : path
        A new or empty folder (or that of an interrupted run of the same export).
    config : BidsConfig or path, optional
        A BIDS config (JSON or TOML, dcm2bids style: ``descriptions`` with ``criteria`` ->
        ``datatype``, ``suffix``, ``entities``); its rules run before the default heuristic.
    compress : bool
        Write ``.nii.gz`` (default) instead of ``.nii``.
    level : int
        gzip level 1-9 (output bytes depend only on it).
    scheduler, workers, on_progress
        As for :func:`lake.export.export_dicom`.

    Returns
    -------
    ExportResult
        Unclassified series are in ``skipped`` (``bids_unclassified``, ``bids_excluded``),
        so are series the converter refused and volumes that lack what BIDS requires
        (``bids_missing_metadata``); ``manifest["bids"]`` maps each series to its files.

    Raises
    ------
    ConfigError
        For an invalid config or compression level.
    ExportError
        If ``out`` holds something else.

    Examples
    --------
    >>> from lake.export import export_bids  # doctest: +SKIP
    >>> export_bids(lk, "mr-brain", "/exports/bids", config="bids.toml")  # doctest: +SKIP
    """
    if compress and not 1 <= level <= 9:
        raise ConfigError(f"gzip level must be 1..9, got {level}")
    if config is not None and not isinstance(config, BidsConfig):
        config = load_bids_config(Path(config))
    cohort = resolve(lake, cohort_or_sql)
    plan = _BidsPlan(lake, cohort, config)
    spec = ExportSpec(
        kind="bids",
        options={
            "compress": compress,
            "level": level if compress else None,
            "heuristic": HEURISTIC_VERSION,
            "config": config.source if config is not None else None,
        },
        layout=plan.layout,
        writer=write_bids_series,
        select=plan.select,
        columns=plan.columns,
        extras=plan.extras,
        details=plan.details,
        flushes=False,  # lake.nifti.write_volume renames its files into place, unflushed
    )
    return run_export(
        lake, cohort, out, spec, scheduler=scheduler, workers=workers, on_progress=on_progress
    )
