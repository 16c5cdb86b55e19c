"""Envelope encryption with AES-256-GCM.

Each sealed value gets its own random data key; the data key is wrapped by the master key (the
key-encryption key). Rotating the master key then means re-wrapping small data keys, and a
KMS-style provider only ever sees data keys. The associated data binds a ciphertext to the row it
belongs to, so a sealed value copied onto another secret does not decrypt there.

Layout of a sealed value (all lengths fixed):
    version (1) | key id (8) | wrap nonce (12) | wrapped data key (32 + 16) | nonce (12) | ciphertext+tag
"""

from __future__ import annotations

import hashlib
import hmac
import os
import stat
from pathlib import Path
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from bastion.api import IdSource, RandomIds
from bastion.errors import ServerError, UserError

_VERSION = 1
_KEY_ID_LEN = 8
_NONCE_LEN = 12
_WRAPPED_LEN = 32 + 16
MASTER_KEY_BYTES = 32


class KeyProvider(Protocol):
    """Wraps and unwraps data keys. A KMS client implements this in production."""

    @property
    def key_id(self) -> bytes:
        """Eight bytes naming the key-encryption key, stored with every sealed value."""
        ...

    def wrap(self, data_key: bytes, nonce: bytes, aad: bytes) -> bytes: ...

    def unwrap(self, key_id: bytes, wrapped: bytes, nonce: bytes, aad: bytes) -> bytes: ...

    def fingerprint(self, value: bytes) -> str:
        """A keyed digest of ``value``: tells whether two secret values are equal, and nothing else."""
        ...


class LocalKeyProvider:
    """A master key held in memory (read from a file or configuration)."""

    def __init__(self, master_key: bytes) -> None:
        if len(master_key) != MASTER_KEY_BYTES:
            raise UserError(
                f"the master key must be {MASTER_KEY_BYTES} bytes, got {len(master_key)}",
                field="master_key",
                hint="generate one with `python -c 'import secrets; print(secrets.token_hex(32))'`",
            )
        self._aead = AESGCM(master_key)
        self._mac_key = hashlib.sha256(b"bastion-fingerprint\x00" + master_key).digest()
        self._key_id = hashlib.sha256(b"bastion-key-id\x00" + master_key).digest()[:_KEY_ID_LEN]

    @property
    def key_id(self) -> bytes:
        return self._key_id

    def wrap(self, data_key: bytes, nonce: bytes, aad: bytes) -> bytes:
        return self._aead.encrypt(nonce, data_key, aad)

    def unwrap(self, key_id: bytes, wrapped: bytes, nonce: bytes, aad: bytes) -> bytes:
        if key_id != self._key_id:
            raise ServerError("a secret was sealed with another master key than the one configured")
        return self._aead.decrypt(nonce, wrapped, aad)

    def fingerprint(self, value: bytes) -> str:
        return hmac.new(self._mac_key, value, hashlib.sha256).hexdigest()


class Sealer:
    """Seals and opens secret values with envelope encryption."""

    def __init__(self, keys: KeyProvider, ids: IdSource | None = None) -> None:
        self._keys = keys
        self._ids = ids or RandomIds()

    def fingerprint(self, value: bytes) -> str:
        return self._keys.fingerprint(value)

    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        data_key = self._ids.key_bytes(32)
        wrap_nonce = self._ids.key_bytes(_NONCE_LEN)
        nonce = self._ids.key_bytes(_NONCE_LEN)
        wrapped = self._keys.wrap(data_key, wrap_nonce, aad)
        ciphertext = AESGCM(data_key).encrypt(nonce, plaintext, aad)
        return bytes([_VERSION]) + self._keys.key_id + wrap_nonce + wrapped + nonce + ciphertext

    def open(self, sealed: bytes, aad: bytes) -> bytes:
        """Decrypt a sealed value.

        Raises:
            ServerError: the value was altered, moved to another row, or sealed under another key.
        """
        header = 1 + _KEY_ID_LEN + _NONCE_LEN + _WRAPPED_LEN + _NONCE_LEN
        if len(sealed) < header + 16 or sealed[0] != _VERSION:
            raise ServerError("a sealed secret is malformed")
        pos = 1
        key_id = sealed[pos : pos + _KEY_ID_LEN]
        pos += _KEY_ID_LEN
        wrap_nonce = sealed[pos : pos + _NONCE_LEN]
        pos += _NONCE_LEN
        wrapped = sealed[pos : pos + _WRAPPED_LEN]
        pos += _WRAPPED_LEN
        nonce = sealed[pos : pos + _NONCE_LEN]
        pos += _NONCE_LEN
        try:
            data_key = self._keys.unwrap(key_id, wrapped, wrap_nonce, aad)
            return AESGCM(data_key).decrypt(nonce, sealed[pos:], aad)
        except InvalidTag:
            raise ServerError("a sealed secret failed authentication (altered or moved)") from None


def load_or_create_master_key(path: Path, ids: IdSource | None = None) -> bytes:
    """Read the master key file, creating it (mode 0600, 32 random bytes as hex) on first start.

    Raises:
        UserError: the file exists but is readable by others, or does not hold a 32-byte hex key.
    """
    ids = ids or RandomIds()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "w") as handle:
            handle.write(ids.key_bytes(MASTER_KEY_BYTES).hex() + "\n")
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise UserError(
            f"master key file {str(path)!r} is readable by other users (mode {mode:o})",
            field="master_key_file",
            hint=f"run `chmod 600 {path}`",
        )
    return parse_master_key(path.read_text().strip(), origin=str(path))


def parse_master_key(text: str, origin: str = "configuration") -> bytes:
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) != MASTER_KEY_BYTES:
        raise UserError(
            f"the master key from {origin} is not {MASTER_KEY_BYTES} bytes of hex",
            field="master_key",
            hint="use 64 hex digits, e.g. from `python -c 'import secrets; print(secrets.token_hex(32))'`",
        )
    return key
