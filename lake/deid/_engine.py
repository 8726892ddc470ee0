"""The de-identification engine: one pass over a dataset, at any depth, file meta included."""

from __future__ import annotations

import functools
import re
from collections import Counter
from dataclasses import dataclass, field

from pydicom.charset import convert_encodings
from pydicom.datadict import dictionary_VR, private_dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset, FileDataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag
from pydicom.values import convert_SQ

from lake.deid import _plan as _p
from lake.deid import _values as _v
from lake.deid._clean import InstanceIdentifiers, clean_text
from lake.deid._codestreams import strip_pixel_frames
from lake.deid._honour import PLAIN_VRS
from lake.deid._pixels import assess, clean_pixels, element_text
from lake.deid._plan import Op, Plan, compile_profile
from lake.deid._profile import Profile
from lake.deid._rawseq import encode_element, encode_items, rewrite_sequence, scan_values
from lake.deid._uids import not_a_uid, well_formed_uids
from lake.vault import Secret

__all__ = ["DeidResult", "Deidentifier"]

_PATIENT_ID = 0x00100020
_CHARSET = 0x00080005
_PIXEL_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})  # pydicom resets its array
_MEMO_SIZE = 4096
_PLAIN_DATASETS = (Dataset, FileDataset)  # no __setitem__ of their own (not the file meta)
_METHOD_CODES = BaseTag(0x00120064)  # DeidentificationMethodCodeSequence
_EXPLICIT_LITTLE = (False, True)  # Dataset.original_encoding of explicit VR little endian


@dataclass
class DeidResult:
    """What :meth:`Deidentifier.apply` did. Holds no original value.

    Attributes
    ----------
    actions : Counter
        Action codes taken (``X``, ``Z``, ``D``, ``K``, ``C``, ``U``) and how often.
    pixels_cleaned : bool
        True when burned-in regions were masked and PixelData replaced.
    pixel_rules : tuple of str
        Labels of the ``%filter`` rules whose regions were masked.
    frames_stripped : int
        Compressed frames whose metadata segments (EXIF, comments...) were removed.
    """

    actions: Counter[str] = field(default_factory=Counter)
    pixels_cleaned: bool = False
    pixel_rules: tuple[str, ...] = ()
    frames_stripped: int = 0


@dataclass
class _Call:
    """The state of one :meth:`Deidentifier.apply` call (never shared between calls)."""

    actions: Counter[str]
    encodings: list[str]
    patient_id: str
    identifying: tuple[list[str], list[str], list[str]] = field(
        default_factory=lambda: ([], [], [])
    )  # person names, other identifying values, dates (_plan.ID_NAME, ID_VALUE, ID_DATE)
    identifiers: InstanceIdentifiers | None = None
    shift: int | None = None


def _raw_text(elem: DataElement | RawDataElement, encodings: list[str]) -> str:
    """The whole value as one string (multiple values joined by backslash)."""
    if isinstance(elem, RawDataElement):
        data = elem.value or b""
        return _v.decode(data, encodings).rstrip("\0 ")
    value = elem.value
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("latin-1").rstrip("\0 ")
    if isinstance(value, list | tuple | MultiValue):
        return "\\".join(str(v) for v in value)
    return str(value)


def _drops_private(plan: Plan) -> bool:
    """Whether ``plan`` removes every private element (no safe private attribute kept)."""
    return not plan.safe_private and plan.private_default["UN"].code == _p.REMOVE


def _vr_of(elem: DataElement | RawDataElement, op: Op, tag: int) -> str:
    vr = elem.VR if elem.VR and (elem.VR != "UN" or not op.vr) else op.vr
    if not vr:
        try:
            vr = str(dictionary_VR(tag))
        except KeyError:
            vr = "UN"
    return vr[:2] if " or " in vr else vr


def _private_vr(tag: int, creator: str) -> str:
    """The VR of a private element read without one (implicit VR), as pydicom reads it.

    pydicom converts such an element with the VR of its private dictionary (by creator),
    else as UN; a listed element whose VR is unknown is then handled as UN.
    """
    try:
        vr = str(private_dictionary_VR(tag, creator))
    except KeyError:
        return "UN"
    return vr[:2] if " or " in vr else vr


