"""The in-sandbox model endpoint: unmodified OpenAI and Anthropic SDK code runs governed.

A small HTTP server on the sandbox's loopback serves ``POST /v1/chat/completions`` (OpenAI Chat
Completions) and ``POST /v1/messages`` (Anthropic Messages) and forwards each request over the
channel to the gateway as ``llm.chat`` with params ``{"format": "openai" | "anthropic", "request":
<the request body, unchanged>}``. The gateway answers ``{"body": …}`` with the complete response in
that format, or, for a request with ``"stream": true``, ``{"events": [{"event"?, "data"}, …]}``: the
provider's server-sent events rendered from the whole answer, which the shim writes out as they are,
so streaming code works unchanged (the journaled unit is the whole answer).

The runner starts it and exports ``OPENAI_BASE_URL``, ``ANTHROPIC_BASE_URL`` and, as both API
keys, the run's token. The token is checked here and is worthless anywhere else: the shim only
forwards on this run's channel, and no provider key ever enters the sandbox. The trace context
(the SDK's ``traceparent`` header, else the run's) travels in ``_meta``, outside what is hashed and
journaled, so a replayed request still matches.

Standard library only.
"""

from __future__ import annotations

import hmac
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast

from ._channel import Channel
from ._errors import AgentError, ToolDenied, ToolFailed

ROUTES = {"/v1/chat/completions": "openai", "/chat/completions": "openai", "/v1/messages": "anthropic"}
MAX_BODY = 8 * 1024 * 1024
TOKEN_ENV = "BASTION_RUN_TOKEN"  # noqa: S105 -- the name of a variable, not a secret


class Shim:
    """The running endpoint; ``close`` stops it. Without a token it refuses every request: a warm
    sandbox starts it before its run is known (``prestart``), and the run's token opens it."""

    def __init__(self, channel: Channel, token: str = "", *, traceparent: str | None = None) -> None:
        self._handler = cast(
            type[_Handler],
            type("Handler", (_Handler,), {"channel": channel, "token": token, "traceparent": traceparent}),
        )
        self.channel = channel
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler)
        self._server.daemon_threads = True
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="bastion-shim", daemon=True)
        self._thread.start()

    def authorize(self, token: str, *, traceparent: str | None) -> None:
        """Serve this run's token (and trace) from now on; any earlier token stops working."""
        self._handler.token, self._handler.traceparent = token, traceparent

    @property
    def environment(self) -> dict[str, str]:
        """What the SDKs read: where to send requests and the key to send."""
        base = f"http://127.0.0.1:{self.port}"
        token = self._handler.token
        return {
            "OPENAI_BASE_URL": f"{base}/v1",
            "OPENAI_API_KEY": token,
            "ANTHROPIC_BASE_URL": base,
            "ANTHROPIC_API_KEY": token,
        }

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


_started: Shim | None = None
"""The sandbox's one shim, once started (each run's token replaces the last one's)."""


def prestart(channel: Channel) -> None:
    """Start the shim before any run (a warm sandbox's warm-up): its server socket and thread
    then cost a run nothing (in gVisor, tens of milliseconds). It refuses everything until
    ``start_from_environment`` gives it a run's token."""
    global _started
    if _started is None:
        _started = Shim(channel)


def start_from_environment(channel: Channel) -> Shim | None:
    """Open the shim to the run's token when the host gave one (starting it if need be), and
    export its environment."""
    global _started
    token = os.environ.get(TOKEN_ENV)
    if not token:
        return None
    traceparent = os.environ.get("TRACEPARENT")
    if _started is None or _started.channel is not channel:
        _started = Shim(channel, token, traceparent=traceparent)
    else:
        _started.authorize(token, traceparent=traceparent)
    os.environ.update(_started.environment)
    del os.environ[TOKEN_ENV]
    return _started


