"""Which BIDS datatype, suffix and entities a series gets: the default heuristic and configs.

A series is described by :class:`SeriesFeatures`: what the catalog and a few of its stored
headers say about it (descriptions, image type, sequence, echo/repetition/inversion times,
b-values, complex components, volumes) plus the acquisition parameters the lake derives at
ingest where the catalog has them (phase-encoding direction, b-values, components...).
Rules are tried in order and the first that matches classifies the series:

* rules from a config file (dcm2bids style: ``criteria`` on those features -> ``datatype``,
  ``suffix``, ``entities``), then
* the default heuristic (:data:`DEFAULT_RULES`, documented in docs/export.md), unless the
  config says ``defaults = false``.

A series no rule matches is *unclassified*: it is listed in the manifest, never guessed.
"""

from __future__ import annotations

import fnmatch
import json
import math
import re
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from lake._errors import ConfigError
from lake.export._bids_names import DATATYPES, Entities, check_entities, is_label, ordered

__all__ = [
    "DEFAULT_RULES",
    "HEURISTIC_VERSION",
    "BidsConfig",
    "Classification",
    "Rule",
    "SeriesFeatures",
    "Unclassified",
    "classify",
    "load_bids_config",
]

HEURISTIC_VERSION = 1
"""Changes whenever the default heuristic would name a series differently."""

JSONValue = str | int | float | bool | None | list[Any] | dict[str, Any]


@dataclass(frozen=True)
class SeriesFeatures:
    """What the classification sees of one series (all values de-identified or derived).

    Text values are as the catalog holds them (descriptions cleaned or removed by the
    profile); lists are sorted and distinct; times are in ms as in DICOM.
    """

    Modality: str | None = None
    SeriesDescription: str | None = None
    ProtocolName: str | None = None
    SeriesNumber: int | None = None
    Manufacturer: str | None = None
    ImageType: tuple[str, ...] = ()
    """The image type values of the series' first instance (upper case)."""
    ScanningSequence: tuple[str, ...] = ()
    """EP, SE, GR, IR, RM (enhanced objects: from EchoPulseSequence, InversionRecovery...)."""
    SequenceVariant: tuple[str, ...] = ()
    SequenceName: str | None = None
    """SequenceName, or PulseSequenceName of enhanced objects."""
    MRAcquisitionType: str | None = None
    AcquisitionContrast: str | None = None
    EchoTime: tuple[float, ...] = ()
    RepetitionTime: float | None = None
    InversionTime: float | None = None
    EchoTrainLength: int | None = None
    image: bool = True
    """Whether the series holds images (not reports, waveforms, documents)."""
    derived: bool = False
    """ImageType value 1 is DERIVED (maps, reformats, trace/ADC/FA, subtractions)."""
    mosaic: bool = False
    instances: int = 0
    volumes: int = 1
    """Volumes per echo and component (time points, diffusion directions)."""
    echoes: int = 1
    components: tuple[str, ...] = ("magnitude",)
    """magnitude, phase, real, imaginary."""
    b_values: tuple[float, ...] = ()
    orientations: int = 1
    """Distinct slice orientations (several: a localizer or a multi-stack series)."""
    b0_map: bool = False
    """Image or frame type marks a B0 field map (Philips B0 MAP, FIELD_MAP)."""
    phase_encoding_direction: str | None = None
    """Derived at ingest (i, i-, j, j-: along the stored matrix), where the catalog has it."""
    direction: str | None = None
    """Anatomical label of the phase-encoding direction (AP, PA, LR, RL, IS, SI)."""

    @property
    def max_b_value(self) -> float:
        return max(self.b_values, default=0.0)

    @property
    def text(self) -> str:
        """SeriesDescription and ProtocolName in lower case, for the description rules."""
        return " ".join(t for t in (self.SeriesDescription, self.ProtocolName) if t).lower()

    def criteria_values(self) -> dict[str, Any]:
        """Every feature by name, as config criteria see them."""
        values: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self)}
        values["max_b_value"] = self.max_b_value
        return values


