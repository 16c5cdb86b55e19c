"""Trust routes: an agent's earned tier, its revocation, and the journal of every change.

Operators promote, demote, revoke and restore (``bastion trust …``); Bastion itself promotes after
compliant runs and revokes when an error budget is exceeded. Each change is journaled with who
made it and why.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Connection
from starlette.concurrency import run_in_threadpool

from bastion.api import TIERS
from bastion.control._bastion import Bastion
from bastion.control.store import Principal, get_row
from bastion.errors import Conflict, NotFound, UserError

from ._deps import BastionDep, PrincipalDep, require
from ._routes_resources import NamespacePath

router = APIRouter(prefix="/api/v1", tags=["trust"])
AgentPath = Annotated[str, Path(max_length=253, description="The Agent's name.")]


class TrustChangeBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    action: Literal["promote", "demote", "revoke", "restore"]
    reason: Annotated[
        str, Field(min_length=1, max_length=2000, description="Why; journaled with the change.")
    ]
    tier: Annotated[
        Literal["T0", "T1", "T2", "T3", "T4"] | None,
        Field(description="For promote/demote: the tier to move to (default: one step)."),
    ] = None


def _declared(conn: Connection, principal: Principal, namespace: str, agent: str) -> str:
    row = get_row(conn, principal.tenant_id, "Agent", namespace, agent)
    if row is None:
        raise NotFound(
            f"agent {agent!r} not found in namespace {namespace!r}",
            field="agent",
            hint=f"list agents with `bastion get agents -n {namespace}`",
        )
    return str(row.spec.get("tier", "T0"))


def _view(
    bastion: Bastion, conn: Connection, principal: Principal, namespace: str, agent: str
) -> dict[str, Any]:
    declared = _declared(conn, principal, namespace, agent)
    state = bastion.trust.state(conn, principal.tenant_id, namespace, agent, declared=declared)
    broken = bastion.trust.verify(conn, principal.tenant_id, namespace, agent)
    return {
        "agent": agent,
        "namespace": namespace,
        "declaredTier": declared,
        "tier": state.tier,
        "revoked": state.revoked,
        "reason": state.reason,
        "events": bastion.trust.events(conn, principal.tenant_id, namespace, agent),
        "verified": broken is None,
        "brokenSeq": broken,
    }


@router.get(
    "/namespaces/{namespace}/agents/{agent}/trust", summary="An agent's tier, revocation and trust journal"
)
def get_trust(
    namespace: NamespacePath, agent: AgentPath, bastion: BastionDep, principal: PrincipalDep
) -> dict[str, Any]:
    with bastion.store.read() as conn:
        return _view(bastion, conn, principal, namespace, agent)


def _change(
    bastion: Bastion, principal: Principal, namespace: str, agent: str, body: TrustChangeBody
) -> dict[str, Any]:
    require(principal, "operator", "change an agent's trust")
    actor = f"key {principal.key_name or principal.key_id}"
    with bastion.store.write() as conn:
        declared = _declared(conn, principal, namespace, agent)
        state = bastion.trust.state(conn, principal.tenant_id, namespace, agent, declared=declared)
        rank = TIERS.index(state.tier)
        to_tier: str | None = None
        if body.action in ("promote", "demote"):
            step = 1 if body.action == "promote" else -1
            target = body.tier or (TIERS[rank + step] if 0 <= rank + step < len(TIERS) else None)
            if target is None or (TIERS.index(target) - rank) * step <= 0:
                raise UserError(
                    f"agent {agent!r} is at {state.tier}; it cannot be {body.action}d to {target or 'beyond it'}",
                    field="tier",
                    hint=f"{body.action} moves {'up' if step > 0 else 'down'} from {state.tier}, within T0 to T4",
                    status=422,
                )
            to_tier = target
        elif body.action == "revoke" and state.revoked:
            raise Conflict(
                f"agent {agent!r} is revoked already", field="action", hint="`bastion trust restore` it first"
            )
        elif body.action == "restore" and not state.revoked:
            raise Conflict(
                f"agent {agent!r} is not revoked", field="action", hint="only a revoked agent can be restored"
            )
        bastion.trust.change(
            conn,
            principal.tenant_id,
            namespace,
            agent,
            declared=declared,
            action=body.action,
            to_tier=to_tier,
            actor=actor,
            reason=body.reason,
            now=bastion.clock.now(),
            rule_id="operator",
        )
        if body.action == "revoke":
            bastion.runs.revoke_active(
                conn, principal.tenant_id, namespace, agent, reason=f"agent revoked by {actor}: {body.reason}"
            )
        return _view(bastion, conn, principal, namespace, agent)


@router.post(
    "/namespaces/{namespace}/agents/{agent}/trust", summary="Promote, demote, revoke or restore an agent"
)
async def change_trust(
    namespace: NamespacePath,
    agent: AgentPath,
    body: TrustChangeBody,
    bastion: BastionDep,
    principal: PrincipalDep,
) -> dict[str, Any]:
    return await run_in_threadpool(_change, bastion, principal, namespace, agent, body)
