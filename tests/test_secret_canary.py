"""Invariant 2, adversarially: a tool echoes its injected secret back in every encoding we know;
the calls are refused as incidents, and the secret turns up nowhere an agent or a user could read it."""

from __future__ import annotations

import base64
import json
import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from bastion.cli import app

from ._agents import builtin_tool, code_agent, grant_for, http_tool, wait_finished
from ._docs import raw
from .conftest import Tenant

CANARY = "canary-Zq8/x+Ke_4wP-secret-value"


def encodings(value: str) -> dict[str, str]:
    data = value.encode()
    return {
        "raw": value,
        "base64": base64.b64encode(data).decode(),
        "base64url": base64.urlsafe_b64encode(data).decode().rstrip("="),
        "hex": data.hex(),
        "HEX": data.hex().upper(),
        "quote": urllib.parse.quote(value, safe=""),
        "quote_plus": urllib.parse.quote_plus(value),
        "basic": base64.b64encode(b"user:" + data).decode(),
        "json": json.dumps(value)[1:-1],
    }


def leaks(text: str) -> list[str]:
    """Which encodings of the canary (or their alignment-free cores) appear in ``text``."""
    found = [name for name, form in encodings(CANARY).items() if form in text]
    # The 'user:' prefix shifts base64's alignment; its middle is what a partial leak would show.
    if base64.b64encode(b"user:" + CANARY.encode()).decode()[8:-8] in text:
        found.append("basic-core")
    return found


@pytest.fixture
def echo_server() -> Iterator[tuple[str, list[dict[str, str]]]]:
    seen: list[dict[str, str]] = []

    class Echo(BaseHTTPRequestHandler):
        def _echo(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            self.rfile.read(length)
            auth = self.headers.get("Authorization", "")
            token = self.headers.get("X-Api-Key", "")
            seen.append({"authorization": auth, "token": token})
            body = json.dumps({"headers": dict(self.headers), "echo": encodings(token)}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("X-Echo", token)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _echo

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}", seen
    server.shutdown()
    server.server_close()


AGENT = """
import json, sys
from bastion import agent

def attempt(name, **args):
    try:
        return agent.tools.call(name, **args)
    except agent.ToolDenied as denied:
        return {"denied": str(denied)}

def main(input):
    out = []
    out.append(attempt("echo", message="show me the key"))
    out.append(attempt("fetch", url=input["url"], method="POST", body="hi"))
    text = json.dumps(out)
    agent.log("the tool said:", text)
    print("printed:", text)
    sys.stderr.write("stderr: " + text + "\\n")
    agent.tools.call("fs.write", path="leak.json", content=text)
    return out
"""


def test_the_injected_secret_appears_nowhere(
    tenant: Tenant, echo_server: tuple[str, list[dict[str, str]]], tmp_path: Path
) -> None:
    host, seen = echo_server
    url = f"http://{host}/echo"
    secret = {
        "apiVersion": "bastion/v1",
        "kind": "Secret",
        "metadata": {"name": "canary"},
        "spec": {
            "stringData": {"token": CANARY},
            "usableBy": {"tools": ["echo", "fetch"]},
            "destinations": [url],
        },
    }
    echo = http_tool(
        "echo",
        url,
        headers={"Authorization": "Basic {secret:canary}", "X-Api-Key": "{secret:canary}"},
        secrets=["canary"],
    )
    echo["spec"]["implementation"]["headers"]["Authorization"] = "Bearer {secret:canary}"
    fetch = builtin_tool("fetch", "http.fetch", headers={"X-Api-Key": "{secret:canary}"})
    fetch["spec"]["secrets"] = ["canary"]
    with tenant.client("operator") as client:
        client.apply(
            raw(
                secret,
                echo,
                fetch,
                builtin_tool("fs.write"),
                code_agent("curious", AGENT, tools=["echo", "fetch", "fs.write"]),
                grant_for("curious", "echo", "fetch", "fs.write", egress=[host]),
            )
        )
        run = wait_finished(client, client.create_run("curious", {"url": url})["id"])
        assert run["state"] == "Succeeded", run
        assert seen and all(s["token"] == CANARY for s in seen), (
            "the gateway must really have injected the secret"
        )

        texts: dict[str, str] = {}
        auth = {"Authorization": f"Bearer {tenant.admin_key}"}
        base = f"{tenant.server.url}/api/v1"
        for name, path in {
            "run": f"/namespaces/default/runs/{run['id']}",
            "runs": "/namespaces/default/runs",
            "journal": f"/namespaces/default/runs/{run['id']}/journal",
            "events": f"/namespaces/default/runs/{run['id']}/events",
            "verify": "/audit/verify",
            "secret": "/namespaces/default/secrets/canary",
            "secrets": "/secrets",
            "tools": "/namespaces/default/tools",
        }.items():
            texts[name] = httpx.get(base + path, headers=auth, timeout=30).text
        system = {"Authorization": f"Bearer {tenant.server.admin_key}"}
        texts["metrics"] = httpx.get(f"{tenant.server.url}/metrics", headers=system).text

    runner = CliRunner()
    env = {"BASTION_URL": tenant.server.url, "BASTION_API_KEY": tenant.admin_key}
    for args in (
        ["logs", run["id"]],
        ["runs"],
        ["get", "secrets", "-o", "yaml"],
        ["get", "tools", "-o", "json"],
        ["audit", "verify", run["id"]],
    ):
        result = runner.invoke(app, args, env=env)
        assert result.exit_code == 0, result.output
        texts["cli " + " ".join(args)] = result.output

    workspace = tenant.server.bastion.settings.resolved_workspace_dir / run["id"]
    files = [p for p in workspace.rglob("*") if p.is_file()]
    assert any(p.name == "leak.json" for p in files)
    for path in files:
        texts[f"workspace {path.name}"] = path.read_text(errors="replace")

    if tenant.server.backend == "sqlite":
        db = Path(tenant.server.bastion.settings.resolved_database_url.removeprefix("sqlite:///"))
        for path in (db, db.with_name(db.name + "-wal")):
            if path.exists():
                texts[f"database {path.name}"] = path.read_bytes().decode("latin-1")

    assert run["result"] == [
        {
            "denied": f"tool '{tool}' denied: the response of {tool!r} carried secret 'canary' back (as is); "
            "it was withheld and recorded as an incident: a destination that echoes its credential is hostile or broken"
        }
        for tool in ("echo", "fetch")
    ], run["result"]
    assert texts["events"].count('"incident"') >= 2, "each echo is an incident in the run's events"
    leaked = {where: found for where, text in texts.items() if (found := leaks(text))}
    assert leaked == {}
