"""The in-sandbox model endpoint: unmodified OpenAI and Anthropic SDK code runs governed.

A small HTTP server on the sandbox's loopback serves ``POST /v1/chat/completions`` (OpenAI Chat
Completions) and ``POST /v1/messages`` (Anthropic Messages) and forwards each request over the
channel to the gateway as ``llm.chat`` with params ``{"format": "openai" | "anthropic", "body":
<the request body>}``. The gateway answers with the complete response body in the same format; for
a request with ``"stream": true`` the shim replays that answer to the SDK as the provider's
server-sent events, so streaming code works unchanged (the journaled unit is the whole answer).

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
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast

from ._channel import Channel
from ._errors import AgentError, ToolDenied, ToolFailed

ROUTES = {"/v1/chat/completions": "openai", "/chat/completions": "openai", "/v1/messages": "anthropic"}
MAX_BODY = 8 * 1024 * 1024
TOKEN_ENV = "BASTION_RUN_TOKEN"  # noqa: S105 -- the name of a variable, not a secret


class Shim:
    """The running endpoint; ``close`` stops it."""

    def __init__(self, channel: Channel, token: str, *, traceparent: str | None = None) -> None:
        handler = type(
            "Handler", (_Handler,), {"channel": channel, "token": token, "traceparent": traceparent}
        )
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="bastion-shim", daemon=True)
        self._thread.start()

    @property
    def environment(self) -> dict[str, str]:
        """What the SDKs read: where to send requests and the key to send."""
        base = f"http://127.0.0.1:{self.port}"
        token = cast(type[_Handler], self._server.RequestHandlerClass).token
        return {
            "OPENAI_BASE_URL": f"{base}/v1",
            "OPENAI_API_KEY": token,
            "ANTHROPIC_BASE_URL": base,
            "ANTHROPIC_API_KEY": token,
        }

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def start_from_environment(channel: Channel) -> Shim | None:
    """Start the shim when the host gave this run a token, and export its environment."""
    token = os.environ.get(TOKEN_ENV)
    if not token:
        return None
    shim = Shim(channel, token, traceparent=os.environ.get("TRACEPARENT"))
    os.environ.update(shim.environment)
    del os.environ[TOKEN_ENV]
    return shim


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
        params = {"format": wire, "body": body, "_meta": {k: v for k, v in meta.items() if v}}
        try:
            answer = self.channel.request("llm.chat", params)
        except ToolDenied as denied:
            self._error(wire, 403, "permission_error", f"denied by policy: {'; '.join(denied.reasons)}")
            return
        except ToolFailed as failed:
            self._error(wire, 502, "api_error", str(failed))
            return
        except AgentError as exc:
            self._error(wire, 400 if exc.code == -32602 else 500, "invalid_request_error", str(exc))
            return
        if not isinstance(answer, dict):
            self._error(wire, 502, "api_error", "the gateway's answer is not a response object")
            return
        answer = cast(dict[str, Any], answer)
        if body.get("stream") is True:
            events = _openai_events(answer, body) if wire == "openai" else _anthropic_events(answer)
            self._stream(events)
        else:
            self._send(200, answer)

    def do_GET(self) -> None:
        self._error("openai", 404, "not_found_error", "the Bastion shim serves model calls only (POST)")

    def _authorized(self) -> bool:
        given = self.headers.get("x-api-key") or ""
        bearer = self.headers.get("Authorization") or ""
        if bearer.lower().startswith("bearer "):
            given = given or bearer[7:].strip()
        return bool(given) and hmac.compare_digest(given.encode(), self.token.encode())

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

    def _send(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload, ensure_ascii=False).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _stream(self, events: Iterator[tuple[str | None, Any]]) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        for name, data in events:
            text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
            head = f"event: {name}\n" if name else ""
            self.wfile.write(f"{head}data: {text}\n\n".encode())
        self.wfile.flush()

    def _error(self, wire: str, status: int, kind: str, message: str) -> None:
        if wire == "anthropic":
            self._send(status, {"type": "error", "error": {"type": kind, "message": message}})
        else:
            self._send(status, {"error": {"message": message, "type": kind, "param": None, "code": None}})

    def log_message(self, format: str, *args: Any) -> None:  # the agent's stderr is its log: keep it clean
        return


def _openai_events(answer: dict[str, Any], request: dict[str, Any]) -> Iterator[tuple[str | None, Any]]:
    """A complete Chat Completions answer as the chunks a streaming server sends."""
    base = {
        "id": answer.get("id", "chatcmpl-bastion"),
        "object": "chat.completion.chunk",
        "created": answer.get("created", 0),
        "model": answer.get("model", ""),
    }
    choices = cast(list[dict[str, Any]], answer.get("choices") or [])
    for choice in choices:
        index = choice.get("index", 0)
        message = cast(dict[str, Any], choice.get("message") or {})
        yield (
            None,
            {
                **base,
                "choices": [
                    {"index": index, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
                ],
            },
        )
        if message.get("content"):
            delta = {"content": message["content"]}
            yield None, {**base, "choices": [{"index": index, "delta": delta, "finish_reason": None}]}
        for n, call in enumerate(cast(list[dict[str, Any]], message.get("tool_calls") or [])):
            delta = {
                "tool_calls": [
                    {"index": n, "id": call.get("id"), "type": "function", "function": call.get("function")}
                ]
            }
            yield None, {**base, "choices": [{"index": index, "delta": delta, "finish_reason": None}]}
        finish = choice.get("finish_reason") or "stop"
        yield None, {**base, "choices": [{"index": index, "delta": {}, "finish_reason": finish}]}
    options = request.get("stream_options")
    if isinstance(options, dict) and cast(dict[str, Any], options).get("include_usage"):
        yield None, {**base, "choices": [], "usage": answer.get("usage")}
    yield None, "[DONE]"


def _anthropic_events(answer: dict[str, Any]) -> Iterator[tuple[str | None, Any]]:
    """A complete Messages answer as the events a streaming server sends."""
    usage = cast(dict[str, Any], answer.get("usage") or {})
    start: dict[str, Any] = {**answer, "content": [], "stop_reason": None, "stop_sequence": None}
    start["usage"] = {**usage, "output_tokens": 0}
    yield "message_start", {"type": "message_start", "message": start}
    for index, block in enumerate(cast(list[dict[str, Any]], answer.get("content") or [])):
        opening: dict[str, Any]
        if block.get("type") == "tool_use":
            opening = {**block, "input": {}}
            delta = {"type": "input_json_delta", "partial_json": json.dumps(block.get("input", {}))}
        else:
            opening = {**block, "text": ""}
            delta = {"type": "text_delta", "text": block.get("text", "")}
        yield "content_block_start", {"type": "content_block_start", "index": index, "content_block": opening}
        yield "content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}
        yield "content_block_stop", {"type": "content_block_stop", "index": index}
    stop = {"stop_reason": answer.get("stop_reason"), "stop_sequence": answer.get("stop_sequence")}
    final = {"output_tokens": usage.get("output_tokens", 0)}
    yield "message_delta", {"type": "message_delta", "delta": stop, "usage": final}
    yield "message_stop", {"type": "message_stop"}
