"""Trust tiers, error budgets, handoffs and what-if: pure judgements over given facts."""

from __future__ import annotations

from datetime import timedelta

from bastion.policy import (
    Attempted,
    ErrorBudget,
    RecordedCall,
    RunOutcome,
    ToolInfo,
    TrustSettings,
    build_handoff,
    check_error_budget,
    compile_policy,
    evaluate_trust,
    rejudge,
)

from ._policy import BOT, NOW, blocking, grant, policy

SETTINGS = TrustSettings(promote_after=3, max_tier="T2")


def ok(run: str, tier: str = "T0") -> RunOutcome:
    return RunOutcome(run_id=run, tier=tier, succeeded=True)


def test_promotion_after_n_consecutive_compliant_runs_at_the_tier() -> None:
    assert evaluate_trust([ok("r1"), ok("r2")], SETTINGS, tier="T0") is None
    change = evaluate_trust([ok("r1"), ok("r2"), ok("r3")], SETTINGS, tier="T0")
    assert change is not None and change.action == "promote"
    assert (change.from_tier, change.to_tier, change.evidence) == ("T0", "T1", ("r1", "r2", "r3"))


def test_a_failed_run_or_runs_at_another_tier_break_the_streak() -> None:
    failed = RunOutcome(run_id="r2", tier="T0", succeeded=False)
    assert evaluate_trust([ok("r1"), failed, ok("r3"), ok("r4")], SETTINGS, tier="T0") is None
    # After a promotion the count starts again at the new tier.
    assert evaluate_trust([ok("r1"), ok("r2"), ok("r3"), ok("r4", "T1")], SETTINGS, tier="T1") is None


def test_promotion_stops_at_the_ceiling_and_is_off_by_default() -> None:
    runs = [ok(f"r{i}", "T2") for i in range(5)]
    assert evaluate_trust(runs, SETTINGS, tier="T2") is None
    assert evaluate_trust([ok(f"r{i}") for i in range(50)], TrustSettings(), tier="T0") is None


def test_error_budgets_total_repeats_and_violations() -> None:
    budget = ErrorBudget(max_errors=3, max_repeats=2)
    assert check_error_budget(["a", "b", "c"], [], budget) is None
    total = check_error_budget(["a", "b", "c", "d"], [], budget)
    assert total is not None and total.rule_id == "errorBudget.maxErrors"
    repeats = check_error_budget(["a", "a", "a"], [], budget)
    assert repeats is not None and repeats.rule_id == "errorBudget.maxRepeats" and "'a'" in repeats.reason
    violation = check_error_budget([], ["called fs.write before PLAN"], budget)
    assert violation is not None and violation.rule_id == "errorBudget.violation"
    lenient = ErrorBudget(revoke_on_violation=False)
    assert check_error_budget([], ["x"], lenient) is None


def test_an_exhausted_budget_ends_the_run_and_revokes_or_demotes_only_when_told() -> None:
    bad = RunOutcome(run_id="r9", tier="T2", succeeded=False, errors=["e"] * 5)
    assert evaluate_trust([ok("r1", "T2"), bad], TrustSettings(), tier="T2") is None, "endRun by default"
    assert evaluate_trust([bad], TrustSettings(on_budget_exceeded="demote"), tier="T2") is None
    revoking = ErrorBudget(max_repeats=3, on_exhausted="revokeAgent")
    revoke = evaluate_trust([ok("r1", "T2"), bad], TrustSettings(budget=revoking), tier="T2")
    assert revoke is not None and revoke.action == "revoke" and revoke.to_tier is None
    assert revoke.evidence == ("r9",)
    demote = evaluate_trust([bad], TrustSettings(on_budget_exceeded="demote", budget=revoking), tier="T2")
    assert demote is not None and (demote.action, demote.to_tier) == ("demote", "T1")
    # Nor does an exhausted budget count as compliant: it never earns a promotion.
    eager = TrustSettings(promote_after=1, max_tier="T3")
    assert evaluate_trust([bad], eager, tier="T2") is None


