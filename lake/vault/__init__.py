"""Key material kept outside the lake."""

from lake.vault._vault import Secret, Vault

__all__ = ["Secret", "Vault"]
