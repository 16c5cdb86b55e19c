"""Token and cost budgets: reserved before a model call, settled after it.

Scopes: the run, the agent per UTC day, the tenant per UTC day. A call first **reserves** its
worst case (prompt estimate + output cap, at the dearest target's price) in every scope that has a
limit: one conditional ``UPDATE … WHERE used + reservation <= limit`` per scope, all in one
transaction, so concurrent runs cannot overspend (PostgreSQL re-checks the condition on the row it
locked; SQLite has one writer). When the answer is in, the call **settles**: the reservation is
given back and the real usage charged, in every scope (limited or not, for accounting).

On a model call's path, neither costs a transaction of its own: the reservation's transaction
also reads the attempt's fence (the check before a paid call, for an attempt without a lease to
renew; one with a lease renews it in one statement instead), and the settlement's statements
are written in the transaction of the call's journal entry, so an answer is journaled and
charged together or not at all. An entry that cannot be written (the attempt lost its run) is
settled alone, so the money the call spent is still charged.

Never twice: a call answered from the journal on replay neither reserves nor settles; retries
and fallbacks inside one call share its one reservation; a reservation is keyed ``run_id:seq``,
so the call in flight at a crash, made again by the next attempt, replaces its stale reservation
instead of adding a second; and a settlement gives back only its own hold (the key and the time
it was written), so a zombie settling after that is charged its spend without giving a hold back
twice.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Generator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from prometheus_client import Counter
from sqlalchemy import Connection, select

from bastion.api import Clock
from bastion.errors import BudgetExceeded
from bastion.observe import Database

from ._tables import llm_usage

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
    at: Any = None
    """When it was written (as stored): with ``key``, which hold is this one. The next attempt
    making the call again holds the same key, and a settlement gives back only its own hold."""


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


_ADD = (
    "INSERT INTO llm_usage (scope, tokens, cost_nanos, updated_at) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (scope) DO UPDATE SET tokens = llm_usage.tokens + excluded.tokens, "
    "cost_nanos = llm_usage.cost_nanos + excluded.cost_nanos, updated_at = excluded.updated_at"
)
_HOLD = _ADD + " WHERE llm_usage.tokens <= ? AND llm_usage.cost_nanos <= ?"
"""Adds a reservation to a scope's row only while the row has room for it (limit - reservation)."""
_STALE = "SELECT scopes, tokens, cost_nanos FROM llm_reservations WHERE key = ?"
_USED = "SELECT tokens, cost_nanos FROM llm_usage WHERE scope = ?"
_FORGET = "DELETE FROM llm_reservations WHERE key = ?"
_LOCK = "UPDATE llm_reservations SET tokens = tokens WHERE key = ? AND created_at = ?"
"""Locks a settlement's own reservation row first, the order ``reserve`` takes (no deadlock)."""
_GIVE_BACK = (
    "UPDATE llm_usage SET tokens = tokens - ?, cost_nanos = cost_nanos - ?, updated_at = ? "
    "WHERE scope = ? AND EXISTS (SELECT 1 FROM llm_reservations WHERE key = ? AND created_at = ?)"
)
"""Gives a reservation's hold back to a scope, only while the reservation is still held: the
next attempt making the call again already gave back a zombie's hold (``_release``)."""
_DROP = "DELETE FROM llm_reservations WHERE key = ? AND created_at = ?"
_REMEMBER = (
    "INSERT INTO llm_reservations (key, scopes, tokens, cost_nanos, created_at) VALUES (?, ?, ?, ?, ?)"
)
Statements = tuple[tuple[str, tuple[Any, ...]], ...]
"""SQL with qmark placeholders and its parameters, in order."""
Fence = Callable[[Connection], None]
"""Raises LeaseLost unless the caller still holds its run (inside the given transaction)."""
_UNLIMITED = 2**62
"""Stands for "no limit" in the conditional update (a BIGINT no usage reaches)."""


