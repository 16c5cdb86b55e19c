"""A policy decision: what was decided, by which rules, and a sentence a human can read."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Effect = Literal["allow", "deny", "redact", "require_approval"]


@dataclass(frozen=True, kw_only=True)
class Decision:
    effect: Effect
    reasons: tuple[str, ...]
    """Why, one readable sentence per deciding rule."""
    rule_ids: tuple[str, ...] = ()
    """The rules (``grant/NAME``, ``agent/tools``, ...) that decided."""
    egress: tuple[str, ...] = ()
    """For an allowed http.fetch: the hosts the deciding grant allows."""
    grant: str | None = None
    meta: dict[str, str] = field(default_factory=dict[str, str])

    @property
    def allowed(self) -> bool:
        return self.effect == "allow"


def deny(reason: str, *rule_ids: str) -> Decision:
    return Decision(effect="deny", reasons=(reason,), rule_ids=rule_ids)
