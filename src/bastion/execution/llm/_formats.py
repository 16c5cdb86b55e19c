"""The ``llm.chat`` call's params and answer, per wire format.

Params: ``{"format": "bastion" | "openai" | "anthropic", "request": {...}, "stream": bool}``.

* ``bastion`` (the default; the declarative loop uses it): ``request`` is a ``ChatRequest`` in
  JSON; ``stream`` asks the provider to stream. The answer is the ``ChatResult`` JSON.
* ``openai`` / ``anthropic`` (what the in-sandbox shim forwards): ``request`` is the body the SDK
  sent, unchanged; its own ``stream`` field says whether to stream. The answer is
  ``{"format": ..., "body": {...}}`` (the ``chat.completion`` or ``message`` object), or when the
  body asked to stream ``{"format": ..., "events": [{"event"?: name, "data": text}, ...]}``, the SSE
  events to send in order (OpenAI's end with ``data: [DONE]``).

The journal keeps the params as the request and the ``ChatResult`` as the response; the answer is
computed from those two alone, so a replay answers byte for byte as the live call did.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from ._anthropic import anthropic_answer, anthropic_stream, request_from_anthropic
from ._openai import openai_answer, openai_stream, request_from_openai
from ._types import BadChat, ChatRequest, ChatResult

Format = Literal["bastion", "openai", "anthropic"]
FORMATS: tuple[Format, ...] = ("bastion", "openai", "anthropic")


def parse_params(params: Mapping[str, Any]) -> tuple[ChatRequest, bool, Format]:
    """The request, whether to stream, and the wire format of an ``llm.chat`` call.

    Raises:
        BadChat: with a message naming the offending field.
    """
    fmt = params.get("format", "bastion")
    if fmt not in FORMATS:
        raise BadChat(f"format must be one of {', '.join(FORMATS)}; got {fmt!r}")
    body = params.get("request")
    if fmt == "openai":
        request, stream = request_from_openai(body)
    elif fmt == "anthropic":
        request, stream = request_from_anthropic(body)
    else:
        request = ChatRequest.from_json(body)
        stream = params.get("stream", False)
        if not isinstance(stream, bool):
            raise BadChat("stream must be true or false")
    return request, stream, fmt


def answer(params: Mapping[str, Any], response: Any) -> Any:
    """What the caller gets for a journaled ``ChatResult`` (see the module docstring)."""
    fmt = params.get("format", "bastion")
    if fmt == "bastion":
        return response
    body: Mapping[str, Any] = params.get("request") or {}
    result = ChatResult.from_json(response)
    model = body.get("model") if isinstance(body.get("model"), str) else None
    stream = bool(body.get("stream", False))
    if fmt == "openai":
        if stream:
            return {"format": fmt, "events": openai_stream(result, model)}
        return {"format": fmt, "body": openai_answer(result, model)}
    if stream:
        return {"format": fmt, "events": anthropic_stream(result, model)}
    return {"format": fmt, "body": anthropic_answer(result, model)}
