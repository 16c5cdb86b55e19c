"""Fake model providers: a real HTTP server on 127.0.0.1 speaking OpenAI's and Anthropic's wire
formats, with scripted answers and the faults real providers have.

One server serves both formats: ``POST /v1/chat/completions`` (OpenAI Chat Completions; point a
client at ``fake.openai_url``) and ``POST /v1/messages`` (Anthropic Messages; ``fake.anthropic_url``),
streamed (SSE) or not, as the request asks. Each request takes the next scripted step (or the
``default`` once the script is used up) and the server records every request it received::

    with FakeProvider(tool_call("kb.search", query="refunds"), reply("We do not refund.")) as fake:
        ...  # a ModelPolicy target with baseUrl: fake.openai_url
        assert fake.requests[1].body["messages"][-1]["role"] == "tool"

Faults: ``fault(503, retry_after=2)``, ``malformed()``, ``disconnect(after_events=2)``, and a
``delay`` on any step (longer than the client's timeout, it is a timeout). ``hold()`` pauses a
streamed answer halfway until the test releases it (to crash a worker mid-stream).

The JSON here is written by hand from the providers' documentation, not by Bastion's converters:
the tests that check Bastion against this server would not notice a bug both shared. The
official ``openai`` and ``anthropic`` SDKs are run against it in Bastion's own tests.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, cast


class Hold:
    """Pauses an answer (a streamed one after some events, another before it is sent): ``reached``
    is set there, ``release()`` goes on."""

    def __init__(self) -> None:
        self.reached = threading.Event()
        self.released = threading.Event()

    def release(self) -> None:
        self.released.set()

    def wait_reached(self, timeout: float = 30.0) -> None:
        if not self.reached.wait(timeout):
            raise AssertionError(f"no streamed answer reached the hold in {timeout} s")


@dataclass(frozen=True, kw_only=True)
class Step:
    """One scripted answer (build it with ``reply``, ``tool_call``, ``fault``, ... )."""

    text: str = ""
    calls: tuple[tuple[str, Any], ...] = ()
    """Tool calls: (name, arguments); arguments that are a string are sent as written (bad JSON)."""
    status: int = 200
    body: bytes | None = None
    """A raw body sent instead of a rendered answer (errors, malformed JSON)."""
    retry_after: str | None = None
    delay: float = 0.0
    """Seconds to wait before answering at all."""
    disconnect_after: int | None = None
    """Close the connection after this many streamed events (non-streamed: before the body)."""
    malformed_stream: bool = False
    hold: Hold | None = None
    hold_after: int = 2
    """Events sent before a ``hold`` pauses the stream."""
    usage: tuple[int, int] | None = None
    """(input, output) tokens to report; by default about four characters a token."""
    report_usage: bool = True
    model: str | None = None


def reply(text: str, **options: Any) -> Step:
    """Answer with text."""
    return Step(text=text, **options)


def tool_call(name: str, /, **arguments: Any) -> Step:
    """Answer by calling one tool."""
    return Step(calls=((name, arguments),))


def tool_calls(*calls: tuple[str, Any], text: str = "") -> Step:
    """Answer by calling several tools in one turn: ``tool_calls(("a", {...}), ("b", {...}))``."""
    return Step(text=text, calls=tuple(calls))


def fault(
    status: int = 500, *, retry_after: float | str | None = None, body: Any = None, delay: float = 0.0
) -> Step:
    """Answer with an HTTP error (``body`` defaults to a provider-style error object)."""
    payload = body if body is not None else {"error": {"type": "server_error", "message": f"fake {status}"}}
    return Step(
        status=status,
        body=json.dumps(payload).encode(),
        retry_after=None if retry_after is None else str(retry_after),
        delay=delay,
    )


def malformed(*, stream_only: bool = False) -> Step:
    """Answer 200 with a body that is not JSON (streamed: one good event, then garbage)."""
    return Step(
        text="garbled", malformed_stream=True, body=None if stream_only else b'{"id": "x", "choices": ['
    )


def disconnect(after_events: int = 2) -> Step:
    """Start the answer, then drop the connection."""
    return Step(text="this answer is cut off halfway", disconnect_after=after_events)


@dataclass(frozen=True, kw_only=True)
class Received:
    path: str
    headers: dict[str, str]
    """Lowercase names."""
    body: Any
    peer: tuple[str, int] = ("", 0)
    """The client's address and port: requests with the same one came over one connection."""

    @property
    def api_key(self) -> str | None:
        auth = self.headers.get("authorization", "")
        return auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else self.headers.get("x-api-key")


