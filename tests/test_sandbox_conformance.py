"""The sandbox conformance suite: every backend against the same hostile agents.

Each ``check_*`` function is an attack or an abuse, written as agent code and run through the
normal call path. Every probe must fail or be contained, and a limit that ends it must be named in
``LimitExceeded.limit``. The ``process`` backend is exempt from the isolation checks (it does not
isolate) but not from the limit checks. A backend that cannot start here skips with the probe's
reason, and fails where ``CI=true``.

Runs as the worker does in production: as root, with the backends dropping privileges themselves.
"""

from __future__ import annotations

import os
import socket
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from bastion.errors import LimitExceeded, SandboxError
from bastion.execution.sandbox import (
    BACKENDS,
    ChannelSandbox,
    SandboxBackend,
    SandboxLimits,
    SandboxSpec,
    SandboxState,
    open_backend,
    probe_backend,
)
from bastion.execution.sandbox._cgroup import unavailable as cgroups_unavailable
from bastion.execution.sandbox._sdk import remove_tree  # pyright: ignore[reportPrivateUsage]

from .conftest import _unavailable

PROJECT = Path(__file__).resolve().parents[1]
CANARY = "BASTION_CONFORMANCE_CANARY"
CANARY_VALUE = "canary-8d1f0c2e-must-not-leak"


@dataclass
class Box:
    """One backend under test, and a way to run agent code in it."""

    name: str
    backend: SandboxBackend
    state_dir: Path
    tmp: Path
    started: list[ChannelSandbox] = field(default_factory=list[ChannelSandbox])
    cgroups: dict[int, dict[Path, int]] = field(default_factory=dict[int, dict[Path, int]])
    """The cgroup directories each started sandbox (by ``id``) had, with their inode numbers."""

    def start(self, source: str, **limits: Any) -> tuple[ChannelSandbox, Path, list[str]]:
        workspace = Path(tempfile.mkdtemp(dir=self.tmp, prefix="ws-"))
        (workspace / "agent.py").write_text(textwrap.dedent(source))
        logs: list[str] = []
        spec = SandboxSpec(workspace=workspace, limits=SandboxLimits(**{"wall_seconds": 20.0, **limits}))
        sandbox: Any = self.backend.start(spec, on_log=logs.append)
        self.started.append(sandbox)
        self.cgroups[id(sandbox)] = _own_cgroups(sandbox)
        return sandbox, workspace, logs

    def run(self, source: str, payload: Any = None, **limits: Any) -> Any:
        """Run ``agent:main(payload)`` in a fresh sandbox and stop it; the result or the error."""
        sandbox, _, _ = self.start(source, **limits)
        try:
            return sandbox.call("run", {"entrypoint": "agent:main", "input": payload}, handler=_no_requests)
        finally:
            sandbox.stop()

    def limit(self, source: str, payload: Any = None, **limits: Any) -> str:
        """Run an agent that must hit a limit: the limit's name, after checking nothing is left."""
        began = time.monotonic()
        with pytest.raises(LimitExceeded) as raised:
            self.run(source, payload, **limits)
        assert time.monotonic() - began < 30
        sandbox = self.started[-1]
        status = sandbox.status()
        assert status.state is SandboxState.FAILED
        assert status.reason is not None and raised.value.limit in status.reason
        assert_nothing_left(self, sandbox)
        return raised.value.limit


def _no_requests(method: str, params: dict[str, Any]) -> Any:
    raise AssertionError(f"unexpected request {method}")


def _own_cgroups(sandbox: Any) -> dict[Path, int]:
    """The cgroup directories of one sandbox, with their inodes: only what this test made is
    checked, never the host's other Bastions' (a developer's, another CI job's)."""
    confinement = getattr(sandbox, "_confinement", None)
    cgroup = getattr(confinement, "cgroup", None)
    dirs: dict[str, Path] = getattr(cgroup, "dirs", {})
    found: dict[Path, int] = {}
    for path in dirs.values():
        try:
            found[path] = path.stat().st_ino
        except FileNotFoundError:
            continue
    return found


def _still_there(cgroups: dict[Path, int]) -> list[Path]:
    """Those of ``cgroups`` that still exist: the same directory, not a new one by the same name
    (a uid, and the cgroup named after it, can be leased again by another process at once)."""
    left: list[Path] = []
    for path, inode in cgroups.items():
        try:
            if path.stat().st_ino == inode:
                left.append(path)
        except FileNotFoundError:
            continue
    return left


