"""ExecutionRecords: exported signed, verified offline; every tamper is found (SQLite and PostgreSQL)."""

from __future__ import annotations

import base64
import copy
import json
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import update
from typer.testing import CliRunner

from bastion.cli import app
from bastion.observe.journal import Entry, journal_entries
from bastion.observe.record import build_record, verify_record

from ._agents import builtin_tool, code_agent, grant_for, wait_finished
from ._docs import raw
from .conftest import Tenant

AGENT = """
from bastion import agent

def main(input):
    agent.tools.call("fs.write", path="a.txt", content="z" * 20_000)
    size = len(agent.tools.call("fs.read", path="a.txt")["content"])
    return {"size": size, "when": agent.now().year, "id": agent.uuid()}
"""


def finished_run(tenant: Tenant, name: str = "recorded") -> str:
    with tenant.client() as client:
        client.apply(
            raw(
                builtin_tool("fs.write"),
                builtin_tool("fs.read"),
                code_agent(name, AGENT, tools=["fs.write", "fs.read"]),
                grant_for(name, "fs.write", "fs.read"),
            )
        )
        run = wait_finished(client, client.create_run(name)["id"])
    assert run["state"] == "Succeeded", run
    return str(run["id"])


@pytest.fixture
def record(tenant: Tenant) -> dict[str, Any]:
    run_id = finished_run(tenant)
    with tenant.client() as client:
        return client.export_record(run_id)


def test_an_exported_record_verifies_offline(tenant: Tenant, record: dict[str, Any]) -> None:
    assert record["format"] == "bastion.record/v1"
    assert record["agent"]["metadata"]["resourceVersion"] == "1"
    assert record["run"]["result"]["size"] == 20_000
    assert len(record["entries"]) == 4 and record["blobs"]
    with tenant.client() as client:
        pinned = base64.b64decode(client.record_key()["publicKey"])
    verdict = verify_record(record, public_key=pinned)
    assert verdict.ok, verdict
    assert verdict.entries == 4


def _tampered(record: dict[str, Any], how: str) -> dict[str, Any]:
    forged = copy.deepcopy(record)
    entries = forged["entries"]
    match how:
        case "edit":
            entries[2]["decision"] = "deny"
        case "delete":
            del entries[1]
        case "insert":
            entries.insert(2, copy.deepcopy(entries[2]))
        case "reorder":
            entries[1], entries[2] = entries[2], entries[1]
        case "blob":
            key = entries[0]["request"]["$blob"]
            forged["blobs"][key] = base64.b64encode(b'"forged"').decode()
        case "result":
            forged["run"]["result"]["size"] = 1
        case "spec":
            forged["agent"]["spec"]["tools"].append("http.fetch")
        case "truncate":
            del entries[-1]
            forged["chain"] = {"entries": 3, "head": entries[-1]["hash"]}
    return forged


@pytest.mark.parametrize(
    ("how", "seq"),
    [
        ("edit", 3),
        ("delete", 3),
        ("insert", 3),
        ("reorder", 3),
        ("blob", 1),
        ("result", None),
        ("spec", None),
        ("truncate", None),
    ],
)
def test_every_alteration_of_a_record_is_found(record: dict[str, Any], how: str, seq: int | None) -> None:
    verdict = verify_record(_tampered(record, how))
    assert not verdict.ok
    assert verdict.broken_seq == seq
    assert verdict.reason


def test_swapped_signatures_are_found(tenant: Tenant) -> None:
    first, second = finished_run(tenant, "one"), finished_run(tenant, "two")
    with tenant.client() as client:
        a, b = client.export_record(first), client.export_record(second)
    a["signature"], b["signature"] = b["signature"], a["signature"]
    assert not verify_record(a).ok
    assert not verify_record(b).ok


def test_a_record_re_signed_with_another_key_is_refused_when_the_key_is_pinned(
    tenant: Tenant, record: dict[str, Any]
) -> None:

    forged_key = Ed25519PrivateKey.generate()
    entries = [
        Entry(
            run_id=record["run"]["id"],
            seq=e["seq"],
            attempt=e["attempt"],
            kind=e["kind"],
            request=e["request"],
            request_hash=e["requestHash"],
            decision=e["decision"],
            reasons=e["reasons"],
            response=e["response"],
            error=e["error"],
            started_at=datetime.fromisoformat(e["startedAt"]),
            duration_us=e["durationUs"],
            prev_hash=e["prevHash"],
            hash=e["hash"],
        )
        for e in record["entries"]
    ]
    blobs = {k: base64.b64decode(v) for k, v in record["blobs"].items()}
    resigned = build_record(
        run=record["run"], agent=record["agent"], entries=entries, blobs=blobs, signing_key=forged_key
    )
    assert verify_record(resigned).ok  # consistent in itself...
    with tenant.client() as client:
        pinned = base64.b64decode(client.record_key()["publicKey"])
    verdict = verify_record(resigned, public_key=pinned)
    assert not verdict.ok  # ...but not signed by this tenant
    assert "another key" in (verdict.reason or "")


def test_a_row_edited_in_the_database_shows_in_the_export(tenant: Tenant) -> None:
    run_id = finished_run(tenant)
    with tenant.server.bastion.store.write() as conn:
        conn.execute(
            update(journal_entries)
            .where(journal_entries.c.run_id == run_id, journal_entries.c.seq == 3)
            .values(response=json.loads('"2099-01-01T00:00:00+00:00"'))
        )
    with tenant.client() as client:
        verdict = verify_record(client.export_record(run_id))
    assert not verdict.ok
    assert verdict.broken_seq == 3


def test_cli_export_and_offline_verify(tenant: Tenant, tmp_path: Path) -> None:
    run_id = finished_run(tenant)
    runner = CliRunner()
    env = {"BASTION_URL": tenant.server.url, "BASTION_API_KEY": tenant.admin_key}
    path = tmp_path / "run.json"
    result = runner.invoke(app, ["record", "export", run_id, "-o", str(path)], env=env)
    assert result.exit_code == 0, result.output
    key = runner.invoke(app, ["record", "key"], env=env).output.split()[-1]
    offline = {"BASTION_URL": "http://127.0.0.1:9", "BASTION_API_KEY": ""}
    result = runner.invoke(app, ["record", "verify", str(path), "--public-key", key], env=offline)
    assert result.exit_code == 0 and "ok" in result.output, result.output
    result = runner.invoke(app, ["record", "verify", str(path)], env=offline)
    assert result.exit_code == 3 and "UNPINNED" in result.output, result.output
    forged = json.loads(path.read_text())
    forged["entries"][1]["response"] = {"content": "forged"}
    path.write_text(json.dumps(forged))
    result = runner.invoke(app, ["record", "verify", str(path)], env=offline)
    assert result.exit_code == 1
    assert "BROKEN at seq 2" in result.output
    path.write_text("{not json")
    result = runner.invoke(app, ["record", "verify", str(path)], env=offline)
    assert result.exit_code == 1 and "is not JSON" in result.output