@dataclass(frozen=True)
class Classification:
    """Where a series goes in the dataset.

    Attributes
    ----------
    datatype, suffix : str
        e.g. ``func`` / ``bold``. Field-map series (``fmap`` with a magnitude, phase or
        field-map suffix) are named per image by the writer: magnitude echoes become
        ``magnitude1``/``magnitude2``, one phase image ``phasediff``, two ``phase1``/``phase2``.
    entities : tuple of (str, str)
        Entities other than ``sub``, ``ses`` and ``run`` (runs are numbered by the layout).
    rule : str
        The rule that matched.
    sidecar : tuple of (str, value)
        Keys added to every sidecar of the series.
    intended_for : tuple of str, optional
        For field maps: datatypes (or rule ids) of the session's series they correct.
    aslcontext : tuple of str, optional
        For ``perf/asl``: the volume types, repeated to the number of volumes.
    """

    datatype: str
    suffix: str
    entities: Entities
    rule: str
    sidecar: tuple[tuple[str, JSONValue], ...] = ()
    intended_for: tuple[str, ...] | None = None
    aslcontext: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Unclassified:
    """No rule matched (or one excluded the series): why, in codes and counts only."""

    reason: str
    """``bids_unclassified`` or ``bids_excluded``."""
    message: str


Decide = Callable[[SeriesFeatures], "Classification | Unclassified | None"]


@dataclass(frozen=True)
class Rule:
    """One rule: a name, what it means (for the docs), and a decision."""

    id: str
    doc: str
    decide: Decide


# ---------------------------------------------------------------------------------------
# The default heuristic


def _words(pattern: str) -> re.Pattern[str]:
    # description words: split on anything that is not a letter or digit
    return re.compile(rf"(?<![a-z0-9])(?:{pattern})(?![a-z0-9])")


_LOCALIZER = _words(r"localizer|localiser|scout|survey|aahscout\w*|3.?plane|loc")
_DWI_WORDS = _words(r"dwi|dti|diff|diffusion|dmri|hardi|dsi|tensor|ep2d_diff\w*|b\d{3,4}")
_SBREF = _words(r"sbref|sb.?ref|single.?band.?ref\w*")
_FIELDMAP_WORDS = _words(r"field.?map\w*|fmap|b0.?map|gre_field_mapping")
_PEPOLAR_WORDS = _words(r"se.?fmap|spin.?echo.?field.?map|topup|pepolar|rpe|blip\w*")
_BOLD_WORDS = _words(r"bold|fmri|func|rest|resting|rs.?fmri|task\w*")
_ASL_WORDS = _words(r"asl|pcasl|pasl|casl|perfusion")
_TASK = re.compile(r"task[-_]([a-z0-9]+)")
_REPROIN = re.compile(
    r"^(anat|func|dwi|fmap|perf)(?:-([A-Za-z0-9]+))?((?:_[a-z]+-[A-Za-z0-9]+)*)(?:__.*)?$"
)
_REPROIN_ENTITIES = ("task", "acq", "ce", "rec", "dir")
_DIFFUSION_SEQUENCE = re.compile(r"^\*?(ep_b|ep2d_diff|epse2d\S*_b|re_b)", re.IGNORECASE)


def _is_epi(f: SeriesFeatures) -> bool:
    name = (f.SequenceName or "").lower().lstrip("*")
    return (
        "EP" in f.ScanningSequence
        or name.startswith(("epfid", "epse", "ep2d", "ep_", "epi"))
        or "EPI" in f.ImageType
        or "FMRI" in f.ImageType
        # Philips writes GR for EPI; a 2D gradient echo with a long echo train is EPI
        or ("GR" in f.ScanningSequence and f.MRAcquisitionType == "2D"
            and (f.EchoTrainLength or 0) >= 16)
    )


def _is_spin_echo_epi(f: SeriesFeatures) -> bool:
    name = (f.SequenceName or "").lower().lstrip("*")
    return _is_epi(f) and ("SE" in f.ScanningSequence or name.startswith("epse"))


