"""No decision for one tenant or namespace is made with another's state (DESIGN invariant 6).

Every cache, window, breaker, counter and sequence Bastion keeps is attacked here with a *twin*: a
second namespace of the same tenant, or a second tenant, holding resources of the same names
(and, since every new resource starts at resourceVersion 1, the same resourceVersions) but other
rules. The twin always goes first, so a state keyed by names alone would decide for us with the
twin's rules. The audit, keyed state by keyed state:

* compiled policies (``PolicyCache``): tenant, namespace and a digest of the specs;
* rate-limit windows (``RateWindows``): tenant, namespace, agent, limit;
* model-router breakers and latency averages: per tenant/namespace scope; a refused key is the
  caller's fault, not the target's; the providers' shared connection pools keep no cookies;
* run event ids: positions in the run's own stream, not a global sequence;
* model budgets per agent and day, and agents' trust (store-backed): tenant, namespace, agent;
* resolved secrets: per (tool or provider, secret) in one attempt's session, so each user is
  checked against the Secret's ``usableBy``;
* other per-session state (tool manifests, grants by name, counters) lives in one attempt's
  session, and the compiled policy's plans and scanners in a compiled policy that is itself per
  tenant and namespace; the warm pool and the image cache are keyed by content (backend, image
  digest, limits) and never hand one run's sandbox to another.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import httpx
import pytest

from bastion.client import BastionClient
from bastion.execution.gateway._policy import PolicyCache, RateWindows
from bastion.execution.llm import ChatRequest, Message, Route, Router, Target, default_providers
from bastion.policy import RateLimitRef
from bastion.testing import FakeProvider, fault, reply, weather_api

from ._agents import FINISHED, builtin_tool, code_agent, http_tool
from ._docs import raw
from .conftest import Tenant, unique

# --- two sides with the same names ---------------------------------------------------------


@dataclass(frozen=True)
class Side:
    """One tenant's namespace, seen through its admin key."""

    tenant: Tenant
    namespace: str

    def client(self) -> BastionClient:
        return self.tenant.client()

    def apply(self, *documents: dict[str, Any]) -> None:
        placed = [{**d, "metadata": {**d["metadata"], "namespace": self.namespace}} for d in documents]
        with self.client() as client:
            client.apply(raw(*placed))

    def run(self, agent: str, input: Any = None, *, until: Collection[str] = FINISHED) -> dict[str, Any]:
        """Start a run of ``agent`` and wait until it reaches one of ``until``."""
        with self.client() as client:
            run_id = client.create_run(agent, input, namespace=self.namespace)["id"]
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                found = client.get_run(run_id, namespace=self.namespace)
                if found["state"] in until:
                    return found
                time.sleep(0.05)
        raise AssertionError(f"run {run_id} never reached {sorted(until)}")

    def journal(self, run_id: str) -> list[dict[str, Any]]:
        with self.client() as client:
            return client.journal(run_id, namespace=self.namespace)

    def chat(self, policy: str, text: str = "hi") -> httpx.Response:
        """One call to the OpenAI-compatible endpoint under this side's ModelPolicy ``policy``."""
        return httpx.post(
            f"{self.tenant.server.url}/llm/v1/chat/completions",
            headers={"Authorization": f"Bearer {self.tenant.admin_key}"},
            json={"model": f"{self.namespace}/{policy}", "messages": [{"role": "user", "content": text}]},
            timeout=30,
        )


@pytest.fixture
def ours(tenant: Tenant) -> Side:
    with tenant.client() as client:
        client.create_namespace("prod")
    return Side(tenant, "prod")


@pytest.fixture(params=["other-namespace-same-names", "other-tenant-same-names"])
def twin(request: pytest.FixtureRequest, ours: Side) -> Side:
    if request.param == "other-namespace-same-names":
        with ours.client() as client:
            client.create_namespace("staging")
        return Side(ours.tenant, "staging")
    other: Tenant = request.getfixturevalue("other_tenant")
    with other.client() as client:
        client.create_namespace("prod")
    return Side(other, "prod")


def policy(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "bastion/v1", "kind": "Policy", "metadata": {"name": name}, "spec": spec}


def grant(name: str, agent: str, *tools: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "bastion/v1",
        "kind": "ToolGrant",
        "metadata": {"name": name},
        "spec": {"subjects": {"agents": [agent]}, "tools": list(tools), **spec},
    }


def model_policy(name: str, *targets: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "bastion/v1",
        "kind": "ModelPolicy",
        "metadata": {"name": name},
        "spec": {"targets": list(targets), **spec},
    }


def provider_secret(name: str, key: str, destination: str) -> dict[str, Any]:
    return {
        "apiVersion": "bastion/v1",
        "kind": "Secret",
        "metadata": {"name": name},
        "spec": {
            "stringData": {"apiKey": key},
            "usableBy": {"providers": ["openai"]},
            "destinations": [destination],
        },
    }


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

