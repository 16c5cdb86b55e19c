"""Invariant 2, the redactor is not an oracle, and what is stored is scrubbed.

The agent guesses a short secret the way a real one would: it writes each candidate to a file and
reads it back, and sends each to an echo server through a tool that carries no secret. What comes
back must be exactly what it sent, the real secret included (a redacted read-back would name the
winner). What is stored (the journal's requests and responses, the signed record, the database)
must hold no candidate that equals the secret, and replay must still match on the raw request.

A second tenant has a Secret of the same name with another value, applied first."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from bastion.client import BastionClient
from bastion.control import Bastion, create_app
from bastion.observe.journal import canonical, digest
from bastion.observe.record import verify_record
from bastion.testing import serve_in_thread

from ._agents import builtin_tool, code_agent, grant_for, http_tool, wait_finished
from ._docs import raw
from ._hostile_server import Answer, Seen, hostile_server
from .conftest import Tenant

SECRET = "pin-004217-x"
"""Six digits of entropy: the size of secret a read-back oracle brought down in ~15 calls."""

AGENT = """
from bastion import agent

def main(input):
    same, echoed = [], []
    for n in range(4214, 4221):
        candidate = f"pin-{n:06d}-x"
        agent.tools.call("fs.write", path=f"guess-{n}.txt", content=candidate)
        read = agent.tools.call("fs.read", path=f"guess-{n}.txt")
        same.append(read["content"] == candidate)
        echo = agent.tools.call("echo", url=input["echo"], method="POST", body=candidate)
        echoed.append(echo["body"] == candidate)
    return {"same": same, "echoed": echoed}
"""


def _apply(tenant: Tenant, secret: str, echo_host: str) -> None:
    with tenant.client() as client:
        client.apply(
            raw(
                {
                    "apiVersion": "bastion/v1",
                    "kind": "Secret",
                    "metadata": {"name": "pin"},
                    "spec": {
                        "stringData": {"token": secret},
                        "usableBy": {"tools": ["bank"]},
                        "destinations": ["https://bank.example.com/api/"],
                    },
                },
                # The agent may use a tool that carries the secret, so the redactor knows it.
                http_tool(
                    "bank",
                    "https://bank.example.com/api/pay",
                    headers={"X-Pin": "{secret:pin}"},
                    secrets=["pin"],
                ),
                builtin_tool("fs.write"),
                builtin_tool("fs.read"),
                builtin_tool("echo", "http.fetch"),
                code_agent("guesser", AGENT, tools=["bank", "fs.write", "fs.read", "echo"]),
                grant_for("guesser", "bank", "fs.write", "fs.read", "echo", egress=[echo_host]),
            )
        )


def _echo(seen: Seen) -> Answer:
    return Answer(200, [("Content-Type", "text/plain")], seen.body)


def test_what_the_agent_reads_back_never_tells_it_which_value_is_a_secret(
    tenant: Tenant, other_tenant: Tenant
) -> None:
    with hostile_server(_echo) as echo:
        _apply(other_tenant, "pin-004218-x", echo.host)
        _apply(tenant, SECRET, echo.host)
        with tenant.client() as client:
            run = wait_finished(client, client.create_run("guesser", {"echo": f"{echo.url}/"})["id"])
            assert run["state"] == "Succeeded", run
            journal = client.journal(run["id"])
            record = client.export_record(run["id"])
            verdict = client.verify_run(run["id"])

    assert run["result"] == {"same": [True] * 7, "echoed": [True] * 7}, (
        "the answers differed for one candidate"
    )

    stored = json.dumps([journal, record])
    assert SECRET not in stored
    assert "[REDACTED:pin]" in stored, "the secret the agent wrote is scrubbed where it is stored"
    assert "pin-004216-x" in stored, "values that are not secrets are stored as they were"
    assert verdict["ok"], verdict
    assert verify_record(record).ok, "a record with scrubbed requests still verifies"

    # Replay compares the raw request's hash: the stored request is scrubbed, its hash is not.
    write = next(
        e
        for e in journal
        if e["request"]["params"]["args"].get("path") == "guess-4217.txt"
        and e["request"]["params"]["name"] == "fs.write"
    )
    assert write["request"]["params"]["args"]["content"] == "[REDACTED:pin]"
    raw_request: dict[str, Any] = {
        "method": "tool.call",
        "params": {"name": "fs.write", "args": {"path": "guess-4217.txt", "content": SECRET}},
    }
    assert write["requestHash"] == digest(canonical(raw_request))

    if tenant.server.backend == "sqlite":
        db = Path(tenant.server.bastion.settings.resolved_database_url.removeprefix("sqlite:///"))
        for path in (db, db.with_name(db.name + "-wal")):
            if path.exists():
                assert SECRET.encode() not in path.read_bytes(), f"the secret is in {path.name}"


RESUMED = """
from bastion import agent