def _diffusion(f: SeriesFeatures) -> bool:
    return (
        f.max_b_value > 0
        or f.AcquisitionContrast == "DIFFUSION"
        or "DIFFUSION" in f.ImageType
        or bool(_DIFFUSION_SEQUENCE.match(f.SequenceName or ""))
        or (_is_epi(f) and bool(_DWI_WORDS.search(f.text)))
    )


def _hit(datatype: str, suffix: str, rule: str, entities: Entities = (),
         **extra: Any) -> Classification:
    return Classification(datatype, suffix, ordered(entities), rule, **extra)


def _not_mr(f: SeriesFeatures) -> Unclassified | None:
    if not f.image:
        return Unclassified("bids_unclassified", "not an image series (report, document...)")
    if (f.Modality or "").upper() != "MR":
        return Unclassified(
            "bids_unclassified",
            "not MR: the BIDS export writes MRI datatypes (anat, func, dwi, fmap, perf)",
        )
    return None


def _derived(f: SeriesFeatures) -> Unclassified | None:
    if f.derived:
        return Unclassified(
            "bids_unclassified",
            "derived images (maps, reformats, trace/ADC/FA, subtractions) are not raw BIDS data",
        )
    return None


def _localizer(f: SeriesFeatures) -> Unclassified | None:
    if f.orientations > 1:
        return Unclassified(
            "bids_unclassified",
            f"{f.orientations} slice orientations in one series (a localizer or multi-stack "
            "series)",
        )
    if _LOCALIZER.search(f.text):
        return Unclassified("bids_unclassified", "a localizer (by its description)")
    return None


def _reproin(f: SeriesFeatures) -> Classification | None:
    """ReproIn protocol names: ``func-bold_task-rest_run-1``, ``anat-T1w_acq-mprage``..."""
    for text in (f.ProtocolName, f.SeriesDescription):
        match = _REPROIN.match((text or "").strip())
        if not match:
            continue
        datatype, suffix, rest = match.group(1), match.group(2), match.group(3)
        suffix = suffix or {"dwi": "dwi", "func": "bold", "perf": "asl"}.get(datatype)
        if suffix is None or suffix not in DATATYPES[datatype]:
            continue
        entities = []
        for part in filter(None, rest.split("_")):
            name, _, label = part.partition("-")
            if name in _REPROIN_ENTITIES and is_label(label):
                entities.append((name, label))
        if datatype == "fmap" and suffix == "epi" and "dir" not in dict(entities) and f.direction:
            entities.append(("dir", f.direction))
        try:
            check_entities(datatype, suffix, entities)
        except ConfigError:
            continue
        return _hit(datatype, suffix, "reproin", tuple(entities), **_extras(datatype, suffix))
    return None


def _extras(datatype: str, suffix: str) -> dict[str, Any]:
    if datatype == "fmap":
        return {"intended_for": ("func", "dwi", "perf")}
    return {}


def _field_map(f: SeriesFeatures) -> Classification | None:
    name = (f.SequenceName or "").lower().lstrip("*")
    if f.b0_map:
        return _hit("fmap", "fieldmap", "gre_field_map", intended_for=("func", "dwi", "perf"))
    if not (name.startswith(("fm2d", "fm3d")) or (_FIELDMAP_WORDS.search(f.text)
                                                 and not _is_epi(f))):
        return None
    suffix = "phasediff" if set(f.components) == {"phase"} else "magnitude"
    return _hit("fmap", suffix, "gre_field_map", intended_for=("func", "dwi", "perf"))


def _dwi(f: SeriesFeatures) -> Classification | None:
    if not _diffusion(f):
        return None
    if _SBREF.search(f.text):
        return _hit("dwi", "sbref", "dwi_sbref", _dir(f))
    return _hit("dwi", "dwi", "dwi", _dir(f))


def _dir(f: SeriesFeatures) -> Entities:
    return (("dir", f.direction),) if f.direction else ()


