"""Sandboxes run agent code; one interface, several backends (see ``_base`` for the contract)."""

from ._base import (
    DENIED,
    INVALID,
    MIB,
    TOOL_FAILED,
    BackendReport,
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
from ._bwrap import BwrapBackend
from ._channel import ChannelSandbox
from ._gvisor import GvisorBackend
from ._process import ProcessBackend, ProcessSandbox
from ._select import BACKENDS, default_backend, open_backend, probe_backend, probe_backends

__all__ = [
    "BACKENDS",
    "DENIED",
    "INVALID",
    "MIB",
    "TOOL_FAILED",
    "BackendReport",
    "BwrapBackend",
    "CallError",
    "ChannelSandbox",
    "GvisorBackend",
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
    "default_backend",
    "open_backend",
    "probe_backend",
    "probe_backends",
]
