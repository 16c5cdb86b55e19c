"""Bastion's one model of a chat: the request, the answer, and their JSON form.

Every wire format (OpenAI Chat Completions, Anthropic Messages) converts to and from these, and
the journal stores them as JSON (camelCase, like every Bastion document). Content is text only:
a request with images or audio is refused with a reason rather than silently cut.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, cast

Role = Literal["system", "user", "assistant", "tool"]
FinishReason = Literal["stop", "length", "tool_calls", "content_filter", "error"]
_ROLES = frozenset({"system", "user", "assistant", "tool"})
_FINISH = frozenset({"stop", "length", "tool_calls", "content_filter", "error"})


class BadChat(ValueError):
    """A chat request or answer that does not have the shape it must have; the message says where."""


@dataclass(frozen=True, kw_only=True)
class ToolCall:
    id: str
    name: str
    arguments: Any
    """The parsed JSON arguments (an object, normally); the raw text when the model wrote
    something that is not JSON, so the agent loop can tell the model so."""

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "arguments": self.arguments}

    @staticmethod
    def from_json(data: Any, where: str) -> ToolCall:
        body = _object(data, where)
        return ToolCall(
            id=_str(body.get("id"), f"{where}.id"),
            name=_str(body.get("name"), f"{where}.name"),
            arguments=body.get("arguments", {}),
        )


def parse_arguments(text: str) -> Any:
    """A tool call's arguments as the model wrote them: parsed JSON, or the text if it is not JSON."""
    if not text.strip():
        return {}
    try:
        return json.loads(text)
    except ValueError:
        return text


@dataclass(frozen=True, kw_only=True)
class Message:
    role: Role
    content: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    """For ``assistant``: the tools the model asked for, in its order."""
    tool_call_id: str | None = None
    """For ``tool``: the call this message answers."""
    is_error: bool = False
    """For ``tool``: the content is an error (bad arguments, a refused or failed call)."""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.tool_calls:
            out["toolCalls"] = [c.to_json() for c in self.tool_calls]
        if self.tool_call_id is not None:
            out["toolCallId"] = self.tool_call_id
        if self.is_error:
            out["isError"] = True
        return out

    @staticmethod
    def from_json(data: Any, where: str) -> Message:
        body = _object(data, where)
        role = body.get("role")
        if role not in _ROLES:
            raise BadChat(f"{where}.role must be one of system, user, assistant, tool; got {role!r}")
        content = body.get("content", "")
        if content is None:
            content = ""
        calls = body.get("toolCalls", [])
        if not isinstance(calls, list):
            raise BadChat(f"{where}.toolCalls must be a list")
        tool_call_id = body.get("toolCallId")
        if role == "tool" and not isinstance(tool_call_id, str):
            raise BadChat(f"{where}.toolCallId must name the call a tool message answers")
        return Message(
            role=cast(Role, role),
            content=_str(content, f"{where}.content", empty=True),
            tool_calls=tuple(
                ToolCall.from_json(c, f"{where}.toolCalls[{i}]") for i, c in enumerate(cast(list[Any], calls))
            ),
            tool_call_id=tool_call_id if isinstance(tool_call_id, str) else None,
            is_error=bool(body.get("isError", False)),
        )


@dataclass(frozen=True, kw_only=True)
class ToolDef:
    name: str
    description: str = ""
    parameters: Mapping[str, Any] = field(default_factory=lambda: {"type": "object"})
    """JSON Schema of the arguments."""

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "parameters": dict(self.parameters)}

    @staticmethod
    def from_json(data: Any, where: str) -> ToolDef:
        body = _object(data, where)
        params = body.get("parameters", {"type": "object"})
        return ToolDef(
            name=_str(body.get("name"), f"{where}.name"),
            description=_str(body.get("description", ""), f"{where}.description", empty=True),
            parameters=_object(params, f"{where}.parameters"),
        )


@dataclass(frozen=True, kw_only=True)
class ChatRequest:
    messages: tuple[Message, ...]
    tools: tuple[ToolDef, ...] = ()
    max_tokens: int | None = None
    """The most output tokens wanted; the ModelPolicy's ``maxOutputTokens`` caps it."""
    temperature: float | None = None
    stop: tuple[str, ...] = ()
    model: str | None = None
    """The model the caller named (SDKs always name one); informative only: the ModelPolicy's
    targets choose the model that answers."""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"messages": [m.to_json() for m in self.messages]}
        if self.tools:
            out["tools"] = [t.to_json() for t in self.tools]
        if self.max_tokens is not None:
            out["maxTokens"] = self.max_tokens
        if self.temperature is not None:
            out["temperature"] = self.temperature
        if self.stop:
            out["stop"] = list(self.stop)
        if self.model is not None:
            out["model"] = self.model
        return out

    @staticmethod
    def from_json(data: Any, where: str = "request") -> ChatRequest:
        body = _object(data, where)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise BadChat(f"{where}.messages must be a non-empty list")
        tools = body.get("tools", [])
        if not isinstance(tools, list):
            raise BadChat(f"{where}.tools must be a list")
        max_tokens = body.get("maxTokens")
        if max_tokens is not None and (
            not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1
        ):
            raise BadChat(f"{where}.maxTokens must be a positive integer")
        temperature = body.get("temperature")
        if temperature is not None and (
            not isinstance(temperature, int | float) or isinstance(temperature, bool)
        ):
            raise BadChat(f"{where}.temperature must be a number")
        stop = body.get("stop", [])
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in cast(list[Any], stop)):
            raise BadChat(f"{where}.stop must be a list of strings")
        model = body.get("model")
        return ChatRequest(
            messages=tuple(
                Message.from_json(m, f"{where}.messages[{i}]")
                for i, m in enumerate(cast(list[Any], messages))
            ),
            tools=tuple(
                ToolDef.from_json(t, f"{where}.tools[{i}]") for i, t in enumerate(cast(list[Any], tools))
            ),
            max_tokens=max_tokens,
            temperature=float(temperature) if temperature is not None else None,
            stop=tuple(cast(list[str], stop)),
            model=model if isinstance(model, str) else None,
        )


