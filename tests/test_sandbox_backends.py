"""What every backend shares beyond the conformance suite: the workspace model (a warm sandbox's
directory renamed and filled after start, the host's view after stop), images, selection and
diagnosis, the seccomp program, and the bwrap backend's privilege drop and crash cleanup."""

from __future__ import annotations

import os
import re
import struct
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bastion.errors import SandboxError
from bastion.execution.sandbox import (
    BACKENDS,
    BackendReport,
    Image,
    SandboxBackend,
    SandboxSpec,
    _seccomp,  # pyright: ignore[reportPrivateUsage]
    default_backend,
    open_backend,
    probe_backend,
    probe_backends,
)
from bastion.execution.sandbox._sdk import remove_tree  # pyright: ignore[reportPrivateUsage]

from .conftest import _unavailable


def _no_requests(method: str, params: dict[str, Any]) -> Any:
    raise AssertionError(f"unexpected request {method}")


_ROOT = Path(tempfile.mkdtemp(prefix="bastion-backends-"))
_ROOT.chmod(0o711)


@pytest.fixture(scope="module", autouse=True)
def _remove_state_dirs() -> Iterator[None]:
    """State directories live outside tmp_path (its parents are not o+x); removed at the end."""
    yield
    remove_tree(_ROOT)


def _state_dir() -> Path:
    state = Path(tempfile.mkdtemp(dir=_ROOT))
    state.chmod(0o711)
    return state


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> Iterator[SandboxBackend]:
    state = _state_dir()
    report = probe_backend(request.param, state_dir=state)
    if not report.works:
        _unavailable(f"the {request.param} sandbox backend does not work here: {report.detail}")
    opened = open_backend(request.param, state_dir=state)
    yield opened
    opened.close()


def test_a_warm_sandbox_takes_its_agent_after_its_directory_is_renamed(
    backend: SandboxBackend, tmp_path: Path
) -> None:
    pool_dir = tmp_path / "pool-slot"
    pool_dir.mkdir(mode=0o700)
    sandbox = backend.start(SandboxSpec(workspace=pool_dir), on_log=print)
    try:
        time.sleep(0.2)  # the interpreter has started and imported the runner meanwhile
        run_dir = tmp_path / "run-42"
        pool_dir.rename(run_dir)
        (run_dir / "agent.py").write_text("import helper\ndef main(x):\n    return helper.double(x)\n")
        (run_dir / "helper.py").write_text("def double(x):\n    return 2 * x\n")
        params = {"entrypoint": "agent:main", "input": 21}
        assert sandbox.call("run", params, handler=_no_requests) == 42
    finally:
        sandbox.stop()


def test_the_host_sees_the_workspace_after_stop_and_its_changes_before_each_call(
    backend: SandboxBackend, tmp_path: Path
) -> None:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    (workspace / "agent.py").write_text(
        textwrap.dedent("""
        import os
        def main(name):
            os.makedirs("out", exist_ok=True)
            with open("out/result.txt", "w") as f:
                f.write(open(name).read().upper())
            os.mkfifo("a-fifo")
            os.symlink("out/result.txt", "a-link")
            os.symlink("/etc/passwd", "host-link")
            return sorted(os.listdir("."))
        """)
    )
    sandbox = backend.start(SandboxSpec(workspace=workspace), on_log=print)
    try:
        (workspace / "input.txt").write_text("from the host")
        seen = sandbox.call("run", {"entrypoint": "agent:main", "input": "input.txt"}, handler=_no_requests)
        assert "input.txt" in seen
    finally:
        sandbox.stop()
    assert (workspace / "out" / "result.txt").read_text() == "FROM THE HOST"
    assert (workspace / "a-link").is_symlink()
    assert (workspace / "a-link").read_text() == "FROM THE HOST"
    if backend.name != "process":
        # Copied back: not the FIFO (a host read of it would block), not a link out of the workspace.
        assert not (workspace / "a-fifo").exists()
        assert not (workspace / "host-link").is_symlink()


