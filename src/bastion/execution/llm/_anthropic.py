"""Anthropic Messages: the wire format both ways, and the provider.

Tool results travel as ``tool_result`` blocks in a user turn; Bastion keeps them as ``tool``
messages and regroups consecutive ones into one user turn on the way out.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, cast

import httpx

from ._provider import Call, Target, wire_names
from ._transport import LazyClient, send
from ._types import (
    BadChat,
    ChatRequest,
    ChatResult,
    FinishReason,
    Message,
    Reply,
    ToolCall,
    ToolDef,
    Usage,
    parse_arguments,
    text_of,
)

DEFAULT_BASE_URL = "https://api.anthropic.com"
API_VERSION = "2023-06-01"
_STOP_IN: dict[str, FinishReason] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
_STOP_OUT = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "content_filter": "refusal",
    "error": "end_turn",
}


def _blocks(content: Any, where: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise BadChat(f"{where} must be a string or a list of content blocks")
    out: list[dict[str, Any]] = []
    for i, block in enumerate(cast(list[Any], content)):
        if not isinstance(block, dict):
            raise BadChat(f"{where}[{i}] must be a content block object")
        out.append(cast(dict[str, Any], block))
    return out


def _input(arguments: Any) -> dict[str, Any]:
    """Tool-use input is always an object on this wire; arguments that were not get wrapped."""
    if isinstance(arguments, dict):
        return cast(dict[str, Any], arguments)
    return {"_raw": arguments}


# --- inbound: an SDK's request ---------------------------------------------------------------


def request_from_anthropic(body: Any) -> tuple[ChatRequest, bool]:
    """A Messages API request body as Bastion's request, and whether it asked to stream."""
    if not isinstance(body, dict):
        raise BadChat("the request body must be a JSON object")
    req = cast(dict[str, Any], body)
    messages: list[Message] = []
    system = req.get("system")
    if system is not None:
        messages.append(Message(role="system", content=text_of(system, "system")))
    raw_messages = req.get("messages")
    if not isinstance(raw_messages, list) or not raw_messages:
        raise BadChat("messages must be a non-empty list")
    for i, raw in enumerate(cast(list[Any], raw_messages)):
        where = f"messages[{i}]"
        if not isinstance(raw, dict):
            raise BadChat(f"{where} must be an object")
        m = cast(dict[str, Any], raw)
        role = m.get("role")
        if role not in ("user", "assistant"):
            raise BadChat(f"{where}.role must be user or assistant, not {role!r}")
        texts: list[str] = []
        calls: list[ToolCall] = []
        for j, block in enumerate(_blocks(m.get("content"), f"{where}.content")):
            kind = block.get("type")
            if kind == "text" and isinstance(block.get("text"), str):
                texts.append(block["text"])
            elif kind == "tool_use" and role == "assistant":
                if not isinstance(block.get("id"), str) or not isinstance(block.get("name"), str):
                    raise BadChat(f"{where}.content[{j}] (tool_use) needs an id and a name")
                calls.append(ToolCall(id=block["id"], name=block["name"], arguments=block.get("input", {})))
            elif kind == "tool_result" and role == "user":
                if not isinstance(block.get("tool_use_id"), str):
                    raise BadChat(f"{where}.content[{j}] (tool_result) needs a tool_use_id")
                messages.append(
                    Message(
                        role="tool",
                        content=text_of(block.get("content", ""), f"{where}.content[{j}].content"),
                        tool_call_id=block["tool_use_id"],
                        is_error=bool(block.get("is_error", False)),
                    )
                )
            else:
                raise BadChat(
                    f"{where}.content[{j}] is a {kind!r} block; Bastion carries text, tool_use and tool_result"
                )
        if role == "assistant":
            messages.append(Message(role="assistant", content="".join(texts), tool_calls=tuple(calls)))
        elif texts:
            messages.append(Message(role="user", content="".join(texts)))
    tools: list[ToolDef] = []
    for i, raw in enumerate(cast(list[Any], req.get("tools") or [])):
        t = cast(dict[str, Any], raw) if isinstance(raw, dict) else {}
        if not isinstance(t.get("name"), str):
            raise BadChat(f"tools[{i}] must be {{name, description, input_schema}}")
        schema = t.get("input_schema") or {"type": "object"}
        if not isinstance(schema, dict):
            raise BadChat(f"tools[{i}].input_schema must be a JSON Schema object")
        tools.append(
            ToolDef(
                name=t["name"],
                description=str(t.get("description") or ""),
                parameters=cast(dict[str, Any], schema),
            )
        )
    max_tokens = req.get("max_tokens")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise BadChat("max_tokens must be a positive integer (the Messages API requires it)")
    temperature = req.get("temperature")
    if temperature is not None and (
        not isinstance(temperature, int | float) or isinstance(temperature, bool)
    ):
        raise BadChat("temperature must be a number")
    stops: list[Any] = req.get("stop_sequences") or []
    model = req.get("model")
    request = ChatRequest(
        messages=tuple(messages),
        tools=tuple(tools),
        max_tokens=max_tokens,
        temperature=float(temperature) if temperature is not None else None,
        stop=tuple(str(s) for s in stops),
        model=model if isinstance(model, str) else None,
    )
    return request, bool(req.get("stream", False))