LISTS = """
from bastion import agent

def main(input):
    try:
        agent.tools.call("fs.list")
        return "allowed"
    except agent.ToolDenied as denied:
        return denied.reasons
"""


# --- compiled policies ---------------------------------------------------------------------


def test_a_twins_compiled_policy_never_decides_for_us(ours: Side, twin: Side) -> None:
    lenient = code_agent("writer", WRITES, tools=["fs.write"])
    strict = code_agent("writer", WRITES, tools=["fs.write"])
    strict["spec"]["errorBudget"] = {"revokeOnViolation": False}
    twin.apply(
        builtin_tool("fs.write"),
        lenient,
        grant("writes", "writer", "fs.write"),
        policy("guard", rules=[{"id": "r", "blockedPatterns": [{"pattern": "never-matches-anything"}]}]),
    )
    ours.apply(
        builtin_tool("fs.write"),
        strict,
        grant("writes", "writer", "fs.write", requireApproval=True),
        policy("guard", rules=[{"id": "r", "blockedPatterns": [{"pattern": "DROP TABLE"}]}]),
    )
    contents = {"contents": ["drop table users", "hello"]}
    theirs = twin.run("writer", contents)
    assert theirs["state"] == "Succeeded" and theirs["result"] == ["written", "written"], theirs
    # The twin's policy is compiled and cached now; ours has the same kinds, names and versions.
    mine = ours.run("writer", contents, until={"WaitingApproval", *FINISHED})
    entries = ours.journal(mine["id"])
    assert entries[0]["decision"] == "deny", "our blocked pattern must bite"
    assert any(r["rule"] == "policy/guard/r" for r in entries[0]["reasons"])
    assert mine["state"] == "WaitingApproval", "our grant asks a person first"
    with ours.client() as client:
        client.cancel_run(mine["id"], namespace=ours.namespace)