def _mounts_under(path: Path) -> list[str]:
    return [line for line in Path("/proc/self/mountinfo").read_text().splitlines() if str(path) in line]


def _processes_with(marker: str) -> list[int]:
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def assert_nothing_left(box: Box, sandbox: ChannelSandbox) -> None:
    """No process, cgroup, mount or temporary directory of a stopped sandbox remains."""
    cgroups = box.cgroups.get(id(sandbox), {})
    until = time.monotonic() + 5
    while time.monotonic() < until and _still_there(cgroups):
        time.sleep(0.05)
    assert _still_there(cgroups) == []
    assert _mounts_under(box.state_dir) == []
    for leftovers in ("bwrap/ws", "gvisor/ws", "gvisor/bundles"):
        directory = box.state_dir / leftovers
        assert not directory.exists() or list(directory.iterdir()) == []
    state = box.state_dir / "gvisor" / "state"
    assert not state.exists() or [p for p in state.iterdir() if not p.name.startswith("runsc")] == []


_reports: dict[str, Any] = {}


@pytest.fixture(scope="module", params=BACKENDS)
def box(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Box]:
    name: str = request.param
    # The sandbox's unprivileged uid must be able to traverse to its files under the state dir.
    state_dir = Path(tempfile.mkdtemp(prefix=f"bastion-conformance-{name}-"))
    state_dir.chmod(0o711)
    report = probe_backend(name, state_dir=state_dir)
    if not report.works:
        remove_tree(state_dir)
        _unavailable(f"the {name} sandbox backend does not work here: {report.detail} (fix: {report.fix})")
    backend = open_backend(name, state_dir=state_dir)
    found = Box(name, backend, state_dir, tmp_path_factory.mktemp(f"conformance-{name}"))
    yield found
    for sandbox in found.started:
        sandbox.stop()
    backend.close()
    remove_tree(state_dir)


@pytest.fixture(autouse=True)
def _canary(monkeypatch: pytest.MonkeyPatch) -> None:
    """A secret in the worker's environment that no sandbox may see."""
    monkeypatch.setenv(CANARY, CANARY_VALUE)


# --- isolation checks (not for `process`) ------------------------------------------------------


def check_no_tcp_or_udp_to_the_host_or_outside(box: Box) -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        seen = box.run(
            """
            import socket
            def attempt(kind, address):
                try:
                    with socket.socket(socket.AF_INET, kind) as s:
                        s.settimeout(2)
                        s.connect(address)
                        if kind == socket.SOCK_DGRAM:
                            s.send(b"x")
                            s.recv(1)
                        return "connected"
                except OSError as exc:
                    return type(exc).__name__
            def main(port):
                return {
                    "host tcp": attempt(socket.SOCK_STREAM, ("127.0.0.1", port)),
                    "outside tcp": attempt(socket.SOCK_STREAM, ("1.1.1.1", 443)),
                    "outside udp": attempt(socket.SOCK_DGRAM, ("8.8.8.8", 53)),
                    "host udp": attempt(socket.SOCK_DGRAM, ("127.0.0.1", port)),
                }
            """,
            port,
        )
        server.settimeout(0.2)
        with pytest.raises(TimeoutError):
            server.accept()
    assert "connected" not in seen.values(), seen


def check_no_dns(box: Box) -> None:
    seen = box.run("""
        import socket
        def main(_):
            try:
                return socket.getaddrinfo("example.com", 443)
            except OSError as exc:
                return "failed: " + type(exc).__name__
    """)
    assert isinstance(seen, str) and seen.startswith("failed"), seen


def check_no_host_unix_socket(box: Box) -> None:
    directory = Path(tempfile.mkdtemp(dir=box.tmp))
    directory.chmod(0o777)
    path = directory / "host.sock"
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(path))
        path.chmod(0o777)
        server.listen()
        targets = [str(path), "/run/postgresql/.s.PGSQL.5432", "/var/run/docker.sock"]
        seen = box.run(
            """
            import socket
            def main(paths):
                out = {}
                for path in paths:
                    try:
                        with socket.socket(socket.AF_UNIX) as s:
                            s.connect(path)
                            out[path] = "connected"
                    except OSError as exc:
                        out[path] = type(exc).__name__
                return out
            """,
            targets,
        )
        server.settimeout(0.2)
        with pytest.raises(TimeoutError):
            server.accept()
    assert "connected" not in seen.values(), seen


