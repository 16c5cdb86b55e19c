"""What-if: re-judge a run's recorded calls under another policy, executing nothing.

The run's counters are replayed as the new policy would have seen them: calls per grant and tool
calls count only the calls *it* allows, rate windows count its allowed calls by their recorded
time (``RecordedCall.at``); tokens, and calls from other runs (``base``), are taken as recorded.
Tool results recorded with a call are inspected too, so a new PII or output rule shows up.
Provenance labels are rebuilt from the recorded results (and the run's input) call by call, as
the gateway labeled them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ._call import CallContext, Counters, ToolInfo
from ._decision import Decision, RateLimitRef
from ._engine import CompiledPolicy
from ._grants import Subject
from ._provenance import DELIVERED, TRUSTED_RULE, ProvenanceIndex


@dataclass(frozen=True, kw_only=True)
class RecordedCall:
    """One journal entry, as what-if needs it."""

    seq: int
    kind: str
    """``tool`` is re-judged; other kinds (time, random, llm) are not policy decisions here."""
    tool: ToolInfo | None
    args: Mapping[str, Any]
    decision: str
    rule_ids: tuple[str, ...]
    subject: Subject
    at: datetime
    tokens: int = 0
    """Model tokens the run had used before this call."""
    response: Any = None
    """The recorded tool result, if any (re-inspected under the new policy)."""
    base: Mapping[RateLimitRef, int] = field(default_factory=dict[RateLimitRef, int])
    """Calls counted against rate limits by other runs at the time (defaults to none)."""
    run_input: Any = None
    """The run's input (the same on every call of a run): provenance labels it ``input``."""


@dataclass(frozen=True, kw_only=True)
class Change:
    seq: int
    tool: str
    what: str
    """``call`` (the decision on the call) or ``output`` (the inspection of its result)."""
    old: str
    new: str
    rule_ids: tuple[str, ...]
    sentence: str

    def to_record(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "tool": self.tool,
            "what": self.what,
            "old": self.old,
            "new": self.new,
            "ruleIds": list(self.rule_ids),
            "sentence": self.sentence,
        }


def rejudge(calls: Sequence[RecordedCall], policy: CompiledPolicy) -> list[Change]:
    """The decisions that would change, in seq order."""
    changes: list[Change] = []
    by_grant: dict[str, int] = {}
    allowed_calls = 0
    times: dict[str, list[float]] = {}
    ordered = sorted(calls, key=lambda c: c.seq)
    labels = ProvenanceIndex()  # rebuilt from the recorded results, as a resumed attempt does
    labels.set_input(ordered[0].run_input if ordered else None)
    for call in ordered:
        if call.kind != "tool" or call.tool is None:
            continue
        now_ts = call.at.timestamp()

        def in_window(
            ref: RateLimitRef, now_ts: float = now_ts, base: Mapping[RateLimitRef, int] = call.base
        ) -> int:
            seen = times.get(ref.owner, [])
            return base.get(ref, 0) + sum(1 for t in seen if now_ts - t < ref.seconds)

        counters = Counters(
            calls_by_grant=dict(by_grant), tool_calls=allowed_calls, tokens=call.tokens, in_window=in_window
        )
        new = policy.decide(
            CallContext(
                subject=call.subject,
                tool=call.tool,
                args=call.args,
                now=call.at,
                counters=counters,
                provenance=labels,
            )
        )
        if call.decision in DELIVERED:  # what the agent was handed, as it was recorded
            labels.add(
                call.response, seq=call.seq, tool=call.tool.name, trusted=TRUSTED_RULE in call.rule_ids
            )
        if new.effect == "allow":
            allowed_calls += 1
            for grant in new.grants:
                by_grant[grant] = by_grant.get(grant, 0) + 1
            for ref in new.consumes:
                times.setdefault(ref.owner, []).append(now_ts)
        if new.effect != call.decision:
            changes.append(_change(call, "call", call.decision, new))
        if call.decision == "allow" and call.response is not None and new.effect == "allow":
            inspected = policy.inspect_output(call.response, where="tool_result", tool=call.tool.name)
            if inspected.effect != "allow":
                changes.append(_change(call, "output", "allow", inspected))
    return changes


def _change(call: RecordedCall, what: str, old: str, new: Decision) -> Change:
    name = call.tool.name if call.tool is not None else "?"
    return Change(
        seq=call.seq,
        tool=name,
        what=what,
        old=old,
        new=new.effect,
        rule_ids=new.rule_ids,
        sentence=f"seq {call.seq} {what} of {name!r}: {old} -> {new.effect} ({'; '.join(new.reasons)})",
    )