# --- outbound: the provider's request and answer ---------------------------------------------


def anthropic_body(request: ChatRequest, *, model: str, max_tokens: int, stream: bool) -> dict[str, Any]:
    names = wire_names(request.tools)
    system = "\n\n".join(m.content for m in request.messages if m.role == "system")
    messages: list[dict[str, Any]] = []
    for m in request.messages:
        if m.role == "system":
            continue
        if m.role == "tool":
            block: dict[str, Any] = {
                "type": "tool_result",
                "tool_use_id": m.tool_call_id,
                "content": m.content,
            }
            if m.is_error:
                block["is_error"] = True
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "user" and isinstance(last["content"], list):
                cast(list[Any], last["content"]).append(block)
            else:
                messages.append({"role": "user", "content": [block]})
        elif m.role == "assistant":
            blocks: list[dict[str, Any]] = []
            if m.content:
                blocks.append({"type": "text", "text": m.content})
            for c in m.tool_calls:
                args = _input(c.arguments)
                blocks.append(
                    {"type": "tool_use", "id": c.id, "name": names.get(c.name, c.name), "input": args}
                )
            messages.append({"role": "assistant", "content": blocks or [{"type": "text", "text": ""}]})
        else:
            messages.append({"role": "user", "content": m.content})
    body: dict[str, Any] = {"model": model, "max_tokens": max_tokens, "messages": messages}
    if system:
        body["system"] = system
    if request.tools:
        body["tools"] = [
            {"name": names[t.name], "description": t.description, "input_schema": dict(t.parameters)}
            for t in request.tools
        ]
    if request.temperature is not None:
        body["temperature"] = request.temperature
    if request.stop:
        body["stop_sequences"] = list(request.stop)
    if stream:
        body["stream"] = True
    return body


def reply_from_anthropic(body: Any, back: Mapping[str, str]) -> Reply:
    if not isinstance(body, dict):
        raise BadChat("the answer is not a JSON object")
    data = cast(dict[str, Any], body)
    content = data.get("content")
    if data.get("type") != "message" or not isinstance(content, list):
        raise BadChat("the answer is not a message with content blocks")
    texts: list[str] = []
    calls: list[ToolCall] = []
    for block in cast(list[Any], content):
        b = cast(dict[str, Any], block) if isinstance(block, dict) else {}
        if b.get("type") == "text":
            texts.append(str(b.get("text", "")))
        elif b.get("type") == "tool_use":
            if not isinstance(b.get("name"), str):
                raise BadChat("a tool_use block has no name")
            calls.append(
                ToolCall(
                    id=str(b.get("id") or f"toolu_{len(calls)}"),
                    name=back.get(b["name"], b["name"]),
                    arguments=b.get("input", {}),
                )
            )
    return Reply(
        message=Message(role="assistant", content="".join(texts), tool_calls=tuple(calls)),
        finish_reason=_STOP_IN.get(str(data.get("stop_reason")), "tool_calls" if calls else "stop"),
        usage=_usage(data.get("usage")),
        model=data.get("model") if isinstance(data.get("model"), str) else None,
    )