@dataclass
class _State:
    script: deque[Step]
    default: Step | None
    api_key: str | None
    model: str
    requests: list[Received] = field(default_factory=list[Received])
    lock: threading.Lock = field(default_factory=threading.Lock)
    closing: threading.Event = field(default_factory=threading.Event)
    calls: int = 0


class FakeProvider:
    """A fake OpenAI + Anthropic server; use as a context manager (or ``start``/``close``).

    Args:
        steps: the scripted answers, one per request, in order.
        default: the answer once the script is used up; without one, such a request gets a 500
            saying the script is exhausted.
        api_key: if given, requests without it (``Authorization: Bearer`` or ``x-api-key``) get 401.
    """

    def __init__(
        self,
        *steps: Step,
        default: Step | None = None,
        api_key: str | None = None,
        model: str = "fake-model",
        host: str = "127.0.0.1",
    ) -> None:
        self._state = _State(script=deque(steps), default=default, api_key=api_key, model=model)
        self._host = host
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle -----------------------------------------------------------------------

    def start(self) -> FakeProvider:
        server = _Server((self._host, 0), _handler(self._state))
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.02},
            name="bastion-fake-provider",
            daemon=True,
        )
        self._thread.start()
        return self

    def close(self) -> None:
        self._state.closing.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FakeProvider:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # --- what tests use ------------------------------------------------------------------

    @property
    def url(self) -> str:
        assert self._server is not None, "start the FakeProvider first"
        return f"http://{self._host}:{self._server.server_address[1]}"

    @property
    def openai_url(self) -> str:
        """The base URL an OpenAI client (or a ModelPolicy target) takes: ``…/v1``."""
        return self.url + "/v1"

    @property
    def anthropic_url(self) -> str:
        """The base URL an Anthropic client takes (it adds ``/v1/messages`` itself)."""
        return self.url

    @property
    def requests(self) -> list[Received]:
        with self._state.lock:
            return list(self._state.requests)

    def push(self, *steps: Step) -> None:
        """Append answers to the script."""
        with self._state.lock:
            self._state.script.extend(steps)

    @property
    def remaining(self) -> int:
        with self._state.lock:
            return len(self._state.script)


class _Server(ThreadingHTTPServer):
    request_queue_size = 1024
    """The listen backlog (socketserver's default is 5): a burst of callers opening connections at
    once overflowed it, and the kernel reset some of them (a ``ReadError`` in the client)."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hangs up (a timeout, a killed worker) is part of the game, not an error."""
        return


