"""The workers' sandboxes: warm, starting and serving runs (``GET /api/v1/sandboxes``)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from bastion.control._sandboxes import list_sandboxes

from ._deps import BastionDep, PrincipalDep, require

router = APIRouter(prefix="/api/v1")


@router.get(
    "/sandboxes",
    tags=["sandboxes"],
    summary="Every live worker's pooled sandboxes (operators; other tenants see their own runs' only)",
)
def get_sandboxes(bastion: BastionDep, principal: PrincipalDep) -> dict[str, Any]:
    require(principal, "operator", "list sandboxes")
    # Warm sandboxes belong to no tenant and a Hot one names its run: the platform's operators
    # (system tenant) see all of them, a tenant's see only the sandboxes serving their runs.
    tenant = None if principal.system else principal.tenant_id
    with bastion.store.read() as conn:
        items = list_sandboxes(conn, bastion.clock.now(), tenant_id=tenant)
    return {"items": items}
