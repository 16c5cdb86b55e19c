"""Human approvals (issue 6, item 5): ``require_approval`` suspends the run without a sandbox; a
decision re-queues it, and the next attempt replays to the call and finds the decision.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from bastion.client import BastionClient
from bastion.errors import Conflict, Forbidden, NotFound
from bastion.testing import weather_api

from ._agents import code_agent, grant_for, http_tool, wait_finished
from ._docs import raw
from .conftest import Tenant

TOKEN = "approval-weather-token-5d1e"

ASKS = """
import json
from bastion import agent

def main(input):
    before = agent.now().isoformat()
    try:
        got = agent.tools.call("weather", city=input.get("city", "Oslo"))
    except agent.ToolDenied as denied:
        return {"denied": denied.reasons}
    return {"forecast": json.loads(got["body"])["forecast"], "before": before}
"""


def _secret(url: str) -> dict[str, Any]:
    return {
        "apiVersion": "bastion/v1",
        "kind": "Secret",
        "metadata": {"name": "weather-key"},
        "spec": {
            "stringData": {"token": TOKEN},
            "usableBy": {"tools": ["weather"]},
            "destinations": [f"{url}/forecast"],
        },
    }


@pytest.fixture
def weather() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    with weather_api(TOKEN) as served:
        yield served


def _apply(client: BastionClient, url: str, *, agent: str = "asker", timeout: str = "1h") -> None:
    client.apply(
        raw(
            code_agent(agent, ASKS, tools=["weather"]),
            http_tool(
                "weather",
                f"{url}/forecast",
                method="GET",
                headers={"Authorization": "Bearer {secret:weather-key/token}"},
                secrets=["weather-key"],
            ),
            _secret(url),
            grant_for(agent, "weather", requireApproval=True, approvalTimeout=timeout),
        )
    )


def wait_state(client: BastionClient, run_id: str, state: str, timeout: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = client.get_run(run_id)
        if run["state"] == state:
            return run
        time.sleep(0.05)
    raise AssertionError(f"run {run_id} never reached {state}: {client.get_run(run_id)}")


def _pending_for(client: BastionClient, run_id: str) -> dict[str, Any]:
    found = [a for a in client.list_approvals() if a["run"] == run_id]
    assert len(found) == 1, found
    return found[0]


def test_an_approved_call_runs_once_after_the_run_resumed(
    tenant: Tenant, weather: tuple[str, list[dict[str, Any]]]
) -> None:
    url, seen = weather
    with tenant.client() as client:
        _apply(client, url)
        run = client.create_run("asker", {"city": "Oslo"})
        waiting = wait_state(client, run["id"], "WaitingApproval")
        assert "waiting for approval" in waiting["reason"]
        assert seen == [], "nothing may reach the tool before a human decides"
        approval = _pending_for(client, run["id"])
        assert approval["tool"] == "weather" and approval["args"] == {"city": "Oslo"}
        assert approval["seq"] == 2 and approval["state"] == "pending"
        assert any("after a person approves" in r for r in approval["reasons"])

        decided = client.decide_approval(approval["id"], approve=True, reason="looks fine")
        assert decided["state"] == "approved" and decided["decidedBy"].startswith("key ")
        done = wait_finished(client, run["id"])
        assert done["state"] == "Succeeded", done.get("reason")
        assert "snow" in done["result"]["forecast"]
        assert len(seen) == 1 and seen[0]["authorized"]

        entries = client.journal(run["id"])
        call = entries[1]
        assert (call["seq"], call["kind"], call["decision"]) == (2, "tool", "allow")
        rules = [r["rule"] for r in call["reasons"]]
        assert f"approval/{approval['id']}" in rules
        assert any("approved by key" in r["text"] and "looks fine" in r["text"] for r in call["reasons"])
        assert client.verify_run(run["id"])["ok"]
        # Waiting is no death, and buys no more of them: the poison budget is what it was.
        assert done["maxAttempts"] == run["maxAttempts"]

        state_events = [e["data"] for e in client.events(run["id"]) if e["type"] == "state"]
        assert not any("takeover" in e for e in state_events), "a resume after a decision is no takeover"
        states = [e["state"] for e in state_events]
        assert states[:5] == ["Pending", "Scheduled", "Starting", "Running", "WaitingApproval"]
        assert states[5:] == ["Scheduled", "Starting", "Running", "Succeeded"]
        # The second attempt answered seq 1 (time) from the journal: the clock did not move for it.
        assert done["result"]["before"] == entries[0]["response"]

        with pytest.raises(Conflict, match="approved"):
            client.decide_approval(approval["id"], approve=False)


def test_a_denied_call_reaches_the_agent_as_a_denial(
    tenant: Tenant, weather: tuple[str, list[dict[str, Any]]]
) -> None:
    url, seen = weather
    with tenant.client() as client:
        _apply(client, url)
        run = client.create_run("asker", {"city": "Lisbon"})
        wait_state(client, run["id"], "WaitingApproval")
        approval = _pending_for(client, run["id"])
        client.decide_approval(approval["id"], approve=False, reason="not today")
        done = wait_finished(client, run["id"])
        assert done["state"] == "Succeeded", done.get("reason")
        assert any("denied by key" in r and "not today" in r for r in done["result"]["denied"])
        assert seen == []
        call = client.journal(run["id"])[1]
        assert call["decision"] == "deny" and call["error"]["type"] == "policy_denied"
        assert client.get_approval(approval["id"])["state"] == "denied"


def test_an_undecided_approval_expires_into_a_denial(
    tenant: Tenant, weather: tuple[str, list[dict[str, Any]]]
) -> None:
    url, seen = weather
    with tenant.client() as client:
        _apply(client, url, timeout="1s")
        run = client.create_run("asker", {})
        wait_state(client, run["id"], "WaitingApproval")
        approval = _pending_for(client, run["id"])
        done = wait_finished(client, run["id"])
        assert done["state"] == "Succeeded", done.get("reason")
        assert any("expired" in r for r in done["result"]["denied"])
        assert seen == []
        assert client.get_approval(approval["id"])["state"] == "expired"
        with pytest.raises(Conflict, match="expired"):
            client.decide_approval(approval["id"], approve=True)


def test_approvals_belong_to_their_tenant_and_need_an_operator(
    tenant: Tenant, other_tenant: Tenant, weather: tuple[str, list[dict[str, Any]]]
) -> None:
    url, _ = weather
    with tenant.client() as client:
        _apply(client, url)
        run = client.create_run("asker", {})
        wait_state(client, run["id"], "WaitingApproval")
        approval = _pending_for(client, run["id"])
    with other_tenant.client() as outsider:
        assert all(a["id"] != approval["id"] for a in outsider.list_approvals(state="all"))
        with pytest.raises(NotFound):
            outsider.get_approval(approval["id"])
        with pytest.raises(NotFound):
            outsider.decide_approval(approval["id"], approve=True)
    with tenant.client("developer") as developer, pytest.raises(Forbidden, match="may not decide approvals"):
        developer.decide_approval(approval["id"], approve=True)
    with tenant.client() as client:
        assert client.get_approval(approval["id"])["state"] == "pending"
        client.cancel_run(run["id"])


def test_a_hundred_runs_wait_at_once_without_sandboxes(
    tenant: Tenant, weather: tuple[str, list[dict[str, Any]]]
) -> None:
    url, seen = weather
    count = 100
    with tenant.client() as client:
        _apply(client, url)
        ids = [client.create_run("asker", {"city": f"c{i}"})["id"] for i in range(count)]
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            waiting = client.list_runs(state="WaitingApproval", limit=500)
            if len(waiting) == count:
                break
            time.sleep(0.2)
        assert len(client.list_runs(state="WaitingApproval", limit=500)) == count
        # Waiting costs nothing: no sandbox serves any of them. What runs is the warm pool's idle
        # sandboxes (at most its size), ready for the next run.
        # (The sandboxes view is written by the worker as states change: give it a moment.)
        deadline = time.monotonic() + 15
        while True:
            live = [s for s in client.list_sandboxes() if s["state"] in ("Cold", "Warm", "Hot")]
            held = [s for s in live if s.get("runId") in set(ids)]
            if not held or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert not held, held
        idle = [s for s in live if s["state"] != "Hot"]
        assert len(idle) <= tenant.server.bastion.settings.pool_size, idle
        pending = [a for a in client.list_approvals(limit=500) if a["run"] in set(ids)]
        assert len({a["id"] for a in pending}) == count, "one approval per call, ids unique"
        for approval in pending:
            client.decide_approval(approval["id"], approve=True)
        for run_id in ids:
            assert wait_finished(client, run_id, timeout=120)["state"] == "Succeeded"
    assert len(seen) == count


def _agent_processes() -> list[str]:
    """Command lines of live agent processes (the sandbox bootstrap) descended from this test process."""
    parents: dict[int, int] = {}
    lines: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                lines[int(entry)] = f.read().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError, ValueError):
            continue

    def ours(pid: int) -> bool:
        for _ in range(64):
            pid = parents.get(pid, 0)
            if pid == os.getpid():
                return True
            if pid <= 1:
                return False
        return False

    # One per sandbox: the interpreter that runs the SDK's runner (not its bwrap or sh launchers).
    return [
        line
        for pid, line in lines.items()
        if "bastion.agent._runner" in line and "python" in line.split(" ", 1)[0] and ours(pid)
    ]


def test_the_cli_lists_approves_and_denies(tenant: Tenant, weather: tuple[str, list[dict[str, Any]]]) -> None:
    url, _ = weather
    env = {**os.environ, "BASTION_URL": tenant.server.url, "BASTION_API_KEY": tenant.key("admin")}
    with tenant.client() as client:
        _apply(client, url)
        first = client.create_run("asker", {"city": "Oslo"})
        second = client.create_run("asker", {"city": "Lisbon"})
        for run in (first, second):
            wait_state(client, run["id"], "WaitingApproval")
        listed = _cli(env, "approvals")
        assert listed.returncode == 0, listed.stderr
        one, two = _pending_for(client, first["id"]), _pending_for(client, second["id"])
        assert one["id"] in listed.stdout and two["id"] in listed.stdout and "pend" in listed.stdout

        approved = _cli(env, "approve", one["id"], "--reason", "ok by me")
        assert approved.returncode == 0 and "approved" in approved.stdout, approved.stderr
        denied = _cli(env, "deny", two["id"], "-r", "no")
        assert denied.returncode == 0 and "denied" in denied.stdout, denied.stderr
        again = _cli(env, "approve", two["id"])
        assert again.returncode != 0 and "denied" in (again.stdout + again.stderr)
        assert "Traceback" not in again.stderr
        missing = _cli(env, "approve", "no-such-approval")
        assert missing.returncode != 0 and "not found" in (missing.stdout + missing.stderr)
        assert wait_finished(client, first["id"])["result"]["forecast"]
        assert wait_finished(client, second["id"])["result"]["denied"]


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bastion", *args], env=env, capture_output=True, text=True, timeout=60
    )