def _handler(state: _State) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body go out at once, not 40 ms apart

        def log_message(self, format: str, *args: Any) -> None:
            return

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length)
            try:
                body: Any = json.loads(raw or b"null")
            except ValueError:
                body = None
            headers = {k.lower(): v for k, v in self.headers.items()}
            received = Received(path=self.path, headers=headers, body=body, peer=self.client_address[:2])
            with state.lock:
                state.requests.append(received)
                step = state.script.popleft() if state.script else state.default
                state.calls += 1
                n = state.calls
            path = self.path.split("?")[0]
            if path.endswith("/chat/completions"):
                fmt = "openai"
            elif path.endswith("/v1/messages"):
                fmt = "anthropic"
            else:
                return self._json(404, {"error": {"type": "not_found", "message": f"no route {path}"}})
            if state.api_key is not None and received.api_key != state.api_key:
                return self._json(
                    401, {"error": {"type": "authentication_error", "message": "invalid api key"}}
                )
            if not isinstance(body, dict):
                return self._json(
                    400, {"error": {"type": "invalid_request_error", "message": "body is not JSON"}}
                )
            if step is None:
                return self._json(
                    500, {"error": {"type": "server_error", "message": "the fake's script is exhausted"}}
                )
            if step.delay and state.closing.wait(step.delay):
                return None
            request = cast(dict[str, Any], body)
            if step.status != 200 or (
                step.body is not None and not (request.get("stream") and step.malformed_stream)
            ):
                return self._raw(step.status, step.body or b"{}", step.retry_after)
            if step.disconnect_after is not None and not request.get("stream"):
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "5000")
                self.end_headers()
                self.wfile.write(b'{"id": "')
                self.wfile.flush()
                self.close_connection = True
                return None
            if step.hold is not None and not request.get("stream"):
                step.hold.reached.set()  # a non-streamed answer is held before it is sent
                while not step.hold.released.wait(0.05):
                    if state.closing.is_set():
                        return None
            step = step if step.usage is not None else replace(step, usage=_usage(raw, step))
            model = step.model or str(request.get("model") or state.model)
            if fmt == "openai":
                if request.get("stream"):
                    include = bool(
                        cast(dict[str, Any], request.get("stream_options") or {}).get("include_usage")
                    )
                    return self._stream(_openai_chunks(step, model, n, include), step, named=False)
                return self._json(200, _openai_completion(step, model, n))
            if request.get("stream"):
                return self._stream(_anthropic_events(step, model, n), step, named=True)
            return self._json(200, _anthropic_message(step, model, n))

        def _json(self, status: int, payload: Any) -> None:
            self._raw(status, json.dumps(payload).encode(), None)

        def _raw(self, status: int, data: bytes, retry_after: str | None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if retry_after is not None:
                self.send_header("Retry-After", retry_after)
            self.end_headers()
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self.wfile.write(data)

        def _stream(self, events: Iterator[tuple[str | None, str]], step: Step, *, named: bool) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            try:
                for sent, (name, data) in enumerate(events):
                    if step.disconnect_after is not None and sent >= step.disconnect_after:
                        self.wfile.flush()
                        self.close_connection = True
                        self.connection.shutdown(2)
                        return
                    if step.hold is not None and sent == step.hold_after:
                        step.hold.reached.set()
                        while not step.hold.released.wait(0.05):
                            if state.closing.is_set():
                                return
                    if step.malformed_stream and sent == 1:
                        data = '{"choices": [{"delta": {"content": "oops'
                    frame = (f"event: {name}\n" if named and name else "") + f"data: {data}\n\n"
                    self._chunk(frame.encode())
                self._chunk(b"")
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True

        def _chunk(self, data: bytes) -> None:
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()

    return Handler


def _usage(raw: bytes, step: Step) -> tuple[int, int]:
    out = len(step.text) + sum(len(name) + len(json.dumps(args)) for name, args in step.calls)
    return len(raw) // 4 + 1, out // 4 + 1


def _args_text(args: Any) -> str:
    return args if isinstance(args, str) else json.dumps(args)


def _pieces(text: str, n: int = 3) -> list[str]:
    size = max(1, -(-len(text) // n))
    return [text[i : i + size] for i in range(0, len(text), size)]


# --- OpenAI Chat Completions --------------------------------------------------------------------


def _openai_completion(step: Step, model: str, n: int) -> dict[str, Any]:
    usage = step.usage or (0, 0)
    message: dict[str, Any] = {"role": "assistant", "content": step.text or None}
    if step.calls:
        message["tool_calls"] = [
            {
                "id": f"call_{n}_{i}",
                "type": "function",
                "function": {"name": name, "arguments": _args_text(args)},
            }
            for i, (name, args) in enumerate(step.calls)
        ]
    body: dict[str, Any] = {
        "id": f"chatcmpl-fake{n}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": 0, "message": message, "finish_reason": "tool_calls" if step.calls else "stop"}
        ],
    }
    if step.report_usage:
        body["usage"] = {"prompt_tokens": usage[0], "completion_tokens": usage[1], "total_tokens": sum(usage)}
    return body


def _openai_chunks(step: Step, model: str, n: int, include_usage: bool) -> Iterator[tuple[str | None, str]]:
    base = {
        "id": f"chatcmpl-fake{n}",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
    }

    def chunk(delta: dict[str, Any], finish: str | None = None) -> tuple[None, str]:
        return None, json.dumps({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})

    yield chunk({"role": "assistant", "content": ""})
    for piece in _pieces(step.text):
        yield chunk({"content": piece})
    for i, (name, args) in enumerate(step.calls):
        text = _args_text(args)
        half = len(text) // 2
        yield chunk(
            {
                "tool_calls": [
                    {
                        "index": i,
                        "id": f"call_{n}_{i}",
                        "type": "function",
                        "function": {"name": name, "arguments": text[:half]},
                    }
                ]
            }
        )
        yield chunk({"tool_calls": [{"index": i, "function": {"arguments": text[half:]}}]})
    yield chunk({}, "tool_calls" if step.calls else "stop")
    if include_usage and step.report_usage:
        usage = step.usage or (0, 0)
        yield (
            None,
            json.dumps(
                {
                    **base,
                    "choices": [],
                    "usage": {
                        "prompt_tokens": usage[0],
                        "completion_tokens": usage[1],
                        "total_tokens": sum(usage),
                    },
                }
            ),
        )
    yield None, "[DONE]"


# --- Anthropic Messages -------------------------------------------------------------------------


def _anthropic_blocks(step: Step, n: int) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    if step.text or not step.calls:
        blocks.append({"type": "text", "text": step.text})
    for i, (name, args) in enumerate(step.calls):
        blocks.append({"type": "tool_use", "id": f"toolu_{n}_{i}", "name": name, "input": args})
    return blocks


def _anthropic_message(step: Step, model: str, n: int) -> dict[str, Any]:
    usage = step.usage or (0, 0)
    return {
        "id": f"msg_fake{n}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": _anthropic_blocks(step, n),
        "stop_reason": "tool_use" if step.calls else "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": usage[0], "output_tokens": usage[1]},
    }


