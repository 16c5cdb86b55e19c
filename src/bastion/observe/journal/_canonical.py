"""Canonical JSON and hashing: the same value always gives the same bytes and the same digest."""

from __future__ import annotations

import hashlib
import json
from json.encoder import encode_basestring
from typing import Any


def canonical(value: Any) -> bytes:
    """Sorted keys, no whitespace, UTF-8, no NaN: the bytes a hash is taken over."""
    return canonical_text(value).encode()


def canonical_text(value: Any) -> str:
    """``canonical`` before its UTF-8 encoding."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def canonical_scalar(value: Any) -> str:
    """``canonical_text`` of a value, with a shortcut for the str and int fields of an entry: the
    very functions ``json.dumps`` applies to them (no encoder set up per value)."""
    if type(value) is str:  # not a subclass: json.dumps would treat one the same, but be exact
        return encode_basestring(value)
    if type(value) is int:  # not bool, which is an int json writes as true/false
        return int.__repr__(value)
    return canonical_text(value)


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


GENESIS = "0" * 64
"""The previous hash of a run's first entry."""
