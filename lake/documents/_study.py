"""The study a document belongs to, and what the lake knows of it.

Two ways to know a study:

* **Identified** (:func:`study_from_header`): an original DICOM header of the study is at
  hand - a DICOM file in the document's folder, or the header of an already wrapped
  document. Its Patient and Study modules go into the document's instance *identified*,
  and the same de-identification engine as the images' then gives the same pseudonym,
  date shift and keyed UIDs; its names, IDs and institution are the words the document's
  text must not hold.
* **In the lake** (:func:`study_from_lake`): only the study's identified StudyInstanceUID is
  given (``lake attach``, ``lake ingest --study``). Its keyed UID is computed with the
  lake's key and the study's rows are found; their *de-identified* Patient and Study modules
  are copied into the document's instance. The identified header is gone: the document's
  text is judged by the Clean Descriptors rule alone, and its own dates (which cannot be
  shifted without the original PatientID) are left empty.

:class:`FolderStudies` finds the single study whose DICOM files share a document's folder
(a folder on disk or a folder inside a zip archive).
"""

from __future__ import annotations

import io
import os
import re
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from pydicom import dcmread
from pydicom.dataset import Dataset

from lake._errors import IngestError, InputRefusedError
from lake.deid import Deidentifier
from lake.documents._iod import study_modules
from lake.documents._keys import keyed
from lake.documents._text import identifiers_of
from lake.ingest import ZIP_ERRORS, ReadLimits, header_of_file, header_of_member

if TYPE_CHECKING:
    from lake._lake import Lake

__all__ = ["FolderStudies", "Study", "study_from_header", "study_from_lake"]

_UID = re.compile(r"[0-9]+(\.[0-9]+)+")
_MAX_SIBLINGS = 5000  # DICOM headers read per folder at most
# A sibling that is not DICOM, over a bound of the ingest or unreadable is not a sibling.
_NOT_A_SIBLING: tuple[type[Exception], ...] = (InputRefusedError, OSError, *ZIP_ERRORS)


@dataclass(frozen=True)
class Study:
    """What a document needs of its study.

    Attributes
    ----------
    modules : Dataset
        The Patient, Patient Study, General Study and Clinical Trial modules.
    identified : bool
        True when ``modules`` are original values (to be de-identified with the document).
    identifiers, id_digits : frozenset of str
        The study's identifying words and ID digit strings (empty when not identified).
    keyed_study_uid : str
        The study's UID in the lake.
    keyed_words, accession_key
        For a study found in the lake: the keyed hashes of its identifying words and of its
        accession (:mod:`lake.documents._keys`).
    """

    modules: Dataset = field(repr=False)
    identified: bool
    identifiers: frozenset[str] = field(default=frozenset(), repr=False)
    id_digits: frozenset[str] = field(default=frozenset(), repr=False)
    keyed_study_uid: str = ""
    keyed_words: frozenset[str] = field(default=frozenset(), repr=False)
    accession_key: str | None = field(default=None, repr=False)


def study_from_header(headers: list[Dataset], engine: Deidentifier) -> Study:
    """A study known by original headers (all of the same study): identified."""
    words: set[str] = set()
    digits: set[str] = set()
    for header in headers:
        found, numbers = identifiers_of(header, engine)
        words |= found
        digits |= numbers
    first = headers[0]
    return Study(study_modules(first), True, frozenset(words), frozenset(digits),
                 engine.uid(str(first.StudyInstanceUID)))


def _fetch(lake: Lake, query: str) -> list[tuple[object, ...]]:
    return [tuple(row) for row in lake.sql(query).fetchall()]


def study_from_lake(lake: Lake, engine: Deidentifier, study: str) -> Study:
    """A study of the lake, named by its original StudyInstanceUID or AccessionNumber.

    The UID is keyed with the lake's key and the study's rows found; an accession is found
    through the rows' keyed accession (``accession_key``). Neither value is stored.

    Raises
    ------
    IngestError
        When no study (or more than one, for an accession) of the lake has that UID or
        accession.
    """
    value = study.strip()
    keyed_uid = engine.uid(value) if _UID.fullmatch(value) else None
    if keyed_uid is not None and _fetch(
            lake, f"SELECT 1 FROM instances WHERE StudyInstanceUID = '{keyed_uid}' LIMIT 1"):
        found = keyed_uid
    else:
        accession = keyed(engine, "accession", value)
        studies = _fetch(lake, "SELECT DISTINCT StudyInstanceUID FROM instances "
                               f"WHERE accession_key = '{accession}'")
        if len(studies) > 1:
            raise IngestError("that accession number names several studies of the lake; "
                              "give the study's StudyInstanceUID instead")
        if not studies:
            raise IngestError("no instance of that study is in the lake (by StudyInstanceUID "
                              "or AccessionNumber); ingest its images first or give the "
                              "folder holding them")
        found = str(studies[0][0])
    if not _UID.fullmatch(found):
        raise IngestError("the study's UID in the lake is not a UID; run Lake.verify()",
                          functions=("Lake.verify",))
    header, accession_key = _fetch(
        lake, "SELECT header_dicom, accession_key FROM instances "
              f"WHERE StudyInstanceUID = '{found}' LIMIT 1")[0]
    words = _fetch(lake, "SELECT DISTINCT unnest(identity_keys) FROM instances "
                         f"WHERE StudyInstanceUID = '{found}'")
    assert isinstance(header, bytes)
    modules = study_modules(dcmread(io.BytesIO(header), force=True))
    return Study(modules, False, keyed_study_uid=found,
                 keyed_words=frozenset(str(w[0]) for w in words if w[0]),
                 accession_key=str(accession_key) if accession_key else None)


