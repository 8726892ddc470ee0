"""Keyed study keys: finding a study by its accession, and its names, without keeping either.

Documents attached to a study that is already in the lake (``lake attach``, ``lake ingest
--study``) need two things the de-identified catalog no longer holds: the study of an
*original* AccessionNumber, and the study's identifying words (a patient named "Heart" must
not survive in a report). Every instance row therefore carries, computed from its identified
header before de-identification:

* ``accession_key`` - a keyed hash of the original AccessionNumber;
* ``identity_keys`` - keyed hashes of the words of the study's person names (patient,
  physicians, operators: every PN attribute at the top level) that the Clean Descriptors
  rule would otherwise *keep* (vocabulary words such as Heart, Brown, Young); every other
  identifying word is removed from a document anyway, so it is not recorded.

The hashes are HMAC-SHA256 with the lake's UID key (from the vault), each value prefixed by
its purpose, written as ``2.25.<128-bit integer>``: without the vault nothing can be
recomputed or tested, and no identifier is stored in clear.
"""

from __future__ import annotations

from typing import Any

from pydicom._dicom_dict import DicomDictionary
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from lake.deid import Deidentifier, identifier_words
from lake.documents._text import fold

__all__ = ["keyed", "study_keys"]

_ACCESSION = 0x00080050
# Person names (every PN attribute of the dictionary): the identifying values that are made
# of ordinary words (IDs and accession numbers are not; institutions are kept by the option
# that retains them).
_PERSON_NAMES = frozenset(tag for tag, entry in DicomDictionary.items() if entry[0] == "PN")


def keyed(engine: Deidentifier, purpose: str, value: str) -> str:
    """The keyed hash of ``value`` for ``purpose`` (``accession`` or ``word``)."""
    return engine.uid(f"imaging-lake {purpose} v1:{value}")


def _text(elem: DataElement | RawDataElement | None) -> str:
    if elem is None:
        return ""
    value = elem.value
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8").strip("\0 ")
        except UnicodeDecodeError:
            return value.decode("latin-1").strip("\0 ")
    if isinstance(value, list | tuple | MultiValue):
        return "\\".join(str(v) for v in value)
    return str(value or "").strip()


def study_keys(ds: Dataset, engine: Deidentifier) -> dict[str, Any]:
    """``accession_key`` and ``identity_keys`` of an identified instance (top-level values).

    Costs about 0.1 ms per instance (measured on pydicom's CT_small: 3 names).
    """
    accession = _text(ds.get_item(_ACCESSION)).strip()
    vocabulary = engine.profile.vocabulary
    words: set[str] = set()
    for tag in ds._dict.keys() & _PERSON_NAMES:  # top level, nothing converted
        elem = ds.get_item(tag)
        if elem is None or elem.VR == "SQ":
            continue
        words.update(w if w.isascii() else fold(w) for w in identifier_words(_text(elem)))
    kept = sorted(keyed(engine, "word", w) for w in words if w in vocabulary)
    return {
        "accession_key": keyed(engine, "accession", accession) if accession else None,
        "identity_keys": kept or None,
    }
