"""The wire formats, checked with the official ``openai`` and ``anthropic`` SDKs.

1. The fake providers in ``bastion.testing`` speak the real formats: the SDKs parse them.
2. Bastion's ``llm.chat`` answers in the ``openai`` and ``anthropic`` formats are what the SDKs
   parse, streamed and not: a small server here plays the coming in-sandbox shim (SDK body in,
   ``parse_params`` → a result → ``answer`` out), so the SDKs' own bodies (tool results included)
   go through Bastion's inbound converters too.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import anthropic
import openai
import pytest

from bastion.execution.llm import ChatResult, Message, ToolCall, Usage, answer, parse_params
from bastion.testing import FakeProvider, reply, tool_call

TOOLS_OPENAI: Any = [
    {
        "type": "function",
        "function": {
            "name": "kb_search",
            "description": "Search.",
            "parameters": {"type": "object", "properties": {"query": {"type": "string"}}},
        },
    }
]
TOOLS_ANTHROPIC: Any = [
    {
        "name": "kb_search",
        "description": "Search.",
        "input_schema": {"type": "object", "properties": {"query": {"type": "string"}}},
    }
]


# --- 1. the fake providers ------------------------------------------------------------------------


def test_the_openai_sdk_reads_the_fake_provider() -> None:
    with FakeProvider(
        tool_call("kb_search", query="refunds"), reply("Twenty days."), reply("Streamed.")
    ) as fake:
        client = openai.OpenAI(base_url=fake.openai_url, api_key="sk-fake", max_retries=0)
        first = client.chat.completions.create(
            model="gpt-x", messages=[{"role": "user", "content": "refunds?"}], tools=TOOLS_OPENAI
        )
        call = first.choices[0].message.tool_calls
        assert call is not None and call[0].type == "function"
        assert call[0].function.name == "kb_search" and json.loads(call[0].function.arguments) == {
            "query": "refunds"
        }
        assert first.choices[0].finish_reason == "tool_calls"
        second = client.chat.completions.create(model="gpt-x", messages=[{"role": "user", "content": "hi"}])
        assert second.choices[0].message.content == "Twenty days."
        assert second.usage is not None and second.usage.completion_tokens > 0
        chunks = list(
            client.chat.completions.create(
                model="gpt-x",
                messages=[{"role": "user", "content": "hi"}],
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == "Streamed."
        assert chunks[-1].usage is not None
        client.close()
        assert fake.requests[0].headers["authorization"] == "Bearer sk-fake"


def test_the_anthropic_sdk_reads_the_fake_provider() -> None:
    with FakeProvider(
        tool_call("kb_search", query="refunds"), reply("Twenty days."), reply("Streamed.")
    ) as fake:
        client = anthropic.Anthropic(base_url=fake.anthropic_url, api_key="sk-ant-fake", max_retries=0)
        first = client.messages.create(
            model="claude-x",
            max_tokens=100,
            messages=[{"role": "user", "content": "refunds?"}],
            tools=TOOLS_ANTHROPIC,
        )
        block = first.content[0]
        assert block.type == "tool_use" and block.name == "kb_search" and block.input == {"query": "refunds"}
        assert first.stop_reason == "tool_use"
        second = client.messages.create(
            model="claude-x", max_tokens=100, messages=[{"role": "user", "content": "hi"}]
        )
        assert second.content[0].type == "text" and second.content[0].text == "Twenty days."
        with client.messages.stream(
            model="claude-x", max_tokens=100, messages=[{"role": "user", "content": "hi"}]
        ) as stream:
            final = stream.get_final_message()
        assert final.content[0].type == "text" and final.content[0].text == "Streamed."
        assert final.usage.output_tokens > 0
        client.close()
        assert fake.requests[0].api_key == "sk-ant-fake"


# --- 2. Bastion's answers -------------------------------------------------------------------------


class ShimLike:
    """Answers each SDK request the way the in-sandbox shim will: through ``parse_params`` and
    ``answer``, with a result that calls a tool on the first turn and answers text after."""

    def __init__(self) -> None:
        self.params: list[dict[str, Any]] = []

    def result(self, params: dict[str, Any]) -> dict[str, Any]:
        request, _stream, _fmt = parse_params(params)
        turn = sum(1 for m in request.messages if m.role == "assistant")
        if turn == 0:
            message = Message(
                role="assistant",
                content="Let me look.",
                tool_calls=(ToolCall(id="call_1", name="kb_search", arguments={"query": "refunds"}),),
            )
            finish = "tool_calls"
        else:
            tool = next(m for m in request.messages if m.role == "tool")
            message = Message(role="assistant", content=f"The tool said: {tool.content}")
            finish = "stop"
        return ChatResult(
            id="abc123",
            created=1_700_000_000,
            message=message,
            finish_reason=finish,
            usage=Usage(input_tokens=12, output_tokens=7),
            cost_usd=0.0,
            provider="scripted",
            model="demo",
            latency_ms=1.0,
        ).to_json()

    def handle(self, fmt: str, body: dict[str, Any]) -> Any:
        params = {"format": fmt, "request": body}
        self.params.append(params)
        return answer(params, self.result(params))


@pytest.fixture
def shim() -> Iterator[tuple[str, ShimLike]]:
    state = ShimLike()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            return

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            fmt = "openai" if self.path.endswith("/chat/completions") else "anthropic"
            out = state.handle(fmt, body)
            if "body" in out:
                data = json.dumps(out["body"]).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
            else:
                frames = [
                    (f"event: {e['event']}\n" if "event" in e else "") + f"data: {e['data']}\n\n"
                    for e in out["events"]
                ]
                data = "".join(frames).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", state
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("stream", [False, True])
def test_openai_sdk_code_gets_bastions_answers(shim: tuple[str, ShimLike], stream: bool) -> None:
    url, state = shim
    client = openai.OpenAI(base_url=url + "/v1", api_key="run-token", max_retries=0)
    messages: list[Any] = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "refunds?"},
    ]
    if stream:
        chunks = list(
            client.chat.completions.create(model="gpt-4o", messages=messages, tools=TOOLS_OPENAI, stream=True)
        )
        calls = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
        assert calls[0].function is not None and calls[0].function.name == "kb_search"
        arguments = calls[0].function.arguments or ""
        call_id = calls[0].id or ""
        assert chunks[0].model == "gpt-4o"
    else:
        first = client.chat.completions.create(model="gpt-4o", messages=messages, tools=TOOLS_OPENAI)
        tool_calls = first.choices[0].message.tool_calls or []
        assert first.choices[0].message.content == "Let me look."
        assert first.id == "chatcmpl-abc123" and first.usage is not None and first.usage.total_tokens == 19
        fn = tool_calls[0].function  # pyright: ignore[reportAttributeAccessIssue]
        arguments, call_id = fn.arguments, tool_calls[0].id
    assert json.loads(arguments) == {"query": "refunds"}
    messages += [
        {
            "role": "assistant",
            "content": "Let me look.",
            "tool_calls": [
                {"id": call_id, "type": "function", "function": {"name": "kb_search", "arguments": arguments}}
            ],
        },
        {"role": "tool", "tool_call_id": call_id, "content": "20 days"},
    ]
    if stream:
        chunks = list(client.chat.completions.create(model="gpt-4o", messages=messages, stream=True))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    else:
        text = (
            client.chat.completions.create(model="gpt-4o", messages=messages).choices[0].message.content or ""
        )
    assert text == "The tool said: 20 days"
    inbound = state.params[-1]["request"]
    assert inbound["messages"][-1] == {"role": "tool", "tool_call_id": call_id, "content": "20 days"}
    client.close()


@pytest.mark.parametrize("stream", [False, True])
def test_anthropic_sdk_code_gets_bastions_answers(shim: tuple[str, ShimLike], stream: bool) -> None:
    url, _state = shim
    client = anthropic.Anthropic(base_url=url, api_key="run-token", max_retries=0)
    messages: list[Any] = [{"role": "user", "content": "refunds?"}]

    def ask() -> anthropic.types.Message:
        if stream:
            with client.messages.stream(
                model="claude-x", max_tokens=200, system="Be brief.", messages=messages, tools=TOOLS_ANTHROPIC
            ) as s:
                return s.get_final_message()
        return client.messages.create(
            model="claude-x", max_tokens=200, system="Be brief.", messages=messages, tools=TOOLS_ANTHROPIC
        )

    first = ask()
    assert first.stop_reason == "tool_use" and first.model == "claude-x"
    use = next(b for b in first.content if b.type == "tool_use")
    assert use.name == "kb_search" and use.input == {"query": "refunds"}
    messages += [
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "20 days"}]},
    ]
    second = ask()
    assert second.content[0].type == "text" and second.content[0].text == "The tool said: 20 days"
    assert second.usage.input_tokens == 12 and second.usage.output_tokens == 7
    client.close()


def test_bad_wire_bodies_are_named_errors() -> None:
    from bastion.execution.llm import BadChat

    for params, fault in [
        ({"format": "openai", "request": {"messages": []}}, "messages must be a non-empty list"),
        ({"format": "anthropic", "request": {"messages": [{"role": "user", "content": "x"}]}}, "max_tokens"),
        (
            {
                "format": "openai",
                "request": {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
            },
            "only text content",
        ),
        ({"format": "soap", "request": {}}, "format must be one of"),
        ({"request": {"messages": [{"role": "wizard", "content": "x"}]}}, "request.messages[0].role"),
    ]:
        with pytest.raises(BadChat, match=fault.replace("[", r"\[").replace("]", r"\]")):
            parse_params(params)
