"""Runs in the database: creation, claims with leases, fencing, transitions and events.

The attempt number is the fencing token: a claim increments it, and every later write of that
attempt (journal entries, state changes, lease renewals) is conditional on it still being the
run's attempt and the claimant still its lease owner. A worker that lost its lease can therefore
never write again (DESIGN, "Durable runs in detail").
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Connection, and_, case, func, insert, or_, select, update

from bastion.api import Clock, IdSource, RandomIds, SystemClock
from bastion.errors import LeaseLost, UserError
from bastion.observe import Database
from bastion.observe.journal import journal_entries

from ._states import ACTIVE, FINISHED, RunState
from ._tables import run_attempts, run_events, runs

DEFAULT_MAX_ATTEMPTS = 3
"""How many deaths that point at a run (see ``RunStore._judge_death``) make it a poison run."""
POISON_FUSE = 10
"""A run whose attempts died this many times its budget is failed even without evidence."""


@dataclass(frozen=True, kw_only=True)
class Run:
    id: str
    tenant_id: str
    namespace: str
    agent: str
    agent_spec: dict[str, Any]
    input: Any
    state: RunState
    reason: str | None
    result: Any
    attempt: int
    max_attempts: int
    lease_owner: str | None
    lease_expires_at: datetime | None
    cancel_requested: bool
    journal_count: int | None
    journal_head: str | None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    parent_run_id: str | None = None
    """The run this one was forked from (``replay --fork-at``)."""
    fork_seq: int | None = None
    """The parent's seq up to which this run inherited the journal."""

    def public(self) -> dict[str, Any]:
        """The run as the API returns it."""
        return {
            "id": self.id,
            "namespace": self.namespace,
            "agent": self.agent,
            "agentResourceVersion": self.agent_spec.get("metadata", {}).get("resourceVersion"),
            "input": self.input,
            "state": str(self.state),
            "reason": self.reason,
            "result": self.result,
            "attempt": self.attempt,
            "maxAttempts": self.max_attempts,
            "cancelRequested": self.cancel_requested,
            "journal": {"entries": self.journal_count, "head": self.journal_head},
            "createdAt": _stamp(self.created_at),
            "updatedAt": _stamp(self.updated_at),
            "finishedAt": _stamp(self.finished_at) if self.finished_at else None,
            "parent": {"run": self.parent_run_id, "forkSeq": self.fork_seq} if self.parent_run_id else None,
        }