# VRs whose values Table E.3.10-1 lists as safe: numbers, codes and short texts.
_PLAIN_VRS = PLAIN_VRS
_FIXED_SIZE = {"AT": 4, "FD": 8, "FL": 4, "SL": 4, "SS": 2, "UL": 4, "US": 2}
_TEXT_CONTROLS = frozenset(b"\t\n\f\r\x1b")
_UID_BYTES = re.compile(rb"[0-9.]+(\\[0-9.]+)*\x00?")
_ITEM_TAG = b"\xfe\xff\x00\xe0"


def _listed_vr(
    ds: Dataset,
    tag: int,
    elem: DataElement | RawDataElement | None,
    creator: str,
    table: str,
    multiplicity: str,
) -> str | None:
    """The VR to apply a safe private rule with, or ``None`` when the element is not kept.

    A listed element is kept only as what the table lists: with the table's VR, or read
    without one (implicit VR, UN) when its bytes can only be such a value (numbers: the
    table's VM exactly; texts: no control characters; never an encoded item). A sequence is
    walked whatever the table says. Without a table VR (a site's own rule) the element's
    VR must be a plain one (numbers, codes, short texts), a UID or a sequence.
    """
    if elem is None:
        return None
    observed = str(elem.VR) if elem.VR else ""
    known = "" if observed else _private_vr(tag, creator)  # implicit VR: pydicom's dictionary
    if known == "SQ" or observed == "SQ":
        return "SQ"  # a sequence (pydicom reads it as one): walked
    observed = observed[:2] if " or " in observed else (observed or "UN")
    expected = table or (known if known != "UN" else "") or observed
    if observed == expected:
        return expected if expected in _PLAIN_VRS or expected == "UI" else None
    if observed != "UN":
        return None
    raw = ds.get_item(tag)  # a deferred value is read now
    value = raw.value if raw is not None else None
    if not isinstance(value, bytes):
        return None
    if expected == "SQ":  # items encoded in implicit VR, as in UN (PS3.5 6.2.2): walked
        return "SQ" if not value or value.startswith(_ITEM_TAG) else None
    if value.startswith(_ITEM_TAG):
        return None  # an encoded item: a sequence hidden in the bytes
    if expected == "UI":
        return "UI" if _UID_BYTES.fullmatch(value) else None
    if expected in _FIXED_SIZE:
        size = _FIXED_SIZE[expected] * (int(multiplicity) if multiplicity.isdigit() else 1)
        fits = len(value) == size if multiplicity.isdigit() else len(value) % size == 0
        return expected if fits and value else None
    if expected in _PLAIN_VRS:
        text = value.rstrip(b"\x00 ")
        return None if any(b < 0x20 and b not in _TEXT_CONTROLS for b in text) else expected
    return None


def _parse_unknown_sequence(ds: Dataset, tag: int, encodings: list[str]) -> None:
    """A sequence read without its VR (implicit VR, UN) parsed into items, to be walked.

    Its bytes are items in implicit VR little endian whatever the transfer syntax
    (PS3.5 6.2.2); what cannot be parsed is dropped with the original bytes.
    """
    elem = ds.get_item(tag)
    if elem is not None and elem.VR in (None, "UN"):
        value = elem.value if isinstance(elem.value, bytes) else b""
        ds[tag] = DataElement(tag, "SQ", convert_SQ(value, True, True, encodings))


