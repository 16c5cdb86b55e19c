"""Model calls end to end: API, worker, gateway (``llm.chat``), router, journal, replay.

Declarative agents (``runtime: llm``) run Bastion's own loop; code agents make ``llm.chat``
calls in the wire formats the coming in-sandbox shim will forward. Providers are the scripted
one and the fake HTTP providers of ``bastion.testing``; on SQLite and PostgreSQL.
"""

from __future__ import annotations

import tempfile
import textwrap
from pathlib import Path
from typing import Any

from bastion.execution.runs import Replayer
from bastion.execution.sandbox import ProcessBackend
from bastion.execution.tools import builtin_tools
from bastion.testing import FakeProvider, malformed, reply, tool_call

from ._agents import builtin_tool, code_agent, grant_for, wait_finished
from ._docs import raw
from .conftest import Tenant

FS_WRITE = builtin_tool("fs.write")
FS_WRITE["spec"]["parameters"] = {
    "type": "object",
    "properties": {"path": {"type": "string"}, "content": {"type": "string"}},
    "required": ["path", "content"],
    "additionalProperties": False,
}
FS_READ = builtin_tool("fs.read")
FS_READ["spec"]["parameters"] = {
    "type": "object",
    "properties": {"path": {"type": "string"}},
    "required": ["path"],
}


def model_policy(name: str, *targets: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "bastion/v1",
        "kind": "ModelPolicy",
        "metadata": {"name": name},
        "spec": {"targets": list(targets), **spec},
    }


def llm_agent(name: str, policy: str, *, tools: list[str], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "bastion/v1",
        "kind": "Agent",
        "metadata": {"name": name},
        "spec": {
            "runtime": "llm",
            "instructions": "You keep notes. Use the tools, then answer in one line.",
            "modelPolicy": policy,
            "tools": tools,
            **spec,
        },
    }


SCRIPT = [
    # Two tool calls in one turn: run in this order, journaled in this order.
    {
        "toolCalls": [
            {"name": "fs.write", "arguments": {"path": "notes.txt", "content": "refunds take 20 days"}},
            {"name": "fs.read", "arguments": {"path": "notes.txt"}},
        ]
    },
    # Arguments that break the tool's schema: not executed, the model is told why.
    {"toolCalls": [{"name": "fs.write", "arguments": {"path": "x.txt", "colour": "blue"}}]},
    {"text": "Noted: refunds take 20 days."},
]


def test_a_declarative_agent_runs_its_loop_through_the_gateway_and_replays(tenant: Tenant) -> None:
    with tenant.client() as client:
        client.apply(
            raw(
                FS_WRITE,
                FS_READ,
                model_policy(
                    "notes-models",
                    {"provider": "scripted", "model": "demo", "script": SCRIPT},
                    prices={"demo": {"inputPerMtok": 1.0, "outputPerMtok": 2.0}},
                ),
                llm_agent("note-taker", "notes-models", tools=["fs.write", "fs.read"]),
                grant_for("note-taker", "fs.write", "fs.read"),
            )
        )
        run = client.create_run("note-taker", {"topic": "refunds"})
        done = wait_finished(client, run["id"])
        assert done["state"] == "Succeeded", done
        assert done["result"] == "Noted: refunds take 20 days."
        entries = client.journal(run["id"])
        assert [(e["kind"], e["request"]["params"].get("name")) for e in entries] == [
            ("llm", None),
            ("tool", "fs.write"),
            ("tool", "fs.read"),
            ("llm", None),
            ("llm", None),
        ]
        first = entries[0]
        assert first["request"]["method"] == "llm.chat"
        sent = first["request"]["params"]["request"]
        assert sent["messages"][0] == {
            "role": "system",
            "content": llm_agent("x", "y", tools=[])["spec"]["instructions"],
        }
        assert sent["messages"][1] == {"role": "user", "content": '{"topic": "refunds"}'}
        assert [t["name"] for t in sent["tools"]] == ["fs.write", "fs.read"]
        answer = first["response"]
        assert (answer["provider"], answer["model"]) == ("scripted", "demo")
        usage = answer["usage"]
        assert (
            usage["inputTokens"] > 0
            and answer["costUsd"] == (usage["inputTokens"] + 2 * usage["outputTokens"]) / 1e6
        )
        # The schema fault went back to the model, not to the tool.
        third = entries[4]["request"]["params"]["request"]["messages"][-1]
        assert third["role"] == "tool" and third["isError"] is True
        assert (
            "do not match its JSON Schema" in third["content"]
            and "'content' is a required" in third["content"]
        )
        assert entries[2]["response"]["content"] == "refunds take 20 days"
        assert client.verify_run(run["id"])["ok"]
        record = client.export_record(run["id"])
    with tempfile.TemporaryDirectory() as scratch, ProcessBackend() as backend:
        report = Replayer(record, backend, builtin_tools()).run(Path(scratch))
    assert report.ok, report
    assert report.verified == [1, 2, 3, 4, 5]


