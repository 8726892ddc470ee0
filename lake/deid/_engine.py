"""PLACEHOLDER engine (to be replaced by the complete PS3.15 engine, issue 3).

Removes private elements, pseudonymises PatientID/PatientName with keyed hashes,
remaps every non-standard UID with HMAC into 2.25 form, empties person names and
removes birth date and other direct identifiers. Refuses BurnedInAnnotation=YES.
"""

from __future__ import annotations

import hashlib
import hmac
from collections import Counter
from dataclasses import dataclass, field

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.uid import UID_dictionary

from lake._errors import DeidRefusedError
from lake.deid._profile import Profile
from lake.vault import Secret

__all__ = ["DeidResult", "Deidentifier"]

_REMOVE = {
    "PatientBirthDate", "OtherPatientIDs", "OtherPatientIDsSequence", "PatientAddress",
    "InstitutionName", "InstitutionAddress", "StationName", "DeviceSerialNumber",
    "AccessionNumber", "StudyID", "ImageComments", "AdditionalPatientHistory",
    "RequestAttributesSequence", "OverlayData", "IconImageSequence",
}


@dataclass
class DeidResult:
    actions: Counter[str] = field(default_factory=Counter)


class Deidentifier:
    def __init__(self, profile: Profile, secret: Secret) -> None:
        self.profile = profile
        self._uid_key = secret.derive("uid")
        self._pid_key = secret.derive("patient-id")

    def uid(self, value: str) -> str:
        digest = hmac.new(self._uid_key, value.encode(), hashlib.sha256).digest()
        return "2.25." + str(int.from_bytes(digest[:16], "big"))

    def apply(self, ds: Dataset) -> DeidResult:
        if str(ds.get("BurnedInAnnotation", "")).upper() == "YES":
            raise DeidRefusedError("burned_in_annotation", "BurnedInAnnotation is YES")
        result = DeidResult()
        pid = str(ds.get("PatientID", ""))
        ds.remove_private_tags()
        self._walk(ds, result)
        ds.PatientID = hmac.new(self._pid_key, pid.encode(), hashlib.sha256).hexdigest()[:16]
        ds.PatientName = "ANON^" + ds.PatientID
        ds.PatientIdentityRemoved = "YES"
        meta = getattr(ds, "file_meta", None)
        if meta is not None and "MediaStorageSOPInstanceUID" in meta:
            meta.MediaStorageSOPInstanceUID = self.uid(meta.MediaStorageSOPInstanceUID)
        return result

    def _walk(self, ds: Dataset, result: DeidResult) -> None:
        for elem in list(ds):
            self._element(ds, elem, result)

    def _element(self, ds: Dataset, elem: DataElement, result: DeidResult) -> None:
        if elem.keyword in _REMOVE or (elem.tag.group & 0xFF00) in (0x6000, 0x5000):
            del ds[elem.tag]
            result.actions["X"] += 1
        elif elem.VR == "SQ":
            for item in elem.value:
                self._walk(item, result)
        elif elem.VR == "UI" and elem.value:
            values = elem.value if elem.VM > 1 else [elem.value]
            new = [v if v in UID_dictionary else self.uid(str(v)) for v in values]
            elem.value = new if elem.VM > 1 else new[0]
            result.actions["U"] += 1
        elif elem.VR == "PN":
            elem.value = ""
            result.actions["Z"] += 1