def _pepolar(f: SeriesFeatures) -> Classification | Unclassified | None:
    if not _is_epi(f) or f.volumes > 3 or _SBREF.search(f.text):
        return None
    if not (_is_spin_echo_epi(f) or _PEPOLAR_WORDS.search(f.text) or _FIELDMAP_WORDS.search(
            f.text)):
        return None
    if f.direction is None:
        return Unclassified(
            "bids_unclassified",
            "a short EPI series (a reverse phase-encoding field map or a reference scan) "
            "without a known phase-encoding direction",
        )
    return _hit("fmap", "epi", "epi_field_map", (("dir", f.direction),),
                intended_for=("func", "dwi", "perf"))


def _asl(f: SeriesFeatures) -> Classification | None:
    if "ASL" in f.ImageType or f.AcquisitionContrast == "PERFUSION" or _ASL_WORDS.search(f.text):
        return _hit("perf", "asl", "asl")
    return None


def _task(f: SeriesFeatures) -> str:
    match = _TASK.search(f.text)
    if match and is_label(match.group(1)):
        return match.group(1)
    if re.search(r"(?<![a-z])(rest|rs[-_ ]?fmri|rs[-_ ]?bold)", f.text):
        return "rest"
    return "unknown"


def _bold(f: SeriesFeatures) -> Classification | Unclassified | None:
    if not _is_epi(f) or (_is_spin_echo_epi(f) and not _BOLD_WORDS.search(f.text)):
        return None
    task = (("task", _task(f)),)
    if _SBREF.search(f.text):
        return _hit("func", "sbref", "func_sbref", task + _dir(f))
    if f.volumes >= 2 or "FMRI" in f.ImageType or _BOLD_WORDS.search(f.text):
        return _hit("func", "bold", "bold", task + _dir(f))
    return Unclassified(
        "bids_unclassified",
        "a single-volume gradient-echo EPI (a reference scan or a field map); classify it "
        "with a config",
    )


def _anat_suffix(f: SeriesFeatures) -> str | None:
    text = f.text
    if re.search(r"flair", text):
        return "FLAIR"
    if re.search(r"(?<![a-z0-9])(t2\*|t2star|t2s|swi|gre)(?![a-z0-9])", text):
        return "T2starw"
    if re.search(r"(?<![a-z0-9])(t2|t2w|tse|space|cube|haste)(?![a-z0-9*])", text):
        return "T2w"
    if re.search(r"(?<![a-z0-9])(t1|t1w|mprage|mp.rage|bravo|fspgr|spgr|tfl|tfe|mp2rage)"
                 r"(?![a-z0-9])", text):
        return "T1w"
    if re.search(r"(?<![a-z0-9])(pd|pdw)(?![a-z0-9])", text):
        return "PDw"
    contrast = f.AcquisitionContrast or ""
    by_contrast = {"T1": "T1w", "T2": "T2w", "PROTON_DENSITY": "PDw",
                   "FLUID_ATTENUATED": "FLAIR", "T2_STAR": "T2starw"}
    if contrast in by_contrast:
        return by_contrast[contrast]
    seq = set(f.ScanningSequence)
    name = (f.SequenceName or "").lower().lstrip("*")
    te = f.EchoTime[0] if f.EchoTime else None
    tr, ti = f.RepetitionTime, f.InversionTime
    if name.startswith(("tfl", "mprage")) or {"IR", "GR"} <= seq:
        return "T1w"  # inversion-prepared gradient echo: MPRAGE, BRAVO, TFE
    if "IR" in seq and "SE" in seq and ti is not None and ti >= 1500 and (te or 0) >= 60:
        return "FLAIR"
    if "SE" in seq and "IR" not in seq and tr is not None and te is not None:
        if tr >= 2000 and te >= 60:
            return "T2w"
        if tr >= 1500 and te <= 40:
            return "PDw"
        if tr <= 1000 and te <= 30:
            return "T1w"
    return None


