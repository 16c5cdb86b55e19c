"""Invariant 2, the redactor is not an oracle, and what is stored is scrubbed.

The agent guesses a short secret the way a real one would: it writes each candidate to a file and
reads it back, and sends each to an echo server through a tool that carries no secret. What comes
back must be exactly what it sent, the real secret included (a redacted read-back would name the
winner). What is stored (the journal's requests and responses, the signed record, the database)
must hold no candidate that equals the secret, and replay must still match on the raw request.

A second tenant has a Secret of the same name with another value, applied first."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bastion.observe.journal import canonical, digest
from bastion.observe.record import verify_record

from ._agents import builtin_tool, code_agent, grant_for, http_tool, wait_finished
from ._docs import raw
from ._hostile import Answer, Seen, hostile_server
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
