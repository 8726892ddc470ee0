"""Reading ``deid`` recipes (``FORMAT dicom``, ``%header``, ``%filter``, ``%fields``).

The recipes are parsed by ``deid``'s own parser (:class:`deid.config.DeidRecipe`) after a
line-by-line check of our own: ``deid`` reports problems by printing and calling
``sys.exit``, so every line it would reject is rejected here first, with a
:class:`~lake._errors.ProfileError` naming the file and line.

Field syntax (the ``FIELD`` of ``ACTION FIELD [VALUE]``)
-------------------------------------------------------
``(gggg,eeee)``, ``ggggeeee`` or a keyword   one public attribute
``(gggg,"Creator",ee)``                      one private element: group, creator, element byte
``(60xx,xxxx)``                              a mask, ``x`` matching any hex digit
``vr:XX``                                    every attribute of VR XX without a rule of its own
``private``                                  every private element without a rule of its own
``unknown``                                  every public element missing from the dictionary
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom.datadict import keyword_dict

from lake._errors import ProfileError
from lake.deid._codes import ALL_VRS

__all__ = [
    "Condition",
    "Field",
    "FilterRule",
    "HeaderRule",
    "Layer",
    "parse_field",
    "parse_recipe",
]

_VERBS = ("ADD", "BLANK", "KEEP", "REPLACE", "REMOVE")
_FUNCS = frozenset(
    {"dummy", "uid", "clean", "shift_date", "pseudonym", "XZ", "XD", "XZD", "ZD", "XZU"}
)
_FILTER_ACTIONS = frozenset(
    {"contains", "notcontains", "equals", "notequals", "missing", "present", "empty"}
)
_FILTER_GROUPS = frozenset({"whitelist", "graylist", "blacklist"})
_VRS = frozenset(ALL_VRS)
_TAG = re.compile(r"\(([0-9A-Fa-f]{4}),([0-9A-Fa-f]{4})\)|([0-9A-Fa-f]{8})")
_PRIVATE = re.compile(r'\(([0-9A-Fa-f]{4}),"([^"]*)",([0-9A-Fa-f]{2})\)')
_MASK = re.compile(r"\(([0-9A-Fa-fxX]{4}),([0-9A-Fa-fxX]{4})\)")
_COORDS = re.compile(r"(?:all|from:[A-Za-z]+|\d+,\d+,\d+,\d+)")


@dataclass(frozen=True)
class Field:
    """Which elements a rule applies to.

    ``kind`` is one of ``"tag"`` (``tag``), ``"private"`` (``group``, ``creator``,
    ``element``), ``"mask"`` (``mask``, ``value``: ``tag & mask == value``), ``"vr"``
    (``vr``), ``"private_all"`` or ``"unknown"``.
    """

    kind: str
    tag: int = 0
    group: int = 0
    creator: str = ""
    element: int = 0
    mask: int = 0
    value: int = 0
    vr: str = ""

    @property
    def specificity(self) -> int:
        """Higher wins: tag/private 3, mask 2, vr 1, private/unknown 0."""
        return {"tag": 3, "private": 3, "mask": 2, "vr": 1}.get(self.kind, 0)

    def __str__(self) -> str:
        if self.kind == "tag":
            return f"({self.tag >> 16:04X},{self.tag & 0xFFFF:04X})"
        if self.kind == "private":
            return f'({self.group:04X},"{self.creator}",{self.element:02X})'
        if self.kind == "mask":
            digits = []
            for shift in range(28, -4, -4):
                nibble_mask = (self.mask >> shift) & 0xF
                digits.append(f"{(self.value >> shift) & 0xF:X}" if nibble_mask else "x")
            text = "".join(digits)
            return f"({text[:4]},{text[4:]})"
        if self.kind == "vr":
            return f"vr:{self.vr}"
        return "private" if self.kind == "private_all" else "unknown"


@dataclass(frozen=True)
class HeaderRule:
    """One ``%header`` line: ``verb`` is REMOVE/BLANK/KEEP/REPLACE/ADD.

    For REPLACE, ``func`` names a function (``func:uid``...) or ``value`` holds a literal.
    """

    verb: str
    field: Field
    func: str | None
    value: str | None
    source: str


@dataclass(frozen=True)
class Condition:
    """One test of a ``%filter`` rule, e.g. ``contains Modality US``."""

    action: str
    field: str
    value: str


@dataclass(frozen=True)
class FilterRule:
    """A ``LABEL`` of a ``%filter`` section.

    ``terms`` alternates conditions and operators, left to right as ``deid`` reads them:
    ``(cond, "and"|"or", cond, ...)``. ``coordinates`` are ``(keep, spec)`` pairs in order,
    ``spec`` being ``"xmin,ymin,xmax,ymax"``, ``"all"`` or ``"from:Keyword"``.
    """

    group: str
    label: str
    terms: tuple[Condition | str, ...]
    coordinates: tuple[tuple[bool, str], ...]


@dataclass(frozen=True)
class Layer:
    """One parsed recipe file."""

    name: str
    header: tuple[HeaderRule, ...]
    filters: tuple[FilterRule, ...]
    identifier_fields: tuple[Field, ...]


def parse_field(text: str, where: str = "") -> Field:
    """Parse the FIELD of a recipe line (see the module docstring for the syntax).

    Raises
    ------
    ProfileError
        If the text is not a field this engine supports.
    """
    if text == "private":
        return Field("private_all")
    if text == "unknown":
        return Field("unknown")
    if text.lower().startswith("vr:"):
        vr = text[3:].upper()
        if vr not in _VRS:
            raise ProfileError(f"{where}unknown VR {vr!r} in {text!r}")
        return Field("vr", vr=vr)
    match = _TAG.fullmatch(text)
    if match:
        hex_tag = match.group(3) or match.group(1) + match.group(2)
        return Field("tag", tag=int(hex_tag, 16))
    match = _PRIVATE.fullmatch(text)
    if match:
        group = int(match.group(1), 16)
        if group % 2 == 0:
            raise ProfileError(f"{where}{text}: private elements live in odd groups")
        return Field("private", group=group, creator=match.group(2),
                     element=int(match.group(3), 16))
    match = _MASK.fullmatch(text)
    if match:
        digits = (match.group(1) + match.group(2)).lower()
        mask = int("".join("0" if c == "x" else "f" for c in digits), 16)
        value = int(digits.replace("x", "0"), 16)
        return Field("mask", mask=mask, value=value)
    tag = keyword_dict.get(text)
    if tag is not None:
        return Field("tag", tag=tag)
    if ":" in text:
        raise ProfileError(
            f"{where}field expander {text!r} is not supported: list the attributes, "
            "or use vr:XX, private, unknown or a (gggg,eeee) mask"
        )
    raise ProfileError(f"{where}unknown attribute {text!r}: use a keyword or a (gggg,eeee) tag")


def _split(line: str) -> list[str]:
    # The same quote-aware split deid uses (private creators may hold spaces).
    return re.findall(r"""(?:[^\s"']+|"(?:\\.|[^"])*"|'(?:\\.|[^'])*')+""", line)


def _check_lines(text: str, name: str) -> None:
    """Reject, with a useful message, every line deid would warn about or exit on."""
    section: str | None = None
    saw_format = False
    in_label = False
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        where = f"{name}:{number}: "
        if not line or line.startswith("#"):
            continue
        if re.match(r"^format\b", line, re.I):
            if line.split()[-1].lower() != "dicom":
                raise ProfileError(f"{where}only FORMAT dicom is supported")
            saw_format = True
            continue
        if line.startswith("%"):
            parts = line.split("#", 1)[0].split()
            section = parts[0][1:].lower()
            if section not in ("header", "filter", "fields", "values"):
                raise ProfileError(f"{where}unknown section {parts[0]!r}")
            if section in ("filter", "fields", "values") and len(parts) < 2:
                raise ProfileError(f"{where}%{section} needs a name, e.g. %{section} graylist")
            if section == "fields" and parts[1] != "identifiers":
                raise ProfileError(f"{where}the only %fields list used is %fields identifiers")
            if section == "filter" and parts[1] not in _FILTER_GROUPS:
                raise ProfileError(
                    f"{where}%filter {parts[1]}: use graylist, whitelist or blacklist"
                )
            in_label = False
            continue
        if section is None:
            raise ProfileError(f"{where}a line before any %header/%filter section")
        if section == "header":
            _check_header_line(line, where)
        elif section == "filter":
            in_label = _check_filter_line(line, where, in_label)
        elif section == "fields":
            parts = _split(line)
            if len(parts) != 2 or parts[0].upper() != "FIELD":
                raise ProfileError(f"{where}%fields takes lines 'FIELD <field>'")
            parse_field(parts[1], where)
        else:
            raise ProfileError(f"{where}%values lists are not used by this engine")
    if not saw_format:
        raise ProfileError(f"{name}: the recipe must start with 'FORMAT dicom'")


def _check_header_line(line: str, where: str) -> None:
    parts = _split(line)
    verb = parts[0].upper()
    if verb in ("JITTER", "LABEL"):
        hint = "use REPLACE <field> func:shift_date (a keyed per-patient shift)" if (
            verb == "JITTER") else "LABEL belongs in a %filter section"
        raise ProfileError(f"{where}{verb} is not supported here: {hint}")
    if verb not in _VERBS:
        raise ProfileError(f"{where}unknown action {parts[0]!r}; use one of {', '.join(_VERBS)}")
    if len(parts) < 2:
        raise ProfileError(f"{where}{verb} needs a field")
    if verb in ("REMOVE", "BLANK", "KEEP") and len(parts) != 2:
        raise ProfileError(
            f"{where}unexpected text after the field; put comments on their own line"
        )
    if verb in ("REPLACE", "ADD") and len(parts) < 3:
        raise ProfileError(f"{where}{verb} needs a value (or func:NAME)")
    if verb == "REPLACE" and parts[2].startswith("func:"):
        func = parts[2][5:]
        if func not in _FUNCS or len(parts) != 3:
            raise ProfileError(f"{where}unknown function {parts[2]!r}; use one of "
                               + ", ".join("func:" + f for f in sorted(_FUNCS)))
    if verb == "REPLACE" and "#" in line:
        raise ProfileError(f"{where}'#' in a value; put comments on their own line")
    field = parse_field(parts[1], where)
    if verb == "ADD" and field.kind != "tag":
        raise ProfileError(f"{where}ADD needs one public attribute")


def _check_filter_line(line: str, where: str, in_label: bool) -> bool:
    if line.upper().startswith("LABEL"):
        return True
    if not in_label:
        raise ProfileError(f"{where}a filter condition before any LABEL")
    lowered = line.lower()
    for prefix in ("ctpkeepcoordinates", "ctpcoordinates", "keepcoordinates", "coordinates"):
        if lowered.startswith(prefix):
            spec = line[len(prefix):].strip().replace(" ", "")
            if not _COORDS.fullmatch(spec):
                raise ProfileError(f"{where}coordinates must be xmin,ymin,xmax,ymax, all or from:X")
            return True
    body = re.sub(r"^(\+|\|\|)\s*", "", line)
    for part in _split_conditions(body):
        words = part.split(None, 2)
        if not words or words[0].lower() not in _FILTER_ACTIONS:
            raise ProfileError(f"{where}unknown filter {part!r}; use one of "
                               + ", ".join(sorted(_FILTER_ACTIONS)))
        need = 3 if words[0].lower() in ("contains", "notcontains", "equals", "notequals") else 2
        if len(words) < need:
            raise ProfileError(f"{where}{words[0]} needs a field" + (" and a value" * (need == 3)))
    return True


def _split_conditions(body: str) -> list[str]:
    """Split a filter line at ``||`` and ``+`` the way deid does.

    deid splits only where the rest of the line holds another filter word, so a value
    such as ``SOMATOM Definition AS+`` keeps its ``+``.
    """
    parts = []
    rest = body
    while True:
        match = re.search(r"\|\||\+", rest)
        if match is None or not any(w in rest[match.end():] for w in _FILTER_ACTIONS):
            parts.append(rest.strip())
            return parts
        parts.append(rest[: match.start()].strip())
        rest = rest[match.end():]


def _load_with_deid(path: Path) -> Mapping[str, Any]:
    from deid.config import DeidRecipe
    from deid.logger import bot

    # deid's logger prints every parsed line at its default level (DEBUG): silence it
    # for the duration of the parse; our own checks above already reported any problem.
    level = bot.level
    bot.level = -10
    try:
        recipe = DeidRecipe(deid=str(path), base=False)
    except SystemExit:  # deid's parser exits on what our checks missed
        raise ProfileError(f"{path.name}: deid could not parse this recipe") from None
    finally:
        bot.level = level
    parsed = recipe.deid
    if parsed is None:
        raise ProfileError(f"{path.name}: deid could not parse this recipe")
    return dict(parsed)


def _filter_rules(section: Mapping[str, Sequence[Mapping[str, Any]]]) -> list[FilterRule]:
    rules = []
    for group, items in section.items():
        for item in items:
            label = re.sub(r"^LABEL\s+", "", str(item.get("name", "")), flags=re.I).strip()
            terms: list[Condition | str] = []
            for entry in item.get("filters", []):
                line_terms: list[Condition | str] = []
                values = list(entry["value"])
                for i, (action, field) in enumerate(zip(entry["action"], entry["field"],
                                                        strict=True)):
                    action = action.lower()
                    value = values.pop(0) if action in (
                        "contains", "notcontains", "equals", "notequals") else ""
                    if i:
                        line_terms.append(entry["InnerOperators"][i - 1])
                    line_terms.append(Condition(action, field, value))
                if terms:
                    terms.append(entry.get("operator") or "and")
                terms += line_terms
            coordinates = tuple((bool(keep), str(spec).replace(" ", ""))
                                for keep, spec in item.get("coordinates", []))
            rules.append(FilterRule(group, label, tuple(terms), coordinates))
    return rules


def parse_recipe(path: Path, name: str | None = None) -> Layer:
    """Parse one recipe file into a :class:`Layer`.

    Parameters
    ----------
    path : Path
        The recipe (``FORMAT dicom``).
    name : str, optional
        How the layer is named in messages and ``lake profiles show`` (default: file name).

    Raises
    ------
    ProfileError
        If the file is missing or a line is not valid for this engine.
    """
    label = name or path.name
    if not path.is_file():
        raise ProfileError(f"recipe {path} not found")
    _check_lines(path.read_text(encoding="utf-8"), label)
    parsed = _load_with_deid(path)
    header: list[HeaderRule] = []
    for entry in parsed.get("header", []):
        verb = entry["action"].upper()
        value = entry.get("value")
        func = None
        if value is not None:
            value = value.strip()
            if value.startswith("func:"):
                func, value = value[5:], None
        field = parse_field(entry["field"], f"{label}: ")
        header.append(HeaderRule(verb, field, func, value, label))
    identifiers: list[Field] = []
    for entry in (parsed.get("fields") or {}).get("identifiers", []):
        identifiers.append(parse_field(entry["field"], f"{label}: "))
    filters = _filter_rules(parsed.get("filter") or {})
    return Layer(label, tuple(header), tuple(filters), tuple(identifiers))
