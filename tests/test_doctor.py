"""`bastion doctor` and the warnings about the unisolated `process` backend."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from bastion.cli import app
from bastion.control import Settings
from bastion.execution.sandbox import BACKENDS, default_backend, probe_backends

runner = CliRunner()


def doctor(tmp_path: Path, sandbox: str, **env: str) -> tuple[int, str]:
    variables = {"BASTION_HOME": str(tmp_path), "BASTION_SANDBOX": sandbox, **env}
    result = runner.invoke(app, ["doctor"], env=variables)
    return result.exit_code, result.output


def test_doctor_reports_every_backend_and_the_default(tmp_path: Path) -> None:
    reports = probe_backends(state_dir=Settings(home=tmp_path).sandbox_state_dir)
    code, out = doctor(tmp_path, "auto")
    assert code == 0, out
    for report in reports:
        line = next(line for line in out.splitlines() if line.strip().startswith(report.name))
        assert ("yes" if report.works else "no") in line
        if not report.works:
            assert report.fix and report.fix.split()[0] in out, "each broken backend says how to fix it"
    chosen = default_backend(reports)
    assert f"Default backend: {chosen} (auto" in out
    assert "Image base python3.11: /usr/bin/python3.11 found" in out
    assert ("WARNING" in out) == (chosen == "process")
    assert {r.name for r in reports} == set(BACKENDS)


def test_doctor_warns_loudly_on_process_and_exits_0(tmp_path: Path) -> None:
    code, out = doctor(tmp_path, "process")
    assert code == 0, out
    assert "Default backend: process (BASTION_SANDBOX)" in out
    assert "WARNING" in out and "without isolation" in out


def test_doctor_exits_1_when_the_configured_default_cannot_work(tmp_path: Path) -> None:
    # bwrap's unprivileged uids cannot traverse a 0700 parent: a state directory under one is broken.
    if os.geteuid() != 0:
        pytest.skip("the sandboxes drop to unprivileged uids only when the worker runs as root")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o700)
    code, out = doctor(tmp_path, "bwrap", BASTION_SANDBOX_DIR=str(locked / "sandbox"))
    assert code == 1, out
    assert "The default backend 'bwrap' does not work on this machine." in out
    assert "chmod o+x" in out


def test_doctor_names_a_bad_setting(tmp_path: Path) -> None:
    code, out = doctor(tmp_path, "docker")
    assert code == 1
    assert "setting 'sandbox'" in out and "BASTION_SANDBOX" in out
    assert "Traceback" not in out


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_bastion_up_warns_loudly_when_the_default_is_process(tmp_path: Path) -> None:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BASTION_")}
    env.update(BASTION_HOME=str(tmp_path / "home"), BASTION_SANDBOX="process")
    command = [sys.executable, "-c", "from bastion.cli import main; main()", "up", "--port", str(port)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and process.poll() is None:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
    finally:
        process.send_signal(signal.SIGINT)
        out, _ = process.communicate(timeout=30)
    assert "Sandbox: process by default" in out, out
    assert "WARNING" in out and "without isolation" in out
    assert process.returncode == 0, out
    # Its warm sandboxes were stopped and their directories removed.
    assert not list((tmp_path / "home" / "workspaces" / ".pool").glob("*"))
