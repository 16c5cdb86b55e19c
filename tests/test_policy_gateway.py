"""Policy in the gateway, end to end (issue 6): Policy resources decide real calls, their version is
journaled, outputs are inspected for PII, error budgets end runs with a handoff (and revoke the
agent when it says so), compliant runs promote, rate limits bite."""

from __future__ import annotations

from typing import Any

import pytest

from bastion.errors import Conflict

from ._agents import builtin_tool, code_agent, grant_for, wait_finished
from ._docs import raw
from .conftest import Tenant


def policy(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "bastion/v1", "kind": "Policy", "metadata": {"name": name}, "spec": spec}


WRITES = """
from bastion import agent

def main(input):
    out = []
    for content in input["contents"]:
        try:
            agent.tools.call("fs.write", path="note.txt", content=content)
            out.append("written")
        except agent.ToolDenied as denied:
            out.append("denied: " + "; ".join(denied.reasons))
    return out
"""


def test_a_blocked_pattern_is_a_violation_that_revokes_the_agent_with_a_handoff(tenant: Tenant) -> None:
    writer = code_agent("writer", WRITES, tools=["fs.write"])
    writer["spec"]["errorBudget"] = {"onExhausted": "revokeAgent"}  # by default only the run ends
    with tenant.client() as client:
        client.apply(
            raw(
                builtin_tool("fs.write"),
                writer,
                grant_for("writer", "fs.write"),
                policy(
                    "no-dumps",
                    rules=[{"id": "no-dump", "blockedPatterns": [{"pattern": "DROP TABLE"}]}],
                ),
            )
        )
        run = client.create_run(
            "writer", {"contents": ["hello", "drop\u00a0\u00a0table users", "never reached"]}
        )
        done = wait_finished(client, run["id"])
        assert done["state"] == "Revoked", done["reason"]
        assert "error budget exceeded" in done["reason"] and "procedure violation" in done["reason"]
        handoff = done["result"]["handoff"]
        assert handoff["agent"] == "writer" and handoff["lastStep"] == 2
        assert handoff["tried"][0]["outcome"] == "ok"
        assert handoff["tried"][1]["outcome"].startswith("denied")
        assert any("resume after step 1" in step for step in handoff["nextSteps"])

        entries = client.journal(run["id"])
        assert [e["decision"] for e in entries] == ["allow", "deny"], "the third call never happened"
        denial = entries[1]
        assert any(r["rule"] == "policy/no-dumps/no-dump" for r in denial["reasons"])
        assert all(r["policy"].startswith("sha256:") for r in denial["reasons"])

        trust = client.trust("writer")
        assert trust["revoked"] and trust["events"][0]["actor"] == "bastion"
        assert trust["events"][0]["runId"] == run["id"]
        with pytest.raises(Conflict, match="revoked"):
            client.create_run("writer", {"contents": []})


def test_repeating_the_same_denied_call_exhausts_the_error_budget(tenant: Tenant) -> None:
    source = """
from bastion import agent

def main(input):
    for _ in range(10):
        try:
            agent.tools.call("fs.list")
        except agent.ToolDenied:
            pass
    return "gave up"
"""
    with tenant.client() as client:
        agent = code_agent("stubborn", source, tools=["fs.list"])
        agent["spec"]["errorBudget"] = {"maxErrors": 10, "maxRepeats": 3}
        client.apply(raw(builtin_tool("fs.list"), agent))
        done = wait_finished(client, client.create_run("stubborn")["id"])
        assert done["state"] == "Revoked"
        assert "happened 4 times" in done["reason"]
        assert len(client.journal(done["id"])) == 4


def test_personal_data_in_a_tool_result_is_redacted_before_the_agent_or_the_journal_sees_it(
    tenant: Tenant,
) -> None:
    source = """
from bastion import agent

def main(input):
    agent.tools.call("fs.write", path="contacts.txt", content="write to jane.doe@example.com or call 212-555-0182")
    return agent.tools.call("fs.read", path="contacts.txt")["content"]
"""
    with tenant.client() as client:
        client.apply(
            raw(
                builtin_tool("fs.write"),
                builtin_tool("fs.read"),
                code_agent("reader", source, tools=["fs.write", "fs.read"]),
                grant_for("reader", "fs.write", "fs.read"),
                policy("pii", pii={"action": "redact", "entities": ["EMAIL_ADDRESS", "PHONE_NUMBER"]}),
            )
        )
        done = wait_finished(client, client.create_run("reader")["id"])
        assert done["state"] == "Succeeded", done["reason"]
        assert "jane.doe@example.com" not in done["result"]
        assert "[PII:EMAIL_ADDRESS]" in done["result"]
        read = client.journal(done["id"])[1]
        assert read["decision"] == "redact"
        assert "jane.doe" not in str(read["response"])
        assert any(r["rule"] == "policy/pii/pii" for r in read["reasons"])


