"""A small local weather API that wants a bearer token: what the demo's agent calls, through the
gateway, without ever seeing the token."""

from __future__ import annotations

import json
import threading
from collections.abc import Generator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

FORECASTS = {
    "oslo": "Light snow, -3 °C, wind 4 m/s from the north.",
    "lisbon": "Sunny, 19 °C, a light breeze off the Atlantic.",
}


@contextmanager
def weather_api(
    token: str, *, host: str = "127.0.0.1", port: int = 0
) -> Generator[tuple[str, list[dict[str, Any]]]]:
    """Serve the API until the block ends; yields its base URL and a log of the requests it saw."""
    seen: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            url = urlparse(self.path)
            authorized = self.headers.get("Authorization") == f"Bearer {token}"
            seen.append(
                {
                    "path": url.path,
                    "authorized": authorized,
                    "idempotencyKey": self.headers.get("Idempotency-Key"),
                }
            )
            if url.path != "/forecast":
                self._send(404, {"error": "no such endpoint"})
            elif not authorized:
                self._send(401, {"error": "a valid API key is required"})
            else:
                city = parse_qs(url.query).get("city", ["Oslo"])[0]
                self._send(200, {"city": city, "forecast": FORECASTS.get(city.lower(), "Cloudy, 12 °C.")})

        def _send(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:  # keep the demo's output clean
            return

    server = ThreadingHTTPServer((host, port), Handler)
    thread = threading.Thread(target=server.serve_forever, name="bastion-weather-api", daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
