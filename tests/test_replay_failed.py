"""Replaying a run that failed: a faithful replay of the failure is clean; any other ending is not.

A failed run has no result, only a reason (``the agent raised ...``, a loop's failure); its replay
must end the same way, with every request matching, to be clean. A replay that fails with another
error, or that succeeds where the run failed (even returning nothing, like the failed run's empty
result), diverges.
"""

from __future__ import annotations

import copy
import json
import socket
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from bastion.cli import app
from bastion.execution.runs import Replayer, ReplayReport
from bastion.execution.sandbox import CallError, ProcessBackend
from bastion.execution.tools import builtin_tools

from ._agents import builtin_tool, code_agent, grant_for, http_tool, wait_finished
from ._docs import raw
from .conftest import Tenant
from .test_llm_agent import model_policy

# Writes a file, is refused a tool, reads a file that is not there: the read fails and the agent,
# catching nothing, fails with the tool's error.
FAILING = """
from bastion import agent

def main(input):
    agent.tools.call("fs.write", path="notes.txt", content="about " + input["city"])
    try:
        agent.tools.call("fs.list")
    except agent.ToolDenied:
        pass
    stamp = agent.uuid()
    return agent.tools.call("fs.read", path="forecast-" + input["city"] + ".txt")
"""

READ = '    return agent.tools.call("fs.read", path="forecast-" + input["city"] + ".txt")\n'
READ_OR_KEYERROR = READ.replace("    return ", "    try:\n        ") + (
    '    except agent.ToolFailed:\n        raise KeyError("no forecast")\n'
)
READ_OR_NOTHING = READ.replace("    return ", "    try:\n        ") + (
    "    except agent.ToolFailed:\n        return None\n"
)

OFFLINE = {"BASTION_URL": "http://127.0.0.1:9"}  # a record file needs no server


@pytest.fixture
def failed_record(tenant: Tenant) -> dict[str, Any]:
    with tenant.client() as client:
        client.apply(
            raw(
                builtin_tool("fs.write"),
                builtin_tool("fs.read"),
                builtin_tool("fs.list"),
                code_agent("failing", FAILING, tools=["fs.write", "fs.read", "fs.list"]),
                grant_for("failing", "fs.write", "fs.read"),
            )
        )
        run = wait_finished(client, client.create_run("failing", {"city": "Oslo"})["id"])
        assert run["state"] == "Failed", run
        assert run["reason"].startswith("the agent raised ToolFailed: "), run
        assert "forecast-Oslo.txt" in run["reason"] and run["result"] is None
        return client.export_record(run["id"])


def replay(record: dict[str, Any], tmp_path: Path) -> ReplayReport:
    with ProcessBackend() as backend:
        return Replayer(record, backend, builtin_tools()).run(tmp_path)


def with_source(record: dict[str, Any], source: str) -> dict[str, Any]:
    changed = copy.deepcopy(record)
    changed["agent"]["spec"]["source"] = source
    return changed


def test_a_faithful_replay_of_a_failed_run_is_clean(failed_record: dict[str, Any], tmp_path: Path) -> None:
    report = replay(failed_record, tmp_path)
    assert report.ok, report
    assert report.verified == [1, 2, 3, 4]
    assert report.state == "Failed" and report.result is None
    assert report.error == failed_record["run"]["reason"]
    assert report.result_matches is True


def test_a_replay_that_fails_otherwise_diverges(failed_record: dict[str, Any], tmp_path: Path) -> None:
    # The same four requests, then another error.
    report = replay(with_source(failed_record, FAILING.replace(READ, READ_OR_KEYERROR)), tmp_path)
    assert report.verified == [1, 2, 3, 4] and report.divergence is None
    assert report.state == "Failed" and report.error == "the agent raised KeyError: 'no forecast'"
    assert not report.ok and report.result_matches is False
    assert report.reason.startswith("the run ended Failed (the agent raised ToolFailed: ")
    assert "the replay ended Failed (the agent raised KeyError: 'no forecast')" in report.reason
    assert '+  "reason": "the agent raised KeyError' in report.diff


def test_a_replay_that_succeeds_where_the_run_failed_diverges(
    failed_record: dict[str, Any], tmp_path: Path
) -> None:
    # Returns nothing: the same (empty) result as the failed run, and still not the same ending.
    report = replay(with_source(failed_record, FAILING.replace(READ, READ_OR_NOTHING)), tmp_path)
    assert report.verified == [1, 2, 3, 4] and report.divergence is None
    assert report.state == "Succeeded" and report.result is None
    assert not report.ok
    assert "the replay ended Succeeded" in report.reason


def test_a_replay_that_fails_where_the_run_succeeded_diverges(tenant: Tenant, tmp_path: Path) -> None:
    with tenant.client() as client:
        client.apply(raw(code_agent("fine", "def main(input):\n    return {'ok': True}\n")))
        run = wait_finished(client, client.create_run("fine", {})["id"])
        assert run["state"] == "Succeeded", run
        record = client.export_record(run["id"])
    report = replay(with_source(record, "def main(input):\n    raise RuntimeError('broken')\n"), tmp_path)
    assert not report.ok
    assert report.reason == (
        "the run ended Succeeded; the replay ended Failed (the agent raised RuntimeError: broken)"
    )
    assert replay(record, tmp_path / "again").ok