def test_the_policy_cache_keys_by_tenant_namespace_and_content() -> None:
    def manifests(pattern: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        meta = {"name": "guard", "namespace": "prod", "resourceVersion": "1"}
        rule = {"id": "r", "blockedPatterns": [{"pattern": pattern}]}
        policies = [{"kind": "Policy", "metadata": meta, "spec": {"rules": [rule]}}]
        grants = [
            {
                "kind": "ToolGrant",
                "metadata": {**meta, "name": "writes"},
                "spec": {"subjects": {"agents": ["writer"]}, "tools": ["fs.write"]},
            }
        ]
        return policies, grants

    cache = PolicyCache()
    first = cache.get(*manifests("DROP TABLE"), tenant="a", namespace="prod")
    assert cache.get(*manifests("DROP TABLE"), tenant="a", namespace="prod") is first, "a hit"
    other_content = cache.get(*manifests("rm -rf"), tenant="a", namespace="prod")
    other_tenant = cache.get(*manifests("DROP TABLE"), tenant="b", namespace="prod")
    other_namespace = cache.get(*manifests("DROP TABLE"), tenant="a", namespace="staging")
    assert len({id(first), id(other_content), id(other_tenant), id(other_namespace)}) == 4
    assert other_content.version != first.version


# --- rate-limit windows --------------------------------------------------------------------


def test_a_twins_rate_limit_windows_are_not_ours(ours: Side, twin: Side) -> None:
    limited = code_agent("limited", LISTS, tools=["fs.list"])
    limited["spec"]["errorBudget"] = {"revokeOnViolation": False}  # a refusal is an answer here
    for side in (twin, ours):
        side.apply(
            builtin_tool("fs.list"),
            limited,
            grant("lists", "limited", "fs.list", rateLimit={"calls": 1, "per": "1h"}),
            policy(
                "pace",
                rules=[
                    {
                        "id": "all",
                        "tools": ["fs.list"],
                        "rateLimit": {"calls": 1, "per": "1h", "scope": "tenant"},
                    }
                ],
            ),
        )
    assert twin.run("limited")["result"] == "allowed"
    assert ours.run("limited")["result"] == "allowed", "the twin's calls are counted in its own windows"
    again = ours.run("limited")["result"]
    assert any("limit is reached" in r for r in again), again


def test_rate_windows_are_keyed_by_tenant_and_namespace() -> None:
    windows = RateWindows()
    per_agent = RateLimitRef("grant/lists", "agent", 3600)
    per_namespace = RateLimitRef("policy/pace/all", "tenant", 3600)
    windows.record([per_agent, per_namespace], tenant="a", namespace="staging", agent="limited", now=10.0)
    for ref in (per_agent, per_namespace):
        assert windows.count(ref, tenant="a", namespace="staging", agent="limited", now=11.0) == 1
        assert windows.count(ref, tenant="a", namespace="prod", agent="limited", now=11.0) == 0
        assert windows.count(ref, tenant="b", namespace="staging", agent="limited", now=11.0) == 0
    assert windows.count(per_namespace, tenant="a", namespace="staging", agent="other", now=11.0) == 1
    assert windows.count(per_agent, tenant="a", namespace="staging", agent="other", now=11.0) == 0


# --- model-router breakers -----------------------------------------------------------------

RIGHT_KEY = "sk-the-right-key-4c1f9e"


@pytest.fixture
def upstream() -> Iterator[FakeProvider]:
    with FakeProvider(default=reply("fine"), api_key=RIGHT_KEY) as fake:
        yield fake


def _models(side: Side, url: str, key: str) -> None:
    side.apply(
        provider_secret("upstream", key, url),
        model_policy(
            "team-models",
            {"provider": "openai", "model": "gpt-x", "baseUrl": url, "secret": "upstream"},
            retries=0,
        ),
    )


def test_a_twins_wrong_key_never_takes_our_target_offline(
    ours: Side, twin: Side, upstream: FakeProvider
) -> None:
    _models(twin, upstream.openai_url, "sk-a-wrong-key-000000")
    _models(ours, upstream.openai_url, RIGHT_KEY)
    for _ in range(7):  # more than the router's breaker threshold
        refused = twin.chat("team-models")
        assert refused.status_code >= 400 and "401" in refused.text, refused.text
    assert "circuit open" not in twin.chat("team-models").text, "a refused key is not the target's fault"
    answered = ours.chat("team-models")
    assert answered.status_code == 200, answered.text
    assert answered.json()["choices"][0]["message"]["content"] == "fine"


def test_a_twins_failing_target_opens_only_the_twins_breaker(
    ours: Side, twin: Side, upstream: FakeProvider
) -> None:
    _models(twin, upstream.openai_url, RIGHT_KEY)
    _models(ours, upstream.openai_url, RIGHT_KEY)
    threshold = twin.tenant.server.bastion.models.router.breaker_threshold
    upstream.push(*(fault(503) for _ in range(threshold)))
    for _ in range(threshold):
        assert twin.chat("team-models").status_code >= 500
    skipped = twin.chat("team-models")
    assert "circuit open" in skipped.text, "the twin's own breaker opened"
    assert len(upstream.requests) == threshold
    answered = ours.chat("team-models")
    assert answered.status_code == 200, answered.text
    assert answered.json()["choices"][0]["message"]["content"] == "fine"


class _CookieSetter(BaseHTTPRequestHandler):
    """An OpenAI-compatible answer that sets a session cookie, as providers' edges do."""

    seen: ClassVar[list[str | None]] = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        type(self).seen.append(self.headers.get("Cookie"))
        body = json.dumps(
            {
                "id": "x",
                "object": "chat.completion",
                "created": 0,
                "model": "gpt-x",
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}
                ],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Set-Cookie", "session=tenant-a-affinity; Path=/")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_one_callers_cookies_never_ride_on_anothers_model_calls() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _CookieSetter)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _CookieSetter.seen = []
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/v1"
        route = Route(targets=(Target(provider="openai", model="gpt-x", base_url=url),), retries=0)
        hello = ChatRequest(messages=(Message(role="user", content="hi"),))
        with Router(default_providers()) as router:
            for scope in ("tenant-a/prod", "tenant-b/prod", "tenant-a/prod"):
                assert router.complete(route, hello, scope=scope).message.content == "ok"
    finally:
        server.shutdown()
        server.server_close()
    assert _CookieSetter.seen == [None, None, None], "no cookie is kept between calls"


# --- run events ----------------------------------------------------------------------------


def _events(side: Side, run_id: str, last_event_id: str | None = None) -> list[tuple[str, str]]:
    """(id, type) of each event the SSE stream sends."""
    headers = {"Authorization": f"Bearer {side.tenant.admin_key}"}
    if last_event_id is not None:
        headers["Last-Event-ID"] = last_event_id
    url = f"{side.tenant.server.url}/api/v1/namespaces/{side.namespace}/runs/{run_id}/events"
    found: list[tuple[str, str]] = []
    with httpx.stream("GET", url, params={"follow": "false"}, headers=headers, timeout=30) as response:
        event_id = ""
        for line in response.iter_lines():
            if line.startswith("id: "):
                event_id = line[4:]
            elif line.startswith("event: ") and line[7:] != "end":
                found.append((event_id, line[7:]))
    return found


def test_event_ids_number_each_run_on_its_own(ours: Side, twin: Side) -> None:
    for side in (ours, twin):
        side.apply(code_agent("echo", "def main(input):\n    print('working')\n    return input\n"))
    first = ours.run("echo", 1)
    theirs = [twin.run("echo", n) for n in range(3)]  # the twin's activity between our two runs
    second = ours.run("echo", 2)
    for side, run in ((ours, first), (ours, second), *((twin, r) for r in theirs)):
        ids = [event_id for event_id, _ in _events(side, run["id"])]
        assert ids == [str(n) for n in range(1, len(ids) + 1)], "ids count this run's events, nothing else"
    every = _events(ours, second["id"])
    assert _events(ours, second["id"], last_event_id="2") == every[2:], "Last-Event-ID resumes the stream"
    with ours.client() as client:
        later = list(client.events(second["id"], namespace=ours.namespace, after=3))
    assert [str(e["id"]) for e in later] == [event_id for event_id, _ in every[3:]]


def test_a_malformed_last_event_id_is_a_clear_error(ours: Side) -> None:
    ours.apply(code_agent("echo", "def main(input):\n    return input\n"))
    run = ours.run("echo")
    url = f"{ours.tenant.server.url}/api/v1/namespaces/{ours.namespace}/runs/{run['id']}/events"
    for bad in ("²".encode("latin-1"), b"99999999999999999999", b"-1"):
        headers = {b"Authorization": f"Bearer {ours.tenant.admin_key}".encode(), b"Last-Event-ID": bad}
        response = httpx.get(url, headers=headers)
        assert response.status_code == 400, (bad, response.text)
        assert response.json()["field"] == "Last-Event-ID"


# --- store-backed counters: model budgets and trust ----------------------------------------


def test_a_twin_exhausting_its_agents_daily_budget_leaves_ours_untouched(ours: Side, twin: Side) -> None:
    scripted = {"provider": "scripted", "model": "echo"}
    for side in (twin, ours):
        side.apply(model_policy("tiny", scripted, maxOutputTokens=20, budgets={"tokensPerAgentPerDay": 120}))
    statuses = [twin.chat("tiny", "a question").status_code for _ in range(12)]
    assert 429 in statuses, f"the twin's budget was never exhausted: {statuses}"
    # The endpoint's calls are made by agent ``api-<key name>``: the same name on both sides.
    assert ours.chat("tiny", "a question").status_code == 200


def test_a_twin_revoked_agent_leaves_ours_running(ours: Side, twin: Side) -> None:
    for side in (twin, ours):
        side.apply(code_agent("worker", "def main(input):\n    return 'done'\n"))
    with twin.client() as client:
        client.change_trust("worker", "revoke", reason=unique("twin misbehaved"), namespace=twin.namespace)
        assert client.trust("worker", namespace=twin.namespace)["revoked"]
    with ours.client() as client:
        assert not client.trust("worker", namespace=ours.namespace)["revoked"]
    assert ours.run("worker")["state"] == "Succeeded"


# --- resolved secrets ----------------------------------------------------------------------

FORECAST_TOKEN = "forecast-token-7e2c41d9"

BORROWS = """
from bastion import agent

def main(input):
    out = []
    for tool in ("weather", "leaky"):
        try:
            agent.tools.call(tool, city="Oslo")
            out.append(tool + ": called")
        except agent.ToolDenied as denied:
            out.append(tool + ": denied")
        except agent.ToolFailed as failed:
            out.append(tool + ": " + str(failed))
    return out
"""


def test_a_secret_resolved_for_one_tool_is_not_handed_to_another(ours: Side) -> None:
    secret = {
        "apiVersion": "bastion/v1",
        "kind": "Secret",
        "metadata": {"name": "weather-key"},
        "spec": {
            "stringData": {"token": FORECAST_TOKEN},
            "usableBy": {"tools": ["weather"]},
        },
    }
    header = {"Authorization": "Bearer {secret:weather-key/token}"}
    with weather_api(FORECAST_TOKEN) as (url, seen):
        secret["spec"]["destinations"] = [url]
        ours.apply(
            secret,
            # Both declare the secret; only "weather" is in its usableBy. "leaky" is a developer's
            # tool pointed at the same place: it must not get the key "weather" resolved first.
            http_tool("weather", f"{url}/forecast", method="GET", headers=header, secrets=["weather-key"]),
            http_tool("leaky", f"{url}/forecast", method="GET", headers=header, secrets=["weather-key"]),
            code_agent("borrower", BORROWS, tools=["weather", "leaky"]),
            grant("calls", "borrower", "weather", "leaky"),
        )
        done = ours.run("borrower")
        assert done["state"] == "Succeeded", done["reason"]
        weather, leaky = done["result"]
        assert weather == "weather: called"
        assert "may not be used by tool 'leaky'" in leaky, leaky
        assert [r["authorized"] for r in seen] == [True], "the key reached only the tool it names"
