"""Secrets: envelope encryption (AES-256-GCM), the master key (DESIGN §3, "Secrets"), and the
search for a secret a response echoes back transformed (``find_echo``)."""

from ._crypto import (
    MASTER_KEY_BYTES,
    KeyProvider,
    LocalKeyProvider,
    Sealer,
    load_or_create_master_key,
    parse_master_key,
)
from ._echo import Echo, find_echo

__all__ = [
    "MASTER_KEY_BYTES",
    "Echo",
    "KeyProvider",
    "LocalKeyProvider",
    "Sealer",
    "find_echo",
    "load_or_create_master_key",
    "parse_master_key",
]
