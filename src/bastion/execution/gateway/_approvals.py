"""Human approvals: a call whose decision is ``require_approval`` waits for a person.

One row per (run, seq): the call's request, why it needs approval, and what was decided, by whom
and why. The gateway creates the row and suspends the run (DESIGN: suspend = stop, resume = replay);
deciding it re-queues the run, whose next attempt replays to that seq and finds the decision here.
An undecided approval past ``expires_at`` counts as denied. Created by migration 0005.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import (
    JSON,
    Column,
    Connection,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    and_,
    insert,
    select,
    update,
)

from bastion.api import IdSource
from bastion.errors import Conflict
from bastion.observe import UtcDateTime

ApprovalState = Literal["pending", "approved", "denied", "expired"]
STATES: tuple[ApprovalState, ...] = ("pending", "approved", "denied", "expired")

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "pk": "pk_%(table_name)s",
    }
)

approvals = Table(
    "approvals",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("tenant_id", String(36), nullable=False),
    Column("namespace", String(63), nullable=False),
    Column("run_id", String(36), nullable=False),
    Column("seq", Integer, nullable=False),
    Column("agent", String(63), nullable=False),
    Column("tool", String(253), nullable=False),
    Column("args", JSON, nullable=False),
    Column("request_hash", String(64), nullable=False),
    Column("reasons", JSON, nullable=False),
    Column("state", String(16), nullable=False),
    Column("decided_by", String(200), nullable=True),
    Column("reason", Text, nullable=True),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("expires_at", UtcDateTime(), nullable=False),
    Column("decided_at", UtcDateTime(), nullable=True),
    UniqueConstraint("run_id", "seq"),
    Index(None, "tenant_id", "state", "created_at"),
    Index(None, "tenant_id", "created_at", "id"),  # GET /approvals of every state (revision 0011)
    Index(None, "state", "expires_at"),
)


@dataclass(frozen=True, kw_only=True)
class Approval:
    id: str
    tenant_id: str
    namespace: str
    run_id: str
    seq: int
    agent: str
    tool: str
    args: Any
    request_hash: str
    reasons: list[str]
    state: ApprovalState
    decided_by: str | None
    reason: str | None
    created_at: datetime
    expires_at: datetime
    decided_at: datetime | None

    def effective_state(self, now: datetime) -> ApprovalState:
        """``expired`` for a pending approval past its deadline, whether or not a sweep marked it."""
        if self.state == "pending" and now >= self.expires_at:
            return "expired"
        return self.state

    def public(self) -> dict[str, Any]:
        def stamp(at: datetime | None) -> str | None:
            return at.isoformat().replace("+00:00", "Z") if at is not None else None

        return {
            "id": self.id,
            "namespace": self.namespace,
            "run": self.run_id,
            "seq": self.seq,
            "agent": self.agent,
            "tool": self.tool,
            "args": self.args,
            "reasons": self.reasons,
            "state": self.state,
            "decidedBy": self.decided_by,
            "reason": self.reason,
            "createdAt": stamp(self.created_at),
            "expiresAt": stamp(self.expires_at),
            "decidedAt": stamp(self.decided_at),
        }


def _approval(row: Any) -> Approval:
    return Approval(**{c.name: row[c.name] for c in approvals.columns})


class ApprovalStore:
    """Approval rows; every method runs inside the caller's transaction."""

    def __init__(self, ids: IdSource) -> None:
        self.ids = ids

    def for_call(self, conn: Connection, run_id: str, seq: int) -> Approval | None:
        query = select(approvals).where(approvals.c.run_id == run_id, approvals.c.seq == seq)
        row = conn.execute(query).mappings().first()
        return _approval(row) if row is not None else None

    def request(
        self,
        conn: Connection,
        *,
        tenant_id: str,
        namespace: str,
        run_id: str,
        seq: int,
        agent: str,
        tool: str,
        args: Any,
        request_hash: str,
        reasons: list[str],
        now: datetime,
        expires_at: datetime,
    ) -> Approval:
        """A pending approval for this call. A row left for an earlier, different request at the
        same seq (the agent changed its mind before anyone decided) is replaced, never reused."""
        values: dict[str, Any] = {
            "tool": tool,
            "args": args,
            "request_hash": request_hash,
            "reasons": reasons,
            "state": "pending",
            "decided_by": None,
            "reason": None,
            "created_at": now,
            "expires_at": expires_at,
            "decided_at": None,
        }
        existing = self.for_call(conn, run_id, seq)
        if existing is not None:
            values["id"] = self.ids.uid()
            conn.execute(update(approvals).where(approvals.c.id == existing.id).values(**values))
        else:
            values.update(
                id=self.ids.uid(),
                tenant_id=tenant_id,
                namespace=namespace,
                run_id=run_id,
                seq=seq,
                agent=agent,
            )
            conn.execute(insert(approvals).values(**values))
        found = self.for_call(conn, run_id, seq)
        assert found is not None
        return found

    def get(self, conn: Connection, approval_id: str, *, tenant_id: str) -> Approval | None:
        query = select(approvals).where(approvals.c.id == approval_id, approvals.c.tenant_id == tenant_id)
        row = conn.execute(query).mappings().first()
        return _approval(row) if row is not None else None

    def list(
        self,
        conn: Connection,
        *,
        tenant_id: str,
        namespace: str | None = None,
        state: ApprovalState | None = None,
        limit: int = 100,
    ) -> list[Approval]:
        """Oldest first: the ones that have waited longest come first."""
        query = select(approvals).where(approvals.c.tenant_id == tenant_id)
        if namespace is not None:
            query = query.where(approvals.c.namespace == namespace)
        if state is not None:
            query = query.where(approvals.c.state == state)
        query = query.order_by(approvals.c.created_at, approvals.c.id).limit(limit)
        return [_approval(r) for r in conn.execute(query).mappings()]

    def decide(
        self,
        conn: Connection,
        approval: Approval,
        *,
        approve: bool,
        by: str,
        reason: str | None,
        now: datetime,
    ) -> Approval:
        """Record a decision on a pending approval.

        Raises:
            Conflict: it was decided already, or it expired.
        """
        state = approval.effective_state(now)
        if state != "pending":
            by_whom = f" by {approval.decided_by}" if approval.decided_by else ""
            raise Conflict(
                f"approval {approval.id} is {state}{by_whom}; it cannot be decided again",
                field="approval",
                hint="list the pending ones with `bastion approvals`",
            )
        new_state: ApprovalState = "approved" if approve else "denied"
        result = conn.execute(
            update(approvals)
            .where(approvals.c.id == approval.id, approvals.c.state == "pending")
            .values(state=new_state, decided_by=by, reason=reason, decided_at=now)
        )
        if result.rowcount != 1:  # decided by someone else between our read and this write
            raise Conflict(f"approval {approval.id} was decided concurrently", field="approval")
        found = self.get(conn, approval.id, tenant_id=approval.tenant_id)
        assert found is not None
        return found

    def due(self, conn: Connection, now: datetime, *, limit: int = 100) -> list[Approval]:
        """Pending approvals past their deadline, oldest first."""
        query = (
            select(approvals)
            .where(and_(approvals.c.state == "pending", approvals.c.expires_at <= now))
            .order_by(approvals.c.expires_at)
            .limit(limit)
        )
        return [_approval(r) for r in conn.execute(query).mappings()]

    def expire(self, conn: Connection, approval: Approval, now: datetime) -> bool:
        """Mark a pending approval expired; False if it was decided meanwhile."""
        result = conn.execute(
            update(approvals)
            .where(approvals.c.id == approval.id, approvals.c.state == "pending")
            .values(
                state="expired",
                decided_by="bastion",
                reason="no decision before the deadline",
                decided_at=now,
            )
        )
        return result.rowcount == 1


__all__ = ["STATES", "Approval", "ApprovalState", "ApprovalStore", "approvals", "metadata"]
