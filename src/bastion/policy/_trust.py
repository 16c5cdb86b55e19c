"""Trust tiers and error budgets, judged from facts the caller gives (pure: it persists nothing).

* ``check_error_budget(errors, violations, budget)`` says whether a run has exhausted its
  agent's error budget: more errors than ``maxErrors``, the same error more than ``maxRepeats``
  times, or (with ``revokeOnViolation``) any procedure violation.
* ``evaluate_trust(history, settings, tier=...)`` says what should happen to an agent's tier
  after its latest run: revoke or demote when that run exhausted its budget and the budget says
  ``onExhausted: revokeAgent`` (by default an exhausted budget ends only its run), promote one tier
  after ``promoteAfter`` consecutive compliant runs at the current tier (up to ``maxTier``),
  else nothing. The caller records the change (journal, Agent status) and can reverse it.
* ``Handoff`` is what a revoked run leaves for the next agent: what was tried, where it
  stopped, what blocks, what to do next.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, cast

from ._grants import TIERS, tier_rank


@dataclass(frozen=True, kw_only=True)
class ErrorBudget:
    max_errors: int = 10
    max_repeats: int = 3
    revoke_on_violation: bool = True
    on_exhausted: Literal["endRun", "revokeAgent"] = "endRun"
    """``endRun``: an exhausted budget ends that run only; ``revokeAgent``: the agent's trust
    changes too (revoked, or demoted per the Policies' ``trust.onBudgetExceeded``)."""

    @classmethod
    def from_manifest(cls, agent: Mapping[str, Any]) -> ErrorBudget:
        """The budget an Agent manifest (camelCase) declares, defaults filled in."""
        spec = cast(Mapping[str, Any], agent.get("spec") or {})
        raw = cast(Mapping[str, Any], spec.get("errorBudget") or {})
        return cls(
            max_errors=int(raw.get("maxErrors", 10)),
            max_repeats=int(raw.get("maxRepeats", 3)),
            revoke_on_violation=bool(raw.get("revokeOnViolation", True)),
            on_exhausted="revokeAgent" if raw.get("onExhausted") == "revokeAgent" else "endRun",
        )


@dataclass(frozen=True, kw_only=True)
class TrustSettings:
    promote_after: int | None = None
    """Consecutive compliant runs at a tier before promotion; ``None``: no automatic promotion."""
    max_tier: str = "T2"
    on_budget_exceeded: Literal["revoke", "demote"] = "revoke"
    budget: ErrorBudget = field(default_factory=ErrorBudget)

    @classmethod
    def from_manifests(
        cls, agent: Mapping[str, Any], trust: Mapping[str, Mapping[str, Any]]
    ) -> TrustSettings:
        """Settings for ``agent`` from its manifest and the ``spec.trust`` of each Policy
        (``CompiledPolicy.trust``). Several policies combine to the most cautious: the largest
        ``promoteAfter``, the lowest ``maxTier``, ``revoke`` over ``demote``."""
        after = [int(t["promoteAfter"]) for t in trust.values() if t.get("promoteAfter") is not None]
        tiers = [str(t.get("maxTier", "T2")) for t in trust.values()]
        actions = {str(t.get("onBudgetExceeded", "revoke")) for t in trust.values()}
        return cls(
            promote_after=max(after) if after and len(after) == len(trust) else None,
            max_tier=min(tiers, key=tier_rank) if tiers else "T2",
            on_budget_exceeded="demote" if actions == {"demote"} else "revoke",
            budget=ErrorBudget.from_manifest(agent),
        )


@dataclass(frozen=True, kw_only=True)
class RunOutcome:
    """One finished (or revoked) run of an agent, as trust sees it."""

    run_id: str
    tier: str
    """The agent's tier during the run."""
    succeeded: bool
    errors: Sequence[str] = ()
    """A signature per error (the caller's choice, e.g. ``tool:fs.read:not_found``)."""
    violations: Sequence[str] = ()
    """Procedure violations: denied calls, skipped phases, ... one sentence each."""


@dataclass(frozen=True, kw_only=True)
class BudgetVerdict:
    rule_id: str
    """``errorBudget.maxErrors``, ``errorBudget.maxRepeats`` or ``errorBudget.violation``."""
    reason: str


@dataclass(frozen=True, kw_only=True)
class TrustChange:
    action: Literal["promote", "demote", "revoke"]
    from_tier: str
    to_tier: str | None
    """The new tier; ``None`` for a revocation."""
    reason: str
    rule_id: str
    evidence: tuple[str, ...] = ()
    """The run ids that justify the change."""

    def to_record(self) -> dict[str, Any]:
        return asdict(self) | {"evidence": list(self.evidence)}


def check_error_budget(
    errors: Sequence[str], violations: Sequence[str], budget: ErrorBudget
) -> BudgetVerdict | None:
    """Whether a run's errors and violations so far exhaust ``budget`` (``None``: not yet)."""
    if violations and budget.revoke_on_violation:
        return BudgetVerdict(rule_id="errorBudget.violation", reason=f"procedure violation: {violations[0]}")
    if len(errors) > budget.max_errors:
        return BudgetVerdict(
            rule_id="errorBudget.maxErrors",
            reason=f"{len(errors)} errors in one run; the budget allows {budget.max_errors}",
        )
    if errors:
        error, count = sorted(Counter(errors).items(), key=lambda kv: (-kv[1], kv[0]))[0]
        if count > budget.max_repeats:
            return BudgetVerdict(
                rule_id="errorBudget.maxRepeats",
                reason=f"the error {error!r} happened {count} times; the budget allows {budget.max_repeats}",
            )
    return None


def evaluate_trust(
    history: Sequence[RunOutcome], settings: TrustSettings, *, tier: str
) -> TrustChange | None:
    """What the latest run in ``history`` (oldest first) does to an agent now at ``tier``."""
    if not history:
        return None
    last = history[-1]
    verdict = check_error_budget(last.errors, last.violations, settings.budget)
    if verdict is not None and settings.budget.on_exhausted == "endRun":
        return None  # the run ended, and that is all: the agent's trust is its own policy choice
    if verdict is not None:
        if settings.on_budget_exceeded == "demote" and tier_rank(tier) > 0:
            lower = TIERS[tier_rank(tier) - 1]
            return TrustChange(
                action="demote",
                from_tier=tier,
                to_tier=lower,
                reason=f"error budget exceeded: {verdict.reason}",
                rule_id=verdict.rule_id,
                evidence=(last.run_id,),
            )
        return TrustChange(
            action="revoke",
            from_tier=tier,
            to_tier=None,
            reason=f"error budget exceeded: {verdict.reason}",
            rule_id=verdict.rule_id,
            evidence=(last.run_id,),
        )
    needed = settings.promote_after
    if needed is None or tier_rank(tier) < 0 or tier_rank(tier) >= tier_rank(settings.max_tier):
        return None
    streak: list[str] = []
    for outcome in reversed(history):
        if outcome.tier != tier or not _compliant(outcome, settings.budget):
            break
        streak.append(outcome.run_id)
    if len(streak) < needed:
        return None
    higher = TIERS[tier_rank(tier) + 1]
    return TrustChange(
        action="promote",
        from_tier=tier,
        to_tier=higher,
        reason=f"{needed} consecutive compliant runs at {tier}",
        rule_id="trust.promoteAfter",
        evidence=tuple(reversed(streak[:needed])),
    )


def _compliant(outcome: RunOutcome, budget: ErrorBudget) -> bool:
    return (
        outcome.succeeded
        and not outcome.violations
        and check_error_budget(outcome.errors, (), budget) is None
    )


@dataclass(frozen=True, kw_only=True)
class Attempted:
    """One thing the run tried."""

    seq: int
    what: str
    """e.g. ``tool fs.read`` or ``llm chat``."""
    outcome: str
    """``ok``, ``denied: ...``, ``failed: ...``."""


@dataclass(frozen=True, kw_only=True)
class Handoff:
    """What a revoked (or stuck) run leaves in its record for the agent or person who takes over."""

    run_id: str
    agent: str
    reason: str
    """Why the run ended here (the trust change or budget verdict)."""
    tried: tuple[Attempted, ...]
    last_phase: str | None
    last_step: int
    """The seq of the last journaled call."""
    blocks: tuple[str, ...]
    """What stands in the way: the denials and errors that stopped progress."""
    next_steps: tuple[str, ...]
    """What the next agent must do."""

    def to_record(self) -> dict[str, Any]:
        return {
            "runId": self.run_id,
            "agent": self.agent,
            "reason": self.reason,
            "tried": [asdict(t) for t in self.tried],
            "lastPhase": self.last_phase,
            "lastStep": self.last_step,
            "blocks": list(self.blocks),
            "nextSteps": list(self.next_steps),
        }


def build_handoff(
    *,
    run_id: str,
    agent: str,
    reason: str,
    tried: Sequence[Attempted],
    last_phase: str | None = None,
    goal: str | None = None,
    max_items: int = 20,
) -> Handoff:
    """A handoff from a run's facts: the last ``max_items`` attempts, what blocked (denials and
    failures, most frequent first), and next steps derived from them."""
    blocked = [t for t in tried if t.outcome != "ok"]
    counts = Counter(t.outcome for t in blocked)
    blocks = tuple(f"{outcome} (x{n})" if n > 1 else outcome for outcome, n in counts.most_common(5))
    steps: list[str] = []
    if goal:
        steps.append(f"continue the task: {goal}")
    if any(t.outcome.startswith("denied") for t in blocked):
        steps.append("do not repeat the denied calls: ask an operator for a grant or take another route")
    if any(t.outcome.startswith("failed") for t in blocked):
        steps.append("find out why the failing calls fail before retrying them")
    last_ok = next((t for t in reversed(tried) if t.outcome == "ok"), None)
    if last_ok is not None:
        steps.append(f"resume after step {last_ok.seq} ({last_ok.what}), the last one that worked")
    else:
        steps.append("start from the beginning: no step succeeded")
    return Handoff(
        run_id=run_id,
        agent=agent,
        reason=reason,
        tried=tuple(tried[-max_items:]),
        last_phase=last_phase,
        last_step=tried[-1].seq if tried else 0,
        blocks=blocks,
        next_steps=tuple(steps),
    )