def _usage(raw: Any) -> Usage | None:
    if not isinstance(raw, dict):
        return None
    u = cast(dict[str, Any], raw)
    try:
        return Usage(
            input_tokens=int(u.get("input_tokens") or 0), output_tokens=int(u.get("output_tokens") or 0)
        )
    except (TypeError, ValueError):
        return None


class _EventCollector:
    """Assembles a Messages stream (message_start … message_stop) into one Reply."""

    def __init__(self, back: Mapping[str, str]) -> None:
        self.back = back
        self.blocks: dict[int, dict[str, Any]] = {}
        self.stop: str | None = None
        self.input_tokens: int | None = None
        self.output_tokens: int | None = None
        self.model: str | None = None
        self.done = False

    def feed(self, event: Any) -> None:
        if not isinstance(event, dict):
            raise BadChat("a streamed event is not a JSON object")
        e = cast(dict[str, Any], event)
        kind = e.get("type")
        if kind == "message_start":
            msg = cast(dict[str, Any], e.get("message") or {})
            self.model = msg.get("model") if isinstance(msg.get("model"), str) else None
            usage = cast(dict[str, Any], msg.get("usage") or {})
            self.input_tokens = int(usage.get("input_tokens") or 0)
        elif kind == "content_block_start":
            block = cast(dict[str, Any], e.get("content_block") or {})
            self.blocks[int(e.get("index", len(self.blocks)))] = {
                "type": block.get("type"),
                "id": block.get("id"),
                "name": block.get("name"),
                "parts": [str(block.get("text", ""))] if block.get("type") == "text" else [],
            }
        elif kind == "content_block_delta":
            slot = self.blocks.get(int(e.get("index", -1)))
            if slot is None:
                raise BadChat("a content_block_delta came before its content_block_start")
            delta = cast(dict[str, Any], e.get("delta") or {})
            if delta.get("type") == "text_delta":
                slot["parts"].append(str(delta.get("text", "")))
            elif delta.get("type") == "input_json_delta":
                slot["parts"].append(str(delta.get("partial_json", "")))
        elif kind == "message_delta":
            delta = cast(dict[str, Any], e.get("delta") or {})
            if delta.get("stop_reason"):
                self.stop = str(delta["stop_reason"])
            usage = cast(dict[str, Any], e.get("usage") or {})
            if usage.get("output_tokens") is not None:
                self.output_tokens = int(usage["output_tokens"])
            if usage.get("input_tokens") is not None:
                self.input_tokens = int(usage["input_tokens"])
        elif kind == "message_stop":
            self.done = True
        elif kind == "error":
            raise BadChat("the stream carried an error")  # its text may echo the key: not quoted

    def reply(self) -> Reply:
        if not self.done:
            raise BadChat("the stream ended before message_stop")
        texts: list[str] = []
        calls: list[ToolCall] = []
        for index in sorted(self.blocks):
            slot = self.blocks[index]
            text = "".join(slot["parts"])
            if slot["type"] == "text":
                texts.append(text)
            elif slot["type"] == "tool_use":
                args: Any = parse_arguments(text)
                name = str(slot.get("name") or "")
                calls.append(
                    ToolCall(
                        id=str(slot.get("id") or f"toolu_{index}"),
                        name=self.back.get(name, name),
                        arguments=args,
                    )
                )
        usage = (
            Usage(input_tokens=self.input_tokens or 0, output_tokens=self.output_tokens or 0)
            if self.input_tokens is not None or self.output_tokens is not None
            else None
        )
        return Reply(
            message=Message(role="assistant", content="".join(texts), tool_calls=tuple(calls)),
            finish_reason=_STOP_IN.get(str(self.stop), "tool_calls" if calls else "stop"),
            usage=usage,
            model=self.model,
        )


