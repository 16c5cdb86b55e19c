"""Tenants, API keys and namespaces, and who the caller is."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Request, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Connection

from bastion.api import NAMESPACE_HINT, check_namespace
from bastion.control.store import KeyRecord, Principal
from bastion.errors import InvalidManifest, NotFound

from ._deps import BastionDep, IdempotencyKey, PrincipalDep, require, run_idempotent

router = APIRouter(prefix="/api/v1")

Role = Literal["viewer", "developer", "operator", "admin"]


def _name(value: str, field: str) -> str:
    try:
        return check_namespace(value)
    except ValueError as exc:
        raise InvalidManifest(str(exc), field=field, hint=NAMESPACE_HINT) from None


class TenantCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Annotated[str, Field(max_length=253, description=f"The tenant's name: {NAMESPACE_HINT}.")]
    admin_key_name: Annotated[str, Field(alias="adminKeyName", max_length=253)] = "first-admin"


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Annotated[str, Field(max_length=253, description=f"A label for the key: {NAMESPACE_HINT}.")]
    role: Role


class NamespaceCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Annotated[str, Field(max_length=253, description=f"The namespace: {NAMESPACE_HINT}.")]


def _key(record: KeyRecord, token: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": record.id,
        "name": record.name,
        "role": record.role,
        "tenant": record.tenant,
        "createdAt": record.created_at.isoformat(),
        "revokedAt": record.revoked_at.isoformat() if record.revoked_at else None,
    }
    if token is not None:
        out["token"] = token
    return out


def _system_admin(principal: Principal) -> None:
    if not (principal.system and principal.at_least("admin")):
        # Tenants are invisible to everyone else, so this route looks absent to them.
        raise NotFound(
            "no such endpoint for this key", hint="tenants are managed with a system-tenant admin key"
        )


@router.get("/whoami", tags=["keys"], summary="The calling key, its tenant and role")
def whoami(principal: PrincipalDep) -> dict[str, Any]:
    return {
        "keyId": principal.key_id,
        "tenant": principal.tenant,
        "role": principal.role,
        "system": principal.system,
    }


@router.get("/tenants", tags=["tenants"], summary="List tenants (system admins)")
def list_tenants(bastion: BastionDep, principal: PrincipalDep) -> dict[str, Any]:
    _system_admin(principal)
    with bastion.store.read() as conn:
        rows = bastion.store.list_tenants(conn)
    return {
        "items": [{"name": t.name, "system": t.system, "createdAt": t.created_at.isoformat()} for t in rows]
    }


@router.post("/tenants", tags=["tenants"], status_code=201, summary="Create a tenant and its first admin key")
async def create_tenant(
    request: Request,
    body: TenantCreate,
    bastion: BastionDep,
    principal: PrincipalDep,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    _system_admin(principal)
    name = _name(body.name, "name")
    key_name = _name(body.admin_key_name, "adminKeyName")

    def operation(conn: Connection) -> tuple[int, dict[str, Any]]:
        tenant = bastion.store.create_tenant(conn, name)
        record, token = bastion.store.create_key(conn, tenant, key_name, "admin")
        return 201, {
            "name": tenant.name,
            "createdAt": tenant.created_at.isoformat(),
            "adminKey": _key(record, token),
        }

    return await run_idempotent(request, bastion, principal, idempotency_key, operation)


@router.post(
    "/tenants/{tenant}/keys",
    tags=["tenants"],
    status_code=201,
    summary="Create a key in another tenant (system admins)",
)
async def create_tenant_key(
    request: Request,
    tenant: Annotated[str, Path(max_length=253)],
    body: KeyCreate,
    bastion: BastionDep,
    principal: PrincipalDep,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    _system_admin(principal)
    name = _name(body.name, "name")

    def operation(conn: Connection) -> tuple[int, dict[str, Any]]:
        record, token = bastion.store.create_key(
            conn, bastion.store.tenant_by_name(conn, tenant), name, body.role
        )
        return 201, _key(record, token)

    return await run_idempotent(request, bastion, principal, idempotency_key, operation)


@router.get("/keys", tags=["keys"], summary="List the tenant's API keys (admins)")
def list_keys(bastion: BastionDep, principal: PrincipalDep) -> dict[str, Any]:
    require(principal, "admin", "list API keys")
    with bastion.store.read() as conn:
        return {"items": [_key(k) for k in bastion.store.list_keys(conn, principal.tenant_id)]}


@router.post(
    "/keys",
    tags=["keys"],
    status_code=201,
    summary="Create an API key; its token is shown only in this response",
)
async def create_key(
    request: Request,
    body: KeyCreate,
    bastion: BastionDep,
    principal: PrincipalDep,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    require(principal, "admin", "create API keys")
    name = _name(body.name, "name")

    def operation(conn: Connection) -> tuple[int, dict[str, Any]]:
        tenant = bastion.store.tenant_by_name(conn, principal.tenant)
        record, token = bastion.store.create_key(conn, tenant, name, body.role)
        return 201, _key(record, token)

    return await run_idempotent(request, bastion, principal, idempotency_key, operation)


@router.delete("/keys/{key_id}", tags=["keys"], summary="Revoke an API key")
def revoke_key(
    key_id: Annotated[str, Path(max_length=64)], bastion: BastionDep, principal: PrincipalDep
) -> dict[str, Any]:
    require(principal, "admin", "revoke API keys")
    with bastion.store.write() as conn:
        bastion.store.revoke_key(conn, principal.tenant_id, key_id)
    return {"revoked": key_id}


@router.get("/namespaces", tags=["namespaces"], summary="List namespaces")
def list_namespaces(bastion: BastionDep, principal: PrincipalDep) -> dict[str, Any]:
    with bastion.store.read() as conn:
        rows = bastion.store.list_namespaces(conn, principal.tenant_id)
    return {"items": [{"name": n, "createdAt": c.isoformat(), "resources": count} for n, c, count in rows]}


@router.post("/namespaces", tags=["namespaces"], status_code=201, summary="Create a namespace")
async def create_namespace(
    request: Request,
    body: NamespaceCreate,
    bastion: BastionDep,
    principal: PrincipalDep,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    require(principal, "operator", "create namespaces")
    name = _name(body.name, "name")

    def operation(conn: Connection) -> tuple[int, dict[str, Any]]:
        created = bastion.store.create_namespace(conn, principal.tenant_id, name)
        return 201, {"name": name, "createdAt": created.isoformat(), "resources": 0}

    return await run_idempotent(request, bastion, principal, idempotency_key, operation)


@router.delete("/namespaces/{namespace}", tags=["namespaces"], summary="Delete an empty namespace")
def delete_namespace(
    namespace: Annotated[str, Path(max_length=253)], bastion: BastionDep, principal: PrincipalDep
) -> dict[str, Any]:
    require(principal, "operator", "delete namespaces")
    with bastion.store.write() as conn:
        bastion.store.delete_namespace(conn, principal.tenant_id, namespace)
    return {"deleted": namespace}