def test_on_exhausted_comes_from_the_agents_error_budget() -> None:
    def budget(raw: dict[str, object]) -> ErrorBudget:
        return ErrorBudget.from_manifest({"metadata": {"name": "bot"}, "spec": {"errorBudget": raw}})

    assert budget({}).on_exhausted == "endRun"
    assert budget({"onExhausted": "revokeAgent"}).on_exhausted == "revokeAgent"


def test_settings_come_from_the_agent_and_the_most_cautious_policy() -> None:
    agent = {"metadata": {"name": "bot"}, "spec": {"errorBudget": {"maxErrors": 4}}}
    cp = compile_policy(
        [
            policy("a", trust={"promoteAfter": 5, "maxTier": "T3"}),
            policy("b", trust={"promoteAfter": 10, "maxTier": "T1"}),
        ],
        [],
    )
    settings = TrustSettings.from_manifests(agent, cp.trust)
    assert (settings.promote_after, settings.max_tier, settings.budget.max_errors) == (10, "T1", 4)


def test_a_handoff_says_what_was_tried_what_blocks_and_what_next() -> None:
    tried = [
        Attempted(seq=1, what="tool kb.search", outcome="ok"),
        Attempted(seq=2, what="tool fs.write", outcome="denied: no grant"),
        Attempted(seq=3, what="tool fs.write", outcome="denied: no grant"),
    ]
    handoff = build_handoff(
        run_id="run-1",
        agent="bot",
        reason="error budget exceeded",
        tried=tried,
        last_phase="EXECUTE",
        goal="file the report",
    )
    record = handoff.to_record()
    assert record["lastStep"] == 3 and record["lastPhase"] == "EXECUTE"
    assert record["blocks"] == ["denied: no grant (x2)"]
    assert any("denied calls" in s for s in record["nextSteps"])
    assert any("step 1" in s for s in record["nextSteps"])
    assert record["nextSteps"][0] == "continue the task: file the report"


def _recorded(
    seq: int, args: dict[str, object], decision: str = "allow", response: object = None
) -> RecordedCall:
    return RecordedCall(
        seq=seq,
        kind="tool",
        tool=ToolInfo(name="kb.search"),
        args=args,
        decision=decision,
        rule_ids=("grant/g",),
        subject=BOT,
        at=NOW + timedelta(seconds=seq),
        response=response,
    )


def test_what_if_lists_only_the_decisions_that_would_change() -> None:
    calls = [
        _recorded(1, {"q": "hello"}),
        _recorded(2, {"q": "DROP\tTABLE x"}),
        _recorded(3, {"q": "fine"}, response="mail me at a.b@example.com"),
        RecordedCall(
            seq=4, kind="time", tool=None, args={}, decision="allow", rule_ids=(), subject=BOT, at=NOW
        ),
    ]
    stricter = compile_policy(
        [blocking("drop table"), policy("pii", pii="redact")], [grant("g", ["kb.search"])]
    )
    changes = rejudge(calls, stricter)
    assert [(c.seq, c.what, c.old, c.new) for c in changes] == [
        (2, "call", "allow", "deny"),
        (3, "output", "allow", "redact"),
    ]
    assert changes[0].rule_ids == ("policy/guard/block",)
    assert "seq 2" in changes[0].sentence
    same = compile_policy([], [grant("g", ["kb.search"])])
    assert rejudge(calls, same) == []


def test_what_if_replays_counters_under_the_new_policy() -> None:
    calls = [_recorded(i, {"q": str(i)}) for i in range(1, 6)]
    capped = compile_policy([], [grant("g", ["kb.search"], maxCalls=3)])
    assert [(c.seq, c.new) for c in rejudge(calls, capped)] == [(4, "deny"), (5, "deny")]
    rated = compile_policy([], [grant("g", ["kb.search"], rateLimit={"calls": 1, "per": "3s"})])
    # calls at +1s..+5s, one per 3-second window: 1 and 4 pass; denied calls do not count
    assert [c.seq for c in rejudge(calls, rated)] == [2, 3, 5]
