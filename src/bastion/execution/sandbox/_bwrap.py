"""The ``bwrap`` backend: bubblewrap namespaces, a minimal read-only root, seccomp, cgroup limits.

What the agent sees: a root that is an empty tmpfs remounted read-only, holding ``/usr`` read-only
(with the ``/bin``, ``/lib``, ``/lib64``, ``/sbin`` links and ``/etc/ld.so.cache``) with the host's
Python packages (``/usr/lib/python3/dist-packages``, ``/usr/local/lib/python3*``) hidden under
empty read-only tmpfs mounts, the SDK's files copied (``--file``) into the root at
``/opt/bastion/sdk``, the image (if any) read-only under ``/opt/bastion/image``, a writable
``/workspace`` (its cwd), a size-capped ``/tmp``, its own ``/proc`` and a minimal read-only ``/dev``
with a size-capped ``/dev/shm``. Nothing else of the host: no home directory, no ``/etc/shadow``, no
unix socket, no project directory. bwrap's options are read from a memfd (``--args``): the sandbox's
pid 1 is bwrap, and its ``/proc/1/cmdline`` would show the host paths of the state directory.

How: ``bwrap --unshare-all --unshare-user --disable-userns --die-with-parent --new-session
--clearenv``: new user, pid, net (only ``lo``), ipc, uts and cgroup namespaces, no capabilities,
NoNewPrivs, and a seccomp filter (``_seccomp``) passed with ``--seccomp FD``. bwrap is never started
as root (the sandbox's uid would then be host uid 0): as root the backend leases a dedicated host
uid per sandbox from ``uids`` (a lock file per uid under the state directory, so several workers
share a range safely) and the launcher drops to it (``setgroups([])``, ``setgid``, ``setuid``)
before exec; not as root, the sandbox runs as the calling user.

Limits, as root: a cgroup per sandbox (memory, tmpfs pages included, processes, one CPU, CPU time
watched every 0.1 s) that the launcher joins before bwrap forks; RLIMIT_CPU, RLIMIT_AS,
RLIMIT_NOFILE, RLIMIT_NPROC (per dedicated uid, so per sandbox), RLIMIT_FSIZE inside; the
workspace is a size-capped tmpfs (see ``_workspace``). Not as root: no cgroup (RLIMIT_NPROC then
counts every process of the calling user), and the workspace is the caller's directory bound
directly, its size polled like the ``process`` backend's.

The state directory and its parents must be traversable by other users (``o+x``): bwrap, running
unprivileged, must reach the SDK copy and the workspace mounts under it. The image directory too.
"""

from __future__ import annotations

import contextlib
import glob
import os
import subprocess
import weakref
from pathlib import Path

from bastion.errors import SandboxError

from . import _cgroup, _seccomp
from ._base import MIB, Image, LogSink, SandboxSpec, shm_mib
from ._channel import ChannelSandbox, base_env, bootstrap_argv, open_gate, rlimits, spawn
from ._confine import HostConfinement
from ._sdk import shared_sdk
from ._uids import DEFAULT_UIDS, UID_LOCKS, UidLease, unreachable
from ._workspace import Workspace, is_mountpoint, unmount

SDK_PATH = "/opt/bastion/sdk"
IMAGE_PATH = "/opt/bastion/image"
PACKAGES_PATH = "/opt/bastion/packages"
DEFAULT_INTERPRETER = "/usr/bin/python3"
_OVERHEAD_MIB = 8
"""Memory the cgroup allows beyond the agent's limit: bwrap's own two processes and the launcher
(about 3 MiB), less than the agent's interpreter itself uses, so what the agent can hold in its
processes and its tmpfs mounts together stays within ``memory_mib``."""
_LAUNCHER_PROCESSES = 4
"""Processes of the sandbox that are not the agent's: the launcher, bwrap, its pid 1."""
_HIDDEN = ("/usr/lib/python3/dist-packages", "/usr/local/lib/python3*")


