"""The host-side limits shared by the backends: a cgroup, a workspace cap, cleanup callbacks."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import stat
from collections.abc import Callable
from pathlib import Path

from bastion.errors import LimitExceeded

from ._base import MIB, SandboxLimits
from ._cgroup import Cgroup
from ._channel import Confinement
from ._workspace import Workspace

_log = logging.getLogger(__name__)
POLL_SECONDS = 0.1
_SIGNALS = {int(s) for s in signal.Signals}


class HostConfinement(Confinement):
    """Limits the host enforces around a sandbox.

    Args:
        cgroup: the sandbox's cgroup (memory, pids, CPU time); None where cgroups are unavailable.
        workspace: a size-capped tmpfs workspace (kernel-enforced cap).
        workspace_dir: a directory fd whose disk use is measured at every poll instead (the
            ``process`` backend: not kernel-enforced, the agent can overshoot by what it writes
            within one poll period).
        signal_status: the host process reports a signal as ``128 + n`` (bwrap, runsc).
        cleanup: called on release, in order, after the workspace and cgroup are released.
    """

    def __init__(
        self,
        limits: SandboxLimits,
        *,
        cgroup: Cgroup | None = None,
        workspace: Workspace | None = None,
        workspace_dir: int | None = None,
        signal_status: bool = False,
        cleanup: list[Callable[[], None]] | None = None,
    ) -> None:
        self.limits, self.cgroup, self.workspace = limits, cgroup, workspace
        self._workspace_dir = workspace_dir
        self._signal_status = signal_status
        self._cleanup = cleanup or []
        self.released = False
        if cgroup is not None or workspace is not None or workspace_dir is not None:
            self.poll_seconds = POLL_SECONDS

    @property
    def live_workspace(self) -> Path | None:
        return self.workspace.mountpoint if self.workspace is not None else None

    def exit_code(self, raw: int) -> int:
        if self._signal_status and raw > 128 and raw - 128 in _SIGNALS:
            return -(raw - 128)
        return raw

    def check(self) -> LimitExceeded | None:
        limits = self.limits
        if self.cgroup is not None:
            used = self.cgroup.cpu_seconds()
            if used > limits.cpu_seconds:
                return LimitExceeded(
                    "cpu", f"the sandbox used {used:.1f} s of CPU, the limit is {limits.cpu_seconds:g} s"
                )
            if self.cgroup.oom_kills() > 0:
                return LimitExceeded(
                    "memory", f"the sandbox used more than {limits.memory_mib} MiB of memory"
                )
            if self.cgroup.pids_exhausted():
                return LimitExceeded(
                    "processes", f"the sandbox tried to run more than {limits.processes} processes"
                )
        if self.workspace is not None and self.workspace.full():
            return LimitExceeded("workspace", f"the workspace is full ({limits.workspace_mib} MiB)")
        if self._workspace_dir is not None:
            used = _disk_usage(self._workspace_dir)
            if used > limits.workspace_mib * MIB:
                return LimitExceeded(
                    "workspace",
                    f"the workspace uses {used // MIB} MiB, the limit is {limits.workspace_mib} MiB",
                )
        return None

    def blame(self, exit_code: int | None) -> LimitExceeded | None:
        if self.cgroup is not None and self.cgroup.oom_kills() > 0:
            return LimitExceeded(
                "memory", f"the sandbox used more than {self.limits.memory_mib} MiB of memory"
            )
        return None

    def before_call(self) -> None:
        if self.workspace is not None:
            self.workspace.sync_in()

    def kill(self) -> None:
        if self.cgroup is not None:
            self.cgroup.kill()

    def release(self) -> None:
        if self.released:
            return
        self.released = True
        steps: list[Callable[[], object]] = []
        if self.workspace is not None:
            steps.append(self.workspace.close)
        if self.cgroup is not None:
            cgroup = self.cgroup
            steps.append(lambda: cgroup.remove() or _log.warning("cgroup %s was not removed", cgroup.name))
        if self._workspace_dir is not None:
            fd = self._workspace_dir
            steps.append(lambda: os.close(fd))
        for step in [*steps, *self._cleanup]:
            try:
                step()
            except Exception:
                _log.exception("a sandbox cleanup step failed")


def _disk_usage(directory: int) -> int:
    """Bytes of disk under the directory fd (allocated blocks; links not followed)."""
    total = 0
    with contextlib.suppress(OSError):
        for _, _, files, fd in os.fwalk(".", dir_fd=directory):
            for name in files:
                with contextlib.suppress(OSError):
                    info = os.stat(name, dir_fd=fd, follow_symlinks=False)
                    if stat.S_ISREG(info.st_mode):
                        total += info.st_blocks * 512
    return total
