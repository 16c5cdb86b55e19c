"""The exceptions agent code sees, rebuilt from the gateway's JSON-RPC errors.

The codes mirror ``bastion.execution.sandbox`` (``DENIED``, ``TOOL_FAILED``); the SDK cannot import
the host's packages, so a test checks that both sides agree.
"""

from __future__ import annotations

from typing import Any, cast

DENIED = -32001
TOOL_FAILED = -32002


class AgentError(Exception):
    """The base of the SDK's exceptions; raised as is for a gateway error with no finer class."""

    def __init__(self, message: str, *, code: int | None = None, data: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        """The JSON-RPC error code, when the gateway answered with an error."""
        self.data: dict[str, Any] = data or {}
        """The error's ``data`` object, as the gateway sent it."""

    def __reduce__(self) -> tuple[Any, ...]:
        # Exception pickles its ``args`` only; keep the fields when a run's error is written down.
        return (_rebuild, (type(self), self.__dict__.copy()))


def _rebuild(cls: type[AgentError], state: dict[str, Any]) -> AgentError:
    error = cls.__new__(cls)
    Exception.__init__(error, state.get("message", ""))
    error.__dict__.update(state)
    return error


class ToolDenied(AgentError, PermissionError):
    """Policy refused a tool call. Catch it to carry on without the tool."""

    def __init__(
        self, tool: str, reasons: list[str], rule_ids: list[str], *, data: dict[str, Any] | None = None
    ) -> None:
        why = "; ".join(reasons) or "no grant allows it"
        super().__init__(f"tool {tool!r} denied: {why}", code=DENIED, data=data)
        self.tool = tool
        self.reasons = reasons
        """Why policy refused, one sentence each."""
        self.rule_ids = rule_ids
        """The ids of the rules or grants that decided."""


class ToolFailed(AgentError):
    """The tool ran and failed; ``retryable`` says whether trying again may help."""

    def __init__(
        self, tool: str, reason: str, *, retryable: bool = False, data: dict[str, Any] | None = None
    ) -> None:
        super().__init__(f"tool {tool!r} failed: {reason}", code=TOOL_FAILED, data=data)
        self.tool = tool
        self.reason = reason
        self.retryable = retryable


def error_from_rpc(error: object, tool: str | None) -> AgentError:
    """The exception for one JSON-RPC ``error`` object; ``tool`` names the tool that was called."""
    if not isinstance(error, dict):
        return AgentError(f"the gateway answered with a malformed error: {error!r}")
    fields = cast(dict[str, Any], error)
    code, message, raw_data = fields.get("code"), str(fields.get("message", "")), fields.get("data")
    data = cast(dict[str, Any], raw_data) if isinstance(raw_data, dict) else {}
    name = str(data.get("tool", tool or "?"))
    if code == DENIED:
        return ToolDenied(
            name, _strings(data.get("reasons")) or [message], _strings(data.get("rule_ids")), data=data
        )
    if code == TOOL_FAILED:
        reason = str(data.get("reason", message))
        return ToolFailed(name, reason, retryable=bool(data.get("retryable", False)), data=data)
    return AgentError(message, code=code if isinstance(code, int) else None, data=data)


def _strings(value: object) -> list[str]:
    return [str(item) for item in cast(list[object], value)] if isinstance(value, list) else []
