"""What-if (issue 6, item 6): a finished run's recorded calls judged under another policy; the
decisions that would change are listed, and nothing is executed."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from bastion.errors import Forbidden, InvalidManifest, NotFound, UserError

from ._agents import builtin_tool, code_agent, grant_for, wait_finished
from ._docs import raw
from .conftest import Tenant

NOTES = """
from bastion import agent

def main(input):
    agent.tools.call("fs.write", path="a.txt", content="meeting notes")
    agent.tools.call("fs.write", path="b.txt", content="rm -rf / please")
    agent.tools.call("fs.write", path="c.txt", content="reach me at ops@example.com")
    return agent.tools.call("fs.read", path="c.txt")["content"]
"""

STRICT: list[dict[str, Any]] = [
    {
        "apiVersion": "bastion/v1",
        "kind": "Policy",
        "metadata": {"name": "strict"},
        "spec": {
            "rules": [{"id": "no-rm", "blockedPatterns": [{"pattern": "rm -rf"}]}],
            "pii": {"action": "redact", "entities": ["EMAIL_ADDRESS"]},
        },
    },
    {
        "apiVersion": "bastion/v1",
        "kind": "ToolGrant",
        "metadata": {"name": "notes-grant"},
        "spec": {"subjects": {"agents": ["notes"]}, "tools": ["fs.write", "fs.read"], "maxCalls": 2},
    },
]


@pytest.fixture
def finished(tenant: Tenant) -> tuple[Tenant, str]:
    with tenant.client() as client:
        client.apply(
            raw(
                builtin_tool("fs.write"),
                builtin_tool("fs.read"),
                code_agent("notes", NOTES, tools=["fs.write", "fs.read"]),
                grant_for("notes", "fs.write", "fs.read"),
            )
        )
        done = wait_finished(client, client.create_run("notes")["id"])
        assert done["state"] == "Succeeded", done["reason"]
    return tenant, done["id"]


def test_a_stricter_policy_shows_what_it_would_have_refused(finished: tuple[Tenant, str]) -> None:
    tenant, run_id = finished
    with tenant.client() as client:
        before = client.journal(run_id)
        verdict = client.what_if(run_id, raw(*STRICT))
        assert verdict["calls"] == 4 and verdict["policyVersion"].startswith("sha256:")
        changes = {(c["seq"], c["what"]): c for c in verdict["changes"]}
        # seq 2: the blocked pattern. A refused call does not count against maxCalls, so the replacing
        # grant's 2 calls go to seqs 1 and 3, and the read at seq 4 is the one past them.
        assert "policy/strict/no-rm" in changes[(2, "call")]["ruleIds"]
        assert "grant/notes-grant" in changes[(4, "call")]["ruleIds"]
        assert set(changes) == {(2, "call"), (4, "call")}
        assert all(c["new"] == "deny" for c in changes.values())
        assert all(c["old"] == "allow" for c in verdict["changes"])
        # Judging executed nothing and wrote nothing.
        assert client.journal(run_id) == before
        assert client.get_run(run_id)["state"] == "Succeeded"


def test_an_output_rule_is_applied_to_recorded_results(finished: tuple[Tenant, str]) -> None:
    tenant, run_id = finished
    pii_only = [STRICT[0] | {"spec": {"pii": {"action": "deny", "entities": ["EMAIL_ADDRESS"]}}}]
    with tenant.client() as client:
        verdict = client.what_if(run_id, raw(*pii_only))
    outputs = [c for c in verdict["changes"] if c["what"] == "output"]
    assert [(c["seq"], c["new"]) for c in outputs] == [(4, "deny")]


def test_what_if_refuses_other_kinds_and_unfinished_runs(tenant: Tenant) -> None:
    with tenant.client() as client:
        client.apply(raw(code_agent("sleepy", "import time\n\ndef main(input):\n    time.sleep(30)\n")))
        run = client.create_run("sleepy")
        with pytest.raises(UserError, match="finished runs"):
            client.what_if(run["id"], raw(*STRICT))
        with pytest.raises(InvalidManifest, match="Policy and ToolGrant manifests only"):
            client.what_if(run["id"], raw(code_agent("x", "def main(i):\n    return 1\n")))
        client.cancel_run(run["id"])


def test_the_cli_prints_the_changes(finished: tuple[Tenant, str], tmp_path: Path) -> None:
    tenant, run_id = finished
    path = tmp_path / "strict.yaml"
    path.write_text(yaml.safe_dump_all(STRICT))
    env = {
        **os.environ,
        "BASTION_URL": tenant.server.url,
        "BASTION_API_KEY": tenant.admin_key,
        "COLUMNS": "200",
    }
    result = subprocess.run(
        [sys.executable, "-m", "bastion", "what-if", run_id, "--policy", str(path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "4 tool calls re-judged" in result.stdout and "policy/strict/no-rm" in result.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: bastion/v1\nkind: Policy\nmetadata: {name: p}\nspec: {rules: [{id: X}]}\n")
    failed = subprocess.run(
        [sys.executable, "-m", "bastion", "what-if", run_id, "--policy", str(bad)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert failed.returncode != 0 and "Traceback" not in failed.stderr
    assert "rules" in failed.stdout + failed.stderr


SLOW_REGO = """package bastion
default allow := false
allow if {
  not never
}
never if {
  some a, b
  numbers.range(1, 2000)[a]
  numbers.range(1, 2000)[b]
  a * b == -1
}
"""


def test_a_viewer_may_not_run_what_if(finished: tuple[Tenant, str], other_tenant: Tenant) -> None:
    tenant, run_id = finished
    with tenant.client("viewer") as viewer, pytest.raises(Forbidden, match="what-if"):
        viewer.what_if(run_id, raw(*STRICT))
    with tenant.client("developer") as developer:
        assert developer.what_if(run_id, raw(*STRICT))["calls"] == 4
    # Another tenant's admin does not find the run at all.
    with other_tenant.client() as other, pytest.raises(NotFound):
        other.what_if(run_id, raw(*STRICT))


def test_a_slow_what_if_is_stopped_at_its_budget_while_the_server_keeps_answering(
    finished: tuple[Tenant, str],
) -> None:
    tenant, run_id = finished
    evaluator = tenant.server.bastion.evaluator
    budget, evaluator.seconds = evaluator.seconds, 2.0
    slow = {
        "apiVersion": "bastion/v1",
        "kind": "Policy",
        "metadata": {"name": "slow"},
        "spec": {"rego": SLOW_REGO},
    }
    try:
        with (
            httpx.Client(base_url=tenant.server.url, timeout=60) as http,
            ThreadPoolExecutor(1) as pool,
        ):
            started = time.monotonic()
            pending = pool.submit(
                http.post,
                f"/api/v1/namespaces/default/runs/{run_id}/what-if",
                json={"documents": [slow]},
                headers={"Authorization": f"Bearer {tenant.admin_key}"},
            )
            latencies: list[float] = []
            while not pending.done():
                before = time.monotonic()
                assert http.get("/healthz").status_code == 200
                latencies.append(time.monotonic() - before)
                time.sleep(0.05)
            response = pending.result()
            took = time.monotonic() - started
    finally:
        evaluator.seconds = budget
    assert response.status_code == 503, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    problem = response.json()
    assert problem["field"] == "budget" and "budget" in problem["detail"] and problem["hint"]
    assert took < 30, took
    assert len(latencies) >= 5 and max(latencies) < 1.0, latencies
    # The next what-if gets a fresh evaluator and a normal answer.
    with tenant.client() as client:
        assert client.what_if(run_id, raw(*STRICT))["calls"] == 4
