"""The CLI against a live server, and `bastion up` end to end as a user runs it."""

from __future__ import annotations

import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from bastion.cli import app

from .conftest import Tenant

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
runner = CliRunner()


def cli(tenant: Tenant, *args: str, key: str | None = None) -> tuple[int, str]:
    env = {"BASTION_URL": tenant.server.url, "BASTION_API_KEY": key or tenant.admin_key}
    result = runner.invoke(app, list(args), env=env)
    return result.exit_code, result.output


def test_apply_get_describe_delete_round_trip(tenant: Tenant) -> None:
    code, out = cli(tenant, "apply", "-f", str(EXAMPLES))
    assert code == 0, out
    assert "agent/support-bot created" in out
    code, out = cli(tenant, "apply", "-f", str(EXAMPLES))
    assert "agent/support-bot unchanged" in out
    code, out = cli(tenant, "get", "agents")
    assert code == 0 and "support-bot" in out and "report-writer" in out
    code, out = cli(tenant, "get", "agent", "support-bot", "-o", "yaml")
    assert "instructions:" in out
    code, out = cli(tenant, "get", "secrets", "-o", "json")
    assert "[REDACTED]" in out and "demo-kb-token" not in out
    code, out = cli(tenant, "get", "agents", "-l", "team=analytics")
    assert "report-writer" in out and "support-bot" not in out
    code, out = cli(tenant, "describe", "agent", "support-bot")
    assert "Generation:" in out and "Accepted=True" in out
    code, out = cli(tenant, "delete", "agent", "report-writer")
    assert code == 0 and "deleted" in out
    code, out = cli(tenant, "get", "agent", "report-writer")
    assert code == 1 and "not found" in out


def test_diff_exits_1_when_something_would_change(tenant: Tenant, tmp_path: Path) -> None:
    cli(tenant, "apply", "-f", str(EXAMPLES))
    code, out = cli(tenant, "diff", "-f", str(EXAMPLES))
    assert code == 0 and "would" not in out
    changed = tmp_path / "agent.yaml"
    text = (EXAMPLES / "agents.yaml").read_text().replace("maxTurns: 8", "maxTurns: 12")
    changed.write_text(text)
    code, out = cli(tenant, "diff", "-f", str(changed))
    assert code == 1
    assert "replace /spec/maxTurns 12" in out


