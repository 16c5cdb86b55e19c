"""Model calls from outside and from inside (issue 5, items 4 and 5): the OpenAI-compatible
``/llm/v1/chat/completions`` endpoint driven by the official SDK, and a code agent whose plain HTTP
client reaches the gateway through the in-sandbox endpoint with its per-run token."""

from __future__ import annotations

import openai
import pytest

from bastion.testing import FakeProvider, reply

from ._agents import code_agent, wait_finished
from ._docs import raw
from .conftest import Tenant
from .test_llm_agent import model_policy

SCRIPTED = {"provider": "scripted", "model": "echo"}


def test_the_openai_sdk_talks_to_the_endpoint_under_a_model_policy(tenant: Tenant) -> None:
    key = "sk-upstream-91bd0e7f"
    with (
        FakeProvider(reply("governed hello"), reply("streamed hello"), api_key=key) as fake,
        tenant.client() as client,
    ):
        client.apply(
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
                },
                model_policy(
                    "team-models",
                    {
                        "provider": "openai",
                        "model": "gpt-x",
                        "baseUrl": fake.openai_url,
                        "secret": "upstream",
                    },
                ),
            )
        )
        sdk = openai.OpenAI(base_url=f"{tenant.server.url}/llm/v1", api_key=tenant.admin_key, max_retries=0)
        answer = sdk.chat.completions.create(
            model="team-models", messages=[{"role": "user", "content": "hi"}]
        )
        assert answer.choices[0].message.content == "governed hello"
        chunks = list(
            sdk.chat.completions.create(
                model="default/team-models", messages=[{"role": "user", "content": "again"}], stream=True
            )
        )
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "streamed hello"
        assert all(r.api_key == key for r in fake.requests), "the provider key is injected by the gateway"

        runs = [r for r in client.list_runs(limit=10) if r["agent"].startswith("api-")]
        assert len(runs) == 2 and all(r["state"] == "Succeeded" for r in runs)
        [entry] = client.journal(runs[0]["id"])
        assert entry["kind"] == "llm" and key not in str(entry)

        with pytest.raises(openai.NotFoundError):
            sdk.chat.completions.create(model="no-such-policy", messages=[{"role": "user", "content": "x"}])
        with pytest.raises(openai.BadRequestError) as bad:
            sdk.chat.completions.create(model="bad/name/here!", messages=[])
        assert "model" in str(bad.value)
    outsider = openai.OpenAI(base_url=f"{tenant.server.url}/llm/v1", api_key="bst_nope_nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        outsider.chat.completions.create(model="team-models", messages=[{"role": "user", "content": "hi"}])


def test_a_budget_refusal_is_a_429_the_sdk_does_not_retry(tenant: Tenant) -> None:
    with tenant.client() as client:
        client.apply(raw(model_policy("tiny", SCRIPTED, maxOutputTokens=50, budgets={"tokensPerRun": 10})))
    sdk = openai.OpenAI(base_url=f"{tenant.server.url}/llm/v1", api_key=tenant.admin_key, max_retries=3)
    with pytest.raises(openai.RateLimitError) as refused:
        sdk.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "a long question"}])
    assert "tokensPerRun" in str(refused.value)
    assert refused.value.response.headers.get("x-should-retry") == "false"


AGENT = """
import json, os, urllib.request

def main(input):
    request = urllib.request.Request(
        os.environ["OPENAI_BASE_URL"] + "/chat/completions",
        data=json.dumps({"model": "anything", "messages": [{"role": "user", "content": input}]}).encode(),
        headers={"Authorization": "Bearer " + os.environ["OPENAI_API_KEY"], "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        body = json.loads(response.read())
    return {"answer": body["choices"][0]["message"]["content"], "key": os.environ["OPENAI_API_KEY"][:8]}
"""


def test_a_code_agent_reaches_the_gateway_through_the_in_sandbox_endpoint(tenant: Tenant) -> None:
    with tenant.client() as client:
        agent = code_agent("plain-http", AGENT)
        agent["spec"]["modelPolicy"] = "echoes"
        client.apply(raw(model_policy("echoes", SCRIPTED), agent))
        first = wait_finished(client, client.create_run("plain-http", "ping")["id"])
        assert first["state"] == "Succeeded", first["reason"]
        assert first["result"] == {"answer": "(scripted echo) ping", "key": "bst-run-"}
        [entry] = client.journal(first["id"])
        assert entry["kind"] == "llm" and entry["request"]["params"]["format"] == "openai"
        assert "_meta" not in entry["request"]["params"], "trace context is not journaled"
        assert "bst-run-" not in str(entry), "the run's token never leaves the sandbox"
