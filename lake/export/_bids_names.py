"""BIDS names: entities, their order, which suffix takes which, and labels from pseudonyms.

A small table from the BIDS specification (1.9) covering the datatypes the BIDS export
writes (``anat``, ``func``, ``dwi``, ``fmap``, ``perf``). File names are built only here,
from entity labels that are checked to be BIDS labels (letters and digits), so no free
text and no path separator ever reaches a name.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence

from lake._errors import ConfigError

__all__ = [
    "DATATYPES",
    "ENTITY_ORDER",
    "Entities",
    "allowed_entities",
    "bids_name",
    "direction_label",
    "hashed_labels",
    "is_label",
]

#: Entities in the order BIDS writes them (``sub`` and ``ses`` first).
ENTITY_ORDER: tuple[str, ...] = (
    "sub", "ses", "task", "acq", "ce", "rec", "dir", "run", "echo", "flip", "inv", "mt",
    "part", "chunk",
)

Entities = tuple[tuple[str, str], ...]
"""Ordered ``(entity, label)`` pairs, ``sub`` and ``ses`` excluded."""

_LABEL = re.compile(r"^[A-Za-z0-9]{1,64}$")

_ANAT_PLAIN = frozenset({"task", "acq", "ce", "rec", "run", "echo", "part", "chunk"})
_ANAT_ECHO = frozenset({"acq", "ce", "rec", "run", "echo", "part", "chunk"})
_FUNC = frozenset({"task", "acq", "ce", "rec", "dir", "run", "echo", "part", "chunk"})
_DWI = frozenset({"acq", "rec", "dir", "run", "part", "chunk"})
_FMAP = frozenset({"acq", "ce", "run", "chunk"})
_FMAP_EPI = frozenset({"acq", "ce", "dir", "run", "part", "chunk"})
_PERF = frozenset({"acq", "rec", "dir", "run", "chunk"})

#: datatype -> suffix -> entities the suffix may carry (BIDS 1.9, raw data).
DATATYPES: Mapping[str, Mapping[str, frozenset[str]]] = {
    "anat": {
        **{s: _ANAT_PLAIN for s in ("T1w", "T2w", "PDw", "T2starw", "FLAIR", "inplaneT1",
                                    "inplaneT2", "PDT2", "angio")},
        "MEGRE": _ANAT_ECHO,
        "MESE": _ANAT_ECHO,
    },
    "func": {"bold": _FUNC, "sbref": _FUNC},
    "dwi": {"dwi": _DWI, "sbref": _DWI},
    "fmap": {
        **{s: _FMAP for s in ("phasediff", "phase1", "phase2", "magnitude1", "magnitude2",
                              "magnitude", "fieldmap")},
        "epi": _FMAP_EPI,
    },
    "perf": {"asl": _PERF, "m0scan": _PERF},
}

#: Entities a suffix must carry.
REQUIRED: Mapping[tuple[str, str], frozenset[str]] = {
    ("func", "bold"): frozenset({"task"}),
    ("func", "sbref"): frozenset({"task"}),
    ("fmap", "epi"): frozenset({"dir"}),
}
# MEGRE/MESE need echo- too; the writer gives every volume of such a series one.


def is_label(value: str) -> bool:
    """Whether ``value`` is a BIDS label (1-64 letters and digits).

    Examples
    --------
    >>> is_label("rest"), is_label("rest-1"), is_label("")
    (True, False, False)
    """
    return bool(_LABEL.match(value))


def allowed_entities(datatype: str, suffix: str) -> frozenset[str]:
    """The entities ``datatype/suffix`` may carry.

    Raises
    ------
    ConfigError
        If BIDS (as far as this export writes it) has no such datatype and suffix.
    """
    try:
        return DATATYPES[datatype][suffix]
    except KeyError:
        known = ", ".join(f"{d}/{s}" for d, table in DATATYPES.items() for s in table)
        raise ConfigError(
            f"the BIDS export does not write {datatype}/{suffix}; known: {known}"
        ) from None


def check_entities(datatype: str, suffix: str, entities: Iterable[tuple[str, str]]) -> None:
    """Raise :class:`ConfigError` unless every entity is allowed, labelled and required ones set."""
    allowed = allowed_entities(datatype, suffix)
    names = set()
    for name, label in entities:
        if name not in allowed:
            raise ConfigError(
                f"{datatype}/{suffix} files take no '{name}' entity (allowed: "
                f"{', '.join(sorted(allowed))})"
            )
        if not is_label(label):
            raise ConfigError(
                f"the label of the '{name}' entity must be 1-64 letters and digits"
            )
        names.add(name)
    missing = REQUIRED.get((datatype, suffix), frozenset()) - names
    if missing:
        raise ConfigError(f"{datatype}/{suffix} files need the entities {sorted(missing)}")


def ordered(entities: Iterable[tuple[str, str]]) -> Entities:
    """Entities in BIDS order, one label each (a later pair replaces an earlier one)."""
    labels = dict(entities)
    return tuple((name, labels[name]) for name in ENTITY_ORDER if name in labels)


def bids_name(subject: str, session: str, entities: Iterable[tuple[str, str]],
              suffix: str) -> str:
    """``sub-<s>_ses-<t>[_<entity>-<label>...]_<suffix>`` (no extension).

    Examples
    --------
    >>> bids_name("1a2b", "c3d4", [("run", "2"), ("task", "rest")], "bold")
    'sub-1a2b_ses-c3d4_task-rest_run-2_bold'
    """
    parts = [f"sub-{subject}", f"ses-{session}"]
    for name, label in ordered(entities):
        if not is_label(label):
            raise ConfigError(f"the label of the '{name}' entity is not a BIDS label")
        parts.append(f"{name}-{label}")
    return "_".join([*parts, suffix])


def hashed_labels(values: Iterable[str], minimum: int = 8) -> dict[str, str]:
    """Short, stable labels for pseudonymous identifiers: hex digits of their sha256.

    Every label has the same length: the shortest from ``minimum`` (8) up at which the
    given values get distinct labels (a collision between two values lengthens all of
    them, never merges them).

    Examples
    --------
    >>> hashed_labels(["CAFE01", "CAFE02"])
    {'CAFE01': '9a21bd93', 'CAFE02': 'c7153f52'}
    """
    distinct = sorted(set(values))
    digests = {v: hashlib.sha256(v.encode()).hexdigest() for v in distinct}
    for length in range(minimum, 65):
        labels = {v: d[:length] for v, d in digests.items()}
        if len(set(labels.values())) == len(labels):
            return labels
    raise ConfigError("two different identifiers have the same sha256; please report it")


_AXIS_LABELS = (("RL", "LR"), ("AP", "PA"), ("IS", "SI"))


def direction_label(phase_encoding: str, orientation: Sequence[float]) -> str | None:
    """The anatomical ``dir-`` label of a phase-encoding direction of the stored matrix.

    ``phase_encoding`` is ``i``/``i-`` (along a row: increasing/decreasing column index) or
    ``j``/``j-`` (down a column: increasing/decreasing row index), as the lake derives it;
    ``orientation`` is ImageOrientationPatient (LPS). The label names where encoding starts
    and ends: ``AP`` runs from anterior to posterior. None for an oblique direction (no axis
    dominates) or unknown input.

    Examples
    --------
    >>> direction_label("j", [1, 0, 0, 0, 1, 0])   # axial, towards posterior
    'AP'
    >>> direction_label("i-", [1, 0, 0, 0, 1, 0])  # towards the right
    'LR'
    """
    if phase_encoding not in ("i", "i-", "j", "j-") or len(orientation) != 6:
        return None
    cosines = [float(v) for v in (orientation[:3] if phase_encoding[0] == "i" else
                                  orientation[3:])]
    sign = -1.0 if phase_encoding.endswith("-") else 1.0
    vector = [sign * v for v in cosines]
    magnitudes = sorted((abs(v), axis) for axis, v in enumerate(vector))
    (_, _), (second, _), (largest, axis) = magnitudes
    if largest < 0.5 or largest - second < 0.1:
        return None
    towards_positive, towards_negative = _AXIS_LABELS[axis]
    return towards_positive if vector[axis] > 0 else towards_negative