def test_a_model_that_calls_tools_forever_ends_at_max_turns(tenant: Tenant) -> None:
    forever = [{"toolCalls": [{"name": "fs.read", "arguments": {"path": "nothing.txt"}}]}] * 10
    with tenant.client() as client:
        client.apply(
            raw(
                FS_READ,
                model_policy("loop-models", {"provider": "scripted", "model": "loop", "script": forever}),
                llm_agent("looper", "loop-models", tools=["fs.read"], maxTurns=3),
                grant_for("looper", "fs.read"),
            )
        )
        done = wait_finished(client, client.create_run("looper", "go")["id"])
        assert done["state"] == "Failed"
        assert "maxTurns=3" in done["reason"] and "without a final answer" in done["reason"]
        kinds = [e["kind"] for e in client.journal(done["id"])]
        assert kinds == ["llm", "tool", "llm", "tool", "llm", "tool"]


def test_a_run_over_its_token_budget_is_refused_before_the_call(tenant: Tenant) -> None:
    chatty = [{"toolCalls": [{"name": "fs.read", "arguments": {"path": "a"}}]}] * 5
    with tenant.client() as client:
        client.apply(
            raw(
                FS_READ,
                model_policy(
                    "tight-models",
                    {"provider": "scripted", "model": "tight", "script": chatty},
                    maxOutputTokens=500,
                    budgets={"tokensPerRun": 600},
                ),
                llm_agent("spender", "tight-models", tools=["fs.read"]),
                grant_for("spender", "fs.read"),
            )
        )
        done = wait_finished(client, client.create_run("spender", "go")["id"])
        assert done["state"] == "Failed", done
        assert "budget 'budgets.tokensPerRun' exceeded" in done["reason"]
        entries = client.journal(done["id"])
        refused = entries[-1]
        assert refused["kind"] == "llm" and refused["decision"] == "deny"
        assert refused["reasons"][0]["rule"] == "budget/budgets.tokensPerRun"
        assert refused["error"]["type"] == "budget_exceeded"
        # Charged: what the answered calls really used, nothing for the refused one.
        used = sum(
            e["response"]["usage"]["inputTokens"] + e["response"]["usage"]["outputTokens"]
            for e in entries
            if e["kind"] == "llm" and e["response"]
        )
    ledger = tenant.server.bastion.models.ledger
    assert ledger.used(f"run:{done['id']}") == (used, 0.0)


def test_garbage_from_every_provider_fails_the_run_with_the_reason(tenant: Tenant) -> None:
    with FakeProvider(malformed(), malformed(), malformed()) as fake, tenant.client() as client:
        client.apply(
            raw(
                model_policy(
                    "bad-models",
                    {"provider": "openai", "model": "gpt-x", "baseUrl": fake.openai_url},
                    retries=2,
                ),
                llm_agent("victim", "bad-models", tools=[]),
            )
        )
        done = wait_finished(client, client.create_run("victim", "hi")["id"])
        assert done["state"] == "Failed"
        assert "the model call failed" in done["reason"] and "malformed" in done["reason"]
        assert len(fake.requests) == 3
        [entry] = client.journal(done["id"])
        assert entry["error"]["type"] == "model_call_failed" and len(entry["error"]["attempts"]) == 3


