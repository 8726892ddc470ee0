"""imaging-lake: a research imaging lake.

DICOM in, de-identified on the way in, content-addressed pixels plus Delta tables,
DuckDB SQL, cohorts out.

Examples
--------
>>> import lake  # doctest: +SKIP
>>> lk = lake.open("/data/lake")  # doctest: +SKIP
>>> lk.sql("SELECT * FROM series WHERE Modality = 'CT'").df()  # doctest: +SKIP
"""

from lake._errors import (
    AccessError,
    AuthenticationError,
    BlobNotFoundError,
    CatalogError,
    ConfigError,
    DeidRefusedError,
    ExportError,
    ForbiddenError,
    IngestError,
    InputRefusedError,
    IntegrityError,
    LakeError,
    LakeNotFoundError,
    NetError,
    ProfileError,
    QueryError,
    VaultError,
)
from lake._lake import Lake, LakeInfo, VerifyReport, init
from lake._lake import open_lake as open

__version__ = "0.1.0"

__all__ = [
    "AccessError",
    "AuthenticationError",
    "BlobNotFoundError",
    "CatalogError",
    "ConfigError",
    "DeidRefusedError",
    "ExportError",
    "ForbiddenError",
    "IngestError",
    "InputRefusedError",
    "IntegrityError",
    "Lake",
    "LakeError",
    "LakeInfo",
    "LakeNotFoundError",
    "NetError",
    "ProfileError",
    "QueryError",
    "VaultError",
    "VerifyReport",
    "__version__",
    "init",
    "open",
]
