"""Sandboxes run agent code; one interface, several backends (see ``_base`` for the contract)."""

from ._base import (
    DENIED,
    INVALID,
    MIB,
    TOOL_FAILED,
    CallError,
    Handler,
    Image,
    LogSink,
    Notify,
    Sandbox,
    SandboxBackend,
    SandboxLimits,
    SandboxSpec,
    SandboxState,
    SandboxStatus,
)
from ._process import ProcessBackend, ProcessSandbox

__all__ = [
    "DENIED",
    "INVALID",
    "MIB",
    "TOOL_FAILED",
    "CallError",
    "Handler",
    "Image",
    "LogSink",
    "Notify",
    "ProcessBackend",
    "ProcessSandbox",
    "Sandbox",
    "SandboxBackend",
    "SandboxLimits",
    "SandboxSpec",
    "SandboxState",
    "SandboxStatus",
]
