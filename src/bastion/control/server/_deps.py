"""Request plumbing shared by the routes: who is calling, and Idempotency-Key handling."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Depends, Header, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import Connection
from sqlalchemy.exc import IntegrityError
from starlette.concurrency import run_in_threadpool

from bastion.control._bastion import Bastion
from bastion.control.store import Principal, is_unique_violation
from bastion.errors import Forbidden, IdempotencyKeyReused, Unauthorized, UserError

bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer bst_…`")


def get_bastion(request: Request) -> Bastion:
    bastion: Bastion = request.app.state.bastion
    return bastion


BastionDep = Annotated[Bastion, Depends(get_bastion)]


def authenticated(
    bastion: BastionDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> Principal:
    if credentials is None:
        raise Unauthorized(
            "no API key was sent",
            field="Authorization",
            hint="send 'Authorization: Bearer <key>'; `bastion up` printed the first admin key",
        )
    principal = bastion.store.authenticate(credentials.credentials)
    if principal is None:
        raise Unauthorized(
            "the API key is unknown, malformed or revoked",
            field="Authorization",
            hint="ask an admin for a key (`bastion keys create`)",
        )
    return principal


PrincipalDep = Annotated[Principal, Depends(authenticated)]


def require(principal: Principal, role: str, what: str) -> None:
    if not principal.at_least(role):
        raise Forbidden(
            f"role {principal.role!r} may not {what}", hint=f"use a key with role {role!r} or higher"
        )


IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        max_length=255,
        description="Retrying with the same key and body returns the first response; another body is a 422.",
    ),
]


def _request_hash(request: Request, body: bytes) -> str:
    try:
        canonical = json.dumps(json.loads(body), sort_keys=True, separators=(",", ":")).encode()
    except ValueError:
        canonical = body
    digest = hashlib.sha256(f"{request.method} {request.url.path}\n".encode())
    digest.update(canonical)
    return digest.hexdigest()


async def run_idempotent(
    request: Request,
    bastion: Bastion,
    principal: Principal,
    key: str | None,
    operation: Callable[[Connection], tuple[int, dict[str, Any]]],
    *,
    authorize: Callable[[Connection], None] | None = None,
) -> JSONResponse:
    """Run a creating operation once per Idempotency-Key, in one transaction with its record.

    ``authorize`` holds every check that depends on who is calling and is not made before this
    call (role per kind, operator-owned fields): it runs in the transaction before the stored
    response is looked at, so a replayed key answers only a caller who could make the request
    itself. The record is per tenant, so another tenant's key never finds it.
    """
    body = await request.body()
    request_hash = _request_hash(request, body)
    if key is not None and not key.strip():
        raise UserError(
            "the Idempotency-Key header is empty",
            field="Idempotency-Key",
            hint="send a unique string, e.g. a UUID",
        )
    store = bastion.store

    def attempt() -> JSONResponse:
        with store.write() as conn:
            if authorize is not None:
                authorize(conn)
            if key is not None:
                stored = store.idempotent_response(conn, principal.tenant_id, key)
                if stored is not None:
                    stored_hash, status, text = stored
                    if stored_hash != request_hash:
                        raise IdempotencyKeyReused(
                            "this Idempotency-Key was used with a different request",
                            field="Idempotency-Key",
                            hint="use a new key for a new request",
                        )
                    return JSONResponse(
                        json.loads(text), status_code=status, headers={"Idempotent-Replayed": "true"}
                    )
            status, payload = operation(conn)
            if key is not None:
                store.remember_response(
                    conn, principal.tenant_id, key, request_hash, status, json.dumps(payload)
                )
        return JSONResponse(payload, status_code=status)

    for tries in range(3):
        try:
            return await run_in_threadpool(attempt)
        except IntegrityError as exc:
            # A concurrent request with the same key, or a concurrent create of the same name,
            # committed first: run again and see what it left.
            if not is_unique_violation(exc) or tries == 2:
                raise
    raise AssertionError("unreachable")