def _anat(f: SeriesFeatures) -> Classification | Unclassified | None:
    if _is_epi(f):
        return None
    suffix = _anat_suffix(f)
    if suffix is None:
        return None
    if f.echoes > 1 and suffix in ("T2starw", "PDw", "T2w"):
        seq = set(f.ScanningSequence)
        if "GR" in seq and "SE" not in seq:
            return _hit("anat", "MEGRE", "anat_multi_echo")
        if "SE" in seq and "GR" not in seq:
            return _hit("anat", "MESE", "anat_multi_echo")
    return _hit("anat", suffix, "anat")


def _nothing(f: SeriesFeatures) -> Unclassified:
    seq = "/".join(f.ScanningSequence) or "unknown sequence"
    return Unclassified(
        "bids_unclassified",
        f"no rule matched ({seq}, {f.volumes} volume(s), {f.echoes} echo(es)); classify it "
        "with a config",
    )


DEFAULT_RULES: tuple[Rule, ...] = (
    Rule("not_mr", "Not an MR image series: unclassified.", _not_mr),
    Rule("derived", "ImageType DERIVED (ADC, FA, trace, perfusion maps, MPR): unclassified.",
         _derived),
    Rule("localizer", "Several slice orientations, or a localizer/scout description: "
         "unclassified.", _localizer),
    Rule("reproin", "A ReproIn protocol name or description (func-bold_task-rest, "
         "anat-T1w_acq-mprage, fmap-epi_dir-AP, dwi_dir-PA): as it says (its run is "
         "renumbered).", _reproin),
    Rule("gre_field_map", "A B0 map by image/frame type (Philips B0 MAP: fieldmap in Hz + "
         "magnitude), a field-map sequence (Siemens fm2d/fm3d) or a field-map "
         "description on a non-EPI series: fmap, magnitude1/2 and phasediff (or phase1/2).",
         _field_map),
    Rule("dwi", "Diffusion: a b-value above 0, AcquisitionContrast DIFFUSION, ImageType "
         "DIFFUSION, a diffusion sequence name (ep_b...), or an EPI with a diffusion "
         "description: dwi/dwi (dwi/sbref for a single-band reference); dir- when known.",
         _dwi),
    Rule("epi_field_map", "At most 3 volumes of spin-echo EPI (or of an EPI described as a "
         "field map/topup): fmap/epi with dir- from the phase-encoding direction; "
         "unclassified when that is unknown.", _pepolar),
    Rule("asl", "ImageType ASL, AcquisitionContrast PERFUSION or an ASL description: "
         "perf/asl (needs the ASL metadata and volume types from a config).", _asl),
    Rule("bold", "Gradient-echo EPI with at least 2 volumes, ImageType FMRI or a BOLD/task/rest "
         "description: func/bold, task- from the description (task-X, rest) else "
         "'unknown'; func/sbref for a single-band reference; a single volume otherwise "
         "stays unclassified.", _bold),
    Rule("anat", "Not EPI: FLAIR, T2*/SWI/GRE, T2, T1 (MPRAGE, BRAVO, TFE...), PD by "
         "description, else by AcquisitionContrast, else inversion-prepared gradient echo "
         "-> T1w, IR spin echo with TI >= 1500 ms -> FLAIR, spin echo TR/TE -> T2w, PDw or "
         "T1w; several echoes of a T2*/T2/PD-weighted gradient (spin) echo -> MEGRE (MESE), of "
         "other contrasts the echo- entity.", _anat),
)


# ---------------------------------------------------------------------------------------
# Configs


_OPERATORS = ("lt", "lte", "gt", "gte", "btw", "btwe", "any", "contains", "not")


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(float(value)) else None


def _scalar_matches(criterion: Any, value: Any) -> bool:
    if value is None:
        return criterion is None
    if isinstance(criterion, str):
        return fnmatch.fnmatchcase(str(value).lower(), criterion.lower())
    if isinstance(criterion, bool):
        return value is criterion
    number, target = _number(criterion), _number(value)
    if number is not None and target is not None:
        return math.isclose(number, target, rel_tol=1e-6, abs_tol=1e-9)
    return bool(criterion == value)


