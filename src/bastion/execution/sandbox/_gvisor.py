"""The ``gvisor`` backend: the agent on gVisor's user-space kernel, ``runsc run`` with an OCI bundle.

``runsc --network=none --platform=ptrace run --bundle DIR ID`` with a ``config.json`` that gives:
a dedicated read-only root directory (built once under the state directory, never the host's
``/``) with ``/usr`` and ``/etc/ld.so.cache`` bound read-only and the host's Python packages hidden;
the SDK (and the image, if any) read-only under ``/opt/bastion``; ``/workspace`` bound from a
size-capped tmpfs (see ``_workspace``); a size-capped ``/tmp``; user 65534, no capabilities,
``noNewPrivileges``, an explicit environment (``runsc do`` would copy the worker's); no network
but loopback; ``socket`` and ``socketpair`` only for unix, IPv4 and IPv6 sockets (an OCI seccomp
filter that gVisor's kernel applies, ``--oci-seccomp``). gVisor's own kernel answers the agent's
system calls; the host sees only the sentry.

Limits: ``linux.resources`` (memory, pids, one CPU) in the cgroup at ``linux.cgroupsPath``, which
the backend creates (runsc joins it and enforces it on the whole sandbox: sentry, gofer, the
agent's processes); the host reads CPU time, OOM kills and pid exhaustion from it, also after the
sandbox died. RLIMIT_CPU, RLIMIT_AS, RLIMIT_FSIZE and
RLIMIT_NOFILE are set inside by the bootstrap, never RLIMIT_AS on runsc itself (its Go runtime
crashes). The processes limit is gVisor's own: the host cgroup's pids count the sentry's host
threads, not the agent's (2,000 agent threads fit in a few dozen of them), and gVisor ignores
RLIMIT_NPROC. So the sandbox's first process is a launcher (``LAUNCHER``) running as root *inside*
gVisor (no host privilege: gVisor's user namespace), with only CAP_SYS_ADMIN, CAP_DAC_OVERRIDE,
CAP_SETUID, CAP_SETGID, CAP_SETPCAP and CAP_KILL: it mounts gVisor's pids cgroup controller, puts the agent's process into a
cgroup of its own whose ``pids.max`` is one past the limit (every thread counts, as on Linux),
drops it to user 65534 with no capability (the bounding set emptied too) before the bootstrap runs, and watches that cgroup: when
the agent reaches the cap it kills every process of the agent and exits with
``EXIT_PROCESSES``, which the host reports as the ``processes`` limit. The host cgroup's pids limit
stays, with room for the sentry's threads (``_RUNSC_TASKS``).

Cleanup on stop, also after a kill: the sandbox's processes (through its cgroup), ``runsc delete
--force``, its state and bundle directories, and the cgroup directories runsc leaves behind.
Runs as root only (runsc needs it to set up its namespaces and cgroups).
"""

from __future__ import annotations

import contextlib
import errno
import glob
import itertools
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from bastion.errors import LimitExceeded, SandboxError

from . import _cgroup, _seccomp
from ._base import MIB, Image, LogSink, SandboxLimits, SandboxSpec, shm_mib
from ._channel import ChannelSandbox, base_env, bootstrap_argv, rlimits, spawn
from ._confine import HostConfinement
from ._sdk import shared_sdk
from ._workspace import Workspace, is_mountpoint, unmount

