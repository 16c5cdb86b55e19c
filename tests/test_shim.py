"""The in-sandbox model endpoint (issue 5, item 4): OpenAI and Anthropic wire formats on the
sandbox's loopback, forwarded over the channel as ``llm.chat``; streaming replayed as SSE.

The handler below stands in for the gateway (the host end of the channel): it records what the
shim forwarded and answers in the requested wire format.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bastion.execution.llm import answer
from bastion.execution.sandbox import DENIED, CallError, ProcessBackend, SandboxSpec

TOKEN = "run-token-3b9f0c"

CLIENT = """
import json, os, urllib.request, urllib.error

def post(path, body, key, base):
    request = urllib.request.Request(
        base + path, data=json.dumps(body).encode(), method="POST",
        headers={"Content-Type": "application/json", "Authorization": "Bearer " + key, "x-api-key": key},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers.get("Content-Type"), response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers.get("Content-Type"), error.read().decode()
"""

RESULT = {
    "id": "chat-1",
    "created": 1,
    "message": {
        "role": "assistant",
        "content": "Hello from the gateway",
        "toolCalls": [{"id": "call_1", "name": "lookup", "arguments": {"q": 1}}],
    },
    "finishReason": "tool_calls",
    "usage": {"inputTokens": 5, "outputTokens": 4},
    "costUsd": 0.0,
    "provider": "scripted",
    "model": "gpt-test",
    "latencyMs": 1.0,
    "attempts": 1,
}
"""A journaled ChatResult: the gateway renders it in the caller's wire format with ``answer``."""


class Gateway:
    """The host end of the channel: records what the shim forwarded and answers like the gateway."""

    def __init__(self, *, refuse: CallError | None = None) -> None:
        self.seen: list[dict[str, Any]] = []
        self.refuse = refuse

    def __call__(self, method: str, params: dict[str, Any]) -> Any:
        assert method == "llm.chat", method
        self.seen.append(params)
        if self.refuse is not None:
            raise self.refuse
        return answer(params, RESULT)


@pytest.fixture(scope="module")
def backend() -> Iterator[ProcessBackend]:
    with ProcessBackend() as backend:
        yield backend


def run_agent(
    backend: ProcessBackend, tmp_path: Path, body: str, gateway: Gateway, *, env: dict[str, str] | None = None
) -> Any:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    (workspace / "agent.py").write_text(CLIENT + textwrap.dedent(body))
    spec = SandboxSpec(
        workspace=workspace,
        env={"BASTION_RUN_TOKEN": TOKEN, "TRACEPARENT": "00-" + "a" * 32 + "-" + "b" * 16 + "-01"}
        if env is None
        else env,
    )
    logs: list[str] = []
    sandbox = backend.start(spec, on_log=logs.append)
    try:
        return sandbox.call("run", {"entrypoint": "agent:main", "input": None}, handler=gateway)
    finally:
        sandbox.stop()


def test_openai_requests_reach_the_gateway_and_come_back(backend: ProcessBackend, tmp_path: Path) -> None:
    gateway = Gateway()
    result = run_agent(
        backend,
        tmp_path,
        """
        def main(_):
            base, key = os.environ["OPENAI_BASE_URL"], os.environ["OPENAI_API_KEY"]
            body = {"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]}
            status, kind, text = post("/chat/completions", body, key, base)
            return {"status": status, "kind": kind, "answer": json.loads(text), "token_env": "BASTION_RUN_TOKEN" in os.environ}
        """,
        gateway,
    )
    assert result["status"] == 200 and result["kind"] == "application/json"
    body = result["answer"]
    assert body["object"] == "chat.completion" and body["model"] == "gpt-test"
    assert body["choices"][0]["message"]["content"] == "Hello from the gateway"
    assert body["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "lookup"
    assert body["usage"]["total_tokens"] == 9
    assert result["token_env"] is False, "the token's own variable is removed once the shim has it"
    [forwarded] = gateway.seen
    assert forwarded["format"] == "openai"
    assert forwarded["request"] == {"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]}
    assert forwarded["_meta"] == {"traceparent": "00-" + "a" * 32 + "-" + "b" * 16 + "-01"}


def test_a_streamed_openai_answer_is_replayed_as_chunks(backend: ProcessBackend, tmp_path: Path) -> None:
    result = run_agent(
        backend,
        tmp_path,
        """
        def main(_):
            base, key = os.environ["OPENAI_BASE_URL"], os.environ["OPENAI_API_KEY"]
            body = {"model": "gpt-test", "messages": [], "stream": True, "stream_options": {"include_usage": True}}
            status, kind, text = post("/chat/completions", body, key, base)
            return {"status": status, "kind": kind, "lines": [l for l in text.split("\\n") if l]}
        """,
        Gateway(),
    )
    assert result["status"] == 200 and result["kind"] == "text/event-stream"
    lines: list[str] = result["lines"]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[6:]) for line in lines[:-1]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "Hello from the gateway"
    calls = [d for c in chunks if c["choices"] for d in c["choices"][0]["delta"].get("tool_calls", [])]
    assert [c["function"]["name"] for c in calls if c.get("function", {}).get("name")] == ["lookup"]
    arguments = "".join(c.get("function", {}).get("arguments") or "" for c in calls)
    assert json.loads(arguments) == {"q": 1}
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finishes[-1] == "tool_calls"
    assert chunks[-1]["usage"]["total_tokens"] == 9


def test_anthropic_messages_stream_as_events(backend: ProcessBackend, tmp_path: Path) -> None:
    gateway = Gateway()
    result = run_agent(
        backend,
        tmp_path,
        """
        def main(_):
            base, key = os.environ["ANTHROPIC_BASE_URL"], os.environ["ANTHROPIC_API_KEY"]
            body = {"model": "claude-test", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
            plain = post("/v1/messages", body, key, base)
            streamed = post("/v1/messages", {**body, "stream": True}, key, base)
            return {"plain": [plain[0], json.loads(plain[2])], "streamed": streamed[2]}
        """,
        gateway,
    )
    status, plain = result["plain"]
    assert status == 200 and plain["type"] == "message" and plain["stop_reason"] == "tool_use"
    assert [b["type"] for b in plain["content"]] == ["text", "tool_use"]
    assert plain["content"][1]["input"] == {"q": 1}
    assert [p["format"] for p in gateway.seen] == ["anthropic", "anthropic"]
    events = [block.split("\n") for block in result["streamed"].strip().split("\n\n")]
    names = [e[0].removeprefix("event: ") for e in events]
    assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]
    data = [json.loads(e[1].removeprefix("data: ")) for e in events]
    text = "".join(d["delta"].get("text", "") for d in data if d["type"] == "content_block_delta")
    assert text == "Hello from the gateway"
    partial = "".join(d["delta"].get("partial_json", "") for d in data if d["type"] == "content_block_delta")
    assert json.loads(partial) == {"q": 1}
    assert next(d for d in data if d["type"] == "message_delta")["delta"]["stop_reason"] == "tool_use"


def test_a_wrong_key_is_refused_and_nothing_is_forwarded(backend: ProcessBackend, tmp_path: Path) -> None:
    gateway = Gateway()
    result = run_agent(
        backend,
        tmp_path,
        """
        def main(_):
            base = os.environ["OPENAI_BASE_URL"]
            wrong = post("/chat/completions", {"model": "m", "messages": []}, "sk-guess", base)
            empty = post("/chat/completions", {"model": "m", "messages": []}, "", base)
            anthropic = post("/v1/messages", {"model": "m"}, "nope", os.environ["ANTHROPIC_BASE_URL"])
            return [wrong[0], json.loads(wrong[2]), empty[0], anthropic[0], json.loads(anthropic[2])]
        """,
        gateway,
    )
    assert result[0] == 401 and result[1]["error"]["type"] == "authentication_error"
    assert result[2] == 401
    assert result[3] == 401 and result[4]["type"] == "error"
    assert gateway.seen == []


def test_a_denial_and_bad_bodies_answer_in_the_provider_format(
    backend: ProcessBackend, tmp_path: Path
) -> None:
    result = run_agent(
        backend,
        tmp_path,
        """
        def main(_):
            base, key = os.environ["OPENAI_BASE_URL"], os.environ["OPENAI_API_KEY"]
            denied = post("/chat/completions", {"model": "m", "messages": []}, key, base)
            request = urllib.request.Request(base + "/chat/completions", data=b"{not json", method="POST",
                                             headers={"Authorization": "Bearer " + key})
            try:
                urllib.request.urlopen(request, timeout=10)
                bad = None
            except urllib.error.HTTPError as error:
                bad = [error.code, json.loads(error.read())]
            missing = post("/embeddings", {}, key, base)
            return [denied[0], json.loads(denied[2]), bad, missing[0]]
        """,
        Gateway(
            refuse=CallError(
                DENIED, "denied: no model policy", {"type": "policy_denied", "reasons": ["no model policy"]}
            )
        ),
    )
    assert result[0] == 403 and "no model policy" in result[1]["error"]["message"]
    assert result[2][0] == 400 and "not JSON" in result[2][1]["error"]["message"]
    assert result[3] == 404


def test_without_a_token_there_is_no_endpoint(backend: ProcessBackend, tmp_path: Path) -> None:
    result = run_agent(
        backend,
        tmp_path,
        """
        def main(_):
            return [name for name in ("OPENAI_BASE_URL", "OPENAI_API_KEY", "ANTHROPIC_BASE_URL") if name in os.environ]
        """,
        Gateway(),
        env={},
    )
    assert result == []


def test_a_budget_refusal_is_a_final_429(backend: ProcessBackend, tmp_path: Path) -> None:
    refusal = CallError(
        DENIED, "budget exhausted", {"type": "budget_exceeded", "reasons": ["tokens per run: 0 of 100 left"]}
    )
    result = run_agent(
        backend,
        tmp_path,
        """
        def main(_):
            base, key = os.environ["OPENAI_BASE_URL"], os.environ["OPENAI_API_KEY"]
            request = urllib.request.Request(base + "/chat/completions", data=b'{"model": "m", "messages": []}',
                                             method="POST", headers={"Authorization": "Bearer " + key})
            try:
                urllib.request.urlopen(request, timeout=10)
            except urllib.error.HTTPError as error:
                return [error.code, error.headers.get("x-should-retry"), json.loads(error.read())]
        """,
        Gateway(refuse=refusal),
    )
    assert result[0] == 429 and result[1] == "false"
    assert "tokens per run" in result[2]["error"]["message"]


def test_a_warm_sandbox_serves_each_run_only_with_that_runs_token(
    backend: ProcessBackend, tmp_path: Path
) -> None:
    """The pool's warm-up starts the endpoint before any run (so a run does not pay for it): it
    refuses every key until a run's token arrives, and a later run's token retires the earlier
    one -- an agent that kept a key cannot use it in the next run of the same sandbox."""
    workspace = tmp_path / "ws"
    workspace.mkdir()
    (workspace / "agent.py").write_text(
        CLIENT
        + textwrap.dedent(
            """
            def main(input):
                base = os.environ.get("OPENAI_BASE_URL")
                # Keys are tried where the caller says: the first run's endpoint, or this one's.
                at = input.get("at") or base
                tried = {name: post("/chat/completions", {"model": "m", "messages": []}, key, at)[0]
                         for name, key in input["keys"].items()}
                return {"base": base, "tried": tried}
            """
        )
    )
    gateway = Gateway()
    sandbox = backend.start(SandboxSpec(workspace=workspace, env={}), on_log=lambda _: None)
    try:
        assert sandbox.call("ping", {}, handler=gateway) == {"ready": True}
        first = sandbox.call(
            "run",
            {
                "entrypoint": "agent:main",
                "input": {"keys": {"own": "token-one"}},
                "env": {"BASTION_RUN_TOKEN": "token-one"},
            },
            handler=gateway,
        )
        assert first["tried"] == {"own": 200}
        second = sandbox.call(
            "run",
            {
                "entrypoint": "agent:main",
                "input": {"keys": {"kept": "token-one", "empty": ""}, "at": first["base"]},
                "env": {"BASTION_RUN_TOKEN": "token-two"},
            },
            handler=gateway,
        )
    finally:
        sandbox.stop()
    assert second["base"] == first["base"], "one endpoint per sandbox, started at its warm-up"
    # The earlier run's key, at the earlier run's address: refused, nothing forwarded.
    assert second["tried"] == {"kept": 401, "empty": 401}
    assert len(gateway.seen) == 1
