"""OpenAI Chat Completions: the wire format both ways, and the provider (any compatible server).

Inbound (a body an OpenAI SDK sent to the in-sandbox shim) → ``ChatRequest``; ``ChatRequest`` →
the body sent to a provider; a provider's answer (JSON or SSE chunks) → ``Reply``; and a
journaled ``ChatResult`` → the ``chat.completion`` object or the chunk stream an SDK expects.
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

DEFAULT_BASE_URL = "https://api.openai.com/v1"
_FINISH_IN: dict[str, FinishReason] = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
    "content_filter": "content_filter",
}

# --- inbound: an SDK's request ---------------------------------------------------------------


def request_from_openai(body: Any) -> tuple[ChatRequest, bool]:
    """A Chat Completions request body as Bastion's request, and whether it asked to stream."""
    if not isinstance(body, dict):
        raise BadChat("the request body must be a JSON object")
    req = cast(dict[str, Any], body)
    raw_messages = req.get("messages")
    if not isinstance(raw_messages, list) or not raw_messages:
        raise BadChat("messages must be a non-empty list")
    messages: list[Message] = []
    for i, raw in enumerate(cast(list[Any], raw_messages)):
        where = f"messages[{i}]"
        if not isinstance(raw, dict):
            raise BadChat(f"{where} must be an object")
        m = cast(dict[str, Any], raw)
        role = m.get("role")
        content = text_of(m.get("content"), f"{where}.content")
        if role in ("system", "developer"):
            messages.append(Message(role="system", content=content))
        elif role == "user":
            messages.append(Message(role="user", content=content))
        elif role == "assistant":
            calls: list[ToolCall] = []
            for j, tc in enumerate(cast(list[Any], m.get("tool_calls") or [])):
                tcd = cast(dict[str, Any], tc) if isinstance(tc, dict) else {}
                fn = cast(dict[str, Any], tcd.get("function") or {})
                if not isinstance(fn.get("name"), str) or not isinstance(tcd.get("id"), str):
                    raise BadChat(f"{where}.tool_calls[{j}] needs an id and a function name")
                args = fn.get("arguments", "")
                calls.append(
                    ToolCall(
                        id=str(tcd["id"]),
                        name=str(fn["name"]),
                        arguments=parse_arguments(args) if isinstance(args, str) else args,
                    )
                )
            messages.append(Message(role="assistant", content=content, tool_calls=tuple(calls)))
        elif role == "tool":
            call_id = m.get("tool_call_id")
            if not isinstance(call_id, str):
                raise BadChat(f"{where}.tool_call_id must name the call this message answers")
            messages.append(Message(role="tool", content=content, tool_call_id=call_id))
        else:
            raise BadChat(
                f"{where}.role {role!r} is not supported (system, developer, user, assistant, tool)"
            )
    tools: list[ToolDef] = []
    for i, raw in enumerate(cast(list[Any], req.get("tools") or [])):
        tool = cast(dict[str, Any], raw) if isinstance(raw, dict) else {}
        fn = cast(dict[str, Any], tool.get("function") or {})
        if not tool or tool.get("type", "function") != "function" or not isinstance(fn.get("name"), str):
            raise BadChat(f"tools[{i}] must be {{type: function, function: {{name, parameters}}}}")
        params = fn.get("parameters") or {"type": "object"}
        if not isinstance(params, dict):
            raise BadChat(f"tools[{i}].function.parameters must be a JSON Schema object")
        tools.append(
            ToolDef(
                name=str(fn["name"]),
                description=str(fn.get("description") or ""),
                parameters=cast(dict[str, Any], params),
            )
        )
    max_tokens = req.get("max_completion_tokens", req.get("max_tokens"))
    if max_tokens is not None and (
        not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1
    ):
        raise BadChat("max_tokens must be a positive integer")
    temperature = req.get("temperature")
    if temperature is not None and (
        not isinstance(temperature, int | float) or isinstance(temperature, bool)
    ):
        raise BadChat("temperature must be a number")
    stop = req.get("stop")
    stops = (stop,) if isinstance(stop, str) else tuple(str(s) for s in cast(list[Any], stop or []))
    model = req.get("model")
    request = ChatRequest(
        messages=tuple(messages),
        tools=tuple(tools),
        max_tokens=max_tokens,
        temperature=float(temperature) if temperature is not None else None,
        stop=stops,
        model=model if isinstance(model, str) else None,
    )
    return request, bool(req.get("stream", False))


# --- outbound: the provider's request and answer ---------------------------------------------