def test_compliant_runs_promote_the_agent(tenant: Tenant) -> None:
    with tenant.client() as client:
        client.apply(
            raw(
                code_agent("good", "def main(input):\n    return 'ok'\n"),
                policy("earn", trust={"promoteAfter": 2, "maxTier": "T1"}),
            )
        )
        for _ in range(3):
            assert wait_finished(client, client.create_run("good")["id"])["state"] == "Succeeded"
        trust = client.trust("good")
        assert trust["tier"] == "T1", trust
        [event] = trust["events"]
        assert (event["action"], event["actor"], event["ruleId"]) == (
            "promote",
            "bastion",
            "trust.promoteAfter",
        )
        assert len(event["evidence"]) == 2


def test_a_rate_limit_per_agent_bites_across_runs(tenant: Tenant) -> None:
    source = """
from bastion import agent

def main(input):
    try:
        agent.tools.call("fs.list")
        return "allowed"
    except agent.ToolDenied as denied:
        return denied.reasons
"""
    with tenant.client() as client:
        client.apply(
            raw(
                builtin_tool("fs.list"),
                code_agent("limited", source, tools=["fs.list"]),
                grant_for("limited", "fs.list", rateLimit={"calls": 2, "per": "1h"}),
            )
        )
        results = [wait_finished(client, client.create_run("limited")["id"])["result"] for _ in range(3)]
        assert results[:2] == ["allowed", "allowed"]
        assert any("limit is reached" in r for r in results[2]), results[2]


CHECKED = """
from bastion import agent

def main(input):
    out = []
    for args in input["calls"]:
        try:
            agent.tools.call("fs.write", **args)
            out.append("written")
        except agent.AgentError as refused:
            out.append("refused: " + refused.message)
    return out
"""


def test_a_code_agents_arguments_are_held_to_the_tools_json_schema(
    tenant: Tenant, other_tenant: Tenant
) -> None:
    strict = builtin_tool("fs.write")
    strict["spec"]["parameters"] = {
        "type": "object",
        "properties": {
            "path": {"type": "string", "pattern": "^notes/[a-z]+\\.txt$"},
            "content": {"type": "string"},
        },
        "required": ["path", "content"],
        "additionalProperties": False,
    }
    calls = [
        {"path": "notes/ok.txt", "content": "hi"},
        {"path": "other.txt", "content": "x"},
        {"path": "notes/ok.txt", "content": "x", "mode": "append"},
    ]
    with tenant.client() as client:
        client.apply(
            raw(strict, code_agent("writer", CHECKED, tools=["fs.write"]), grant_for("writer", "fs.write"))
        )
        done = wait_finished(client, client.create_run("writer", {"calls": calls})["id"])
        assert done["state"] == "Succeeded", done["reason"]
        written, bad_path, extra = done["result"]
        assert written == "written"
        assert bad_path.startswith("refused:") and "'path'" in bad_path and "Tool's parameters" in bad_path
        assert extra.startswith("refused:") and "mode" in extra
        entries = client.journal(done["id"])
        assert [e["decision"] for e in entries] == ["allow", "deny", "deny"]
        assert entries[1]["reasons"][0]["rule"] == "tool/parameters"  # journaled, before any grant
    # Another tenant's Tool of the same name declares no schema: the same calls go through there.
    with other_tenant.client() as client:
        client.apply(
            raw(
                builtin_tool("fs.write"),
                code_agent("writer", CHECKED, tools=["fs.write"]),
                grant_for("writer", "fs.write"),
            )
        )
        done = wait_finished(client, client.create_run("writer", {"calls": calls[:2]})["id"])
        assert done["result"] == ["written", "written"]


@pytest.mark.parametrize(
    ("document", "field"),
    [
        (
            policy(
                "p", rules=[{"id": "r", "blockedPatterns": [{"match": "regex", "pattern": "(drop)\\s+\\1"}]}]
            ),
            "spec.rules.0.blockedPatterns.0",
        ),
        (
            grant_for("a", "kb.search", argumentPatterns={"kb.search": {"q": "^(?!admin).*"}}),
            "spec.argumentPatterns",
        ),
        (
            grant_for(
                "a",
                "kb.search",
                requireArguments={"kb.search": {"properties": {"q": {"pattern": "(?<=x)y"}}}},
            ),
            "spec.requireArguments",
        ),
        (
            policy(
                "p", rego="package bastion\nimport rego.v1\nallow if regex.match(`^(a+)+$`, input.args.q)\n"
            ),
            "spec.rego",
        ),
    ],
    ids=["blocked regex", "argumentPatterns", "requireArguments schema", "rego regex.match"],
)
def test_a_pattern_that_cannot_run_in_linear_time_is_refused_at_apply_naming_the_field(
    tenant: Tenant, document: dict[str, Any], field: str
) -> None:
    from bastion.errors import InvalidManifest

    with tenant.client() as client, pytest.raises(InvalidManifest) as caught:
        client.apply(raw(document))
    problem = caught.value.problems[0]
    assert (problem.field or "").startswith(field), problem
    assert "linear time" in problem.message or "backtracking" in problem.message
    with tenant.client() as client:
        listed = client.list(document["kind"])
        assert all(r["metadata"]["name"] != document["metadata"]["name"] for r in listed), "nothing written"
