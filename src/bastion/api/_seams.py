"""Time, ids and randomness come through these seams, so that a replay can reproduce a run."""

from __future__ import annotations

import secrets
import uuid
from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, timezone-aware UTC."""
        ...


class IdSource(Protocol):
    def uid(self) -> str:
        """A fresh unique id (UUID text)."""
        ...

    def token(self, nbytes: int) -> str:
        """A fresh URL-safe random token of ``nbytes`` bytes of entropy."""
        ...

    def key_bytes(self, nbytes: int) -> bytes:
        """Fresh random bytes for key material."""
        ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


class RandomIds:
    def uid(self) -> str:
        return str(uuid.uuid4())

    def token(self, nbytes: int) -> str:
        return secrets.token_urlsafe(nbytes)

    def key_bytes(self, nbytes: int) -> bytes:
        return secrets.token_bytes(nbytes)
