"""What a decision is about: the call, its subject and tool, and the counters the caller keeps.

Policy reads no clock and keeps no counts: the caller says what time it is and how many calls
and tokens the run has used, and answers "how many calls in the last N seconds" for the rate
limits a compiled policy declares (``Decision.consumes`` names the limits an allowed call
counts against, so the caller knows what to record).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ._decision import RateLimitRef
from ._grants import Subject
from ._provenance import ProvenanceIndex

WindowCount = Callable[[RateLimitRef], int]
"""Calls already counted against a rate limit within its window (per agent or per tenant)."""


def _no_calls(_: RateLimitRef) -> int:
    return 0


@dataclass(frozen=True, kw_only=True, slots=True)
class ToolInfo:
    """The tool a call names, as the namespace's Tool resource describes it."""

    name: str
    exists: bool = True
    min_tier: str = "T0"
    builtin: str | None = None
    """For ``implementation.type: builtin``, the builtin (``http.fetch`` gets egress checks)."""
    url: str | None = None
    """For ``implementation.type: http``, the URL the Tool requests: judged by the egress rules
    like ``http.fetch``'s ``url`` argument (its arguments only add a query, never a host)."""
    effect: str | None = None
    """``spec.effect``: ``write``, ``external`` or ``payment`` for a consequential tool."""
    key: str = field(init=False, repr=False, compare=False)
    """Everything a decision depends on, as one string (its hash is computed once)."""

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "key", repr((self.name, self.exists, self.min_tier, self.builtin, self.url, self.effect))
        )

    @classmethod
    def from_manifest(cls, name: str, manifest: Mapping[str, Any] | None) -> ToolInfo:
        """The tool ``name`` as its manifest (camelCase, as stored) describes it; ``None`` if absent."""
        if manifest is None:
            return cls(name=name, exists=False)
        spec: Mapping[str, Any] = manifest.get("spec", {})
        impl: Mapping[str, Any] = spec.get("implementation", {}) or {}
        return cls(
            name=name,
            exists=True,
            min_tier=spec.get("minTier", "T0"),
            builtin=impl.get("name") if impl.get("type") == "builtin" else None,
            url=str(impl.get("url", "")) if impl.get("type") == "http" else None,
            effect=spec.get("effect"),
        )

    @property
    def fetches(self) -> bool:
        return self.builtin == "http.fetch" or (self.builtin is None and self.name == "http.fetch")


@dataclass(frozen=True, kw_only=True, slots=True)
class Counters:
    """What the run has used so far, before this call."""

    calls_by_grant: Mapping[str, int] = field(default_factory=dict[str, int])
    """Allowed calls per grant this run (``maxCalls``)."""
    tool_calls: int = 0
    """Allowed tool calls this run."""
    tokens: int = 0
    """Model tokens this run."""
    in_window: WindowCount = _no_calls
    """Calls already counted against a rate limit in its window."""


NO_COUNTERS = Counters()


@dataclass(slots=True, kw_only=True)
class CallContext:
    """One tool call to decide. Not frozen (it is built per call, and frozen dataclasses are
    slow to build); treat it as immutable."""

    subject: Subject
    tool: ToolInfo
    args: Mapping[str, Any]
    now: datetime
    counters: Counters = NO_COUNTERS
    provenance: ProvenanceIndex | None = None
    """Where the values the run's agent was handed came from; None: not known (a requirement
    on provenance then denies)."""
