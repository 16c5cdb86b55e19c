"""The services the examples' tools call, on this machine, until Ctrl-C:

* the demo's weather API on 127.0.0.1:8765 (``weather.get``; the same one `make demo` starts), and
* a small knowledge base on 127.0.0.1:9000 (``kb.search``: POST /search ``{"query": ...}``).

Each wants the bearer token of its Secret (``weather-api-key``, ``kb-token``), read from the
manifests beside this file: the gateway adds it to the agents' calls, the agents never see it.

    python examples/services.py
"""

from __future__ import annotations

import json
import signal
import sys
import threading
from collections.abc import Generator
from contextlib import ExitStack, contextmanager, suppress
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast

from bastion.api import parse_yaml
from bastion.testing import weather_api

HERE = Path(__file__).resolve().parent
WEATHER_PORT = 8765
KB_PORT = 9000

ARTICLES = [
    {
        "title": "Refund policy",
        "text": "Refunds are decided by the billing team within 20 days of a request; support never promises one.",
    },
    {
        "title": "Refund requests",
        "text": "Customers ask for a refund from their order page; support can only open the request.",
    },
    {"title": "Shipping times", "text": "Orders ship within 2 working days; tracking arrives by email."},
]


def secret_token(manifest: Path, name: str) -> str:
    """The token of Secret ``name`` in ``manifest``."""
    for doc in parse_yaml(manifest.read_text(encoding="utf-8"), str(manifest)):
        raw: Any = doc.body
        body: dict[str, Any] = cast(dict[str, Any], raw) if isinstance(raw, dict) else {}
        if body.get("kind") == "Secret" and body["metadata"]["name"] == name:
            return str(body["spec"]["stringData"]["token"])
    raise SystemExit(f"{manifest} holds no Secret {name!r}")


@contextmanager
def knowledge_base(token: str, *, port: int = KB_PORT) -> Generator[str]:
    """Serve the knowledge base until the block ends; yields its base URL."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length)
            if self.path != "/search":
                self._send(404, {"error": "no such endpoint"})
            elif self.headers.get("Authorization") != f"Bearer {token}":
                self._send(401, {"error": "a valid token is required"})
            else:
                body: dict[str, Any] = json.loads(raw or b"{}")
                query = str(body.get("query", "")).lower()
                words = [w for w in query.split() if len(w) > 2]
                hits = [
                    a for a in ARTICLES if any(w in (a["title"] + " " + a["text"]).lower() for w in words)
                ]
                self._send(200, {"query": query, "hits": hits})

        def _send(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    thread = threading.Thread(target=server.serve_forever, name="examples-kb", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.shutdown()
        server.server_close()


def main() -> int:
    weather_token = secret_token(HERE / "demo" / "demo.yaml", "weather-api-key")
    kb_token = secret_token(HERE / "models.yaml", "kb-token")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda _signum, _frame: stop.set())
    with ExitStack() as stack:
        try:
            weather, _ = stack.enter_context(weather_api(weather_token, port=WEATHER_PORT))
            kb = stack.enter_context(knowledge_base(kb_token))
        except OSError as exc:
            print(
                f"cannot serve the examples' APIs: {exc.strerror or exc} (ports {WEATHER_PORT} and {KB_PORT}; "
                "is `make demo` or another services.py running?)",
                file=sys.stderr,
            )
            return 1
        print(
            f"weather API: {weather}/forecast    knowledge base: {kb}/search    stop with Ctrl-C", flush=True
        )
        with suppress(KeyboardInterrupt):
            stop.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