class BudgetLedger:
    """Reservations and settlements, as prebuilt SQL on a DBAPI cursor (one transaction each).

    Like the journal step (``bastion.execution.runs.StepWriter``), this is on the path of every
    model call, where SQLAlchemy's statement building cost more than the database work.
    """

    def __init__(self, db: Database, clock: Clock, *, refusals: Counter | None = None) -> None:
        self.db, self.clock, self.refusals = db, clock, refusals
        self._postgres = db.engine.dialect.name == "postgresql"
        mark = "%s" if self._postgres else "?"
        self._add, self._hold = _ADD.replace("?", mark), _HOLD.replace("?", mark)
        self._stale = _STALE.replace("?", mark) + (" FOR UPDATE" if self._postgres else "")
        self._forget, self._remember = _FORGET.replace("?", mark), _REMEMBER.replace("?", mark)
        self._used = _USED.replace("?", mark)

    def _stamp(self, at: datetime) -> Any:
        # SQLAlchemy's SQLite DateTime format, so rows read back as Core-written ones do.
        return at if self._postgres else at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")

    @contextmanager
    def _cursor(self, fence: Fence | None = None) -> Generator[Any]:
        if fence is not None:  # the fence's read and the writes: one transaction
            with self.db.write() as conn:
                fence(conn)
                cursor: Any = conn.connection.cursor()
                try:
                    yield cursor
                finally:
                    cursor.close()
            return
        raw = self.db.raw_connection()
        try:
            with self.db.raw_write(raw) as cursor:
                yield cursor
        finally:
            raw.close()

    def reserve(
        self,
        key: str,
        budgets: Sequence[Budget],
        *,
        tokens: int,
        cost_usd: float,
        fence: Fence | None = None,
    ) -> Reservation:
        """Hold ``tokens`` and ``cost_usd`` in every limited scope, or none of them.

        Args:
            fence: raises LeaseLost unless the caller still holds its run; called first, in the
                reservation's transaction (a read transaction when nothing is limited), so the
                fence before a paid call costs no transaction of its own.

        Raises:
            BudgetExceeded: a scope cannot fit the reservation; nothing is held.
            LeaseLost: from ``fence``; nothing is held.
        """
        limited = sorted((b for b in budgets if b.limited), key=lambda b: b.scope)  # one lock order
        cost = round(cost_usd * NANOS)
        reservation = Reservation(
            key=key, scopes=tuple(b.scope for b in limited), tokens=tokens, cost_nanos=cost
        )
        if not limited:
            if fence is not None:
                with self.db.read() as conn:
                    fence(conn)
            return reservation
        for budget in limited:  # a reservation bigger than the whole budget never fits
            if tokens > _limit_tokens(budget) or cost > _limit_cost(budget):
                raise self._refused(budget, tokens, cost, 0, 0)
        at = self._stamp(self.clock.now())
        reservation = replace(reservation, at=at)
        refused: BudgetExceeded | None = None
        try:
            with self._cursor(fence) as cursor:
                self._release(cursor, key, at)  # a call made again after a crash: its old hold goes
                for budget in limited:
                    cursor.execute(
                        self._hold,
                        (
                            budget.scope,
                            tokens,
                            cost,
                            at,
                            _limit_tokens(budget) - tokens,
                            _limit_cost(budget) - cost,
                        ),
                    )
                    if cursor.rowcount != 1:
                        cursor.execute(self._used, (budget.scope,))
                        row = cursor.fetchone()
                        refused = self._refused(budget, tokens, cost, int(row[0]), int(row[1]))
                        raise _Rollback
                cursor.execute(self._remember, (key, json.dumps(list(reservation.scopes)), tokens, cost, at))
        except _Rollback:
            assert refused is not None
            raise refused from None
        return reservation

    def settle(
        self, reservation: Reservation, scopes: Sequence[str], *, tokens: int, cost_usd: float
    ) -> None:
        """Give the reservation back and charge the real usage to every scope (one transaction)."""
        self.write(self.settlement(reservation, scopes, tokens=tokens, cost_usd=cost_usd))

    def write(self, statements: Statements) -> None:
        """``statements`` (from ``settlement``) in a transaction of their own."""
        if not statements:
            return
        with self._cursor() as cursor:
            for sql, values in statements:
                cursor.execute(sql.replace("?", "%s") if self._postgres else sql, values)

    def settlement(
        self, reservation: Reservation, scopes: Sequence[str], *, tokens: int, cost_usd: float
    ) -> Statements:
        """The statements of ``settle`` (qmark placeholders), for the caller to write in a
        transaction it makes anyway: the model call's journal entry (``Prepared.also``)."""
        cost = round(cost_usd * NANOS)
        held = sorted(reservation.scopes)
        charged = sorted(set(scopes) | set(held)) if tokens or cost else []
        if not charged and not held:
            return ()
        at = self._stamp(self.clock.now())
        statements: list[tuple[str, tuple[Any, ...]]] = []
        if held:  # the hold back, if it is still this call's own (a zombie's may be gone already)
            mine = (reservation.key, reservation.at)
            statements.append((_LOCK, mine))
            statements.extend(
                (_GIVE_BACK, (reservation.tokens, reservation.cost_nanos, at, scope, *mine)) for scope in held
            )
            statements.append((_DROP, mine))
        statements.extend((_ADD, (scope, tokens, cost, at)) for scope in charged)
        return tuple(statements)

    def _release(self, cursor: Any, key: str, at: Any) -> None:
        cursor.execute(self._stale, (key,))
        row = cursor.fetchone()
        if row is None:
            return
        scopes = row[0] if isinstance(row[0], list) else json.loads(row[0])
        for scope in sorted(scopes):
            cursor.execute(self._add, (scope, -int(row[1]), -int(row[2]), at))
        cursor.execute(self._forget, (key,))

    def used(self, scope: str) -> tuple[int, float]:
        """Tokens and US dollars used in a scope (reservations in flight included)."""
        with self.db.read() as conn:
            row = conn.execute(
                select(llm_usage.c.tokens, llm_usage.c.cost_nanos).where(llm_usage.c.scope == scope)
            ).first()
        return (0, 0.0) if row is None else (int(row[0]), row[1] / NANOS)

    def _refused(
        self, budget: Budget, tokens: int, cost: int, used_tokens: int, used_cost: int
    ) -> BudgetExceeded:
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


class _Rollback(Exception):
    """Leaves a reservation's transaction, rolling it back."""


def _limit_tokens(budget: Budget) -> int:
    return budget.tokens if budget.tokens is not None else _UNLIMITED


def _limit_cost(budget: Budget) -> int:
    return round(budget.cost_usd * NANOS) if budget.cost_usd is not None else _UNLIMITED
