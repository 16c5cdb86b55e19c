"""Canonical JSON and hashing: the same value always gives the same bytes and the same digest."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def canonical(value: Any) -> bytes:
    """Sorted keys, no whitespace, UTF-8, no NaN: the bytes a hash is taken over."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode()


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


GENESIS = "0" * 64
"""The previous hash of a run's first entry."""
