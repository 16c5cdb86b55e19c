"""Budgets: reserved before a call, settled after, never overspent by concurrent runs.

On SQLite and PostgreSQL (the ``store`` fixture), with real threads racing for one budget.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import func, select

from bastion.api import SystemClock
from bastion.control.store import Store
from bastion.errors import BudgetExceeded
from bastion.execution.llm import Budget, BudgetLedger, LlmMetrics, budgets_for, llm_reservations


def ledger(store: Store) -> tuple[BudgetLedger, LlmMetrics]:
    metrics = LlmMetrics(CollectorRegistry())
    return BudgetLedger(store, SystemClock(), refusals=metrics.refusals), metrics


def test_a_reservation_that_does_not_fit_is_refused_with_the_budget_named(store: Store) -> None:
    books, metrics = ledger(store)
    budget = Budget(scope="run:r1", name="budgets.tokensPerRun", tokens=1000)
    held = books.reserve("r1:1", [budget], tokens=600, cost_usd=0.0)
    assert books.used("run:r1") == (600, 0.0)
    with pytest.raises(BudgetExceeded) as caught:
        books.reserve("r1:2", [budget], tokens=600, cost_usd=0.0)
    assert caught.value.budget == "budgets.tokensPerRun"
    assert "up to 600 tokens" in caught.value.reason and "400 of its 1000 left" in caught.value.reason
    assert books.used("run:r1") == (600, 0.0), "a refused reservation holds nothing"
    assert metrics.refusals.labels("budgets.tokensPerRun")._value.get() == 1  # pyright: ignore[reportPrivateUsage]
    books.settle(held, ["run:r1"], tokens=150, cost_usd=0.0)
    assert books.used("run:r1") == (150, 0.0), "settling gives back the difference"
    books.reserve("r1:2", [budget], tokens=600, cost_usd=0.0)
    assert books.used("run:r1") == (750, 0.0)


def test_cost_budgets_and_unlimited_scopes_are_accounted(store: Store) -> None:
    books, _ = ledger(store)
    scopes = [
        Budget(scope="tenant:t/2030-01-01", name="budgets.costPerTenantPerDay", cost_usd=0.01),
        Budget(scope="agent:t/default/a/2030-01-01", name="budgets.costPerAgentPerDay"),  # no limit
    ]
    held = books.reserve("r2:1", scopes, tokens=100, cost_usd=0.008)
    assert held.scopes == ("tenant:t/2030-01-01",)
    with pytest.raises(BudgetExceeded, match=r"may cost up to \$0\.008000.*\$0\.002000 of its \$0\.01 left"):
        books.reserve("r2:2", scopes, tokens=100, cost_usd=0.008)
    books.settle(held, [s.scope for s in scopes], tokens=40, cost_usd=0.001)
    assert books.used("tenant:t/2030-01-01") == (40, pytest.approx(0.001))
    assert books.used("agent:t/default/a/2030-01-01") == (40, pytest.approx(0.001))


def test_a_call_made_again_after_a_crash_replaces_its_stale_reservation(store: Store) -> None:
    books, _ = ledger(store)
    budget = Budget(scope="run:r3", name="limits.tokens", tokens=1000)
    books.reserve("r3:4", [budget], tokens=700, cost_usd=0.0)  # the attempt died holding this
    again = books.reserve("r3:4", [budget], tokens=700, cost_usd=0.0)  # the next attempt, same seq
    assert books.used("run:r3") == (700, 0.0)
    books.settle(again, ["run:r3"], tokens=300, cost_usd=0.0)
    assert books.used("run:r3") == (300, 0.0)


def test_concurrent_runs_cannot_overspend_a_shared_budget(store: Store) -> None:
    """32 threads race for an agent-per-day budget that fits exactly 10 reservations."""
    books, _ = ledger(store)
    budget = Budget(
        scope="agent:t/default/racer/2030-01-01", name="budgets.tokensPerAgentPerDay", tokens=10_000
    )
    start = threading.Barrier(32)

    def one(i: int) -> bool:
        start.wait()
        try:
            books.reserve(f"run{i}:1", [budget], tokens=1000, cost_usd=0.0)
        except BudgetExceeded:
            return False
        return True

    with ThreadPoolExecutor(32) as pool:
        granted = sum(pool.map(one, range(32)))
    assert granted == 10
    assert books.used(budget.scope) == (10_000, 0.0)


def test_budgets_come_from_the_policy_and_the_agents_limits() -> None:
    found = budgets_for(
        policy={
            "budgets": {"tokensPerRun": 5000, "costPerTenantPerDay": 2.5, "tokensPerAgentPerDay": 90_000}
        },
        agent_limits={"tokens": 3000, "costUsd": 0.25},
        run_id="r",
        tenant_id="t",
        namespace="ns",
        agent="a",
        day="2030-01-02",
    )
    assert [(b.scope, b.name, b.tokens, b.cost_usd) for b in found] == [
        ("run:r", "limits.tokens", 3000, 0.25),
        ("agent:t/ns/a/2030-01-02", "budgets.tokensPerAgentPerDay", 90_000, None),
        ("tenant:t/2030-01-02", "budgets.costPerTenantPerDay", None, 2.5),
    ]


def test_a_zombie_settling_after_the_next_attempt_reserved_gives_its_hold_back_once(store: Store) -> None:
    """Attempt 1 lost its run during a model call; attempt 2 makes the call again (same key,
    ``run_id:seq``) and its reservation replaces the stale one; then the zombie's entry is
    refused and it settles alone (``settle_alone``). The zombie's hold was already given back by
    attempt 2: giving it back again (and deleting attempt 2's reservation) would undercount the
    scope by a whole reservation, every time a lease is lost mid-call."""
    books, _ = ledger(store)
    scope = "agent:t/default/a/2030-01-02"
    budget = Budget(scope=scope, name="budgets.tokensPerAgentPerDay", tokens=1000)
    zombie = books.reserve("r4:3", [budget], tokens=700, cost_usd=0.0)
    taker = books.reserve("r4:3", [budget], tokens=700, cost_usd=0.0)
    assert books.used(scope) == (700, 0.0)
    books.write(books.settlement(zombie, [scope], tokens=500, cost_usd=0.0))  # the zombie spent 500
    assert books.used(scope) == (1200, 0.0), "the zombie's spend, and attempt 2's hold still held"
    books.settle(taker, [scope], tokens=300, cost_usd=0.0)
    assert books.used(scope) == (800, 0.0), "both calls' real spend, no hold left"
    with store.read() as conn:
        assert conn.execute(select(func.count()).select_from(llm_reservations)).scalar_one() == 0


def test_a_zombie_settling_before_the_next_attempt_reserves_is_charged(store: Store) -> None:
    books, _ = ledger(store)
    scope = "agent:t/default/a/2030-01-03"
    budget = Budget(scope=scope, name="budgets.tokensPerAgentPerDay", tokens=1000)
    zombie = books.reserve("r5:3", [budget], tokens=700, cost_usd=0.0)
    books.write(books.settlement(zombie, [scope], tokens=500, cost_usd=0.0))
    assert books.used(scope) == (500, 0.0)
    taker = books.reserve("r5:3", [budget], tokens=400, cost_usd=0.0)
    assert books.used(scope) == (900, 0.0)
    books.settle(taker, [scope], tokens=100, cost_usd=0.0)
    assert books.used(scope) == (600, 0.0)
