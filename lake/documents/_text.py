"""Which words of a document may stay: the study's identifiers and the Clean Descriptors rule.

One rule for every text a document carries, whether read from a PDF's text layer or by OCR
from pixels: a word is *identifying* when it is one of the study's identifying words (names
in any written order, IDs, accession, institution...) or when the Clean Descriptors rule of
:mod:`lake.deid` would not keep it (a word outside the standard's vocabulary, a date, a long
number). Profiles with Clean Descriptors redact such words; the others refuse the document.

The rule itself is lake.deid's (``clean_text``): it is called, never copied, so an
improvement of the descriptor-cleaning rule applies to documents too.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

from lake.deid import Deidentifier, ProfileOption, Vocabulary, clean_text, identifier_words

__all__ = ["TextPolicy", "fold", "identifiers_of"]

_WORD = re.compile(r"[^\W_]+")
_DIGITS = re.compile(r"\d")
_MIN_DIGITS = 4  # an ID written with separators (123-45-678) still matches from 4 digits


def fold(word: str) -> str:
    """Lower-case ASCII form of a word: accents dropped (``Müller`` -> ``muller``)."""
    decomposed = unicodedata.normalize("NFKD", word)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).lower()


def _digits(text: str) -> str:
    return "".join(_DIGITS.findall(text))


@dataclass(frozen=True)
class TextPolicy:
    """The words a document may keep.

    Parameters
    ----------
    vocabulary : frozenset of str
        The profile's word list (lower case).
    identifiers : frozenset of str
        Lower-case identifying words of the study (and their accent-free forms).
    id_digits : frozenset of str
        Digit-only forms of identifying values with at least four digits, so an ID written
        ``123-45-678`` matches ``12345678``.
    redact : bool
        True when the profile cleans descriptors: identifying words are removed. False: a
        document with an identifying word is refused.
    keyed : callable, optional
        A keyed membership test for identifying words known only as keyed hashes (a study
        in the lake, whose identified header is gone).
    """

    vocabulary: Vocabulary | frozenset[str]
    identifiers: frozenset[str] = frozenset()
    id_digits: frozenset[str] = frozenset()
    redact: bool = False
    keyed: Callable[[str], bool] | None = field(default=None, compare=False)

    @classmethod
    def for_engine(
        cls,
        engine: Deidentifier,
        identifiers: Iterable[str] = (),
        id_digits: Iterable[str] = (),
        keyed: Callable[[str], bool] | None = None,
    ) -> TextPolicy:
        """The policy of ``engine``'s profile with the study's identifying words."""
        profile = engine.profile
        return cls(
            vocabulary=profile.vocabulary,
            identifiers=frozenset(identifiers),
            id_digits=frozenset(id_digits),
            redact=ProfileOption.CLEAN_DESCRIPTORS in profile.options,
            keyed=keyed,
        )

    def is_identifying(self, token: str) -> bool:
        """True when ``token`` (a run of text without spaces, punctuation included) must go.

        Examples
        --------
        >>> p = TextPolicy(frozenset({"chest", "ct"}), frozenset({"heart"}))
        >>> [p.is_identifying(t) for t in ("CT", "chest,", "Heart", "12/03/2020", "Zyxw")]
        [False, False, True, True, True]
        """
        text = token.strip()
        if not text:
            return False
        words = {w.lower() for w in _WORD.findall(text)}
        identifiers = self.identifiers
        if words & identifiers or {fold(w) for w in words} & identifiers:
            return True
        if self.keyed is not None and any(self.keyed(fold(w)) for w in words):
            return True
        digits = _digits(text)
        if len(digits) >= _MIN_DIGITS and digits in self.id_digits:
            return True
        return clean_text(text, self.vocabulary) != text


def _values(elem: DataElement) -> list[str]:
    value = elem.value
    if value is None:
        return []
    if isinstance(value, bytes):
        return [value.decode("latin-1")]
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        return [str(v) for v in value]
    return [str(value)]


def identifiers_of(
    ds: Dataset, engine: Deidentifier
) -> tuple[frozenset[str], frozenset[str]]:
    """The identifying words of an identified header, and the digit forms of its IDs.

    The words are those the engine protects when it cleans a description: every person
    name and every attribute of the profile's ``%fields identifiers`` (IDs, accession,
    institution, station, addresses...), at any depth; with their accent-free forms.
    """
    tags = engine.plan.identifier_tags
    words: set[str] = set()
    digits: set[str] = set()

    def walk(dataset: Dataset) -> None:
        for elem in dataset.iterall():
            if elem.VR == "SQ":
                continue
            if elem.VR != "PN" and int(elem.tag) not in tags:
                continue
            for text in _values(elem):
                found = identifier_words(text)
                words.update(found)
                words.update(fold(w) for w in found)
                number = _digits(text)
                if len(number) >= _MIN_DIGITS:
                    digits.add(number)

    walk(ds)
    return frozenset(words), frozenset(digits)
