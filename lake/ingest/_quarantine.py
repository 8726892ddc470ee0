"""Keeping rejected originals: encrypted with a vault key, so the lake holds no readable PHI."""

from __future__ import annotations

import hashlib
import os

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from lake.store import Location, reused_at, write_at
from lake.vault import Secret

__all__ = ["decrypt", "encrypt", "quarantine_key", "store_rejected"]

_PURPOSE = "quarantine"
_NONCE = 12


def quarantine_key(secret: Secret) -> bytes:
    """The AES-256 key that seals quarantined originals."""
    return secret.derive(_PURPOSE)


def encrypt(data: bytes, key: bytes) -> bytes:
    """``nonce || AES-GCM(data)``."""
    nonce = os.urandom(_NONCE)
    return nonce + AESGCM(key).encrypt(nonce, data, b"imaging-lake quarantine v1")


def decrypt(blob: bytes, key: bytes) -> bytes:
    """Inverse of :func:`encrypt` (raises ``cryptography`` InvalidTag on a wrong key)."""
    return AESGCM(key).decrypt(blob[:_NONCE], blob[_NONCE:], b"imaging-lake quarantine v1")


def store_rejected(location: Location, data: bytes, key: bytes) -> tuple[str, str]:
    """Seal ``data`` below ``<lake>/quarantine``; returns (sha256 hex of data, object key)."""
    digest = hashlib.sha256(data).hexdigest()
    object_key = f"quarantine/{digest}.sealed"
    path = location.join(object_key)
    if not reused_at(location, path, lambda: encrypt(data, key)):  # refreshed for gc's grace
        # Not fsynced one by one (that took a third of the time of quarantining): the batch
        # commit flushes every file of the batch to disk before its rows name them.
        write_at(location, path, encrypt(data, key), fsync=False)
    return digest, object_key
