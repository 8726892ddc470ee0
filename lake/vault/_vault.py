"""The key vault: pseudonymisation secrets kept outside the lake.

A vault is a local folder (mode 0700) holding one key file per lake,
``<lake_id>.key`` (mode 0600), with 32 random bytes in hex. The lake's config
records only a fingerprint of the key, so a wrong vault is detected and the
lake alone never allows a pseudonym to be recomputed.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
from dataclasses import dataclass, field
from pathlib import Path

from lake._errors import VaultError

__all__ = ["Secret", "Vault"]

_ENV = "LAKE_VAULT"


@dataclass(frozen=True)
class Secret:
    """A lake's secret and the keys derived from it.

    Each purpose gets its own key, ``HMAC-SHA256(secret, purpose)``, so a key
    used for one job (UIDs) reveals nothing about another (dates).
    """

    value: bytes = field(repr=False)

    @property
    def fingerprint(self) -> str:
        """A public identifier of the secret (safe to store in the lake)."""
        return hmac.new(self.value, b"imaging-lake fingerprint v1", hashlib.sha256).hexdigest()[:32]

    def derive(self, purpose: str) -> bytes:
        """A 32-byte key for ``purpose`` (e.g. ``"uid"``, ``"patient-id"``, ``"date-shift"``)."""
        return hmac.new(
            self.value, b"imaging-lake key v1:" + purpose.encode(), hashlib.sha256
        ).digest()


@dataclass(frozen=True)
class Vault:
    """A folder of lake secrets, outside any lake.

    Parameters
    ----------
    path : Path
        The vault folder.
    """

    path: Path

    @classmethod
    def from_option(cls, value: str | os.PathLike[str] | None) -> Vault:
        """The vault at ``value`` or, when it is None, at ``LAKE_VAULT``.

        Raises
        ------
        VaultError
            If neither names a vault.
        """
        chosen = os.fspath(value) if value is not None else os.environ.get(_ENV)
        if not chosen:
            raise VaultError(
                "no key vault given: pass vault=DIR or set LAKE_VAULT to a folder outside the lake",
                parameters=("vault",),
            )
        return cls(Path(chosen).expanduser().absolute())

    def key_path(self, lake_id: str) -> Path:
        return self.path / f"{lake_id}.key"

    def create(self, lake_id: str) -> Secret:
        """Create (or return the existing) secret for ``lake_id``."""
        self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.path, 0o700)
        key_path = self.key_path(lake_id)
        if key_path.exists():
            return self.load(lake_id)
        value = secrets.token_bytes(32)
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(value.hex() + "\n")
        return Secret(value)

    def load(self, lake_id: str, fingerprint: str | None = None) -> Secret:
        """Read the secret of ``lake_id``.

        Parameters
        ----------
        lake_id : str
            The lake's identifier (from its config).
        fingerprint : str, optional
            When given, the secret must have this fingerprint.

        Raises
        ------
        VaultError
            If the key is missing, readable by others, malformed or not this lake's.
        """
        key_path = self.key_path(lake_id)
        if not key_path.is_file():
            raise VaultError(
                f"the vault {self.path} holds no key for lake {lake_id}; "
                "pass the vault the lake was created with (vault= or LAKE_VAULT)",
                parameters=("vault",),
            )
        mode = stat.S_IMODE(key_path.stat().st_mode)
        if mode & 0o077:
            raise VaultError(
                f"key file {key_path} is readable by others (mode {mode:o}); run: chmod 600 {key_path}"
            )
        try:
            value = bytes.fromhex(key_path.read_text().strip())
        except ValueError:
            raise VaultError(f"key file {key_path} is malformed; restore it from backup") from None
        if len(value) != 32:
            raise VaultError(f"key file {key_path} is malformed; restore it from backup")
        secret = Secret(value)
        if fingerprint is not None and not hmac.compare_digest(secret.fingerprint, fingerprint):
            raise VaultError(f"the key in {key_path} does not belong to this lake")
        return secret