def test_an_image_puts_its_packages_between_the_sdk_and_the_workspace(
    backend: SandboxBackend, tmp_path: Path
) -> None:
    # Images live where the sandbox's unprivileged uid can traverse to them (o+x all the way).
    image_dir = Path(tempfile.mkdtemp(dir=_ROOT))
    packages = image_dir / "site-packages"
    packages.mkdir(parents=True)
    (packages / "imagepkg.py").write_text("WHERE = 'image'\n")
    for path in (image_dir, packages):
        path.chmod(0o755)
    (packages / "imagepkg.py").chmod(0o644)
    interpreter = Path("/usr/bin/python3") if backend.name != "process" else Path(sys.executable)
    image = Image(name="python3", digest="0" * 64, interpreter=interpreter, site_packages=packages)
    workspace = tmp_path / "ws"
    workspace.mkdir()
    (workspace / "imagepkg.py").write_text("WHERE = 'workspace'\n")
    (workspace / "agent.py").write_text(
        "import sys, imagepkg\ndef main(_):\n    return [imagepkg.WHERE, sys.path, sys.executable]\n"
    )
    sandbox = backend.start(SandboxSpec(workspace=workspace, image=image), on_log=print)
    try:
        where, path, executable = sandbox.call(
            "run", {"entrypoint": "agent:main", "input": None}, handler=_no_requests
        )
    finally:
        sandbox.stop()
    assert where == "image"
    # The cwd, not its path; as root the process backend's leased uid may not traverse the
    # workspace's parents, so it is named through /proc.
    assert path[-1] == ("/proc/self/cwd" if backend.name == "process" and os.geteuid() == 0 else ".")
    assert path.index(next(p for p in path if p.endswith(("site-packages", "packages")))) == 1
    assert not [p for p in path if "dist-packages" in p]
    assert Path(executable).resolve() == interpreter.resolve()


def test_probe_reports_every_backend_and_the_default_prefers_bwrap() -> None:
    reports = probe_backends(state_dir=_state_dir())
    assert [report.name for report in reports] == list(BACKENDS)
    for report in reports:
        assert report.detail
        assert report.works or report.fix
    process = next(report for report in reports if report.name == "process")
    assert process.works, process.detail
    bwrap = next(report for report in reports if report.name == "bwrap")
    if bwrap.works or os.geteuid() != 0:
        assert default_backend(reports) == ("bwrap" if bwrap.works else "process")
    else:
        with pytest.raises(SandboxError):
            assert default_backend(reports) == "gvisor"


def test_default_backend_is_bwrap_only_when_its_probe_worked() -> None:
    def reports(*working: str) -> list[BackendReport]:
        return [BackendReport(name=n, works=n in working, detail="x", fix=None) for n in BACKENDS]

    for root in (False, True):
        assert default_backend(reports("process", "bwrap", "gvisor"), root=root) == "bwrap"
    assert default_backend(reports("process", "gvisor"), root=False) == "process"
    assert default_backend(reports(), root=False) == "process"


def test_auto_never_falls_back_to_process_as_root() -> None:
    def reports(*working: str) -> list[BackendReport]:
        return [BackendReport(name=n, works=n in working, detail=f"{n} probe", fix=None) for n in BACKENDS]

    assert default_backend(reports("process", "gvisor"), root=True) == "gvisor"
    for working in (("process",), ()):
        with pytest.raises(SandboxError) as raised:
            default_backend(reports(*working), root=True)
        assert "never process" in raised.value.detail and "BASTION_SANDBOX=process" in raised.value.detail
        assert "bwrap probe" in raised.value.detail


def test_a_state_dir_the_sandbox_cannot_reach_is_refused_with_the_fix(tmp_path: Path) -> None:
    if os.geteuid() != 0 or not Path("/usr/bin/bwrap").exists():
        _unavailable("needs root and bubblewrap")
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    with pytest.raises(SandboxError, match=r"cannot be traversed by other users.*run `chmod o\+x "):
        open_backend("bwrap", state_dir=private / "state")


def test_an_image_the_sandbox_cannot_reach_is_refused_with_the_fix(bwrap_state: Path, tmp_path: Path) -> None:
    private = tmp_path / "private-image"
    (private / "site-packages").mkdir(parents=True, mode=0o700)
    image = Image(
        name="python3",
        digest="1" * 64,
        interpreter=Path("/usr/bin/python3"),
        site_packages=private / "site-packages",
    )
    backend = open_backend("bwrap", state_dir=bwrap_state)
    try:
        with pytest.raises(SandboxError, match=r"image.*cannot be traversed.*chmod o\+x"):
            backend.start(SandboxSpec(workspace=tmp_path, image=image), on_log=print)
    finally:
        backend.close()
    assert list((bwrap_state / "bwrap" / "ws").iterdir()) == []


def test_the_seccomp_numbers_match_this_kernels_headers() -> None:
    header = Path("/usr/include/x86_64-linux-gnu/asm/unistd_64.h")
    if not header.exists():
        pytest.skip("the x86_64 kernel headers are not installed (linux-libc-dev)")
    numbers = {
        m.group(1): int(m.group(2)) for m in re.finditer(r"#define __NR_(\w+) (\d+)", header.read_text())
    }
    for name, number in _seccomp.BLOCKED.items():
        assert numbers[name] == number, name