@dataclass
class _Seen:
    """What the scan keeps of one study's headers in a folder (not the headers themselves)."""

    modules: Dataset  # the first header's study modules
    accession: str
    words: set[str] = field(default_factory=set)
    digits: set[str] = field(default_factory=set)


class FolderStudies:
    """The study of each folder, read once per folder (cache for one task of items).

    Sibling headers are read as ingest would read them (:func:`lake.ingest.header_of_file`):
    regular files only, pixel data skipped, within ``limits``. Of each header only the study's
    modules (once per study) and its identifying words are kept.

    Parameters
    ----------
    engine : Deidentifier
        Used to key the study's UID and to find its identifying words.
    limits : ReadLimits, optional
        The ingest's bounds (default :class:`lake.ingest.ReadLimits`).
    """

    def __init__(self, engine: Deidentifier, limits: ReadLimits | None = None) -> None:
        self.engine = engine
        self.limits = limits or ReadLimits()
        self._found: dict[tuple[str, str], dict[str, _Seen]] = {}

    def study(self, path: str, member: str | None, study_uid: str | None = None) -> Study | None:
        """The study of the DICOM files beside ``path`` (or beside ``member`` in the zip).

        Returns None unless exactly one study is found (or ``study_uid``, an original
        StudyInstanceUID or AccessionNumber, names one of those found).
        """
        folder = Path(path).parent if member is None else PurePosixPath(member).parent
        key = ("" if member is None else path, str(folder))
        if key not in self._found:
            self._found[key] = self._scan(path, member)
        studies = self._found[key]
        found: tuple[str, _Seen] | None
        if study_uid is not None:
            wanted = study_uid.strip()
            found = (wanted, studies[wanted]) if wanted in studies else next(
                ((uid, seen) for uid, seen in studies.items() if seen.accession == wanted), None)
        else:
            found = next(iter(studies.items())) if len(studies) == 1 else None
        if found is None:
            return None
        uid, seen = found
        return Study(seen.modules, True, frozenset(seen.words), frozenset(seen.digits),
                     self.engine.uid(uid))

    def _scan(self, path: str, member: str | None) -> dict[str, _Seen]:
        studies: dict[str, _Seen] = {}
        for header in self._siblings(path, member):
            uid = str(header.StudyInstanceUID)
            seen = studies.get(uid)
            if seen is None:
                accession = str(header.get("AccessionNumber", "")).strip()
                seen = studies[uid] = _Seen(study_modules(header), accession)
            words, digits = identifiers_of(header, self.engine)
            seen.words |= words
            seen.digits |= digits
        return studies

    def _siblings(self, path: str, member: str | None) -> Iterator[Dataset]:
        """The headers (with a StudyInstanceUID) of the DICOM files in the folder, one at a time."""
        count = 0
        if member is None:
            try:
                entries = sorted(os.scandir(Path(path).parent), key=lambda e: e.name)
            except OSError:
                return
            for entry in entries:
                if count >= _MAX_SIBLINGS:
                    return
                try:
                    if not entry.is_file(follow_symlinks=False):
                        continue
                    header = header_of_file(entry.path, self.limits)
                except _NOT_A_SIBLING:
                    continue
                if header.get("StudyInstanceUID"):
                    count += 1
                    yield header
            return
        parent = PurePosixPath(member).parent
        try:
            with zipfile.ZipFile(path) as archive:
                for info in archive.infolist():
                    if count >= _MAX_SIBLINGS:
                        return
                    if info.is_dir() or PurePosixPath(info.filename).parent != parent:
                        continue
                    try:
                        header = header_of_member(archive, info, self.limits)
                    except _NOT_A_SIBLING:
                        continue
                    if header.get("StudyInstanceUID"):
                        count += 1
                        yield header
        except _NOT_A_SIBLING:
            return  # the archive's directory cannot be read: ingest quarantines it