CODE_AGENT = """
from bastion.agent import ToolDenied, ToolFailed
from bastion.agent._channel import current

def ask(fmt, body):
    return current().request("llm.chat", {"format": fmt, "request": body})

def main(input):
    out = {}
    openai = ask("openai", {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]})
    out["openai"] = openai["body"]["choices"][0]["message"]["content"]
    streamed = ask("openai", {"model": "gpt-4o", "stream": True, "messages": [{"role": "user", "content": "again"}]})
    out["events"] = len(streamed["events"])
    out["done"] = streamed["events"][-1]["data"]
    try:
        ask("anthropic", {"model": "claude", "max_tokens": 50, "messages": [{"role": "user", "content": "hey"}]})
    except Exception as exc:
        out["anthropic"] = str(exc)
    try:
        ask("bastion", {"messages": "not a list"})
    except Exception as exc:
        out["bad"] = type(exc).__name__
    return out
"""


def test_code_agents_call_models_in_wire_formats_with_keys_they_never_see(tenant: Tenant) -> None:
    key = "sk-live-4f9d2a7b1c8e6f30"
    with (
        FakeProvider(
            reply("first answer"), reply("second answer"), reply(f"I leak {key}"), api_key=key
        ) as fake,
        tenant.client() as client,
    ):
        client.apply(
            raw(
                {
                    "apiVersion": "bastion/v1",
                    "kind": "Secret",
                    "metadata": {"name": "openai-key"},
                    "spec": {
                        "stringData": {"apiKey": key},
                        "usableBy": {"providers": ["openai", "anthropic"]},
                        "destinations": [fake.openai_url],
                    },
                },
                model_policy(
                    "fake-models",
                    {
                        "provider": "openai",
                        "model": "gpt-x",
                        "baseUrl": fake.openai_url,
                        "secret": "openai-key",
                    },
                ),
                code_agent("coder", textwrap.dedent(CODE_AGENT)) | {},
            )
        )
        agent = code_agent("coder", CODE_AGENT)
        agent["spec"]["modelPolicy"] = "fake-models"
        client.apply(raw(agent))
        done = wait_finished(client, client.create_run("coder", None)["id"])
        assert done["state"] == "Succeeded", done
        result = done["result"]
        assert result["openai"] == "first answer"
        assert result["done"] == "[DONE]" and result["events"] >= 4
        # The provider echoed the key it was sent: refused, never shown, not even redacted.
        assert "carried secret 'openai-key' back" in result["anthropic"] and key not in result["anthropic"]
        assert result["bad"] == "AgentError"
        assert all(r.api_key == key for r in fake.requests)
        assert [bool(r.body.get("stream")) for r in fake.requests] == [False, True, False]
        entries = client.journal(done["id"])
        assert key not in str(entries)
        assert [e["decision"] for e in entries] == ["allow", "allow", "deny", "deny"]
        assert entries[2]["error"]["incident"]["kind"] == "secret_echo"
        assert entries[3]["error"]["type"] == "invalid_request"


def test_model_calls_need_a_model_policy(tenant: Tenant) -> None:
    source = """
from bastion.agent._channel import current

def main(input):
    try:
        current().request("llm.chat", {"request": {"messages": [{"role": "user", "content": "hi"}]}})
    except Exception as exc:
        return str(exc)
"""
    with tenant.client() as client:
        client.apply(raw(code_agent("no-policy", source)))
        done = wait_finished(client, client.create_run("no-policy", None)["id"])
        assert "names no spec.modelPolicy" in done["result"]
        [entry] = client.journal(done["id"])
        assert entry["decision"] == "deny" and entry["reasons"][0]["rule"] == "model/no-policy"


