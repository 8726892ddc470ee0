"""Which recipe rules the engine honours, checked when a profile loads.

A profile must say what the engine does: a rule that the engine would silently override or
apply differently is refused with a :class:`~lake._errors.ProfileError` naming the file, the
rule and the reason, instead of being shown as done by ``lake profiles show``.

What the engine honours for private elements (``docs/deid.md``, "Private elements"):

- named by creator, ``(gggg,"Creator",ee)``: kept, blanked, given a fixed or dummy value or
  cleaned when the element is a plain value (numbers, codes, short texts: :data:`PLAIN_VRS`);
  keyed or kept when a UID; walked when a sequence (its items de-identified). Binary values
  (OB, OW, UN...), names, dates and other VRs are removed whatever the rule says: they are
  where vendors keep whole proprietary headers with the patient's name (PS3.15 E.3.10
  Note 2). A rule that asks otherwise for an element whose VR pydicom's private dictionary
  knows is refused; for a creator pydicom does not know, the VR is checked on each element.
- ``private`` (every private element without its own rule): removed, blanked, dummied or
  keyed (UIDs); never kept or cleaned as a whole, which would keep every vendor header.
- A bare tag or a mask on an odd group never reaches private elements (a private element is
  only known by its creator): refused.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from pydicom.datadict import private_dictionary_VR

from lake._errors import ProfileError
from lake.deid._recipe import Field, HeaderRule, Layer

__all__ = ["ENGINE_MARKS", "PLAIN_VRS", "check_layers", "private_known_vr"]

PLAIN_VRS = frozenset(
    {"AT", "CS", "DS", "FD", "FL", "IS", "LO", "LT", "SH", "SL", "SS", "ST", "UL", "US"}
)
"""Private values the engine can keep or transform as a rule says: numbers, codes, short texts."""

ENGINE_MARKS = {
    0x00120062: "Patient Identity Removed",
    0x00120063: "De-identification Method",
    0x00120064: "De-identification Method Code Sequence",
    0x00280303: "Longitudinal Temporal Information Modified",
}
"""Attributes the engine writes on every output (PS3.15 E.1.1): no rule can change them."""


def private_known_vr(f: Field) -> str:
    """The VR pydicom's private dictionary gives a private creator rule's element ("" if unknown)."""
    try:
        vr = str(private_dictionary_VR((f.group << 16) | 0x1000 | f.element, f.creator.strip()))
    except KeyError:
        return ""
    return vr[:2] if " or " in vr else vr


def _verb(rule: HeaderRule) -> str:
    if rule.verb != "REPLACE":
        return rule.verb
    return f"func:{rule.func}" if rule.func else "literal"


# What the engine does with a private element of each kind of VR, per verb (see _plan._op_for):
# verbs not listed for a kind are not honoured (the element would be removed instead).
_TABLE_FUNCS = frozenset({"func:XZ", "func:XD", "func:XZD", "func:ZD"})
_HONOURED = {
    "SQ": frozenset({"KEEP", "BLANK", "func:uid", "func:clean", "func:dummy", "func:XZU"})
    | _TABLE_FUNCS,
    "UI": frozenset({"KEEP", "BLANK", "literal", "func:uid", "func:clean", "func:dummy",
                     "func:XZU"}) | _TABLE_FUNCS,
    "plain": frozenset({"KEEP", "BLANK", "literal", "func:clean", "func:dummy"}) | _TABLE_FUNCS,
}
# What `private` (every private element without its own rule) may ask: nothing that keeps.
_PRIVATE_ALL = frozenset({"REMOVE", "BLANK", "func:dummy", "func:uid", "func:XZU"}) | _TABLE_FUNCS


def _private_reason(rule: HeaderRule, vr: str) -> str | None:
    """Why the engine would not do what a creator rule asks to an element of ``vr``."""
    verb = _verb(rule)
    if verb == "REMOVE":
        return None
    if vr not in PLAIN_VRS and vr not in ("SQ", "UI"):
        return (
            f"its VR is {vr}: the engine keeps or changes only private numbers, codes, "
            "short texts, UIDs and sequences (binary values such as vendor headers, names "
            "and dates are removed: PS3.15 E.3.10 Note 2)"
        )
    kind = vr if vr in ("SQ", "UI") else "plain"
    if verb == "func:pseudonym" and vr in ("LO", "SH"):
        return None
    if verb not in _HONOURED[kind]:
        return f"{verb} does not apply to a private {vr} value (it would be removed)"
    return None


def _check_rule(
    rule: HeaderRule, safe_table: Mapping[tuple[int, str, int], tuple[str, str]]
) -> None:
    f = rule.field
    what = f" func:{rule.func}" if rule.func else f" {rule.value}" if rule.value else ""
    where = f"{rule.source}: {rule.verb} {f}{what}"
    if f.kind == "tag" and (f.tag >> 16) % 2 == 1 and rule.verb != "ADD":
        raise ProfileError(
            f"{where}: a private element is named by its creator, e.g. "
            f'({f.tag >> 16:04X},"CREATOR",{f.tag & 0xFF:02X}); a bare tag never reaches it'
        )
    if f.kind == "mask" and f.mask >> 16 == 0xFFFF and (f.value >> 16) % 2 == 1:
        raise ProfileError(
            f"{where}: masks match public elements only; name private elements by creator, "
            'e.g. (gggg,"CREATOR",ee)'
        )
    if f.kind == "tag" and f.tag in ENGINE_MARKS:
        raise ProfileError(
            f"{where}: {ENGINE_MARKS[f.tag]} is written by the engine on every output "
            "(PS3.15 E.1.1); no rule can change it"
        )
    if f.kind == "private_all" and _verb(rule) not in _PRIVATE_ALL:
        raise ProfileError(
            f"{where}: this would keep every vendor private element, headers with names "
            "included (PS3.15 E.3.10 Note 2); keep private elements one by one, "
            'e.g. KEEP (0019,"GEMS_ACQU_01",23), or use the retain-safe-private option'
        )
    if f.kind == "private":
        listed = safe_table.get((f.group, f.creator.strip(), f.element))
        vr = listed[0] if listed and listed[0] else private_known_vr(f)
        reason = _private_reason(rule, vr) if vr else None
        if reason is not None:
            raise ProfileError(f"{where}: the engine cannot honour this rule: {reason}")


def check_layers(
    layers: Iterable[Layer], safe_table: Mapping[tuple[int, str, int], tuple[str, str]]
) -> None:
    """Refuse every header rule of ``layers`` that the engine would not honour as written.

    ``safe_table`` gives the VR and VM of the elements of Table E.3.10-1 by (group, creator,
    element byte): for those the engine goes by the table's VR, as for every other rule.

    Raises
    ------
    ProfileError
        One line: the file, the rule and why (see the module docstring).
    """
    for layer in layers:
        for rule in layer.header:
            _check_rule(rule, safe_table)