def openai_body(request: ChatRequest, *, model: str, max_tokens: int, stream: bool) -> dict[str, Any]:
    names = wire_names(request.tools)
    messages: list[dict[str, Any]] = []
    for m in request.messages:
        if m.role == "assistant":
            out: dict[str, Any] = {"role": "assistant", "content": m.content or None}
            if m.tool_calls:
                out["tool_calls"] = [
                    {
                        "id": c.id,
                        "type": "function",
                        "function": {
                            "name": names.get(c.name, c.name),
                            "arguments": c.arguments
                            if isinstance(c.arguments, str)
                            else json.dumps(c.arguments, ensure_ascii=False, sort_keys=True),
                        },
                    }
                    for c in m.tool_calls
                ]
            messages.append(out)
        elif m.role == "tool":
            messages.append({"role": "tool", "tool_call_id": m.tool_call_id, "content": m.content})
        else:
            messages.append({"role": m.role, "content": m.content})
    body: dict[str, Any] = {"model": model, "messages": messages, "max_tokens": max_tokens}
    if request.tools:
        body["tools"] = [
            {
                "type": "function",
                "function": {
                    "name": names[t.name],
                    "description": t.description,
                    "parameters": dict(t.parameters),
                },
            }
            for t in request.tools
        ]
    if request.temperature is not None:
        body["temperature"] = request.temperature
    if request.stop:
        body["stop"] = list(request.stop)
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body


def reply_from_openai(body: Any, back: Mapping[str, str]) -> Reply:
    """A ``chat.completion`` object as a Reply; ``back`` maps wire tool names to Bastion's."""
    if not isinstance(body, dict):
        raise BadChat("the answer is not a JSON object")
    data = cast(dict[str, Any], body)
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise BadChat("the answer has no choices")
    choice = cast(dict[str, Any], choices[0])
    msg = choice.get("message")
    if not isinstance(msg, dict):
        raise BadChat("the answer's first choice has no message")
    m = cast(dict[str, Any], msg)
    calls: list[ToolCall] = []
    for tc in cast(list[Any], m.get("tool_calls") or []):
        tcd = cast(dict[str, Any], tc) if isinstance(tc, dict) else {}
        fn = cast(dict[str, Any], tcd.get("function") or {})
        if not isinstance(fn.get("name"), str):
            raise BadChat("a tool call in the answer has no function name")
        args = fn.get("arguments", "")
        calls.append(
            ToolCall(
                id=str(tcd.get("id") or f"call_{len(calls)}"),
                name=back.get(str(fn["name"]), str(fn["name"])),
                arguments=parse_arguments(args) if isinstance(args, str) else args,
            )
        )
    content = m.get("content")
    usage = _usage(data.get("usage"))
    finish = _FINISH_IN.get(str(choice.get("finish_reason")), "tool_calls" if calls else "stop")
    return Reply(
        message=Message(
            role="assistant", content=content if isinstance(content, str) else "", tool_calls=tuple(calls)
        ),
        finish_reason=finish,
        usage=usage,
        model=data.get("model") if isinstance(data.get("model"), str) else None,
    )


def _usage(raw: Any) -> Usage | None:
    if not isinstance(raw, dict):
        return None
    u = cast(dict[str, Any], raw)
    try:
        return Usage(
            input_tokens=int(u.get("prompt_tokens") or 0), output_tokens=int(u.get("completion_tokens") or 0)
        )
    except (TypeError, ValueError):
        return None


class _ChunkCollector:
    """Assembles streamed ``chat.completion.chunk`` objects into one Reply."""

    def __init__(self, back: Mapping[str, str]) -> None:
        self.back = back
        self.text: list[str] = []
        self.calls: dict[int, dict[str, Any]] = {}
        self.finish: str | None = None
        self.usage: Usage | None = None
        self.model: str | None = None

    def feed(self, event: Any) -> None:
        chunk = event
        if not isinstance(chunk, dict):
            raise BadChat("a streamed chunk is not a JSON object")
        data = cast(dict[str, Any], chunk)
        if isinstance(data.get("error"), dict):
            raise BadChat("the stream carried an error")  # its text may echo the key: not quoted
        if isinstance(data.get("model"), str):
            self.model = data["model"]
        usage = _usage(data.get("usage"))
        if usage is not None:
            self.usage = usage
        for choice in cast(list[Any], data.get("choices") or []):
            c = cast(dict[str, Any], choice) if isinstance(choice, dict) else {}
            delta = cast(dict[str, Any], c.get("delta") or {})
            if isinstance(delta.get("content"), str):
                self.text.append(delta["content"])
            for tc in cast(list[Any], delta.get("tool_calls") or []):
                tcd = cast(dict[str, Any], tc) if isinstance(tc, dict) else {}
                slot = self.calls.setdefault(int(tcd.get("index", len(self.calls))), {"args": []})
                if isinstance(tcd.get("id"), str):
                    slot["id"] = tcd["id"]
                fn = cast(dict[str, Any], tcd.get("function") or {})
                if isinstance(fn.get("name"), str):
                    slot["name"] = fn["name"]
                if isinstance(fn.get("arguments"), str):
                    slot["args"].append(fn["arguments"])
            if c.get("finish_reason"):
                self.finish = str(c["finish_reason"])

    def reply(self) -> Reply:
        calls: list[ToolCall] = []
        for index in sorted(self.calls):
            slot = self.calls[index]
            if "name" not in slot:
                raise BadChat("a streamed tool call never got a name")
            calls.append(
                ToolCall(
                    id=str(slot.get("id") or f"call_{index}"),
                    name=self.back.get(slot["name"], slot["name"]),
                    arguments=parse_arguments("".join(slot["args"])),
                )
            )
        if self.finish is None:
            raise BadChat("the stream ended without a finish_reason")
        return Reply(
            message=Message(role="assistant", content="".join(self.text), tool_calls=tuple(calls)),
            finish_reason=_FINISH_IN.get(self.finish, "tool_calls" if calls else "stop"),
            usage=self.usage,
            model=self.model,
        )