def check_no_host_secrets_or_files(box: Box) -> None:
    secret_file = PROJECT / "pyproject.toml"
    seen = box.run(
        """
        import os
        def attempt(read):
            try:
                return read()
            except OSError as exc:
                return "denied: " + type(exc).__name__
        def environs():
            found = []
            for pid in os.listdir("/proc"):
                if pid.isdigit():
                    try:
                        found.append(open(f"/proc/{pid}/environ", "rb").read().decode(errors="replace"))
                    except OSError:
                        pass
            return found
        def main(paths):
            return {
                "shadow": attempt(lambda: open("/etc/shadow").read()),
                "proc1": attempt(lambda: open("/proc/1/environ", "rb").read().decode(errors="replace")),
                "environs": environs(),
                "env": dict(os.environ),
                "root": attempt(lambda: os.listdir("/root")),
                "project": attempt(lambda: os.listdir(paths["project"])),
                "project file": attempt(lambda: open(paths["file"]).read()),
                "home": attempt(lambda: os.listdir("/home")),
            }
        """,
        {"project": str(PROJECT), "file": str(secret_file)},
    )
    assert CANARY_VALUE not in str(seen)
    assert CANARY not in seen["env"]
    for key in ("shadow", "root", "project", "project file", "home"):
        assert isinstance(seen[key], str) and seen[key].startswith("denied"), (key, seen[key])


def check_no_write_outside_the_workspace(box: Box) -> None:
    host_dir = Path(tempfile.mkdtemp(dir=box.tmp))
    host_dir.chmod(0o777)
    marker = f"written-{os.getpid()}-{time.monotonic_ns()}"
    seen = box.run(
        """
        import os
        def main(args):
            out = {}
            for path in ["/usr/escape", "/etc/escape", "/escape", "/opt/bastion/sdk/escape",
                         "/usr/lib/python3/dist-packages/escape.py", args["host"] + "/escape",
                         "/proc/sys/kernel/hostname"]:
                try:
                    with open(path, "w") as f:
                        f.write("x")
                    out[path] = "written"
                except OSError as exc:
                    out[path] = type(exc).__name__
            with open("/tmp/" + args["marker"], "w") as f:
                f.write("private")
            return out
        """,
        {"host": str(host_dir), "marker": marker},
    )
    assert "written" not in seen.values(), seen
    assert list(host_dir.iterdir()) == []
    assert not (Path(tempfile.gettempdir()) / marker).exists()


def check_no_escape_by_symlink_or_dotdot(box: Box) -> None:
    target = Path(tempfile.mkdtemp(dir=box.tmp)) / "host-file"
    target.write_text("host")
    target.parent.chmod(0o777)
    target.chmod(0o666)
    sandbox, workspace, _ = box.start(
        """
        import os
        def attempt(do):
            try:
                return do()
            except OSError as exc:
                return "denied: " + type(exc).__name__
        def main(target):
            os.symlink("/etc/shadow", "shadow")
            os.symlink(target, "host")
            os.symlink("/", "root")
            os.symlink("../../..", "up")
            return {
                "shadow": attempt(lambda: open("shadow").read()),
                "host read": attempt(lambda: open("host").read()),
                "host write": attempt(lambda: open("host", "w").write("agent")),
                "dotdot": attempt(lambda: open("../../../../../../etc/shadow").read()),
                "via root": attempt(lambda: open("root/etc/shadow").read()),
            }
        """
    )
    seen = sandbox.call("run", {"entrypoint": "agent:main", "input": str(target)}, handler=_no_requests)
    sandbox.stop()
    for key, value in seen.items():
        assert isinstance(value, str) and value.startswith("denied"), (key, value)
    assert target.read_text() == "host"
    assert target.read_text() == "host"
    if box.name != "process":
        # Copied back to the host, a link that points outside the workspace is dropped.
        assert sorted(p.name for p in workspace.iterdir()) == ["agent.py"]


