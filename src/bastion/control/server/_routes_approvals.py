"""Approval routes: list the calls waiting for a human, approve or deny them.

Deciding re-queues the waiting run; its next attempt replays to the call and finds the decision.
Approvals are tenant-wide (their ids are unique), so ``bastion approve ID`` needs no namespace.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from bastion.control._bastion import Bastion
from bastion.control.store import Principal
from bastion.errors import NotFound, UserError
from bastion.execution.gateway import APPROVAL_STATES, Approval, ApprovalState

from ._deps import BastionDep, PrincipalDep, require

router = APIRouter(prefix="/api/v1", tags=["approvals"])
ApprovalIdPath = Annotated[str, Path(max_length=64, description="The approval's id.")]


class Decision(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: Annotated[str | None, Field(max_length=2000, description="Why; journaled with the decision.")] = (
        None
    )


def _public(bastion: Bastion, approval: Approval) -> dict[str, Any]:
    body = approval.public()
    body["state"] = approval.effective_state(bastion.clock.now())
    return body


@router.get("/approvals", summary="List approvals, oldest first (pending ones by default)")
def list_approvals(
    bastion: BastionDep,
    principal: PrincipalDep,
    state: Annotated[
        str | None, Query(max_length=16, description="pending (default), approved, denied, expired, all")
    ] = "pending",
    namespace: Annotated[str | None, Query(max_length=63, description="Only this namespace.")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> dict[str, Any]:
    wanted: ApprovalState | None = next((s for s in APPROVAL_STATES if s == state), None)
    if wanted is None and state not in (None, "all"):
        raise UserError(
            f"unknown approval state {state!r}",
            field="state",
            hint=f"use one of {', '.join(APPROVAL_STATES)} or all",
        )
    with bastion.store.read() as conn:
        found = bastion.gateway.approvals.list(
            conn, tenant_id=principal.tenant_id, namespace=namespace, state=wanted, limit=limit
        )
    return {"items": [_public(bastion, a) for a in found]}


@router.get("/approvals/{approval_id}", summary="Get an approval")
def get_approval(approval_id: ApprovalIdPath, bastion: BastionDep, principal: PrincipalDep) -> dict[str, Any]:
    with bastion.store.read() as conn:
        return _public(bastion, _get(bastion, conn, principal, approval_id))


def _get(bastion: Bastion, conn: Any, principal: Principal, approval_id: str) -> Approval:
    approval = bastion.gateway.approvals.get(conn, approval_id, tenant_id=principal.tenant_id)
    if approval is None:
        raise NotFound(
            f"approval {approval_id!r} not found",
            field="approval",
            hint="list the pending ones with `bastion approvals`",
        )
    return approval


def _decide(
    bastion: Bastion, principal: Principal, approval_id: str, approve: bool, reason: str | None
) -> dict[str, Any]:
    require(principal, "operator", "decide approvals")
    by = f"key {principal.key_name or principal.key_id}"
    with bastion.store.write() as conn:
        found = _get(bastion, conn, principal, approval_id)
        # The run's row lock first, the order a suspending worker takes them in.
        bastion.runs.lock(conn, found.run_id)
        decided = bastion.gateway.approvals.decide(
            conn, found, approve=approve, by=by, reason=reason, now=bastion.clock.now()
        )
        event = {"id": decided.id, "state": decided.state, "by": by, "reason": reason}
        bastion.runs.add_event(conn, decided.run_id, "approval", event)
        bastion.runs.requeue(conn, decided.run_id, reason=f"approval {decided.id} {decided.state} by {by}")
    return _public(bastion, decided)


@router.post("/approvals/{approval_id}/approve", summary="Approve a waiting call; its run resumes")
async def approve(
    approval_id: ApprovalIdPath, bastion: BastionDep, principal: PrincipalDep, body: Decision | None = None
) -> dict[str, Any]:
    reason = body.reason if body else None
    return await run_in_threadpool(_decide, bastion, principal, approval_id, True, reason)


@router.post(
    "/approvals/{approval_id}/deny", summary="Deny a waiting call; its run resumes and sees the denial"
)
async def deny(
    approval_id: ApprovalIdPath, bastion: BastionDep, principal: PrincipalDep, body: Decision | None = None
) -> dict[str, Any]:
    reason = body.reason if body else None
    return await run_in_threadpool(_decide, bastion, principal, approval_id, False, reason)
