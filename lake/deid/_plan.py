"""Compiling a profile into an action plan: tag -> operation, plus VR, mask and private rules.

Rule precedence (see ``docs/deid.md``):

1. Layers: the base recipe, then the option layers, then site recipes. Within the option
   layers, when two options act on the same field the more protective action wins
   (remove > blank > dummy > clean > UID > keep); a site recipe overrides everything before it.
2. Fields: an exact tag or private element beats a ``(gggg,eeee)`` mask, which beats a
   ``vr:XX`` rule, which beats ``private``/``unknown``.

Combined codes of Table E.1-1 resolve to the alternative that is valid whatever the
attribute's Type in the IOD (the "Type 1/2/3 rule"): X/Z -> Z, X/D -> D, X/Z/D -> D, Z/D -> D,
X/Z/U* -> U. Zero-length and dummy values carry no original information, so the choice costs
nothing in privacy and keeps every IOD valid.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import NamedTuple

from pydicom._dicom_dict import DicomDictionary
from pydicom.datadict import keyword_for_tag

from lake._errors import ProfileError
from lake.deid._codes import ALL_VRS, BASIC_CODE, ProfileOption
from lake.deid._honour import PLAIN_VRS, private_known_vr
from lake.deid._profile import Profile, safe_private_table
from lake.deid._recipe import Field, FilterRule, HeaderRule

__all__ = ["Op", "Plan", "compile_profile"]

# Operation codes.
K_SILENT = 0  # unlisted attribute, kept, not counted
KEEP = 1
REMOVE = 2
BLANK = 3
DUMMY = 4
UID = 5
CLEAN_TEXT = 6
AE_PSEUDO = 7
SHIFT_DA = 8
SHIFT_DT = 9
CHECK_DA = 10
CHECK_DT = 11
CHECK_TM = 12
CHECK_AS = 13
CHECK_TZ = 14
PSEUDONYM = 15
LITERAL = 16
RECURSE = 17
CHECK_UI = 18

# Kinds of identifying values collected for Clean (C): person names, other values, dates.
ID_NAME = 0
ID_VALUE = 1
ID_DATE = 2

# Modes of a sequence walk.
NORMAL = 0
DUMMY_MODE = 1
CLEAN_MODE = 2
META = 3  # the file meta information (group 0002)
INHERIT = -1

# Groups whose elements have no place in a data set or its items: command (0000), file meta
# (0002: only in the file meta) and item/delimiter tags (FFFE), e.g. an element whose tag was
# damaged into (FFFE,E000). Removed whatever a recipe says (docs/deid.md).
MISPLACED_GROUPS = frozenset({0x0000, 0x0002, 0xFFFE})

EFFECTS: Mapping[int, str] = MappingProxyType({
    K_SILENT: "keep (not listed)",
    KEEP: "keep",
    REMOVE: "remove",
    BLANK: "zero-length",
    DUMMY: "dummy value",
    UID: "keyed UID 2.25.<HMAC>",
    CLEAN_TEXT: "clean text (identifiers removed)",
    AE_PSEUDO: "keyed AE title",
    SHIFT_DA: "shift date (keyed per patient)",
    SHIFT_DT: "shift date-time (keyed per patient)",
    CHECK_DA: "keep if a valid date",
    CHECK_DT: "keep if a valid date-time",
    CHECK_TM: "keep if a valid time",
    CHECK_AS: "keep if a valid age; over 89Y -> 090Y",
    CHECK_TZ: "keep if a valid UTC offset",
    PSEUDONYM: "keyed pseudonym",
    LITERAL: "fixed value",
    RECURSE: "de-identify items",
    CHECK_UI: "keep if a well-formed UID, else refused",
})
_MODE_NAMES: Mapping[int, str] = MappingProxyType(
    {NORMAL: "", DUMMY_MODE: " with dummy values", CLEAN_MODE: " with cleaned text"}
)

TEXT_VRS = frozenset({"LO", "LT", "SH", "ST", "UC", "UT"})
_NUMERIC_VRS = frozenset({"AT", "CS", "DS", "FD", "FL", "IS", "SL", "SS", "SV", "UL", "US", "UV"})
_BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
_ALL_VRS = ALL_VRS
# Elements of the Code Sequence macro: coded concepts, kept when structured content is cleaned.
_CODE_KEYWORDS = frozenset({
    "CodeValue", "CodingSchemeDesignator", "CodingSchemeVersion", "CodeMeaning",
    "LongCodeValue", "URNCodeValue", "ContextIdentifier", "MappingResource",
    "MappingResourceName", "ContextGroupVersion", "ContextGroupExtensionFlag",
    "ContextGroupLocalVersion",
})
# How protective an action is, by the first letter of its table code (X/Z/D counts as X...
# but options only ever ask for K or C, which is where this order matters).
_PROTECTION: Mapping[str, int] = MappingProxyType(
    {"X": 6, "Z": 5, "D": 4, "C": 3, "U": 2, "K": 0}
)
_TABLE_CODES: Mapping[str, str] = MappingProxyType(
    {"XZ": "X/Z", "XD": "X/D", "XZD": "X/Z/D", "ZD": "Z/D", "XZU": "X/Z/U*"}
)


class Op(NamedTuple):
    """One compiled operation.

    ``code`` is an opcode, ``letter`` the action code counted (empty for silent keeps),
    ``vr`` the dictionary VR (empty when only the element knows it), ``literal`` the
    replacement bytes and ``mode`` the walk mode of a sequence's items.
    """

    code: int
    letter: str
    vr: str
    literal: bytes = b""
    mode: int = INHERIT


@dataclass(frozen=True)
class _Resolved:
    rule: HeaderRule
    table_code: str


def _table_code(rule: HeaderRule) -> str:
    if rule.verb == "REMOVE":
        return "X"
    if rule.verb == "BLANK":
        return "Z"
    if rule.verb == "KEEP":
        return "K"
    if rule.func is None:
        return "D"
    return {
        "dummy": "D", "uid": "U", "clean": "C", "shift_date": "C", "pseudonym": "D",
    }.get(rule.func, _TABLE_CODES.get(rule.func, rule.func))


def _pad(data: bytes, vr: str) -> bytes:
    if len(data) % 2:
        return data + (b"\0" if vr == "UI" else b" ")
    return data


def _literal(value: str, vr: str, where: str) -> bytes:
    try:
        data = value.encode("ascii")
    except UnicodeEncodeError:
        raise ProfileError(f"{where}: replacement values must be ASCII") from None
    return _pad(data, vr)


def _op_for(rule: HeaderRule, vr: str, *, strict: bool) -> Op | None:
    """The operation a rule asks for on an element of VR ``vr`` ("" when unknown).

    ``strict`` (exact tags) raises for a combination that makes no sense; for rules that
    expand over many attributes (vr:, masks) such combinations return None (rule skipped).
    """
    where = f"{rule.source}: {rule.verb} {rule.field}"

    def bad(reason: str) -> Op | None:
        if strict:
            raise ProfileError(f"{where}: {reason}")
        return None

    verb, func = rule.verb, rule.func
    if verb == "REMOVE":
        return Op(REMOVE, "X", vr)
    if verb == "BLANK":
        return Op(BLANK, "Z", vr)
    if verb == "KEEP":
        if vr == "SQ":
            return Op(RECURSE, "K", vr, mode=NORMAL)
        check = {"DA": CHECK_DA, "DT": CHECK_DT, "TM": CHECK_TM, "AS": CHECK_AS,
                 "UI": CHECK_UI}.get(vr)
        return Op(check, "K", vr) if check is not None else Op(KEEP, "K", vr)
    # REPLACE
    if func is None:
        if vr == "SQ":
            return bad("a sequence cannot take a literal value")
        return Op(LITERAL, "D", vr, _literal(rule.value or "", vr, where))
    if func == "XZ":
        return Op(BLANK, "Z", vr)
    if func in ("dummy", "XD", "XZD", "ZD"):
        if vr == "SQ":
            return Op(RECURSE, "D", vr, mode=DUMMY_MODE)
        if vr == "UI":
            return Op(UID, "U", vr)
        return Op(DUMMY, "D", vr)
    if func in ("uid", "XZU"):
        if vr == "SQ":
            return Op(RECURSE, "U", vr, mode=NORMAL)
        if vr in ("UI", ""):
            return Op(UID, "U", vr)
        return bad("func:uid applies to UI elements and sequences")
    if func == "pseudonym":
        if vr in ("LO", "SH", ""):
            return Op(PSEUDONYM, "D", vr)
        return bad("func:pseudonym applies to LO and SH elements")
    if func == "shift_date":
        ops = {"DA": SHIFT_DA, "DT": SHIFT_DT, "TM": CHECK_TM, "SH": CHECK_TZ}
        if vr in ops:
            return Op(ops[vr], "C", vr)
        return bad("func:shift_date applies to DA, DT, TM and the UTC offset (SH)")
    if func == "clean":
        if vr == "SQ":
            return Op(RECURSE, "C", vr, mode=CLEAN_MODE)
        if vr in TEXT_VRS:
            return Op(CLEAN_TEXT, "C", vr)
        if vr == "PN":
            return Op(DUMMY, "D", vr)
        if vr == "AE":
            return Op(AE_PSEUDO, "C", vr)
        if vr == "UI":
            return Op(UID, "U", vr)
        if vr == "AS":
            return Op(CHECK_AS, "C", vr)
        if vr in ("DA", "DT", "TM"):
            return bad("use func:shift_date for dates and times")
        if vr == "":
            return Op(CLEAN_TEXT, "C", vr)  # resolved per element VR at run time
        return Op(KEEP, "C", vr)  # numbers, codes and binary data: nothing to clean
    raise ProfileError(f"{where}: unknown function func:{func}")


# What Clean Pixel Data does beyond the header rules (docs/deid.md, "Burned-in text").
_PIXEL_EFFECTS: Mapping[int, str] = MappingProxyType({
    0x7FE00010: "keep; burned-in regions masked (stored uncompressed) when the instance is at "
                "risk and a %filter graylist rule matches",
    0x00280301: "keep; NO when burned-in regions were masked",
})


def _marks(temporal: str) -> dict[int, str]:
    """What the engine writes on every output (PS3.15 E.1.1)."""
    return {
        0x00120062: "set to 'YES'",
        0x00120063: "set to the profile's name, version, edition and sha256",
        0x00120064: "set to the CID 7050 codes of the profile and its options",
        0x00280303: f"set to {temporal!r}",
    }


def _effect(op: Op) -> str:
    """What one operation does, as ``lake profiles show`` says it."""
    mode = _MODE_NAMES.get(op.mode, "") if op.code == RECURSE else ""
    return EFFECTS[op.code] + mode


def _summary(ops: Mapping[str, Op], vrs: Iterable[str]) -> str:
    """The effects of a rule on elements of each VR: ``"LO, SH: clean text; other VRs: keep"``."""
    groups: dict[str, list[str]] = {}
    for vr in vrs:
        groups.setdefault(_effect(ops[vr]), []).append(vr)
    if len(groups) == 1:
        return next(iter(groups))
    common = max(groups, key=lambda e: len(groups[e]))
    parts = [f"{', '.join(v)}: {e}" for e, v in groups.items() if e != common]
    return "; ".join([*parts, f"other VRs: {common}"])


def _private_effect(ops: Mapping[str, Op], listed: tuple[str, str] | None, known: str) -> str:
    """What a creator rule does (docs/deid.md, "Private elements")."""
    if listed is not None and listed[0]:
        vr, vm = listed
        return (f"{_effect(ops[vr])} if VR {vr}, VM {vm} as Table E.3.10-1 lists it; "
                f"otherwise as every private element")
    kinds = _summary(ops, sorted(PLAIN_VRS))
    where = f"VR {known} (pydicom's private dictionary): {_effect(ops[known])}; " if known else ""
    return (f"{where}numbers, codes, short texts: {kinds}; UI: {_effect(ops['UI'])}; "
            f"SQ: {_effect(ops['SQ'])}; any other VR: as every private element")


def _dict_vr(tag: int) -> str:
    vr = str(DicomDictionary[tag][0])
    return vr[:2] if " or " in vr else vr


def _mode_op(op: Op, vr: str, keyword: str, mode: int, explicit: bool) -> Op:
    """The operation in a sequence that is being replaced by dummies or cleaned."""
    if op.code in (REMOVE, BLANK) and (mode == DUMMY_MODE or vr not in TEXT_VRS):
        return op
    if mode == DUMMY_MODE:
        if explicit and op.letter == "K":
            return op
        if vr == "SQ":
            return op if op.mode in (CLEAN_MODE, DUMMY_MODE) else op._replace(mode=DUMMY_MODE)
        if vr == "UI":
            return op if op.code in (UID, KEEP, CHECK_UI) else Op(UID, "U", vr)
        if vr in _NUMERIC_VRS:
            return op
        return Op(DUMMY, "D", vr)
    # CLEAN_MODE
    if keyword in _CODE_KEYWORDS:
        return Op(K_SILENT, "", vr)
    if vr in TEXT_VRS:
        return op if explicit and op.letter == "K" else Op(CLEAN_TEXT, "C", vr)
    if vr == "SQ" and op.code == RECURSE and op.mode == INHERIT:
        return op._replace(mode=CLEAN_MODE)
    return op


@dataclass(frozen=True)
class Plan:
    """A compiled profile. Immutable after compilation; shared by every thread."""

    profile_name: str
    tables: tuple[Mapping[int, Op], Mapping[int, Op], Mapping[int, Op], Mapping[int, Op]]
    masks: tuple[tuple[int, int, Mapping[str, Op]], ...]
    unknown: Mapping[str, Op]
    private_default: Mapping[str, Op]
    safe_private: Mapping[tuple[int, str, int], Mapping[str, Op]]
    safe_private_table: Mapping[tuple[int, str, int], tuple[str, str]]
    identifier_tags: frozenset[int]
    identifier_kinds: Mapping[int, int]
    sequence_tags: frozenset[int]
    needs_identifiers: bool
    filters: tuple[FilterRule, ...]
    clean_pixels: bool
    adds: tuple[tuple[int, str, str], ...]
    codes: tuple[tuple[str, str], ...]
    temporal: str
    rows: tuple[dict[str, str], ...] = field(repr=False)

    def describe(self) -> list[dict[str, str]]:
        """Every rule of the plan (see :meth:`Profile.describe`)."""
        return [dict(r) for r in self.rows]


def _merge_options(layers: Iterable[Iterable[HeaderRule]]) -> dict[Field, _Resolved]:
    merged: dict[Field, _Resolved] = {}
    for layer in layers:
        for rule in layer:
            new = _Resolved(rule, _table_code(rule))
            old = merged.get(rule.field)
            if old is not None and _protection(old.rule) > _protection(rule):
                continue
            merged[rule.field] = new
    return merged


def _protection(rule: HeaderRule) -> int:
    return _PROTECTION[_table_code(rule)[0]]


def _name_of(f: Field) -> str:
    if f.kind == "tag":
        entry = DicomDictionary.get(f.tag)
        return str(entry[2]) if entry else "(not in the dictionary)"
    return {
        "private": f"private element of {f.creator!r}",
        "mask": "every public element matching the mask",
        "vr": f"every {f.vr} attribute without its own rule",
        "private_all": "every private element without its own rule",
        "unknown": "every public element missing from the dictionary",
    }[f.kind]


def compile_profile(profile: Profile) -> Plan:
    """Compile a profile into a :class:`Plan`.

    Raises
    ------
    ProfileError
        If a rule cannot apply to its attribute (e.g. ``func:uid`` on a date).
    """
    resolved: dict[Field, _Resolved] = {}
    adds: list[tuple[int, str, str]] = []

    def take(rules: Iterable[HeaderRule]) -> None:
        for rule in rules:
            if rule.verb == "ADD":
                tag = rule.field.tag
                if tag not in DicomDictionary:
                    raise ProfileError(f"{rule.source}: ADD needs an attribute of the dictionary")
                vr = _dict_vr(tag)
                _literal(rule.value or "", vr, rule.source)
                adds.append((tag, vr, rule.value or ""))
                continue
            resolved[rule.field] = _Resolved(rule, _table_code(rule))

    take(profile.base.header)
    merged = _merge_options([layer.header for layer in profile.option_layers])
    for rule in (r.rule for r in merged.values()):
        if rule.verb == "ADD":
            raise ProfileError(f"{rule.source}: ADD belongs in a site recipe")
    resolved.update(merged)
    for layer in profile.site_layers:
        take(layer.header)

    normal: dict[int, Op] = {}
    explicit: set[int] = set()
    for tag in DicomDictionary:
        vr = _dict_vr(tag)
        normal[tag] = Op(RECURSE, "", vr) if vr == "SQ" else Op(K_SILENT, "", vr)
    # vr: rules, then exact tags (higher specificity).
    for f, res in resolved.items():
        if f.kind != "vr":
            continue
        for tag in DicomDictionary:
            if _dict_vr(tag) == f.vr:
                op = _op_for(res.rule, f.vr, strict=False)
                if op is not None:
                    normal[tag] = op
                    explicit.add(tag)
    for f, res in resolved.items():
        if f.kind == "tag":
            vr = _dict_vr(f.tag) if f.tag in DicomDictionary else ""
            op = _op_for(res.rule, vr, strict=True)
            assert op is not None
            normal[f.tag] = op
            explicit.add(f.tag)

    def per_vr(rule: HeaderRule) -> dict[str, Op]:
        out = {}
        for vr in _ALL_VRS:
            op = _op_for(rule, vr, strict=False)
            out[vr] = op if op is not None else Op(REMOVE, "X", vr)
        return out

    masks = []
    for f, res in resolved.items():
        if f.kind == "mask":
            masks.append((f.mask, f.value, per_vr(res.rule)))
    masks.sort(key=lambda m: -bin(m[0]).count("1"))  # most specific first
    keep_all = {vr: Op(K_SILENT, "", vr) for vr in _ALL_VRS}
    unknown = keep_all
    private_default = {vr: Op(REMOVE, "X", vr) for vr in _ALL_VRS}
    safe: dict[tuple[int, str, int], Mapping[str, Op]] = {}
    for f, res in resolved.items():
        if f.kind == "unknown":
            unknown = per_vr(res.rule)
        elif f.kind == "private_all":
            private_default = per_vr(res.rule)
        elif f.kind == "private":
            # A kept private sequence is walked in the mode of where it is found (a private
            # sequence inside a dummied or cleaned sequence is dummied or cleaned too).
            safe[(f.group, f.creator.strip(), f.element)] = {
                vr: op._replace(mode=INHERIT) if op.code == RECURSE else op
                for vr, op in per_vr(res.rule).items()
            }
    safe_table = safe_private_table() if safe else {}

    meta_table = {tag: op for tag, op in normal.items() if tag >> 16 == 0x0002}
    misplaced = Op(REMOVE, "X", "")
    for tag in normal:
        if tag >> 16 in MISPLACED_GROUPS:
            normal[tag] = misplaced._replace(vr=normal[tag].vr)
    dummy_table: dict[int, Op] = {}
    clean_table: dict[int, Op] = {}
    for tag, op in normal.items():
        vr = op.vr
        keyword = keyword_for_tag(tag)
        is_explicit = tag in explicit
        dummy_table[tag] = _mode_op(op, vr, keyword, DUMMY_MODE, is_explicit)
        clean_table[tag] = _mode_op(op, vr, keyword, CLEAN_MODE, is_explicit)

    identifier_tags: set[int] = set()
    for layer in profile.layers:
        for f in layer.identifier_fields:
            if f.kind == "tag":
                identifier_tags.add(f.tag)
            elif f.kind == "vr":
                identifier_tags.update(t for t in DicomDictionary if _dict_vr(t) == f.vr)
    # Dates of the instance are identifying words of its free text too ("0105", "2023-01-05").
    date_tags = {t for t in DicomDictionary if _dict_vr(t) in ("DA", "DT")}
    needs_identifiers = any(
        op.code == CLEAN_TEXT or (op.code == RECURSE and op.mode == CLEAN_MODE)
        for op in normal.values()
    ) or any(op.code == CLEAN_TEXT for _m, _v, ops in masks for op in ops.values())

    options = set(profile.options)
    if ProfileOption.RETAIN_MODIFIED_DATES in options:
        temporal = "MODIFIED"
    elif ProfileOption.RETAIN_FULL_DATES in options:
        temporal = "UNMODIFIED"
    else:
        temporal = "REMOVED"
    codes = (BASIC_CODE, *((o.code, o.meaning) for o in profile.options))

    rows = []
    for f, res in sorted(resolved.items(), key=lambda kv: (kv[0].kind != "tag", str(kv[0]))):
        if f.kind == "tag":
            effect = _effect(meta_table.get(f.tag) or normal[f.tag])
        elif f.kind == "vr":
            effect = _effect(_op_for(res.rule, f.vr, strict=False) or Op(REMOVE, "X", f.vr))
        elif f.kind == "private":
            listed = safe_table.get((f.group, f.creator.strip(), f.element))
            effect = _private_effect(per_vr(res.rule), listed, private_known_vr(f))
        else:
            effect = _summary(per_vr(res.rule), _ALL_VRS)
        rows.append({
            "field": str(f),
            "name": _name_of(f),
            "action": res.table_code,
            "effect": effect,
            "layer": res.rule.source,
        })
    for tag, _vr, value in adds:
        rows.append({"field": f"({tag >> 16:04X},{tag & 0xFFFF:04X})",
                     "name": str(DicomDictionary[tag][2]), "action": "ADD",
                     "effect": f"set to {value!r}", "layer": "site"})
    if ProfileOption.CLEAN_PIXEL_DATA in options:
        for tag, effect in _PIXEL_EFFECTS.items():
            rows.append({"field": f"({tag >> 16:04X},{tag & 0xFFFF:04X})",
                         "name": str(DicomDictionary[tag][2]), "action": "C", "effect": effect,
                         "layer": ProfileOption.CLEAN_PIXEL_DATA.recipe})
    rows.append({"field": "(0000,xxxx) (0002,xxxx) (FFFE,xxxx) outside the file meta",
                 "name": "command, file meta and item or delimiter tags in a data set or item",
                 "action": "X", "effect": "remove", "layer": "engine"})
    for tag, effect in _marks(temporal).items():
        rows.append({"field": f"({tag >> 16:04X},{tag & 0xFFFF:04X})",
                     "name": str(DicomDictionary[tag][2]), "action": "ADD", "effect": effect,
                     "layer": "engine"})

    filters = tuple(rule for layer in profile.layers for rule in layer.filters)
    return Plan(
        profile_name=profile.name,
        tables=(normal, dummy_table, clean_table, meta_table),
        masks=tuple(masks),
        unknown=unknown,
        private_default=private_default,
        safe_private=safe,
        safe_private_table={key: safe_table[key] for key in safe if key in safe_table},
        identifier_tags=frozenset(identifier_tags | date_tags),
        identifier_kinds={
            t: ID_DATE if t in date_tags else ID_NAME if _dict_vr(t) == "PN" else ID_VALUE
            for t in identifier_tags | date_tags
        },
        sequence_tags=frozenset(t for t in DicomDictionary if _dict_vr(t) == "SQ"),
        needs_identifiers=needs_identifiers,
        filters=filters,
        clean_pixels=ProfileOption.CLEAN_PIXEL_DATA in options,
        adds=tuple(adds),
        codes=codes,
        temporal=temporal,
        rows=tuple(rows),
    )