def _run_filter(program: bytes, *, arch: int = 0xC000003E, nr: int, arg0: int = 0) -> int:
    """What the kernel would decide: a minimal interpreter of the classic BPF the filter uses."""
    data = struct.pack("=iIQ6Q", nr, arch, 0, arg0, 0, 0, 0, 0, 0)
    instructions = [struct.unpack("=HBBI", program[i : i + 8]) for i in range(0, len(program), 8)]
    pc, accumulator = 0, 0
    while True:
        code, true, false, k = instructions[pc]
        if code == 0x20:  # ld w abs
            accumulator = struct.unpack_from("=I", data, k)[0]
        elif code in (0x15, 0x35):  # jeq, jge
            taken = accumulator == k if code == 0x15 else accumulator >= k
            pc += true if taken else false
        elif code == 0x06:  # ret
            return k
        else:
            raise AssertionError(f"unexpected BPF instruction {code:#x}")
        pc += 1


def test_the_seccomp_program_checks_the_architecture_denies_blocked_calls_and_socket_families() -> None:
    program = _seccomp.program()
    allow, kill, eperm, eafnosupport = 0x7FFF0000, 0x80000000, 0x00050000 | 1, 0x00050000 | 97
    for number in _seccomp.BLOCKED.values():
        assert _run_filter(program, nr=number) == eperm
    for number in (0, 1, 2, 57, 59, 60, 231):  # read, write, open, fork, execve, exit, exit_group
        assert _run_filter(program, nr=number) == allow
    assert _run_filter(program, nr=0x40000000 | 1) == kill  # x32
    assert _run_filter(program, arch=0x40000003, nr=1) == kill  # i386
    for socket_call in (41, 53):
        for family in (1, 2, 10):
            assert _run_filter(program, nr=socket_call, arg0=family) == allow
        for family in (0, 3, 9, 16, 17, 38, 40, 4096, (1 << 32) | 40):
            assert _run_filter(program, nr=socket_call, arg0=family) == eafnosupport, family


@pytest.fixture
def bwrap_state() -> Path:
    if os.geteuid() != 0:
        _unavailable("the bwrap privilege drop is tested as root, the way production runs it")
    state = _state_dir()
    report = probe_backend("bwrap", state_dir=state)
    if not report.works:
        _unavailable(f"the bwrap sandbox backend does not work here: {report.detail}")
    return state


def test_bwrap_is_never_running_as_root(bwrap_state: Path, tmp_path: Path) -> None:
    (tmp_path / "agent.py").write_text("import os, time\ndef main(_):\n    return os.getuid()\n")
    backend = open_backend("bwrap", state_dir=bwrap_state)
    sandbox = backend.start(SandboxSpec(workspace=tmp_path), on_log=print)
    try:
        inside = sandbox.call("run", {"entrypoint": "agent:main", "input": None}, handler=_no_requests)
        pid = sandbox.status().pid
        status = Path(f"/proc/{pid}/status").read_text()
    finally:
        sandbox.stop()
        backend.close()
    uids = re.search(r"^Uid:\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)", status, re.M)
    groups = re.search(r"^Groups:(.*)$", status, re.M)
    assert uids is not None and groups is not None
    assert {int(uid) for uid in uids.groups()} == {inside}
    assert inside != 0
    assert groups.group(1).strip() == ""


