"""Trust: each agent's current tier, whether it is revoked, and the journal of every change.

An Agent declares its starting tier (``spec.tier``); from then on this store holds the tier it has
earned or lost: promotions after compliant runs, demotions and revocations when an error budget is
exceeded (both judged by ``bastion.policy``), and operators' ``bastion trust`` commands. Every change
is an append-only event, hash-chained per agent like a run's journal, so an edited or removed
change is detectable. A revoked agent starts no runs. Created by migration 0008.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    Connection,
    Index,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
    insert,
    select,
    update,
)

from bastion.observe import UtcDateTime

from ._tables import metadata

TrustAction = Literal["promote", "demote", "revoke", "restore"]
ACTIONS: tuple[TrustAction, ...] = ("promote", "demote", "revoke", "restore")
GENESIS = "0" * 64

agent_trust = Table(
    "agent_trust",
    metadata,
    Column("tenant_id", String(36), primary_key=True),
    Column("namespace", String(63), primary_key=True),
    Column("agent", String(63), primary_key=True),
    Column("tier", String(2), nullable=False),
    Column("revoked", Boolean, nullable=False),
    Column("reason", Text, nullable=True),
    Column("events", Integer, nullable=False),
    Column("head", String(64), nullable=False),
    Column("updated_at", UtcDateTime(), nullable=False),
)

trust_events = Table(
    "trust_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("tenant_id", String(36), nullable=False),
    Column("namespace", String(63), nullable=False),
    Column("agent", String(63), nullable=False),
    Column("seq", Integer, nullable=False),
    Column("action", String(16), nullable=False),
    Column("from_tier", String(2), nullable=False),
    Column("to_tier", String(2), nullable=True),
    Column("actor", String(200), nullable=False),
    Column("reason", Text, nullable=False),
    Column("rule_id", String(64), nullable=True),
    Column("run_id", String(36), nullable=True),
    Column("evidence", JSON, nullable=False),
    Column("at", UtcDateTime(), nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
    UniqueConstraint("tenant_id", "namespace", "agent", "seq"),
)

trust_outcomes = Table(
    "trust_outcomes",
    metadata,
    Column("run_id", String(36), primary_key=True),
    Column("tenant_id", String(36), nullable=False),
    Column("namespace", String(63), nullable=False),
    Column("agent", String(63), nullable=False),
    Column("tier", String(2), nullable=False),
    Column("succeeded", Boolean, nullable=False),
    Column("errors", JSON, nullable=False),
    Column("violations", JSON, nullable=False),
    Column("at", UtcDateTime(), nullable=False),
    Index(None, "tenant_id", "namespace", "agent", "at"),
)


@dataclass(frozen=True, kw_only=True)
class TrustState:
    tier: str
    revoked: bool = False
    reason: str | None = None
    changes: int = 0
    """How many trust events the agent has (0: still at its declared tier)."""


@dataclass(frozen=True, kw_only=True)
class Outcome:
    run_id: str
    tier: str
    succeeded: bool
    errors: list[str]
    violations: list[str]


def _stamp(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


def _event_hash(prev: str, event: dict[str, Any]) -> str:
    body = json.dumps(event, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    return hashlib.sha256(prev.encode() + body).hexdigest()


def _hashed_fields(row: Any) -> dict[str, Any]:
    return {
        "seq": row["seq"],
        "action": row["action"],
        "fromTier": row["from_tier"],
        "toTier": row["to_tier"],
        "actor": row["actor"],
        "reason": row["reason"],
        "ruleId": row["rule_id"],
        "runId": row["run_id"],
        "evidence": list(row["evidence"]),
        "at": _stamp(row["at"]),
    }


class TrustStore:
    """Every method runs inside the caller's transaction."""

    def state(
        self, conn: Connection, tenant_id: str, namespace: str, agent: str, *, declared: str
    ) -> TrustState:
        row = (
            conn.execute(
                select(agent_trust).where(
                    agent_trust.c.tenant_id == tenant_id,
                    agent_trust.c.namespace == namespace,
                    agent_trust.c.agent == agent,
                )
            )
            .mappings()
            .first()
        )
        if row is None:
            return TrustState(tier=declared)
        return TrustState(
            tier=row["tier"], revoked=row["revoked"], reason=row["reason"], changes=row["events"]
        )

    def change(
        self,
        conn: Connection,
        tenant_id: str,
        namespace: str,
        agent: str,
        *,
        declared: str,
        action: TrustAction,
        to_tier: str | None,
        actor: str,
        reason: str,
        now: datetime,
        rule_id: str | None = None,
        run_id: str | None = None,
        evidence: tuple[str, ...] = (),
    ) -> dict[str, Any]:
        """Apply one change and append its event; returns the event as the API shows it."""
        key = (
            agent_trust.c.tenant_id == tenant_id,
            agent_trust.c.namespace == namespace,
            agent_trust.c.agent == agent,
        )
        row = conn.execute(select(agent_trust).where(*key)).mappings().first()
        current = self.state(conn, tenant_id, namespace, agent, declared=declared)
        seq, prev = (row["events"] + 1, row["head"]) if row is not None else (1, GENESIS)
        revoked = {"revoke": True, "restore": False}.get(action, current.revoked)
        tier = to_tier or current.tier
        values: dict[str, Any] = {
            "seq": seq,
            "action": action,
            "from_tier": current.tier,
            "to_tier": to_tier,
            "actor": actor,
            "reason": reason,
            "rule_id": rule_id,
            "run_id": run_id,
            "evidence": list(evidence),
            "at": now,
        }
        digest = _event_hash(prev, _hashed_fields(values))
        conn.execute(
            insert(trust_events).values(
                tenant_id=tenant_id, namespace=namespace, agent=agent, prev_hash=prev, hash=digest, **values
            )
        )
        state = {"tier": tier, "revoked": revoked, "reason": reason if revoked else None}
        if row is None:
            conn.execute(
                insert(agent_trust).values(
                    tenant_id=tenant_id,
                    namespace=namespace,
                    agent=agent,
                    events=seq,
                    head=digest,
                    updated_at=now,
                    **state,
                )
            )
        else:
            conn.execute(
                update(agent_trust).where(*key).values(events=seq, head=digest, updated_at=now, **state)
            )
        return _public(values)

    def events(self, conn: Connection, tenant_id: str, namespace: str, agent: str) -> list[dict[str, Any]]:
        return [_public(row) for row in self._rows(conn, tenant_id, namespace, agent)]

    def verify(self, conn: Connection, tenant_id: str, namespace: str, agent: str) -> int | None:
        """The seq of the first event whose chain is broken, or None when all of them check out."""
        prev, expected = GENESIS, 1
        for row in self._rows(conn, tenant_id, namespace, agent):
            if (
                row["seq"] != expected
                or row["prev_hash"] != prev
                or row["hash"] != _event_hash(prev, _hashed_fields(row))
            ):
                return expected
            prev, expected = row["hash"], expected + 1
        state = conn.execute(
            select(agent_trust.c.events, agent_trust.c.head).where(
                agent_trust.c.tenant_id == tenant_id,
                agent_trust.c.namespace == namespace,
                agent_trust.c.agent == agent,
            )
        ).first()
        if state is not None and (state[0] != expected - 1 or state[1] != prev):
            return min(expected, state[0])
        return None

    def record_outcome(
        self, conn: Connection, tenant_id: str, namespace: str, agent: str, outcome: Outcome, now: datetime
    ) -> None:
        conn.execute(
            insert(trust_outcomes).values(
                run_id=outcome.run_id,
                tenant_id=tenant_id,
                namespace=namespace,
                agent=agent,
                tier=outcome.tier,
                succeeded=outcome.succeeded,
                errors=outcome.errors,
                violations=outcome.violations,
                at=now,
            )
        )

    def history(
        self, conn: Connection, tenant_id: str, namespace: str, agent: str, *, limit: int = 100
    ) -> list[Outcome]:
        """The agent's latest run outcomes, oldest first."""
        rows = (
            conn.execute(
                select(trust_outcomes)
                .where(
                    trust_outcomes.c.tenant_id == tenant_id,
                    trust_outcomes.c.namespace == namespace,
                    trust_outcomes.c.agent == agent,
                )
                .order_by(trust_outcomes.c.at.desc(), trust_outcomes.c.run_id.desc())
                .limit(limit)
            )
            .mappings()
            .all()
        )
        return [
            Outcome(
                run_id=r["run_id"],
                tier=r["tier"],
                succeeded=r["succeeded"],
                errors=list(r["errors"]),
                violations=list(r["violations"]),
            )
            for r in reversed(rows)
        ]

    def _rows(self, conn: Connection, tenant_id: str, namespace: str, agent: str) -> list[Any]:
        return list(
            conn.execute(
                select(trust_events)
                .where(
                    trust_events.c.tenant_id == tenant_id,
                    trust_events.c.namespace == namespace,
                    trust_events.c.agent == agent,
                )
                .order_by(trust_events.c.seq)
            ).mappings()
        )


def _public(row: Any) -> dict[str, Any]:
    return _hashed_fields(row)


__all__ = ["ACTIONS", "Outcome", "TrustAction", "TrustState", "TrustStore"]
