"""ASGI middleware: the request body limit, Prometheus request metrics and the crash guard.

All are plain ASGI (not ``BaseHTTPMiddleware``) so they add no task per request.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bastion.errors import PayloadTooLarge, ServerError

from ._problems import send_problem

log = logging.getLogger("bastion.server")


class BodyLimit:
    """Refuse bodies over ``limit`` bytes with 413 before the application reads any of them.

    The body is read here (up to the limit) and handed to the app afterwards, so a chunked
    upload with no Content-Length is cut off just as surely as one that declares its size.
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in {"GET", "HEAD", "OPTIONS"}:
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._refuse(scope, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk: bytes = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                await self._refuse(scope, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, send: Send) -> None:
        error = PayloadTooLarge(
            f"the request body is larger than {self.limit} bytes",
            hint="split the manifest into several applies, or raise BASTION_MAX_BODY_BYTES on the server",
        )
        await send_problem(scope, send, error, close=True)


class Metrics:
    """Counts requests and times them, labelled by route template (bounded), never by raw path."""

    def __init__(self, app: ASGIApp, registry: CollectorRegistry) -> None:
        self.app = app
        self.requests = Counter(
            "bastion_http_requests", "HTTP requests served.", ["method", "route", "status"], registry=registry
        )
        self.latency = Histogram(
            "bastion_http_request_duration_seconds",
            "Time to serve an HTTP request.",
            ["method", "route"],
            registry=registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def record_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record_status)
        finally:
            route: Any = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = (
                scope["method"]
                if scope["method"] in {"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"}
                else "OTHER"
            )
            self.requests.labels(method, template, str(status)).inc()
            self.latency.labels(method, template).observe(time.perf_counter() - start)


class CrashGuard:
    """The last word on an unexpected exception: a 500 problem+json, and the connection kept.

    FastAPI hands an ``Exception`` handler to Starlette's ``ServerErrorMiddleware``, which sends
    the handler's response and then re-raises; uvicorn, seeing the exception after the response
    started, closes the keep-alive connection. This middleware sits inside it and swallows the
    exception once it is logged and answered. Nothing a client sends should get here: inputs are
    validated before they reach the store, and the fuzz test sends the ones that used to.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watch(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except Exception:
            log.exception("unhandled error on %s %s", scope["method"], scope["path"])
            if started:  # a streamed body broke off: nothing can be said any more
                return
            await send_problem(scope, send, ServerError("the server failed; the error was logged"))
