"""The ``process`` backend: the agent in a child process under rlimits. For development.

It confines resource use only. The child runs as the calling user and can see the host's files and
network. What it does guarantee: an interpreter without site-packages (``-I -S``) that imports a
private read-only copy of ``bastion.agent``, an environment holding only ``SandboxSpec.env`` and a
few basics, and a process group that ``stop`` kills whole.

Limits: RLIMIT_CPU, RLIMIT_AS, RLIMIT_NOFILE, RLIMIT_FSIZE and RLIMIT_NPROC inside; as root, also a
per-sandbox cgroup (memory, processes and CPU time across all the agent's processes; RLIMIT_NPROC
is not enforced for root, so without root's cgroup a fork bomb is bounded only by the user's other
limits). The workspace size is measured every 0.1 s and the sandbox is stopped past it: not a
kernel-enforced cap, the agent can overshoot by what it writes within one period.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import tempfile
import weakref
from pathlib import Path

from bastion.errors import SandboxError

from . import _cgroup
from ._base import LogSink, SandboxSpec
from ._channel import EXIT_MEMORY, LIMIT_EXCEEDED, ChannelSandbox, base_env, bootstrap_argv, rlimits, spawn
from ._confine import HostConfinement
from ._sdk import copy_sdk, remove_tree, shared_sdk

_numbers = itertools.count(1)
# The runner's codes, as the host reads them (kept here too: tests compare them with the SDK's).
_LIMIT_EXCEEDED, _EXIT_MEMORY = LIMIT_EXCEEDED, EXIT_MEMORY


class ProcessBackend:
    """Starts sandboxes as child processes. ``close`` it (or use ``with``) to remove its SDK copy."""

    name = "process"

    def __init__(self, *, sdk_cache: Path | None = None) -> None:
        """Args:
        sdk_cache: a directory where read-only SDK copies are kept, one per SDK version, and shared
            by every backend and process that names it (a worker killed with SIGKILL leaves nothing
            behind). Without it, the backend makes a private copy and removes it on ``close``.
        """
        self._cgroups = _cgroup.unavailable() is None
        if self._cgroups:
            _cgroup.sweep(_orphaned)
        if sdk_cache is not None:
            self._sdk = shared_sdk(sdk_cache)
            self._cleanup = weakref.finalize(self, lambda: None)
            return
        self._sdk = Path(tempfile.mkdtemp(prefix="bastion-sdk-"))
        self._cleanup = weakref.finalize(self, remove_tree, self._sdk)
        copy_sdk(self._sdk)

    def start(self, spec: SandboxSpec, *, on_log: LogSink) -> ProcessSandbox:
        """Start the agent's process, ready for ``call``.

        Raises:
            SandboxError: the backend is closed or the process could not be started.
        """
        if not self._cleanup.alive:
            raise SandboxError("the process backend is closed")
        workspace = spec.workspace.resolve()
        limits = spec.limits
        image = spec.image
        interpreter = str(image.interpreter) if image is not None else sys.executable
        packages = str(image.site_packages) if image is not None and image.site_packages is not None else ""
        argv = bootstrap_argv(interpreter, str(self._sdk), packages, rlimits(limits))
        cgroup: _cgroup.Cgroup | None = None
        try:
            if self._cgroups:
                cgroup = _cgroup.Cgroup(
                    f"process-{os.getpid()}-{next(_numbers)}",
                    memory_bytes=limits.memory_mib * 1024 * 1024,
                    processes=limits.processes,
                )
            process, write_fd, read_fd, log_fd = spawn(
                argv, cwd=workspace, env=base_env(str(workspace), spec.env)
            )
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            if cgroup is not None:
                cgroup.remove()
            raise SandboxError(f"could not start the agent process in {workspace}: {exc}") from exc
        directory = os.open(workspace, os.O_RDONLY | os.O_DIRECTORY)
        confinement = HostConfinement(limits, cgroup=cgroup, workspace_dir=directory)
        sandbox = ProcessSandbox(process, write_fd, read_fd, log_fd, limits, on_log, confinement)
        if cgroup is not None:
            try:
                # Safe after exec: the bootstrap forks nothing, and agent code runs only on a call.
                cgroup.add(process.pid)
            except OSError as exc:
                sandbox.stop()
                raise SandboxError(f"could not put the agent process into its cgroup: {exc}") from exc
        return sandbox

    def close(self) -> None:
        """Remove the SDK copy; running sandboxes keep working, new ones cannot start."""
        self._cleanup()

    def __enter__(self) -> ProcessBackend:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def _orphaned(name: str) -> bool:
    """A process backend's cgroup whose worker (the pid in its name) is gone."""
    kind, _, rest = name.partition("-")
    pid = rest.partition("-")[0]
    if kind != "process" or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class ProcessSandbox(ChannelSandbox):
    """One agent process; see ``bastion.execution.sandbox.Sandbox`` for the contract."""


__all__ = ["ProcessBackend", "ProcessSandbox"]
