"""Key material: created by init outside the lake, 0600, required by ingest, checked against the lake."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

import lake
from lake import VaultError
from lake.vault import Vault


def test_init_creates_key_with_mode_0600_outside_the_lake(lake_root: Path, vault_dir: Path) -> None:
    lk = lake.init(lake_root, vault=vault_dir)
    key = vault_dir / f"{lk.config.lake_id}.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(vault_dir.stat().st_mode) == 0o700
    secret_hex = key.read_text().strip()
    for path in lake_root.rglob("*"):
        if path.is_file():
            assert secret_hex.encode() not in path.read_bytes()


def test_init_is_idempotent(lake_root: Path, vault_dir: Path) -> None:
    first = lake.init(lake_root, vault=vault_dir)
    second = lake.init(lake_root, vault=vault_dir)
    assert first.config == second.config
    assert len(list(vault_dir.iterdir())) == 1


def test_vault_inside_lake_is_refused(lake_root: Path) -> None:
    with pytest.raises(VaultError, match="outside the lake"):
        lake.init(lake_root, vault=lake_root / "vault")


def test_missing_vault_is_a_clear_error(lk: lake.Lake, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LAKE_VAULT", raising=False)
    with pytest.raises(VaultError, match="vault=DIR"):
        lk.secret(None)


def test_wrong_vault_is_detected(lk: lake.Lake, tmp_path: Path) -> None:
    other = lake.init(tmp_path / "other-lake", vault=tmp_path / "other-vault")
    # Copy the other lake's key under this lake's id: the fingerprint must not match.
    stolen = tmp_path / "stolen"
    stolen.mkdir(mode=0o700)
    key = stolen / f"{lk.config.lake_id}.key"
    key.write_text((tmp_path / "other-vault" / f"{other.config.lake_id}.key").read_text())
    os.chmod(key, 0o600)
    with pytest.raises(VaultError, match="does not belong"):
        lk.secret(stolen)


def test_permissive_key_file_is_refused(lk: lake.Lake, vault_dir: Path) -> None:
    key = vault_dir / f"{lk.config.lake_id}.key"
    os.chmod(key, 0o644)
    with pytest.raises(VaultError, match="chmod 600"):
        lk.secret(vault_dir)


def test_derived_keys_differ_by_purpose(lk: lake.Lake, vault_dir: Path) -> None:
    secret = Vault(vault_dir).load(lk.config.lake_id)
    assert secret.derive("uid") != secret.derive("patient-id")
    assert len(secret.derive("uid")) == 32
    assert "value" not in repr(secret) or secret.value.hex() not in repr(secret)
