"""Invariant 2, provider errors: a model provider at a destination its Secret allows answers with
an error that quotes the API key it was sent (a 401 echoing the ``Authorization`` header, a
streamed ``error`` event). A failure's reason reaches the agent and the developer unredacted (no
redaction oracle), so it must never carry the provider's text: neither the agent (through the
in-sandbox OpenAI and Anthropic endpoints), nor a developer calling ``/llm/v1/chat/completions``,
nor anything stored sees the key.

A second tenant holds a Secret and a ModelPolicy of the same names with another key, aimed at the
same provider: each tenant's key is searched for in both tenants' outputs."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from bastion.execution.llm import BadChat
from bastion.execution.llm._anthropic import _EventCollector  # pyright: ignore[reportPrivateUsage]
from bastion.execution.llm._openai import _ChunkCollector  # pyright: ignore[reportPrivateUsage]
from bastion.execution.llm._provider import status_failure

from ._agents import code_agent, wait_finished
from ._docs import raw
from ._hostile_server import Answer, Seen, hostile_server
from .conftest import Tenant
from .test_llm_agent import model_policy

KEY = "sk-live-Pq7w-Ze3r-Ty9u-Io1p"
TWIN_KEY = "sk-live-Mn4b-Vc8x-Lk2j-Hg6f"

AGENT = """
import json, os, urllib.request, urllib.error

def main(input):
    if input["provider"] == "openai":
        url = os.environ["OPENAI_BASE_URL"] + "/chat/completions"
        headers = {"Authorization": "Bearer " + os.environ["OPENAI_API_KEY"]}
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": input["stream"]}
    else:
        url = os.environ["ANTHROPIC_BASE_URL"] + "/v1/messages"
        headers = {"x-api-key": os.environ["ANTHROPIC_API_KEY"], "anthropic-version": "2023-06-01"}
        body = {"model": "m", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}],
                "stream": input["stream"]}
    headers["Content-Type"] = "application/json"
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            text = response.read().decode()
    except urllib.error.HTTPError as exc:
        text = exc.read().decode()
    if input["crash"]:
        raise RuntimeError(text)
    return {"reversed": text[::-1]}  # reversed, so what the agent read is not scrubbed on the way out
"""


def _respond(seen: Seen) -> Answer:
    """Quote whatever key the request carried, as a 401 body or as a streamed error event."""
    headers = {k.lower(): v for k, v in seen.headers.items()}
    key = headers.get("authorization") or headers.get("x-api-key", "")
    if json.loads(seen.body or b"{}").get("stream"):
        if seen.path.endswith("/messages"):
            event = json.dumps({"type": "error", "error": {"type": "authentication_error", "message": key}})
            return Answer(
                200, [("Content-Type", "text/event-stream")], f"event: error\ndata: {event}\n\n".encode()
            )
        chunk = json.dumps({"error": {"message": f"bad key {key}"}})
        return Answer(200, [("Content-Type", "text/event-stream")], f"data: {chunk}\n\n".encode())
    return Answer(401, [], json.dumps({"error": {"message": f"Incorrect API key provided: {key}"}}).encode())


def _setup(tenant: Tenant, url: str, key: str, provider: str) -> None:
    with tenant.client("operator") as operator:
        operator.apply(
            raw(
                {
                    "apiVersion": "bastion/v1",
                    "kind": "Secret",
                    "metadata": {"name": "upstream"},
                    "spec": {
                        "stringData": {"apiKey": key},
                        "usableBy": {"providers": [provider]},
                        "destinations": [f"{url}/v1"],
                    },
                }
            )
        )
    base = f"{url}/v1" if provider == "openai" else url
    target = {"provider": provider, "model": "m", "baseUrl": base, "secret": "upstream"}
    with tenant.client("developer") as dev:
        agent = code_agent("leaker", AGENT)
        agent["spec"]["modelPolicy"] = "hostile"
        dev.apply(raw(model_policy("hostile", target, retries=0), agent))


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_agent_never_reads_the_key_a_provider_error_quotes(
    tenant: Tenant, other_tenant: Tenant, provider: str
) -> None:
    with hostile_server(_respond) as hostile:
        _setup(tenant, hostile.url, KEY, provider)
        _setup(other_tenant, hostile.url, TWIN_KEY, provider)
        outputs: list[str] = []
        for who in (tenant, other_tenant):
            with who.client() as client:
                for stream in (False, True):
                    for crash in (False, True):
                        run_input = {"provider": provider, "stream": stream, "crash": crash}
                        run = wait_finished(client, client.create_run("leaker", run_input)["id"])
                        result: dict[str, Any] = run.get("result") or {}
                        read = str(result.get("reversed", ""))[::-1]
                        stored = json.dumps([run, client.journal(run["id"]), list(client.events(run["id"]))])
                        outputs.extend([read, stored])
    assert hostile.seen and any(s.carries(KEY) for s in hostile.seen), "the key was not even sent"
    assert any(s.carries(TWIN_KEY) for s in hostile.seen), "the twin tenant's key was not sent"
    for output in outputs:
        assert KEY not in output and TWIN_KEY not in output, output[:400]


def test_developer_never_reads_the_key_a_provider_error_quotes(tenant: Tenant, other_tenant: Tenant) -> None:
    with hostile_server(_respond) as hostile:
        _setup(tenant, hostile.url, KEY, "openai")
        _setup(other_tenant, hostile.url, TWIN_KEY, "openai")
        answers: list[httpx.Response] = []
        for who in (tenant, other_tenant):
            for stream in (False, True):
                answers.append(
                    httpx.post(
                        f"{who.server.url}/llm/v1/chat/completions",
                        json={
                            "model": "hostile",
                            "messages": [{"role": "user", "content": "hi"}],
                            "stream": stream,
                        },
                        headers={"Authorization": f"Bearer {who.key('developer')}"},
                        timeout=30,
                    )
                )
    assert any(s.carries(KEY) for s in hostile.seen) and any(s.carries(TWIN_KEY) for s in hostile.seen)
    for answer in answers:
        assert answer.status_code >= 400, answer.text[:300]
        assert answer.headers["content-type"].startswith("application/problem+json")
        assert KEY not in answer.text and TWIN_KEY not in answer.text, answer.text[:400]


def test_failure_reasons_never_quote_the_provider() -> None:
    """The root: no provider text in a reason, whatever the status or the stream's error."""
    body = json.dumps({"error": {"message": f"Incorrect API key provided: {KEY}"}}).encode()
    failure = status_failure(401, body, {}, "openai")
    assert KEY not in failure.reason and "401" in failure.reason
    with pytest.raises(BadChat) as openai_error:
        _ChunkCollector({}).feed({"error": {"message": KEY}})
    with pytest.raises(BadChat) as anthropic_error:
        _EventCollector({}).feed({"type": "error", "error": {"message": KEY}})
    assert KEY not in str(openai_error.value) and KEY not in str(anthropic_error.value)