def test_validation_errors_name_file_document_field_and_fix(tenant: Tenant, tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(
        "apiVersion: bastion/v1\nkind: Agent\nmetadata: {name: ok}\nspec: {runtime: python, entrypoint: 'a:b'}\n"
        "---\napiVersion: bastion/v1\nkind: Agent\nmetadata: {name: bad}\nspec: {runtime: python, entrypoint: 'a:b', tier: T7}\n"
    )
    code, out = cli(tenant, "apply", "-f", str(tmp_path))
    assert code == 1
    assert f"{tmp_path / 'a.yaml'}, document 2: spec.tier" in out
    assert "hint: use one of" in out
    assert "Traceback" not in out
    code, out = cli(tenant, "get", "agents")
    assert "No agents found" in out


def test_malformed_yaml_and_missing_files_are_clear(tenant: Tenant, tmp_path: Path) -> None:
    (tmp_path / "broken.yaml").write_text("kind: Agent\nmetadata: {name: [\n")
    code, out = cli(tenant, "apply", "-f", str(tmp_path / "broken.yaml"))
    assert code == 1 and "not valid YAML at line" in out
    code, out = cli(tenant, "apply", "-f", str(tmp_path / "nope.yaml"))
    assert code == 1 and "does not exist" in out
    code, out = cli(tenant, "get", "robots")
    assert code == 1 and "unknown kind 'robots'" in out


def test_explain_works_offline() -> None:
    result = runner.invoke(app, ["explain", "Agent.spec.limits"])
    assert result.exit_code == 0
    assert "cpuSeconds" in result.output and "CPU time" in result.output
    result = runner.invoke(app, ["explain", "Agent.spec.nope"])
    assert result.exit_code == 1 and "no field" in result.output
    result = runner.invoke(app, ["explain", "ToolGrant", "-o", "json"])
    assert '"subjects"' in result.output


def test_keys_tenants_and_namespaces_commands(tenant: Tenant) -> None:
    code, out = cli(tenant, "keys", "create", "ci-bot", "--role", "viewer")
    assert code == 0
    token = re.search(r"bst_\S+", out)
    assert token is not None
    code, out = cli(tenant, "keys", "list")
    assert "ci-bot" in out and token.group(0) not in out
    code, out = cli(tenant, "apply", "-f", str(EXAMPLES), key=token.group(0))
    assert code == 1 and "may not write" in out
    key_id = re.search(r"key (\S+) \(viewer\)", cli(tenant, "keys", "create", "temp", "--role", "viewer")[1])
    assert key_id is not None
    assert cli(tenant, "keys", "revoke", key_id.group(1))[0] == 0
    assert cli(tenant, "namespaces", "create", "team-x")[0] == 0
    code, out = cli(tenant, "namespaces", "list")
    assert "team-x" in out
    code, out = cli(tenant, "tenants", "list")
    assert code == 1 and "no such endpoint" in out
    code, out = cli(tenant, "tenants", "list", key=tenant.server.admin_key)
    assert code == 0 and tenant.name in out


def test_no_server_is_a_clear_message(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["get", "agents"], env={"BASTION_URL": "http://127.0.0.1:9", "BASTION_API_KEY": "bst_x_y"}
    )
    assert result.exit_code == 1
    assert "cannot reach the Bastion server" in result.output


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def bastion_up(tmp_path: Path) -> Iterator[tuple[dict[str, str], subprocess.Popen[str], int]]:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BASTION_")}
    env["BASTION_HOME"] = str(tmp_path / "home")
    command = [sys.executable, "-c", "from bastion.cli import main; main()", "up", "--port", str(port)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait_ready(port, process)
        yield env, process, port
    finally:
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=15)


def _wait_ready(port: int, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"bastion up exited: {process.stdout.read() if process.stdout else ''}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError("bastion up did not become ready")


def _bastion(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-c", "from bastion.cli import main; main()", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.slow
def test_bastion_up_then_apply_examples_then_get_agents(
    bastion_up: tuple[dict[str, str], subprocess.Popen[str], int], tmp_path: Path
) -> None:
    env, _process, _port = bastion_up
    home = Path(env["BASTION_HOME"])
    assert stat.S_IMODE((home / "master.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((home / "credentials.json").stat().st_mode) == 0o600
    applied = _bastion(env, "apply", "-f", str(EXAMPLES))
    assert applied.returncode == 0, applied.stderr
    assert "agent/support-bot created" in applied.stdout
    listed = _bastion(env, "get", "agents")
    assert listed.returncode == 0
    assert "support-bot" in listed.stdout and "report-writer" in listed.stdout
    db = home / "bastion.db"
    assert db.exists() and (home / "bastion.db-wal").exists()
    assert b"demo-kb-token-not-a-real-secret" not in db.read_bytes() + (home / "bastion.db-wal").read_bytes()


@pytest.mark.slow
def test_bastion_up_prints_the_admin_key_once(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BASTION_")}
    env["BASTION_HOME"] = str(tmp_path / "home")
    outputs: list[str] = []
    for _ in range(2):
        port = _free_port()
        command = [sys.executable, "-c", "from bastion.cli import main; main()", "up", "--port", str(port)]
        process = subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        _wait_ready(port, process)
        process.send_signal(signal.SIGINT)
        out, _ = process.communicate(timeout=15)
        assert process.returncode == 0, out
        outputs.append(out)
    assert len(re.findall(r"bst_\S+", outputs[0])) == 1
    assert re.findall(r"bst_\S+", outputs[1]) == []
    assert "Bastion stopped." in outputs[1]