def test_a_declarative_agent_through_a_fake_openai_server(tenant: Tenant) -> None:
    with (
        FakeProvider(tool_call("fs_read", path="missing.txt"), reply("It is not there.")) as fake,
        tenant.client() as client,
    ):
        client.apply(
            raw(
                FS_READ,
                model_policy(
                    "http-models", {"provider": "openai", "model": "gpt-x", "baseUrl": fake.openai_url}
                ),
                llm_agent("reader", "http-models", tools=["fs.read"]),
                grant_for("reader", "fs.read"),
            )
        )
        done = wait_finished(client, client.create_run("reader", "read it")["id"])
        assert done["state"] == "Succeeded", done
        assert done["result"] == "It is not there."
        second = fake.requests[1].body["messages"]
        assert second[-2]["tool_calls"][0]["function"]["name"] == "fs_read"
        assert second[-1]["role"] == "tool" and second[-1]["content"].startswith("error:")


def test_the_example_declarative_agent_runs_with_the_scripted_provider(tenant: Tenant) -> None:
    from bastion.api import parse_yaml
    from bastion.testing import weather_api

    examples = Path(__file__).parent.parent / "examples" / "demo"
    docs = [
        doc.body
        for name in ("demo.yaml", "declarative.yaml")
        for doc in parse_yaml((examples / name).read_text(), name)
    ]
    token = next(d["spec"]["stringData"]["token"] for d in docs if d["kind"] == "Secret")
    with weather_api(token) as (url, seen), tenant.client() as client:
        for doc in docs:
            if doc["kind"] == "Tool" and doc["spec"]["implementation"]["type"] == "http":
                doc["spec"]["implementation"]["url"] = f"{url}/forecast"
            if doc["kind"] == "Secret":  # the API moved: so does where its key may go
                doc["spec"]["destinations"] = [f"{url}/forecast"]
        client.apply(raw(*(d for d in docs if d["metadata"]["name"] != "weather-reporter")))
        done = wait_finished(client, client.create_run("weather-briefer", "What should I pack?")["id"])
        assert done["state"] == "Succeeded", done
        assert "Lisbon is sunny" in done["result"]
        assert [s["authorized"] for s in seen] == [True, True]
        entries = client.journal(done["id"])
        assert [e["kind"] for e in entries] == ["llm", "tool", "tool", "llm"]
        assert "Light snow" in entries[1]["response"]["body"]


def test_api_completions_are_runs_under_the_same_budgets_and_journal(tenant: Tenant) -> None:
    import pytest

    from bastion.execution.sandbox import CallError

    bastion = tenant.server.bastion
    with tenant.client() as client:
        client.apply(
            raw(
                model_policy(
                    "api-models",
                    {"provider": "scripted", "model": "echo"},
                    maxOutputTokens=300,
                    budgets={"tokensPerRun": 1000, "tokensPerAgentPerDay": 310},
                )
            )
        )
        with bastion.store.read() as conn:
            tenant_id = bastion.store.tenant_by_name(conn, tenant.name).id
        body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "ping"}]}
        run_id, answer = bastion.completions.complete(
            tenant_id=tenant_id,
            namespace="default",
            caller="ci-key",
            model_policy="api-models",
            params={"format": "openai", "request": body},
        )
        assert answer["body"]["choices"][0]["message"]["content"] == "(scripted echo) ping"
        run = client.get_run(run_id)
        assert run["state"] == "Succeeded" and run["agent"] == "api-ci-key"
        [entry] = client.journal(run_id)
        assert entry["kind"] == "llm" and entry["response"]["usage"]["inputTokens"] > 0
        assert client.verify_run(run_id)["ok"]
        # The agent-per-day budget spans calls: the second reservation does not fit.
        with pytest.raises(CallError) as refused:
            bastion.completions.complete(
                tenant_id=tenant_id,
                namespace="default",
                caller="ci-key",
                model_policy="api-models",
                params={"format": "openai", "request": body},
            )
        assert "budgets.tokensPerAgentPerDay" in refused.value.message
        failed = client.list_runs()
        assert any(
            r["state"] == "Failed" and "tokensPerAgentPerDay" in (r.get("reason") or "") for r in failed
        )
        record = client.export_record(run_id)
    with tempfile.TemporaryDirectory() as scratch, ProcessBackend() as backend:
        report = Replayer(record, backend, builtin_tools()).run(Path(scratch))
    assert report.ok, report
