"""Loading de-identification profiles from ``profiles/`` (shipped as ``lake.profiles``)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from lake._errors import ProfileError

__all__ = ["Profile", "list_profiles", "load_profile"]


@dataclass(frozen=True)
class Profile:
    """A named, versioned de-identification profile."""

    name: str
    version: str
    text: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()


def _builtin_dir() -> Path:
    return Path(str(resources.files("lake.profiles")))


def list_profiles() -> list[str]:
    """Names of the built-in profiles."""
    return sorted(p.stem for p in _builtin_dir().glob("*.dicom"))


def load_profile(name: str) -> Profile:
    """Load a built-in profile by name, or a recipe file by path."""
    path = Path(name)
    if not path.is_file():
        path = _builtin_dir() / f"{name}.dicom"
    if not path.is_file():
        raise ProfileError(
            f"unknown profile {name!r}; choose one of {', '.join(list_profiles())} or give a file path"
        )
    return Profile(path.stem, "0", path.read_text())