def check_copy_back_follows_link_chains(box: Box) -> None:
    """Links judged by what they resolve to, not by their text: ``s -> .`` makes ``s/..`` the
    workspace's parent although it reads as the workspace itself."""
    sandbox, workspace, _ = box.start(
        """
        import os
        def main(key):
            os.symlink(".", "s")
            os.symlink("s/../" + key, "key")  # the workspace's parent on the host
            os.symlink("s/s/s/../../../../../../etc/shadow", "shadow")
            os.symlink("b", "a")
            os.symlink("s/..", "b")  # a -> b -> the parent
            os.symlink("missing/../../" + key, "later")
            os.symlink("loop", "loop")
            os.makedirs("d/e")
            os.symlink("../../s/../" + key, "d/e/deep")
            os.symlink("../../s/s/agent.py", "d/e/inside")
            os.symlink("s/d/e/inside", "chain-inside")
            return sorted(os.listdir("."))
        """
    )
    key = workspace.parent / f"master-{workspace.name}.key"
    key.write_text("host master key")
    sandbox.call("run", {"entrypoint": "agent:main", "input": key.name}, handler=_no_requests)
    sandbox.stop()
    links = {p.relative_to(workspace).as_posix() for p in workspace.rglob("*") if p.is_symlink()}
    assert links == {"s", "d/e/inside", "chain-inside"}, links
    for link in links:
        assert (workspace / link).resolve().is_relative_to(workspace.resolve()), link
    assert (workspace / "chain-inside").read_text() == (workspace / "agent.py").read_text()
    assert key.read_text() == "host master key"


def check_copy_back_stays_within_the_workspace_size(box: Box) -> None:
    """Sparse files and hard links take no room in the tmpfs but their full size when copied: the
    host gets no more than the workspace's size back, and a tree nested too deep to copy still
    leaves no escaping link behind."""
    sandbox, workspace, _ = box.start(
        """
        import os
        def main(_):
            for i in range(5):
                with open(f"sparse-{i}", "wb") as f:
                    f.truncate(50 << 20)
            with open("block", "wb") as f:
                f.write(b"x" * (1 << 20))
            for i in range(40):
                os.link("block", f"link-{i}")
            os.symlink("/etc/shadow", "evil")
            here = os.getcwd()
            for _ in range(300):
                os.mkdir("d")
                os.chdir("d")
            os.symlink("../" * 310 + "etc/shadow", "deep-evil")
            os.chdir(here)
            return "done"
        """,
        workspace_mib=16,
    )
    assert sandbox.call("run", {"entrypoint": "agent:main", "input": None}, handler=_no_requests) == "done"
    sandbox.stop()
    copied = sum(p.lstat().st_size for p in workspace.rglob("*") if p.is_file() and not p.is_symlink())
    assert copied <= 16 << 20, f"{copied >> 20} MiB copied back from a 16 MiB workspace"
    links = [p for p in workspace.rglob("*") if p.is_symlink()]
    assert links == [], links


def check_only_the_socket_families_an_agent_needs(box: Box) -> None:
    """AF_VSOCK is a channel to the hypervisor on a VM host; netlink and packet sockets reach the
    kernel's network configuration. Only unix sockets and loopback IPv4/IPv6 are left."""
    seen = box.run(
        """
        import ctypes, os, socket
        libc = ctypes.CDLL(None, use_errno=True)
        def raw(family, kind, protocol=0):
            fd = libc.syscall(41, family, kind, protocol)  # socket(2), not through Python's module
            if fd >= 0:
                os.close(fd)
                return "created"
            return os.strerror(ctypes.get_errno())
        def main(_):
            out = {name: raw(*args) for name, args in {
                "vsock": (40, socket.SOCK_STREAM), "vsock dgram": (40, socket.SOCK_DGRAM),
                "netlink route": (16, socket.SOCK_RAW, 0), "netlink audit": (16, socket.SOCK_RAW, 9),
                "packet": (17, socket.SOCK_RAW), "alg": (38, socket.SOCK_SEQPACKET),
                "key": (15, socket.SOCK_RAW, 2), "bluetooth": (31, socket.SOCK_STREAM),
                "family 4096": (4096, socket.SOCK_STREAM), "vsock + 2**32": (2**32 + 40, socket.SOCK_STREAM),
            }.items()}
            pair = libc.syscall(53, 40, socket.SOCK_STREAM, 0, (ctypes.c_int * 2)())
            out["socketpair vsock"] = "created" if pair >= 0 else os.strerror(ctypes.get_errno())
            a, b = socket.socketpair(socket.AF_UNIX)
            a.send(b"unix")
            out["unix"] = b.recv(4).decode()
            for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
                with socket.socket(family) as server:
                    server.bind((host, 0))
                    server.listen()
                    with socket.create_connection(server.getsockname()[:2]) as client:
                        client.send(b"lo")
                        out[host] = server.accept()[0].recv(2).decode()
            return out
        """
    )
    assert seen.pop("unix") == "unix"
    assert seen.pop("127.0.0.1") == "lo" and seen.pop("::1") == "lo"
    assert "created" not in seen.values(), seen
    if box.name == "bwrap":
        assert set(seen.values()) == {os.strerror(97)}, seen  # EAFNOSUPPORT, as without the family