def _compare(op: str, arg: Any, value: Any) -> bool:
    target = _number(value)
    if op in ("btw", "btwe"):
        if not (isinstance(arg, list) and len(arg) == 2) or target is None:
            return False
        low, high = (_number(a) for a in arg)
        if low is None or high is None:
            return False
        return low < target < high if op == "btw" else low <= target <= high
    bound = _number(arg)
    if bound is None or target is None:
        return False
    return {"lt": target < bound, "lte": target <= bound, "gt": target > bound,
            "gte": target >= bound}[op]


def matches(criterion: Any, value: Any) -> bool:
    """Whether a feature ``value`` meets a config ``criterion`` (dcm2bids semantics).

    * a string is a case-insensitive glob (``*T1*``), a number equals, a bool is a flag;
    * a list against a list value matches element by element (same length);
    * ``{"lt"|"lte"|"gt"|"gte": n}``, ``{"btw"|"btwe": [a, b]}`` compare numbers;
      ``{"any": [c1, c2]}`` matches when one alternative does; ``{"contains": c}`` when an
      item of a list value matches ``c``; ``{"not": c}`` negates;
    * a scalar criterion against a list value matches when any item does.

    Examples
    --------
    >>> matches("*rest*", "fMRI_REST_AP"), matches({"btw": [20, 40]}, 30.0)
    (True, True)
    >>> matches(["ORIGINAL", "PRIMARY", "P", "*"], ("ORIGINAL", "PRIMARY", "P", "ND"))
    True
    >>> matches({"contains": "P"}, ("ORIGINAL", "PRIMARY", "M"))
    False
    """
    if isinstance(criterion, dict):
        return all(_operator(op, arg, value) for op, arg in criterion.items())
    if isinstance(value, tuple | list):
        if isinstance(criterion, list):
            return len(criterion) == len(value) and all(
                _scalar_matches(c, v) for c, v in zip(criterion, value, strict=True)
            )
        return any(_scalar_matches(criterion, v) for v in value)
    if isinstance(criterion, list):
        return False
    return _scalar_matches(criterion, value)


def _operator(op: str, arg: Any, value: Any) -> bool:
    if op == "any":
        return isinstance(arg, list) and any(matches(a, value) for a in arg)
    if op == "not":
        return not matches(arg, value)
    if op == "contains":
        items = value if isinstance(value, tuple | list) else [value]
        return any(matches(arg, v) for v in items)
    if isinstance(value, tuple | list):
        return any(_compare(op, arg, v) for v in value)
    return _compare(op, arg, value)


_FEATURES = frozenset(f.name for f in fields(SeriesFeatures)) | {"max_b_value"}


def _check_criterion(name: str, criterion: Any, where: str) -> None:
    if name not in _FEATURES:
        raise ConfigError(
            f"{where}: unknown criterion '{name}'; criteria name series features: "
            f"{', '.join(sorted(_FEATURES))}"
        )
    if isinstance(criterion, dict):
        for op, arg in criterion.items():
            if op not in _OPERATORS:
                raise ConfigError(
                    f"{where}: unknown operator '{op}' for '{name}' (use {', '.join(_OPERATORS)})"
                )
            if op in ("any", "contains", "not"):
                for sub in (arg if op == "any" and isinstance(arg, list) else [arg]):
                    if op != "any" or not isinstance(sub, dict):
                        continue
                    _check_criterion(name, sub, where)


