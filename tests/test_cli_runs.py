"""The run commands of the CLI, and `bastion demo` end to end as the README's first command runs it."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bastion.cli import app

from ._agents import builtin_tool, code_agent, grant_for, wait_finished
from ._docs import raw
from .conftest import Tenant

REPO = Path(__file__).resolve().parent.parent
runner = CliRunner()

AGENT = """
from bastion import agent

def main(input):
    agent.log("working on", input["task"])
    agent.tools.call("fs.write", path="out.txt", content=input["task"])
    try:
        agent.tools.call("fs.read", path="out.txt")
    except agent.ToolDenied:
        agent.log("no reading for me")
    return {"done": input["task"]}
"""


def cli(tenant: Tenant, *args: str) -> tuple[int, str]:
    result = runner.invoke(
        app, list(args), env={"BASTION_URL": tenant.server.url, "BASTION_API_KEY": tenant.admin_key}
    )
    return result.exit_code, result.output


@pytest.fixture
def worker_agent(tenant: Tenant) -> Tenant:
    with tenant.client() as client:
        client.apply(
            raw(
                builtin_tool("fs.write"),
                builtin_tool("fs.read"),
                code_agent("writer", AGENT, tools=["fs.write", "fs.read"]),
                grant_for("writer", "fs.write"),
            )
        )
    return tenant


def test_run_follow_shows_states_calls_decisions_logs_and_result(worker_agent: Tenant) -> None:
    code, out = cli(worker_agent, "run", "writer", "--input", '{"task": "tidy up"}', "--follow")
    assert code == 0, out
    for expected in (
        "Scheduled",
        "Running",
        "Succeeded",
        "fs.write",
        "allow",
        "fs.read",
        "deny",
        "default deny",
        "working on tidy up",
        '"done": "tidy up"',
    ):
        assert expected in out, expected
    run_id = re.search(r"run (\S+) created", out)
    assert run_id is not None
    code, out = cli(worker_agent, "runs")
    assert run_id.group(1) in out and "Succeeded" in out
    code, out = cli(worker_agent, "logs", run_id.group(1))
    assert "no reading for me" in out
    code, out = cli(worker_agent, "audit", "verify", run_id.group(1))
    assert code == 0 and "ok" in out and "1 of 1 journals verified" in out
    code, out = cli(worker_agent, "audit", "verify")
    assert code == 0 and "journals verified" in out


def test_run_with_bad_input_or_unknown_agent_is_a_clear_message(worker_agent: Tenant) -> None:
    code, out = cli(worker_agent, "run", "writer", "--input", "{task: oops")
    assert code == 1 and "--input is not JSON" in out and "Traceback" not in out
    code, out = cli(worker_agent, "run", "ghost")
    assert code == 1 and "agent 'ghost' not found" in out


def test_a_failed_run_exits_1_with_its_reason(tenant: Tenant) -> None:
    with tenant.client() as client:
        client.apply(raw(code_agent("crasher", "def main(input):\n    raise RuntimeError('nope')\n")))
    code, out = cli(tenant, "run", "crasher", "--follow")
    assert code == 1
    assert "Failed" in out and "RuntimeError: nope" in out


def test_cancel_command(tenant: Tenant) -> None:
    with tenant.client() as client:
        client.apply(
            raw(
                code_agent(
                    "slow",
                    "import time\n\ndef main(input):\n    time.sleep(60)\n",
                    limits={"wallSeconds": 120},
                )
            )
        )
        run = client.create_run("slow")
        code, out = cli(tenant, "cancel", run["id"])
        assert code == 0 and run["id"] in out
        assert wait_finished(client, run["id"], timeout=20)["state"] == "Cancelled"


@pytest.mark.slow
def test_bastion_demo_runs_end_to_end(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BASTION_")}
    command = [
        sys.executable,
        "-c",
        "from bastion.cli import main; main()",
        "demo",
        "--home",
        str(tmp_path / "demo"),
    ]
    result = subprocess.run(
        command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "Light snow" in out  # the result, from the keyed weather API
    assert "# Weather for Oslo" in out  # the report the agent wrote into its workspace
    assert "http.fetch" in out and "default deny" in out  # the denial, visible
    assert "hash chain intact" in out  # the audit verify verdict
    assert "signed by the tenant's key" in out  # the record, verified offline
    assert "requests matched the record byte for byte" in out  # a clean replay
    assert "invoke_agent weather-reporter" in out and "execute_tool weather.get" in out  # the trace
    if shutil.which("bwrap") or os.environ.get("CI") == "true":
        assert "(bwrap, image default" in out  # isolated by default where bwrap works
    assert "Pack accordingly." in out  # the declarative agent's answer, through its own loop
    assert (
        out.count("Oslo: a warm coat, gloves and boots with grip.") >= 2
    )  # the openai SDK, plain and streamed
    assert "weather-briefer: journal llm tool tool llm" in out and "sdk-packer: journal llm llm" in out
    assert out.count("requests matched the record byte for byte") == 3  # all three replayed clean
    assert "demo-weather-key" not in out