def check_no_host_paths_in_proc(box: Box) -> None:
    """The sandbox's /proc shows no host path: not its pid 1's command line (bwrap's options name
    the state directory, the workspace's mount and the SDK copy), not a mount's source."""
    sandbox, workspace, _ = box.start(
        """
        import os
        def main(_):
            seen = {}
            for pid in [p for p in os.listdir("/proc") if p.isdigit()] + ["self", "thread-self"]:
                for name in ("cmdline", "environ", "mountinfo", "mounts", "mountstats", "cgroup"):
                    try:
                        with open(f"/proc/{pid}/{name}", "rb") as f:
                            seen[f"{pid}/{name}"] = f.read().decode(errors="replace")
                    except OSError:
                        pass
            return seen
        """
    )
    seen = sandbox.call("run", {"entrypoint": "agent:main", "input": None}, handler=_no_requests)
    sandbox.stop()
    assert any(key.endswith("/mountinfo") for key in seen) and "1/cmdline" in seen, sorted(seen)
    host_paths = [str(box.state_dir), str(workspace), str(box.tmp), str(PROJECT), tempfile.gettempdir() + "/"]
    for key, text in seen.items():
        for path in host_paths:
            assert path not in text, (key, path, text[:2000])


def check_no_host_processes(box: Box) -> None:
    seen = box.run(
        """
        import os, signal
        def main(host_pid):
            try:
                os.kill(host_pid, signal.SIGTERM)
                killed = "signalled"
            except OSError as exc:
                killed = type(exc).__name__
            pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
            return {"killed": killed, "pids": pids}
        """,
        os.getpid(),
    )
    assert seen["killed"] != "signalled"
    assert os.getpid() not in seen["pids"]
    assert len(seen["pids"]) < 10, seen["pids"]


def check_no_ptrace_modules_mounts_or_namespaces(box: Box) -> None:
    seen = box.run(
        """
        import ctypes, os
        libc = ctypes.CDLL(None, use_errno=True)
        def syscall(number, *args):
            result = libc.syscall(number, *args)
            return "ok" if result >= 0 else os.strerror(ctypes.get_errno())
        def main(host_pid):
            return {
                "ptrace attach host": syscall(101, 16, host_pid, 0, 0),
                "ptrace attach init": syscall(101, 16, 1, 0, 0),
                "init_module": syscall(175, 0, 0, b""),
                "finit_module": syscall(313, -1, b"", 0),
                "delete_module": syscall(176, b"ext4", 0),
                "mount": syscall(165, b"none", b"/tmp", b"tmpfs", 0, 0),
                "umount": syscall(166, b"/workspace", 0),
                "chroot": syscall(161, b"/tmp"),
                "kexec_load": syscall(246, 0, 0, 0, 0),
                "bpf": syscall(321, 0, 0, 0),
                "keyctl": syscall(250, 0, 0, 0, 0, 0),
                "reboot": syscall(169, 0xfee1dead, 672274793, 0x4321fedc, 0),
                # Last: where it succeeds (inside gVisor) it would grant capabilities to what follows.
                "unshare mount": syscall(272, 0x00020000),
                "unshare user": syscall(272, 0x10000000),
            }
        """,
        os.getpid(),
    )
    if box.name == "gvisor":
        # gVisor's kernel lets a process make namespaces of its own; they are gVisor's, not the
        # host's (the host kernel never sees the call). Everything else is refused.
        del seen["unshare user"], seen["unshare mount"]
    assert "ok" not in seen.values(), seen
    if box.name == "bwrap":
        # The seccomp filter, not only missing privileges: every one is refused with EPERM.
        assert set(seen.values()) == {os.strerror(1)}, seen


