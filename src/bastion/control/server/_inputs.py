"""One check for input the database (or JSON) would refuse, made before any route (or SQL) sees a request.

PostgreSQL refuses a NUL character in ``text`` and in ``jsonb`` (``\\u0000``), and no driver can
encode a lone UTF-16 surrogate (``"\\ud800"`` in JSON) as UTF-8; either used to reach the store and
come back as a 500. ``InputGuard`` refuses them in the path, the query string and JSON bodies with
a 400 naming where they were; YAML bodies are checked after parsing (``check_value``).

JSON bodies are also read as JSON is (``bastion.api.parse_json``): ``NaN``, ``Infinity`` and a
number that overflows a float (``1e999``), which Python's parser (and so every route's) accepts,
are a 400 naming the field, before any route runs: such a run input used to be stored, then
fail every time it was written back out.
"""

from __future__ import annotations

import re
from typing import Any, cast
from urllib.parse import parse_qsl

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bastion.api import NonFiniteNumber, parse_json
from bastion.errors import UserError

from ._problems import send_problem

_REFUSED = re.compile("[\x00\ud800-\udfff]")
# A JSON body can only hold a refused character as a raw NUL or an escape; the exact escapes
# are checked by parsing, so this pre-filter only has to never miss one.
_MAYBE_REFUSED = re.compile(rb"\x00|\\u(?:0000|[dD][89a-fA-F])")
# NaN and the infinities are spelled out; a float overflows only with a 3-digit exponent or a
# 200-digit mantissa (below both, it is under 1e298). Never misses one; parsing then decides.
_MAYBE_NON_FINITE = re.compile(rb"NaN|Infinity|[eE][+-]?[0-9]{3}|[0-9]{200}")
_MAX_DEPTH = 200


def refused_text(text: str) -> bool:
    """True if ``text`` holds a character the store cannot keep (NUL, a lone surrogate)."""
    return _REFUSED.search(text) is not None


def _refusal(where: str, field: str | None) -> UserError:
    return UserError(
        f"the {where} holds a NUL character or an unpaired surrogate, which cannot be stored",
        field=field,
        hint="remove NUL (\\u0000) and unpaired \\ud800-\\udfff characters; send valid Unicode text",
    )


def check_value(value: Any, where: str, path: str = "") -> None:
    """Raise a 400 if any string (key or value) inside a JSON-like ``value`` is refused."""
    stack: list[tuple[Any, str, int]] = [(value, path, 0)]
    while stack:
        item, at, depth = stack.pop()
        if depth > _MAX_DEPTH:
            raise UserError("the request is nested too deeply", field=at or None, hint="flatten the document")
        if isinstance(item, str):
            if refused_text(item):
                raise _refusal(where, at or None)
        elif isinstance(item, dict):
            for key, child in cast(dict[Any, Any], item).items():
                name = str(key)
                if refused_text(name):
                    raise _refusal(where, at or None)
                stack.append((child, f"{at}.{name}" if at else name, depth + 1))
        elif isinstance(item, list):
            stack.extend((child, f"{at}[{i}]", depth + 1) for i, child in enumerate(cast(list[Any], item)))


def check_request_line(scope: Scope) -> None:
    """The path and every query parameter (names and values, percent-decoded)."""
    if refused_text(scope.get("path", "")):
        raise _refusal("path", "path")
    query = cast(bytes, scope.get("query_string", b"")).decode("latin-1")
    for name, value in parse_qsl(query, keep_blank_values=True):
        if refused_text(name) or refused_text(value):
            raise _refusal("query parameter", name if not refused_text(name) else None)


def non_finite(error: NonFiniteNumber) -> UserError:
    """The 400 for a JSON body holding NaN, an infinity or an overflowing number."""
    return UserError(
        f"the request body is not valid JSON: {error}",
        field=error.path or None,
        hint="send a finite number (NaN, Infinity and numbers beyond ±1.8e308 are not JSON), "
        "or a string if the value is not a number",
    )


def check_json_body(body: bytes) -> None:
    refused = _MAYBE_REFUSED.search(body) is not None
    if not refused and _MAYBE_NON_FINITE.search(body) is None:
        return
    try:
        parsed = parse_json(body)
    except NonFiniteNumber as error:
        raise non_finite(error) from None
    except (ValueError, RecursionError):
        return  # not JSON (or not ours to judge): the route's own parser answers
    if refused:
        check_value(parsed, "request body")


class InputGuard:
    """Plain ASGI middleware: refuses requests carrying text the store cannot keep (400)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            check_request_line(scope)
        except UserError as error:
            await send_problem(scope, send, error)
            return
        content_type = dict(scope["headers"]).get(b"content-type", b"application/json")
        if scope["method"] in {"GET", "HEAD", "OPTIONS", "DELETE"} or b"json" not in content_type.lower():
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        try:
            check_json_body(body)
        except UserError as error:
            await send_problem(scope, send, error)
            return
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