RUNSC = "/usr/bin/runsc"
USER = 65534
SDK_PATH = "/opt/bastion/sdk"
IMAGE_PATH = "/opt/bastion/image"
PACKAGES_PATH = "/opt/bastion/packages"
DEFAULT_INTERPRETER = "/usr/bin/python3"
_OVERHEAD_MIB = 24
"""Memory the cgroup allows beyond the agent's limit: the sentry's and the gofer's own (about 18
MiB idle), less than they and the agent's interpreter use together, so what the agent can hold in
its processes and its tmpfs mounts stays within ``memory_mib``."""
_RUNSC_TASKS = 192
"""Host tasks of the sandbox that are not the agent's: the sentry's and gofer's threads."""
_HIDDEN = ("/usr/lib/python3/dist-packages", "/usr/local/lib/python3*")
_numbers = itertools.count(1)
EXIT_PROCESSES = 87
"""The launcher's exit status when the agent reached its processes limit."""
_LAUNCHER_CAPS = ["CAP_SYS_ADMIN", "CAP_DAC_OVERRIDE", "CAP_SETUID", "CAP_SETGID", "CAP_SETPCAP", "CAP_KILL"]
LAUNCHER = """\
import ctypes, os, signal, sys, time
limit, argv = int(sys.argv[1]), sys.argv[2:]
cgroup = "/sys/fs/cgroup/agent"
libc = ctypes.CDLL(None, use_errno=True)
if libc.mount(b"none", b"/sys/fs/cgroup", b"cgroup", 0, b"pids") != 0:
    sys.exit("bastion launcher: cannot mount the pids cgroup: " + os.strerror(ctypes.get_errno()))
os.mkdir(cgroup)
with open(cgroup + "/pids.max", "w") as f:
    f.write(str(limit + 1))
child = os.fork()
if child == 0:
    with open(cgroup + "/cgroup.procs", "w") as f:
        f.write(str(os.getpid()))
    for cap in range(64):
        libc.prctl(24, cap, 0, 0, 0)  # PR_CAPBSET_DROP: nothing left for an exec to gain
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)
    os.chdir("/workspace")
    os.execv(argv[0], argv)
for fd in (0, 1):
    os.close(fd)
while True:
    pid, status = os.waitpid(child, os.WNOHANG)
    if pid:
        if os.WIFSIGNALED(status):
            os._exit(128 + os.WTERMSIG(status))
        code = os.WEXITSTATUS(status)
        os._exit(1 if code == 87 else code)
    with open(cgroup + "/pids.current") as f:
        if int(f.read()) > limit:
            os.kill(-1, signal.SIGKILL)
            os._exit(87)
    time.sleep(0.05)
"""
"""The sandbox's first process: see the module's docstring."""


def unavailable() -> tuple[str, str] | None:
    """None when runsc can be tried here, else (why, how to fix)."""
    if not Path(RUNSC).exists():
        return f"gVisor is not installed ({RUNSC} is missing)", "apt-get install runsc"
    if os.geteuid() != 0:
        return (
            "the gvisor backend needs root (runsc sets up namespaces and cgroups)",
            "run the worker as root",
        )
    if problem := _cgroup.unavailable():
        return problem, "mount the cgroup v1 memory, pids, cpu and cpuacct controllers"
    return None