@dataclass(frozen=True)
class ConfigRule:
    """One ``descriptions`` entry of a BIDS config."""

    id: str
    datatype: str
    suffix: str
    entities: Entities
    criteria: tuple[tuple[str, Any], ...]
    sidecar: tuple[tuple[str, JSONValue], ...] = ()
    intended_for: tuple[str, ...] | None = None
    aslcontext: tuple[str, ...] | None = None

    def decide(self, f: SeriesFeatures) -> Classification | Unclassified | None:
        values = f.criteria_values()
        if not all(matches(c, values[name]) for name, c in self.criteria):
            return None
        if self.datatype == "exclude":
            return Unclassified("bids_excluded", f"excluded by config rule '{self.id}'")
        entities = list(self.entities)
        if self.datatype in ("fmap",) and self.suffix == "epi" and "dir" not in dict(entities):
            if f.direction is None:
                return Unclassified(
                    "bids_unclassified",
                    f"config rule '{self.id}' names an EPI field map, but its phase-encoding "
                    "direction is unknown (give a dir entity)",
                )
            entities.append(("dir", f.direction))
        return Classification(
            self.datatype, self.suffix, ordered(entities), self.id, self.sidecar,
            self.intended_for if self.intended_for is not None else (
                ("func", "dwi", "perf") if self.datatype == "fmap" else None),
            self.aslcontext,
        )


@dataclass(frozen=True)
class BidsConfig:
    """A parsed BIDS config: rules tried before (or instead of) the default heuristic.

    Attributes
    ----------
    name : str, optional
        ``Name`` of ``dataset_description.json``.
    authors, license : optional
        ``Authors`` and ``License`` of ``dataset_description.json``.
    rules : tuple of ConfigRule
    defaults : bool
        Whether the default heuristic runs after the config's rules.
    source : dict
        The config as read (JSON-serialisable): part of the export's identity.
    """

    name: str | None = None
    rules: tuple[ConfigRule, ...] = ()
    defaults: bool = True
    authors: tuple[str, ...] = ()
    license: str | None = None
    source: dict[str, Any] = field(default_factory=dict, compare=False)


_TOP_KEYS = frozenset({"name", "authors", "license", "defaults", "descriptions"})
_RULE_KEYS = frozenset({"id", "datatype", "suffix", "entities", "custom_entities", "criteria",
                        "sidecar_changes", "intended_for", "aslcontext"})
_ASL_TYPES = frozenset({"control", "label", "m0scan", "deltam", "cbf", "noRF"})


def _entities(raw: Any, where: str) -> list[tuple[str, str]]:
    if raw is None:
        return []
    if isinstance(raw, str):  # dcm2bids custom_entities: "acq-highres_task-rest"
        pairs = [part.partition("-") for part in raw.split("_") if part]
        return [(name, label) for name, _, label in pairs]
    if isinstance(raw, dict):
        return [(str(k), str(v)) for k, v in raw.items()]
    raise ConfigError(f"{where}: entities must be a table/object or 'acq-x_task-y'")


def _rule(raw: Any, index: int) -> ConfigRule:
    where = f"descriptions[{index}]"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a table/object")
    unknown = set(raw) - _RULE_KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown keys {sorted(unknown)} (known: "
                          f"{', '.join(sorted(_RULE_KEYS))})")
    rule_id = str(raw.get("id") or f"config{index + 1}")
    datatype, suffix = str(raw.get("datatype", "")), str(raw.get("suffix", ""))
    criteria = raw.get("criteria")
    if not isinstance(criteria, dict) or not criteria:
        raise ConfigError(f"{where}: 'criteria' must be a non-empty table/object")
    for name, criterion in criteria.items():
        _check_criterion(name, criterion, where)
    entities = _entities(raw.get("entities"), where) + _entities(raw.get("custom_entities"), where)
    if any(name in ("sub", "ses", "run") for name, _ in entities):
        raise ConfigError(f"{where}: sub, ses and run are set by the export, not by a rule")
    if datatype != "exclude":
        probe = entities
        if datatype == "fmap" and suffix == "epi" and "dir" not in dict(entities):
            probe = [*entities, ("dir", "AP")]  # filled from the series when not given
        check_entities(datatype, suffix, probe)
    sidecar = raw.get("sidecar_changes") or {}
    if not isinstance(sidecar, dict):
        raise ConfigError(f"{where}: sidecar_changes must be a table/object")
    intended = raw.get("intended_for")
    if intended is not None and not (isinstance(intended, list)
                                     and all(isinstance(i, str) for i in intended)):
        raise ConfigError(f"{where}: intended_for must be a list of datatypes or rule ids")
    context = raw.get("aslcontext")
    if context is not None and not (isinstance(context, list) and context
            and all(isinstance(c, str) and c in _ASL_TYPES for c in context)):
        raise ConfigError(f"{where}: aslcontext must list volume types from "
                          f"{sorted(_ASL_TYPES)}")
    if (datatype, suffix) == ("perf", "asl") and context is None:
        raise ConfigError(f"{where}: perf/asl needs 'aslcontext' (the volume types, in order)")
    return ConfigRule(
        rule_id, datatype, suffix, ordered(entities), tuple(criteria.items()),
        tuple(sidecar.items()), tuple(intended) if intended is not None else None,
        tuple(context) if context is not None else None,
    )


