"""The sandbox interface every backend implements: ``start`` a sandbox, ``call`` into it,
``stop`` it, ask its ``status``.

The channel is JSON-RPC 2.0, one message per line, over the sandbox's stdin/stdout. Calls go both
ways on it: the host calls ``run`` (and, later, other methods) into the sandbox, and while that call
is open the agent's SDK sends its own requests (``tool.call``, ``time.now``, ``random.random``,
``random.uuid``) and notifications (``log``) out, which the ``handler`` given to ``call`` answers:
that handler is the gateway. What the agent prints goes to stderr, line by line, to ``on_log``.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

MIB = 1024 * 1024


@dataclass(frozen=True, kw_only=True)
class SandboxLimits:
    cpu_seconds: float = 30.0
    """CPU time of the sandbox's processes (RLIMIT_CPU or a cgroup)."""
    memory_mib: int = 512
    """Address space / memory of the sandbox."""
    wall_seconds: float = 300.0
    """Wall-clock time of one ``call``; the sandbox is killed past it."""
    open_files: int = 256
    processes: int = 64
    """Processes and threads (RLIMIT_NPROC; not enforced for root by the process backend)."""
    log_bytes: int = 1 * MIB
    """Bytes of stderr kept per sandbox; past it the agent is stopped (limit ``output``)."""
    message_bytes: int = 8 * MIB
    """Largest single channel message; past it the agent is stopped (limit ``message_size``)."""
    file_bytes: int = 64 * MIB
    """Largest file the agent may write (RLIMIT_FSIZE)."""
    workspace_mib: int = 256
    """Disk the workspace may use (a size-capped tmpfs on ``bwrap`` and ``gvisor``; polled on
    ``process``); past it the agent is stopped (limit ``workspace``). On ``bwrap`` and ``gvisor``
    the workspace, ``/tmp`` and ``/dev/shm`` are memory: what the agent keeps there counts against
    ``memory_mib`` too, whichever cap it reaches first."""


SHM_MIB = 64
"""The largest ``/dev/shm`` a sandbox gets (never more than its ``memory_mib``)."""


def shm_mib(limits: SandboxLimits) -> int:
    """The size of a sandbox's ``/dev/shm`` tmpfs."""
    return min(SHM_MIB, limits.memory_mib)


@dataclass(frozen=True, kw_only=True)
class Image:
    """A read-only Python environment an agent runs in (built per ``spec.image`` and
    ``requirements``, cached by digest). Backends mount it read-only; the sandbox sees nothing else
    of the host's Python."""

    name: str
    """The base it was built from, e.g. ``python3.11``."""
    digest: str
    """sha256 of the base and the exact requirements: equal digests, equal environments."""
    interpreter: Path
    """The interpreter the sandbox runs (a host path inside a directory the backend mounts)."""
    site_packages: Path | None = None
    """The requirements, installed; put on ``sys.path`` after the SDK, before the workspace."""


@dataclass(frozen=True, kw_only=True)
class SandboxSpec:
    workspace: Path
    """A host directory the caller prepared (agent source already in it); the agent's cwd."""
    limits: SandboxLimits = field(default_factory=SandboxLimits)
    env: Mapping[str, str] = field(default_factory=dict[str, str])
    """The agent's whole environment: nothing is inherited from the host."""
    image: Image | None = None
    """None: the backend's default interpreter, with the standard library and the SDK only."""


class SandboxState(enum.StrEnum):
    COLD = "Cold"
    WARM = "Warm"
    """Started, idle, ready for a call."""
    HOT = "Hot"
    """A call is in progress."""
    TERMINATED = "Terminated"
    FAILED = "Failed"


@dataclass(frozen=True, kw_only=True)
class SandboxStatus:
    state: SandboxState
    pid: int | None = None
    exit_code: int | None = None
    """The exit status, or minus the signal number that ended the sandbox."""
    reason: str | None = None
    """Why it ended, when it did not end by ``stop``."""


class CallError(Exception):
    """Raised by a handler to answer a sandbox request with a JSON-RPC error."""

    def __init__(self, code: int, message: str, data: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.data = code, message, data or {}


# JSON-RPC error codes the gateway answers with; the SDK maps them onto its exceptions.
DENIED = -32001
TOOL_FAILED = -32002
INVALID = -32602

Handler = Callable[[str, dict[str, Any]], Any]
"""Answers one request from the sandbox: (method, params) -> JSON result; raise CallError to refuse.
Any other exception (``RunKilled`` included) stops the sandbox and propagates out of ``call``."""
Notify = Callable[[str, dict[str, Any]], None]
"""Receives one notification from the sandbox (e.g. ``log``)."""
LogSink = Callable[[str], None]
"""Receives each line the agent wrote to stderr."""


class Sandbox(Protocol):
    def call(
        self,
        method: str,
        params: dict[str, Any],
        *,
        handler: Handler,
        notify: Notify | None = None,
    ) -> Any:
        """Send one request into the sandbox and serve its requests until it answers.

        Raises:
            LimitExceeded: a limit was hit (the sandbox is stopped); ``limit`` names it.
            SandboxError: the agent exited, crashed or broke the protocol (the sandbox is stopped).
            CallError: the sandbox answered with a JSON-RPC error.
        """
        ...

    def stop(self) -> None:
        """Kill everything in the sandbox and release it; idempotent."""
        ...

    def status(self) -> SandboxStatus: ...

    @property
    def live_workspace(self) -> Path | None:
        """The host path of the workspace the agent works in, when it is not the caller's directory
        (a size-capped tmpfs); the caller's directory gets the result back when the sandbox stops."""
        ...


@dataclass(frozen=True, kw_only=True)
class BackendReport:
    """Whether a backend works on this machine, found by starting a tiny sandbox on it."""

    name: str
    works: bool
    detail: str
    """What was seen: the isolation and limits in force, or why it failed."""
    fix: str | None = None
    """How to make it work, when it does not."""


class SandboxBackend(Protocol):
    name: str

    def start(self, spec: SandboxSpec, *, on_log: LogSink) -> Sandbox:
        """Start a sandbox, ready for ``call``.

        Raises:
            SandboxError: it could not be started.
        """
        ...

    def close(self) -> None:
        """Release what the backend itself holds (its SDK copy, pools); sandboxes must be stopped first."""
        ...
