"""What a provider is to the router, and how its failures are told apart.

A provider turns one normalized request into one ``Reply`` over its wire format, or raises
``ProviderFailure`` saying whether trying again (here or on the next target) could help. It knows
nothing of retries, fallbacks, budgets or journals: the router and the gateway wrap it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any, Protocol

from ._types import ChatRequest, Reply, ToolDef

RETRYABLE_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504, 529})
_WIRE_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_BAD_CHARS = re.compile(r"[^A-Za-z0-9_-]")


@dataclass(frozen=True, kw_only=True)
class Target:
    """One entry of a ModelPolicy's chain."""

    provider: str
    model: str
    base_url: str | None = None
    secret: str | None = None
    """The Secret holding the API key; resolved by the gateway, after the decision."""
    timeout_seconds: float = 60.0
    script: tuple[Mapping[str, Any], ...] = ()
    """For ``scripted``: the turns it answers with."""

    @property
    def key(self) -> str:
        """Identifies the target for its breaker and latency average (the router keeps those per
        caller scope, never shared between tenants or namespaces)."""
        return f"{self.provider}|{self.model}|{self.base_url or ''}"

    @property
    def label(self) -> str:
        return f"{self.provider}/{self.model}"


class ProviderFailure(Exception):
    """One provider request failed.

    Args:
        reason: what happened, safe to show (no key, no text of the response body).
        retryable: a rate limit, an overload, a timeout, a broken connection, a garbled answer:
            worth another try. A refusal of the request itself (400, 401, 404) is not.
        retry_after: seconds the provider asked us to wait (429/503 ``Retry-After``).
        mid_stream: the failure came after the first streamed byte: no retry, no fallback.
    """

    def __init__(
        self,
        reason: str,
        *,
        retryable: bool,
        status: int | None = None,
        retry_after: float | None = None,
        mid_stream: bool = False,
    ) -> None:
        super().__init__(reason)
        self.reason, self.retryable, self.status = reason, retryable, status
        self.retry_after, self.mid_stream = retry_after, mid_stream


@dataclass(frozen=True, kw_only=True)
class Call:
    """One provider request: the request as the router shaped it, and how to send it."""

    target: Target
    request: ChatRequest
    max_tokens: int
    stream: bool
    api_key: str | None = None
    idempotency_key: str | None = None
    """``run_id:seq``, sent as ``Idempotency-Key``: the call in flight at a crash is made again."""
    extra: Mapping[str, Any] = field(default_factory=dict[str, Any])


class Provider(Protocol):
    name: str

    def complete(self, call: Call) -> Reply:
        """Make the request; the reply's tool names are Bastion's (mapped back from the wire's).

        Raises:
            ProviderFailure: always, for any failure (never an httpx or JSON exception).
        """
        ...


def status_failure(status: int, body: bytes, headers: Mapping[str, str], provider: str) -> ProviderFailure:
    """A failure naming the provider and the status only. The body is the provider's text, which
    may echo the API key sent (a 401 quoting the ``Authorization`` header): it never becomes part
    of a reason, which reaches the agent and the developer unredacted (no redaction oracle)."""
    del body
    return ProviderFailure(
        f"{provider} answered HTTP {status}",
        retryable=status in RETRYABLE_STATUS,
        status=status,
        retry_after=retry_after(headers.get("retry-after")),
    )


def retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date), or None."""
    if value is None:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    from time import time  # wall time is right here: the header is a wall-clock date

    return max(0.0, when.timestamp() - time())


def wire_names(tools: Iterable[ToolDef]) -> dict[str, str]:
    """Bastion's tool names (``kb.search``) to names both wire formats accept (``kb_search``).

    Names already valid stay as they are; others get their odd characters replaced, with a
    numeric suffix on a collision. Deterministic in the tool list, so replays send the same body.
    """
    out: dict[str, str] = {}
    taken: set[str] = set()
    pending: list[str] = []
    for tool in tools:
        if _WIRE_NAME.match(tool.name):
            out[tool.name] = tool.name
            taken.add(tool.name)
        else:
            pending.append(tool.name)
    for name in pending:
        base = _BAD_CHARS.sub("_", name)[:60] or "tool"
        candidate, n = base, 2
        while candidate in taken:
            candidate, n = f"{base}_{n}", n + 1
        out[name] = candidate
        taken.add(candidate)
    return out