class Deidentifier:
    """Applies a compiled profile to datasets.

    The profile is compiled once here; :meth:`apply` keeps no state between calls, so an
    instance is safe to share between threads and is pickled (for Dask workers) with its
    compiled plan and derived keys.

    Parameters
    ----------
    profile : Profile
        From :func:`lake.deid.load_profile`.
    secret : lake.vault.Secret
        The lake's secret. Keys are derived for ``uid``, ``patient-id``, ``date-shift`` and
        ``ae-title``; the secret itself is not kept.

    Examples
    --------
    >>> from pydicom import examples
    >>> from lake.vault import Secret
    >>> from lake.deid import load_profile
    >>> engine = Deidentifier(load_profile("basic"), Secret(b"0" * 32))
    >>> ds = examples.ct
    >>> result = engine.apply(ds)
    >>> ds.PatientIdentityRemoved, ds.PatientName
    ('YES', '')
    """

    def __init__(self, profile: Profile, secret: Secret) -> None:
        self.profile = profile
        self._plan: Plan = compile_profile(profile)
        self._uid_key = secret.derive("uid")
        self._pid_key = secret.derive("patient-id")
        self._shift_key = secret.derive("date-shift")
        self._ae_key = secret.derive("ae-title")
        self._raw_sequences = True  # the bytes fast path (lake.deid._rawseq); False: general
        # DeidentificationMethodCodeSequence's value as _mark builds it, encoded explicit VR
        # little endian with defined lengths, as the encoders write the built sequence.
        self._method_codes = encode_items([
            encode_element(0x0008, 0x0100, b"SH", value.encode())
            + encode_element(0x0008, 0x0102, b"SH", b"DCM")
            + encode_element(0x0008, 0x0104, b"LO", meaning.encode())
            for value, meaning in self._plan.codes
        ])
        # Keyed UIDs already computed (a series repeats its study, series and frame of
        # reference UIDs in every instance): in memory only, bounded, emptied when pickled.
        self._uids: dict[str, str] = {}
        # Likewise the identifiers of the last instances (a series repeats its patient's,
        # study's and places' values) and the values cleaned with them.
        self._identifiers: dict[tuple[tuple[str, ...], ...], InstanceIdentifiers] = {}
        self._cleaned: dict[tuple[str, InstanceIdentifiers, int | None], str] = {}

    def __getstate__(self) -> dict[str, object]:
        state = dict(self.__dict__)
        state["_uids"], state["_identifiers"], state["_cleaned"] = {}, {}, {}
        return state

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)

    @property
    def plan(self) -> Plan:
        """The compiled plan (read-only)."""
        return self._plan

    def uid(self, value: str) -> str:
        """The UID that ``value`` becomes (well-known UIDs are unchanged)."""
        found = self._uids.get(value)
        if found is None:
            if len(self._uids) >= _MEMO_SIZE:
                self._uids.clear()
            found = self._uids[value] = _v.keyed_uid(self._uid_key, value)
        return found

    def apply(self, ds: Dataset) -> DeidResult:
        """De-identify ``ds`` in place, including ``ds.file_meta`` and the preamble.

        Pixel data is never decoded unless the profile cleans pixels and the instance is at
        risk of burned-in text; compressed frames lose their metadata segments (EXIF, XMP,
        comments), their coded data unchanged (see ``docs/deid.md``).

        Parameters
        ----------
        ds : pydicom.dataset.Dataset
            As read by ``dcmread`` (``defer_size`` allowed) or built in memory.

        Returns
        -------
        DeidResult

        Raises
        ------
        DeidRefusedError
            When the profile refuses the instance (burned-in text it cannot clean).
        """
        plan = self._plan
        decision = assess(ds, plan.filters, plan.clean_pixels)
        charset = element_text(ds, _CHARSET) or []
        encodings = convert_encodings(charset or ["ISO_IR 6"])
        pid = ds.get_item(_PATIENT_ID)
        call = _Call(
            actions=Counter(),
            encodings=encodings,
            patient_id=_raw_text(pid, encodings).strip() if pid is not None else "",
        )
        if plan.needs_identifiers:
            self._collect_identifiers(ds, call)
        result = DeidResult(call.actions)
        if decision.coordinates:
            clean_pixels(ds, decision)
            result.pixels_cleaned = True
            result.pixel_rules = decision.labels
        else:
            result.frames_stripped = strip_pixel_frames(ds)
        self._walk(ds, call, _p.NORMAL)
        meta = getattr(ds, "file_meta", None)
        if meta is not None:
            self._walk(meta, call, _p.META)
        if getattr(ds, "preamble", None) is not None:
            ds.preamble = b"\0" * 128
        self._mark(ds, result)
        return result

    # ---- the walk -------------------------------------------------------------------

    def _walk(self, ds: Dataset, call: _Call, mode: int) -> None:
        ops = self._plan.tables[mode]
        privates: list[int] = []
        for tag in list(ds.keys()):
            # By the plain int: a BaseTag found equal to the table's int key is compared by
            # BaseTag.__eq__, in Python.
            op = ops.get(int(tag))
            if op is None:
                if tag & 0x10000:
                    privates.append(tag)
                    continue
                op = self._fallback(ds, tag)
            code = op.code
            if code == _p.K_SILENT:
                continue
            if code == _p.REMOVE:
                del ds[tag]
                call.actions["X"] += 1
            elif code == _p.RECURSE:
                self._recurse(ds, tag, op, call, mode)
            else:
                self._transform(ds, tag, op, call)
        if privates:
            self._privates(ds, privates, call, mode)

    def _fallback(self, ds: Dataset, tag: int) -> Op:
        elem = ds.get_item(tag, keep_deferred=True)
        vr = (elem.VR if elem is not None and elem.VR else "UN")
        vr = vr[:2] if " or " in vr else vr
        for mask, value, ops in self._plan.masks:
            if tag & mask == value:
                return ops.get(vr) or ops["UN"]
        return self._plan.unknown.get(vr) or self._plan.unknown["UN"]

    def _recurse(self, ds: Dataset, tag: int, op: Op, call: _Call, mode: int) -> None:
        child = mode if op.mode == _p.INHERIT else op.mode
        raw = ds.get_item(tag, keep_deferred=True)
        if (
            self._raw_sequences
            and isinstance(raw, RawDataElement)
            and raw.VR == "SQ"
            and raw.value is not None
            and not raw.is_implicit_VR
            and raw.is_little_endian
        ):
            plan = self._plan
            done = rewrite_sequence(raw.value, plan.tables, child, self.uid, call.encodings,
                                    functools.partial(self._raw_value, call),
                                    drop_private=_drops_private(plan))
            if done is not None:
                value, actions = done
                ds[tag] = RawDataElement(BaseTag(tag), "SQ", len(value), value, 0, False, True)
                call.actions.update(actions)
                if op.letter:
                    call.actions[op.letter] += 1
                return
        elem = ds[tag]
        if elem.VR != "SQ":
            # A dictionary sequence stored as something else (e.g. UN we cannot parse).
            self._transform(ds, tag, op._replace(code=_p.DUMMY), call)
            return
        for item in elem.value:
            self._walk(item, call, child)
        if op.letter:
            call.actions[op.letter] += 1

    def _privates(self, ds: Dataset, tags: list[int], call: _Call, mode: int) -> None:
        plan = self._plan
        default = plan.private_default
        if _drops_private(plan):
            if type(ds) in _PLAIN_DATASETS:
                # What Dataset.__delitem__ does for each: the element out of the dict, the
                # private block cache emptied when a creator goes (no private tag is pixel
                # data). ~90 of a GE CT's elements.
                elements = ds._dict
                for tag in tags:
                    del elements[tag]  # type: ignore[arg-type]  # the walk's own BaseTag keys
                if ds._private_blocks and any(0x10 <= tag & 0xFFFF <= 0xFF for tag in tags):
                    ds._private_blocks = {}
            else:
                for tag in tags:
                    del ds[tag]
            call.actions["X"] += len(tags)
            return
        creators: dict[int, str] = {}
        for tag in tags:
            if 0x10 <= tag & 0xFFFF <= 0xFF:
                elem = ds.get_item(tag)
                creators[tag] = _raw_text(elem, call.encodings).strip() if elem else ""
        used: set[int] = set()
        for tag in tags:
            low = tag & 0xFFFF
            if 0x10 <= low <= 0xFF:
                continue
            elem = ds.get_item(tag, keep_deferred=True)
            vr = (elem.VR or "UN") if elem is not None else "UN"
            if low < 0x10:
                ops = default
            else:
                block = (tag & 0xFFFF0000) | (low >> 8)
                creator = creators.get(block)
                found = (
                    plan.safe_private.get((tag >> 16, creator, low & 0xFF))
                    if creator is not None else None
                )
                ops = found or default
                if found is not None or default["UN"].code != _p.REMOVE:
                    used.add(block)
                if found is not None:
                    table = plan.safe_private_table.get(
                        (tag >> 16, creator or "", low & 0xFF), ("", "")
                    )
                    checked = _listed_vr(ds, tag, elem, creator or "", *table)
                    vr = checked or "UN"
                    if checked is None:  # not what the table lists: as if unlisted
                        ops = default
            op = ops.get(vr) or ops["UN"]
            if op.code == _p.REMOVE:
                del ds[tag]
                call.actions["X"] += 1
            elif op.code == _p.RECURSE:  # a kept private sequence: its items are de-identified
                _parse_unknown_sequence(ds, tag, call.encodings)
                self._recurse(ds, tag, op, call, mode)
            elif op.code != _p.K_SILENT:
                self._transform(ds, tag, op, call)
            elif op.letter:
                call.actions[op.letter] += 1
        for tag in creators:
            if tag not in used:
                del ds[tag]
                call.actions["X"] += 1

    # ---- one element ----------------------------------------------------------------

    def _set(self, ds: Dataset, tag: int, vr: str, data: bytes) -> None:
        if len(data) % 2:
            data += b"\0" if vr == "UI" else b" "
        # The walk's tag is the dataset's own key: kept, the dict finds it by identity
        # (a new BaseTag equal to it is compared by BaseTag.__eq__, in Python).
        key = tag if type(tag) is BaseTag else BaseTag(tag)
        elem = RawDataElement(key, vr, len(data), data, 0, False, True)
        if type(ds) in _PLAIN_DATASETS and not tag & 0x10000 and tag not in _PIXEL_TAGS:
            # What Dataset.__setitem__ does for a raw public element, without its checks
            # (the tag is an int here, the element is raw): ~40% of the cost of setting.
            ds._dict[elem.tag] = elem
        else:
            ds[tag] = elem

    def _transform(self, ds: Dataset, tag: int, op: Op, call: _Call) -> None:
        code = op.code
        elem = ds.get_item(tag)
        assert elem is not None
        vr = _vr_of(elem, op, tag)
        actions = call.actions
        if code == _p.BLANK:
            if vr == "SQ":
                ds[tag] = DataElement(tag, "SQ", Sequence())
            else:
                self._set(ds, tag, vr, b"")
            actions["Z"] += 1
            return
        if code == _p.KEEP:
            actions[op.letter] += 1
            return
        if code == _p.CHECK_UI:
            if not well_formed_uids(elem.value if isinstance(elem, RawDataElement)
                                    else _raw_text(elem, call.encodings).encode("utf-8", "replace")):
                raise not_a_uid(tag)
            actions[op.letter] += 1
            return
        if code == _p.LITERAL:
            self._set(ds, tag, vr, op.literal)
            actions["D"] += 1
            return
        text = _raw_text(elem, call.encodings)
        if not text.strip("\0 ") and code != _p.CLEAN_TEXT:
            actions["Z"] += 1  # nothing to replace: the value stays empty
            return
        if code == _p.DUMMY:
            if vr == "SQ":
                ds[tag] = DataElement(tag, "SQ", Sequence())
                actions["Z"] += 1
                return
            self._set(ds, tag, vr, _v.dummy_bytes(vr))
            actions["D"] += 1
        elif code == _p.UID:
            values = [v.strip("\0 ") for v in text.split("\\")]
            new = "\\".join(self.uid(v) if v else "" for v in values)
            self._set(ds, tag, "UI", new.encode("ascii"))
            actions["U"] += 1
        else:
            value = self._text_value(op, vr, text, call, actions)
            if value is None:
                del ds[tag]
            elif isinstance(value, bytes):  # True: unchanged
                self._set(ds, tag, vr, value)

    def _raw_value(self, call: _Call, op: Op, vr: str, value: bytes,
                   actions: Counter[str]) -> bytes | bool | None:
        """What :meth:`_transform` does to a raw value of ``vr`` (the raw sequence path).

        Only for the codes :data:`lake.deid._rawseq.VALUE_CODES`; see :meth:`_text_value`.
        The action is counted in ``actions`` (the rewriter's own, kept only if it succeeds).
        """
        text = _v.decode(value, call.encodings).rstrip("\0 ")
        if not text.strip("\0 ") and op.code != _p.CLEAN_TEXT:
            actions["Z"] += 1  # nothing to replace: the value stays empty
            return True
        return self._text_value(op, vr, text, call, actions)

    def _text_value(self, op: Op, vr: str, text: str, call: _Call,
                    actions: Counter[str]) -> bytes | bool | None:
        """The new value (unpadded bytes), ``True`` to keep it as it is, ``None`` to remove it.

        For pseudonyms, Clean (C), AE titles and dates; counts the action in ``actions``.
        """
        code = op.code
        if code == _p.PSEUDONYM:
            value = text.strip()
            new = _v.pseudonym(self._pid_key, value) if value else ""
            actions["D"] += 1
            return new.encode("ascii")
        if code == _p.CLEAN_TEXT:
            if vr not in _p.TEXT_VRS:
                # A clean rule reached an element of another VR (masks, private): keep only
                # what carries no text, and drop the rest.
                if vr in ("PN", "DA", "DT", "TM", "AE", "UR", "UN", "UI"):
                    actions["X"] += 1
                    return None
                actions["C"] += 1
                return True
            ids = call.identifiers
            if ids is None:
                ids = call.identifiers = self._instance_identifiers(call)
            key = (text, ids, _v.MAX_LENGTH.get(vr))
            cleaned = self._cleaned.get(key)
            if cleaned is None:
                if len(self._cleaned) >= _MEMO_SIZE:
                    self._cleaned.clear()
                cleaned = self._cleaned[key] = clean_text(text, self.profile.vocabulary, ids,
                                                          key[2])
            actions["C"] += 1
            return cleaned.encode("ascii")
        if code == _p.AE_PSEUDO:
            values = [v.strip() for v in text.split("\\")]
            actions["C"] += 1
            return "\\".join(_v.keyed_ae(self._ae_key, v) if v else "" for v in values).encode(
                "ascii")
        return self._dates(op, text, call, actions)

    def _dates(self, op: Op, text: str, call: _Call, actions: Counter[str]) -> bytes | bool:
        code = op.code
        values = [v.strip() for v in text.split("\\")]
        new: list[str | None]
        if code in (_p.SHIFT_DA, _p.SHIFT_DT):
            if call.shift is None:
                low, high = self.profile.date_shift
                call.shift = _v.shift_days(self._shift_key, call.patient_id, low, high)
            fn = _v.shift_da if code == _p.SHIFT_DA else _v.shift_dt
            new = [fn(v, call.shift) if v else "" for v in values]
        elif code == _p.CHECK_AS:
            new = [_v.age(v) if v else "" for v in values]
        else:
            check = {_p.CHECK_DA: _v.valid_da, _p.CHECK_DT: _v.valid_dt, _p.CHECK_TM: _v.valid_tm,
                     _p.CHECK_TZ: _v.valid_tz}[code]
            new = [v if not v or check(v) else None for v in values]
        if any(v is None for v in new):
            # Malformed: never passes through, not even partly.
            actions["Z"] += 1
            return b""
        joined = "\\".join(v for v in new if v is not None)
        actions[op.letter] += 1
        return True if joined == text else joined.encode("ascii")

    # ---- identifiers for cleaning ---------------------------------------------------

    def _instance_identifiers(self, call: _Call) -> InstanceIdentifiers:
        """The identifiers collected for ``call``, built once per distinct set of values."""
        key = tuple(tuple(values) for values in call.identifying)
        found = self._identifiers.get(key)
        if found is None:
            if len(self._identifiers) >= _MEMO_SIZE:
                self._identifiers.clear()
            names, values, dates = key
            found = self._identifiers[key] = InstanceIdentifiers(names, values, dates,
                                                                 self.profile.vocabulary)
        return found

    def _collect_identifiers(self, ds: Dataset, call: _Call) -> None:
        plan = self._plan
        keys = ds.keys()
        kinds = plan.identifier_kinds
        for tag in keys & plan.identifier_tags:
            elem = ds.get_item(tag)
            if elem is not None and elem.VR != "SQ":
                call.identifying[kinds[tag]].append(_raw_text(elem, call.encodings))
        for tag in keys & plan.sequence_tags:
            raw = ds.get_item(tag, keep_deferred=True)
            if (
                self._raw_sequences
                and isinstance(raw, RawDataElement)
                and raw.value is not None
                and not raw.is_implicit_VR
                and raw.is_little_endian
            ):
                values = scan_values(raw.value, plan.identifier_tags, plan.sequence_tags)
                if values is not None:
                    for found, value in values:
                        text = _v.decode(value, call.encodings).rstrip("\0 ")
                        call.identifying[kinds[found]].append(text)
                    continue
            elem = ds[tag]
            if elem.VR == "SQ":
                for item in elem.value:
                    self._collect_identifiers(item, call)

    # ---- marks ----------------------------------------------------------------------

    def _mark(self, ds: Dataset, result: DeidResult) -> None:
        """Record what was done: PS3.15 Annex E attributes (built as raw, valid values)."""
        plan, profile = self._plan, self.profile
        ascii_set = self._set
        ascii_set(ds, 0x00120062, "CS", b"YES")  # PatientIdentityRemoved
        method = [
            f"imaging-lake {profile.name} {profile.version}"[:64],
            f"DICOM PS3.15 {profile.edition} Annex E",
            f"profile sha256 {profile.sha256[:32]}",
        ]
        if result.pixels_cleaned:
            method.append("burned-in text masked (deid %filter rules)")
            ascii_set(ds, 0x00280301, "CS", b"NO")  # BurnedInAnnotation
        ascii_set(ds, 0x00120063, "LO", "\\".join(method).encode("ascii", "replace"))
        if type(ds) in _PLAIN_DATASETS and ds.original_encoding == _EXPLICIT_LITTLE:
            # Read explicit VR little endian: the sequence stored as its bytes (the form of a
            # sequence the raw path rewrote), not built of datasets; converted on access.
            codes = self._method_codes
            ds._dict[_METHOD_CODES] = RawDataElement(_METHOD_CODES, "SQ", len(codes), codes, 0,
                                                     False, True)
        else:
            self._mark_codes(ds)
        ascii_set(ds, 0x00280303, "CS", plan.temporal.encode())
        for tag, vr, value in plan.adds:
            ascii_set(ds, tag, vr, value.encode("ascii"))

    def _mark_codes(self, ds: Dataset) -> None:
        """DeidentificationMethodCodeSequence built of datasets (their values raw)."""
        ascii_set = self._set
        items = []
        for value, meaning in self._plan.codes:
            item = Dataset()
            ascii_set(item, 0x00080100, "SH", value.encode())
            ascii_set(item, 0x00080102, "SH", b"DCM")
            ascii_set(item, 0x00080104, "LO", meaning.encode())
            items.append(item)
        codes = DataElement(0x00120064, "SQ", Sequence(items))
        if type(ds) in _PLAIN_DATASETS:
            # What ds[tag] = codes does but for handing Pixel Representation to the new items
            # (converting it here): none of their elements depends on it.
            ds._dict[codes.tag] = codes
        else:
            ds[0x00120064] = codes
        for item in items:  # say how the raw values above are encoded: writers copy them
            item.set_original_encoding(False, True, item._character_set)
