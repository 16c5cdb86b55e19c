"""Default-deny tool authorization by ToolGrant (DESIGN invariant 3). Pure: no I/O, no clock.

A call is allowed only if the agent lists the tool, the tool exists, and some unexpired grant in
the run's namespace names the tool and a subject matching the agent (by name, labels or tier),
with calls left under its ``maxCalls`` and the agent at or above its ``minTier``. Anything else,
including an error while deciding, is a deny.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ._decision import Decision, deny

TIERS = ("T0", "T1", "T2", "T3", "T4")


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


@dataclass(frozen=True, kw_only=True)
class Grant:
    name: str
    agents: Sequence[str] = ()
    labels: Mapping[str, str] = field(default_factory=dict[str, str])
    tiers: Sequence[str] = ()
    tools: Sequence[str] = ()
    max_calls: int | None = None
    min_tier: str = "T0"
    expires_at: datetime | None = None
    egress: Sequence[str] = ()
    require_approval: bool = False
    approval_timeout_seconds: int = 86_400

    def names(self, subject: Subject) -> bool:
        by_labels = bool(self.labels) and all(subject.labels.get(k) == v for k, v in self.labels.items())
        return subject.name in self.agents or by_labels or subject.tier in self.tiers


def tier_rank(tier: str) -> int:
    """0 for T0 ... 4 for T4; -1 for anything else (below every tier)."""
    return TIERS.index(tier) if tier in TIERS else -1


def _tier_rank(tier: str) -> int:
    return TIERS.index(tier) if tier in TIERS else -1


def decide_tool_call(
    subject: Subject,
    tool: str,
    *,
    tool_exists: bool,
    tool_min_tier: str = "T0",
    grants: Sequence[Grant],
    calls_by_grant: Mapping[str, int],
    now: datetime,
) -> Decision:
    """Decide one tool call. ``calls_by_grant`` counts this run's earlier allowed calls per grant."""
    try:
        return _decide(subject, tool, tool_exists, tool_min_tier, grants, calls_by_grant, now)
    except Exception as exc:  # fail closed: an error while deciding is a deny, never an allow
        return deny(f"the policy could not decide ({type(exc).__name__}); denied", "policy/error")


def _decide(
    subject: Subject,
    tool: str,
    tool_exists: bool,
    tool_min_tier: str,
    grants: Sequence[Grant],
    calls_by_grant: Mapping[str, int],
    now: datetime,
) -> Decision:
    if tool not in subject.tools:
        return deny(f"agent {subject.name!r} does not list tool {tool!r} in spec.tools", "agent/tools")
    if not tool_exists:
        return deny(f"no tool {tool!r} exists in this namespace", "tool/missing")
    if _tier_rank(subject.tier) < _tier_rank(tool_min_tier):
        return deny(
            f"tool {tool!r} needs tier {tool_min_tier}; agent {subject.name!r} is {subject.tier}",
            "tool/min-tier",
        )
    refusals: list[tuple[str, str]] = []
    for grant in sorted(grants, key=lambda g: g.name):
        if tool not in grant.tools or not grant.names(subject):
            continue
        rule = f"grant/{grant.name}"
        if grant.expires_at is not None and now >= grant.expires_at:
            refusals.append((f"grant {grant.name!r} expired at {grant.expires_at.isoformat()}", rule))
            continue
        if _tier_rank(subject.tier) < _tier_rank(grant.min_tier):
            refusals.append((f"grant {grant.name!r} needs tier {grant.min_tier}", rule))
            continue
        used = calls_by_grant.get(grant.name, 0)
        if grant.max_calls is not None and used >= grant.max_calls:
            refusals.append(
                (f"grant {grant.name!r} allows {grant.max_calls} calls per run; all are used", rule)
            )
            continue
        if grant.require_approval:
            return Decision(
                effect="require_approval",
                reasons=(f"grant {grant.name!r} lets {subject.name!r} call {tool!r} once a human approves",),
                rule_ids=(rule,),
                egress=tuple(grant.egress),
                grant=grant.name,
                meta={"approval_timeout_seconds": str(grant.approval_timeout_seconds)},
            )
        return Decision(
            effect="allow",
            reasons=(f"grant {grant.name!r} lets {subject.name!r} call {tool!r}",),
            rule_ids=(rule,),
            egress=tuple(grant.egress),
            grant=grant.name,
        )
    if refusals:
        return Decision(
            effect="deny", reasons=tuple(r for r, _ in refusals), rule_ids=tuple(i for _, i in refusals)
        )
    return deny(f"no ToolGrant lets agent {subject.name!r} call {tool!r} (default deny)", "default-deny")
