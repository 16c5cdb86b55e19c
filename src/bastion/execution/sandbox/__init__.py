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
from ._images import BASES, BuildProgress, ImageBuildFailed, ImageCache, image_digest
from ._pool import (
    MEMORY_ESTIMATE_MIB,
    PooledSandbox,
    PoolKey,
    SandboxInfo,
    WarmPool,
    pool_dir_name,
    remove_stale_pool_dirs,
)
from ._process import ProcessBackend, ProcessSandbox
from ._select import (
    BACKENDS,
    default_backend,
    open_backend,
    probe_backend,
    probe_backends,
    reports_for_default,
)
from ._workspace import read_agent_file

__all__ = [
    "BACKENDS",
    "BASES",
    "DENIED",
    "INVALID",
    "MEMORY_ESTIMATE_MIB",
    "MIB",
    "TOOL_FAILED",
    "BackendReport",
    "BuildProgress",
    "BwrapBackend",
    "CallError",
    "ChannelSandbox",
    "GvisorBackend",
    "Handler",
    "Image",
    "ImageBuildFailed",
    "ImageCache",
    "LogSink",
    "Notify",
    "PoolKey",
    "PooledSandbox",
    "ProcessBackend",
    "ProcessSandbox",
    "Sandbox",
    "SandboxBackend",
    "SandboxInfo",
    "SandboxLimits",
    "SandboxSpec",
    "SandboxState",
    "SandboxStatus",
    "WarmPool",
    "default_backend",
    "image_digest",
    "open_backend",
    "pool_dir_name",
    "probe_backend",
    "probe_backends",
    "read_agent_file",
    "remove_stale_pool_dirs",
    "reports_for_default",
]