@dataclass(frozen=True, kw_only=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0

    @property
    def total(self) -> int:
        return self.input_tokens + self.output_tokens

    def to_json(self) -> dict[str, int]:
        return {"inputTokens": self.input_tokens, "outputTokens": self.output_tokens}


@dataclass(frozen=True, kw_only=True)
class Reply:
    """What one provider answered (before Bastion adds cost, latency and identity)."""

    message: Message
    finish_reason: FinishReason
    usage: Usage | None
    """None when the provider reported none; the router then estimates it."""
    model: str | None = None
    """The model the provider says answered."""


@dataclass(frozen=True, kw_only=True)
class ChatResult:
    """The answer of an ``llm.chat`` call, as journaled: the reply and how it was obtained."""

    id: str
    """Stable per call (derived from the run and seq), reused by every wire format's answer."""
    created: int
    """Unix seconds when the call was made (for OpenAI's ``created``)."""
    message: Message
    finish_reason: FinishReason
    usage: Usage
    cost_usd: float
    provider: str
    model: str
    latency_ms: float
    attempts: int = 1
    """Provider requests made, retries and fallbacks included."""
    usage_estimated: bool = False
    """True when the provider reported no usage and Bastion estimated it."""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "created": self.created,
            "message": self.message.to_json(),
            "finishReason": self.finish_reason,
            "usage": self.usage.to_json(),
            "costUsd": self.cost_usd,
            "provider": self.provider,
            "model": self.model,
            "latencyMs": self.latency_ms,
            "attempts": self.attempts,
        }
        if self.usage_estimated:
            out["usageEstimated"] = True
        return out

    @staticmethod
    def from_json(data: Any) -> ChatResult:
        body = _object(data, "result")
        usage = _object(body.get("usage", {}), "result.usage")
        finish = body.get("finishReason", "stop")
        return ChatResult(
            id=str(body.get("id", "")),
            created=int(body.get("created", 0)),
            message=Message.from_json(body.get("message"), "result.message"),
            finish_reason=cast(FinishReason, finish if finish in _FINISH else "stop"),
            usage=Usage(
                input_tokens=int(usage.get("inputTokens", 0)), output_tokens=int(usage.get("outputTokens", 0))
            ),
            cost_usd=float(body.get("costUsd", 0.0)),
            provider=str(body.get("provider", "")),
            model=str(body.get("model", "")),
            latency_ms=float(body.get("latencyMs", 0.0)),
            attempts=int(body.get("attempts", 1)),
            usage_estimated=bool(body.get("usageEstimated", False)),
        )


def estimate_tokens(request: ChatRequest) -> int:
    """A cheap, deliberately generous prompt-size estimate (about 4 characters a token)."""
    chars = 0
    for m in request.messages:
        chars += len(m.content) + 16
        for c in m.tool_calls:
            chars += len(c.name) + len(json.dumps(c.arguments, ensure_ascii=False)) + 16
    for t in request.tools:
        chars += len(t.name) + len(t.description) + len(json.dumps(t.parameters, ensure_ascii=False))
    return chars // 4 + 1


def estimate_text_tokens(message: Message) -> int:
    chars = len(message.content) + sum(
        len(c.name) + len(json.dumps(c.arguments, ensure_ascii=False)) for c in message.tool_calls
    )
    return chars // 4 + 1


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BadChat(f"{where} must be a JSON object")
    return cast(dict[str, Any], value)


def _str(value: Any, where: str, *, empty: bool = False) -> str:
    if not isinstance(value, str) or (not empty and not value):
        raise BadChat(f"{where} must be a {'string' if empty else 'non-empty string'}")
    return value


def text_of(parts: Any, where: str) -> str:
    """Text content given as a string or as a list of text parts (both wire formats allow both)."""
    if parts is None:
        return ""
    if isinstance(parts, str):
        return parts
    if not isinstance(parts, list):
        raise BadChat(f"{where} must be a string or a list of text parts")
    texts: list[str] = []
    for i, part in enumerate(cast(Sequence[Any], parts)):
        body = _object(part, f"{where}[{i}]")
        if body.get("type") != "text" or not isinstance(body.get("text"), str):
            raise BadChat(
                f"{where}[{i}] is a {body.get('type')!r} part; only text content is supported through Bastion"
            )
        texts.append(str(body["text"]))
    return "".join(texts)
