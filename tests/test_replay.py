"""Replay: an agent re-executed offline against its ExecutionRecord, request by request."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from bastion.cli import app
from bastion.execution.runs import Replayer
from bastion.execution.sandbox import ProcessBackend
from bastion.execution.tools import builtin_tools

from ._agents import builtin_tool, code_agent, grant_for, wait_finished
from ._docs import raw
from .conftest import Tenant

AGENT = """
from bastion import agent

def main(input):
    agent.tools.call("fs.write", path="notes.txt", content="remember " + input["word"])
    with open("notes.txt") as handle:  # straight from disk: replay must re-create the file
        note = handle.read()
    try:
        agent.tools.call("fs.list")
    except agent.ToolDenied:
        note += " (no listing)"
    return {"note": note, "id": agent.uuid(), "r": agent.random(), "year": agent.now().year}
"""


@pytest.fixture
def record(tenant: Tenant) -> dict[str, Any]:
    with tenant.client() as client:
        client.apply(
            raw(
                builtin_tool("fs.write"),
                builtin_tool("fs.list"),
                code_agent("noter", AGENT, tools=["fs.write", "fs.list"]),
                grant_for("noter", "fs.write"),
            )
        )
        run = wait_finished(client, client.create_run("noter", {"word": "tulips"})["id"])
        assert run["state"] == "Succeeded", run
        return client.export_record(run["id"])


def replay(record: dict[str, Any], tmp_path: Path, until: int | None = None) -> Any:
    with ProcessBackend() as backend:
        return Replayer(record, backend, builtin_tools()).run(tmp_path, until=until)


def test_a_replay_matches_every_request_and_the_result(record: dict[str, Any], tmp_path: Path) -> None:
    report = replay(record, tmp_path)
    assert report.ok, report
    assert report.verified == [1, 2, 3, 4, 5]
    assert report.result == record["run"]["result"]
    assert report.result["note"] == "remember tulips (no listing)"
    assert (tmp_path / "notes.txt").read_text() == "remember tulips"


def test_a_changed_agent_diverges_naming_the_seq_with_a_diff(record: dict[str, Any], tmp_path: Path) -> None:
    changed = copy.deepcopy(record)
    changed["agent"]["spec"]["source"] = AGENT.replace('"remember "', '"forget "')
    report = replay(changed, tmp_path)
    assert report.divergence == 1
    assert '-      "content": "remember tulips",' in report.diff
    assert '+      "content": "forget tulips",' in report.diff


def test_an_agent_that_stops_early_or_goes_on_diverges(record: dict[str, Any], tmp_path: Path) -> None:
    shorter = copy.deepcopy(record)
    shorter["agent"]["spec"]["source"] = (
        "from bastion import agent\n\ndef main(input):\n    return agent.tools.call('fs.write', path='notes.txt', content='remember ' + input['word'])\n"
    )
    assert replay(shorter, tmp_path / "a").divergence == 2
    cut = copy.deepcopy(record)
    cut["entries"] = cut["entries"][:3]
    assert replay(cut, tmp_path / "b").divergence == 4


def test_until_stops_after_that_seq(record: dict[str, Any], tmp_path: Path) -> None:
    report = replay(record, tmp_path, until=2)
    assert report.ok
    assert report.stopped_at == 2
    assert report.verified == [1, 2]


def test_cli_replays_a_run_and_a_file(tenant: Tenant, record: dict[str, Any], tmp_path: Path) -> None:
    runner = CliRunner()
    env = {"BASTION_URL": tenant.server.url, "BASTION_API_KEY": tenant.admin_key}
    result = runner.invoke(app, ["replay", record["run"]["id"]], env=env)
    assert result.exit_code == 0, result.output
    assert "5 calls replayed" in result.output
    forged = copy.deepcopy(record)
    forged["agent"]["spec"]["source"] = AGENT.replace("fs.list", "fs.read")
    path = tmp_path / "run.json"
    path.write_text(json.dumps(forged))
    result = runner.invoke(app, ["replay", str(path)], env={"BASTION_URL": "http://127.0.0.1:9"})
    assert result.exit_code == 1
    assert "diverged at seq 2" in result.output
    result = runner.invoke(
        app, ["replay", str(path), "--until", "1"], env={"BASTION_URL": "http://127.0.0.1:9"}
    )
    assert result.exit_code == 0 and "replayed to seq 1" in result.output


FORKED = """
from bastion import agent

def main(input):
    first = agent.uuid()
    agent.tools.call("fs.write", path="a.txt", content=first)
    second = agent.uuid()
    return {"first": first, "second": second, "file": open("a.txt").read()}
"""


def test_fork_at_replays_to_the_seq_and_goes_live(tenant: Tenant, tmp_path: Path) -> None:
    with tenant.client() as client:
        client.apply(
            raw(
                builtin_tool("fs.write"),
                code_agent("forky", FORKED, tools=["fs.write"]),
                grant_for("forky", "fs.write"),
            )
        )
        parent = wait_finished(client, client.create_run("forky")["id"])
        child = client.fork_run(parent["id"], 2)
        assert child["parent"] == {"run": parent["id"], "forkSeq": 2}
        done = wait_finished(client, child["id"])
        assert done["state"] == "Succeeded", done
        assert done["result"]["first"] == parent["result"]["first"]  # replayed from the journal
        assert done["result"]["file"] == parent["result"]["first"]  # the workspace effect re-created
        assert done["result"]["second"] != parent["result"]["second"]  # live after the fork
        entries = client.journal(child["id"])
        assert [(e["seq"], e["attempt"]) for e in entries] == [(1, 0), (2, 0), (3, 1)]
        assert client.verify_run(child["id"])["ok"]
        assert client.verify_run(parent["id"])["ok"]
        response = httpx.post(
            f"{tenant.server.url}/api/v1/namespaces/default/runs/{parent['id']}/fork",
            json={"seq": 99},
            headers={"Authorization": f"Bearer {tenant.admin_key}"},
        )
        assert response.status_code == 422
        assert response.json()["field"] == "seq"
    result = CliRunner().invoke(
        app,
        ["replay", parent["id"], "--fork-at", "1"],
        env={"BASTION_URL": tenant.server.url, "BASTION_API_KEY": tenant.admin_key},
    )
    assert result.exit_code == 0, result.output
    assert "forked from" in result.output and "Succeeded" in result.output
