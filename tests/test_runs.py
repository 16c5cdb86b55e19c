"""Runs end to end: API, worker, process sandbox, gateway, journal; on SQLite and PostgreSQL."""

from __future__ import annotations

import json

import httpx
import pytest

from bastion.errors import NotFound

from ._agents import builtin_tool, code_agent, grant_for, wait_finished
from ._docs import raw
from .conftest import Tenant

ECHO = """
from bastion import agent

def main(input):
    agent.log("hello from the agent", input)
    print("a plain print goes to the log too")
    written = agent.tools.call("fs.write", path="notes/out.txt", content="x" * input["n"])
    read = agent.tools.call("fs.read", path="notes/out.txt")
    try:
        agent.tools.call("fs.list")
    except agent.ToolDenied as denied:
        agent.log("denied:", denied.reasons[0])
    return {"size": written["size"], "read": len(read["content"]), "t": agent.now().year > 2000, "u": len(agent.uuid())}
"""


@pytest.fixture
def tools_applied(tenant: Tenant) -> Tenant:
    with tenant.client() as client:
        client.apply(raw(builtin_tool("fs.write"), builtin_tool("fs.read"), builtin_tool("fs.list")))
    return tenant


def test_a_code_agent_runs_governed_and_journaled(tools_applied: Tenant) -> None:
    with tools_applied.client() as client:
        client.apply(
            raw(
                code_agent("echo", ECHO, tools=["fs.write", "fs.read", "fs.list"]),
                grant_for("echo", "fs.write", "fs.read"),
            )
        )
        run = client.create_run("echo", {"n": 5})
        assert run["state"] == "Scheduled"
        done = wait_finished(client, run["id"])
        assert done["state"] == "Succeeded", done
        assert done["result"] == {"size": 5, "read": 5, "t": True, "u": 36}
        entries = client.journal(run["id"])
        assert [(e["seq"], e["kind"], e["decision"]) for e in entries] == [
            (1, "tool", "allow"),
            (2, "tool", "allow"),
            (3, "tool", "deny"),
            (4, "time", "allow"),
            (5, "uuid", "allow"),
        ]
        assert entries[2]["error"]["type"] == "policy_denied"
        assert done["journal"] == {"entries": 5, "head": entries[-1]["hash"]}
        verdict = client.verify_run(run["id"])
        assert verdict["ok"] and verdict["entries"] == 5
        events = list(client.events(run["id"]))
        states = [e["data"]["state"] for e in events if e["type"] == "state"]
        assert states == ["Pending", "Scheduled", "Starting", "Running", "Succeeded"]
        logs = [e["data"]["line"] for e in events if e["type"] == "log"]
        assert any("hello from the agent" in line for line in logs)
        assert any("a plain print goes to the log too" in line for line in logs)
        assert any("denied:" in line and "default deny" in line for line in logs)
    system = {"Authorization": f"Bearer {tools_applied.server.admin_key}"}
    metrics = httpx.get(f"{tools_applied.server.url}/metrics", headers=system).text
    assert 'bastion_gateway_calls_total{decision="deny",kind="tool"}' in metrics
    assert 'bastion_gateway_calls_total{decision="allow",kind="uuid"}' in metrics
    succeeded = [line for line in metrics.splitlines() if line.startswith('bastion_runs{state="Succeeded"}')]
    assert succeeded and float(succeeded[0].split()[-1]) >= 1
    assert 'bastion_runs{state="Scheduled"}' in metrics
    assert "bastion_lease_takeovers_total " in metrics


def test_events_resume_after_last_event_id(tools_applied: Tenant) -> None:
    with tools_applied.client() as client:
        client.apply(raw(code_agent("resume", "def main(input):\n    return 1\n")))
        run = client.create_run("resume")
        wait_finished(client, run["id"])
        every = list(client.events(run["id"]))
        later = list(client.events(run["id"], after=every[1]["id"]))
        assert [e["id"] for e in later] == [e["id"] for e in every[2:]]
    with httpx.stream(
        "GET",
        f"{tools_applied.server.url}/api/v1/namespaces/default/runs/{run['id']}/events",
        headers={"Authorization": f"Bearer {tools_applied.admin_key}", "Last-Event-ID": str(every[-2]["id"])},
    ) as response:
        text = response.read().decode()
    assert f"id: {every[-1]['id']}" in text
    assert f"id: {every[-2]['id']}\n" not in text


def test_unknown_agent_and_bad_input_are_clear(tenant: Tenant) -> None:
    with tenant.client() as client:
        with pytest.raises(NotFound) as caught:
            client.create_run("nobody")
        assert caught.value.field == "agent"
    response = httpx.post(
        f"{tenant.server.url}/api/v1/namespaces/default/runs",
        content=b"{not json",
        headers={"Authorization": f"Bearer {tenant.admin_key}", "Content-Type": "application/json"},
    )
    assert response.status_code == 422
    assert response.headers["content-type"].startswith("application/problem+json")


