"""Secrets: envelope encryption (AES-256-GCM) and the master key (DESIGN §3, "Secrets")."""

from ._crypto import (
    MASTER_KEY_BYTES,
    KeyProvider,
    LocalKeyProvider,
    Sealer,
    load_or_create_master_key,
    parse_master_key,
)

__all__ = [
    "MASTER_KEY_BYTES",
    "KeyProvider",
    "LocalKeyProvider",
    "Sealer",
    "load_or_create_master_key",
    "parse_master_key",
]