def endpoint(target: Target) -> str:
    """The URL this provider sends ``target``'s requests to (what a Secret's destinations judge)."""
    return (target.base_url or DEFAULT_BASE_URL).rstrip("/") + "/chat/completions"


class OpenAIProvider:
    """Chat Completions over httpx; ``base_url`` defaults to OpenAI's and names any compatible server."""

    name = "openai"

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
        body = openai_body(call.request, model=target.model, max_tokens=call.max_tokens, stream=call.stream)
        back = {wire: name for name, wire in wire_names(call.request.tools).items()}
        headers = {"content-type": "application/json", "accept": "application/json"}
        if call.api_key:
            headers["authorization"] = f"Bearer {call.api_key}"
        if call.idempotency_key:
            headers["idempotency-key"] = call.idempotency_key
        content = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
        return send(
            self.client,
            "openai",
            url,
            headers,
            content,
            call,
            parse=lambda body: reply_from_openai(body, back),
            collector=lambda: _ChunkCollector(back),
        )


# --- the answer an SDK expects ----------------------------------------------------------------

_FINISH_OUT = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "content_filter": "content_filter",
    "error": "stop",
}


def _wire_calls(message: Message) -> list[dict[str, Any]]:
    return [
        {
            "id": c.id,
            "type": "function",
            "function": {
                "name": c.name,
                "arguments": c.arguments
                if isinstance(c.arguments, str)
                else json.dumps(c.arguments, ensure_ascii=False, sort_keys=True),
            },
        }
        for c in message.tool_calls
    ]


def openai_answer(result: ChatResult, requested_model: str | None) -> dict[str, Any]:
    """A journaled result as the ``chat.completion`` object an OpenAI SDK parses."""
    message: dict[str, Any] = {
        "role": "assistant",
        "content": result.message.content or None,
        "refusal": None,
    }
    if result.message.tool_calls:
        message["tool_calls"] = _wire_calls(result.message)
    return {
        "id": f"chatcmpl-{result.id}",
        "object": "chat.completion",
        "created": result.created,
        "model": requested_model or result.model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": _FINISH_OUT[result.finish_reason],
            }
        ],
        "usage": {
            "prompt_tokens": result.usage.input_tokens,
            "completion_tokens": result.usage.output_tokens,
            "total_tokens": result.usage.total,
        },
    }


def openai_stream(result: ChatResult, requested_model: str | None) -> list[dict[str, Any]]:
    """The same answer as SSE events (``{"data": text}``), ending with ``[DONE]``."""
    base = {
        "id": f"chatcmpl-{result.id}",
        "object": "chat.completion.chunk",
        "created": result.created,
        "model": requested_model or result.model,
    }

    def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> dict[str, Any]:
        body = {
            **base,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
            **extra,
        }
        return {"data": json.dumps(body, ensure_ascii=False, separators=(",", ":"))}

    events = [chunk({"role": "assistant", "content": ""})]
    if result.message.content:
        events.append(chunk({"content": result.message.content}))
    for i, call in enumerate(_wire_calls(result.message)):
        events.append(chunk({"tool_calls": [{"index": i, **call}]}))
    events.append(chunk({}, _FINISH_OUT[result.finish_reason]))
    usage: dict[str, Any] = {
        **base,
        "choices": [],
        "usage": {
            "prompt_tokens": result.usage.input_tokens,
            "completion_tokens": result.usage.output_tokens,
            "total_tokens": result.usage.total,
        },
    }
    events.append({"data": json.dumps(usage, separators=(",", ":"))})
    events.append({"data": "[DONE]"})
    return events