def parse_bids_config(raw: Any) -> BidsConfig:
    """A :class:`BidsConfig` from its parsed JSON/TOML content.

    Raises
    ------
    ConfigError
        Saying which entry is wrong and how.
    """
    if not isinstance(raw, dict):
        raise ConfigError("a BIDS config is a table/object with 'descriptions'")
    unknown = set(raw) - _TOP_KEYS
    if unknown:
        raise ConfigError(f"unknown BIDS config keys {sorted(unknown)} (known: "
                          f"{', '.join(sorted(_TOP_KEYS))})")
    descriptions = raw.get("descriptions", [])
    if not isinstance(descriptions, list):
        raise ConfigError("'descriptions' must be a list of rules")
    rules = tuple(_rule(r, i) for i, r in enumerate(descriptions))
    ids = [r.id for r in rules]
    if len(set(ids)) != len(ids):
        raise ConfigError("two BIDS config rules share an id")
    defaults = raw.get("defaults", True)
    if not isinstance(defaults, bool):
        raise ConfigError("'defaults' must be true or false")
    name, license_ = raw.get("name"), raw.get("license")
    for key, value in (("name", name), ("license", license_)):
        if value is not None and not isinstance(value, str):
            raise ConfigError(f"'{key}' must be text")
    authors = raw.get("authors", [])
    if not (isinstance(authors, list) and all(isinstance(a, str) for a in authors)):
        raise ConfigError("'authors' must be a list of names")
    source = json.loads(json.dumps(raw, sort_keys=True))
    return BidsConfig(name, rules, defaults, tuple(authors), license_, source)


def load_bids_config(path: str | Path) -> BidsConfig:
    """Read a BIDS config file (``.json`` or ``.toml``).

    Raises
    ------
    ConfigError
        If it cannot be read or parsed, or a rule is invalid.
    """
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read the BIDS config {file.name!r} ({exc.strerror})") from None
    try:
        raw = tomllib.loads(text) if file.suffix.lower() == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"the BIDS config {file.name!r} is not valid "
                          f"{'TOML' if file.suffix.lower() == '.toml' else 'JSON'}: {exc}") from None
    return parse_bids_config(raw)


def classify(features: SeriesFeatures,
             config: BidsConfig | None = None) -> Classification | Unclassified:
    """The first decision of the config's rules, then of :data:`DEFAULT_RULES`.

    The exclusions of the default heuristic (not MR, derived, localizers) apply only after
    the config's rules, so a config can still classify such a series.
    """
    rules: Sequence[Callable[[SeriesFeatures], Classification | Unclassified | None]] = []
    if config is not None:
        rules = [r.decide for r in config.rules]
    if config is None or config.defaults:
        rules = [*rules, *(r.decide for r in DEFAULT_RULES)]
    for decide in rules:
        decision = decide(features)
        if decision is not None:
            return decision
    if config is not None and not config.defaults:
        return Unclassified("bids_unclassified", "no config rule matched")
    return _nothing(features)