def main(input):
    echoed = []
    for n in range(input["first"], input["last"]):
        candidate = f"pin-{n:06d}-x"
        echo = agent.tools.call("echo", url=input["echo"], method="POST", body=candidate)
        echoed.append(echo["body"] == candidate)
    agent.tools.call("gate", path="done.txt", content="waited")  # suspends until approved
    return {"echoed": echoed}
"""


def _wait_state(client: Any, run_id: str, state: str) -> None:
    deadline = time.monotonic() + 30
    while client.get_run(run_id)["state"] != state:
        assert time.monotonic() < deadline, client.get_run(run_id)
        time.sleep(0.05)


def test_a_resumed_agent_is_not_shown_the_scrubbed_answer_it_first_saw_raw(tenant: Tenant) -> None:
    """An approval suspends the run; the next attempt replays the echo calls from the journal,
    where the one that echoed the secret is stored scrubbed. Answering with that copy would name
    the winning candidate, so the replay stops there instead, and the run fails saying why."""
    with hostile_server(_echo) as echo:
        _apply(tenant, SECRET, echo.host)
        with tenant.client() as client:
            agent = code_agent("resumer", RESUMED, tools=["bank", "echo", "gate"])
            client.apply(
                raw(
                    builtin_tool("gate", "fs.write"),
                    agent,
                    grant_for("resumer", "bank", "echo", egress=[echo.host]),
                    grant_for("resumer", "gate", requireApproval=True) | {"metadata": {"name": "gated"}},
                )
            )
            outcomes: dict[str, dict[str, Any]] = {}
            for label, first in (("misses", 4210), ("hits", 4216)):
                run = client.create_run(
                    "resumer", {"echo": f"{echo.url}/", "first": first, "last": first + 3}
                )
                _wait_state(client, run["id"], "WaitingApproval")
                [approval] = [a for a in client.list_approvals() if a["run"] == run["id"]]
                client.decide_approval(approval["id"], approve=True, reason="go on")
                outcomes[label] = wait_finished(client, run["id"])

    assert outcomes["misses"]["state"] == "Succeeded", outcomes["misses"]
    assert outcomes["misses"]["result"] == {"echoed": [True, True, True]}
    hits = outcomes["hits"]
    assert hits["state"] == "Failed", hits
    assert "scrubbed of a secret" in hits["reason"] and SECRET not in json.dumps(hits)


FAILING = """
from bastion import agent

def main(input):
    quoted = []
    for n in range(4215, 4220):
        candidate = f"pin-{n:06d}-x"
        try:
            agent.tools.call("fs.read", path=candidate)
        except agent.ToolFailed as failed:
            quoted.append(candidate in str(failed))
    return {"quoted": quoted}
"""


def test_an_error_quoting_a_guess_is_raw_to_the_agent_and_scrubbed_in_exported_spans(
    make_bastion: Callable[..., Bastion],
) -> None:
    bastion = make_bastion(lease_seconds=2.0, poll_seconds=0.05)
    spans = InMemorySpanExporter()
    bastion.telemetry.add_exporter(spans)
    first = bastion.bootstrap()
    assert first is not None
    thread, stop = bastion.start_worker()
    try:
        with serve_in_thread(create_app(bastion)) as url, BastionClient(url, first.admin_key) as client:
            client.apply(
                raw(
                    {
                        "apiVersion": "bastion/v1",
                        "kind": "Secret",
                        "metadata": {"name": "pin"},
                        "spec": {"stringData": {"token": SECRET}, "usableBy": {"tools": ["bank"]}},
                    },
                    http_tool(
                        "bank", "https://bank.example.com/pay", headers={"X": "{secret:pin}"}, secrets=["pin"]
                    ),
                    builtin_tool("fs.read"),
                    code_agent("failer", FAILING, tools=["bank", "fs.read"]),
                    grant_for("failer", "fs.read"),
                )
            )
            run = wait_finished(client, client.create_run("failer", None)["id"])
            journal = client.journal(run["id"])
    finally:
        stop.set()
        thread.join(timeout=30)
    assert run["result"] == {"quoted": [True] * 5}, (
        "the agent's own path comes back in the error as it sent it"
    )
    exported = [
        json.dumps(
            [
                s.name,
                dict(s.attributes or {}),
                s.status.description,
                [dict(e.attributes or {}) for e in s.events],
            ]
        )
        for s in spans.get_finished_spans()
    ]
    assert any("pin-004216-x" in text for text in exported), "the spans do carry the errors"
    assert not any(SECRET in text for text in exported)
    assert SECRET not in json.dumps(journal)
