"""A policy decision: what was decided, by which rules, and a sentence a human can read."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

Effect = Literal["allow", "deny", "redact", "require_approval"]
RANK: dict[str, int] = {"allow": 0, "redact": 1, "require_approval": 2, "deny": 3}
"""How effects combine: the highest wins, whatever the order the rules were written in."""


@dataclass(frozen=True, slots=True)
class RateLimitRef:
    """One rate limit a call counts against: its owner (``grant/NAME`` or ``policy/NAME/RULE``),
    whether it counts per agent or per tenant, and its window in seconds."""

    owner: str
    scope: Literal["agent", "tenant"]
    seconds: int


@dataclass(frozen=True, kw_only=True)
class Decision:
    effect: Effect
    reasons: tuple[str, ...]
    """Why, one readable sentence per deciding rule."""
    rule_ids: tuple[str, ...] = ()
    """The rules (``grant/NAME``, ``policy/NAME/RULE``, ``agent/tools``, ...) that decided."""
    egress: tuple[str, ...] = ()
    """For an allowed http.fetch: the hosts the deciding grant allows."""
    grant: str | None = None
    """For a call that goes ahead: the first (by name) of ``grants``, for display."""
    grants: tuple[str, ...] = ()
    """For a call that goes ahead: every grant that covered it, sorted; it counts against each."""
    meta: dict[str, str] = field(default_factory=dict[str, str])
    version: str = ""
    """The version of the compiled policy that decided (``sha256:...``), journaled beside it."""
    redacted: Any = None
    """For ``redact``: the value with what the rules matched replaced (arguments or output)."""
    consumes: tuple[RateLimitRef, ...] = ()
    """For an allowed call: the rate limits it counts against, for the caller's counters."""

    @property
    def allowed(self) -> bool:
        return self.effect == "allow"

    @property
    def sentence(self) -> str:
        """The decision in one line: the effect and every reason."""
        return f"{self.effect}: {'; '.join(self.reasons)}" if self.reasons else self.effect


def deny(reason: str, *rule_ids: str) -> Decision:
    return Decision(effect="deny", reasons=(reason,), rule_ids=rule_ids)


@dataclass(frozen=True, slots=True, order=True)
class Finding:
    """One rule's verdict before they are combined."""

    rule_id: str
    effect: Effect
    reason: str


def combine(
    findings: Iterable[Finding], *, version: str, redacted: Any = None, grant: str | None = None
) -> Decision:
    """The strongest effect among ``findings``, with every rule that reached it (sorted, so the
    order rules were written or evaluated in never shows). No findings is a deny."""
    found = sorted(set(findings))
    if not found:
        return Decision(
            effect="deny", reasons=("no rule allowed this (default deny)",), rule_ids=("default-deny",)
        )
    top = max(RANK[f.effect] for f in found)
    winners = [f for f in found if RANK[f.effect] == top]
    effect = winners[0].effect
    return Decision(
        effect=effect,
        reasons=tuple(f.reason for f in winners),
        rule_ids=tuple(f.rule_id for f in winners),
        version=version,
        redacted=redacted if effect == "redact" else None,
        grant=grant if effect in ("allow", "require_approval") else None,
    )
