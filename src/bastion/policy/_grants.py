"""Who is calling, as policy sees it, and the trust tiers. Grants themselves are compiled with the
rest of a namespace's policy (``_compile``) and decided by ``CompiledPolicy.decide``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from bastion.api import TIERS


@dataclass(frozen=True, kw_only=True)
class Subject:
    """The agent making the call, as policy sees it."""

    name: str
    labels: Mapping[str, str] = field(default_factory=dict[str, str])
    tier: str = "T0"
    tools: Sequence[str] = ()
    """The tools the Agent resource lists."""
    max_tool_calls: int | None = None
    """``spec.limits.toolCalls``: tool calls per run."""
    max_tokens: int | None = None
    """``spec.limits.tokens``: model tokens per run."""
    key: str = field(init=False, repr=False, compare=False)
    """Everything a decision depends on, as one string (its hash is computed once): compiled
    policies cache their plans by it."""

    def __post_init__(self) -> None:
        key = repr(
            (
                self.name,
                tuple(sorted(self.labels.items())),
                self.tier,
                tuple(sorted(self.tools)),
                self.max_tool_calls,
                self.max_tokens,
            )
        )
        object.__setattr__(self, "key", key)

    @classmethod
    def from_manifest(cls, agent: Mapping[str, Any]) -> Subject:
        """The subject an Agent manifest (camelCase, as stored) describes."""
        spec: Mapping[str, Any] = agent.get("spec", {})
        limits: Mapping[str, Any] = spec.get("limits", {}) or {}
        return cls(
            name=agent["metadata"]["name"],
            labels=dict(agent["metadata"].get("labels", {}) or {}),
            tier=spec.get("tier", "T0"),
            tools=tuple(spec.get("tools", ()) or ()),
            max_tool_calls=limits.get("toolCalls"),
            max_tokens=limits.get("tokens"),
        )


def tier_rank(tier: str) -> int:
    """0 for T0 ... 4 for T4; -1 for anything else (below every tier)."""
    return TIERS.index(tier) if tier in TIERS else -1
