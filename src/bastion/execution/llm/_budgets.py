"""Token and cost budgets: reserved before a model call, settled after it.

Scopes: the run, the agent per UTC day, the tenant per UTC day. A call first **reserves** its
worst case (prompt estimate + output cap, at the dearest target's price) in every scope that has a
limit: one conditional ``UPDATE … WHERE used + reservation <= limit`` per scope, all in one
transaction, so concurrent runs cannot overspend (PostgreSQL re-checks the condition on the row it
locked; SQLite has one writer). When the answer is in, the call **settles**: the reservation is
given back and the real usage charged, in every scope (limited or not, for accounting).

Never twice: a call answered from the journal on replay neither reserves nor settles; retries
and fallbacks inside one call share its one reservation; a reservation is keyed ``run_id:seq``,
so the call in flight at a crash, made again by the next attempt, replaces its stale reservation
instead of adding a second.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from prometheus_client import Counter
from sqlalchemy import Connection, delete, select, update
from sqlalchemy.dialects import postgresql, sqlite

from bastion.api import Clock
from bastion.errors import BudgetExceeded
from bastion.observe import Database

from ._tables import llm_reservations, llm_usage

NANOS = 1_000_000_000


@dataclass(frozen=True, kw_only=True)
class Budget:
    scope: str
    """The usage row it limits, e.g. ``run:<id>``."""
    name: str
    """What the user wrote, e.g. ``budgets.tokensPerRun`` or ``limits.costUsd``."""
    tokens: int | None = None
    cost_usd: float | None = None

    @property
    def limited(self) -> bool:
        return self.tokens is not None or self.cost_usd is not None


@dataclass(frozen=True, kw_only=True)
class Reservation:
    key: str
    scopes: tuple[str, ...]
    """The limited scopes it holds tokens and cost in (none when nothing is limited)."""
    tokens: int
    cost_nanos: int


def _least(*values: Any) -> Any:
    given = [v for v in values if v is not None]
    return min(given) if given else None


def budgets_for(
    *,
    policy: Mapping[str, Any],
    agent_limits: Mapping[str, Any],
    run_id: str,
    tenant_id: str,
    namespace: str,
    agent: str,
    day: str,
) -> list[Budget]:
    """The budgets a run's model call is under: its ModelPolicy's and its Agent's ``limits``."""
    b: Mapping[str, Any] = policy.get("budgets") or {}
    run_tokens = _least(b.get("tokensPerRun"), agent_limits.get("tokens"))
    run_cost = _least(b.get("costPerRun"), agent_limits.get("costUsd"))
    run_name = "budgets.tokensPerRun" if run_tokens == b.get("tokensPerRun") else "limits.tokens"
    if run_tokens is None:
        run_name = "budgets.costPerRun" if run_cost == b.get("costPerRun") else "limits.costUsd"
    return [
        Budget(scope=f"run:{run_id}", name=run_name, tokens=run_tokens, cost_usd=run_cost),
        Budget(
            scope=f"agent:{tenant_id}/{namespace}/{agent}/{day}",
            name="budgets.tokensPerAgentPerDay"
            if b.get("tokensPerAgentPerDay")
            else "budgets.costPerAgentPerDay",
            tokens=b.get("tokensPerAgentPerDay"),
            cost_usd=b.get("costPerAgentPerDay"),
        ),
        Budget(
            scope=f"tenant:{tenant_id}/{day}",
            name="budgets.costPerTenantPerDay",
            cost_usd=b.get("costPerTenantPerDay"),
        ),
    ]


