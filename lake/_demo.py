"""The demo lake: sample DICOM that ships with installed packages, nothing downloaded."""

from __future__ import annotations

import copy
import importlib.util
import secrets
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from lake._errors import ConfigError

if TYPE_CHECKING:
    from lake._lake import Lake
    from lake.vault import Secret

__all__ = ["DEMO_ACCOUNTS", "DEMO_QUERY", "DEMO_TEACHING_SET", "portal_demo", "sample_sources"]

DEMO_TEACHING_SET = "demo-teaching"
DEMO_COHORT = "demo-ct-mr"
DEMO_ACCOUNTS = {"steward": "demo-steward", "researcher": "demo-researcher",
                 "student": "demo-student"}
"""The demo's portal accounts, one per role (their passwords are made by each run)."""
_CASES = (("M", "054Y", "CHEST"), ("F", "067Y", "CHEST"), ("F", "041Y", "ABDOMEN"))

# A cohort query a researcher would start from: CT and MR series with their make-up.
DEMO_QUERY = """\
SELECT Modality,
       count(*)                   AS series,
       sum(instance_count)        AS instances,
       round(sum(size_bytes) / 1e6, 2) AS megabytes,
       count(DISTINCT PatientID)  AS patients
FROM series
GROUP BY Modality
ORDER BY instances DESC"""


def _package_dir(name: str, *parts: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        return None
    folder = Path(spec.origin).parent.joinpath(*parts)
    return folder if folder.is_dir() else None


def sample_sources() -> list[str]:
    """Folders of sample DICOM from pydicom, pydicom-data and deid-data (those installed).

    Raises
    ------
    ConfigError
        If none of those packages is installed.
    """
    candidates = [
        _package_dir("pydicom", "data", "test_files"),
        _package_dir("data_store", "data"),  # the pydicom-data package
        _package_dir("deid_data", "data"),
    ]
    found = [str(folder) for folder in candidates if folder is not None]
    if not found:
        raise ConfigError("no sample DICOM found: pip install pydicom-data deid-data")
    return found


def _teaching_files(folder: Path) -> None:
    """Three small CT cases cloned from pydicom's CT_small.dcm, with stable UIDs per run."""
    from pydicom import dcmread
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    path = get_testdata_file("CT_small.dcm")
    if not isinstance(path, str):
        raise ConfigError("pydicom's test file CT_small.dcm is missing: reinstall pydicom")
    template = dcmread(path)
    def uid(case: int, *parts: object) -> str:
        return generate_uid(entropy_srcs=["imaging-lake demo teaching", str(case),
                                          *map(str, parts)])

    for case, (sex, age, part) in enumerate(_CASES, start=1):
        for index in range(6):
            ds = copy.deepcopy(template)
            ds.PatientID = f"DEMO-TEACH-{case}"
            ds.PatientName = f"Demo^Case{case}"
            ds.PatientSex, ds.PatientAge, ds.BodyPartExamined = sex, age, part
            ds.StudyInstanceUID, ds.SeriesInstanceUID = uid(case, "study"), uid(case, "series")
            ds.FrameOfReferenceUID = uid(case, "frame")
            ds.SOPInstanceUID = uid(case, "instance", index)
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            ds.InstanceNumber = index + 1
            ds.ImagePositionPatient = [-158.0, -179.0, -75.0 + 2.5 * index]
            ds.SliceLocation = -75.0 + 2.5 * index
            pixels = bytearray(ds.PixelData)
            pixels[0:2] = (case * 16 + index).to_bytes(2, "little")
            ds.PixelData = bytes(pixels)
            ds.save_as(folder / f"case{case}-{index:02d}.dcm", enforce_file_format=True)


def portal_demo(lake: Lake, secret: Secret, *, scheduler: str = "auto") -> dict[str, str]:
    """Give the demo lake what the portal shows: a teaching set, a cohort, an account per role.

    Ingests three generated CT cases with the ``teaching`` profile (idempotent: the same
    files every run), saves ``demo-teaching`` (a teaching set) and ``demo-ct-mr`` (CT and MR
    series), and gives each of :data:`DEMO_ACCOUNTS` a new random password.

    Returns
    -------
    dict
        Account name -> its password, for the local demo only.
    """
    from lake.access import add_user, list_users, mark_teaching_set, set_password
    from lake.export import create_cohort
    from lake.ingest import ingest

    with tempfile.TemporaryDirectory(prefix="lake-demo-") as work:
        folder = Path(work)
        _teaching_files(folder)
        ingest(lake, [str(folder)], secret, profile="teaching", scheduler=scheduler)
    lake.refresh()
    create_cohort(lake, DEMO_TEACHING_SET,
                  "SELECT SeriesInstanceUID FROM series s JOIN instances i USING "
                  "(SeriesInstanceUID) WHERE i.profile = 'teaching'",
                  description="Three CT cases for teaching (generated)", replace=True)
    create_cohort(lake, DEMO_COHORT,
                  "SELECT SeriesInstanceUID FROM series WHERE Modality IN ('CT', 'MR')",
                  description="Every CT and MR series of the demo", replace=True)
    mark_teaching_set(lake, DEMO_TEACHING_SET)
    existing = {u.name for u in list_users(lake)}
    passwords = {}
    for role, name in DEMO_ACCOUNTS.items():
        password = secrets.token_urlsafe(12)
        if name in existing:
            set_password(lake, name, password)
        else:
            add_user(lake, name, role, password)
        passwords[name] = password
    return passwords