def _anthropic_events(step: Step, model: str, n: int) -> Iterator[tuple[str | None, str]]:
    usage = step.usage or (0, 0)

    def event(name: str, **body: Any) -> tuple[str, str]:
        return name, json.dumps({"type": name, **body})

    start: dict[str, Any] = {**_anthropic_message(step, model, n), "content": [], "stop_reason": None}
    start["usage"] = {"input_tokens": usage[0], "output_tokens": 1}
    yield event("message_start", message=start)
    yield event("ping")
    for index, block in enumerate(_anthropic_blocks(step, n)):
        if block["type"] == "text":
            yield event("content_block_start", index=index, content_block={"type": "text", "text": ""})
            for piece in _pieces(block["text"]):
                yield event("content_block_delta", index=index, delta={"type": "text_delta", "text": piece})
        else:
            yield event(
                "content_block_start",
                index=index,
                content_block={"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}},
            )
            text = _args_text(block["input"])
            half = len(text) // 2
            for piece in (text[:half], text[half:]):
                yield event(
                    "content_block_delta",
                    index=index,
                    delta={"type": "input_json_delta", "partial_json": piece},
                )
        yield event("content_block_stop", index=index)
    yield event(
        "message_delta",
        delta={"stop_reason": "tool_use" if step.calls else "end_turn", "stop_sequence": None},
        usage={"output_tokens": usage[1]},
    )
    yield event("message_stop")
