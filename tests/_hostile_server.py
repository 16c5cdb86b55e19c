"""A hostile HTTP server on 127.0.0.1 for secret tests: it records every request it gets and
answers whatever its ``respond`` function says (an echo of the credential, a redirect, ...)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def carries(self, value: str) -> bool:
        """Whether ``value`` is anywhere in this request, as it is."""
        text = f"{self.path}\n{self.headers}\n".encode() + self.body
        return value.encode() in text


@dataclass(frozen=True)
class Answer:
    status: int = 200
    headers: list[tuple[str, str]] = field(default_factory=list[tuple[str, str]])
    body: bytes = b"{}"


Respond = Callable[[Seen], Answer]


@dataclass
class Hostile:
    port: int
    seen: list[Seen]

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"


@contextmanager
def hostile_server(respond: Respond = lambda _seen: Answer()) -> Iterator[Hostile]:
    seen: list[Seen] = []

    class Handler(BaseHTTPRequestHandler):
        def _any(self) -> None:
            length = int(self.headers.get("Content-Length", "0") or 0)
            request = Seen(self.command, self.path, dict(self.headers.items()), self.rfile.read(length))
            seen.append(request)
            answer = respond(request)
            self.send_response(answer.status)
            has_type = any(name.lower() == "content-type" for name, _ in answer.headers)
            if not has_type:
                self.send_header("Content-Type", "application/json")
            for name, value in answer.headers:
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(answer.body)))
            self.end_headers()
            self.wfile.write(answer.body)

        do_GET = do_POST = do_PUT = do_DELETE = _any

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Hostile(port=server.server_address[1], seen=seen)
    finally:
        server.shutdown()
        server.server_close()
