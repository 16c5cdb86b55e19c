"""The OpenAPI document says what the API really answers: problem+json on every error status.

FastAPI documents only the success response and its own 422 validation shape
(``application/json``). Every error here is RFC 9457 problem+json (``_problems``), so each
operation gets the error statuses the API can answer with, all pointing at one ``Problem`` schema.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from ._problems import PROBLEM_JSON

PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "An RFC 9457 problem document.",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string", "description": "A stable URI naming the kind of problem."},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
        "field": {"type": "string", "description": "The offending field, when one is to blame."},
        "hint": {"type": "string", "description": "What to do about it."},
        "errors": {"type": "array", "items": {"type": "object"}},
    },
}

ERROR_STATUSES: dict[str, str] = {
    "400": "The request is malformed (a bad parameter, cursor, body or byte).",
    "401": "No API key, or an unknown or revoked one.",
    "403": "The key's role may not do this.",
    "404": "No such resource, run or namespace in the caller's tenant.",
    "405": "The method is not allowed on this path; the Allow header lists those that are.",
    "409": "A conflict with the stored state (stale resourceVersion, wrong run state).",
    "413": "The body is over the server's limit.",
    "415": "The body's content type is not accepted.",
    "422": "The body is well-formed but invalid.",
    "429": "A rate limit or budget is exhausted.",
    "500": "The server failed; the error was logged.",
    "503": "A backend is unavailable or an evaluation ran out of its time budget.",
}


def _problem_response(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}},
    }


def problem_openapi(app: FastAPI) -> dict[str, Any]:
    """The app's OpenAPI document with the error responses added; built once, then cached."""
    if app.openapi_schema is not None:
        return app.openapi_schema
    document = get_openapi(
        title=app.title,
        version=app.version,
        openapi_version=app.openapi_version,
        summary=app.summary,
        description=app.description,
        routes=app.routes,
    )
    schemas: dict[str, Any] = document.setdefault("components", {}).setdefault("schemas", {})
    schemas["Problem"] = PROBLEM_SCHEMA
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    paths: dict[str, dict[str, Any]] = document.get("paths", {})
    for operations in paths.values():
        for operation in operations.values():
            responses: dict[str, Any] = operation.setdefault("responses", {})
            for status, description in ERROR_STATUSES.items():
                responses[status] = _problem_response(description)
    app.openapi_schema = document
    return document


def install_problem_openapi(app: FastAPI) -> None:
    app.openapi = lambda: problem_openapi(app)  # pyright: ignore[reportAttributeAccessIssue]