def _stamp(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


def _run(row: Any) -> Run:
    values = {k: row[k] for k in Run.__dataclass_fields__}
    values["state"] = RunState(values["state"])
    return Run(**values)


@dataclass(frozen=True, kw_only=True)
class Claim:
    run: Run
    """The run as claimed: ``attempt`` is this claim's fencing token."""
    owner: str
    claimed: float
    """``time.monotonic()`` before the claim's transaction began: its lease ends no earlier than
    this plus the lease's length."""
    alone: bool = False
    """The run is quarantined (suspected of killing its workers): run it with nothing beside it."""


@dataclass(frozen=True, kw_only=True)
class Event:
    id: int
    """The event's position in its run's stream (1, 2, 3, ...): what SSE sends as ``id:`` and takes
    back as ``Last-Event-ID``. Never the table's row id: that sequence is shared by every run of
    every tenant, and would let a tenant count the others' activity (DESIGN invariant 6)."""
    run_id: str
    type: str
    data: dict[str, Any]
    at: datetime
    row: int = 0
    """The table's row id, for a reader that keeps following (``events(..., row=...)``); internal."""

    def public(self) -> dict[str, Any]:
        return {"id": self.id, "type": self.type, "data": self.data, "at": _stamp(self.at)}


RUN_ID_PREFIX = re.compile(r"[0-9a-f][0-9a-f-]{3,35}")
"""What a run id prefix may be: 4 to 36 of a run id's characters (lowercase hex and dashes)."""
_NEXT_HEX = dict(zip("0123456789abcdef", "123456789abcdefg", strict=True))


def check_id_prefix(prefix: str) -> str:
    """``prefix`` lowercased, if it can start a run id; else a clear error (never SQL)."""
    lowered = prefix.lower()
    if RUN_ID_PREFIX.fullmatch(lowered) is None:
        raise UserError(
            f"{prefix!r} is not a run id or the start of one",
            field="idPrefix",
            hint="give at least 4 characters of the id `bastion runs` shows (hex digits and dashes)",
        )
    return lowered


def id_prefix_clauses(prefix: str) -> list[ColumnElement[bool]]:
    """The conditions for ids starting with ``prefix``: a range on the primary key over its
    leading hex digits (indexed; every character compared is alphanumeric, so it holds in any
    collation), then a LIKE with the input escaped for the exact match."""
    head = prefix.split("-", 1)[0]
    upper = head[:-1] + _NEXT_HEX[head[-1]]
    escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return [runs.c.id >= head, runs.c.id < upper, runs.c.id.like(f"{escaped}%", escape="\\")]


_FENCE = "SELECT attempt, lease_owner, state FROM runs WHERE id = ?"
_FENCE_PG = "SELECT attempt, lease_owner, state FROM runs WHERE id = %s FOR UPDATE"


class RunStore:
    def __init__(self, db: Database, *, clock: Clock | None = None, ids: IdSource | None = None) -> None:
        self.db = db
        self.clock: Clock = clock or SystemClock()
        self.ids: IdSource = ids or RandomIds()
        self._postgres = db.engine.dialect.name == "postgresql"

    # --- creating and reading ---------------------------------------------------------

    def create(
        self,
        conn: Connection,
        *,
        tenant_id: str,
        namespace: str,
        agent: str,
        agent_spec: dict[str, Any],
        input: Any,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        parent_run_id: str | None = None,
        fork_seq: int | None = None,
    ) -> Run:
        now = self.clock.now()
        values: dict[str, Any] = {
            "id": self.ids.uid(),
            "tenant_id": tenant_id,
            "namespace": namespace,
            "agent": agent,
            "agent_spec": agent_spec,
            "input": input,
            "state": str(RunState.SCHEDULED),
            "reason": None,
            "result": None,
            "attempt": 0,
            "max_attempts": max_attempts,
            "lease_owner": None,
            "lease_expires_at": None,
            "cancel_requested": False,
            "journal_count": None,
            "journal_head": None,
            "created_at": now,
            "updated_at": now,
            "finished_at": None,
            "parent_run_id": parent_run_id,
            "fork_seq": fork_seq,
            "takeovers": 0,
            "quarantined": False,
        }
        conn.execute(insert(runs).values(**values))
        self.add_event(conn, values["id"], "state", {"state": str(RunState.PENDING), "attempt": 0})
        self.add_event(conn, values["id"], "state", {"state": str(RunState.SCHEDULED), "attempt": 0})
        return _run(values)

    def get(
        self, conn: Connection, run_id: str, *, tenant_id: str | None = None, namespace: str | None = None
    ) -> Run | None:
        query = select(runs).where(runs.c.id == run_id)
        if tenant_id is not None:
            query = query.where(runs.c.tenant_id == tenant_id)
        if namespace is not None:
            query = query.where(runs.c.namespace == namespace)
        row = conn.execute(query).mappings().first()
        return _run(row) if row is not None else None

    def list(
        self,
        conn: Connection,
        *,
        tenant_id: str,
        namespace: str | None,
        agent: str | None = None,
        state: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
        id_prefix: str | None = None,
    ) -> tuple[list[Run], str | None]:
        """Newest first; the cursor is the last run's (created_at, id).

        ``id_prefix``: only runs whose id starts with it (``check_id_prefix`` validates it)."""
        query = select(runs).where(runs.c.tenant_id == tenant_id)
        if namespace is not None:
            query = query.where(runs.c.namespace == namespace)
        if id_prefix is not None:
            query = query.where(*id_prefix_clauses(check_id_prefix(id_prefix)))
        if agent is not None:
            query = query.where(runs.c.agent == agent)
        if state is not None:
            query = query.where(runs.c.state == state)
        if cursor:
            at, run_id = _decode_cursor(cursor)
            query = query.where(
                or_(runs.c.created_at < at, and_(runs.c.created_at == at, runs.c.id < run_id))
            )
        rows = (
            conn.execute(query.order_by(runs.c.created_at.desc(), runs.c.id.desc()).limit(limit + 1))
            .mappings()
            .all()
        )
        found = [_run(r) for r in rows[:limit]]
        more = len(rows) > limit
        return found, (_encode_cursor(found[-1]) if more and found else None)

    # --- events -----------------------------------------------------------------------

    def add_event(self, conn: Connection, run_id: str, type_: str, data: dict[str, Any]) -> None:
        conn.execute(insert(run_events).values(run_id=run_id, type=type_, data=data, at=self.clock.now()))

    def add_events(self, conn: Connection, run_id: str, events: list[tuple[str, dict[str, Any]]]) -> None:
        if events:
            now = self.clock.now()
            conn.execute(
                insert(run_events), [{"run_id": run_id, "type": t, "data": d, "at": now} for t, d in events]
            )

    def events(
        self, conn: Connection, run_id: str, *, after: int = 0, limit: int = 500, row: int | None = None
    ) -> list[Event]:
        """The run's events after the ``after``-th (their ids are positions in the run's stream).

        ``row``: the row id of the ``after``-th event, when the caller knows it (a reader that keeps
        following passes the last event's ``row``), which spares skipping the first ``after``."""
        query = select(run_events).where(run_events.c.run_id == run_id).order_by(run_events.c.id).limit(limit)
        query = query.where(run_events.c.id > row) if row is not None else query.offset(after)
        return [
            Event(id=after + n, run_id=r["run_id"], type=r["type"], data=r["data"], at=r["at"], row=r["id"])
            for n, r in enumerate(conn.execute(query).mappings(), start=1)
        ]

    # --- claims, leases, fencing ------------------------------------------------------

    def claim(
        self, owner: str, lease_seconds: float, *, takeovers_only: bool = False, idle: bool = True
    ) -> Claim | None:
        """Take a claimable run: first an active one whose lease expired (a dead worker's: its
        user is already waiting), else the oldest Scheduled one. ``takeovers_only``: only the
        former. ``idle``: the claimant runs nothing now, so it may take a quarantined run (which
        it must then run alone, ``Claim.alone``); a busy one never does.

        A taken-over run whose deaths show that it kills its workers is failed as a poison run
        instead (``_judge_death``), and the next is tried.
        """
        while True:
            started = time.monotonic()
            with self.db.write() as conn:
                now = self.clock.now()
                expired = and_(runs.c.state.in_([str(s) for s in ACTIVE]), runs.c.lease_expires_at < now)
                claimable = (
                    expired if takeovers_only else or_(runs.c.state == str(RunState.SCHEDULED), expired)
                )
                if not idle:
                    # A quarantined run waiting makes a busy worker take no new run (only dead
                    # workers' runs), so that some worker soon has nothing else and can take it.
                    waiting = conn.execute(
                        select(runs.c.id).where(claimable, runs.c.quarantined.is_(True)).limit(1)
                    ).first()
                    if waiting is not None:
                        claimable = expired
                    claimable = and_(claimable, runs.c.quarantined.is_(False))
                query = (
                    select(runs)
                    .where(claimable)
                    .order_by(case((expired, 0), else_=1), runs.c.created_at)
                    .limit(1)
                )
                if self._postgres:
                    query = query.with_for_update(skip_locked=True)
                row = conn.execute(query).mappings().first()
                if row is None:
                    return None
                run = _run(row)
                quarantined = bool(row["quarantined"])
                # A claim of an active run is a takeover from a dead worker; a Scheduled one is not
                # (a new run, or one re-queued after a suspension).
                takeover = run.state in ACTIVE
                if takeover:
                    reason, suspect = self._judge_death(conn, run)
                    if reason is not None:
                        self._set(
                            conn,
                            run.id,
                            state=RunState.FAILED,
                            reason=reason,
                            finished_at=now,
                            lease_owner=None,
                        )
                        self.add_event(
                            conn,
                            run.id,
                            "state",
                            {"state": str(RunState.FAILED), "attempt": run.attempt, "reason": reason},
                        )
                        continue
                    if suspect and not quarantined:
                        quarantined = True
                        self._set(conn, run.id, quarantined=True)
                        self.add_event(
                            conn,
                            run.id,
                            "quarantine",
                            {"attempt": run.attempt, "reason": "its last attempts died at the same seq"},
                        )
                        if not idle:
                            continue  # left for a worker with nothing else to run
                attempt = run.attempt + 1
                expires = now + timedelta(seconds=lease_seconds)
                self._set(
                    conn,
                    run.id,
                    state=RunState.STARTING,
                    attempt=attempt,
                    lease_owner=owner,
                    lease_expires_at=expires,
                    takeovers=runs.c.takeovers + int(takeover),
                )
                conn.execute(
                    insert(run_attempts).values(run_id=run.id, attempt=attempt, owner=owner, claimed_at=now)
                )
                event: dict[str, Any] = {"state": str(RunState.STARTING), "attempt": attempt, "worker": owner}
                if takeover:
                    event["takeover"] = {
                        "from": run.lease_owner,
                        "leaseExpiredAt": _stamp(run.lease_expires_at) if run.lease_expires_at else None,
                    }
                if quarantined:
                    event["alone"] = True
                self.add_event(conn, run.id, "state", event)
                claimed = replace(
                    run, state=RunState.STARTING, attempt=attempt, lease_owner=owner, lease_expires_at=expires
                )
                return Claim(run=claimed, owner=owner, claimed=started, alone=quarantined)

    def _judge_death(self, conn: Connection, run: Run) -> tuple[str | None, bool]:
        """Record how the attempt of ``run`` being taken over died, and judge the run on its own
        deaths: why it must be failed as a poison run (or None), and whether it is suspect.

        A worker dies with every attempt it runs, so only deaths that point at a run count
        against it, and only deaths of attempts that had gone live (replayed their journal, or
        had none and started their agent): an attempt killed while it was claimed, starting its
        sandbox or replaying had not yet done anything of its own. A run whose last two live
        attempts died at the same seq (it reached the same step and the worker died there), or
        whose last two attempts died at the same seq before going live, is suspect, and is
        quarantined: from then on it is
        claimed only by a worker running nothing else, which takes nothing else until it ends.
        It is a poison run when its last ``max_attempts`` live attempts all died at the same seq and
        the latest of them died alone on its worker: the place is its own, and no neighbour was
        there to blame (at seq 0, where every young attempt dies, all of them must have died
        alone), and no other run's worker died meanwhile where this run was not (a cluster whose
        workers are being killed or fail anyway blames no run). Neighbours of a worker that died
        for any other reason -- killed, or killed by a poison run -- are resumed however often
        that happens; only a run dying ``POISON_FUSE``
        times its budget is failed without such evidence, so that no run kills workers forever.
        """
        row = conn.execute(
            select(run_attempts.c.ended_at, run_attempts.c.live_at, run_attempts.c.claimed_at).where(
                run_attempts.c.run_id == run.id, run_attempts.c.attempt == run.attempt
            )
        ).first()
        if row is not None and row[0] is not None:
            return None, False  # it lost its lease on a live worker, which said so: not a death
        live = row is not None and row[1] is not None
        died_seq = int(
            conn.execute(
                select(func.coalesce(func.max(journal_entries.c.seq), 0)).where(
                    journal_entries.c.run_id == run.id
                )
            ).scalar_one()
        )
        neighbour = conn.execute(
            select(run_attempts.c.run_id)
            .where(
                run_attempts.c.owner == run.lease_owner,
                run_attempts.c.ended_at.is_(None),
                run_attempts.c.run_id != run.id,
            )
            .limit(1)
        ).first()
        alone = neighbour is None
        conn.execute(
            update(run_attempts)
            .where(run_attempts.c.run_id == run.id, run_attempts.c.attempt == run.attempt)
            .values(died_seq=died_seq, alone=alone)
        )
        earlier = conn.execute(
            select(
                run_attempts.c.died_seq,
                run_attempts.c.alone,
                run_attempts.c.live_at,
                run_attempts.c.claimed_at,
                run_attempts.c.owner,
            )
            .where(
                run_attempts.c.run_id == run.id,
                run_attempts.c.attempt < run.attempt,
                run_attempts.c.died_seq.is_not(None),
                run_attempts.c.ended_at.is_(None),  # a zombie that woke up later said it lived
            )
            .order_by(run_attempts.c.attempt)
        ).all()
        deaths = len(earlier) + 1
        if deaths >= POISON_FUSE * run.max_attempts:
            return (
                f"{deaths} attempts died with their workers ({POISON_FUSE} times its budget of "
                f"{run.max_attempts}) without evidence that it killed them",
                True,
            )
        if not live:
            # It died claiming, starting its sandbox or replaying: no evidence that it killed the
            # worker, so never failed for it. But two deaths in a row at one seq make it suspect
            # all the same: quarantined, it runs alone, so a run that kills workers before it ever
            # goes live cannot keep taking its neighbours down with it until *their* fuse fails
            # them; and an innocent run dying at a killer's side is only kept away from it.
            return None, bool(earlier) and int(earlier[-1][0]) == died_seq
        # Only deaths of live attempts are evidence: each was past its journal, doing something new.
        evidence = [
            (int(seq), bool(was_alone), claimed, owner)
            for seq, was_alone, at, claimed, owner in earlier
            if at is not None
        ]
        assert row is not None  # live
        evidence.append((died_seq, alone, row[2], run.lease_owner or ""))
        budget = run.max_attempts
        last = evidence[-budget:]
        same_place = len(last) == budget and all(seq == died_seq for seq, *_ in last)
        if same_place and alone and (died_seq > 0 or all(was_alone for _, was_alone, *_ in last)):
            if self._churn(conn, run, since=last[0][2], owners={owner for *_, owner in last}):
                # Workers died meanwhile where this run never was: the deaths are the cluster's
                # (killed, restarted, failing), and a run must not be failed for them.
                return None, True
            where = f"at seq {died_seq}" if died_seq else "before recording anything"
            return (
                f"poison run: {budget} attempts in a row died with their worker {where}, "
                "the last one alone on it",
                True,
            )
        return None, len(evidence) >= 2 and evidence[-2][0] == died_seq

    def _churn(self, conn: Connection, run: Run, *, since: datetime, owners: set[str]) -> bool:
        """Whether, since ``since``, an attempt of another run died on a worker none of these
        ``owners`` (the run's own dying workers) was: evidence that workers die whether or not this
        run is on them. Only asked when a run is about to be failed as poison."""
        other = conn.execute(
            select(run_attempts.c.run_id)
            .where(
                run_attempts.c.claimed_at >= since,
                run_attempts.c.run_id != run.id,
                run_attempts.c.died_seq.is_not(None),
                run_attempts.c.ended_at.is_(None),
                run_attempts.c.owner.not_in(owners),
            )
            .limit(1)
        ).first()
        return other is not None

    def fence(self, conn: Connection, run_id: str, attempt: int, owner: str) -> None:
        """Raise LeaseLost unless this attempt still holds the run (inside the caller's write transaction)."""
        # Driver SQL: on the path of every model call, where building and caching the Core
        # statement cost more than the database's read.
        if self._postgres:
            row = conn.exec_driver_sql(_FENCE_PG, (run_id,)).first()
        else:
            row = conn.exec_driver_sql(_FENCE, (run_id,)).first()
        if row is None or row[0] != attempt or row[1] != owner or RunState(row[2]).finished:
            raise LeaseLost(f"attempt {attempt} of run {run_id} no longer holds its lease")

    def renew(self, run_id: str, attempt: int, owner: str, lease_seconds: float) -> bool | None:
        """Extend the lease. Returns whether cancellation was requested, or None if the lease is lost."""
        with self.db.write() as conn:
            expires = self.clock.now() + timedelta(seconds=lease_seconds)
            result = conn.execute(
                update(runs)
                .where(runs.c.id == run_id, runs.c.attempt == attempt, runs.c.lease_owner == owner)
                .where(runs.c.state.in_([str(s) for s in ACTIVE]))
                .values(lease_expires_at=expires)
            )
            if result.rowcount == 0:
                return None
            return bool(conn.execute(select(runs.c.cancel_requested).where(runs.c.id == run_id)).scalar())

    def transition(
        self,
        conn: Connection,
        run: Run,
        owner: str,
        state: RunState,
        *,
        reason: str | None = None,
        result: Any = None,
        journal: tuple[int, str] | None = None,
    ) -> None:
        """Move the claimed run to ``state`` (fenced); finishing releases the lease."""
        self.fence(conn, run.id, run.attempt, owner)
        values: dict[str, Any] = {"state": state, "reason": reason}
        if state.finished:
            values.update(
                result=result, finished_at=self.clock.now(), lease_owner=None, lease_expires_at=None
            )
            if journal is not None:
                values.update(journal_count=journal[0], journal_head=journal[1])
            self._ended(conn, run)
        self._set(conn, run.id, **values)
        event: dict[str, Any] = {"state": str(state), "attempt": run.attempt}
        if reason:
            event["reason"] = reason
        self.add_event(conn, run.id, "state", event)

    def park(
        self, conn: Connection, run: Run, owner: str, state: RunState, *, reason: str, ready: bool
    ) -> None:
        """End the claimed attempt cleanly to wait (``WaitingApproval`` or ``Suspended``), holding no
        lease and no sandbox. ``ready``: what it waits for happened already, so go straight back to
        the queue. A suspension is not a death: the attempt is marked ended, so waiting many times
        never counts towards a poison run -- nor raises the budget a poison run is judged by (a
        run that provokes approvals must not buy itself more deaths)."""
        self.fence(conn, run.id, run.attempt, owner)
        self._ended(conn, run)
        self._set(
            conn,
            run.id,
            state=state,
            reason=reason,
            lease_owner=None,
            lease_expires_at=None,
        )
        self.add_event(conn, run.id, "state", {"state": str(state), "attempt": run.attempt, "reason": reason})
        if ready:
            self.requeue(conn, run.id, reason="what it waited for happened while it was suspending")

    def abandoned(self, conn: Connection, run: Run) -> None:
        """An attempt that lost its lease ended on a live worker (it was slow or stopped, not
        killed): not a death. Its own row only, so no fence: the run is someone else's now."""
        self._ended(conn, run)

    def went_live(self, conn: Connection, run: Run) -> None:
        """The attempt is past its journal: from now on its death is evidence against the run."""
        conn.execute(
            update(run_attempts)
            .where(run_attempts.c.run_id == run.id, run_attempts.c.attempt == run.attempt)
            .values(live_at=self.clock.now())
        )

    def _ended(self, conn: Connection, run: Run) -> None:
        """The attempt ended on its worker: it will not die with it."""
        conn.execute(
            update(run_attempts)
            .where(run_attempts.c.run_id == run.id, run_attempts.c.attempt == run.attempt)
            .values(ended_at=self.clock.now())
        )

    def lock(self, conn: Connection, run_id: str) -> Run | None:
        """Read a run and, on PostgreSQL, lock its row until the transaction ends (the lock a worker's
        fence takes), so a decision and a suspension cannot cross."""
        query = select(runs).where(runs.c.id == run_id)
        if self._postgres:
            query = query.with_for_update()
        row = conn.execute(query).mappings().first()
        return _run(row) if row is not None else None

    def requeue(self, conn: Connection, run_id: str, *, reason: str) -> bool:
        """Put a waiting run back in the queue; False if it is not waiting (finished, or not parked yet)."""
        result = conn.execute(
            update(runs)
            .where(
                runs.c.id == run_id,
                runs.c.state.in_([str(RunState.WAITING_APPROVAL), str(RunState.SUSPENDED)]),
            )
            .values(state=str(RunState.SCHEDULED), reason=None, updated_at=self.clock.now())
        )
        if result.rowcount != 1:
            return False
        attempt = conn.execute(select(runs.c.attempt).where(runs.c.id == run_id)).scalar()
        self.add_event(
            conn, run_id, "state", {"state": str(RunState.SCHEDULED), "attempt": attempt, "reason": reason}
        )
        return True

    def revoke_active(
        self, conn: Connection, tenant_id: str, namespace: str, agent: str, *, reason: str
    ) -> int:
        """End every unfinished run of a revoked agent: waiting ones at once (Revoked), running ones by
        flag, which their worker turns into Revoked within a lease renewal. Returns how many."""
        query = select(runs).where(
            runs.c.tenant_id == tenant_id,
            runs.c.namespace == namespace,
            runs.c.agent == agent,
            runs.c.state.notin_([str(s) for s in FINISHED]),
        )
        found = [_run(r) for r in conn.execute(query).mappings()]
        now = self.clock.now()
        for run in found:
            if run.state in ACTIVE:
                self._set(conn, run.id, cancel_requested=True)
                continue
            self._set(
                conn,
                run.id,
                state=RunState.REVOKED,
                reason=reason,
                cancel_requested=True,
                finished_at=now,
                lease_owner=None,
                lease_expires_at=None,
            )
            self.add_event(
                conn,
                run.id,
                "state",
                {"state": str(RunState.REVOKED), "attempt": run.attempt, "reason": reason},
            )
        return len(found)

    def request_cancel(self, conn: Connection, run: Run) -> Run:
        """Cancel a run: at once if no worker holds it, else by flag for its worker to act on."""
        if run.state.finished:
            raise UserError(
                f"run {run.id} already finished ({run.state})",
                field="state",
                hint="only unfinished runs can be cancelled",
                status=409,
            )
        if run.state in {RunState.PENDING, RunState.SCHEDULED, RunState.WAITING_APPROVAL, RunState.SUSPENDED}:
            now = self.clock.now()
            self._set(
                conn,
                run.id,
                state=RunState.CANCELLED,
                reason="cancelled by request",
                cancel_requested=True,
                finished_at=now,
            )
            self.add_event(
                conn,
                run.id,
                "state",
                {"state": str(RunState.CANCELLED), "attempt": run.attempt, "reason": "cancelled by request"},
            )
        else:
            self._set(conn, run.id, cancel_requested=True)
        found = self.get(conn, run.id)
        assert found is not None
        return found

    def _set(self, conn: Connection, run_id: str, **values: Any) -> None:
        if "state" in values:
            values["state"] = str(values["state"])
        conn.execute(update(runs).where(runs.c.id == run_id).values(updated_at=self.clock.now(), **values))


_RUN_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_CURSOR_EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
_CURSOR_LATEST = datetime(9000, 1, 1, tzinfo=UTC)


def _encode_cursor(run: Run) -> str:
    raw = json.dumps([run.created_at.isoformat(), run.id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    """The (created_at, id) of a continue token, range-checked: a forged token is a 400, never a
    naive or out-of-range time or a byte the database refuses."""
    bad = UserError(
        "the continue token is invalid", field="continue", hint="pass the previous page's token unchanged"
    )
    try:
        data = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        at_text, run_id = data
        if not isinstance(at_text, str) or not isinstance(run_id, str) or not _RUN_ID.fullmatch(run_id):
            raise bad
        at = datetime.fromisoformat(at_text)
        if at.tzinfo is None:
            raise bad
        at = at.astimezone(UTC)
        if not _CURSOR_EARLIEST <= at <= _CURSOR_LATEST:
            raise bad
        return at, run_id
    except (binascii.Error, ValueError, TypeError, OverflowError):
        raise bad from None