@pytest.mark.parametrize(
    ("source", "limits", "reason"),
    [
        (
            "def main(input):\n    raise ValueError('bad things')\n",
            None,
            "the agent raised ValueError: bad things",
        ),
        (
            "def main(input):\n    while True:\n        pass\n",
            {"cpuSeconds": 1, "wallSeconds": 30},
            "limit exceeded: cpu",
        ),
        (
            "def main(input):\n    import time\n    time.sleep(30)\n",
            {"wallSeconds": 1},
            "limit exceeded: wall_time",
        ),
        (
            "def main(input):\n    b = bytearray(900 * 1024 * 1024)\n    return len(b)\n",
            {"memoryMib": 128},
            "limit exceeded: memory",
        ),
        ("def main(input):\n    import os\n    os._exit(3)\n", None, "exited with code 3"),
    ],
)
def test_failures_end_the_run_with_the_reason(
    tenant: Tenant, source: str, limits: dict[str, float] | None, reason: str
) -> None:
    with tenant.client() as client:
        client.apply(raw(code_agent("failing", source, limits=limits)))
        run = wait_finished(client, client.create_run("failing")["id"])
    assert run["state"] == "Failed"
    assert reason in run["reason"]


def test_output_flood_and_huge_requests_end_the_run(tenant: Tenant) -> None:
    flood = "def main(input):\n    import sys\n    for _ in range(100000):\n        print('x' * 200)\n"
    huge = "from bastion import agent\n\ndef main(input):\n    agent.tools.call('fs.write', path='a', content='x' * 10_000_000)\n"
    with tenant.client() as client:
        client.apply(raw(code_agent("flood", flood), code_agent("huge", huge, tools=["fs.write"])))
        flooded = wait_finished(client, client.create_run("flood")["id"])
        big = wait_finished(client, client.create_run("huge")["id"])
    assert flooded["state"] == "Failed" and "limit exceeded: output" in flooded["reason"]
    assert big["state"] == "Failed" and "limit exceeded: message_size" in big["reason"]


def test_garbage_on_stdout_goes_to_the_log_not_the_channel(tenant: Tenant) -> None:
    source = "import os, sys\n\ndef main(input):\n    os.write(1, b'garbage not json\\n')\n    sys.stdout.write('more garbage\\n')\n    return 'fine'\n"
    with tenant.client() as client:
        client.apply(raw(code_agent("garbage", source)))
        run = wait_finished(client, client.create_run("garbage")["id"])
        assert run["state"] == "Succeeded" and run["result"] == "fine"
        lines = [e["data"]["line"] for e in client.events(run["id"]) if e["type"] == "log"]
    assert "garbage not json" in lines


def test_cancel_stops_a_running_agent(tenant: Tenant) -> None:
    source = "import time\n\ndef main(input):\n    time.sleep(60)\n"
    with tenant.client() as client:
        client.apply(raw(code_agent("sleeper", source, limits={"wallSeconds": 120})))
        run = client.create_run("sleeper")
        for event in client.events(run["id"]):
            if event["type"] == "state" and event["data"]["state"] == "Running":
                break
        client.cancel_run(run["id"])
        done = wait_finished(client, run["id"], timeout=20)
    assert done["state"] == "Cancelled"


def test_cancelling_a_finished_run_is_a_409(tenant: Tenant) -> None:
    with tenant.client() as client:
        client.apply(raw(code_agent("quick", "def main(input):\n    return 1\n")))
        run = wait_finished(client, client.create_run("quick")["id"])
        response = httpx.post(
            f"{tenant.server.url}/api/v1/namespaces/default/runs/{run['id']}/cancel",
            headers={"Authorization": f"Bearer {tenant.admin_key}"},
        )
    assert response.status_code == 409


def test_runs_are_listed_by_agent_and_state(tenant: Tenant) -> None:
    with tenant.client() as client:
        client.apply(
            raw(
                code_agent("one", "def main(input):\n    return 1\n"),
                code_agent("two", "def main(input):\n    raise SystemExit(2)\n"),
            )
        )
        first = wait_finished(client, client.create_run("one")["id"])
        second = wait_finished(client, client.create_run("two")["id"])
        assert [r["id"] for r in client.list_runs(agent="one")] == [first["id"]]
        assert [r["id"] for r in client.list_runs(state="Failed")] == [second["id"]]
        assert {r["id"] for r in client.list_runs(namespace=None)} == {first["id"], second["id"]}


def test_other_tenants_cannot_see_runs(tenant: Tenant, other_tenant: Tenant) -> None:
    with tenant.client() as client:
        client.apply(raw(code_agent("mine", "def main(input):\n    return 'secret result'\n")))
        run = wait_finished(client, client.create_run("mine")["id"])
    with other_tenant.client() as other:
        for call in (other.get_run, other.journal, other.verify_run, other.cancel_run):
            with pytest.raises(NotFound):
                call(run["id"])
        with pytest.raises(NotFound):
            list(other.events(run["id"]))
        assert other.list_runs(namespace=None) == []
        assert json.dumps(other.verify_all()).find(run["id"]) == -1


def test_large_payloads_are_journaled_as_blobs(tools_applied: Tenant) -> None:
    source = "from bastion import agent\n\ndef main(input):\n    agent.tools.call('fs.write', path='big.txt', content='y' * 50_000)\n    return len(agent.tools.call('fs.read', path='big.txt')['content'])\n"
    with tools_applied.client() as client:
        client.apply(
            raw(
                code_agent("big", source, tools=["fs.write", "fs.read"]),
                grant_for("big", "fs.write", "fs.read"),
            )
        )
        run = wait_finished(client, client.create_run("big")["id"])
        assert run["state"] == "Succeeded", run
        assert run["result"] == 50_000
        entries = client.journal(run["id"])
        assert set(entries[0]["request"]) == {"$blob", "size"}
        assert set(entries[1]["response"]) == {"$blob", "size"}
        assert client.verify_run(run["id"])["ok"]