def test_cli_replay_of_a_failed_run(tenant: Tenant, failed_record: dict[str, Any], tmp_path: Path) -> None:
    runner = CliRunner()
    env = {"BASTION_URL": tenant.server.url, "BASTION_API_KEY": tenant.admin_key}
    result = runner.invoke(app, ["replay", failed_record["run"]["id"]], env=env)
    assert result.exit_code == 0, result.output
    assert "4 calls replayed, every request and the failure (the agent raised ToolFailed" in result.output
    assert "differs" not in result.output
    changed = tmp_path / "changed.json"
    changed.write_text(json.dumps(with_source(failed_record, FAILING.replace(READ, READ_OR_NOTHING))))
    result = runner.invoke(app, ["replay", str(changed)], env=OFFLINE)
    assert result.exit_code == 1, result.output
    assert "the replay ended otherwise" in result.output and "the replay ended Succeeded" in result.output


LOOPING: dict[str, Any] = {
    "apiVersion": "bastion/v1",
    "kind": "ModelPolicy",
    "metadata": {"name": "looping"},
    "spec": {
        "targets": [
            {
                "provider": "scripted",
                "model": "demo",
                "script": [{"toolCalls": [{"name": "fs.list", "arguments": {}}]}],
            }
        ]
    },
}


def test_a_declarative_agent_that_failed_replays_clean(tenant: Tenant, tmp_path: Path) -> None:
    agent = {
        "apiVersion": "bastion/v1",
        "kind": "Agent",
        "metadata": {"name": "looper"},
        "spec": {
            "runtime": "llm",
            "instructions": "List the files, forever.",
            "modelPolicy": "looping",
            "tools": ["fs.list"],
            "maxTurns": 1,
        },
    }
    with tenant.client() as client:
        client.apply(raw(LOOPING, builtin_tool("fs.list"), agent, grant_for("looper", "fs.list")))
        run = wait_finished(client, client.create_run("looper", "go")["id"])
        assert run["state"] == "Failed" and "maxTurns" in run["reason"], run
        record = client.export_record(run["id"])
    report = replay(record, tmp_path)
    assert report.ok, report
    assert report.state == "Failed" and report.error == run["reason"]
    changed = copy.deepcopy(record)
    changed["agent"]["spec"]["maxTurns"] = 2  # the loop asks the model again: a call the record lacks
    assert not replay(changed, tmp_path / "changed").ok


def test_a_run_failed_by_an_unreachable_api_replays_clean(tenant: Tenant, tmp_path: Path) -> None:
    # The tour's weather agent with its API down: the HTTP tool fails, the agent does not catch it.
    source = (
        "from bastion import agent\n\n"
        "def main(input):\n"
        "    return agent.tools.call('weather.get', city=input['city'])\n"
    )
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{closed.getsockname()[1]}/forecast"
    with tenant.client() as client:
        client.apply(
            raw(
                http_tool("weather.get", url, method="GET"),
                code_agent("reporter", source, tools=["weather.get"]),
                grant_for("reporter", "weather.get"),
            )
        )
        run = wait_finished(client, client.create_run("reporter", {"city": "Oslo"})["id"])
        assert run["state"] == "Failed", run
        assert run["reason"].startswith("the agent raised ToolFailed: "), run
        record = client.export_record(run["id"])
    report = replay(record, tmp_path)
    assert report.ok, report
    assert report.error == run["reason"]


def test_a_refused_api_completion_replays_clean(tenant: Tenant, tmp_path: Path) -> None:
    # An API client's model call is a run too: one refused by a budget failed, and replays so.
    bastion = tenant.server.bastion
    budgets = {"tokensPerRun": 1000, "tokensPerAgentPerDay": 310}
    policy = model_policy(
        "api-models", {"provider": "scripted", "model": "echo"}, maxOutputTokens=300, budgets=budgets
    )
    with tenant.client() as client:
        client.apply(raw(policy))
        with bastion.store.read() as conn:
            tenant_id = bastion.store.tenant_by_name(conn, tenant.name).id
        call: dict[str, Any] = {
            "tenant_id": tenant_id,
            "namespace": "default",
            "caller": "ci-key",
            "model_policy": "api-models",
            "params": {
                "format": "openai",
                "request": {"model": "m", "messages": [{"role": "user", "content": "hi"}]},
            },
        }
        bastion.completions.complete(**call)
        with pytest.raises(CallError):
            bastion.completions.complete(**call)  # the agent-per-day budget is spent
        [failed] = [r for r in client.list_runs() if r["state"] == "Failed"]
        record = client.export_record(failed["id"])
    report = replay(record, tmp_path)
    assert report.ok, report
    assert report.error == failed["reason"] and "tokensPerAgentPerDay" in failed["reason"]
    changed = copy.deepcopy(record)
    changed["run"]["reason"] = "budget 'budgets.tokensPerRun' exceeded"
    assert not replay(changed, tmp_path / "changed").ok
