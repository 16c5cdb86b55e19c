"""What the gateway keeps for policy: compiled policies by their inputs, and rate-limit windows.

Compiling a namespace's Policies and ToolGrants (patterns, JSON Schemas, Rego) costs milliseconds,
a decision microseconds; so a compiled policy is kept per exact set of inputs (kind, name and
resourceVersion of each manifest) and shared by every session that sees the same set. Rate limits
count allowed calls per agent and per tenant in sliding windows held by this process (DESIGN §5:
in-process by default).
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from collections.abc import Sequence
from typing import Any

from bastion.policy import CompiledPolicy, RateLimitRef, compile_policy

CACHE_SIZE = 64


class PolicyCache:
    def __init__(self, size: int = CACHE_SIZE) -> None:
        self._size = size
        self._lock = threading.Lock()
        self._compiled: OrderedDict[tuple[Any, ...], CompiledPolicy] = OrderedDict()

    def get(self, policies: Sequence[dict[str, Any]], grants: Sequence[dict[str, Any]]) -> CompiledPolicy:
        key = tuple(
            sorted(
                (m["kind"], m["metadata"]["name"], str(m["metadata"].get("resourceVersion", "")))
                for m in (*policies, *grants)
            )
        )
        with self._lock:
            found = self._compiled.get(key)
            if found is not None:
                self._compiled.move_to_end(key)
                return found
        # Outside the lock: another session may compile the same set meanwhile; both results are equal.
        compiled = compile_policy(policies, grants)
        with self._lock:
            self._compiled[key] = compiled
            while len(self._compiled) > self._size:
                self._compiled.popitem(last=False)
        return compiled


class RateWindows:
    """Timestamps of allowed calls per (tenant, agent or tenant-wide, limit)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: dict[tuple[str, str, str], deque[float]] = {}

    def _key(self, ref: RateLimitRef, tenant: str, agent: str) -> tuple[str, str, str]:
        return (tenant, agent if ref.scope == "agent" else "", ref.owner)

    def count(self, ref: RateLimitRef, *, tenant: str, agent: str, now: float) -> int:
        with self._lock:
            seen = self._seen.get(self._key(ref, tenant, agent))
            if not seen:
                return 0
            while seen and now - seen[0] >= ref.seconds:
                seen.popleft()
            return len(seen)

    def record(self, refs: Sequence[RateLimitRef], *, tenant: str, agent: str, now: float) -> None:
        with self._lock:
            for ref in refs:
                self._seen.setdefault(self._key(ref, tenant, agent), deque()).append(now)


__all__ = ["PolicyCache", "RateWindows"]
