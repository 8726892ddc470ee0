"""Burned-in text: which instances are at risk, ``%filter`` rules, masking pixel regions.

An instance is *at risk* when it has pixel data and either says BurnedInAnnotation=YES, or
says nothing (flag absent or empty) and belongs to a class that typically carries burned-in
text: ultrasound, secondary capture, modality OT, or an ImageType naming a screen save.
BurnedInAnnotation=NO is trusted.

A profile without the Clean Pixel Data option refuses instances at risk. With the option, the
``%filter graylist`` rules (deid's syntax and left-to-right and/or evaluation) that match the
original header give regions: ``coordinates`` are set to 0, ``keepcoordinates`` restored, in
order, on every frame. At-risk instances that no rule with coordinates matches are refused.
In every profile, ``%filter blacklist`` matches are refused and an at-risk instance that a
``%filter whitelist`` rule matches is accepted as it is (a steward vouches for it); instances
not at risk are never touched.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydicom.datadict import dictionary_VR, keyword_dict
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.uid import UID

from lake._errors import DeidRefusedError
from lake.deid._recipe import Condition, FilterRule
from lake.nifti import decode_past_panic

__all__ = ["PixelDecision", "assess", "clean_pixels", "element_text"]

_PIXEL_DATA = 0x7FE00010
_AT_RISK_CLASSES = frozenset({
    "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture Image
    "1.2.840.10008.5.1.4.1.1.7.1",  # Multi-frame Single Bit SC
    "1.2.840.10008.5.1.4.1.1.7.2",  # Multi-frame Grayscale Byte SC
    "1.2.840.10008.5.1.4.1.1.7.3",  # Multi-frame Grayscale Word SC
    "1.2.840.10008.5.1.4.1.1.7.4",  # Multi-frame True Color SC
    "1.2.840.10008.5.1.4.1.1.6",  # Ultrasound Image (retired)
    "1.2.840.10008.5.1.4.1.1.6.1",  # Ultrasound Image
    "1.2.840.10008.5.1.4.1.1.6.2",  # Enhanced US Volume
    "1.2.840.10008.5.1.4.1.1.3",  # Ultrasound Multi-frame Image (retired)
    "1.2.840.10008.5.1.4.1.1.3.1",  # Ultrasound Multi-frame Image
})
_AT_RISK_MODALITIES = frozenset({"US", "OT"})
_TEXT_VRS = frozenset(
    {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI",
     "UR", "UT"}
)


def element_text(ds: Dataset, tag: int) -> list[str] | None:
    """The values of a top-level element as strings (None when absent; [] when empty).

    Reads raw bytes without converting the element, so malformed values never make pydicom
    warn. Sequences give one empty string per item.
    """
    elem = ds.get_item(tag)
    if elem is None:
        return None
    if isinstance(elem, RawDataElement):
        vr = elem.VR
        if vr is None:
            try:
                vr = dictionary_VR(tag)
            except KeyError:
                vr = "UN"
        if vr not in _TEXT_VRS or elem.value is None:
            elem = ds[tag]  # numbers and sequences: pydicom's conversion (never warns)
        else:
            text = elem.value.decode("latin-1").rstrip("\0 ")
            return [v.strip() for v in text.split("\\")] if text else []
    assert isinstance(elem, DataElement)
    value: Any = elem.value
    if elem.VR == "SQ":
        return ["" for _ in value]
    if value is None or value == "":
        return []
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        return [str(v) for v in value]
    return [str(value)]


@dataclass(frozen=True)
class PixelDecision:
    """What to do with the pixels: nothing, or mask ``regions`` (labels of the rules)."""

    at_risk: bool
    flag: str
    labels: tuple[str, ...] = ()
    coordinates: tuple[tuple[bool, str], ...] = ()


def _flag(ds: Dataset) -> str:
    values = element_text(ds, 0x00280301)
    return values[0].upper() if values else ""


def _at_risk(ds: Dataset, flag: str) -> bool:
    if _PIXEL_DATA not in ds:
        return False
    if flag == "YES":
        return True
    if flag == "NO":
        return False
    sop_class = (element_text(ds, 0x00080016) or [""])[0]
    modality = (element_text(ds, 0x00080060) or [""])[0].upper()
    image_type = [v.upper() for v in element_text(ds, 0x00080008) or []]
    return (
        sop_class in _AT_RISK_CLASSES
        or modality in _AT_RISK_MODALITIES
        or any("SCREEN" in v or v == "SAVE" for v in image_type)
    )


def _condition(ds: Dataset, cond: Condition) -> bool:
    tag = keyword_dict.get(cond.field)
    if tag is None and re.fullmatch(r"0x[0-9A-Fa-f]{8}", cond.field):
        tag = int(cond.field, 16)
    values = element_text(ds, tag) if tag is not None else None
    action = cond.action
    if action == "missing":
        return values is None
    if action == "present":
        return values is not None
    if action == "empty":
        return values is not None and not any(values)
    if values is None:
        return action in ("notcontains", "notequals")
    term = cond.value.strip().lower()
    candidates = [v.lower().strip() for v in values] + ["\\".join(values).lower()]
    if action in ("contains", "notcontains"):
        found = any(re.search(term, c) for c in candidates)
        return found if action == "contains" else not found
    equal = any(c == term for c in candidates)
    return equal if action == "equals" else not equal


def rule_matches(ds: Dataset, rule: FilterRule) -> bool:
    """Evaluate a filter rule against the (original) header, left to right like deid."""
    if not rule.terms:
        return bool(rule.coordinates)
    first = rule.terms[0]
    assert isinstance(first, Condition)
    flag = _condition(ds, first)
    for i in range(1, len(rule.terms) - 1, 2):
        operator, cond = rule.terms[i], rule.terms[i + 1]
        assert isinstance(cond, Condition)
        value = _condition(ds, cond)
        flag = (flag or value) if operator == "or" else (flag and value)
    return flag


def assess(ds: Dataset, filters: tuple[FilterRule, ...], clean: bool) -> PixelDecision:
    """Decide, from the original header, whether pixels are refused, cleaned or left alone.

    Raises
    ------
    DeidRefusedError
        ``pixel_blacklist`` when a blacklist rule matches; ``burned_in_annotation`` (flag
        YES) or ``burned_in_risk`` (class at risk) without the Clean Pixel Data option and
        no whitelist rule; ``burned_in_unmatched`` when no graylist rule gives regions for
        an at-risk instance.
    """
    flag = _flag(ds)
    at_risk = _at_risk(ds, flag)
    for rule in filters:
        if rule.group == "blacklist" and rule_matches(ds, rule):
            raise DeidRefusedError(
                "pixel_blacklist", f"the profile's blacklist rule '{rule.label}' matches"
            )
    if at_risk and any(r.group == "whitelist" and rule_matches(ds, r) for r in filters):
        return PixelDecision(False, flag)  # a steward's rule vouches for these pixels
    if not clean:
        if at_risk:
            if flag == "YES":
                raise DeidRefusedError(
                    "burned_in_annotation",
                    "BurnedInAnnotation is YES and the profile does not clean pixel data; "
                    "use a profile with the clean-pixel-data option (e.g. teaching)",
                )
            raise DeidRefusedError(
                "burned_in_risk",
                "the image class often carries burned-in text (ultrasound, secondary capture, "
                "screen save) and BurnedInAnnotation is not NO; use a profile with the "
                "clean-pixel-data option or have the modality set the flag",
            )
        return PixelDecision(False, flag)
    if not at_risk:
        return PixelDecision(False, flag)
    labels: list[str] = []
    coordinates: list[tuple[bool, str]] = []
    for rule in filters:
        if rule.group == "graylist" and rule.coordinates and rule_matches(ds, rule):
            labels.append(rule.label)
            coordinates += rule.coordinates
    if not any(not keep for keep, _ in coordinates):
        raise DeidRefusedError(
            "burned_in_unmatched",
            "the image may carry burned-in text and no %filter rule of the profile gives the "
            "regions to mask for this device; add a rule or exclude the series",
        )
    return PixelDecision(True, flag, tuple(labels), tuple(coordinates))


def _regions(ds: Dataset, spec: str, rows: int, cols: int) -> list[tuple[int, int, int, int]]:
    if spec == "all":
        return [(0, 0, cols, rows)]
    if spec.startswith("from:"):
        out = []
        for item in ds.get(spec[5:], []) or []:
            try:
                out.append((int(item.RegionLocationMinX0), int(item.RegionLocationMinY0),
                            int(item.RegionLocationMaxX1) + 1, int(item.RegionLocationMaxY1) + 1))
            except (AttributeError, TypeError, ValueError):
                continue
        return out
    x0, y0, x1, y1 = (int(v) for v in spec.split(","))
    return [(x0, y0, x1, y1)]


def clean_pixels(ds: Dataset, decision: PixelDecision) -> None:
    """Mask the regions of ``decision`` in every frame; pixel data ends up uncompressed.

    Compressed transfer syntaxes are decoded (pydicom + pylibjpeg/pyjpegls) and stored
    Explicit VR Little Endian; colour data decoded from YBR is stored as RGB.

    Raises
    ------
    DeidRefusedError
        ``pixel_decode`` when the pixels cannot be decoded, ``pixel_unsupported`` for
        layouts this engine does not mask (1-bit, big endian).
    """
    meta = getattr(ds, "file_meta", None)
    syntax = UID(meta.get("TransferSyntaxUID", "")) if meta is not None else None
    try:
        if syntax is not None and syntax.is_compressed:
            decode_past_panic(ds.decompress, as_rgb=True, generate_instance_uid=False)
            syntax = UID(ds.file_meta.TransferSyntaxUID)
        rows, cols = int(ds.Rows), int(ds.Columns)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        bits = int(ds.BitsAllocated)
        planar = int(ds.get("PlanarConfiguration", 0) or 0)
        data = ds.PixelData
    except Exception as exc:  # noqa: BLE001 - any decoder failure means "cannot clean"
        raise DeidRefusedError(
            "pixel_decode",
            f"the pixel data cannot be decoded for cleaning ({type(exc).__name__})",
        ) from None
    if bits not in (8, 16, 32) or (syntax is not None and not syntax.is_little_endian):
        raise DeidRefusedError(
            "pixel_unsupported", f"cannot mask {bits}-bit or big-endian pixel data"
        )
    dtype = np.dtype(f"<u{bits // 8}")
    count = frames * rows * cols * samples
    if len(data) < count * dtype.itemsize:
        raise DeidRefusedError("pixel_decode", "the pixel data is shorter than its dimensions")
    pixels = np.frombuffer(data, dtype=dtype, count=count).copy()
    if samples > 1 and planar == 1:
        view = pixels.reshape(frames, samples, rows, cols).transpose(0, 2, 3, 1)
    else:
        view = pixels.reshape(frames, rows, cols, samples)
    mask = np.ones((rows, cols), dtype=bool)
    for keep, spec in decision.coordinates:
        for x0, y0, x1, y1 in _regions(ds, spec, rows, cols):
            mask[max(y0, 0):max(y1, 0), max(x0, 0):max(x1, 0)] = keep
    view[:, ~mask, :] = 0
    cleaned = pixels.tobytes()
    if len(cleaned) % 2:
        cleaned += b"\0"
    ds.PixelData = cleaned
    ds["PixelData"].VR = "OB" if bits == 8 else "OW"