def endpoint(target: Target) -> str:
    """The URL this provider sends ``target``'s requests to (what a Secret's destinations judge)."""
    return (target.base_url or DEFAULT_BASE_URL).rstrip("/") + "/v1/messages"


class AnthropicProvider:
    name = "anthropic"

    def __init__(self, client: httpx.Client | None = None) -> None:
        self._pool = LazyClient(client)

    @property
    def client(self) -> httpx.Client:
        return self._pool.get()

    def close(self) -> None:
        self._pool.close()

    def complete(self, call: Call) -> Reply:
        target = call.target
        url = endpoint(target)
        body = anthropic_body(
            call.request, model=target.model, max_tokens=call.max_tokens, stream=call.stream
        )
        back = {wire: name for name, wire in wire_names(call.request.tools).items()}
        headers = {
            "content-type": "application/json",
            "accept": "application/json",
            "anthropic-version": API_VERSION,
        }
        if call.api_key:
            headers["x-api-key"] = call.api_key
        if call.idempotency_key:
            headers["idempotency-key"] = call.idempotency_key
        content = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
        return send(
            self.client,
            "anthropic",
            url,
            headers,
            content,
            call,
            parse=lambda data: reply_from_anthropic(data, back),
            collector=lambda: _EventCollector(back),
        )


# --- the answer an SDK expects ----------------------------------------------------------------


def _content(message: Message) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    if message.content or not message.tool_calls:
        blocks.append({"type": "text", "text": message.content})
    for c in message.tool_calls:
        args = _input(c.arguments)
        blocks.append({"type": "tool_use", "id": c.id, "name": c.name, "input": args})
    return blocks


def anthropic_answer(result: ChatResult, requested_model: str | None) -> dict[str, Any]:
    """A journaled result as the ``message`` object an Anthropic SDK parses."""
    return {
        "id": f"msg_{result.id}",
        "type": "message",
        "role": "assistant",
        "model": requested_model or result.model,
        "content": _content(result.message),
        "stop_reason": _STOP_OUT[result.finish_reason],
        "stop_sequence": None,
        "usage": {"input_tokens": result.usage.input_tokens, "output_tokens": result.usage.output_tokens},
    }


def anthropic_stream(result: ChatResult, requested_model: str | None) -> list[dict[str, Any]]:
    """The same answer as SSE events (``{"event": name, "data": text}``)."""

    def event(name: str, body: dict[str, Any]) -> dict[str, Any]:
        return {
            "event": name,
            "data": json.dumps({"type": name, **body}, ensure_ascii=False, separators=(",", ":")),
        }

    start = anthropic_answer(result, requested_model)
    start.update(
        content=[], stop_reason=None, usage={"input_tokens": result.usage.input_tokens, "output_tokens": 0}
    )
    events = [event("message_start", {"message": start})]
    for index, block in enumerate(_content(result.message)):
        if block["type"] == "text":
            events.append(
                event("content_block_start", {"index": index, "content_block": {"type": "text", "text": ""}})
            )
            if block["text"]:
                events.append(
                    event(
                        "content_block_delta",
                        {"index": index, "delta": {"type": "text_delta", "text": block["text"]}},
                    )
                )
        else:
            events.append(
                event(
                    "content_block_start",
                    {
                        "index": index,
                        "content_block": {
                            "type": "tool_use",
                            "id": block["id"],
                            "name": block["name"],
                            "input": {},
                        },
                    },
                )
            )
            events.append(
                event(
                    "content_block_delta",
                    {
                        "index": index,
                        "delta": {
                            "type": "input_json_delta",
                            "partial_json": json.dumps(block["input"], ensure_ascii=False),
                        },
                    },
                )
            )
        events.append(event("content_block_stop", {"index": index}))
    events.append(
        event(
            "message_delta",
            {
                "delta": {"stop_reason": _STOP_OUT[result.finish_reason], "stop_sequence": None},
                "usage": {"output_tokens": result.usage.output_tokens},
            },
        )
    )
    events.append(event("message_stop", {}))
    return events
