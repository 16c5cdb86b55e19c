"""One place that turns every failure into RFC 9457 problem+json. No stack trace ever leaves."""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Scope, Send

from bastion.errors import (
    BastionError,
    InvalidManifest,
    MethodNotAllowed,
    NotFound,
    Problem,
    ServerError,
    UserError,
)

log = logging.getLogger("bastion.server")
PROBLEM_JSON = "application/problem+json"


class ProblemResponse(JSONResponse):
    media_type = PROBLEM_JSON


async def send_problem(scope: Scope, send: Send, error: BastionError, *, close: bool = False) -> None:
    """Answer ``error`` as problem+json straight from ASGI middleware (before or around routing);
    ``close`` asks the client to drop the connection (a body left unread)."""
    body = json.dumps({**error.to_problem(), "instance": scope.get("path", "")}).encode()
    headers = [(b"content-type", PROBLEM_JSON.encode()), (b"content-length", str(len(body)).encode())]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def problem_response(
    error: BastionError, request: Request, headers: dict[str, str] | None = None
) -> ProblemResponse:
    body = error.to_problem()
    body["instance"] = request.url.path
    return ProblemResponse(body, status_code=error.status, headers=headers)


def allowed_methods(request: Request) -> list[str]:
    """Every method the API documents on this path. Starlette's own 405 names only the first
    matching route's methods, while FastAPI makes one route per method (GET, PUT, DELETE)."""
    app = request.app
    table: list[tuple[re.Pattern[str], set[str]]] | None = getattr(app.state, "allowed_methods", None)
    if table is None:
        table = []
        for template, operations in app.openapi().get("paths", {}).items():
            pattern = re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template))
            methods = {m.upper() for m in operations}
            table.append((re.compile(pattern), methods | ({"HEAD"} if "GET" in methods else set())))
        app.state.allowed_methods = table
    path = request.url.path
    return sorted({m for pattern, methods in table if pattern.fullmatch(path) for m in methods})


def _field(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] in {"body", "query", "path", "header"}:
        parts = parts[1:]
    return ".".join(parts)


def _from_validation(exc: RequestValidationError) -> BastionError:
    problems = [
        Problem(
            message=str(err.get("msg", "invalid")).removeprefix("Value error, "),
            field=_field(tuple(err.get("loc", ()))) or None,
            hint=_hint(str(err.get("type", ""))),
        )
        for err in exc.errors()
    ]
    first = problems[0] if problems else Problem(message="invalid request")
    return InvalidManifest(
        f"the request is invalid: {first.field + ': ' if first.field else ''}{first.message}",
        field=first.field,
        hint=first.hint,
        problems=problems,
    )


def _hint(kind: str) -> str | None:
    return {
        "missing": "add the field",
        "json_invalid": "send a valid JSON body with Content-Type: application/json",
        "extra_forbidden": "remove the field",
        "model_attributes_type": "send a JSON object",
        "dict_type": "send a JSON object",
    }.get(kind, "see the OpenAPI document at /api/v1/openapi.json")


def install_problem_handlers(app: FastAPI) -> None:
    @app.exception_handler(BastionError)
    async def _bastion(request: Request, exc: BastionError) -> ProblemResponse:  # pyright: ignore[reportUnusedFunction]
        if exc.status >= 500:
            log.error("request failed: %s", exc.detail)
        return problem_response(exc, request)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> ProblemResponse:  # pyright: ignore[reportUnusedFunction]
        return problem_response(_from_validation(exc), request)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> ProblemResponse:  # pyright: ignore[reportUnusedFunction]
        if exc.status_code == 404:
            error: BastionError = NotFound(
                f"no such endpoint: {request.method} {request.url.path}",
                hint="the API lives under /api/v1; see /api/v1/openapi.json",
            )
        elif exc.status_code == 405:
            allowed = allowed_methods(request)
            error = MethodNotAllowed(
                f"method {request.method} is not allowed on {request.url.path}",
                hint=f"use {', '.join(allowed)}; see /api/v1/openapi.json",
            )
            return problem_response(error, request, headers={"Allow": ", ".join(allowed)})
        elif exc.status_code < 500:
            error = UserError(str(exc.detail), status=exc.status_code)
        else:
            error = ServerError("the server failed", status=exc.status_code)
        return problem_response(error, request, headers=dict(exc.headers or {}))

    @app.exception_handler(RecursionError)
    async def _deep(request: Request, exc: RecursionError) -> ProblemResponse:  # pyright: ignore[reportUnusedFunction]
        return problem_response(
            UserError("the request is nested too deeply", hint="flatten the document"), request
        )