def unavailable() -> str | None:
    """None when bwrap can be tried here, else why not."""
    if not Path("/usr/bin/bwrap").exists():
        return "bubblewrap is not installed (/usr/bin/bwrap is missing)"
    return _seccomp.supported()


class BwrapBackend:
    """Starts sandboxes with bubblewrap; see the module's docstring for what is enforced."""

    name = "bwrap"

    def __init__(self, *, state_dir: Path, uids: range = DEFAULT_UIDS) -> None:
        """Raises:
        SandboxError: bwrap is missing or the state directory is not usable (the detail says how to fix it).
        """
        if problem := unavailable():
            raise SandboxError(
                f"{problem}; to fix: apt-get install bubblewrap", hint="apt-get install bubblewrap"
            )
        self._root = os.geteuid() == 0
        self._cgroups = self._root and _cgroup.unavailable() is None
        self._uids = uids
        self._runtime = state_dir.resolve() / "bwrap"
        for directory in (self._runtime, self._runtime / "sdk", self._runtime / "ws"):
            directory.mkdir(parents=True, exist_ok=True)
            directory.chmod(0o711)
        self._leases = UID_LOCKS if self._root else self._runtime / "uids"
        self._leases.mkdir(mode=0o700, parents=True, exist_ok=True)
        if blocked := unreachable(self._runtime / "ws"):
            raise SandboxError(
                f"{blocked} cannot be traversed by other users, so the unprivileged sandbox cannot "
                f"reach its files under {self._runtime}; to fix: run `chmod o+x {blocked}` or choose "
                "a state directory whose parents are all o+x (e.g. under /var/lib)",
                hint=f"chmod o+x {blocked}",
            )
        self._sdk = shared_sdk(self._runtime / "sdk")
        sources = sorted(p for p in self._sdk.rglob("*") if p.is_file())
        self._sdk_files = [(f"{SDK_PATH}/{p.relative_to(self._sdk)}", p) for p in sources]
        self._sdk_dirs = [SDK_PATH] + [
            f"{SDK_PATH}/{p.relative_to(self._sdk)}" for p in sorted(self._sdk.rglob("*")) if p.is_dir()
        ]
        if self._root:
            self._sweep()
        self._seccomp = _seccomp.program()
        self._closed = False
        self._finalizer = weakref.finalize(self, lambda: None)

    def start(self, spec: SandboxSpec, *, on_log: LogSink) -> ChannelSandbox:
        """Start a sandbox, ready for ``call``.

        Raises:
            SandboxError: the backend is closed, no uid is free, or the sandbox could not be set up.
        """
        if self._closed:
            raise SandboxError("the bwrap backend is closed")
        lease = UidLease(self._leases, self._uids) if self._root else None
        uid = lease.uid if lease is not None else os.getuid()
        gid = lease.uid if lease is not None else os.getgid()
        name = f"bwrap-{uid}"
        limits = spec.limits
        cgroup: _cgroup.Cgroup | None = None
        workspace: Workspace | None = None
        directory: int | None = None
        try:
            self._clean_leftovers(name)
            if self._cgroups:
                memory = limits.memory_mib + _OVERHEAD_MIB
                cgroup = _cgroup.Cgroup(
                    name, memory_bytes=memory * MIB, processes=limits.processes + _LAUNCHER_PROCESSES
                )
            if self._root:
                workspace = Workspace(
                    spec.workspace,
                    self._runtime / "ws" / name,
                    size=limits.workspace_mib * MIB,
                    uid=uid,
                    gid=gid,
                )
                source = workspace.mountpoint
            else:
                source = spec.workspace.resolve()
                directory = os.open(source, os.O_RDONLY | os.O_DIRECTORY)
            argv, packages = self._argv(spec, source)
        except (OSError, SandboxError) as exc:
            _undo(workspace, cgroup, directory, lease)
            if isinstance(exc, SandboxError):
                raise
            raise SandboxError(f"could not prepare the sandbox for {spec.workspace}: {exc}") from exc
        interpreter = self._interpreter(spec.image)
        argv += [
            interpreter,
            *bootstrap_argv(interpreter, SDK_PATH, packages, rlimits(limits, processes=cgroup is None))[1:],
        ]
        cleanup = [lease.release] if lease is not None else []
        confinement = HostConfinement(
            limits,
            cgroup=cgroup,
            workspace=workspace,
            workspace_dir=directory,
            signal_status=True,
            cleanup=cleanup,
        )
        passed: list[int] = []
        try:
            # The SDK's files are copied into the sandbox's own root (no bind mount, whose source
            # path /proc/self/mountinfo would show), and every option travels through --args: the
            # sandbox's pid 1 is bwrap, and its command line must show no host path and no env.
            for index, (_, source) in enumerate(self._sdk_files):
                fd = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
                passed.append(fd)
                argv[argv.index(f"--sdk-file-{index}")] = str(fd)
            filter_fd = _memfd("bastion-seccomp", self._seccomp)
            passed.append(filter_fd)
            argv[argv.index("--seccomp") + 1] = str(filter_fd)
            end = argv.index("--")  # the command stays outside: bwrap reads only options there
            args_fd = _memfd("bastion-args", b"".join(os.fsencode(arg) + b"\0" for arg in argv[1:end]))
            passed.append(args_fd)
            process, write_fd, read_fd, log_fd = spawn(
                [argv[0], "--args", str(args_fd), *argv[end:]],
                cwd="/",
                env={"PATH": "/usr/bin:/bin"},
                pass_fds=tuple(passed),
                user=uid if self._root else None,
                group=gid if self._root else None,
                gated=cgroup is not None,
            )
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            confinement.release()
            raise SandboxError(f"could not start bwrap: {exc}") from exc
        finally:
            for fd in passed:
                os.close(fd)
        sandbox = ChannelSandbox(process, write_fd, read_fd, log_fd, limits, on_log, confinement)
        if cgroup is not None:
            try:
                cgroup.add(process.pid)
                open_gate(write_fd)
            except OSError as exc:
                sandbox.stop()
                raise SandboxError(f"could not put the sandbox into its cgroup: {exc}") from exc
        return sandbox

    def _argv(self, spec: SandboxSpec, workspace: Path) -> tuple[list[str], str]:
        """bwrap's options up to the command, and the packages path inside ("" without one)."""
        limits = spec.limits
        argv = ["/usr/bin/bwrap", "--unshare-all", "--unshare-user", "--disable-userns"]
        argv += ["--die-with-parent", "--new-session", "--clearenv", "--hostname", "sandbox"]
        argv += ["--tmpfs", "/", "--ro-bind", "/usr", "/usr"]
        for link in ("bin", "lib", "lib64", "sbin"):
            host = Path("/") / link
            if host.is_symlink():
                argv += ["--symlink", os.readlink(host), f"/{link}"]
            elif host.is_dir():
                argv += ["--ro-bind", str(host), f"/{link}"]
        if Path("/etc/ld.so.cache").exists():
            argv += ["--ro-bind", "/etc/ld.so.cache", "/etc/ld.so.cache"]
        for pattern in _HIDDEN:
            for hidden in sorted(glob.glob(pattern)):
                argv += ["--perms", "0555", "--tmpfs", hidden, "--remount-ro", hidden]
        # /dev is bwrap's own tmpfs: read-only, with a size-capped /dev/shm (all counted in memory).
        argv += ["--proc", "/proc", "--dev", "/dev"]
        shm = ["--perms", "1777", "--size", str(shm_mib(limits) * MIB), "--tmpfs", "/dev/shm"]  # noqa: S108 -- the sandbox's own
        argv += shm
        argv += ["--remount-ro", "/dev"]
        argv += ["--perms", "1777", "--size", str(limits.workspace_mib * MIB), "--tmpfs", "/tmp"]  # noqa: S108 -- the sandbox's own
        for directory in self._sdk_dirs:
            argv += ["--dir", directory]
        for index, (path, _) in enumerate(self._sdk_files):
            argv += ["--perms", "0444", "--file", f"--sdk-file-{index}", path]  # the fd, at start
        packages = ""
        if spec.image is not None:
            for source in (_image_root(spec.image), spec.image.site_packages):
                if source is not None and (blocked := unreachable(source)) is not None:
                    raise SandboxError(
                        f"the image {spec.image.name} ({source}) cannot be traversed by the sandbox's "
                        f"unprivileged uid at {blocked}; to fix: run `chmod o+x {blocked}` or build "
                        "images under a directory whose parents are all o+x",
                        hint=f"chmod o+x {blocked}",
                    )
            root = _image_root(spec.image)
            if root is not None:
                argv += ["--ro-bind", str(root), IMAGE_PATH]
            if spec.image.site_packages is not None:
                argv += ["--ro-bind", str(spec.image.site_packages), PACKAGES_PATH]
                packages = PACKAGES_PATH
        argv += ["--bind", str(workspace), "/workspace", "--chdir", "/workspace", "--remount-ro", "/"]
        argv += ["--seccomp", "-1"]
        for key, value in base_env("/workspace", spec.env).items():
            argv += ["--setenv", key, value]
        argv += ["--"]
        return argv, packages

    def _interpreter(self, image: Image | None) -> str:
        if image is None:
            return DEFAULT_INTERPRETER
        root = _image_root(image)
        if root is None:
            return str(image.interpreter.resolve())
        return f"{IMAGE_PATH}/{image.interpreter.relative_to(root)}"

    def _clean_leftovers(self, name: str) -> None:
        """Remove what a worker killed with SIGKILL left for this uid: its cgroup and its mount."""
        if self._cgroups:
            _cgroup.sweep(lambda leftover: leftover == name)
        mountpoint = self._runtime / "ws" / name
        if is_mountpoint(mountpoint):
            unmount(mountpoint)
        with contextlib.suppress(FileNotFoundError):
            mountpoint.rmdir()

    def _sweep(self) -> None:
        """Clean up after workers killed with SIGKILL: every sandbox uid with a mount or a cgroup
        left behind and no lease held on it."""
        names = {p.name for p in (self._runtime / "ws").iterdir()}
        names |= {p.name for p in (_cgroup.ROOT / "pids" / _cgroup.PARENT).glob("bwrap-*")}
        for name in sorted(names):
            uid = name.removeprefix("bwrap-")
            if not uid.isdigit() or int(uid) not in self._uids:
                continue
            try:
                lease = UidLease(self._leases, range(int(uid), int(uid) + 1))
            except SandboxError:
                continue  # a live sandbox holds it
            try:
                self._clean_leftovers(name)
            finally:
                lease.release()

    def close(self) -> None:
        """New sandboxes cannot start; the shared SDK copy stays for the next backend."""
        self._closed = True

    def __enter__(self) -> BwrapBackend:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def _memfd(name: str, data: bytes) -> int:
    """A sealed-off in-memory file holding ``data``, positioned at its start, for bwrap to read."""
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _image_root(image: Image) -> Path | None:
    """The directory to bind for the image's interpreter: None when it resolves into ``/usr``
    (visible already), else its ``bin`` directory's parent."""
    if image.interpreter.resolve().is_relative_to("/usr"):
        return None
    return image.interpreter.parent.parent


def _undo(
    workspace: Workspace | None, cgroup: _cgroup.Cgroup | None, directory: int | None, lease: UidLease | None
) -> None:
    if workspace is not None:
        workspace.close(copy_back=False)
    if cgroup is not None:
        cgroup.remove()
    if directory is not None:
        os.close(directory)
    if lease is not None:
        lease.release()