def test_bwrap_cleans_what_a_killed_worker_left(bwrap_state: Path, tmp_path: Path) -> None:
    (tmp_path / "agent.py").write_text("def main(_):\n    return 1\n")
    worker = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from bastion.execution.sandbox import open_backend, SandboxSpec
        backend = open_backend("bwrap", state_dir=Path({str(bwrap_state)!r}))
        sandbox = backend.start(SandboxSpec(workspace=Path({str(tmp_path)!r})), on_log=print)
        print(sandbox.status().pid, flush=True)
        time.sleep(60)
    """)
    process = subprocess.Popen([sys.executable, "-c", worker], stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    line = process.stdout.readline()
    assert line.strip().isdigit(), line
    mounts = list((bwrap_state / "bwrap" / "ws").iterdir())
    assert len(mounts) == 1
    process.kill()
    process.wait()
    process.stdout.close()
    leftover = mounts[0].name
    assert os.path.ismount(mounts[0])  # a SIGKILL'd worker cleans nothing itself
    # The next backend opened on the state directory removes the mount and the cgroup.
    backend = open_backend("bwrap", state_dir=bwrap_state)
    assert not (bwrap_state / "bwrap" / "ws" / leftover).exists()
    done = threading.Event()
    sandbox = backend.start(SandboxSpec(workspace=tmp_path), on_log=print)
    try:
        assert sandbox.call("run", {"entrypoint": "agent:main", "input": None}, handler=_no_requests) == 1
        done.set()
    finally:
        sandbox.stop()
        backend.close()
    assert done.is_set()
    assert not (bwrap_state / "bwrap" / "ws" / leftover).exists()
    assert not list(Path("/sys/fs/cgroup/pids/bastion").glob(leftover))


def test_process_as_root_runs_agent_code_under_a_leased_uid_without_privilege(tmp_path: Path) -> None:
    """The process backend does not isolate, but as root it never hands the agent root: two agents
    of two tenants, with the same file names, each under its own uid, with no capability, unable to
    mount (even through the setuid mount binary), to write root's files or to signal root's
    processes; their workspaces come back to root when they stop. The targets are the test's own
    (root-owned, reachable) so that the old code, where all of it succeeded, harmed nothing else."""
    if os.geteuid() != 0:
        _unavailable("the process backend's privilege drop is tested as root, the way a worker runs")
    state = _state_dir()
    target = state / "root-owned"
    target.mkdir(mode=0o755)
    source = textwrap.dedent("""
        import ctypes, os, subprocess, time
        libc = ctypes.CDLL(None, use_errno=True)
        def attempt(do):
            try:
                do()
                return "done"
            except (OSError, subprocess.SubprocessError) as exc:
                return "refused: " + type(exc).__name__
        def mount_syscall(target):
            if libc.mount(b"none", target.encode(), b"tmpfs", 0, None) != 0:
                raise OSError(ctypes.get_errno(), "mount")
        def mount_binary(target):
            done = subprocess.run(["/bin/mount", "-t", "tmpfs", "none", target], capture_output=True, timeout=10)
            if done.returncode != 0:
                raise OSError("mount failed")
        def main(args):
            target, pid, marker = args["target"], args["pid"], args["marker"]
            status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines())
            with open("secret.txt", "w") as f:
                f.write(marker)  # the same name in both tenants' workspaces
            time.sleep(0.5)  # both agents alive at once
            return {
                "ids": [os.getuid(), os.geteuid(), os.getgid(), os.getegid(), os.getgroups()],
                "caps": [status[k].strip() for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")],
                "nnp": status["NoNewPrivs"].strip(),
                "mount syscall": attempt(lambda: mount_syscall(target)),
                "mount binary": attempt(lambda: mount_binary(target)),
                "write root's directory": attempt(lambda: open(target + "/escape", "w").write("x")),
                "read /etc/shadow": attempt(lambda: open("/etc/shadow").read()),
                "signal root's process": attempt(lambda: os.kill(pid, 0)),
                "chown": attempt(lambda: os.chown("secret.txt", 0, 0)),
                "setuid 0": attempt(lambda: os.setuid(0)),
                "workspace owner": os.stat(".").st_uid,
            }
    """)
    backend = open_backend("process", state_dir=state)
    workspaces = [tmp_path / "tenant-a" / "ws", tmp_path / "tenant-b" / "ws"]
    results: dict[int, Any] = {}
    sleeper = subprocess.Popen(["sleep", "60"])  # a root process of the host's
    try:
        sandboxes = []
        for workspace in workspaces:
            (workspace / "pkg").mkdir(parents=True)
            (workspace / "agent.py").write_text(source)
            sandboxes.append(backend.start(SandboxSpec(workspace=workspace), on_log=print))

        def run(index: int) -> None:
            args = {"target": str(target), "pid": sleeper.pid, "marker": f"tenant-{index}"}
            results[index] = sandboxes[index].call(
                "run", {"entrypoint": "agent:main", "input": args}, handler=_no_requests
            )

        threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for sandbox in sandboxes:
            sandbox.stop()
    finally:
        backend.close()
        sleeper.kill()
        sleeper.wait()
        while os.path.ismount(target):  # only if the agent could mount: undo it, then fail below
            subprocess.run(["umount", "-l", str(target)], check=False)
    assert sorted(results) == [0, 1], results
    uids = {results[i]["ids"][0] for i in range(2)}
    assert len(uids) == 2 and 0 not in uids, results
    for index, seen in results.items():
        uid = seen["ids"][0]
        assert seen["ids"] == [uid, uid, uid, uid, []], seen
        assert seen["caps"] == ["0000000000000000"] * 5, seen
        assert seen["nnp"] == "1"
        assert seen["workspace owner"] == uid
        for key in (
            "mount syscall",
            "mount binary",
            "write root's directory",
            "read /etc/shadow",
            "signal root's process",
            "chown",
            "setuid 0",
        ):
            assert seen[key].startswith("refused"), (key, seen[key])
        workspace = workspaces[index]
        assert (workspace / "secret.txt").read_text() == f"tenant-{index}"
        for path in [workspace, *workspace.rglob("*")]:
            info = path.lstat()
            assert (info.st_uid, info.st_gid) == (0, 0), path
    assert list(target.iterdir()) == []
