"""``http.fetch`` and HTTP tools: one request out, ``{status, headers, body}`` back.

Choices that keep a request inside its grant:

* **Egress.** ``http.fetch`` and HTTP tools reach a host only if a pattern in ``ctx.egress`` names
  it (see ``bastion.policy.parse_target``: the one URL parser, shared with the policy engine, which
  judges the host exactly as httpx will connect to it). For an HTTP tool the policy judged the
  Tool's URL and ``ctx.egress`` is that host and port: the final URL, with the arguments' query
  added, must still be there.
* **Secrets go only where their Secret says.** Every request, whatever built its URL, is checked
  in ``_send`` against the destinations of each Secret injected into its headers; anywhere else
  is ``SecretRefused`` before a byte leaves.
* **Redirects are returned, not followed.** A 3xx comes back as data with its ``location``; if the
  agent follows it, that is a new call, checked against the allowlist and the Secrets'
  destinations and journaled like any other: an injected credential never follows a redirect.
* **Credentials never travel in URLs**: ``user:pass@host`` is refused; the gateway injects headers.
* **Bounded.** ``timeout_seconds`` covers the whole call (a timer shuts the socket down, since
  httpx's timeouts bound each read separately); bodies are read in chunks and the call fails as
  soon as the decoded body passes ``max_response_bytes``. Bodies are decoded here (gzip, deflate),
  with a bound, so compressed echoes of a secret still reach the redactor; other encodings fail.
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
import socket
import ssl
import threading
import zlib
from collections.abc import Iterable, Mapping
from typing import Any, cast

import httpx

from bastion.errors import SecretRefused, ToolCallFailed, UserError
from bastion.policy import HttpTarget, allows, destination_allows, parse_target

from ._base import ToolContext

METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD")
RESERVED_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection"})
"""Headers that frame the request; http.fetch sets them itself."""
_MAX_HEADERS = 100
_MAX_HEADER_VALUE = 8192
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_TEXTUAL = ("text/", "json", "xml", "javascript", "x-www-form-urlencoded")
_FETCH_ARGS = frozenset({"url", "method", "headers", "body", "json"})


def _parse_url(tool: str, url: Any) -> HttpTarget:
    target = parse_target(url)
    if isinstance(target, str):
        raise ToolCallFailed(tool, target)
    return target


def _check_egress(tool: str, egress: Iterable[str], target: HttpTarget) -> None:
    if not allows(egress, target):
        raise ToolCallFailed(tool, f"host {target.display!r} is not in this grant's egress allowlist")


def _check_destinations(tool: str, ctx: ToolContext, target: HttpTarget) -> None:
    """Refuse to send an injected secret anywhere its Secret does not name (invariant 2)."""
    for bound in ctx.secrets:
        if not any(destination_allows(d, target) for d in bound.destinations):
            raise SecretRefused(tool, bound.name, f"{target.origin}{target.path}", bool(bound.destinations))


def _header_items(tool: str, source: str, headers: Mapping[Any, Any]) -> list[tuple[str, str]]:
    """Validated headers; reasons name the header, never its value (it may be a secret)."""
    if len(headers) > _MAX_HEADERS:
        raise ToolCallFailed(tool, f"{source} has more than {_MAX_HEADERS} headers")
    items: list[tuple[str, str]] = []
    for name, value in headers.items():
        if not isinstance(name, str) or not _TOKEN.fullmatch(name):
            raise ToolCallFailed(tool, f"{source}: {name!r} is not a valid header name")
        if name.lower() in RESERVED_HEADERS:
            raise ToolCallFailed(tool, f"{source}: {name!r} is set by {tool} itself and may not be given")
        if not isinstance(value, str) or len(value) > _MAX_HEADER_VALUE:
            raise ToolCallFailed(
                tool,
                f"{source}: the value of {name!r} must be a string of at most {_MAX_HEADER_VALUE} characters",
            )
        if not value.isascii() or any(c in value for c in "\r\n\0"):
            raise ToolCallFailed(tool, f"{source}: the value of {name!r} must be ASCII without line breaks")
        items.append((name, value))
    return items


def _merge_headers(tool: str, ctx: ToolContext, *layers: tuple[str, Mapping[Any, Any]]) -> dict[str, str]:
    """Later layers win, names compared case-insensitively; the gateway's headers and the
    idempotency key come last, so an agent cannot replace an injected credential."""
    merged: dict[str, tuple[str, str]] = {"accept-encoding": ("Accept-Encoding", "gzip, deflate")}
    for source, headers in (*layers, ("gateway headers", ctx.headers)):
        for name, value in _header_items(tool, source, headers):
            merged[name.lower()] = (name, value)
    merged["idempotency-key"] = ("Idempotency-Key", ctx.idempotency_key)
    return dict(merged.values())


class _Deadline:
    """Shuts the request's socket down when the call's time is up, whatever phase it is in."""

    def __init__(self, seconds: float) -> None:
        self.expired = False
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def __enter__(self) -> _Deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()

    def trace(self, event: str, info: dict[str, Any]) -> None:
        """httpx's ``trace`` extension: remember each socket as it connects."""
        if event == "connection.connect_tcp.complete":
            self.watch(info["return_value"].get_extra_info("socket"))

    def watch(self, sock: socket.socket | None) -> None:
        if sock is None:
            return
        with self._lock:
            self._sockets.append(sock)
            if self.expired:
                _shutdown(sock)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            for sock in self._sockets:
                _shutdown(sock)