class GvisorBackend:
    """Starts sandboxes with ``runsc run``; see the module's docstring for what is enforced."""

    name = "gvisor"

    def __init__(self, *, state_dir: Path) -> None:
        """Raises:
        SandboxError: runsc is missing or this process is not root (the detail says how to fix it).
        """
        if problem := unavailable():
            why, fix = problem
            raise SandboxError(f"{why}; to fix: {fix}", hint=fix)
        self._home = state_dir.resolve() / "gvisor"
        for name in ("sdk", "ws", "bundles", "state"):
            (self._home / name).mkdir(parents=True, exist_ok=True)
        self._home.chmod(0o711)
        self._sdk = shared_sdk(self._home / "sdk")
        self._rootfs = _build_rootfs(self._home / "rootfs")
        self._prefix = f"gvisor-{os.getpid()}-"
        self._sweep()
        self._closed = False

    def start(self, spec: SandboxSpec, *, on_log: LogSink) -> ChannelSandbox:
        """Start a sandbox, ready for ``call``.

        Raises:
            SandboxError: the backend is closed or the sandbox could not be set up.
        """
        if self._closed:
            raise SandboxError("the gvisor backend is closed")
        name = f"{self._prefix}{next(_numbers)}"
        limits = spec.limits
        bundle = self._home / "bundles" / name
        workspace: Workspace | None = None
        try:
            workspace = Workspace(
                spec.workspace, self._home / "ws" / name, size=limits.workspace_mib * MIB, uid=USER, gid=USER
            )
            bundle.mkdir(mode=0o700)
            config = self._config(spec, name, workspace.mountpoint)
            (bundle / "config.json").write_text(json.dumps(config, indent=1))
        except OSError as exc:
            if workspace is not None:
                workspace.close(copy_back=False)
            shutil.rmtree(bundle, ignore_errors=True)
            raise SandboxError(f"could not prepare the sandbox for {spec.workspace}: {exc}") from exc
        argv = [RUNSC, "--root", str(self._home / "state"), "--network=none", "--platform=ptrace"]
        argv += ["--oci-seccomp"]  # gVisor's own kernel applies ``linux.seccomp`` to the agent
        argv += ["run", "--bundle", str(bundle), name]
        try:
            # Made here, not by runsc: runsc removes the cgroups it made as soon as the sandbox dies,
            # and the host must still read why it died (an OOM kill, the pids limit).
            cgroup = _cgroup.Cgroup(
                name, memory_bytes=_memory(limits) * MIB, processes=limits.processes + _RUNSC_TASKS
            )
        except OSError as exc:
            workspace.close(copy_back=False)
            shutil.rmtree(bundle, ignore_errors=True)
            raise SandboxError(f"could not create the sandbox's cgroup: {exc}") from exc
        confinement = _GvisorConfinement(
            limits,
            cgroup=cgroup,
            workspace=workspace,
            signal_status=True,
            cleanup=[lambda: self._delete(name)],
        )
        try:
            process, write_fd, read_fd, log_fd = spawn(argv, cwd="/", env={"PATH": "/usr/bin:/bin"})
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            confinement.release()
            raise SandboxError(f"could not start runsc: {exc}") from exc
        return ChannelSandbox(process, write_fd, read_fd, log_fd, limits, on_log, confinement)

    def _config(self, spec: SandboxSpec, name: str, workspace: Path) -> dict[str, Any]:
        limits = spec.limits
        interpreter, packages = DEFAULT_INTERPRETER, ""
        mounts: list[dict[str, Any]] = [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/usr", "type": "bind", "source": "/usr", "options": ["rbind", "ro"]},
        ]
        if Path("/etc/ld.so.cache").exists():
            mounts.append(
                {
                    "destination": "/etc/ld.so.cache",
                    "type": "bind",
                    "source": "/etc/ld.so.cache",
                    "options": ["bind", "ro"],
                }
            )
        for pattern in _HIDDEN:
            for hidden in sorted(glob.glob(pattern)):
                mounts.append(
                    {"destination": hidden, "type": "tmpfs", "source": "tmpfs", "options": ["ro", "size=4k"]}
                )
        mounts += [
            {
                "destination": "/tmp",  # noqa: S108 -- the sandbox's own tmpfs
                "type": "tmpfs",
                "source": "tmpfs",
                "options": ["nosuid", "nodev", "mode=1777", f"size={limits.workspace_mib * MIB}"],
            },
            {
                "destination": "/dev/shm",  # noqa: S108 -- the sandbox's own tmpfs
                "type": "tmpfs",
                "source": "tmpfs",
                "options": ["nosuid", "nodev", "noexec", "mode=1777", f"size={shm_mib(limits) * MIB}"],
            },
            {"destination": SDK_PATH, "type": "bind", "source": str(self._sdk), "options": ["bind", "ro"]},
            {
                "destination": "/workspace",
                "type": "bind",
                "source": str(workspace),
                "options": ["bind", "rw"],
            },
        ]
        if spec.image is not None:
            interpreter, image_mounts, packages = _image(spec.image)
            mounts += image_mounts
        env = base_env("/workspace", spec.env)
        no_caps: dict[str, list[str]] = {
            k: [] for k in ("bounding", "effective", "inheritable", "permitted", "ambient")
        }
        memory = _memory(limits) * MIB
        # Inside: CPU, AS, FSIZE, NOFILE (the bootstrap sets them; gVisor ignores RLIMIT_NPROC).
        inside = rlimits(limits, processes=False)
        return {
            "ociVersion": "1.0.2",
            "process": {
                "terminal": False,
                "user": {"uid": 0, "gid": 0},  # gVisor's root, for the launcher only
                "args": [
                    DEFAULT_INTERPRETER,
                    *["-I", "-S", "-B", "-c", LAUNCHER, str(limits.processes)],
                    *bootstrap_argv(interpreter, SDK_PATH, packages, inside),
                ],
                "env": [f"{key}={value}" for key, value in env.items()],
                "cwd": "/",
                "capabilities": {
                    **no_caps,
                    **dict.fromkeys(("bounding", "effective", "permitted"), _LAUNCHER_CAPS),
                },
                "noNewPrivileges": True,
                "rlimits": [{"type": "RLIMIT_NOFILE", "hard": limits.open_files, "soft": limits.open_files}],
            },
            "root": {"path": str(self._rootfs), "readonly": True},
            "hostname": "sandbox",
            "mounts": mounts,
            "linux": {
                "namespaces": [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount")],
                "resources": {
                    "memory": {"limit": memory, "swap": memory},
                    "pids": {"limit": limits.processes + _RUNSC_TASKS},
                    "cpu": {"quota": 100_000, "period": 100_000},
                },
                "cgroupsPath": f"/{_cgroup.PARENT}/{name}",
                "seccomp": _socket_families(),
            },
        }

    def _delete(self, name: str) -> None:
        """Remove everything runsc and this backend made for ``name``."""
        state = str(self._home / "state")
        subprocess.run(  # noqa: S603 -- fixed program and arguments
            [RUNSC, "--root", state, "delete", "--force", name],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=False,
            timeout=30,
        )
        _cgroup.sweep(lambda leftover: leftover in (name, f"runsc-{name}"))
        shutil.rmtree(self._home / "bundles" / name, ignore_errors=True)
        for leftover in glob.glob(str(self._home / "state" / f"{name}*")):
            with contextlib.suppress(OSError):
                shutil.rmtree(leftover) if os.path.isdir(leftover) else os.unlink(leftover)

    def _sweep(self) -> None:
        """Remove what workers killed with SIGKILL left: sandboxes whose worker pid is gone."""
        for bundle in (self._home / "bundles").iterdir():
            pid = bundle.name.split("-")[1] if bundle.name.count("-") >= 2 else ""
            if pid.isdigit() and not _alive(int(pid)):
                mountpoint = self._home / "ws" / bundle.name
                self._delete(bundle.name)
                if is_mountpoint(mountpoint):
                    unmount(mountpoint)
                with contextlib.suppress(OSError):
                    mountpoint.rmdir()

    def close(self) -> None:
        """New sandboxes cannot start; running ones keep working."""
        self._closed = True

    def __enter__(self) -> GvisorBackend:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class _GvisorConfinement(HostConfinement):
    def blame(self, exit_code: int | None) -> LimitExceeded | None:
        if exit_code == EXIT_PROCESSES:
            return LimitExceeded(
                "processes", f"the sandbox tried to run more than {self.limits.processes} processes"
            )
        return super().blame(exit_code)


def _memory(limits: SandboxLimits) -> int:
    """MiB for the sandbox's cgroup: the agent's (its processes and its tmpfs mounts, which gVisor
    keeps in the same memory file), and the sentry's and gofer's own."""
    return limits.memory_mib + _OVERHEAD_MIB


def _socket_families() -> dict[str, Any]:
    """An OCI seccomp filter that leaves ``socket`` and ``socketpair`` only the families an agent
    needs (as ``bwrap``'s filter does); one condition per rule, as gVisor reads them."""
    allowed = sorted(_seccomp.ALLOWED_FAMILIES.values())
    refused = [{"index": 0, "value": allowed[-1], "op": "SCMP_CMP_GT"}]
    refused += [
        {"index": 0, "value": family, "op": "SCMP_CMP_EQ"}
        for family in range(allowed[-1])
        if family not in allowed
    ]
    return {
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": [
            {
                "names": ["socket", "socketpair"],
                "action": "SCMP_ACT_ERRNO",
                "errnoRet": errno.EAFNOSUPPORT,
                "args": [condition],
            }
            for condition in refused
        ],
    }