# --- limit checks (every backend) ---------------------------------------------------------------


def check_fork_bomb_is_bounded(box: Box) -> None:
    limit = box.limit(
        """
        import os, time
        def main(_):
            children = 0
            for _ in range(5000):
                try:
                    if os.fork() == 0:
                        time.sleep(60)
                        os._exit(0)
                    children += 1
                except OSError:
                    time.sleep(0.01)
            return children
        """,
        processes=32,
    )
    assert limit == "processes"


def check_threads_count_as_processes(box: Box) -> None:
    """Threads are tasks: 2,000 of them (small stacks, so memory is not what stops them) stay within
    ``processes``, on gVisor too, whose host cgroup sees the sentry's threads, not the agent's."""
    source = """
        import threading, time
        def main(_):
            threading.stack_size(64 * 1024)
            release = threading.Event()
            started = 1  # this thread
            for _ in range(2000):
                try:
                    threading.Thread(target=release.wait, daemon=True).start()
                    started += 1
                except RuntimeError:
                    pass
            time.sleep(0.5)  # all held at once
            release.set()
            return started
        """
    sandbox, _, _ = box.start(source, processes=64)
    try:
        seen: Any = sandbox.call("run", {"entrypoint": "agent:main", "input": None}, handler=_no_requests)
    except LimitExceeded as exc:
        seen = exc.limit  # ended for it: as good as refused
    finally:
        sandbox.stop()
    assert seen == "processes" or seen <= 64, f"{seen} threads ran with processes=64"
    assert_nothing_left(box, sandbox)


def check_memory_past_the_limit(box: Box) -> None:
    assert box.limit("def main(_):\n    return len(bytearray(1 << 30))\n", memory_mib=128) == "memory"


def check_memory_across_processes(box: Box) -> None:
    if box.name == "process" and os.geteuid() != 0:
        pytest.skip("without root's cgroup the process backend limits memory per process only")
    source = """
        import os, time
        def main(_):
            for _ in range(4):
                if os.fork() == 0:
                    block = bytearray(90 << 20)
                    for i in range(0, len(block), 4096):
                        block[i] = 1
                    time.sleep(30)
                    os._exit(0)
            time.sleep(30)
        """
    assert box.limit(source, memory_mib=160, processes=16) == "memory"


def check_memory_files_count_against_the_memory_limit(box: Box) -> None:
    """Files in /dev/shm, /dev, /tmp and the workspace are memory on the isolating backends: all of
    it together, with the agent's own processes, stays within ``memory_mib``."""
    tag = f"bastion-fill-{os.getpid()}-{time.monotonic_ns()}"
    sandbox, _, logs = box.start(
        """
        import sys
        def main(tag):
            held = 0
            for path in ["/dev/shm/" + tag, "/dev/" + tag, "/tmp/" + tag, tag]:
                try:
                    with open(path, "wb") as f:
                        for _ in range(1024):
                            f.write(b"\\1" * (1 << 20))
                            f.flush()
                            held += 1
                            print("held", held, file=sys.stderr, flush=True)
                except OSError as exc:
                    print(path, "refused", type(exc).__name__, file=sys.stderr, flush=True)
            return held
        """,
        memory_mib=128,
        workspace_mib=256,
        file_bytes=1 << 30,
    )
    try:
        with pytest.raises(LimitExceeded) as raised:
            sandbox.call("run", {"entrypoint": "agent:main", "input": tag}, handler=_no_requests)
    finally:
        sandbox.stop()
        for leftover in (Path("/dev/shm") / tag, Path(tempfile.gettempdir()) / tag):
            leftover.unlink(missing_ok=True)  # the process backend writes the host's own
    held = max([int(line.split()[1]) for line in logs if line.startswith("held ")], default=0)
    assert raised.value.limit == "memory", (raised.value, logs[-3:])
    assert held <= 128, f"the agent held {held} MiB in files with memory_mib=128"
    if box.name != "process":
        assert any(line.startswith(f"/dev/{tag} refused") for line in logs), logs[-5:]
    assert_nothing_left(box, sandbox)


def check_cpu_past_the_limit(box: Box) -> None:
    assert box.limit("def main(_):\n    while True: pass\n", cpu_seconds=1) == "cpu"


