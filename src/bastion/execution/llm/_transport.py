"""One provider request over httpx, streamed or not, with every failure made a ProviderFailure.

Whatever the format, a failure before the first streamed byte may be retried or fall back to the
next target; after it, the answer has begun and the failure is final (``mid_stream``).
"""

from __future__ import annotations

import http.cookiejar
import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import httpx

from ._provider import Call, ProviderFailure, status_failure
from ._types import BadChat, Reply


def shared_client() -> httpx.Client:
    """The connection pool a provider keeps for every tenant's calls, and keeps no cookies: a
    cookie one caller's answer set would otherwise ride along on every other caller's requests
    to that host (DESIGN invariant 6)."""
    no_cookies = http.cookiejar.CookieJar(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
    return httpx.Client(
        limits=httpx.Limits(max_connections=256, max_keepalive_connections=64),
        trust_env=False,
        cookies=no_cookies,
    )


class LazyClient:
    """A provider's ``shared_client()``, made when a call first needs it: making one loads the CA
    bundle (a tenth of a second), and a worker must be ready to claim runs before any model call."""

    def __init__(self, client: httpx.Client | None = None) -> None:
        self._client = client
        self._lock = threading.Lock()

    def get(self) -> httpx.Client:
        client = self._client
        if client is None:
            with self._lock:
                if self._client is None:
                    self._client = shared_client()
                client = self._client
        return client

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()


class Collector(Protocol):
    def feed(self, event: Any) -> None:
        """One parsed ``data:`` payload; raises BadChat on a malformed one."""
        ...

    def reply(self) -> Reply:
        """The assembled reply; raises BadChat if the stream ended early."""
        ...


def send(
    client: httpx.Client,
    provider: str,
    url: str,
    headers: dict[str, str],
    content: bytes,
    call: Call,
    *,
    parse: Callable[[Any], Reply],
    collector: Callable[[], Collector],
) -> Reply:
    seconds = call.target.timeout_seconds
    timeout = httpx.Timeout(seconds, connect=min(seconds, 10.0))
    deadline = time.monotonic() + seconds
    started = False
    try:
        if not call.stream:
            response = client.post(url, content=content, headers=headers, timeout=timeout)
            if response.status_code != 200:
                raise status_failure(response.status_code, response.content, response.headers, provider)
            try:
                return parse(json.loads(response.content))
            except (ValueError, BadChat) as exc:
                raise ProviderFailure(f"{provider} sent a malformed answer: {exc}", retryable=True) from None
        with client.stream("POST", url, content=content, headers=headers, timeout=timeout) as response:
            if response.status_code != 200:
                raise status_failure(response.status_code, response.read(), response.headers, provider)
            assembled = collector()
            done = False
            for data in sse_data(response.iter_lines()):
                started = True
                if time.monotonic() > deadline:
                    if done:
                        break  # the answer is whole; only the connection is not kept
                    raise ProviderFailure(
                        f"{provider} did not finish within {seconds:g} s", retryable=True, mid_stream=True
                    )
                # Read on to the end of the body after [DONE] (as the OpenAI SDK does): leaving its
                # last chunk unread makes the pool close the connection, and every streamed call
                # then opened a new one (a handshake each; bursts of them overflowed a listen queue).
                if done or data == "[DONE]":
                    done = True
                    continue
                try:
                    assembled.feed(json.loads(data))
                except (ValueError, BadChat) as exc:
                    raise ProviderFailure(
                        f"{provider} sent a malformed chunk: {exc}", retryable=True, mid_stream=True
                    ) from None
            try:
                return assembled.reply()
            except BadChat as exc:
                raise ProviderFailure(
                    f"{provider}'s stream broke off: {exc}", retryable=True, mid_stream=started
                ) from None
    except httpx.TimeoutException:
        raise ProviderFailure(
            f"{provider} timed out after {seconds:g} s", retryable=True, mid_stream=started
        ) from None
    except httpx.HTTPError as exc:
        raise ProviderFailure(
            f"{provider} connection failed ({type(exc).__name__})", retryable=True, mid_stream=started
        ) from None


def sse_data(lines: Iterator[str]) -> Iterator[str]:
    """The ``data:`` payloads of an SSE stream (event names and comments skipped; lines joined)."""
    buffer: list[str] = []
    for line in lines:
        if not line:
            if buffer:
                yield "\n".join(buffer)
                buffer = []
            continue
        if line.startswith("data:"):
            buffer.append(line[5:].lstrip(" "))
    if buffer:
        yield "\n".join(buffer)