def _image(image: Image) -> tuple[str, list[dict[str, Any]], str]:
    mounts: list[dict[str, Any]] = []
    interpreter = str(image.interpreter.resolve())
    if not image.interpreter.resolve().is_relative_to("/usr"):
        root = image.interpreter.parent.parent
        mounts.append(
            {"destination": IMAGE_PATH, "type": "bind", "source": str(root), "options": ["bind", "ro"]}
        )
        interpreter = f"{IMAGE_PATH}/{image.interpreter.relative_to(root)}"
    packages = ""
    if image.site_packages is not None:
        source = str(image.site_packages)
        mounts.append(
            {"destination": PACKAGES_PATH, "type": "bind", "source": source, "options": ["bind", "ro"]}
        )
        packages = PACKAGES_PATH
    return interpreter, mounts, packages


def _build_rootfs(root: Path) -> Path:
    """The sandbox's root: empty mountpoints and the merged-/usr links, root-owned, made once."""
    complete = root.with_name(root.name + ".complete")
    if complete.exists():
        return root
    for directory in (
        "usr",
        "etc",
        "tmp",
        "workspace",
        "proc",
        "dev",
        "sys",
        SDK_PATH[1:],
        IMAGE_PATH[1:],
        PACKAGES_PATH[1:],
    ):
        (root / directory).mkdir(parents=True, exist_ok=True)
    (root / "etc" / "ld.so.cache").touch()
    for link in ("bin", "lib", "lib64", "sbin"):
        host, target = Path("/") / link, root / link
        if host.is_symlink() and not target.is_symlink():
            target.symlink_to(os.readlink(host))
        elif host.is_dir() and not host.is_symlink():
            target.mkdir(exist_ok=True)
    complete.touch()
    return root


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
