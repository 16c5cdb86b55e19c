"""What agent code calls: tools, time, randomness, ids, logs and the run's result.

Time, randomness and ids come from the gateway, never from the sandbox's own clock or entropy,
because the gateway records them: a resumed or replayed run receives the same values again.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from ._channel import current
from ._errors import AgentError


class Tools:
    """The tools this run may call, through the gateway (``tools.call("fs.read", path="a.txt")``)."""

    def call(self, name: str, /, **args: Any) -> Any:
        """Call tool ``name`` with keyword arguments; see `call_tool`."""
        return call_tool(name, args)


tools = Tools()


def call_tool(name: str, args: Mapping[str, Any] | None = None) -> Any:
    """Call tool ``name`` with ``args`` and return its JSON result.

    Raises:
        ToolDenied: policy refused the call; catch it to carry on without the tool.
        ToolFailed: the tool ran and failed.
    """
    return current().request("tool.call", {"name": name, "args": dict(args or {})})


def now() -> datetime:
    """The current time (timezone-aware, UTC), as the gateway recorded it for this run."""
    value = current().request("time.now", {})
    moment = datetime.fromisoformat(str(value))
    # A timestamp without an offset is UTC by the gateway's contract.
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def random() -> float:
    """A random float in [0, 1), recorded by the gateway."""
    return float(current().request("random.random", {}))


def uuid() -> str:
    """A fresh UUID as text, recorded by the gateway."""
    return str(current().request("random.uuid", {}))


def log(*parts: object) -> None:
    """Send one log line to the run's event stream (parts joined by spaces, like ``print``)."""
    current().notify("log", {"message": " ".join(str(part) for part in parts)})


class _Run:
    """The state of the run in progress; the runner resets it around each run."""

    active = False
    result: Any = None
    has_result = False


_run = _Run()


def result(value: Any) -> None:
    """Set the run's result; it replaces the entrypoint's return value. ``value`` must be JSON."""
    if not _run.active:
        raise AgentError("result() can be called only while a run is in progress")
    _run.result, _run.has_result = value, True


def begin_run() -> None:
    _run.active, _run.result, _run.has_result = True, None, False


def end_run(returned: Any) -> Any:
    """The run's result: the value given to `result`, if any, else what the entrypoint returned."""
    value = _run.result if _run.has_result else returned
    _run.active, _run.result, _run.has_result = False, None, False
    return value