def _shutdown(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # already closed by httpx
        sock.shutdown(socket.SHUT_RDWR)  # wakes a blocked recv, unlike close()


def _decoder(tool: str, coding: str) -> Any:
    if coding in ("", "identity"):
        return None
    if coding in ("gzip", "x-gzip"):
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    if coding == "deflate":
        return zlib.decompressobj()
    raise ToolCallFailed(
        tool,
        f"the response uses content-encoding {coding!r}, which {tool} cannot decode; ask for gzip or identity",
    )


def _read_body(tool: str, response: httpx.Response, limit: int) -> bytes:
    coding = response.headers.get("content-encoding", "").strip().lower()
    decoder = _decoder(tool, coding)
    declared = response.headers.get("content-length", "")
    too_big = f"the response body is larger than the limit of {limit} bytes"
    if decoder is None and declared.isdigit() and int(declared) > limit:
        raise ToolCallFailed(tool, too_big)
    chunks: list[bytes] = []
    size = 0
    first = True
    for raw in response.iter_raw():
        try:
            # max_length caps what one small compressed chunk may expand to.
            data = raw if decoder is None else decoder.decompress(raw, limit + 1 - size)
        except zlib.error:
            if coding != "deflate" or not first:
                raise ToolCallFailed(tool, f"the response body is not valid {coding}") from None
            decoder = zlib.decompressobj(-zlib.MAX_WBITS)  # servers often send raw deflate
            data = decoder.decompress(raw, limit + 1)
        first = first and not raw
        size += len(data)
        if size > limit:
            raise ToolCallFailed(tool, too_big)
        chunks.append(data)
    if decoder is not None:
        chunks.append(decoder.flush())
        if size + len(chunks[-1]) > limit:
            raise ToolCallFailed(tool, too_big)
    return b"".join(chunks)


def _result(response: httpx.Response, body: bytes) -> dict[str, Any]:
    headers: dict[str, str] = {}
    for name, value in response.headers.multi_items():
        key = name.lower()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    result: dict[str, Any] = {"status": response.status_code, "headers": headers}
    try:
        result["body"] = body.decode("utf-8")
    except UnicodeDecodeError:
        content_type = headers.get("content-type", "").lower()
        if any(kind in content_type for kind in _TEXTUAL):
            result["body"] = body.decode("utf-8", errors="replace")
        else:
            result["body_base64"] = base64.b64encode(body).decode("ascii")
    return result


def _failure(exc: BaseException) -> str:
    """A fixed phrase for a transport error: exception texts may quote URLs or header values."""
    connecting = isinstance(exc, httpx.ConnectError)
    cause = exc
    while cause is not None:  # httpx -> httpcore -> the socket's own error
        exc, cause = cause, cause.__cause__ or cause.__context__
    if not connecting:
        return "the connection failed during the request"
    if isinstance(exc, socket.gaierror):
        return "could not resolve the host"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return "TLS certificate verification failed"
    if isinstance(exc, ssl.SSLError):
        return "TLS handshake failed"
    return "could not connect"


_CLIENTS_KEPT = 64
_clients: dict[str, httpx.Client] = {}
_clients_lock = threading.Lock()


def _client(pool: str) -> httpx.Client:
    """The process's client for one pool key: building one costs tens of milliseconds (its TLS
    context), which must not sit between the lease check and the send, and its keep-alive
    connections spare a handshake per call. Keys never share connections (DESIGN invariant 6)."""
    with _clients_lock:
        client = _clients.pop(pool, None)
        if client is None:
            client = httpx.Client(trust_env=False, follow_redirects=False)
            if len(_clients) >= _CLIENTS_KEPT:
                # The least recently used goes; its calls in flight keep their connections.
                del _clients[next(iter(_clients))]
        _clients[pool] = client  # most recently used last
        return client


def _tracer(deadline: _Deadline, ctx: ToolContext) -> Any:
    def trace(event: str, info: dict[str, Any]) -> None:
        deadline.trace(event, info)
        if ctx.may_send is not None and event.endswith(".send_request_headers.started"):
            ctx.may_send()  # connected; nothing written yet

    return trace


def _send(
    tool: str, method: str, target: HttpTarget, headers: dict[str, str], body: bytes | None, ctx: ToolContext
) -> dict[str, Any]:
    _check_destinations(tool, ctx, target)
    limits = ctx.limits
    if body is not None and len(body) > limits.max_request_bytes:
        raise ToolCallFailed(
            tool, f"the request body is {len(body)} bytes, over the limit of {limits.max_request_bytes}"
        )
    with _Deadline(limits.timeout_seconds) as deadline:
        try:
            with _client(ctx.pool).stream(
                method,
                target.url,
                headers=headers,
                content=body,
                timeout=limits.timeout_seconds,
                extensions={"trace": _tracer(deadline, ctx)},
            ) as response:
                # A reused connection was not seen connecting: the deadline learns its socket here.
                stream = response.extensions.get("network_stream")
                deadline.watch(stream.get_extra_info("socket") if stream is not None else None)
                return _result(response, _read_body(tool, response, limits.max_response_bytes))
        except (httpx.HTTPError, httpx.StreamError, OSError) as exc:
            if deadline.expired or isinstance(exc, httpx.TimeoutException):
                reason = f"request to {target.display} timed out after {limits.timeout_seconds:g}s"
            else:
                reason = f"request to {target.display} failed: {_failure(exc)}"
            raise ToolCallFailed(tool, reason, retryable=True) from None


def _encode_json(tool: str, value: Any, argument: str) -> bytes:
    try:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()
    except (TypeError, ValueError):
        raise ToolCallFailed(tool, f"{argument} is not JSON (NaN and Infinity are not allowed)") from None


class HttpFetch:
    """``http.fetch``: any request to a host in the grant's egress allowlist.

    Arguments: ``url``; ``method`` (one of ``METHODS``, default GET); ``headers`` (an object of
    strings); ``body`` (a string, sent as UTF-8) or ``json`` (any JSON value), not both.
    Returns ``{"status", "headers", "body"}``, or ``body_base64`` instead of ``body`` for a body
    that is neither UTF-8 nor declared textual. 4xx and 5xx are answers, not failures.
    """

    name = "http.fetch"
    workspace_only = False

    def invoke(self, args: dict[str, Any], ctx: ToolContext) -> Any:
        unknown = sorted(set(args) - _FETCH_ARGS)
        if unknown:
            raise ToolCallFailed(
                self.name, f"unknown argument {unknown[0]!r}; expected {sorted(_FETCH_ARGS)}"
            )
        method = args.get("method", "GET")
        if method not in METHODS:
            raise ToolCallFailed(self.name, f"argument 'method' must be one of {', '.join(METHODS)}")
        headers: Any = args.get("headers", {})
        if not isinstance(headers, dict):
            raise ToolCallFailed(self.name, "argument 'headers' must be an object of strings")
        headers = cast(dict[Any, Any], headers)
        if "body" in args and "json" in args:
            raise ToolCallFailed(self.name, "give argument 'body' or 'json', not both")
        content: bytes | None = None
        extra: dict[str, str] = {}
        if "body" in args:
            if not isinstance(args["body"], str):
                raise ToolCallFailed(
                    self.name, "argument 'body' must be a string (use 'json' for structured data)"
                )
            content = args["body"].encode()
        elif "json" in args:
            content = _encode_json(self.name, args["json"], "argument 'json'")
            extra["Content-Type"] = "application/json"
        target = _parse_url(self.name, args.get("url"))
        _check_egress(self.name, ctx.egress, target)
        merged = _merge_headers(self.name, ctx, ("gateway defaults", extra), ("argument 'headers'", headers))
        return _send(self.name, method, target, merged, content, ctx)


class HttpTool:
    """A ``Tool`` resource with an ``http`` implementation: a fixed URL and method.

    The arguments are the JSON body for POST, PUT and PATCH, or query parameters for GET and
    DELETE (strings, numbers, booleans, or lists of them). The URL comes from the Tool resource,
    which a developer may write: the policy judges it by the egress rules (a grant's ``egress``,
    a Policy rule's ``egressAllow``) before the call, and the final URL is sent only to the host
    and port that decision named (``ctx.egress``; empty refuses every request). ``headers`` are the resource's plain headers; secret-bearing ones arrive resolved in
    ``ctx.headers`` and win. Returns what ``http.fetch`` returns.
    """

    workspace_only = False

    def __init__(
        self, name: str, url: str, method: str = "POST", headers: Mapping[str, str] | None = None
    ) -> None:
        if method not in METHODS:
            raise UserError(f"tool {name!r}: method must be one of {', '.join(METHODS)}", field="method")
        try:
            self._target = _parse_url(name, url)
            _header_items(name, "headers", headers or {})
        except ToolCallFailed as exc:
            raise UserError(f"tool {name!r}: {exc.reason}", field="implementation") from None
        self.name = name
        self.method = method
        self.headers = dict(headers or {})

    def invoke(self, args: dict[str, Any], ctx: ToolContext) -> Any:
        content: bytes | None = None
        target = self._target
        extra: dict[str, str] = {}
        if self.method in ("GET", "DELETE", "HEAD"):
            for key, value in args.items():
                values: list[Any] = value if isinstance(value, list) else [value]  # pyright: ignore[reportUnknownVariableType]
                if not all(v is None or isinstance(v, str | int | float) for v in values):
                    raise ToolCallFailed(
                        self.name, f"argument {key!r} must be a string, number, boolean or a list of them"
                    )
            url = httpx.URL(target.url).copy_merge_params(args)
            target = _parse_url(self.name, str(url))
        else:
            content = _encode_json(self.name, args, "the arguments")
            extra["Content-Type"] = "application/json"
        _check_egress(self.name, ctx.egress, target)
        merged = _merge_headers(self.name, ctx, ("gateway defaults", extra), ("tool headers", self.headers))
        return _send(self.name, self.method, target, merged, content, ctx)
