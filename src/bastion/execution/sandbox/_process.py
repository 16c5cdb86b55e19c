"""The ``process`` backend: the agent in a child process under rlimits. For development.

It confines resource use only; it does NOT isolate. The agent shares the host's filesystem (it can
read every file its uid may read: world-readable files, other users' world-readable homes, the
project), the host's network (it can connect anywhere the host can, so invariant 1 does not hold),
the host's unix sockets, ``/tmp`` and ``/dev/shm``, and can see the host's processes in ``/proc``.
What it does guarantee: an interpreter without site-packages (``-I -S``) that imports a read-only
copy of ``bastion.agent``, an environment holding only ``SandboxSpec.env`` and a few basics, a
process group (as root, a cgroup) that ``stop`` kills whole, and, as root, no privilege:

* Not as root, the child runs as the calling user.
* As root, the child never runs as root: it runs under a host uid leased for this sandbox alone
  (``_uids``, shared with ``bwrap``), no supplementary groups, no capabilities (none permitted,
  effective, inheritable, ambient, nor in the bounding set) and NoNewPrivs, so a setuid binary
  cannot give any back (``setpriv`` does the drop just before the interpreter starts). Its workspace
  is handed to that uid for the sandbox's life and back to root when it stops. The interpreter is
  ``/usr/bin/python3`` (or the image's), the SDK copy and the image must be reachable by that uid:
  the backend says so, with the fix, when they are not. Per-sandbox cgroups are required.

Limits: RLIMIT_CPU, RLIMIT_AS, RLIMIT_NOFILE, RLIMIT_FSIZE inside, and RLIMIT_NPROC when not root
(it then counts every process of the calling user); as root, a per-sandbox cgroup instead (memory,
processes and threads, CPU time across all the agent's processes). The workspace size is measured
every 0.1 s and the sandbox is stopped past it: not a kernel-enforced cap, the agent can overshoot
by what it writes within one period.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import subprocess
import sys
import tempfile
import weakref
from collections.abc import Callable
from pathlib import Path

from bastion.errors import SandboxError

from . import _cgroup
from ._base import LogSink, SandboxSpec
from ._channel import EXIT_MEMORY, LIMIT_EXCEEDED, ChannelSandbox, base_env, bootstrap_argv, rlimits, spawn
from ._confine import HostConfinement
from ._sdk import copy_sdk, remove_tree, shared_sdk
from ._uids import DEFAULT_UIDS, UID_LOCKS, UidLease, unreachable

_numbers = itertools.count(1)
SETPRIV = "/usr/bin/setpriv"
DEFAULT_INTERPRETER = "/usr/bin/python3"
"""As root: the interpreter every leased uid can run (the worker's own may sit under ``/root``)."""
# The runner's codes, as the host reads them (kept here too: tests compare them with the SDK's).
_LIMIT_EXCEEDED, _EXIT_MEMORY = LIMIT_EXCEEDED, EXIT_MEMORY


class ProcessBackend:
    """Starts sandboxes as child processes. ``close`` it (or use ``with``) to remove its SDK copy."""

    name = "process"

    def __init__(self, *, sdk_cache: Path | None = None, uids: range = DEFAULT_UIDS) -> None:
        """Args:
        sdk_cache: a directory where read-only SDK copies are kept, one per SDK version, and shared
            by every backend and process that names it (a worker killed with SIGKILL leaves nothing
            behind). Without it, the backend makes a private copy and removes it on ``close``.
        uids: as root, the host uids leased one per sandbox.

        Raises:
            SandboxError: as root, a piece the leased uid needs is missing or out of its reach
                (the detail says how to fix it).
        """
        self._root = os.geteuid() == 0
        self._uids = uids
        self._cgroups = _cgroup.unavailable() is None
        if self._root:
            _check_root_ready()
            UID_LOCKS.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self._cgroups:
            _cgroup.sweep(_orphaned)
        if sdk_cache is not None:
            self._sdk = shared_sdk(sdk_cache)
            self._cleanup = weakref.finalize(self, lambda: None)
            if self._root:
                sdk_cache.chmod(0o711)  # the leased uids reach their version's copy, list nothing
        else:
            self._sdk = Path(tempfile.mkdtemp(prefix="bastion-sdk-"))
            self._cleanup = weakref.finalize(self, remove_tree, self._sdk)
            copy_sdk(self._sdk)
        if self._root:
            _reachable(self._sdk, "the SDK copy")

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
        default = DEFAULT_INTERPRETER if self._root else sys.executable
        interpreter = str(image.interpreter) if image is not None else default
        packages = str(image.site_packages) if image is not None and image.site_packages is not None else ""
        if self._root and image is not None:
            _reachable(image.interpreter, f"the image {image.name}'s interpreter")
            if image.site_packages is not None:
                _reachable(image.site_packages, f"the image {image.name}'s packages")
        # As root the pids cgroup counts processes (RLIMIT_NPROC would hit first and hide which
        # limit it was); not as root, RLIMIT_NPROC is all there is.
        argv = bootstrap_argv(
            interpreter,
            str(self._sdk),
            packages,
            rlimits(limits, processes=not self._root),
            workspace="/proc/self/cwd" if self._root else ".",
        )
        cgroup: _cgroup.Cgroup | None = None
        lease: UidLease | None = None
        try:
            directory = os.open(workspace, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise SandboxError(f"could not start the agent process in {workspace}: {exc}") from exc
        try:
            if self._cgroups:
                cgroup = _cgroup.Cgroup(
                    f"process-{os.getpid()}-{next(_numbers)}",
                    memory_bytes=limits.memory_mib * 1024 * 1024,
                    processes=limits.processes,
                )
            if self._root:
                lease = UidLease(UID_LOCKS, self._uids)
                _give(directory, lease.uid, lease.uid)
                argv = [*_drop_to(lease.uid), *argv]
            # The child changes into the workspace before it drops to the leased uid: it needs no
            # access to the directories above it.
            process, write_fd, read_fd, log_fd = spawn(
                argv, cwd=workspace, env=base_env(str(workspace), spec.env)
            )
        except (OSError, ValueError, subprocess.SubprocessError, SandboxError) as exc:
            if cgroup is not None:
                cgroup.remove()
            if lease is not None:
                _give(directory, os.geteuid(), os.getegid())
                lease.release()
            os.close(directory)
            if isinstance(exc, SandboxError):
                raise
            raise SandboxError(f"could not start the agent process in {workspace}: {exc}") from exc
        cleanup: list[Callable[[], None]] = []
        if lease is not None:
            held = lease
            owner = (os.geteuid(), os.getegid())
            # After the cgroup is empty: nothing of the agent's is left to race the hand-back.
            cleanup = [lambda: _give(directory, *owner), held.release]
        confinement = HostConfinement(
            limits,
            cgroup=cgroup,
            workspace_dir=os.dup(directory),
            cleanup=[*cleanup, lambda: os.close(directory)],
        )
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


def _check_root_ready() -> None:
    if _cgroup.unavailable() is not None:
        raise SandboxError(
            f"the process backend as root needs per-sandbox cgroups: {_cgroup.unavailable()}; to fix: "
            "mount the cgroup v1 memory, pids, cpu and cpuacct controllers, or use the bwrap backend",
            hint="mount the cgroup v1 controllers or use BASTION_SANDBOX=bwrap",
        )
    for program, package in ((SETPRIV, "util-linux"), (DEFAULT_INTERPRETER, "python3")):
        if not os.access(program, os.X_OK):
            raise SandboxError(
                f"the process backend as root needs {program}; to fix: apt-get install {package}",
                hint=f"apt-get install {package}",
            )


def _drop_to(uid: int) -> list[str]:
    """The command that runs the rest of the argv as ``uid`` (and the gid of the same number), with
    no supplementary group, no capability in any set, and NoNewPrivs."""
    return [
        SETPRIV,
        f"--reuid={uid}",
        f"--regid={uid}",
        "--clear-groups",
        "--inh-caps=-all",
        "--ambient-caps=-all",
        "--bounding-set=-all",
        "--no-new-privs",
        "--",
    ]


def _reachable(path: Path, what: str) -> None:
    if not path.exists():
        raise SandboxError(f"could not start the agent process: {what} {path} does not exist")
    if (blocked := unreachable(path)) is not None:
        raise SandboxError(
            f"{what} ({path}) cannot be reached by the sandbox's unprivileged uid at {blocked}; to fix: "
            f"run `chmod o+x {blocked}` or keep it under a directory whose parents are all o+x",
            hint=f"chmod o+x {blocked}",
        )


def _give(directory: int, uid: int, gid: int) -> None:
    """Make everything under the directory fd (itself included) owned by ``uid``:``gid``, never
    following a link."""
    os.chown(directory, uid, gid)
    for _, dirs, files, fd in os.fwalk(".", dir_fd=directory, follow_symlinks=False):
        for name in [*dirs, *files]:
            with contextlib.suppress(FileNotFoundError):
                os.chown(name, uid, gid, dir_fd=fd, follow_symlinks=False)


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