class _Handler(BaseHTTPRequestHandler):
    channel: Channel
    token: str
    traceparent: str | None
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0].rstrip("/")
        wire = ROUTES.get(path)
        if wire is None:
            self._error("openai", 404, "not_found_error", f"the Bastion shim serves no {path!r}")
            return
        if not self._authorized():
            self._error(wire, 401, "authentication_error", "the API key is not this run's token")
            return
        body = self._body(wire)
        if body is None:
            return
        meta = {"traceparent": self.headers.get("traceparent") or self.traceparent}
        params = {"format": wire, "request": body, "_meta": {k: v for k, v in meta.items() if v}}
        try:
            answer = self.channel.request("llm.chat", params)
        except ToolDenied as denied:
            if denied.data.get("type") == "budget_exceeded":
                self._error(wire, 429, "rate_limit_error", f"budget exhausted: {'; '.join(denied.reasons)}")
            else:
                self._error(wire, 403, "permission_error", f"denied by policy: {'; '.join(denied.reasons)}")
            return
        except ToolFailed as failed:
            self._error(wire, 502, "api_error", str(failed))
            return
        except AgentError as exc:
            self._error(wire, 400 if exc.code == -32602 else 500, "invalid_request_error", str(exc))
            return
        answer = cast(dict[str, Any], answer) if isinstance(answer, dict) else {}
        events, payload = answer.get("events"), answer.get("body")
        if isinstance(events, list):
            self._stream(cast(list[dict[str, Any]], events))
        elif isinstance(payload, dict):
            self._send(200, cast(dict[str, Any], payload))
        else:
            self._error(wire, 502, "api_error", "the gateway's answer is not a response in this format")

    def do_GET(self) -> None:
        self._error("openai", 404, "not_found_error", "the Bastion shim serves model calls only (POST)")

    def _authorized(self) -> bool:
        given = self.headers.get("x-api-key") or ""
        bearer = self.headers.get("Authorization") or ""
        if bearer.lower().startswith("bearer "):
            given = given or bearer[7:].strip()
        token = self.token  # read once: a new run's token may replace it meanwhile
        return bool(given) and bool(token) and hmac.compare_digest(given.encode(), token.encode())

    def _body(self, wire: str) -> dict[str, Any] | None:
        try:
            length = int(self.headers.get("Content-Length") or "0")
        except ValueError:
            length = -1
        if length < 0 or length > MAX_BODY:
            self._error(wire, 413, "request_too_large", f"the request body must be 0 to {MAX_BODY} bytes")
            return None
        raw = self.rfile.read(length)
        try:
            body = json.loads(raw or b"null")
        except ValueError as exc:
            self._error(wire, 400, "invalid_request_error", f"the request body is not JSON: {exc}")
            return None
        if not isinstance(body, dict):
            self._error(wire, 400, "invalid_request_error", "the request body must be a JSON object")
            return None
        return cast(dict[str, Any], body)

    def _stream(self, events: list[dict[str, Any]]) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        for event in events:
            name, data = event.get("event"), event.get("data", "")
            text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
            head = f"event: {name}\n" if name else ""
            self.wfile.write(f"{head}data: {text}\n\n".encode())
        self.wfile.flush()

    def _send(self, status: int, payload: dict[str, Any], *, retry: bool = True) -> None:
        data = json.dumps(payload, ensure_ascii=False).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if not retry:
            # Both official SDKs honour this: a refusal is final, retrying it would only wait.
            self.send_header("x-should-retry", "false")
        self.end_headers()
        self.wfile.write(data)

    def _error(self, wire: str, status: int, kind: str, message: str) -> None:
        retry = status >= 500
        if wire == "anthropic":
            self._send(status, {"type": "error", "error": {"type": kind, "message": message}}, retry=retry)
        else:
            body = {"error": {"message": message, "type": kind, "param": None, "code": None}}
            self._send(status, body, retry=retry)

    def log_message(self, format: str, *args: Any) -> None:  # the agent's stderr is its log: keep it clean
        return
