"""Run routes: start, read, list, cancel, follow (Server-Sent Events), the journal and its verdict."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator
from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Connection
from starlette.concurrency import run_in_threadpool

from bastion.api import NAME_HINT, check_name
from bastion.control._bastion import Bastion
from bastion.control.store import Principal, get_row
from bastion.errors import Conflict, InvalidManifest, NotFound, UserError
from bastion.execution.runs import Event, Run, RunState

from ._deps import BastionDep, IdempotencyKey, PrincipalDep, require, run_idempotent
from ._routes_resources import NamespacePath

router = APIRouter(prefix="/api/v1", tags=["runs"])
RunIdPath = Annotated[str, Path(max_length=64, description="The run's id.")]
SSE_POLL_SECONDS = 0.1
SSE_KEEPALIVE_SECONDS = 15.0
MAX_EVENT_ID = 2**31 - 1
"""The largest event id a client may resume after (ids number a run's events from 1)."""


class RunCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    agent: Annotated[str, Field(max_length=253, description=f"The Agent's name: {NAME_HINT}.")]
    input: Any = Field(default=None, description="Any JSON value; the agent's entrypoint receives it.")


def find_run(bastion: Bastion, conn: Connection, principal: Principal, namespace: str, run_id: str) -> Run:
    run = bastion.runs.get(conn, run_id, tenant_id=principal.tenant_id, namespace=namespace)
    if run is None:
        raise NotFound(
            f"run {run_id!r} not found in namespace {namespace!r}",
            field="run",
            hint="list runs with `bastion runs`",
        )
    return run


@router.post("/namespaces/{namespace}/runs", status_code=201, summary="Start a run of an agent")
async def create_run(
    request: Request,
    namespace: NamespacePath,
    body: RunCreate,
    bastion: BastionDep,
    principal: PrincipalDep,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    require(principal, "developer", "start runs")
    try:
        check_name(body.agent)
    except ValueError as exc:
        raise InvalidManifest(str(exc), field="agent", hint=NAME_HINT) from None

    def operation(conn: Connection) -> tuple[int, dict[str, Any]]:
        row = get_row(conn, principal.tenant_id, "Agent", namespace, body.agent)
        if row is None:
            raise NotFound(
                f"agent {body.agent!r} not found in namespace {namespace!r}",
                field="agent",
                hint=f"apply it first, or list agents with `bastion get agents -n {namespace}`",
            )
        if row.spec.get("runtime") == "python" and not row.spec.get("source"):
            raise UserError(
                f"agent {body.agent!r} has no source",
                field="agent",
                hint="set spec.source, or spec.sourceFile in the manifest (the CLI inlines it)",
                status=422,
            )
        _refuse_revoked(bastion, conn, principal, namespace, body.agent, str(row.spec.get("tier", "T0")))
        run = bastion.runs.create(
            conn,
            tenant_id=principal.tenant_id,
            namespace=namespace,
            agent=body.agent,
            agent_spec=row.manifest(),
            input=body.input,
        )
        return 201, run.public()

    return await run_idempotent(request, bastion, principal, idempotency_key, operation)


def _refuse_revoked(
    bastion: Bastion, conn: Connection, principal: Principal, namespace: str, agent: str, declared: str
) -> None:
    state = bastion.trust.state(conn, principal.tenant_id, namespace, agent, declared=declared)
    if state.revoked:
        raise Conflict(
            f"agent {agent!r} is revoked: {state.reason}",
            field="agent",
            hint=f"an operator can restore it: `bastion trust restore {agent} --reason …`",
        )


def _list(
    bastion: Bastion,
    principal: Principal,
    namespace: str | None,
    agent: str | None,
    state: str | None,
    limit: int,
    cont: str | None,
    id_prefix: str | None = None,
) -> dict[str, Any]:
    if state is not None and state not in {str(s) for s in RunState}:
        raise UserError(
            f"unknown state {state!r}",
            field="state",
            hint=f"use one of {', '.join(str(s) for s in RunState)}",
        )
    with bastion.store.read() as conn:
        found, cursor = bastion.runs.list(
            conn,
            tenant_id=principal.tenant_id,
            namespace=namespace,
            agent=agent,
            state=state,
            limit=limit,
            cursor=cont,
            id_prefix=id_prefix,
        )
    return {"items": [r.public() for r in found], "continue": cursor}


AgentQuery = Annotated[str | None, Query(max_length=253, description="Only runs of this agent.")]
StateQuery = Annotated[str | None, Query(max_length=32, description="Only runs in this state.")]
LimitQuery = Annotated[int, Query(ge=1, le=500)]
ContinueQuery = Annotated[str | None, Query(alias="continue", max_length=1024)]
IdPrefixQuery = Annotated[
    str | None,
    Query(
        alias="idPrefix",
        min_length=4,
        max_length=36,
        pattern="^[0-9a-fA-F][0-9a-fA-F-]*$",
        description="Only runs whose id starts with this (at least 4 characters), as `bastion` "
        "resolves a short id: one match is the run, several are listed.",
    ),
]


@router.get("/namespaces/{namespace}/runs", summary="List runs in a namespace, newest first")
def list_runs(
    namespace: NamespacePath,
    bastion: BastionDep,
    principal: PrincipalDep,
    agent: AgentQuery = None,
    state: StateQuery = None,
    limit: LimitQuery = 50,
    cont: ContinueQuery = None,
    id_prefix: IdPrefixQuery = None,
) -> dict[str, Any]:
    return _list(bastion, principal, namespace, agent, state, limit, cont, id_prefix)


@router.get("/runs", summary="List runs in every namespace, newest first")
def list_all_runs(
    bastion: BastionDep,
    principal: PrincipalDep,
    agent: AgentQuery = None,
    state: StateQuery = None,
    limit: LimitQuery = 50,
    cont: ContinueQuery = None,
    id_prefix: IdPrefixQuery = None,
) -> dict[str, Any]:
    return _list(bastion, principal, None, agent, state, limit, cont, id_prefix)


@router.get("/namespaces/{namespace}/runs/{run_id}", summary="Get a run")
def get_run(
    namespace: NamespacePath, run_id: RunIdPath, bastion: BastionDep, principal: PrincipalDep
) -> dict[str, Any]:
    with bastion.store.read() as conn:
        return find_run(bastion, conn, principal, namespace, run_id).public()


class RunFork(BaseModel):
    model_config = ConfigDict(extra="forbid")
    seq: Annotated[int, Field(ge=0, description="Inherit the parent's journal up to and including this seq.")]


@router.post("/namespaces/{namespace}/runs/{run_id}/fork", status_code=201, summary="Fork a run at a seq")
async def fork_run(
    request: Request,
    namespace: NamespacePath,
    run_id: RunIdPath,
    body: RunFork,
    bastion: BastionDep,
    principal: PrincipalDep,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """A new live run of the same agent and input whose first attempt replays the parent's journal
    up to ``seq`` and continues live from there (time-travel debugging)."""
    require(principal, "developer", "start runs")

    def operation(conn: Connection) -> tuple[int, dict[str, Any]]:
        parent = find_run(bastion, conn, principal, namespace, run_id)
        entries = bastion.journal.entries(parent.id, conn=conn)
        if body.seq > len(entries):
            raise UserError(
                f"run {run_id} has {len(entries)} journal entries; cannot fork at seq {body.seq}",
                field="seq",
                hint=f"use a seq from 0 to {len(entries)}",
                status=422,
            )
        declared = str(parent.agent_spec.get("spec", {}).get("tier", "T0"))
        _refuse_revoked(bastion, conn, principal, namespace, parent.agent, declared)
        child = bastion.runs.create(
            conn,
            tenant_id=principal.tenant_id,
            namespace=namespace,
            agent=parent.agent,
            agent_spec=parent.agent_spec,
            input=parent.input,
            parent_run_id=parent.id,
            fork_seq=body.seq,
        )
        bastion.journal.copy_prefix(conn, entries, run_id=child.id, upto=body.seq)
        return 201, child.public()

    return await run_idempotent(request, bastion, principal, idempotency_key, operation)


@router.post("/namespaces/{namespace}/runs/{run_id}/cancel", summary="Cancel a run")
def cancel_run(
    namespace: NamespacePath, run_id: RunIdPath, bastion: BastionDep, principal: PrincipalDep
) -> dict[str, Any]:
    require(principal, "developer", "cancel runs")
    with bastion.store.write() as conn:
        run = find_run(bastion, conn, principal, namespace, run_id)
        return bastion.runs.request_cancel(conn, run).public()


@router.get(
    "/namespaces/{namespace}/runs/{run_id}/journal",
    summary="The run's journal entries (its ExecutionRecord rows)",
)
def journal(
    namespace: NamespacePath, run_id: RunIdPath, bastion: BastionDep, principal: PrincipalDep
) -> dict[str, Any]:
    with bastion.store.read() as conn:
        find_run(bastion, conn, principal, namespace, run_id)
    entries = bastion.journal.entries(run_id)
    return {
        "items": [
            {
                "seq": e.seq,
                "attempt": e.attempt,
                "kind": e.kind,
                "request": e.request,
                "requestHash": e.request_hash,
                "decision": e.decision,
                "reasons": e.reasons,
                "response": e.response,
                "error": e.error,
                "startedAt": e.started_at.isoformat(),
                "durationUs": e.duration_us,
                "prevHash": e.prev_hash,
                "hash": e.hash,
            }
            for e in entries
        ]
    }


def _verdict(bastion: Bastion, run: Run, *, full: bool = True) -> dict[str, Any]:
    verdict = bastion.journal.verify(
        run.id, expected_head=run.journal_head, expected_count=run.journal_count, full=full
    )
    return {
        "run": run.id,
        "namespace": run.namespace,
        "agent": run.agent,
        "state": str(run.state),
        "ok": verdict.ok,
        "entries": verdict.entries,
        "head": verdict.head,
        "brokenSeq": verdict.broken_seq,
        "reason": verdict.reason,
        "verifiedFrom": verdict.verified_from,
    }


@router.get("/namespaces/{namespace}/runs/{run_id}/verify", summary="Recompute the run's hash chain")
def verify_run(
    namespace: NamespacePath, run_id: RunIdPath, bastion: BastionDep, principal: PrincipalDep
) -> dict[str, Any]:
    with bastion.store.read() as conn:
        run = find_run(bastion, conn, principal, namespace, run_id)
    return _verdict(bastion, run)


@router.get("/namespaces/{namespace}/runs/{run_id}/record", summary="Export the run's signed ExecutionRecord")
def record(
    namespace: NamespacePath, run_id: RunIdPath, bastion: BastionDep, principal: PrincipalDep
) -> dict[str, Any]:
    with bastion.store.read() as conn:
        run = find_run(bastion, conn, principal, namespace, run_id)
    return bastion.records.export(run)


@router.get("/record-key", tags=["audit"], summary="The tenant's public key for verifying records offline")
def record_key(bastion: BastionDep, principal: PrincipalDep) -> dict[str, Any]:
    return bastion.records.public_key(principal.tenant_id)


@router.get("/audit/verify", tags=["audit"], summary="Verify the journal of every run of the tenant")
def verify_all(
    bastion: BastionDep,
    principal: PrincipalDep,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    incremental: Annotated[
        bool,
        Query(
            description="Recompute only the entries after each run's checkpoint (the last entry a "
            "full verification found intact), and check that the checkpointed entry still carries "
            "its hash. Catches anything appended, inserted, removed or re-hashed since; an edit of "
            "an already verified entry that leaves its hash alone needs a full verification (the "
            "default). Each item's verifiedFrom says where recomputing began."
        ),
    ] = False,
) -> dict[str, Any]:
    with bastion.store.read() as conn:
        found, _ = bastion.runs.list(conn, tenant_id=principal.tenant_id, namespace=None, limit=limit)
    verdicts = [_verdict(bastion, run, full=not incremental) for run in found]
    return {"ok": all(v["ok"] for v in verdicts), "items": verdicts}


@router.get(
    "/namespaces/{namespace}/runs/{run_id}/events",
    summary="Follow a run: state changes, calls and logs as Server-Sent Events",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def events(
    namespace: NamespacePath,
    run_id: RunIdPath,
    bastion: BastionDep,
    principal: PrincipalDep,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID", max_length=32)] = None,
    after: Annotated[
        int | None,
        Query(
            ge=0,
            le=MAX_EVENT_ID,
            description="Resume after this event id (like Last-Event-ID): ids number each run's events 1, 2, 3, ...",
        ),
    ] = None,
    follow: Annotated[bool, Query(description="Keep the stream open until the run finishes.")] = True,
) -> StreamingResponse:
    def load_run() -> Run:
        with bastion.store.read() as conn:
            return find_run(bastion, conn, principal, namespace, run_id)

    await run_in_threadpool(load_run)
    start = after or 0
    if last_event_id is not None:
        if not (last_event_id.isascii() and last_event_id.isdigit()) or int(last_event_id) > MAX_EVENT_ID:
            raise UserError(
                "Last-Event-ID must be an event id",
                field="Last-Event-ID",
                hint="send the id of the last event you received",
            )
        start = int(last_event_id)

    def fetch(cursor: int, row: int | None) -> tuple[list[Event], bool]:
        with bastion.store.read() as conn:
            # The run first: each statement may see a newer snapshot (PostgreSQL, read committed),
            # so a run read as finished here has its last events visible to the next statement.
            run = bastion.runs.get(conn, run_id)
            found = bastion.runs.events(conn, run_id, after=cursor, row=row)
        return found, run is None or run.state.finished

    async def stream() -> AsyncGenerator[str]:
        # Event ids are positions in this run's stream; the row id only spares re-counting.
        cursor, row = start, None
        idle = 0.0
        while True:
            found, finished = await run_in_threadpool(fetch, cursor, row)
            for record in found:
                cursor, row = record.id, record.row
                event = record.public()
                yield f"id: {event['id']}\nevent: {event['type']}\ndata: {json.dumps(event, separators=(',', ':'))}\n\n"
            if not found and (finished or not follow):
                yield "event: end\ndata: {}\n\n"
                return
            if found:
                idle = 0.0
                continue
            await asyncio.sleep(SSE_POLL_SECONDS)
            idle += SSE_POLL_SECONDS
            if idle >= SSE_KEEPALIVE_SECONDS:
                idle = 0.0
                yield ": keep-alive\n\n"

    return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
