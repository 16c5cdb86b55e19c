"""What a tool is to the gateway: a name, whether it only touches the run's workspace, and one
``invoke``. Tools know nothing of journals, policy or secrets: the gateway hands them a context
with the grant's egress allowlist and the secret-bearing headers it already resolved."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

MIB = 1024 * 1024


@dataclass(frozen=True, kw_only=True)
class ToolLimits:
    timeout_seconds: float = 30.0
    max_response_bytes: int = 4 * MIB
    """Largest HTTP response body read; larger ones fail the call."""
    max_file_bytes: int = 16 * MIB
    """Largest file fs.read returns or fs.write writes."""
    max_request_bytes: int = 4 * MIB
    """Largest HTTP request body sent."""


@dataclass(frozen=True, kw_only=True)
class BoundSecret:
    """A Secret injected into a call's headers, and where its operator lets it be sent."""

    name: str
    destinations: tuple[str, ...]
    """Host patterns or URL prefixes (``bastion.policy.destination_allows``); empty: nowhere."""


@dataclass(frozen=True, kw_only=True)
class ToolContext:
    run_id: str
    seq: int
    workspace: Path
    """The attempt's workspace; file tools are confined to it."""
    egress: Sequence[str] = ()
    """Host globs http.fetch may reach (``example.com``, ``*.example.com``, ``127.0.0.1:8080``)."""
    headers: Mapping[str, str] = field(default_factory=dict[str, str])
    """Headers to add to outgoing HTTP requests, secrets already filled in by the gateway."""
    secrets: Sequence[BoundSecret] = ()
    """The Secrets filled into ``headers``: a request may go only where every one of them allows."""
    limits: ToolLimits = field(default_factory=ToolLimits)
    may_send: Callable[[], None] | None = None
    """Called right before a request's first byte is written (after connecting); raises to
    refuse the send. The gateway passes the attempt's lease check: a worker that lost its lease
    while paused must not act."""
    pool: str = ""
    """Who may share this call's connections: HTTP clients are reused, one per pool key (the
    gateway passes the tenant and namespace), never across keys."""

    @property
    def idempotency_key(self) -> str:
        """Sent with every external effect, so a call retried after a crash is safe."""
        return f"{self.run_id}:{self.seq}"


class Tool(Protocol):
    name: str
    workspace_only: bool
    """True if the tool only reads or writes the run's workspace: re-executed on replay rather than
    answered from the journal, because every attempt starts from the initial workspace."""

    def invoke(self, args: dict[str, Any], ctx: ToolContext) -> Any:
        """Do the call; return a JSON-ready value.

        Raises:
            ToolCallFailed: with a reason the agent may read (no secrets, no stack traces).
        """
        ...
