"""The demo lake: sample DICOM that ships with installed packages, nothing downloaded."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from lake._errors import ConfigError

__all__ = ["DEMO_QUERY", "sample_sources"]

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
