"""Nothing is left behind: a stopped sandbox's tmpfs, `bastion up` stopped by SIGTERM, `bastion serve`."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from bastion.client import BastionClient
from bastion.control import Settings
from bastion.execution.sandbox import probe_backend
from bastion.execution.sandbox._cgroup import unavailable as cgroups_unavailable
from bastion.execution.sandbox._workspace import Workspace, is_mountpoint

from ._agents import code_agent
from ._docs import raw
from .conftest import _unavailable  # pyright: ignore[reportPrivateUsage]


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_a_workspace_whose_host_directory_was_removed_still_unmounts(tmp_path: Path) -> None:
    """A zombie's sandbox stops after its successor removed the zombie's attempt directory: the
    copy back fails, and the tmpfs must be unmounted anyway."""
    source = tmp_path / "attempt-1"
    source.mkdir()
    (source / "notes.txt").write_text("kept")
    mountpoint = tmp_path / "live"
    workspace = Workspace(source, mountpoint, size=1 << 20, uid=os.getuid(), gid=os.getgid())
    try:
        assert is_mountpoint(mountpoint)
        (mountpoint / "more.txt").write_text("written by the agent")
        shutil.rmtree(source)  # the successor's fresh start
        with pytest.raises(OSError):
            workspace.close()
        assert not is_mountpoint(mountpoint), "the tmpfs outlived its workspace"
        assert not mountpoint.exists()
    finally:
        if is_mountpoint(mountpoint):
            subprocess.run(["umount", "-l", str(mountpoint)], check=False)  # a failed test only


# --- bastion up and bastion serve, stopped by SIGTERM --------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start(home: Path, command: str, **env: str) -> tuple[subprocess.Popen[str], int]:
    port = _free_port()
    environment = {k: v for k, v in os.environ.items() if not k.startswith("BASTION_")}
    environment.update(BASTION_HOME=str(home), **env)
    process = subprocess.Popen(
        [sys.executable, "-c", "from bastion.cli import main; main()", command, "--port", str(port)],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"bastion {command} exited: {process.communicate()[0]}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return process, port
        time.sleep(0.1)
    process.kill()
    raise AssertionError(f"bastion {command} did not become ready:\n{process.communicate()[0]}")


def _mounts_under(path: Path) -> list[str]:
    return [
        line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines() if str(path) in line
    ]


def _descendants(pid: int) -> set[int]:
    children: dict[int, set[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(parent, set()).add(int(entry.name))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), set()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _alive(pids: set[int]) -> set[int]:
    alive: set[int] = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
            if state != "Z":
                alive.add(pid)
    return alive


def _cgroups_named(names: set[str]) -> dict[Path, int]:
    found: dict[Path, int] = {}
    for name in names:
        for path in Path("/sys/fs/cgroup").glob(f"*/bastion/{name}"):
            with contextlib.suppress(FileNotFoundError):
                found[path] = path.stat().st_ino
    return found


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="bwrap sandboxes with mounts and cgroups need root")
def test_bastion_up_stopped_by_sigterm_stops_its_worker_and_leaves_nothing(tmp_path: Path) -> None:
    """uvicorn re-raised SIGTERM under the default handler once it had stopped, so `bastion up`
    died (exit 143) before stopping its worker: the warm sandboxes' processes, tmpfs mounts and
    cgroups stayed. SIGTERM must stop everything and exit 0."""
    home = tmp_path / "home"
    state = Settings(home=home, sandbox="bwrap").sandbox_state_dir
    report = probe_backend("bwrap", state_dir=state)
    if not report.works:
        _unavailable(f"bwrap: {report.detail}")
    process, _ = _start(home, "up", BASTION_SANDBOX="bwrap", BASTION_POOL_SIZE="2")
    try:
        deadline = time.monotonic() + 60
        while len(_mounts_under(state)) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        mounts = _mounts_under(state)
        assert len(mounts) >= 2, "the warm pool did not start its sandboxes"
        cgroups = _cgroups_named({Path(m).name for m in mounts})
        if cgroups_unavailable() is None:
            assert cgroups, "the warm sandboxes have no cgroups: nothing would be checked"
        children = _descendants(process.pid)
        assert children, "the warm sandboxes have no processes"
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, output
    assert "Bastion stopped." in output
    assert _alive(children) == set()
    assert _mounts_under(state) == []
    assert [p for p, inode in cgroups.items() if p.exists() and p.stat().st_ino == inode] == []


@pytest.mark.slow
def test_bastion_serve_serves_the_api_and_runs_nothing(tmp_path: Path) -> None:
    """`bastion serve` is the API alone: a run it accepts waits for a `bastion worker`."""
    home = tmp_path / "home"
    process, port = _start(home, "serve", BASTION_SANDBOX="process")
    try:
        key = str(json.loads((home / "credentials.json").read_text())["apiKey"])
        with BastionClient(f"http://127.0.0.1:{port}", key) as client:
            source = "def main(input):\n    return input\n"
            client.apply(raw(code_agent("echo", source, tools=[])))
            run = client.create_run("echo", {"x": 1})
            time.sleep(1.5)
            assert client.get_run(str(run["id"]))["state"] == "Scheduled"
        assert _descendants(process.pid) == set(), "bastion serve started something"
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, output
    assert "No worker in this process" in output
