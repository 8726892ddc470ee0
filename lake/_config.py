"""The lake's small config file, ``<root>/lake.json``."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

from lake._errors import ConfigError, LakeNotFoundError
from lake.store import Location, atomic_write

__all__ = ["FORMAT_VERSION", "LakeConfig"]

FORMAT_VERSION = 1
CONFIG_NAME = "lake.json"


@dataclass(frozen=True)
class LakeConfig:
    """What a lake records about itself (never key material, never PHI).

    Attributes
    ----------
    lake_id : str
        Random identifier; names the lake's key in the vault.
    key_fingerprint : str
        Public fingerprint of the vault key, to detect a wrong vault.
    default_profile : str
        Profile used when a command names none.
    dicom : dict
        Settings of ``lake serve dicom`` (AE title, port, allowed AEs, move destinations).
    ingest : dict
        Bounds on what ingest reads (:class:`lake.ingest.ReadLimits`, in bytes).
    web : dict
        Settings of ``lake serve web`` (host, port, TLS, limits; see ``lake.web.WebConfig``).
    """

    lake_id: str
    key_fingerprint: str
    created_at: str
    default_profile: str = "basic"
    format: int = FORMAT_VERSION
    dicom: dict[str, Any] = field(default_factory=dict)
    ingest: dict[str, Any] = field(default_factory=dict)
    web: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def new(cls, key_fingerprint: str, lake_id: str) -> LakeConfig:
        return cls(
            lake_id=lake_id,
            key_fingerprint=key_fingerprint,
            created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        )

    @staticmethod
    def new_id() -> str:
        return uuid.uuid4().hex

    @classmethod
    def read(cls, location: Location) -> LakeConfig:
        """Read ``lake.json`` at ``location``.

        Raises
        ------
        LakeNotFoundError
            If there is no lake there.
        ConfigError
            If the file is unreadable or from a newer version.
        """
        path = location.join(CONFIG_NAME)
        try:
            if location.is_local:  # (without importing fsspec: issue 14.1)
                with open(path, "rb") as fh:
                    raw = fh.read()
            else:
                raw = location.fs.cat_file(path)
        except FileNotFoundError:
            raise LakeNotFoundError(
                f"no lake at {location.url}; create one with lake.init() first",
                functions=("lake.init",)
            ) from None
        try:
            data = json.loads(raw)
        except json.JSONDecodeError:
            raise ConfigError(f"{path} is not valid JSON; restore it from backup") from None
        if not isinstance(data, dict) or data.get("format", 0) > FORMAT_VERSION:
            raise ConfigError(
                f"{path} was written by a newer imaging-lake (format {data.get('format')}); upgrade"
            )
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        try:
            return cls(**known)
        except TypeError:
            raise ConfigError(f"{path} lacks required settings; restore it from backup") from None

    def write(self, location: Location) -> None:
        """Write ``lake.json`` atomically."""
        text = json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"
        atomic_write(location.fs, location.join(CONFIG_NAME), text.encode())