class BudgetLedger:
    def __init__(self, db: Database, clock: Clock, *, refusals: Counter | None = None) -> None:
        self.db, self.clock, self.refusals = db, clock, refusals
        if db.engine.dialect.name == "postgresql":
            self._insert: Any = postgresql.insert
        else:
            self._insert = sqlite.insert

    def reserve(self, key: str, budgets: Sequence[Budget], *, tokens: int, cost_usd: float) -> Reservation:
        """Hold ``tokens`` and ``cost_usd`` in every limited scope, or none of them.

        Raises:
            BudgetExceeded: a scope cannot fit the reservation; nothing is held.
        """
        limited = sorted((b for b in budgets if b.limited), key=lambda b: b.scope)  # one lock order
        cost = round(cost_usd * NANOS)
        reservation = Reservation(
            key=key, scopes=tuple(b.scope for b in limited), tokens=tokens, cost_nanos=cost
        )
        if not limited:
            return reservation
        now = self.clock.now()
        with self.db.write() as conn:
            self._release(conn, key, now)  # a call made again after a crash: its old hold goes
            for budget in limited:
                conn.execute(
                    self._insert(llm_usage)
                    .values(scope=budget.scope, tokens=0, cost_nanos=0, updated_at=now)
                    .on_conflict_do_nothing(index_elements=["scope"])
                )
                stmt = update(llm_usage).where(llm_usage.c.scope == budget.scope)
                if budget.tokens is not None:
                    stmt = stmt.where(llm_usage.c.tokens + tokens <= budget.tokens)
                if budget.cost_usd is not None:
                    stmt = stmt.where(llm_usage.c.cost_nanos + cost <= round(budget.cost_usd * NANOS))
                done = conn.execute(
                    stmt.values(
                        tokens=llm_usage.c.tokens + tokens,
                        cost_nanos=llm_usage.c.cost_nanos + cost,
                        updated_at=now,
                    )
                )
                if done.rowcount != 1:
                    raise self._refused(conn, budget, tokens, cost)
            conn.execute(
                llm_reservations.insert().values(
                    key=key, scopes=list(reservation.scopes), tokens=tokens, cost_nanos=cost, created_at=now
                )
            )
        return reservation

    def settle(
        self, reservation: Reservation, scopes: Sequence[str], *, tokens: int, cost_usd: float
    ) -> None:
        """Give the reservation back and charge the real usage to every scope (one transaction)."""
        cost = round(cost_usd * NANOS)
        if not reservation.scopes and tokens == 0 and cost == 0:
            return
        now = self.clock.now()
        with self.db.write() as conn:
            if reservation.scopes:
                self._release(conn, reservation.key, now)
            if tokens or cost:
                for scope in sorted(scopes):
                    insert = self._insert(llm_usage).values(
                        scope=scope, tokens=tokens, cost_nanos=cost, updated_at=now
                    )
                    conn.execute(
                        insert.on_conflict_do_update(
                            index_elements=["scope"],
                            set_={
                                "tokens": llm_usage.c.tokens + insert.excluded.tokens,
                                "cost_nanos": llm_usage.c.cost_nanos + insert.excluded.cost_nanos,
                                "updated_at": now,
                            },
                        )
                    )

    def used(self, scope: str) -> tuple[int, float]:
        """Tokens and US dollars used in a scope (reservations in flight included)."""
        with self.db.read() as conn:
            row = conn.execute(
                select(llm_usage.c.tokens, llm_usage.c.cost_nanos).where(llm_usage.c.scope == scope)
            ).first()
        return (0, 0.0) if row is None else (int(row[0]), row[1] / NANOS)

    def _release(self, conn: Connection, key: str, now: datetime) -> None:
        row = conn.execute(
            select(llm_reservations.c.scopes, llm_reservations.c.tokens, llm_reservations.c.cost_nanos).where(
                llm_reservations.c.key == key
            )
        ).first()
        if row is None:
            return
        for scope in sorted(row[0]):
            conn.execute(
                update(llm_usage)
                .where(llm_usage.c.scope == scope)
                .values(
                    tokens=llm_usage.c.tokens - row[1],
                    cost_nanos=llm_usage.c.cost_nanos - row[2],
                    updated_at=now,
                )
            )
        conn.execute(delete(llm_reservations).where(llm_reservations.c.key == key))

    def _refused(self, conn: Connection, budget: Budget, tokens: int, cost: int) -> BudgetExceeded:
        row = conn.execute(
            select(llm_usage.c.tokens, llm_usage.c.cost_nanos).where(llm_usage.c.scope == budget.scope)
        ).first()
        used_tokens, used_cost = (int(row[0]), int(row[1])) if row is not None else (0, 0)
        if self.refusals is not None:
            self.refusals.labels(budget.name).inc()
        what = budget.scope.split(":", 1)[0]
        if budget.tokens is not None and used_tokens + tokens > budget.tokens:
            return BudgetExceeded(
                budget.name,
                f"this call may use up to {tokens} tokens (prompt estimate + output cap) and the {what} "
                f"has {max(0, budget.tokens - used_tokens)} of its {budget.tokens} left",
            )
        limit = budget.cost_usd or 0.0
        return BudgetExceeded(
            budget.name,
            f"this call may cost up to ${cost / NANOS:.6f} and the {what} has "
            f"${max(0.0, limit - used_cost / NANOS):.6f} of its ${limit:g} left",
        )