def check_cpu_across_processes(box: Box) -> None:
    if box.name == "process" and os.geteuid() != 0:
        pytest.skip("without root's cgroup RLIMIT_CPU counts per process")
    source = """
        import os, signal
        def main(_):
            signal.signal(signal.SIGXCPU, signal.SIG_IGN)
            for _ in range(3):
                if os.fork() == 0:
                    signal.signal(signal.SIGXCPU, signal.SIG_IGN)
                    while True: pass
            while True: pass
        """
    assert box.limit(source, cpu_seconds=2, processes=16) == "cpu"


def check_wall_time(box: Box) -> None:
    assert box.limit("import time\ndef main(_):\n    time.sleep(60)\n", wall_seconds=1) == "wall_time"


def check_stdout_flood(box: Box) -> None:
    source = "def main(_):\n    while True: print('x' * 1000)\n"
    assert box.limit(source, log_bytes=256 * 1024) == "output"


def check_fill_the_workspace(box: Box) -> None:
    source = """
        import os
        def main(_):
            written = 0
            for n in range(200):
                try:
                    with open(f"fill-{n}.bin", "wb") as f:
                        f.write(b"x" * (1 << 20))
                    written += 1
                except OSError:
                    pass
            return written
        """
    assert box.limit(source, workspace_mib=16) == "workspace"


def check_nothing_left_after_stop(box: Box) -> None:
    marker = str(900_000 + os.getpid() % 1000)
    sandbox, _, _ = box.start(
        """
        import os, subprocess
        def main(marker):
            if os.fork() == 0:
                os.setsid()
                if os.fork() == 0:
                    os.execv("/bin/sleep", ["sleep", marker])
                os._exit(0)
            subprocess.Popen(["sleep", marker], start_new_session=True)
            return "left"
        """
    )
    assert sandbox.call("run", {"entrypoint": "agent:main", "input": marker}, handler=_no_requests) == "left"
    if box.name != "gvisor":  # gVisor's processes are not host processes
        until = time.monotonic() + 3
        while len(_processes_with(f"sleep\0{marker}")) < 2 and time.monotonic() < until:
            time.sleep(0.02)
        assert len(_processes_with(f"sleep\0{marker}")) == 2
    sandbox.stop()
    until = time.monotonic() + 3
    while _processes_with(f"sleep\0{marker}") and time.monotonic() < until:
        time.sleep(0.02)
    assert _processes_with(f"sleep\0{marker}") == []
    if cgroups_unavailable() is None:
        assert box.cgroups[id(sandbox)], "the sandbox's cgroups were not found: nothing would be checked"
    assert_nothing_left(box, sandbox)


ISOLATION: list[Callable[[Box], None]] = [
    check_no_tcp_or_udp_to_the_host_or_outside,
    check_no_dns,
    check_no_host_unix_socket,
    check_no_host_secrets_or_files,
    check_no_write_outside_the_workspace,
    check_no_escape_by_symlink_or_dotdot,
    check_copy_back_follows_link_chains,
    check_copy_back_stays_within_the_workspace_size,
    check_only_the_socket_families_an_agent_needs,
    check_no_host_paths_in_proc,
    check_no_host_processes,
    check_no_ptrace_modules_mounts_or_namespaces,
]
LIMITS: list[Callable[[Box], None]] = [
    check_fork_bomb_is_bounded,
    check_threads_count_as_processes,
    check_memory_past_the_limit,
    check_memory_across_processes,
    check_memory_files_count_against_the_memory_limit,
    check_cpu_past_the_limit,
    check_cpu_across_processes,
    check_wall_time,
    check_stdout_flood,
    check_fill_the_workspace,
    check_nothing_left_after_stop,
]


@pytest.mark.parametrize("box", [name for name in BACKENDS if name != "process"], indirect=True)
@pytest.mark.parametrize("check", ISOLATION, ids=lambda check: check.__name__)
def test_isolation(box: Box, check: Callable[[Box], None]) -> None:
    """Not on ``process``: it does not isolate (development only) and does not claim to."""
    check(box)


@pytest.mark.parametrize("check", LIMITS, ids=lambda check: check.__name__)
def test_limits(box: Box, check: Callable[[Box], None]) -> None:
    check(box)


def test_an_unknown_backend_is_refused_with_the_choices(tmp_path: Path) -> None:
    with pytest.raises(SandboxError, match="choose one of process, bwrap, gvisor"):
        open_backend("docker", state_dir=tmp_path)
